import CTidepool
import Testing
import TidepoolCore

#if canImport(Glibc)
import Glibc
#endif

/// PyTorch's options beyond MLX: ceil_mode (output lengths and the last window) and, for
/// averages, count_include_pad=False (a divisor per window), against the float64 reference
/// (Support.swift, written from PyTorch's definitions) and values PyTorch gives.
@Suite struct OptionsTests {
    /// Output lengths by ATen's pooling_output_shape, worked by hand: (n, k, s, p) -> length.
    @Test func ceilModeLengths() throws {
        let cases: [(n: Int, k: Int, s: Int, p: Int, floor: Int, ceil: Int)] = [
            (5, 2, 2, 0, 2, 3),    // an odd axis keeps its last element
            (4, 2, 2, 0, 2, 2),    // exact: no extra window
            (6, 3, 2, 1, 3, 4),    // the extra window starts inside the input
            (5, 2, 2, 1, 3, 3),    // ceil gives 4, but window 3 would start at 6 - 1 = 5 = n: dropped
            (8, 3, 3, 1, 3, 3),    // the same at a stride of 3
            (9, 3, 3, 1, 3, 4),
            (4, 5, 2, 0, 0, 1),    // a window longer than the input, by less than the stride
            (1, 1, 5, 0, 1, 1),
            (0, 1, 1, 0, 0, 0),
            (1, 4, 1, 0, -2, -2),  // a kernel past the input by more than the stride
        ]
        for c in cases {
            for ceilMode in [false, true] {
                let desc = PoolDescriptor(kind: .max, kernelSize: [c.k], stride: [c.s], padding: [c.p], ceilMode: ceilMode)
                let expected = ceilMode ? c.ceil : c.floor
                #expect(referenceLength(c.n, kernel: c.k, stride: c.s, padding: c.p, ceilMode: ceilMode) == expected, "\(c)")
                if expected < 0 {
                    expectPoolError(TP_ERR_SHAPE, ["negative", ceilMode ? "ceil" : "floor"]) { _ = try desc.outputShape(inputShape: [1, c.n, 1]) }
                } else {
                    #expect(try desc.outputShape(inputShape: [1, c.n, 1]) == [1, expected, 1], "\(c) ceil_mode \(ceilMode)")
                }
            }
        }
    }

    /// Values PyTorch gives (torch.nn.functional.avg_pool1d / max_pool1d on arange(1, 6)).
    @Test func pytorchExamples() throws {
        func pool(_ kind: PoolKind, _ values: [Double], k: Int, s: Int, p: Int, ceil: Bool, includePad: Bool = true) throws -> [Double] {
            let input = Buffer(.float32, count: values.count)
            for (i, v) in values.enumerated() { input[i] = v }
            let desc = PoolDescriptor(kind: kind, kernelSize: [k], stride: [s], padding: [p], ceilMode: ceil, countIncludePad: includePad)
            let run = try runEngine(desc, storage: input, offset: 0, shape: [1, values.count, 1], strides: [values.count, 1, 1])
            return (0..<run.output.count).map { run.output[$0] }
        }
        let x: [Double] = [1, 2, 3, 4, 5]
        // avg_pool1d(x, 2, 2, ceil_mode=True): the last window holds 5 and one position past
        // the input (and past the padding): divided by 1.
        #expect(try pool(.average, x, k: 2, s: 2, p: 0, ceil: true) == [1.5, 3.5, 5])
        #expect(try pool(.max, x, k: 2, s: 2, p: 0, ceil: true) == [2, 4, 5])
        #expect(try pool(.average, x, k: 2, s: 2, p: 0, ceil: false) == [1.5, 3.5])
        // avg_pool1d(x, 3, 1, padding=1, count_include_pad=False): edge windows by 2.
        #expect(try pool(.average, x, k: 3, s: 1, p: 1, ceil: false, includePad: false) == [1.5, 2, 3, 4, 4.5])
        // ... and True: by 3, padding counted.
        #expect(try pool(.average, x, k: 3, s: 1, p: 1, ceil: false) == [1, 2, 3, 4, 3])
        // avg_pool1d(arange(1, 7), 3, 2, padding=1, ceil_mode=True): windows [-1, 2) .. [5, 8);
        // the last holds 6, the right padding position 6, and 7 past the padding: divided by 2
        // (count_include_pad=True) or by 1 (False).
        let y: [Double] = [1, 2, 3, 4, 5, 6]
        #expect(try pool(.average, y, k: 3, s: 2, p: 1, ceil: true) == [1, 3, 5, 3])
        #expect(try pool(.average, y, k: 3, s: 2, p: 1, ceil: true, includePad: false) == [1.5, 3, 5, 6])
    }

    @Test func refusalsAndDescriptions() throws {
        let max = PoolDescriptor(kind: .max, kernelSize: [2], countIncludePad: false)
        expectPoolError(TP_ERR_INVALID_ARGUMENT, ["count_include_pad", "average"]) { try max.validate() }
        let avg = PoolDescriptor(kind: .average, kernelSize: [2, 2], ceilMode: true, countIncludePad: false)
        #expect(avg.description == "AvgPool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=True, count_include_pad=False)")
        #expect(PoolDescriptor(kind: .average, kernelSize: [2]).description == "AvgPool1d(kernel_size=(2,), stride=(2,), padding=(0,))")
    }

    /// Random configurations of both options on every dtype, with strided views, 1 and 3
    /// threads and tiny tiles (so that tiles begin inside the edge bands), against the
    /// reference; and the same bits for every thread count and tiling.
    @Test(arguments: DType.allCases)
    func randomConfigurations(dtype: DType) throws {
        var rng = SplitMix64(seed: 0xCE11_0000 ^ UInt64(dtype.code))
        let engines = [PoolEngine(threads: 1), PoolEngine(threads: 3, tileBudgetBytes: 512, serialWorkBelow: 0),
                       PoolEngine(threads: 2, streamingOutputBytes: 0, serialWorkBelow: 0)]
        var checked = 0
        for trial in 0..<80 {
            let spatial = Int.random(in: 1...3, using: &rng)
            let kernel = (0..<spatial).map { _ in Int.random(in: 1...(trial % 4 == 0 ? 9 : 4), using: &rng) }
            let stride = kernel.map { Int.random(in: 1...($0 + 1), using: &rng) }
            // Padding within PyTorch's bound (half the kernel) mostly, wider (as MLX allows) at times.
            let padding = kernel.map { Int.random(in: 0...(trial % 6 == 5 ? $0 + 1 : $0 / 2), using: &rng) }
            let channels = [1, 2, 3, 5, 8, 9, 16].randomElement(using: &rng)!
            let shape = [Int.random(in: 1...2, using: &rng)] + kernel.map { Int.random(in: 0...($0 + 9), using: &rng) } + [channels]
            let kind: PoolKind = trial % 3 == 0 ? .max : .average
            let desc = PoolDescriptor(kind: kind, kernelSize: kernel, stride: stride, padding: padding, ceilMode: trial % 2 == 0,
                                      countIncludePad: kind == .max || trial % 4 >= 2)
            // Every other trial reads a view: channels every other element of a wider tensor.
            let every = trial % 2 == 1 ? 2 : 1
            var strides = TensorView.contiguousStrides(Array(shape.dropLast()) + [channels * every])
            strides[strides.count - 1] = every
            let storage = randomInput(dtype, shape: [shape.reduce(1, *) * every], seed: rng.next())
            guard let expected = referencePool(desc, storage: storage, offset: 0, shape: shape, strides: strides) else {
                expectPoolError(TP_ERR_SHAPE, ["negative"]) { _ = try desc.outputShape(inputShape: shape) }
                continue
            }
            var first: Buffer?
            for engine in engines {
                let run = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: engine)
                #expect(run.shape == expected.shape, "\(desc) \(shape)")
                let mismatch = firstMismatch(desc, dtype: dtype, actual: run.output, expected: expected.values)
                #expect(mismatch == nil, "\(desc) \(dtype) \(shape) strides \(strides): \(mismatch ?? "")")
                if let first {
                    #expect(memcmp(first.raw, run.output.raw, run.output.count * run.output.dtype.size) == 0,
                            "\(desc) \(dtype) \(shape): bits differ between engines")
                } else {
                    first = run.output
                }
            }
            checked += 1
        }
        #expect(checked > 60)
    }

    /// float32 and float64 edge means are rescaled from the window-size mean, except where that
    /// mean is subnormal (its lost bits would be scaled up): those are summed again. Against
    /// the reference within the dtype's relative bound and one unit of the subnormal grid
    /// (the final rounding); 3-d windows of 7 with padding 3, whose corners scale by 343 / 64.
    @Test(arguments: [DType.float32, .float64])
    func tinyMeansKeepTheirPrecision(dtype: DType) throws {
        let tiny = dtype == .float32 ? Double(Float.leastNormalMagnitude) : Double.leastNormalMagnitude
        let grid = dtype == .float32 ? Double(Float.leastNonzeroMagnitude) : Double.leastNonzeroMagnitude
        // Inputs far below the smallest normal give subnormal means.
        for magnitude in [tiny / 4096, tiny * 2, tiny * 1e6, 1.0] {
            let shape = [1, 7, 7, 7, 1]
            let input = Buffer(dtype, count: shape.reduce(1, *))
            var rng = SplitMix64(seed: 5)
            for i in 0..<input.count { input[i] = magnitude * (1 + Double(rng.next() % 1000) / 1000) }
            let desc = PoolDescriptor(kind: .average, kernelSize: [7, 7, 7], stride: [1, 1, 1], padding: [3, 3, 3],
                                      countIncludePad: false)
            let strides = TensorView.contiguousStrides(shape)
            let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
            let run = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides)
            let bound = dtype == .float32 ? 1e-6 : 1e-15
            var worst = 0.0
            for i in 0..<expected.values.count {
                let e = expected.values[i], a = run.output[i]
                worst = max(worst, abs(a - e) - bound * abs(e))
            }
            #expect(worst <= grid, "\(dtype) magnitude \(magnitude): off by \(worst / grid) units of the subnormal grid")
        }
    }

    /// Tensors large enough for the vectorised strategies (block scans, pairs along W,
    /// streamed outputs, 16-bit finishing), the pyramid's 2x2x2 on odd axes among them.
    @Test(arguments: [DType.float32, .float16, .bfloat16, .int16])
    func largeTensorsThroughEveryStrategy(dtype: DType) throws {
        let cases: [PoolDescriptor] = [
            PoolDescriptor(kind: .average, kernelSize: [2, 2, 2], ceilMode: true, countIncludePad: false),
            PoolDescriptor(kind: .average, kernelSize: [3, 3, 3], stride: [1, 1, 1], padding: [1, 1, 1], countIncludePad: false),
            PoolDescriptor(kind: .average, kernelSize: [7, 7], stride: [1, 1], padding: [3, 3], countIncludePad: false),
            PoolDescriptor(kind: .average, kernelSize: [3, 3], stride: [2, 2], padding: [1, 1], ceilMode: true),
            PoolDescriptor(kind: .max, kernelSize: [3, 3, 3], stride: [2, 2, 2], padding: [1, 1, 1], ceilMode: true),
            PoolDescriptor(kind: .average, kernelSize: [9], stride: [1], padding: [4], ceilMode: true, countIncludePad: false),
        ]
        for (index, desc) in cases.enumerated() {
            let shape = desc.spatialDims == 3 ? [1, 13, 15, 17, 8] : desc.spatialDims == 2 ? [2, 41, 39, 8] : [3, 301, 9]
            try checkContiguous(desc, dtype, shape: shape, seed: UInt64(index))
        }
    }
}
