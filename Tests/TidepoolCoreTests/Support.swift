import Testing
import TidepoolCore

#if canImport(Glibc)
import Glibc
#endif

/// Deterministic random numbers, so a failing configuration can be replayed from its seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func normal() -> Double {
        let u = Double.random(in: Double.ulpOfOne..<1, using: &self), v = Double.random(in: 0..<1, using: &self)
        return (-2 * log(u)).squareRoot() * cos(2 * Double.pi * v)
    }
}

/// Typed storage of any dtype, read and written as Double (exact for every value the
/// tests store: floats come from the dtype itself, integers stay below 2^53).
final class Buffer {
    let dtype: DType
    let count: Int
    let raw: UnsafeMutableRawPointer

    init(_ dtype: DType, count: Int) {
        self.dtype = dtype
        self.count = count
        raw = .allocate(byteCount: Swift.max(count * dtype.size, 1), alignment: 16)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: Swift.max(count * dtype.size, 1))
    }

    deinit { raw.deallocate() }

    subscript(index: Int) -> Double {
        get {
            switch dtype {
            case .float32: return Double(raw.load(fromByteOffset: index * 4, as: Float.self))
            case .float64: return raw.load(fromByteOffset: index * 8, as: Double.self)
            case .float16: return Double(raw.load(fromByteOffset: index * 2, as: Float16.self))
            case .bfloat16: return Double(BFloat16(bitPattern: raw.load(fromByteOffset: index * 2, as: UInt16.self)).float)
            case .int8: return Double(raw.load(fromByteOffset: index, as: Int8.self))
            case .int16: return Double(raw.load(fromByteOffset: index * 2, as: Int16.self))
            case .int32: return Double(raw.load(fromByteOffset: index * 4, as: Int32.self))
            case .int64: return Double(raw.load(fromByteOffset: index * 8, as: Int64.self))
            case .uint8: return Double(raw.load(fromByteOffset: index, as: UInt8.self))
            case .uint16: return Double(raw.load(fromByteOffset: index * 2, as: UInt16.self))
            case .uint32: return Double(raw.load(fromByteOffset: index * 4, as: UInt32.self))
            case .uint64: return Double(raw.load(fromByteOffset: index * 8, as: UInt64.self))
            }
        }
        set {
            switch dtype {
            case .float32: raw.storeBytes(of: Float(newValue), toByteOffset: index * 4, as: Float.self)
            case .float64: raw.storeBytes(of: newValue, toByteOffset: index * 8, as: Double.self)
            case .float16: raw.storeBytes(of: Float16(newValue), toByteOffset: index * 2, as: Float16.self)
            case .bfloat16: raw.storeBytes(of: BFloat16(Float(newValue)).bitPattern, toByteOffset: index * 2, as: UInt16.self)
            case .int8: raw.storeBytes(of: Int8(newValue), toByteOffset: index, as: Int8.self)
            case .int16: raw.storeBytes(of: Int16(newValue), toByteOffset: index * 2, as: Int16.self)
            case .int32: raw.storeBytes(of: Int32(newValue), toByteOffset: index * 4, as: Int32.self)
            case .int64: raw.storeBytes(of: Int64(newValue), toByteOffset: index * 8, as: Int64.self)
            case .uint8: raw.storeBytes(of: UInt8(newValue), toByteOffset: index, as: UInt8.self)
            case .uint16: raw.storeBytes(of: UInt16(newValue), toByteOffset: index * 2, as: UInt16.self)
            case .uint32: raw.storeBytes(of: UInt32(newValue), toByteOffset: index * 4, as: UInt32.self)
            case .uint64: raw.storeBytes(of: UInt64(newValue), toByteOffset: index * 8, as: UInt64.self)
            }
        }
    }

    /// Fills with values typical of the dtype: standard normal for floats, the whole range
    /// for narrow integers, +-2^40 for 64-bit ones.
    func fillRandom(_ rng: inout SplitMix64) {
        for i in 0..<count { self[i] = Buffer.randomValue(dtype, &rng) }
    }

    static func randomValue(_ dtype: DType, _ rng: inout SplitMix64) -> Double {
        switch dtype {
        case .float32, .float64, .float16, .bfloat16: return rng.normal()
        case .int8: return Double(Int8.random(in: .min ... .max, using: &rng))
        case .int16: return Double(Int16.random(in: .min ... .max, using: &rng))
        case .int32: return Double(Int32.random(in: .min ... .max, using: &rng))
        case .uint8: return Double(UInt8.random(in: .min ... .max, using: &rng))
        case .uint16: return Double(UInt16.random(in: .min ... .max, using: &rng))
        case .uint32: return Double(UInt32.random(in: .min ... .max, using: &rng))
        case .int64: return Double(Int64.random(in: -(1 << 40)...(1 << 40), using: &rng))
        case .uint64: return Double(UInt64.random(in: 0...(1 << 41), using: &rng))
        }
    }
}

/// The padding value of max pooling, as the reference sees it.
func lowestValue(_ dtype: DType) -> Double {
    switch dtype {
    case .float32, .float64, .float16, .bfloat16: return -.infinity
    case .int8: return Double(Int8.min)
    case .int16: return Double(Int16.min)
    case .int32: return Double(Int32.min)
    case .int64: return Double(Int64.min)
    case .uint8, .uint16, .uint32, .uint64: return 0
    }
}

/// The widest span of channels (W stride x channels) whose rows a plan of `g` reduces at
/// every position and subsamples, stated apart from the engine (`WidthPlan.span`): maxima of
/// 1-byte types 32, or 64 where the kernel is at least 1.5 strides; rows alone (1-d windows)
/// of 8-byte sums and maxima 4 (32-bit integer averages sum in 8 bytes); 16 for 8 channels or
/// fewer, and for rows alone unless their windows overlap at a stride of at most 4 and span at
/// most two strides and a column; then 1-byte sums 128, sums of 2- and 4-byte types and maxima
/// of 2-byte ones 64 (float16 and bfloat16 averages over windows longer than the stride and at
/// most two strides 128, rows alone only at strides up to 3), maxima of 4-byte types over 3-d
/// windows of at most 5 columns 64, and the rest (8-byte types) 16.
func subsampledSpan(_ kind: PoolKind, _ dtype: DType, _ g: PoolGeometry) -> Int {
    if kind == .max && dtype.size == 1 { return 2 * g.kernelW >= 3 * g.strideW ? 64 : 32 }
    let rowsAlone = g.kernelH == 1 && g.kernelD == 1
    let eightByteSums = dtype.size == 8 || (kind == .average && dtype.size == 4 && !dtype.isFloatingPoint)
    if rowsAlone && eightByteSums { return 4 }
    if g.channels <= 8 { return 16 }
    if rowsAlone && (g.kernelW <= g.strideW || g.strideW > 4 || g.kernelW > 2 * g.strideW + 1) { return 16 }
    switch (kind, dtype.size) {
    case (.average, 1): return 128
    case (.average, 2) where dtype.isFloatingPoint && g.kernelW > g.strideW && g.kernelW <= 2 * g.strideW
        && (!rowsAlone || g.strideW <= 3):
        return 128
    case (.average, 2), (.average, 4), (.max, 2): return 64
    case (.max, 4) where g.kernelD > 1 && g.kernelW <= 5: return 64
    default: return 16
    }
}

/// Whether rows alone (1-d windows) of up to 8 channels reduce W at every position whatever
/// the span (`WidthPlan`): windows of 2 to 5 columns that overlap or touch, of 1- to 4-byte
/// accumulators (not 8-byte types, nor 32-bit integer averages).
func subsamplesShortWindows(_ kind: PoolKind, _ dtype: DType, _ g: PoolGeometry) -> Bool {
    let eightByteSums = dtype.size == 8 || (kind == .average && dtype.size == 4 && !dtype.isFloatingPoint)
    return g.kernelH == 1 && g.kernelD == 1 && !eightByteSums && g.channels <= 8 && g.strideW <= g.kernelW && g.kernelW <= 5
}

/// Whether rows alone (1-d windows) of 3 to 8 channels reduce W at the stride whatever the
/// span (`WidthPlan`): float16 and bfloat16 averages over windows of 8 columns or more.
func stridesLongWidenedWindows(_ kind: PoolKind, _ dtype: DType, _ g: PoolGeometry) -> Bool {
    kind == .average && (dtype == .float16 || dtype == .bfloat16) && g.kernelH == 1 && g.kernelD == 1
        && (3...8).contains(g.channels) && g.kernelW >= 8
}

/// One axis's output length by the definitions, in floating point (the engine works in
/// integers): MLX's floor((n + 2p - k) / s) + 1, or with ceil_mode PyTorch's ceil(...) + 1
/// less one when the last window starts at or past n + p (ATen's pooling_output_shape).
func referenceLength(_ n: Int, kernel k: Int, stride s: Int, padding p: Int, ceilMode: Bool) -> Int {
    let ratio = Double(n + 2 * p - k) / Double(s)
    var length = Int(ceilMode ? ratio.rounded(.up) : ratio.rounded(.down)) + 1
    if ceilMode && (length - 1) * s >= n + p { length -= 1 }
    return length
}

/// Window-by-window float64 pooling over N-d indices, written from MLX's definition
/// (pad, take every window, reduce) and PyTorch's for its options (ceil_mode's windows past
/// the padding count as padding; the average's divisor is the window clipped to the padded
/// input, or to the input for count_include_pad=False, 0 / 0 giving 0 as in ATen), sharing no
/// code with the engine. `offset` and `strides` locate the input's elements inside `storage`.
func referencePool(_ desc: PoolDescriptor, storage: Buffer, offset: Int, shape: [Int], strides: [Int]) -> (shape: [Int], values: [Double])? {
    let s = desc.spatialDims
    var outShape = [shape[0]]
    for a in 0..<s {
        let length = referenceLength(shape[a + 1], kernel: desc.kernelSize[a], stride: desc.stride[a], padding: desc.padding[a],
                                     ceilMode: desc.ceilMode)
        if length < 0 { return nil }
        outShape.append(length)
    }
    outShape.append(shape[s + 1])
    let outCount = outShape.reduce(1, *)
    var values = [Double](repeating: 0, count: outCount)
    let windowSize = desc.kernelSize.reduce(1, *)
    var outIndex = [Int](repeating: 0, count: s + 2)
    for flat in 0..<outCount {
        var rest = flat
        for axis in (0..<(s + 2)).reversed() {
            outIndex[axis] = rest % outShape[axis]
            rest /= outShape[axis]
        }
        // MLX sums from +0 (a window of -0s alone averages to +0) but passes a window of one
        // element through (-0 + x is x, -0 included).
        var acc = desc.kind == .average ? (windowSize == 1 ? -0.0 : 0.0) : lowestValue(storage.dtype)
        var sawNaN = false
        var inPadded = 1, inInput = 1
        for a in 0..<s {
            let start = outIndex[a + 1] * desc.stride[a] - desc.padding[a], n = shape[a + 1]
            inPadded *= min(start + desc.kernelSize[a], n + desc.padding[a]) - start
            inInput *= max(0, min(start + desc.kernelSize[a], n) - max(start, 0))
        }
        let divisor = desc.countIncludePad ? (desc.ceilMode ? inPadded : windowSize) : inInput
        // Walk every window position, padded ones included.
        var k = [Int](repeating: 0, count: s)
        repeat {
            var inBounds = true
            var address = offset + outIndex[0] * strides[0] + outIndex[s + 1] * strides[s + 1]
            for a in 0..<s {
                let i = outIndex[a + 1] * desc.stride[a] - desc.padding[a] + k[a]
                if i < 0 || i >= shape[a + 1] { inBounds = false; break }
                address += i * strides[a + 1]
            }
            let x = inBounds ? storage[address] : (desc.kind == .average ? 0 : lowestValue(storage.dtype))
            if desc.kind == .average { acc += x } else if x.isNaN { sawNaN = true } else { acc = Swift.max(acc, x) }
            var a = s - 1
            while a >= 0 {
                k[a] += 1
                if k[a] < desc.kernelSize[a] { break }
                k[a] = 0
                a -= 1
            }
            if a < 0 { break }
        } while true
        values[flat] = desc.kind == .average ? (divisor == 0 ? 0 : acc / Double(divisor)) : (sawNaN ? .nan : acc)
    }
    return (outShape, values)
}

/// Relative and absolute tolerance of an average in `dtype` against the float64 reference.
func averageTolerance(_ dtype: DType) -> (rtol: Double, atol: Double) {
    switch dtype {
    case .float64: return (1e-12, 1e-14)
    case .float16: return (1e-3, 1e-5)   // one float16 rounding: 2^-11 relative
    case .bfloat16: return (8e-3, 1e-5)  // one bfloat16 rounding: 2^-8 relative
    default: return (1e-5, 1e-6)         // float32 results, integer inputs included
    }
}

struct PoolRun {
    let output: Buffer
    let shape: [Int]
}

/// Runs the engine on a view of `storage` and returns its output.
func runEngine(_ desc: PoolDescriptor, storage: Buffer, offset: Int, shape: [Int], strides: [Int],
               engine: PoolEngine = .shared, threads: Int? = nil) throws -> PoolRun {
    let outShape = try desc.outputShape(inputShape: shape)
    let output = Buffer(storage.dtype.result(of: desc.kind), count: outShape.reduce(1, *))
    let input = TensorView(data: UnsafeRawPointer(storage.raw + offset * storage.dtype.size),
                           dtype: storage.dtype, shape: shape, strides: strides)
    try engine.pool(desc, input: input, output: OutputView(data: output.raw, dtype: output.dtype, shape: outShape),
                    threads: threads)
    return PoolRun(output: output, shape: outShape)
}

/// Pools `storage`, viewed as `shape` with `strides`, on each of `engines`: the first run
/// against the float64 reference (`firstMismatch`), every other bit for bit against it.
/// `label` names the case in a failure.
func expectEnginesAgree(_ desc: PoolDescriptor, _ dtype: DType, storage: Buffer, shape: [Int], strides: [Int], engines: [PoolEngine],
                        _ label: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let expected = try #require(referencePool(desc, storage: storage, offset: 0, shape: shape, strides: strides), sourceLocation: sourceLocation)
    let runs = try engines.map { try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: $0) }
    #expect(runs[0].shape == expected.shape, "\(label)", sourceLocation: sourceLocation)
    #expect(firstMismatch(desc, dtype: dtype, actual: runs[0].output, expected: expected.values) == nil, "\(label)",
            sourceLocation: sourceLocation)
    for (index, run) in runs.enumerated().dropFirst() {
        #expect(memcmp(runs[0].output.raw, run.output.raw, run.output.count * run.output.dtype.size) == 0, "\(label), engine \(index)",
                sourceLocation: sourceLocation)
    }
}

/// Whether `actual` matches the reference: exactly for max (NaN matching NaN) and for
/// averages of integers of up to 32 bits (their exact mean rounded once to float32), within
/// the dtype's tolerance for other averages (a mean of zero with the reference's sign). Returns the first mismatch as text.
func firstMismatch(_ desc: PoolDescriptor, dtype: DType, actual: Buffer, expected: [Double]) -> String? {
    let (rtol, atol) = averageTolerance(dtype)
    let exactMean = !dtype.isFloatingPoint && dtype.size <= 4
    for i in 0..<expected.count {
        let a = actual[i], e = expected[i]
        let ok: Bool
        if e.isNaN { ok = a.isNaN }
        else if desc.kind == .max { ok = a == e }
        else if exactMean { ok = a == Double(Float(e)) }
        // Zeros' signs as MLX's (the reference's).
        else if e == 0 && a == 0 { ok = a.sign == e.sign }
        else { ok = a == e || abs(a - e) <= atol + rtol * abs(e) }
        if !ok { return "element \(i): got \(a), expected \(e)" }
    }
    return nil
}

/// Values whose float sums cancel (2^14 - 2^14 + 2^-11 is 2^-11 or 0 by the order of the adds):
/// results that are compared bit for bit then show any change in the order of a sum.
func cancellingSums(_ dtype: DType, count: Int, seed: UInt64) -> Buffer {
    let buffer = Buffer(dtype, count: count)
    var rng = SplitMix64(seed: seed)
    for i in 0..<count { buffer[i] = [16384, -16384, 0x1p-11, -0x1p-11, 0.75][Int(rng.next() % 5)] }
    return buffer
}

/// A channels-last contiguous input of `shape` filled at random.
func randomInput(_ dtype: DType, shape: [Int], seed: UInt64) -> Buffer {
    var rng = SplitMix64(seed: seed)
    let buffer = Buffer(dtype, count: shape.reduce(1, *))
    buffer.fillRandom(&rng)
    return buffer
}
