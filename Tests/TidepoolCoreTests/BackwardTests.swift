import Testing
import TidepoolCore

#if canImport(Glibc)
import Glibc
#endif

/// The gradient by its definition, in float64: each window scatters its cotangent to the
/// input (average: g / window size to every in-bounds element; max: MLX's g x [x == M] / K, or
/// PyTorch's whole g to its pick). Returns the gradient and, per element, the sum of the
/// magnitudes of what it received (the scale of its rounding error).
func referenceBackward(_ desc: PoolDescriptor, ties: MaxTies, input: Buffer, shape: [Int], strides: [Int],
                       cotangent: Buffer, cotangentEvery: Int = 1) -> (values: [Double], magnitude: [Double]) {
    let s = desc.spatialDims, lift = 3 - s
    func lifted(_ v: [Int], _ fill: Int) -> [Int] { Array(repeating: fill, count: lift) + v }
    let inS = lifted(Array(shape[1...s]), 1), k = lifted(desc.kernelSize, 1), st = lifted(desc.stride, 1), p = lifted(desc.padding, 0)
    var outS: [Int] = []
    for axis in 0..<3 {
        outS.append(referenceLength(inS[axis], kernel: k[axis], stride: st[axis], padding: p[axis], ceilMode: desc.ceilMode))
    }
    let steps = lifted(Array(strides[1...s]), 0)
    let batch = shape[0], c = shape[s + 1], stepN = strides[0], stepC = strides[s + 1]
    var values = [Double](repeating: 0, count: batch * inS.reduce(1, *) * c), magnitude = values
    let windowSize = k.reduce(1, *)
    func x(_ n: Int, _ i: [Int], _ ch: Int) -> Double {
        let offset: Int = n * stepN + i[0] * steps[0] + i[1] * steps[1] + i[2] * steps[2] + ch * stepC
        return input[offset]
    }
    func flat(_ n: Int, _ i: [Int], _ ch: Int) -> Int {
        let plane: Int = (n * inS[0] + i[0]) * inS[1] + i[1]
        return (plane * inS[2] + i[2]) * c + ch
    }
    var o = 0
    for n in 0..<batch { for od in 0..<outS[0] { for oh in 0..<outS[1] { for ow in 0..<outS[2] { for ch in 0..<c {
        defer { o += 1 }
        let g = cotangent[o * cotangentEvery]
        var positions: [[Int]] = []
        for a in 0..<k[0] { for b in 0..<k[1] { for e in 0..<k[2] {
            let i0: Int = od * st[0] - p[0] + a, i1: Int = oh * st[1] - p[1] + b, i2: Int = ow * st[2] - p[2] + e
            let i = [i0, i1, i2]
            if (0..<3).allSatisfy({ i[$0] >= 0 && i[$0] < inS[$0] }) { positions.append(i) }
        } } }
        func add(_ i: [Int], _ v: Double) { values[flat(n, i, ch)] += v; magnitude[flat(n, i, ch)] += abs(v) }
        switch (desc.kind, ties) {
        case (.average, _):
            // The forward's divisor (see referencePool): the window, clipped to the padded
            // input under ceil_mode, or its positions in the input for count_include_pad=False.
            var inPadded = 1
            for (axis, o) in [od, oh, ow].enumerated() {
                let start = o * st[axis] - p[axis]
                inPadded *= min(start + k[axis], inS[axis] + p[axis]) - start
            }
            let divisor = desc.countIncludePad ? (desc.ceilMode ? inPadded : windowSize) : positions.count
            for i in positions { add(i, g / Double(divisor)) }
        case (.max, .split):
            let vs = positions.map { x(n, $0, ch) }
            if windowSize == 1 { for i in positions { add(i, g) }; continue }
            if vs.contains(where: \.isNaN) { for i in positions { add(i, .nan) }; continue }
            let m = vs.max() ?? -.infinity
            let count = vs.filter { $0 == m }.count + (m == -.infinity ? windowSize - positions.count : 0)
            for (i, v) in zip(positions, vs) { add(i, g * (v == m ? 1 : 0) / Double(count)) }
        case (.max, .first):
            guard var pick = positions.first else { continue }
            var m = -Double.infinity
            for i in positions where x(n, i, ch) > m || x(n, i, ch).isNaN { m = x(n, i, ch); pick = i }
            add(pick, g)
        }
    } } } } }
    return (values, magnitude)
}

/// Runs `backward` and returns the gradient.
func runBackward(_ engine: PoolEngine, _ desc: PoolDescriptor, ties: MaxTies, input: Buffer, shape: [Int], strides: [Int],
                 cotangent: Buffer, outShape: [Int], cotangentEvery: Int = 1, threads: Int? = nil) throws -> Buffer {
    let gradient = Buffer(input.dtype, count: shape.reduce(1, *))
    // A cotangent read every `cotangentEvery` elements: strides that multiply its contiguous ones.
    let gradStrides = TensorView.contiguousStrides(outShape).map { $0 * cotangentEvery }
    try engine.backward(desc, input: TensorView(data: input.raw, dtype: input.dtype, shape: shape, strides: strides),
                        gradOutput: TensorView(data: cotangent.raw, dtype: cotangent.dtype, shape: outShape, strides: gradStrides),
                        gradInput: OutputView(data: gradient.raw, dtype: input.dtype, shape: shape), ties: ties, threads: threads)
    return gradient
}

@Suite struct BackwardTests {
    /// The examples of the issue, checked by running mx.vjp of mlx.nn's layers.
    @Test func mlxExamples() throws {
        func vjp(_ values: [Double], kernel: Int, stride: Int, padding: Int) throws -> [Double] {
            let input = Buffer(.float32, count: values.count)
            for (i, v) in values.enumerated() { input[i] = v }
            let desc = PoolDescriptor(kind: .max, kernelSize: [kernel], stride: [stride], padding: [padding])
            let outShape = try desc.outputShape(inputShape: [1, values.count, 1])
            let ones = Buffer(.float32, count: outShape.reduce(1, *))
            for i in 0..<ones.count { ones[i] = 1 }
            let g = try runBackward(PoolEngine.shared, desc, ties: .split, input: input, shape: [1, values.count, 1],
                                    strides: [values.count, 1, 1], cotangent: ones, outShape: outShape)
            return (0..<values.count).map { g[$0] }
        }
        #expect(try vjp([1, 3, 3, 2], kernel: 2, stride: 1, padding: 0) == [0, 1.5, 1.5, 0])
        let nan = try vjp([.nan, 3, 1, 2], kernel: 2, stride: 1, padding: 0)
        #expect(nan[0].isNaN && nan[1].isNaN && nan[2] == 0 && nan[3] == 1)
        #expect(try vjp([-.infinity, -.infinity, 1, 2], kernel: 2, stride: 2, padding: 1) == [0.5, 0, 1, 1])
    }

    /// Windows mostly or wholly in the padding: padding wider than the kernel (windows with no
    /// element, more outputs than inputs), and kernels far longer than the row (padding may
    /// make them any length the padded volume allows), where the gradient must cost what its
    /// elements do, not the kernel's length: a loop over every tap took seconds for 2^30 taps
    /// and hours for 2^40. Values from each window's in-bounds elements, found by arithmetic
    /// (`referenceBackward` walks every tap).
    @Test func windowsMostlyInThePadding() throws {
        let n = 5, c = 2
        let input = Buffer(.float32, count: n * c)
        for i in 0..<(n * c) { input[i] = Double((i * 7) % 11) }  // distinct per channel
        for (k, s, p) in [(3, 1, 5), (2, 3, 4), (4, 2, 6), (1, 1, 2), (1 << 40, 1, 1 << 39), (1 << 40, 1 << 39, 1 << 40),
                          (1 << 36, (1 << 36) - 3, 1 << 36), ((1 << 36) + 3, 2, 1 << 35),
                          (1 << 36, (1 << 36) - 1, (1 << 36) - 2), (1 << 36, (1 << 36) - 2, (1 << 36) - 1)] {
            for kind in [PoolKind.average, .max] {
                for ties in kind == .max ? [MaxTies.split, .first] : [.split] {
                    let desc = PoolDescriptor(kind: kind, kernelSize: [k], stride: [s], padding: [p])
                    let outShape = try desc.outputShape(inputShape: [1, n, c]), outputs = outShape[1]
                    #expect(outputs >= 1 && outputs <= 16)
                    let cotangent = Buffer(.float32, count: outputs * c)
                    for i in 0..<(outputs * c) { cotangent[i] = Double(i + 1) }
                    var expected = [Double](repeating: 0, count: n * c)
                    for o in 0..<outputs {
                        let w0 = Swift.max(0, o * s - p), w1 = Swift.min(n, o * s - p + k)
                        guard w0 < w1 else { continue }
                        for ch in 0..<c {
                            let g = cotangent[o * c + ch]
                            if kind == .average {
                                for w in w0..<w1 { expected[w * c + ch] += g / Double(k) }
                            } else {
                                // Distinct values: one maximum, which takes the whole share.
                                let top = (w0..<w1).max { input[$0 * c + ch] < input[$1 * c + ch] }!
                                expected[top * c + ch] += g
                            }
                        }
                    }
                    for threads in [1, 2] {
                        let gradient = try runBackward(PoolEngine.shared, desc, ties: ties, input: input, shape: [1, n, c],
                                                       strides: [n * c, c, 1], cotangent: cotangent, outShape: outShape,
                                                       threads: threads)
                        for i in 0..<(n * c) {
                            // Rounded once from float32 sums, which are exact here.
                            #expect(abs(gradient[i] - expected[i]) <= 1e-6 * abs(expected[i]),
                                    "\(kind) k\(k) s\(s) p\(p) element \(i): \(gradient[i]) != \(expected[i])")
                        }
                    }
                }
            }
        }
    }

    /// Random configurations of every layer and float dtype, contiguous and strided, with ties
    /// (values on a coarse grid), -inf and NaN, against the float64 definition; strided
    /// inputs and cotangents; 1 and 3 threads, both CPU levels, streamed stores and planes cut
    /// into bands bit-identical.
    @Test(arguments: [DType.float32, .float64, .float16, .bfloat16])
    func matchesTheDefinition(dtype: DType) throws {
        var rng = SplitMix64(seed: 900 + UInt64(dtype.code))
        // Each CPU level, one engine that streams every gradient out (large ones do) and one
        // that cuts the max's planes into as many bands of rows as it can (large planes are).
        // All split these small gradients among threads (by default they stay on the caller's).
        let engines = CPULevel.allCases.filter(KernelSelection.supports).map { PoolEngine(threads: 1, serialWorkBelow: 0, cpuLevel: $0) }
            + [PoolEngine(threads: 1, streamingOutputBytes: 0, serialWorkBelow: 0),
               PoolEngine(threads: 1, gradientStateBytes: 0, serialWorkBelow: 0)]
        for trial in 0..<100 {
            let dims = Int.random(in: 1...3, using: &rng)
            let kernel = (0..<dims).map { _ in Int.random(in: 1...4, using: &rng) }
            let stride = kernel.map { Int.random(in: 1...($0 + 1), using: &rng) }
            // Padding up to half the kernel as MLX allows, and wider in some trials (the C ABI
            // takes it: windows wholly in padding, more outputs than inputs).
            let wide = trial % 7 == 5
            let padding = kernel.map { Int.random(in: 0...(wide ? $0 + 2 : $0 / 2), using: &rng) }
            let kind: PoolKind = trial % 2 == 0 ? .average : .max
            let ties: MaxTies = trial % 4 == 3 ? .first : .split
            // PyTorch's options in some trials: ceil_mode (windows past the padding), and for
            // averages count_include_pad=False (a divisor per window).
            let desc = PoolDescriptor(kind: kind, kernelSize: kernel, stride: stride, padding: padding, ceilMode: trial % 3 == 2,
                                      countIncludePad: kind == .max || trial % 8 < 5)
            let c = [1, 2, 3, 4, 8, 9].randomElement(using: &rng)!
            var spatial = zip(kernel, padding).map { kk, pp in Int.random(in: Swift.max(1, kk - 2 * pp)...(kk + 6), using: &rng) }
            // Taller planes in some trials, cut into several bands of rows (the H axis is the
            // last but one of 2-d and 3-d).
            if dims > 1 && trial % 4 == 1 { spatial[dims - 2] = Int.random(in: (8 * kernel[dims - 2])...(8 * kernel[dims - 2] + 9), using: &rng) }
            let shape = [Int.random(in: 1...2, using: &rng)] + spatial + [c]
            let every = trial % 3 == 0 ? 2 : 1
            var strides = TensorView.contiguousStrides(Array(shape.dropLast()) + [c * every])
            strides[strides.count - 1] = every
            let input = Buffer(dtype, count: shape.reduce(1, *) * every)
            let coarse = trial % 5 < 2
            for i in 0..<input.count {
                let u = rng.next() % 100
                input[i] = u < 3 ? -.infinity : u < 5 ? .nan : coarse ? Double(rng.next() % 3) : rng.normal()
            }
            let outShape = try desc.outputShape(inputShape: shape)
            let cotangentEvery = trial % 3 == 1 ? 3 : 1
            let cotangent = randomInput(dtype, shape: [outShape.reduce(1, *) * cotangentEvery], seed: rng.next())
            let expected = referenceBackward(desc, ties: ties, input: input, shape: shape, strides: strides, cotangent: cotangent,
                                             cotangentEvery: cotangentEvery)
            let (rtol, atol) = averageTolerance(dtype)
            var first: Buffer?
            for engine in engines {
                for threads in [1, 3] {
                    let got = try runBackward(engine, desc, ties: ties, input: input, shape: shape, strides: strides,
                                              cotangent: cotangent, outShape: outShape, cotangentEvery: cotangentEvery, threads: threads)
                    if let first {
                        #expect(memcmp(first.raw, got.raw, got.count * dtype.size) == 0, "\(desc) \(ties) \(shape) \(engine.cpuLevel) threads \(threads)")
                    } else {
                        first = got
                    }
                    for i in 0..<expected.values.count {
                        let a = got[i], e = expected.values[i]
                        let ok = e.isNaN ? a.isNaN : abs(a - e) <= atol + rtol * expected.magnitude[i] * 2
                        if !ok {
                            Issue.record("\(desc) \(ties) \(dtype) \(shape) strides \(strides): element \(i) is \(a), expected \(e)")
                            break
                        }
                    }
                }
            }
        }
    }

    /// Windows that do not overlap, in gradients small enough to stay on the calling thread,
    /// take the max's gradient window by window (`maxSplitDirect`): the same bits as the
    /// pipeline that every other gradient takes (forced here by a threshold of 0), on values
    /// made of ties, signed zeros, infinities and NaN, cotangents of the same, strided views,
    /// padding as wide as MLX allows and wider, ceil_mode; and the float64 definition.
    @Test(arguments: [DType.float32, .float64, .float16, .bfloat16])
    func windowsThatDoNotOverlapGiveThePipelinesBits(dtype: DType) throws {
        var rng = SplitMix64(seed: 1700 + UInt64(dtype.code))
        let direct = CPULevel.allCases.filter(KernelSelection.supports).map { PoolEngine(threads: 1, cpuLevel: $0) }
        let pipeline = PoolEngine(threads: 1, serialWorkBelow: 0)
        let special: [Double] = [0, -0.0, 1, 2, -1, .infinity, -.infinity, .nan]
        for trial in 0..<150 {
            let dims = Int.random(in: 1...3, using: &rng)
            let kernel = (0..<dims).map { _ in Int.random(in: 1...3, using: &rng) }
            let stride = kernel.map { Int.random(in: $0...($0 + 2), using: &rng) }
            let padding = kernel.map { Int.random(in: 0...(trial % 9 == 4 ? $0 + 1 : $0 / 2), using: &rng) }
            let desc = PoolDescriptor(kind: .max, kernelSize: kernel, stride: stride, padding: padding, ceilMode: trial % 3 == 2)
            let c = [1, 2, 3, 4, 8, 9].randomElement(using: &rng)!
            let spatial = zip(kernel, padding).map { kk, pp in Int.random(in: Swift.max(1, kk - 2 * pp)...(3 * kk + 4), using: &rng) }
            let shape = [Int.random(in: 1...2, using: &rng)] + spatial + [c]
            let every = trial % 4 == 1 ? 2 : 1
            var strides = TensorView.contiguousStrides(Array(shape.dropLast()) + [c * every])
            strides[strides.count - 1] = every
            let input = Buffer(dtype, count: shape.reduce(1, *) * every)
            for i in 0..<input.count {
                input[i] = trial % 2 == 0 ? special.randomElement(using: &rng)! : Double(rng.next() % 3) - 1
            }
            let outShape = try desc.outputShape(inputShape: shape)
            let cotangentEvery = trial % 4 == 2 ? 3 : 1
            let cotangent = randomInput(dtype, shape: [outShape.reduce(1, *) * cotangentEvery], seed: rng.next())
            for i in 0..<cotangent.count where rng.next() % 6 == 0 { cotangent[i] = special.randomElement(using: &rng)! }
            let expected = try runBackward(pipeline, desc, ties: .split, input: input, shape: shape, strides: strides,
                                           cotangent: cotangent, outShape: outShape, cotangentEvery: cotangentEvery)
            let reference = referenceBackward(desc, ties: .split, input: input, shape: shape, strides: strides, cotangent: cotangent,
                                              cotangentEvery: cotangentEvery)
            for engine in direct {
                let got = try runBackward(engine, desc, ties: .split, input: input, shape: shape, strides: strides,
                                          cotangent: cotangent, outShape: outShape, cotangentEvery: cotangentEvery)
                #expect(memcmp(expected.raw, got.raw, got.count * dtype.size) == 0,
                        "\(desc) \(dtype) \(shape) strides \(strides) \(engine.cpuLevel): not the pipeline's bits")
                let (rtol, atol) = averageTolerance(dtype)
                for i in 0..<reference.values.count {
                    let a = got[i], e = reference.values[i]
                    let ok = e.isNaN ? a.isNaN : a == e || abs(a - e) <= atol + rtol * reference.magnitude[i] * 2
                    if !ok {
                        Issue.record("\(desc) \(dtype) \(shape): element \(i) is \(a), expected \(e)")
                        break
                    }
                }
            }
        }
    }

    @Test func refusals() throws {
        let desc = PoolDescriptor(kind: .max, kernelSize: [2])
        let input = Buffer(.int8, count: 4), g = Buffer(.int8, count: 2), out = Buffer(.int8, count: 4)
        func call(_ inputDType: DType, _ gradShape: [Int], _ gradDType: DType, outShape: [Int] = [1, 4, 1],
                  outData: UnsafeMutableRawPointer? = nil) -> PoolError? {
            do {
                try PoolEngine.shared.backward(desc, input: TensorView(data: input.raw, dtype: inputDType, shape: [1, 4, 1]),
                                               gradOutput: TensorView(data: g.raw, dtype: gradDType, shape: gradShape),
                                               gradInput: OutputView(data: outData ?? out.raw, dtype: inputDType, shape: outShape))
                return nil
            } catch let error as PoolError { return error } catch { return nil }
        }
        #expect(call(.int8, [1, 2, 1], .int8)?.message.contains("floating-point inputs") == true)
        #expect(call(.float16, [1, 2, 1], .float32)?.message.contains("grad_output dtype must be float16") == true)
        #expect(call(.float16, [1, 3, 1], .float16)?.message.contains("grad_output shape must be (1, 2, 1)") == true)
        #expect(call(.float16, [1, 2, 1], .float16, outShape: [1, 2, 2])?.message.contains("grad_input shape must be") == true)
        #expect(call(.float16, [1, 2, 1], .float16, outData: input.raw)?.message.contains("overlaps input") == true)
    }

    /// A gradient as small as a forward call that stays on the calling thread stays there
    /// too (handing it to a helper cost more than the gradient); with the threshold at 0 the
    /// same gradient is split, the same bits. Each call asks `isCancelled` on the threads
    /// that run it, before each plane.
    @Test func aTinyGradientStaysOnTheCallingThread() throws {
        final class Threads: @unchecked Sendable {
            private var lock = pthread_mutex_t()
            private(set) var others = 0
            let caller = pthread_self()
            init() { pthread_mutex_init(&lock, nil) }
            func ask() -> Bool {
                pthread_mutex_lock(&lock)
                if pthread_equal(pthread_self(), caller) == 0 { others += 1 }
                pthread_mutex_unlock(&lock)
                return false
            }
        }
        // 4 x 6 planes, 4 x 5 x 5 x 5 windows of 8 taps over 4 channels: 16,000 window reads.
        let shape = [4, 6, 6, 6, 4]
        let count = shape.reduce(1, *)
        let x = Buffer(.float32, count: count), out = Buffer(.float32, count: count)
        for i in 0..<count { x[i] = Double((i * 37) % 101) }
        func desc(_ kind: PoolKind) -> PoolDescriptor {
            PoolDescriptor(kind: kind, kernelSize: [2, 2, 2], stride: [1, 1, 1], padding: [0, 0, 0])
        }
        let outShape = try desc(.max).outputShape(inputShape: shape)
        let g = Buffer(.float32, count: outShape.reduce(1, *))
        for i in 0..<g.count { g[i] = Double(i % 5) }
        func run(_ engine: PoolEngine, _ kind: PoolKind) throws -> (others: Int, gradient: [Double]) {
            let threads = Threads()
            // Back to back, so the helpers of the previous call are still awake to join.
            for _ in 0..<50 {
                try engine.backward(desc(kind), input: TensorView(data: x.raw, dtype: .float32, shape: shape),
                                    gradOutput: TensorView(data: g.raw, dtype: .float32, shape: outShape),
                                    gradInput: OutputView(data: out.raw, dtype: .float32, shape: shape), threads: 2,
                                    isCancelled: { threads.ask() })
            }
            return (threads.others, (0..<count).map { out[$0] })
        }
        for kind in [PoolKind.average, .max] {
            let serial = try run(PoolEngine(threads: 2), kind)
            #expect(serial.others == 0, "\(kind): \(serial.others) planes asked on another thread")
            let split = try run(PoolEngine(threads: 2, serialWorkBelow: 0), kind)
            #expect(split.gradient == serial.gradient, "\(kind): split among threads, the same gradient")
        }
    }

    /// A cancelled gradient stops between planes and says so; one not cancelled is whole.
    @Test func cancellationStopsBetweenPlanes() throws {
        final class Countdown: @unchecked Sendable {
            var left: Int
            init(_ left: Int) { self.left = left }
        }
        let shape = [2, 6, 5, 4, 3]
        let count = shape.reduce(1, *)
        let x = Buffer(.float32, count: count), g = Buffer(.float32, count: count), out = Buffer(.float32, count: count)
        for i in 0..<count { x[i] = Double(i % 7); g[i] = 1 }
        let engine = PoolEngine(threads: 1)
        for (kind, ties) in [(PoolKind.average, MaxTies.split), (.max, .split), (.max, .first)] {
            let desc = PoolDescriptor(kind: kind, kernelSize: [3, 3, 3], stride: [1, 1, 1], padding: [1, 1, 1])
            func run(_ isCancelled: (@Sendable () -> Bool)?) throws {
                for i in 0..<count { out[i] = -7 }
                try engine.backward(desc, input: TensorView(data: x.raw, dtype: .float32, shape: shape),
                                    gradOutput: TensorView(data: g.raw, dtype: .float32, shape: shape),
                                    gradInput: OutputView(data: out.raw, dtype: .float32, shape: shape), ties: ties,
                                    isCancelled: isCancelled)
            }
            try run { false }
            #expect((0..<count).allSatisfy { out[$0] != -7 }, "\(kind) \(ties): every element written")
            // One plane allowed (averages and "first" ask before each of their planes; "split" also
            // before its windows' planes), then cancelled: the call throws, elements stay unwritten.
            let countdown = Countdown(1)
            #expect(throws: PoolError.self) {
                try run { countdown.left -= 1; return countdown.left < 0 }
            }
            let written = (0..<count).filter { out[$0] != -7 }.count
            #expect(written < count, "\(kind) \(ties): \(written) of \(count) written after cancelling")
        }
    }
}
