import CTidepoolVector
import Testing
import TidepoolCore
import TidepoolKernels

#if canImport(Glibc)
import Glibc
#endif

/// The CPU flags the kernel reports, from /proc/cpuinfo (empty where it cannot be read).
func cpuFlags() -> Set<Substring> {
    guard let file = fopen("/proc/cpuinfo", "r") else { return [] }
    defer { fclose(file) }
    var line: UnsafeMutablePointer<CChar>?
    var capacity = 0
    defer { free(line) }
    while getline(&line, &capacity, file) > 0, let line {
        let text = String(cString: line)
        if text.hasPrefix("flags") { return Set(text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" })) }
    }
    return []
}

@Suite struct VectorFinishTests {
    /// The kernels are used exactly where the CPU has their instructions.
    @Test func foundWhereTheCPUHasThem() {
        let flags = cpuFlags()
        let base = ["avx512f", "avx512vl", "avx512bw", "avx512dq"].allSatisfy { flags.contains($0[...]) }
        #expect((AverageFloat16.vectorFinish != nil) == base)
        #expect((AverageBFloat16.vectorFinish != nil) == (base && flags.contains("avx512_bf16")))
        #expect(AverageFloat32.vectorFinish == nil)
    }

    /// Inputs that show what a finishing pass gets wrong: random normals, sums that cancel (the
    /// order of the fold), every bit pattern (NaN payloads, infinities), values whose means
    /// are subnormal (which bfloat16's conversion instruction reads as zero), and -0s with a
    /// few normals (windows of -0s alone average to +0).
    static func inputs(_ dtype: DType, count: Int, seed: UInt64) -> [Buffer] {
        var rng = SplitMix64(seed: seed)
        let normal = Buffer(dtype, count: count), cancelling = Buffer(dtype, count: count)
        let bits = Buffer(dtype, count: count), subnormal = Buffer(dtype, count: count)
        let negativeZeros = Buffer(dtype, count: count)
        let smallest = dtype == .float16 ? 0x1p-14 : 0x1p-126
        for i in 0..<count {
            normal[i] = rng.normal()
            cancelling[i] = [16384, -16384, 0x1p-11, -0x1p-11, 0.75][Int(rng.next() % 5)]
            bits.raw.storeBytes(of: UInt16(truncatingIfNeeded: rng.next()), toByteOffset: 2 * i, as: UInt16.self)
            subnormal[i] = rng.normal() * smallest
            negativeZeros[i] = rng.next() % 16 == 0 ? rng.normal() : -0.0
        }
        return [normal, cancelling, bits, subnormal, negativeZeros]
    }

    /// Bit for bit the Swift loops' outputs, through depth-first planes (rows of every length
    /// around the 16-lane vectors, windows reaching into padding on both sides) and W-first
    /// planes; NaNs need only be NaN (where two NaNs meet, the compiler picks whose payload).
    @Test(arguments: [DType.float16, .bfloat16])
    func finishAsTheSwiftLoopsDo(dtype: DType) throws {
        let plain = PoolEngine(threads: 1, usesVectorKernels: false)
        let vectorEngines = [PoolEngine(threads: 1), PoolEngine(threads: 2, tileBudgetBytes: 700, serialWorkBelow: 0)]
        var cases: [(PoolDescriptor, [Int])] = []
        for (width, channels) in [(1, 1), (5, 3), (15, 1), (16, 1), (17, 1), (7, 5), (33, 1), (40, 2), (70, 1), (13, 7)] {
            for kernelW in 1...Swift.min(6, width) {
                // Centred odd windows run depth first (the rows kernel); the others W first.
                for padding in Set([0, kernelW / 2]) {
                cases.append((PoolDescriptor(kind: .average, kernelSize: [2 + kernelW % 4, 3, kernelW], stride: [1, 1, 1],
                                             padding: [1, 1, padding]), [1, 5, 4, width, channels]))
                }
            }
        }
        for (kernel, stride, padding, channels) in [(1, 1, 0, 3), (2, 2, 0, 8), (3, 1, 1, 9), (3, 2, 1, 3), (7, 1, 3, 1)] {
            cases.append((PoolDescriptor(kind: .average, kernelSize: [kernel, kernel, kernel], stride: [stride, stride, stride],
                                         padding: [padding, padding, padding]), [2, 7, 6, 9, channels]))
        }
        for (index, (desc, shape)) in cases.enumerated() {
            let strides = TensorView.contiguousStrides(shape)
            for input in Self.inputs(dtype, count: shape.reduce(1, *), seed: UInt64(index)) {
                let expected = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: plain).output
                for engine in vectorEngines {
                    let actual = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: engine).output
                    let mismatch = (0..<expected.count).first { i in
                        let a = actual.raw.load(fromByteOffset: 2 * i, as: UInt16.self)
                        let e = expected.raw.load(fromByteOffset: 2 * i, as: UInt16.self)
                        return a != e && !(actual[i].isNaN && expected[i].isNaN)
                    }
                    #expect(mismatch == nil, "\(desc) \(shape) \(dtype): element \(mismatch ?? 0)")
                }
            }
        }
    }

    /// The rows kernel on its own, against its contract (taps outside a row read as zero, the
    /// sum from +0 but for one tap) folded in Swift, where windows reach far past both ends of short rows: more edge
    /// vectors than the engine's geometries make.
    @Test func rowsKernelReadsZeroOutsideEachRow() throws {
        for (format, vectorFinish) in [(TPVECTOR_FLOAT16, AverageFloat16.vectorFinish), (TPVECTOR_BFLOAT16, AverageBFloat16.vectorFinish)] {
            guard vectorFinish != nil else { continue }
            var rng = SplitMix64(seed: 9)
            for (length, first, step, taps) in [(50, -40, 9, 6), (100, -70, 30, 5), (3, -2, 1, 4), (37, 5, 2, 3), (64, -64, 32, 5), (20, -3, 1, 1)] {
                let rows = 3
                // Half -0s: taps of -0s alone sum to +0 (from +0, as the contract says).
                let source = (0..<(rows * length)).map { _ in rng.next() % 2 == 0 ? -0.0 : Float(rng.normal()) }
                var output = [UInt16](repeating: 0, count: rows * length)
                let scale: Float = 1 / Float(taps)
                source.withUnsafeBufferPointer { s in
                    output.withUnsafeMutableBufferPointer { o in
                        tpvector_finish_rows(format, o.baseAddress, s.baseAddress, rows, length, first, step, Int32(taps), scale)
                    }
                }
                for r in 0..<rows {
                    for j in 0..<length {
                        // From +0, but a window of one tap from -0 (it passes its tap through).
                        var sum: Float = taps == 1 ? -0.0 : 0
                        for k in 0..<taps {
                            let i = j + first + k * step
                            sum += (0..<length).contains(i) ? source[r * length + i] : 0
                        }
                        let expected = format == TPVECTOR_FLOAT16 ? Float16(sum * scale).bitPattern : BFloat16(sum * scale).bitPattern
                        #expect(output[r * length + j] == expected, "\(format) length \(length) first \(first): row \(r) element \(j)")
                    }
                }
            }
        }
    }
}
