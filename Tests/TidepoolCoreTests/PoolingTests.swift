import CTidepool
import CTidepoolVector
import Testing
import TidepoolCore
import TidepoolKernels

#if canImport(Glibc)
import Glibc
#endif

/// Pools a contiguous random input and checks it against the float64 reference.
func checkContiguous(_ desc: PoolDescriptor, _ dtype: DType, shape: [Int], seed: UInt64 = 1,
                     sourceLocation: SourceLocation = #_sourceLocation) throws {
    let input = randomInput(dtype, shape: shape, seed: seed)
    let strides = TensorView.contiguousStrides(shape)
    let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides),
                                sourceLocation: sourceLocation)
    let run = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides)
    #expect(run.shape == expected.shape, sourceLocation: sourceLocation)
    let mismatch = firstMismatch(desc, dtype: dtype, actual: run.output, expected: expected.values)
    #expect(mismatch == nil, "\(desc) \(dtype) \(shape) seed \(seed): \(mismatch ?? "")", sourceLocation: sourceLocation)
}

/// The default engine and one whose tiny scratch budget cuts tensors into many tiles.
func defaultAndTinyTileEngines(budget: Int) -> [(budget: Int, engine: PoolEngine)] {
    [(KernelSettings.defaultTileBudgetBytes, PoolEngine(threads: 2)), (budget, PoolEngine(threads: 2, tileBudgetBytes: budget))]
}

/// Pools a view of `storage` on each engine and checks every result against the float64 reference.
func checkEngines(_ engines: [(budget: Int, engine: PoolEngine)], _ desc: PoolDescriptor, _ dtype: DType, storage: Buffer,
                  shape: [Int], strides: [Int], sourceLocation: SourceLocation = #_sourceLocation) throws {
    let expected = try #require(referencePool(desc, storage: storage, offset: 0, shape: shape, strides: strides),
                                sourceLocation: sourceLocation)
    for (budget, engine) in engines {
        let run = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: engine)
        let mismatch = firstMismatch(desc, dtype: dtype, actual: run.output, expected: expected.values)
        #expect(mismatch == nil, "\(desc) \(dtype) \(shape) strides \(strides) budget \(budget): \(mismatch ?? "")",
                sourceLocation: sourceLocation)
    }
}

@Suite struct EdgeCaseTests {
    @Test(arguments: DType.allCases, PoolKind.allCases)
    func everyDTypeWithPadding(dtype: DType, kind: PoolKind) throws {
        try checkContiguous(PoolDescriptor(kind: kind, kernelSize: [3, 2, 2], stride: [2, 1, 2], padding: [1, 1, 0]),
                            dtype, shape: [2, 5, 4, 5, 3])
        try checkContiguous(PoolDescriptor(kind: kind, kernelSize: [3, 3], stride: [1, 2], padding: [1, 1]),
                            dtype, shape: [2, 6, 5, 4], seed: 2)
        try checkContiguous(PoolDescriptor(kind: kind, kernelSize: [4], stride: [3], padding: [2]),
                            dtype, shape: [3, 11, 5], seed: 3)
    }

    @Test(arguments: PoolKind.allCases)
    func paddingWiderThanHalfTheKernel(kind: PoolKind) throws {
        try checkContiguous(PoolDescriptor(kind: kind, kernelSize: [2, 3, 2], stride: [1, 1, 1], padding: [3, 2, 5]),
                            .float32, shape: [1, 3, 4, 2, 2])
    }

    @Test func windowsEntirelyInPadding() throws {
        // Length 1 padded by 3 with kernel 2, stride 1: windows 0, 1, 4 and 5 see only padding.
        let input = Buffer(.float32, count: 2)
        input[0] = 5; input[1] = -7
        for kind in PoolKind.allCases {
            let desc = PoolDescriptor(kind: kind, kernelSize: [2], stride: [1], padding: [3])
            let run = try runEngine(desc, storage: input, offset: 0, shape: [1, 1, 2], strides: [2, 2, 1])
            #expect(run.shape == [1, 6, 2])
            let values = (0..<12).map { run.output[$0] }
            if kind == .average {
                #expect(values == [0, 0, 0, 0, 2.5, -3.5, 2.5, -3.5, 0, 0, 0, 0])
            } else {
                let inf = -Double.infinity
                #expect(values == [inf, inf, inf, inf, 5, -7, 5, -7, inf, inf, inf, inf])
            }
        }
        // Integers pad max pooling with the type's lowest value (MLX pads 8/16-bit with 0).
        let ints = Buffer(.int16, count: 1)
        ints[0] = -3
        let run = try runEngine(PoolDescriptor(kind: .max, kernelSize: [2], stride: [1], padding: [2]),
                                storage: ints, offset: 0, shape: [1, 1, 1], strides: [1, 1, 1])
        #expect((0..<4).map { run.output[$0] } == [Double(Int16.min), -3, -3, Double(Int16.min)])
    }

    /// Windows of one element (kernel 1 on every axis) run whole, tap by tap (float averages
    /// always, others with 8+ channels): padding up to twice the stride (windows wholly in it
    /// at both ends and between taps), strides along each axis alone and together, ceil mode,
    /// channels below, at and past 8, views whose rows are not dense; against the reference,
    /// bit for bit across tiles cut small and threads.
    @Test(arguments: [DType.float32, .float16, .int8, .uint16, .int64], PoolKind.allCases)
    func windowsOfOneElement(dtype: DType, kind: PoolKind) throws {
        let engines = [PoolEngine(threads: 1), PoolEngine(threads: 2, tileBudgetBytes: 64, serialWorkBelow: 0)]
        for channels in [1, 3, 8, 17] {
            for stride in [[1, 1, 1], [2, 3, 1], [1, 1, 3], [3, 2, 2]] {
                for padding in [[0, 0, 0], [1, 0, 2], [2, 2, 1]] {
                    for ceilMode in [false, true] {
                        let desc = PoolDescriptor(kind: kind, kernelSize: [1, 1, 1], stride: stride, padding: padding, ceilMode: ceilMode)
                        let shape = [2, 3, 5, 7, channels]
                        // Every other position of a row twice as long: rows not dense.
                        for sparse in [false, true] {
                            let storageShape = sparse ? [2, 3, 5, 14, channels] : shape
                            let input = randomInput(dtype, shape: storageShape, seed: UInt64(channels * 100 + stride[2] * 10 + padding[2]))
                            var strides = TensorView.contiguousStrides(storageShape)
                            strides[3] *= sparse ? 2 : 1
                            try expectEnginesAgree(desc, dtype, storage: input, shape: shape, strides: strides, engines: engines,
                                                   "\(desc) \(dtype) C=\(channels) sparse \(sparse)")
                        }
                    }
                }
            }
        }
    }

    @Test func zeroSizedSpatialInputWithPadding() throws {
        // No input elements, null data: every window is padding.
        let desc = PoolDescriptor(kind: .average, kernelSize: [1, 1], padding: [1, 0])
        let output = Buffer(.float32, count: 2 * 2 * 3)
        try PoolEngine.shared.pool(desc, input: TensorView(data: nil, dtype: .float32, shape: [2, 0, 3, 1]),
                                   output: OutputView(data: output.raw, dtype: .float32, shape: [2, 2, 3, 1]))
        #expect((0..<12).allSatisfy { output[$0] == 0 })
    }

    @Test func documentedCornerIsInputOverEight() throws {
        // MLX reference: the corner output of AvgPool3d(2, 2, padding=1) is x[0,0,0,:] / 8.
        let shape = [1, 4, 4, 4, 3]
        let input = randomInput(.float32, shape: shape, seed: 9)
        let run = try runEngine(PoolDescriptor(kind: .average, kernelSize: [2, 2, 2], padding: [1, 1, 1]),
                                storage: input, offset: 0, shape: shape, strides: TensorView.contiguousStrides(shape))
        #expect(run.shape == [1, 3, 3, 3, 3])
        for c in 0..<3 { #expect(run.output[c] == Double(Float(input[c]) / 8)) }
    }

    @Test(arguments: PoolKind.allCases)
    func kernelOneAndStrideLargerThanKernel(kind: PoolKind) throws {
        try checkContiguous(PoolDescriptor(kind: kind, kernelSize: [1, 1, 1]), .float32, shape: [2, 3, 3, 3, 2])
        try checkContiguous(PoolDescriptor(kind: kind, kernelSize: [2, 1, 2], stride: [3, 4, 5]), .float32, shape: [2, 7, 9, 11, 2])
        try checkContiguous(PoolDescriptor(kind: kind, kernelSize: [1], stride: [4], padding: [1]), .int32, shape: [1, 9, 1])
    }

    @Test func emptyOutputs() throws {
        for shape in [[0, 4, 4, 3], [2, 4, 4, 0], [2, 1, 4, 3]] {
            let desc = PoolDescriptor(kind: .max, kernelSize: [2, 2])
            let outShape = try desc.outputShape(inputShape: shape)
            #expect(outShape.reduce(1, *) == 0)
            let input = Buffer(.float32, count: shape.reduce(1, *))
            try PoolEngine.shared.pool(desc, input: TensorView(data: input.raw, dtype: .float32, shape: shape),
                                       output: OutputView(data: nil, dtype: .float32, shape: outShape))
        }
    }

    @Test func maxPropagatesNaNAndKeepsInfinities() throws {
        let input = Buffer(.float32, count: 6)
        for (i, v) in [1.0, .nan, 3, -.infinity, .infinity, -1].enumerated() { input[i] = v }
        for dtype in [DType.float32, .float16, .bfloat16, .float64] {
            let typed = Buffer(dtype, count: 6)
            for i in 0..<6 { typed[i] = input[i] }
            let run = try runEngine(PoolDescriptor(kind: .max, kernelSize: [2]), storage: typed, offset: 0,
                                    shape: [1, 6, 1], strides: [6, 1, 1])
            #expect(run.output[0].isNaN)
            #expect(run.output[1] == 3)
            #expect(run.output[2] == .infinity)
            let average = try runEngine(PoolDescriptor(kind: .average, kernelSize: [2]), storage: typed, offset: 0,
                                        shape: [1, 6, 1], strides: [6, 1, 1])
            #expect(average.output[0].isNaN)
            #expect(average.output[1] == -.infinity)
        }
    }

    /// 16-bit floats take max as integer keys of their bit patterns: every ordering corner.
    @Test(arguments: [DType.float16, .bfloat16])
    func halfFloatMaxOrdersEveryCorner(dtype: DType) throws {
        let negativeNaN = -Double.nan
        let values: [[Double]] = [
            [-0.0, -0.0], [-0.0, 0], [0, -0.0], [-1, -0.0], [-.infinity, -.infinity], [-.infinity, -65504],
            [-2, -3], [1e-7, 0], [-1e-7, -2e-7], [.infinity, 1], [.nan, .infinity], [negativeNaN, -.infinity],
            [-.infinity, negativeNaN], [3, -4],
        ]
        let input = Buffer(dtype, count: values.count * 2)
        for (i, pair) in values.enumerated() { input[2 * i] = pair[0]; input[2 * i + 1] = pair[1] }
        let run = try runEngine(PoolDescriptor(kind: .max, kernelSize: [2], stride: [2]), storage: input, offset: 0,
                                shape: [1, values.count * 2, 1], strides: [values.count * 2, 1, 1])
        for i in 0..<values.count {
            let a = input[2 * i], b = input[2 * i + 1]
            if a.isNaN || b.isNaN {
                #expect(run.output[i].isNaN, "\(values[i])")
                continue
            }
            let expected = b > a || (b == a && a.sign == .minus) ? b : a  // +0 above -0
            #expect(run.output[i] == expected && run.output[i].sign == expected.sign, "\(values[i]): got \(run.output[i])")
        }
        // Padding counts as -inf: below -0.
        let padded = try runEngine(PoolDescriptor(kind: .max, kernelSize: [3], padding: [1]), storage: input, offset: 0,
                                   shape: [1, 1, 1], strides: [1, 1, 1])
        #expect(padded.output[0] == -0.0 && padded.output[0].sign == .minus)
    }

    @Test func integerExtremes() throws {
        // Max is exact over the whole range; average of 64-bit integers rounds once to float32.
        let max64 = Buffer(.int64, count: 4)
        max64.raw.storeBytes(of: Int64.min, toByteOffset: 0, as: Int64.self)
        max64.raw.storeBytes(of: Int64.max, toByteOffset: 8, as: Int64.self)
        max64.raw.storeBytes(of: Int64.min + 1, toByteOffset: 16, as: Int64.self)
        max64.raw.storeBytes(of: Int64.min, toByteOffset: 24, as: Int64.self)
        let run = try runEngine(PoolDescriptor(kind: .max, kernelSize: [2]), storage: max64, offset: 0, shape: [1, 4, 1], strides: [4, 1, 1])
        #expect(run.output.raw.load(fromByteOffset: 0, as: Int64.self) == Int64.max)
        #expect(run.output.raw.load(fromByteOffset: 8, as: Int64.self) == Int64.min + 1)

        let u8 = Buffer(.uint8, count: 4)
        for i in 0..<4 { u8[i] = 255 }
        let mean = try runEngine(PoolDescriptor(kind: .average, kernelSize: [4]), storage: u8, offset: 0, shape: [1, 4, 1], strides: [4, 1, 1])
        #expect(mean.output.dtype == .float32)
        #expect(mean.output[0] == 255)

        let i32 = Buffer(.int32, count: 3)
        for i in 0..<3 { i32[i] = Double(Int32.max) }
        let mean32 = try runEngine(PoolDescriptor(kind: .average, kernelSize: [3]), storage: i32, offset: 0, shape: [1, 3, 1], strides: [3, 1, 1])
        #expect(mean32.output[0] == Double(Float(Int32.max)))
    }
}

@Suite struct StridedInputTests {
    /// Pools a view (`shape`, `strides`, starting at `offset`) of a random buffer and compares.
    func check(_ desc: PoolDescriptor, _ dtype: DType, storageCount: Int, offset: Int, shape: [Int], strides: [Int]) throws {
        let storage = randomInput(dtype, shape: [storageCount], seed: 77)
        let expected = try #require(referencePool(desc, storage: storage, offset: offset, shape: shape, strides: strides))
        let run = try runEngine(desc, storage: storage, offset: offset, shape: shape, strides: strides)
        let mismatch = firstMismatch(desc, dtype: dtype, actual: run.output, expected: expected.values)
        #expect(mismatch == nil, "\(desc) \(shape) strides \(strides): \(mismatch ?? "")")
    }

    @Test(arguments: PoolKind.allCases, [DType.float32, .bfloat16, .int16, .float64])
    func channelsFirstStorage(kind: PoolKind, dtype: DType) throws {
        // Storage (N, C, D, H, W) = (2, 3, 4, 5, 6) read as (N, D, H, W, C).
        try check(PoolDescriptor(kind: kind, kernelSize: [2, 3, 2], stride: [1, 2, 2], padding: [1, 1, 0]), dtype,
                  storageCount: 720, offset: 0, shape: [2, 4, 5, 6, 3], strides: [360, 30, 6, 1, 120])
    }

    /// A float average's bits do not depend on the input's layout: a view (every other channel
    /// from the second column, or channels-first storage) gives the bits of the same values
    /// made contiguous, though the plan reads whether rows are dense (such views are packed
    /// first). Windows up to 8 (block scans, pairs), channels on both sides of 8.
    @Test(arguments: [DType.float32, .float64, .float16, .bfloat16])
    func floatAveragesOfViewsHaveTheContiguousBits(dtype: DType) throws {
        var rng = SplitMix64(seed: 0x1A70 ^ UInt64(dtype.code))
        for trial in 0..<80 {
            let spatial = 1 + trial % 3
            let kernel = (0..<spatial).map { _ in Int.random(in: 1...8, using: &rng) }
            let stride = kernel.map { Int.random(in: 1...$0, using: &rng) }
            let padding = kernel.map { Int.random(in: 0...($0 / 2), using: &rng) }
            let channels = [1, 2, 3, 5, 8, 9][Int.random(in: 0..<6, using: &rng)]
            let shape = [Int.random(in: 1...2, using: &rng)] + kernel.map { Int.random(in: $0...($0 + 12), using: &rng) } + [channels]
            let desc = PoolDescriptor(kind: .average, kernelSize: kernel, stride: stride, padding: padding,
                                      ceilMode: trial % 4 == 1, countIncludePad: trial % 3 != 0)
            let rank = shape.count
            let storage: Buffer, offset: Int, strides: [Int]
            if trial % 3 == 2 {
                // Channels-first storage (N, C, spatial...) read as channels-last.
                let first = [shape[0], channels] + shape[1..<(rank - 1)]
                let firstStrides = TensorView.contiguousStrides(first)
                storage = randomInput(dtype, shape: first, seed: rng.next())
                offset = 0
                strides = [firstStrides[0]] + firstStrides[2...] + [firstStrides[1]]
            } else {
                var wide = shape
                wide[rank - 2] += 2
                wide[rank - 1] *= 2
                let wideStrides = TensorView.contiguousStrides(wide)
                storage = randomInput(dtype, shape: wide, seed: rng.next())
                offset = wideStrides[rank - 2]
                strides = Array(wideStrides[..<(rank - 1)]) + [2]
            }
            // The same values, contiguous.
            let contiguous = Buffer(dtype, count: shape.reduce(1, *))
            let contiguousStrides = TensorView.contiguousStrides(shape)
            for flat in 0..<contiguous.count {
                var address = offset, rest = flat
                for axis in 0..<rank {
                    address += rest / contiguousStrides[axis] * strides[axis]
                    rest %= contiguousStrides[axis]
                }
                (contiguous.raw + flat * dtype.size).copyMemory(from: storage.raw + address * dtype.size, byteCount: dtype.size)
            }
            let view = try runEngine(desc, storage: storage, offset: offset, shape: shape, strides: strides)
            let dense = try runEngine(desc, storage: contiguous, offset: 0, shape: shape, strides: contiguousStrides)
            #expect(memcmp(view.output.raw, dense.output.raw, view.output.count * view.output.dtype.size) == 0,
                    "\(desc) \(dtype) \(shape) strides \(strides)")
        }
    }

    /// A float average sums from +0, as MLX's does: a window whose inputs are all -0 (padded or
    /// not) averages to +0, but a window of one element passes it through, -0 included; on
    /// every path (rows at the stride and subsampled, block scans, depth first, tiles cut small,
    /// both CPU levels, the vector finish kernels where the CPU has them and the Swift loops).
    /// Inputs mostly -0, so that many windows hold nothing else; `firstMismatch` requires a mean
    /// of zero to have the reference's sign.
    @Test(arguments: [DType.float32, .float64, .float16, .bfloat16])
    func averagesOfNegativeZerosHaveMLXSigns(dtype: DType) throws {
        // Bit for bit the same outputs, then block scans from 2 taps (another order of adds).
        let levels = CPULevel.allCases.filter(KernelSelection.supports)
        let engines = levels.map { PoolEngine(threads: 1, cpuLevel: $0) } + [
            PoolEngine(threads: 2, tileBudgetBytes: 64, serialWorkBelow: 0), PoolEngine(threads: 1, usesVectorKernels: false),
        ]
        let scans = PoolEngine(threads: 1, blockScanTaps: 2)
        var rng = SplitMix64(seed: 0x5E20 ^ UInt64(dtype.code))
        var zeroMeans = 0
        for trial in 0..<120 {
            let spatial = 1 + trial % 3
            let kernel = (0..<spatial).map { _ in trial % 7 == 3 ? 1 : Int.random(in: 1...9, using: &rng) }
            let stride = kernel.map { Int.random(in: 1...($0 + 2), using: &rng) }
            let padding = kernel.map { Int.random(in: 0...($0 / 2 + (trial % 7 == 3 ? 1 : 0)), using: &rng) }
            let channels = [1, 2, 3, 4, 5, 8, 9, 16, 33][Int.random(in: 0..<9, using: &rng)]
            let shape = [Int.random(in: 1...2, using: &rng)] + kernel.map { Int.random(in: $0...($0 + 20), using: &rng) } + [channels]
            let desc = PoolDescriptor(kind: .average, kernelSize: kernel, stride: stride, padding: padding,
                                      ceilMode: trial % 4 == 1, countIncludePad: trial % 5 != 0)
            let input = Buffer(dtype, count: shape.reduce(1, *))
            // All -0 in a third of the trials; else one element in 8 (or 40) a random normal.
            let oneIn: UInt64 = trial % 3 == 0 ? 0 : (trial % 3 == 1 ? 8 : 40)
            for i in 0..<input.count { input[i] = oneIn != 0 && rng.next() % oneIn == 0 ? rng.normal() : -0.0 }
            let strides = TensorView.contiguousStrides(shape)
            let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
            zeroMeans += expected.values.count { $0 == 0 }
            let runs = try engines.map { try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: $0) }
            for run in [runs[0], try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: scans)] {
                let mismatch = firstMismatch(desc, dtype: dtype, actual: run.output, expected: expected.values)
                #expect(mismatch == nil, "\(desc) \(dtype) \(shape): \(mismatch ?? "")")
            }
            for (index, run) in runs.enumerated().dropFirst() {
                #expect(memcmp(runs[0].output.raw, run.output.raw, run.output.count * dtype.size) == 0, "\(desc) \(dtype) \(shape) engine \(index)")
            }
        }
        #expect(zeroMeans > 10_000)
    }

    @Test(arguments: PoolKind.allCases)
    func slicedTransposedReversedAndBroadcast(kind: PoolKind) throws {
        let desc = PoolDescriptor(kind: kind, kernelSize: [3, 2], stride: [2, 1], padding: [1, 1])
        // Every other column of a (2, 7, 12, 4) tensor, starting at column 1.
        try check(desc, .float32, storageCount: 672, offset: 4, shape: [2, 7, 6, 4], strides: [336, 48, 8, 1])
        // H and W swapped.
        try check(desc, .float32, storageCount: 392, offset: 0, shape: [2, 7, 7, 4], strides: [196, 4, 28, 1])
        // Reversed along H and C: data points at the last row and channel.
        try check(desc, .float32, storageCount: 392, offset: 6 * 28 + 3, shape: [2, 7, 7, 4], strides: [196, -28, 4, -1])
        // Broadcast batch and channels (zero strides).
        try check(desc, .float32, storageCount: 49, offset: 0, shape: [3, 7, 7, 5], strides: [0, 7, 1, 0])
    }
}

@Suite struct RandomConfigurationTests {
    @Test(arguments: DType.allCases)
    func randomConfigurations(dtype: DType) throws {
        var rng = SplitMix64(seed: 0x7E1D_E900 ^ UInt64(dtype.code))
        var checked = 0
        for _ in 0..<60 {
            let spatial = Int.random(in: 1...3, using: &rng)
            let kernel = (0..<spatial).map { _ in Int.random(in: 1...4, using: &rng) }
            let stride = (0..<spatial).map { _ in Int.random(in: 1...4, using: &rng) }
            let padding = (0..<spatial).map { _ in Int.random(in: 0...5, using: &rng) }
            let shape = [Int.random(in: 1...3, using: &rng)] + (0..<spatial).map { _ in Int.random(in: 0...7, using: &rng) }
                + [Int.random(in: 1...5, using: &rng)]
            let kind: PoolKind = Bool.random(using: &rng) ? .average : .max
            let desc = PoolDescriptor(kind: kind, kernelSize: kernel, stride: stride, padding: padding)
            let seed = rng.next()
            let input = randomInput(dtype, shape: shape, seed: seed)
            let strides = TensorView.contiguousStrides(shape)
            guard let expected = referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides) else {
                expectPoolError(TP_ERR_SHAPE, ["negative"]) { _ = try desc.outputShape(inputShape: shape) }
                continue
            }
            let run = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides)
            #expect(run.shape == expected.shape)
            let mismatch = firstMismatch(desc, dtype: dtype, actual: run.output, expected: expected.values)
            #expect(mismatch == nil, "\(desc) \(dtype) \(shape) seed \(seed): \(mismatch ?? "")")
            checked += 1
        }
        #expect(checked > 30)
    }

    @Test func longRowsStayAccurate() throws {
        // float32 sums of long windows stay within rtol 1e-5 / atol 1e-6 of float64.
        try checkContiguous(PoolDescriptor(kind: .average, kernelSize: [1000], stride: [7], padding: [300]), .float32,
                            shape: [1, 20000, 2])
        try checkContiguous(PoolDescriptor(kind: .average, kernelSize: [5, 5, 5], stride: [1, 1, 1], padding: [2, 2, 2]),
                            .float32, shape: [1, 9, 10, 11, 1])
    }
}

@Suite struct ThreadingTests {
    @Test(arguments: [DType.float32, .bfloat16, .uint8, .float64], PoolKind.allCases)
    func resultsAreIdenticalForAnyThreadCount(dtype: DType, kind: PoolKind) throws {
        let shape = [3, 9, 17, 13, 5]
        let input = randomInput(dtype, shape: shape, seed: 5)
        let desc = PoolDescriptor(kind: kind, kernelSize: [3, 3, 2], stride: [1, 2, 1], padding: [1, 1, 1])
        let strides = TensorView.contiguousStrides(shape)
        let single = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, threads: 1)
        let bytes = single.output.count * single.output.dtype.size
        for threads in [2, 3, 7, 64] {
            let many = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, threads: threads)
            #expect(memcmp(single.output.raw, many.output.raw, bytes) == 0, "threads \(threads)")
        }
        let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
        #expect(firstMismatch(desc, dtype: dtype, actual: single.output, expected: expected.values) == nil)
    }

    @Test func concurrentCallersShareOneEngine() async throws {
        let shape = [2, 6, 10, 10, 3]
        let desc = PoolDescriptor(kind: .average, kernelSize: [2, 3, 3], stride: [1, 1, 2], padding: [1, 1, 1])
        let strides = TensorView.contiguousStrides(shape)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<16 {
                group.addTask {
                    let input = randomInput(.float32, shape: shape, seed: UInt64(task))
                    let expected = referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides)!
                    let run = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides)
                    #expect(firstMismatch(desc, dtype: .float32, actual: run.output, expected: expected.values) == nil)
                }
            }
            try await group.waitForAll()
        }
    }
}

@Suite struct TilingTests {
    /// Tiny scratch budgets cut small tensors into many tiles: column, channel, row and depth
    /// tiles, strided widths reduced at every position, windows cut at tile edges.
    @Test(arguments: [DType.float32, .float16, .bfloat16, .int8, .uint16, .int64, .float64], [64, 512, 4096])
    func tinyTilesMatchTheReferenceAndTheDefault(dtype: DType, budget: Int) throws {
        var rng = SplitMix64(seed: 0xC0FFEE ^ UInt64(budget) ^ UInt64(dtype.code) << 20)
        // Split among threads even where small calls stay on the caller's (`serialWorkBelow`).
        let tiny = PoolEngine(threads: 3, tileBudgetBytes: budget, serialWorkBelow: 0)
        for _ in 0..<25 {
            let spatial = Int.random(in: 1...3, using: &rng)
            let kernel = (0..<spatial).map { _ in Int.random(in: 1...5, using: &rng) }
            let stride = (0..<spatial).map { _ in Int.random(in: 1...3, using: &rng) }
            let padding = kernel.map { Int.random(in: 0...($0 / 2 + 1), using: &rng) }
            let shape = [Int.random(in: 1...2, using: &rng)] + (0..<spatial).map { _ in Int.random(in: 1...11, using: &rng) }
                + [[1, 2, 3, 5, 9, 17].randomElement(using: &rng)!]
            let kind: PoolKind = Bool.random(using: &rng) ? .average : .max
            let desc = PoolDescriptor(kind: kind, kernelSize: kernel, stride: stride, padding: padding)
            let input = randomInput(dtype, shape: shape, seed: rng.next())
            let strides = TensorView.contiguousStrides(shape)
            guard let expected = referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides) else { continue }
            let tiled = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: tiny)
            let plain = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, threads: 1)
            let mismatch = firstMismatch(desc, dtype: dtype, actual: tiled.output, expected: expected.values)
            #expect(mismatch == nil, "\(desc) \(dtype) \(shape) budget \(budget): \(mismatch ?? "")")
            let bytes = tiled.output.count * tiled.output.dtype.size
            #expect(memcmp(tiled.output.raw, plain.output.raw, bytes) == 0, "\(desc) \(shape) budget \(budget) differs from default tiling")
        }
    }

    /// Rows strided along H, of 1 to 7 channels whose W stride spans more than
    /// `KernelLimits.subsampledSpan` elements (64 for byte maxima,
    /// `KernelLimits.subsampledSpanOfOverlappingByteMaxima`; wider spans need 9 channels or more):
    /// H first, then W at the output's own positions from the padded row
    /// (`reducePlaneHeightFirst`). Kernels of 1 to 11 columns over rows of one to two strides past
    /// them, padding up to half the kernel, strides above the kernel; the default tiles and tiny
    /// ones (cut along W, so a tile's positions start at an offset) give the reference and the same
    /// bits.
    @Test(arguments: [DType.float32, .float16, .bfloat16, .uint8, .int32, .int64, .float64])
    func heightFirstAtWStrides(dtype: DType) throws {
        var rng = SplitMix64(seed: 0x4F12_5701 ^ UInt64(dtype.code) << 24)
        let tiny = PoolEngine(threads: 3, tileBudgetBytes: 256, serialWorkBelow: 0)
        for _ in 0..<30 {
            let kind: PoolKind = Bool.random(using: &rng) ? .average : .max
            let span = kind == .max && dtype.size == 1 ? 64 : 16
            let channels = Int.random(in: 1...7, using: &rng)
            let kernelW = Int.random(in: 1...11, using: &rng), kernelH = Int.random(in: 1...5, using: &rng)
            let strideW = Int.random(in: (span / channels + 1)...(span / channels + 1 + kernelW), using: &rng)
            let strideH = Int.random(in: 2...(kernelH + 2), using: &rng)
            let planes = Bool.random(using: &rng)
            let kernel = (planes ? [Int.random(in: 1...3, using: &rng)] : []) + [kernelH, kernelW]
            let stride = (planes ? [Int.random(in: 1...3, using: &rng)] : []) + [strideH, strideW]
            let padding = kernel.map { Int.random(in: 0...($0 / 2), using: &rng) }
            // Two outputs or more along H and W (a single one's stride is no stride); W rows
            // from one stride past the kernel, H up to 5 rows past it.
            let spatial = kernel.indices.map { axis in
                kernel[axis] + (axis < kernel.count - 2 ? 0 : stride[axis]) + Int.random(in: 0...(axis == kernel.count - 1 ? strideW : 5), using: &rng)
            }
            let shape = [Int.random(in: 1...2, using: &rng)] + spatial + [channels]
            let desc = PoolDescriptor(kind: kind, kernelSize: kernel, stride: stride, padding: padding)
            let plan = try #require(try PoolEngine(threads: 1).kernelPlan(desc, input: TensorView(data: nil, dtype: dtype, shape: shape)))
            // Windows of one element of float averages run whole; every other case H first.
            guard plan.strategy != .wholeWindows else { continue }
            #expect(plan.strategy == .heightFirst && !plan.subsampledRows, "\(desc) \(shape)")
            let input = randomInput(dtype, shape: shape, seed: rng.next())
            let strides = TensorView.contiguousStrides(shape)
            let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
            let plain = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, threads: 1)
            let tiled = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: tiny)
            let mismatch = firstMismatch(desc, dtype: dtype, actual: plain.output, expected: expected.values)
            #expect(mismatch == nil, "\(desc) \(dtype) \(shape): \(mismatch ?? "")")
            let bytes = tiled.output.count * tiled.output.dtype.size
            #expect(memcmp(tiled.output.raw, plain.output.raw, bytes) == 0, "\(desc) \(dtype) \(shape): tiny tiles differ")
        }
    }

    /// Deep windows (more taps than one pass folds) with overlapping depths: the finishing pass
    /// runs in parts between prefetches, each part with its own slice of partial sums.
    @Test(arguments: [DType.float32, .float16, .int8, .int32], [512, 1 << 19])
    func deepOverlappingWindowsFinishInParts(dtype: DType, budget: Int) throws {
        let engine = PoolEngine(threads: 2, tileBudgetBytes: budget, serialWorkBelow: 0)
        let shape = [2, 14, 5, 6, 4]
        for kind in PoolKind.allCases {
            for (kernel, stride, padding) in [([7, 2, 3], [1, 1, 2], [3, 1, 1]), ([9, 1, 1], [2, 1, 1], [4, 0, 0])] {
                let desc = PoolDescriptor(kind: kind, kernelSize: kernel, stride: stride, padding: padding)
                let input = randomInput(dtype, shape: shape, seed: UInt64(kernel[0] * 31 + budget))
                let strides = TensorView.contiguousStrides(shape)
                let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
                let run = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: engine)
                let mismatch = firstMismatch(desc, dtype: dtype, actual: run.output, expected: expected.values)
                #expect(mismatch == nil, "\(desc) \(dtype) budget \(budget): \(mismatch ?? "")")
            }
        }
    }

    /// Rows of few channels whose windows are centred ("same" padding, stride 1 along W) are
    /// reduced as one run over all of a plane's rows, then the positions at each row's edges
    /// are redone: every dtype, kernels up to wider than the row, whole planes and tiles of
    /// a few rows.
    @Test(arguments: DType.allCases)
    func rowsReducedAsOneRunOverAPlane(dtype: DType) throws {
        let engines = defaultAndTinyTileEngines(budget: 1024)
        for kind in PoolKind.allCases {
            for channels in [1, 2, 3, 7] {
                for (kernelW, width) in [(1, 4), (3, 1), (3, 2), (3, 9), (5, 4), (5, 5), (5, 13), (7, 16)] {
                    // Stride 1 along H: strided rows would reduce H first (see the next test).
                    let desc = PoolDescriptor(kind: kind, kernelSize: [3, 3, kernelW], stride: [2, 1, 1],
                                              padding: [1, 1, kernelW / 2])
                    let shape = [2, 4, 7, width, channels]
                    let input = randomInput(dtype, shape: shape, seed: UInt64(channels * 100 + kernelW * 10 + width))
                    try checkEngines(engines, desc, dtype, storage: input, shape: shape, strides: TensorView.contiguousStrides(shape))
                }
            }
        }
    }

    /// Planes whose rows are strided along H, with W reduced at every position (few channels,
    /// or stride 1 along W), reduce along H first: every dtype, windows reaching into padding
    /// (some only padding), tiles that cut channels, and channels-first inputs read in place.
    @Test(arguments: DType.allCases)
    func heightStridedPlanesReduceHeightFirst(dtype: DType) throws {
        let engines = defaultAndTinyTileEngines(budget: 96)
        let geometries: [(kernel: [Int], stride: [Int], padding: [Int], channels: Int)] = [
            ([3, 3, 3], [2, 2, 2], [1, 1, 1], 3), ([2, 3, 2], [1, 2, 1], [0, 1, 1], 1),
            ([1, 2, 5], [1, 3, 2], [0, 1, 2], 2), ([3, 2, 3], [2, 2, 1], [1, 3, 1], 5),
        ]
        for kind in PoolKind.allCases {
            for (kernel, stride, padding, channels) in geometries {
                let desc = PoolDescriptor(kind: kind, kernelSize: kernel, stride: stride, padding: padding)
                let (n, d, h, w) = (2, 5, 9, 10)
                let shape = [n, d, h, w, channels]
                let storage = randomInput(dtype, shape: shape, seed: UInt64(kernel.reduce(channels, *)))
                let channelsLast = TensorView.contiguousStrides(shape)
                let channelsFirst = [channels * d * h * w, h * w, w, 1, d * h * w]
                for strides in [channelsLast, channelsFirst] {
                    try checkEngines(engines, desc, dtype, storage: storage, shape: shape, strides: strides)
                }
            }
        }
    }

    /// Full windows along H with stride 1 fold in pairs of output rows sharing their middle
    /// rows, an even row first: tiles that begin on odd and even rows must give the same bits
    /// (the order of a float sum follows the row's index, not the tile), and match the reference.
    @Test(arguments: [DType.float32, .float16, .bfloat16, .float64])
    func rowPairsFoldAlikeWhereverTilesBegin(dtype: DType) throws {
        let whole = PoolEngine(threads: 1)
        let tiny = [64, 96, 128, 160, 224].map { PoolEngine(threads: 2, tileBudgetBytes: $0, serialWorkBelow: 0) }
        for kind in PoolKind.allCases {
            for kernelH in 2...6 {
                for (padding, channels) in [(0, 1), (kernelH / 2, 1), (kernelH / 2, 4)] {
                    let desc = PoolDescriptor(kind: kind, kernelSize: [2, kernelH, 3], stride: [1, 1, 1], padding: [0, padding, 1])
                    let shape = [1, 3, 14, 5, channels]
                    let strides = TensorView.contiguousStrides(shape)
                    let input = randomInput(dtype, shape: shape, seed: UInt64(kernelH * 10 + padding + channels * 100))
                    let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
                    let reference = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: whole)
                    #expect(firstMismatch(desc, dtype: dtype, actual: reference.output, expected: expected.values) == nil, "\(desc)")
                    for engine in tiny {
                        let run = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: engine)
                        let bytes = run.output.count * run.output.dtype.size
                        #expect(memcmp(run.output.raw, reference.output.raw, bytes) == 0, "\(desc) \(dtype) C \(channels)")
                    }
                }
            }
        }
    }

    /// Depth first (16-bit or widened inputs, stride 1, centred rows of few channels), output
    /// planes fold in pairs sharing their middle input planes, an even plane first: blocks of
    /// planes that begin on odd and even planes, and tiles of any rows, must give the same bits,
    /// and match the reference; with and without padding along D, kernels that pair (2 to 5)
    /// and one that does not (6).
    @Test(arguments: [DType.float16, .bfloat16, .int16, .int8, .int32])
    func planePairsFoldAlikeWhereverTilesBegin(dtype: DType) throws {
        let whole = PoolEngine(threads: 1)
        let others = [PoolEngine(threads: 2)] + [96, 400, 1000].map { PoolEngine(threads: 2, tileBudgetBytes: $0, serialWorkBelow: 0) }
        for kind in PoolKind.allCases {
            for kernelD in 2...6 {
                for (padding, channels) in [(0, 1), (kernelD / 2, 1), (kernelD / 2, 3)] {
                    let desc = PoolDescriptor(kind: kind, kernelSize: [kernelD, 3, 5], stride: [1, 1, 1], padding: [padding, 1, 2])
                    let shape = [1, 21, 6, 7, channels]
                    let strides = TensorView.contiguousStrides(shape)
                    let seed = UInt64(kernelD * 10 + padding + channels * 100)
                    let input = randomInput(dtype, shape: shape, seed: seed)
                    let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
                    let reference = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: whole)
                    #expect(firstMismatch(desc, dtype: dtype, actual: reference.output, expected: expected.values) == nil, "\(desc)")
                    // 16-bit outputs rarely show a float32 sum's last bits; sums that cancel
                    // (2^14 - 2^14 + 2^-11 is 2^-11 or 0 by the order) show the order itself.
                    var inputs = [input]
                    if dtype.isFloatingPoint {
                        inputs.append(cancellingSums(dtype, count: input.count, seed: seed))
                    }
                    for storage in inputs {
                        let baseline = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: whole)
                        for engine in others {
                            let run = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: engine)
                            let bytes = run.output.count * run.output.dtype.size
                            #expect(memcmp(run.output.raw, baseline.output.raw, bytes) == 0, "\(desc) \(dtype) C \(channels)")
                        }
                    }
                }
            }
        }
    }

    @Test func stridedViewsWithTinyTiles() throws {
        let tiny = PoolEngine(threads: 2, tileBudgetBytes: 128, serialWorkBelow: 0)
        let storage = randomInput(.float32, shape: [2 * 9 * 10 * 6], seed: 4)
        // Channels-first storage (N, C, H, W) = (2, 6, 9, 10) read as (N, H, W, C).
        for kind in PoolKind.allCases {
            let desc = PoolDescriptor(kind: kind, kernelSize: [3, 2], stride: [2, 3], padding: [1, 1])
            let shape = [2, 9, 10, 6], strides = [540, 10, 1, 90]
            let expected = try #require(referencePool(desc, storage: storage, offset: 0, shape: shape, strides: strides))
            let run = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: tiny)
            #expect(firstMismatch(desc, dtype: .float32, actual: run.output, expected: expected.values) == nil)
        }
    }

    /// Strided rows of few channels, whose stride's span of channels is too wide to reduce
    /// every position, fold each position's channels in registers where its window lies in the
    /// row (`reducePositions`; types that widen, from a stack buffer a chunk at a time; maxima
    /// of 2 to 8 channels as one vector whose upper lanes repeat channels; more channels 8 at a
    /// time, the last 8 overlapping the 8 before) and the others one by one. Against the
    /// reference for 1 to 9, 12 and 21 channels, kernels shorter and longer than the stride and
    /// longer than a chunk's buffer holds, padding up to the kernel less one, rows shorter
    /// than the kernel and rows of several chunks, on tiles cut along W; and bit for bit
    /// against the same values in channels-first storage read in place, which folds position
    /// by position: the same left fold of every window (sums that cancel, 2^14 - 2^14 +
    /// 2^-11, show any change of order).
    @Test(arguments: [DType.float32, .float16, .int8, .uint8, .float64])
    func stridedRowsOfFewChannels(dtype: DType) throws {
        let engines = [PoolEngine(threads: 1)] + [64, 200].map { PoolEngine(threads: 2, tileBudgetBytes: $0, serialWorkBelow: 0) }
        var checked = 0
        for kind in PoolKind.allCases {
            for channels in Array(1...9) + [12, 21] {
                // Past the type's widest subsampled span (`subsampledSpan`): positions at the
                // stride.
                let stride = Swift.max(2, (dtype.size == 8 ? 16 : kind == .average && dtype.size == 1 ? 128 : 64) / channels + 1)
                // Chunks (KernelLimits.widenedChunk, 2048 accumulators) only where the input
                // widens: kernels longer than a chunk holds, rows of several chunks (short
                // kernels only: the reference's long kernels over long rows took minutes in a
                // debug build).
                let widens = dtype == .float16 || (dtype == .int8 && kind == .average)
                for kernel in [2, stride + 1, 2 * stride + 3] + (widens ? [2048 / channels + 5] : []) {
                    for padding in Set([0, kernel / 2, kernel - 1]) {
                        let widths = [Swift.max(1, kernel - 1), 4 * stride + kernel + 3] + (widens && kernel < 100 ? [300 * stride + kernel] : [])
                        for width in widths {
                            let desc = PoolDescriptor(kind: kind, kernelSize: [2, kernel], stride: [1, stride], padding: [0, padding])
                            let shape = [2, 3, width, channels]
                            guard (try? desc.outputShape(inputShape: shape)) != nil else { continue }
                            let seed = UInt64(channels * 1000 + kernel * 10 + padding)
                            var inputs = [randomInput(dtype, shape: shape, seed: seed)]
                            if dtype.isFloatingPoint {
                                inputs.append(cancellingSums(dtype, count: inputs[0].count, seed: seed))
                            }
                            for (index, input) in inputs.enumerated() {
                                // The same values stored (C, H, W) once, for both batch entries
                                // (an N stride of 0: a view that overlaps itself reads in
                                // place, where float averages of other views are packed).
                                let (h, w, c) = (shape[1], shape[2], shape[3]), entry = h * w * c
                                let planar = Buffer(dtype, count: entry)
                                for i in 0..<entry {
                                    input[entry + i] = input[i]
                                    planar[((i % c) * h + i / (w * c)) * w + i / c % w] = input[i]
                                }
                                let strides = TensorView.contiguousStrides(shape), planarStrides = [0, w, 1, h * w]
                                let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
                                let baseline = try runEngine(desc, storage: planar, offset: 0, shape: shape, strides: planarStrides,
                                                             engine: engines[0])
                                for engine in engines {
                                    let run = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: engine)
                                    // Sums that cancel lose their small terms in float32, by design: bits only.
                                    if index == 0 {
                                        #expect(firstMismatch(desc, dtype: dtype, actual: run.output, expected: expected.values) == nil,
                                                "\(desc) \(dtype) \(shape)")
                                    }
                                    let bytes = run.output.count * run.output.dtype.size
                                    #expect(memcmp(run.output.raw, baseline.output.raw, bytes) == 0, "\(desc) \(dtype) \(shape)")
                                    checked += 1
                                }
                            }
                        }
                    }
                }
            }
        }
        #expect(checked > 300)
    }

    /// Rows alone (1-d windows) of 1 or 2 channels of float16 and bfloat16 averages, whose
    /// stride's span of channels is at most 16, are split into the stride's phases (`WidthPlan`,
    /// `widenedInChunks`, `splitIntoPhases`) instead of reduced at every position. Against the
    /// reference for strides 2 to 16 (1 channel) and 2 to 8 (2 channels), kernels shorter
    /// than, as long as and longer than the stride, and longer than a chunk (at strides 2, 7
    /// and the largest), no padding, half the kernel and the kernel less one, rows shorter than
    /// the kernel, of a few strides and of three chunks, contiguous and with a gap after each
    /// column, on 1 thread and (short rows) on tiny tiles on 2; and bit for bit against the
    /// same engines with the split turned off (every position, then subsampled: the same left
    /// fold of each window; sums that cancel, 2^14 - 2^14 + 2^-11, show any change of order).
    /// So are int8 and uint8 averages at strides 2 to 4 whose windows overlap (their sums exact
    /// in any order; unsplit, every position is reduced and subsampled). So are int16 and
    /// int32 averages wherever the AVX2 transposes take the stride and the row's unit
    /// (`tpvector_splits_into_phases`: 1 channel of int32 at strides 4 to 8, 1 of int16 at 4
    /// to 16, 2 at 4 to 8, not the transpose of 4-byte units at 3; none on other
    /// architectures), whichever build runs them. Maxima and float32 keep their paths.
    @Test(arguments: [DType.float16, .bfloat16, .float32, .int8, .uint8, .int16, .int32])
    func rowsOfOneOrTwoChannelsSplitIntoPhases(dtype: DType) throws {
        let engines = [PoolEngine(threads: 1), PoolEngine(threads: 2, tileBudgetBytes: 64, serialWorkBelow: 0)]
        let unsplit = [PoolEngine(threads: 1, splitsRows: false), PoolEngine(threads: 2, tileBudgetBytes: 64, serialWorkBelow: 0, splitsRows: false)]
        var checked = 0, split = 0
        for kind in PoolKind.allCases {
            for channels in 1...2 {
                for stride in 2...(16 / channels) {
                    // Kernels longer than a chunk holds (`KernelLimits.widenedChunk`, 2048
                    // accumulators) at a few strides.
                    let long = [2, 7, 16 / channels].contains(stride) ? [2048 / channels + 5] : []
                    for kernel in Set([2, stride - 1, stride, stride + 1, 2 * stride + 3] + long) where kernel >= 2 {
                        for padding in Set([0, kernel / 2, kernel - 1]) where padding <= kernel / 2 || kernel < 8 {
                            let desc = PoolDescriptor(kind: kind, kernelSize: [kernel], stride: [stride], padding: [padding])
                            // Rows of three chunks for short kernels only (the reference's long
                            // kernels over long rows are slow in a debug build).
                            for (width, gap) in [(Swift.max(1, kernel - 1), 0), (4 * stride + kernel + 3, 0), (4 * stride + kernel + 3, 1)]
                                + (kernel < 100 ? [(3 * 2048 / channels + kernel, 0)] : []) {
                                let shape = [2, width, channels]
                                guard let outShape = try? desc.outputShape(inputShape: shape), !outShape.contains(0) else { continue }
                                let view = TensorView(data: nil, dtype: dtype, shape: shape)
                                let plan = try #require(try engines[0].kernelPlan(desc, input: view))
                                // The geometry cuts a stride past the padded row to its length.
                                let geometry = try PoolGeometry(desc, input: view, outputShape: outShape)
                                let strided = geometry.strideW > 1
                                // 8-bit averages split at strides 2 to 4 where windows overlap.
                                let bytes = kind == .average && dtype.size == 1 && (2...4).contains(geometry.strideW) && kernel > geometry.strideW
                                let wide = dtype == .int16 || dtype == .int32
                                let transposes = wide && geometry.strideW != 3 && tpvector_splits_into_phases(channels * dtype.size, geometry.strideW) != 0
                                let splits = kind == .average && (dtype == .float16 || dtype == .bfloat16 || bytes || transposes) && strided
                                // int32 averages sum in 8 bytes, whose rows alone subsample to a
                                // narrower span (`KernelLimits.subsampledSpanOfWideRows`).
                                let wideSums = kind == .average && dtype == .int32
                                #expect(wideSums || plan.subsampledRows == (strided && !splits), "\(desc) \(dtype) C=\(channels)")
                                #expect(plan.splitsRowsIntoPhases == splits, "\(desc) \(dtype) C=\(channels)")
                                let unsplitPlan = try #require(try unsplit[0].kernelPlan(desc, input: view))
                                #expect((wideSums || unsplitPlan.subsampledRows == strided) && !unsplitPlan.splitsRowsIntoPhases,
                                        "\(desc) \(dtype) C=\(channels)")
                                // Columns `gap` elements apart past their channels (a strided view).
                                let columnStep = channels + gap, strides = [width * columnStep, columnStep, 1]
                                let seed = UInt64(channels * 1000 + kernel * 10 + padding + gap)
                                var inputs = [randomInput(dtype, shape: [2 * width * columnStep], seed: seed)]
                                if dtype.isFloatingPoint {
                                    inputs.append(cancellingSums(dtype, count: inputs[0].count, seed: seed))
                                }
                                for (index, input) in inputs.enumerated() {
                                    let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
                                    // Tiny tiles on the shorter rows only: thousands of them are slow in a debug build.
                                    for (engine, baseline) in zip(engines, unsplit).prefix(width > 1000 ? 1 : 2) {
                                        let run = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: engine)
                                        let old = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: baseline)
                                        // Sums that cancel lose their small terms, by design: bits only.
                                        if index == 0 {
                                            #expect(firstMismatch(desc, dtype: dtype, actual: run.output, expected: expected.values) == nil,
                                                    "\(desc) \(dtype) \(shape) gap \(gap)")
                                        }
                                        let bytes = run.output.count * run.output.dtype.size
                                        #expect(memcmp(run.output.raw, old.output.raw, bytes) == 0, "\(desc) \(dtype) \(shape) gap \(gap)")
                                        checked += 1
                                        split += splits ? 1 : 0
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        #expect(checked > 400)
        #expect((split > 0) == (dtype != .float32 && (![DType.int16, .int32].contains(dtype) || tpvector_splits_into_phases(dtype.size, 4) != 0)))
        // Past a span of 16 rows reduce at the stride, unsplit (`splitIntoPhases` takes steps
        // up to 16).
        for (channels, stride) in [(1, 17), (2, 9)] {
            let desc = PoolDescriptor(kind: .average, kernelSize: [stride + 2], stride: [stride], padding: [0])
            let plan = try #require(try engines[0].kernelPlan(desc, input: TensorView(data: nil, dtype: dtype, shape: [2, 80, channels])))
            #expect(!plan.splitsRowsIntoPhases && !plan.subsampledRows, "\(desc) \(dtype) C=\(channels)")
        }
        // A tile budget so small that tiles hold one of two channels: a split row's columns
        // are then not contiguous in the tile (the plan still splits; the rows must not).
        let tiny = PoolEngine(threads: 1, tileBudgetBytes: 8, serialWorkBelow: 0)
        for kind in PoolKind.allCases {
            let desc = PoolDescriptor(kind: kind, kernelSize: [5], stride: [3], padding: [2])
            let shape = [2, 37, 2], strides = TensorView.contiguousStrides(shape)
            let input = randomInput(dtype, shape: shape, seed: 77)
            let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
            let run = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: tiny)
            #expect(firstMismatch(desc, dtype: dtype, actual: run.output, expected: expected.values) == nil, "\(desc) \(dtype) tiny tiles")
        }
    }

    /// Rows alone (1-d windows) of 3 to 8 channels whose windows of 2 to 5 columns overlap or
    /// touch reduce W at every position and subsample, whatever the stride's span of channels
    /// (`WidthPlan`, `KernelLimits.subsampledWindowsOfRowsAlone`), and so do not run whole
    /// where 8 channels' windows touch (`KernelPlan.suitsWholeWindows`). Windows of 6 columns,
    /// windows with gaps between them and 8-byte sums keep their spans; float16 and bfloat16
    /// averages over windows of 8 columns or more reduce at the stride whatever the span
    /// (`KernelLimits.stridedWindowsOfWidenedRowsAlone`). The plan asserted on
    /// both sides of each limit, and against the reference with padding, rows shorter than
    /// the kernel, of a few strides and of several chunks, contiguous and with a gap after each
    /// column, bit for bit between 1 thread and tiny tiles on 2.
    @Test(arguments: [DType.float16, .bfloat16, .float32, .int8, .uint8, .int16, .int32, .float64])
    func rowsAloneOfFewChannelsSubsampleShortWindows(dtype: DType) throws {
        let engines = [PoolEngine(threads: 1), PoolEngine(threads: 2, tileBudgetBytes: 64, serialWorkBelow: 0)]
        var checked = 0, beyondSpan = 0, atStrideWithinSpan = 0
        for kind in PoolKind.allCases {
            for channels in [3, 5, 7, 8] {
                for kernel in Array(2...6) + [8, 9] {
                    for stride in Set([2, kernel - 1, kernel, kernel + 1]) where stride >= 2 {
                        for padding in Set([0, kernel / 2]) {
                            for (width, gap) in [(Swift.max(1, kernel - 1), 0), (5 * stride + kernel, 0), (5 * stride + kernel, 1),
                                                 (3000 / channels + kernel, 0)] {
                                let desc = PoolDescriptor(kind: kind, kernelSize: [kernel], stride: [stride], padding: [padding])
                                let shape = [2, width, channels]
                                guard let outShape = try? desc.outputShape(inputShape: shape), !outShape.contains(0) else { continue }
                                let view = TensorView(data: nil, dtype: dtype, shape: shape)
                                let plan = try #require(try engines[0].kernelPlan(desc, input: view))
                                // The geometry cuts a stride past the padded row to its length.
                                let geometry = try PoolGeometry(desc, input: view, outputShape: outShape)
                                let short = subsamplesShortWindows(kind, dtype, geometry)
                                let withinSpan = geometry.strideW * channels <= subsampledSpan(kind, dtype, geometry)
                                let long = stridesLongWidenedWindows(kind, dtype, geometry)
                                let subsampled = geometry.strideW > 1 && (short || withinSpan) && !long
                                #expect(plan.subsampledRows == subsampled, "\(desc) \(dtype) C=\(channels) w=\(width)")
                                atStrideWithinSpan += geometry.strideW > 1 && withinSpan && long ? 1 : 0
                                if subsampled {
                                    #expect(plan.strategy == .widthFirst, "\(desc) \(dtype) C=\(channels) w=\(width)")
                                }
                                beyondSpan += subsampled && !withinSpan ? 1 : 0
                                // Columns `gap` elements apart past their channels (a strided view).
                                let columnStep = channels + gap, strides = [width * columnStep, columnStep, 1]
                                let input = randomInput(dtype, shape: [2 * width * columnStep], seed: UInt64(channels * 1000 + kernel * 10 + stride))
                                try expectEnginesAgree(desc, dtype, storage: input, shape: shape, strides: strides, engines: engines,
                                                       "\(desc) \(dtype) C=\(channels) w=\(width) gap \(gap)")
                                checked += 1
                            }
                        }
                    }
                }
            }
        }
        #expect(checked > 500)
        // 8-byte types keep the span of wide rows (int32 averages too, which sum in 8 bytes;
        // int32 maxima do not).
        #expect(dtype.size == 8 ? beyondSpan == 0 : beyondSpan > 40, "\(dtype) \(beyondSpan)")
        // Windows of 8 or 9 columns at stride 2, within the span: float16 and bfloat16
        // averages alone at the stride.
        #expect(dtype == .float16 || dtype == .bfloat16 ? atStrideWithinSpan > 10 : atStrideWithinSpan == 0, "\(dtype) \(atStrideWithinSpan)")
    }

    /// Maxima of 1-byte types reduce W at every position, then subsample, while the stride's
    /// span of channels is at most 32, or 64 where the kernel is at least 1.5 strides
    /// (`KernelLimits.subsampledSpanOfByteMaxima`); of more than 8 channels, byte averages up
    /// to 128 and 2-byte maxima and averages up to 64 (float16 averages over windows up to two
    /// strides long 128, 1-d ones at strides up to 3), but rows alone whose windows touch, leave
    /// gaps, stride past 4 or span more than two strides and a column keep 16 (`subsampledSpan`;
    /// where their rows do not split into phases; rows alone of up to 8 channels over short
    /// windows subsample past it, `rowsAloneOfFewChannelsSubsampleShortWindows`).
    /// The plan asserted, and against the reference for 1 to 32 channels, spans on both sides
    /// of each limit, kernels shorter than, as long as and longer than the stride, 1-d rows
    /// and 3-d tiles of several rows, bit for bit between one thread and tiles cut along W
    /// on two.
    @Test(arguments: [DType.int8, .uint8, .int16, .float16])
    func byteMaximaSubsampleWiderSpans(dtype: DType) throws {
        let engines = [PoolEngine(threads: 1), PoolEngine(threads: 2, tileBudgetBytes: 200, serialWorkBelow: 0)]
        var checked = 0, subsampledWide = 0
        for kind in PoolKind.allCases {
            for channels in [1, 3, 6, 8, 12, 16, 24, 32] {
                let wStrides = [2, 3, 16 / channels + 1] + [32, 64, 128].flatMap { [$0 / channels, $0 / channels + 1] }
                for stride in Set(wStrides) where stride >= 2 {
                    for kernel in Set([stride - 1, stride, stride + 1, (3 * stride + 1) / 2, 2 * stride + 1]) where kernel >= 2 {
                        for spatial in [[4 * stride + kernel + 5], [3, 5, 2 * stride + kernel]] {
                            let dims = spatial.count, padding = kernel / 2
                            let desc = PoolDescriptor(kind: kind, kernelSize: [Int](repeating: 2, count: dims - 1) + [kernel],
                                                      stride: [Int](repeating: 2, count: dims - 1) + [stride],
                                                      padding: [Int](repeating: 1, count: dims - 1) + [padding])
                            let shape = [2] + spatial + [channels], strides = TensorView.contiguousStrides(shape)
                            let outShape = try desc.outputShape(inputShape: shape)
                            let view = TensorView(data: nil, dtype: dtype, shape: shape)
                            let plan = try #require(try engines[0].kernelPlan(desc, input: view))
                            // The geometry cuts a stride past the padded row to its length.
                            let geometry = try PoolGeometry(desc, input: view, outputShape: outShape)
                            let span = subsampledSpan(kind, dtype, geometry)
                            // 1-d byte averages of 1-2 channels split into phases at strides 2 to 4
                            // where windows overlap, float16 ones at spans up to 16
                            // (`rowsOfOneOrTwoChannelsSplitIntoPhases`).
                            let split = kind == .average && dims == 1 && channels <= 2
                                && (dtype.size == 1 ? (2...4).contains(geometry.strideW) && kernel > geometry.strideW
                                    : dtype == .float16 && geometry.strideW * channels <= 16)
                            let subsampled = geometry.strideW > 1 && !split && !stridesLongWidenedWindows(kind, dtype, geometry)
                                && (geometry.strideW * channels <= span || subsamplesShortWindows(kind, dtype, geometry))
                            if plan.strategy == .widthFirst || plan.strategy == .heightFirst {
                                #expect(plan.subsampledRows == subsampled, "\(desc) \(dtype) C=\(channels)")
                                subsampledWide += subsampled && geometry.strideW * channels > 16 && geometry.strideW * channels <= span ? 1 : 0
                            }
                            let input = randomInput(dtype, shape: shape, seed: UInt64(channels * 1000 + kernel * 10 + dims))
                            try expectEnginesAgree(desc, dtype, storage: input, shape: shape, strides: strides, engines: engines,
                                                   "\(desc) \(dtype) \(shape)")
                            checked += 1
                        }
                    }
                }
            }
        }
        #expect(checked > 300)
        #expect(subsampledWide > 20)
    }

    /// Rows alone (1-d windows) of 8-byte sums and maxima reduce at the stride once the
    /// stride's span of channels passes 4 (`KernelLimits.subsampledSpanOfWideRows`), other
    /// types from 16 (but over short windows, `subsamplesShortWindows`); 32-bit integers
    /// there sum in Int64 where the windows overlap or touch (differences of running sums).
    /// Against the reference for 1 to 8 channels, strides 2 to 7, kernels shorter and longer
    /// than the stride, padding, rows shorter than the kernel and rows of several chunks, on
    /// whole rows and tiles cut along W, bit for bit between them.
    @Test(arguments: [DType.int32, .uint32, .int64, .float64, .uint64])
    func stridedRowsAloneOfWideSums(dtype: DType) throws {
        let engines = [PoolEngine(threads: 1), PoolEngine(threads: 2, tileBudgetBytes: 64, serialWorkBelow: 0)]
        for kind in PoolKind.allCases where kind == .max || dtype != .uint64 {
            for channels in 1...8 {
                for stride in [2, 3, 5, 7] {
                    for kernel in Set([2, stride, stride + 1, 2 * stride + 3]) {
                        for padding in Set([0, kernel / 2]) {
                            for width in [Swift.max(1, kernel - 1), 600 * stride / channels + kernel] {
                                let desc = PoolDescriptor(kind: kind, kernelSize: [kernel], stride: [stride], padding: [padding])
                                let shape = [2, width, channels]
                                guard let outShape = try? desc.outputShape(inputShape: shape), !outShape.contains(0) else { continue }
                                let view = TensorView(data: nil, dtype: dtype, shape: shape)
                                let plan = try #require(try engines[0].kernelPlan(desc, input: view))
                                // 8-byte sums and maxima (int32 averages sum in Double or Int64).
                                // The geometry cuts a stride past the padded row to its length.
                                let wide = kind == .average || dtype.size == 8
                                let geometry = try PoolGeometry(desc, input: view, outputShape: outShape)
                                let subsampled = geometry.strideW > 1 && !stridesLongWidenedWindows(kind, dtype, geometry)
                                    && (geometry.strideW * channels <= (wide ? 4 : 16) || subsamplesShortWindows(kind, dtype, geometry))
                                #expect(plan.subsampledRows == subsampled, "\(desc) \(dtype) C=\(channels) w=\(width)")
                                if kind == .average && dtype.size == 4 {
                                    let int64 = geometry.strideW > 1 && !subsampled && kernel >= geometry.strideW
                                        && (geometry.strideW > 2 || kernel > 3)
                                    #expect(try accumulatorType(geometry, kind, dtype) == (int64 ? Int64.self : Double.self), "\(desc)")
                                }
                                let input = randomInput(dtype, shape: shape, seed: UInt64(channels * 1000 + kernel * 10 + padding))
                                let strides = TensorView.contiguousStrides(shape)
                                try expectEnginesAgree(desc, dtype, storage: input, shape: shape, strides: strides, engines: engines,
                                                       "\(desc) \(dtype) C=\(channels) w=\(width)")
                            }
                        }
                    }
                }
            }
        }
    }

    /// Strided rows of many channels fold up to 4 vectors of 8 of them at a time
    /// (`foldManyChannels`): 12 channels (vectors at 0 and 4),
    /// 27 (0, 8, 16, 19), 37 (0, 8, 16, 24, then 29) and 70 (4 vectors from 0, 4 from 32, then one
    /// at 62); 2-byte accumulators loaded as they are (16-bit maxima, byte sums widened first) of
    /// 32 channels or more in vectors of 16 (37: 0, 16, 21; 70: 0, 16, 32, 48, then 54); byte
    /// maxima, where the AVX2 kernels run, in C vectors of 8 bytes (12: 0, 4), 16 (27: 0, 11) or
    /// 32 (37: 0, 5; 70: 0, 32, 38; signed and unsigned, `tpvector_byte_maxima`). Inputs
    /// that widen do so a chunk of positions at a time (`widenedInChunks`; integer sums as
    /// differences of running sums, summed in registers by the same vectors of 8 up to 32 channels,
    /// `runningSums`, in memory past them): rows of 60 positions span several chunks, and 300
    /// channels do not fit a window of 7 or 9 columns in a chunk (folded straight from the input; 2
    /// columns fit). In 3-d, where the stride's span of channels is past the type's subsampled span
    /// (`subsampledSpan`), sums of windows that touch (k3 s3, k5 s5), and float16 and bfloat16
    /// sums of windows that overlap (k7 s3, k7 s5; k9 s2 in 1-d), fold straight from the input;
    /// maxima, and windows with gaps between them (k3 s5), widen first; integer sums of overlapping
    /// windows (k7 s3, k7 s5) take their differences as vectors of 8 (`differencesAsVectors`, 9 to
    /// 32 channels; not at 37). Against the reference, and bit for bit against the same values in
    /// channels-first storage (folded position by position), on whole and cut rows.
    @Test(arguments: [DType.float32, .float16, .bfloat16, .int8, .uint8, .int16, .uint32, .float64])
    func stridedRowsOfManyChannels(dtype: DType) throws {
        let engines = [PoolEngine(threads: 1), PoolEngine(threads: 2, tileBudgetBytes: 64, serialWorkBelow: 0)]
        for kind in PoolKind.allCases {
            for (channels, positions) in [(12, 60), (27, 60), (37, 5), (70, 5), (37, 60), (70, 60), (300, 12)] {
                for (kernel, stride) in [(2, 2), (7, 3), (9, 2), (3, 3), (3, 5), (5, 5), (7, 5)] {
                    // 1-d rows, and 3-d volumes of cubic windows (rows reduced along W first; at
                    // most 12 positions: small): windows that do not overlap, of 12, 27 and 37
                    // channels, and windows 7 wide at stride 3 of 12 and 27 and at stride 5 of 27
                    // (byte averages subsample spans up to 128, `subsampledSpan`: at stride 5 27
                    // channels span 135).
                    let volumes = [12, 27, 37].contains(channels) && kernel <= stride
                        || [12, 27].contains(channels) && (kernel, stride) == (7, 3) || channels == 27 && (kernel, stride) == (7, 5)
                    for dims in volumes ? [1, 3] : [1] {
                        let width = (dims == 1 ? positions : Swift.min(positions, 12)) * stride + kernel
                        let desc = PoolDescriptor(kind: kind, kernelSize: [Int](repeating: kernel, count: dims),
                                                  stride: [Int](repeating: stride, count: dims),
                                                  padding: [Int](repeating: kernel / 2, count: dims))
                        let spatial = dims == 1 ? [width] : [kernel, stride + kernel, width], size = spatial.reduce(1, *)
                        let shape = [2] + spatial + [channels], c = channels
                        let input = randomInput(dtype, shape: shape, seed: UInt64(channels * 10 + kernel))
                        let planar = Buffer(dtype, count: input.count)
                        for i in 0..<input.count { planar[(i / (size * c) * c + i % c) * size + i / c % size] = input[i] }
                        let planarStrides = [size * c] + TensorView.contiguousStrides(spatial) + [size]
                        let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: TensorView.contiguousStrides(shape)))
                        let baseline = try runEngine(desc, storage: planar, offset: 0, shape: shape, strides: planarStrides, engine: engines[0])
                        for engine in engines {
                            let run = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: TensorView.contiguousStrides(shape), engine: engine)
                            #expect(firstMismatch(desc, dtype: dtype, actual: run.output, expected: expected.values) == nil, "\(desc) \(dtype) \(shape)")
                            #expect(memcmp(run.output.raw, baseline.output.raw, run.output.count * run.output.dtype.size) == 0, "\(desc) \(dtype) \(shape)")
                        }
                    }
                }
            }
        }
    }

    /// Subsampled rows (stride x channels at most 16) on tiles cut along W, and on whole rows
    /// (one thread's default tiles): the kept positions move whole (`positionsCopied`: for 9
    /// channels or more in moves of 8, 16 or 32 bytes, the last ending at the position's last
    /// byte; 9 to 33 channels of 1 to 4 bytes reach each size and several moves). Sums whose
    /// finish outweighs a copy, and float16 and bfloat16 maxima, gather each tile row's kept
    /// positions to the start of the merged plane, in place where the row lies there (D
    /// windows of 2 planes fold into it), and finish them as one run; other maxima are copied
    /// out as they are. Against the reference and bit for bit against one thread's default
    /// tiles, for 1 to 8 channels and the strides up to the span, 9 to 33 at stride 2, 1-d rows
    /// longer than a tile and 2-d and 3-d tiles of several rows, averages and maxima.
    @Test(arguments: [DType.float16, .bfloat16, .int8, .uint16, .float32])
    func subsampledTilesFinishTheirKeptSums(dtype: DType) throws {
        let engines = [64, 200, 1000].map { PoolEngine(threads: 2, tileBudgetBytes: $0, serialWorkBelow: 0) }
        var checked = 0
        for (kind, channels) in PoolKind.allCases.flatMap({ kind in (Array(1...8) + [9, 12, 16, 17, 33]).map { (kind, $0) } }) {
            for stride in 2...Swift.max(2, 16 / channels) {
                let kernel = stride + 1, padding = kernel / 2
                for spatial in [[700], [3, 40], [3, 4, 40]] {
                    let dims = spatial.count
                    let desc = PoolDescriptor(kind: kind, kernelSize: [Int](repeating: 2, count: dims - 1) + [kernel],
                                              stride: [Int](repeating: 1, count: dims - 1) + [stride],
                                              padding: [Int](repeating: 1, count: dims - 1) + [padding])
                    let shape = [2] + spatial + [channels], strides = TensorView.contiguousStrides(shape)
                    let input = randomInput(dtype, shape: shape, seed: UInt64(channels * 100 + stride * 10 + dims))
                    let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
                    let baseline = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides,
                                                 engine: PoolEngine(threads: 1))
                    #expect(firstMismatch(desc, dtype: dtype, actual: baseline.output, expected: expected.values) == nil,
                            "\(desc) \(dtype) \(shape)")
                    for engine in engines {
                        let run = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: engine)
                        let bytes = run.output.count * run.output.dtype.size
                        #expect(firstMismatch(desc, dtype: dtype, actual: run.output, expected: expected.values) == nil,
                                "\(desc) \(dtype) \(shape) budget \(engine.settings.tileBudgetBytes)")
                        #expect(memcmp(run.output.raw, baseline.output.raw, bytes) == 0,
                                "\(desc) \(dtype) \(shape) budget \(engine.settings.tileBudgetBytes)")
                        checked += 1
                    }
                }
            }
        }
        #expect(checked == 2 * 3 * 3 * 39)  // kinds, shapes, engines, (channels, stride) pairs
    }
}

@Suite struct MemoryTests {
    /// The engine's only memory is its per-thread scratch, a few hundred KB whatever the
    /// tensor (the benchmark's geometries: scratch depends on W, C and the kernel, not on N or D).
    @Test(arguments: [
        ([1, 4, 64, 64, 32], 2, 2, 0), ([1, 6, 64, 64, 32], 3, 1, 1), ([1, 6, 224, 224, 3], 3, 2, 1),
        ([1, 8, 128, 128, 1], 5, 1, 2), ([1, 2, 3, 40_000, 64], 3, 1, 1), ([1, 1, 1, 2, 300_000], 1, 1, 0),
    ])
    func scratchStaysSmall(shape: [Int], kernel: Int, stride: Int, padding: Int) throws {
        // float16 runs depth first where the geometry allows (k5 s1 p2 here).
        for (kind, dtype) in PoolKind.allCases.flatMap({ kind in [DType.float32, .float16].map { (kind, $0) } }) {
            let engine = PoolEngine(threads: 2)
            let desc = PoolDescriptor(kind: kind, kernelSize: [kernel, kernel, kernel], stride: [stride, stride, stride],
                                      padding: [padding, padding, padding])
            let input = Buffer(dtype, count: shape.reduce(1, *))
            let outShape = try desc.outputShape(inputShape: shape)
            let output = Buffer(dtype, count: outShape.reduce(1, *))
            try engine.pool(desc, input: TensorView(data: input.raw, dtype: dtype, shape: shape),
                            output: OutputView(data: output.raw, dtype: dtype, shape: outShape))
            #expect(engine.largestScratchBytes > 0)
            #expect(engine.largestScratchBytes <= 2 * (1 << 20), "\(shape) \(dtype): \(engine.largestScratchBytes) bytes")
        }
    }

    /// Height first at a W stride far above the H stride widens `stride` input columns per
    /// position into one row: its tiles hold fewer positions, so that row stays within the
    /// budget (4096 columns per position, 300 positions: 4.9 MB of scratch without the cut).
    @Test(arguments: PoolKind.allCases)
    func heightFirstSpansStayWithinTheBudget(kind: PoolKind) throws {
        let engine = PoolEngine(threads: 2)
        let desc = PoolDescriptor(kind: kind, kernelSize: [2, 3], stride: [2, 4096], padding: [0, 1])
        let shape = [1, 4, 300 * 4096, 1]
        let input = Buffer(.uint8, count: shape.reduce(1, *))
        let outShape = try desc.outputShape(inputShape: shape)
        let output = Buffer(DType.uint8.result(of: kind), count: outShape.reduce(1, *))
        #expect(try engine.kernelPlan(desc, input: TensorView(data: nil, dtype: .uint8, shape: shape))?.strategy == .heightFirst)
        try engine.pool(desc, input: TensorView(data: input.raw, dtype: .uint8, shape: shape),
                        output: OutputView(data: output.raw, dtype: output.dtype, shape: outShape))
        #expect(engine.largestScratchBytes > 0)
        #expect(engine.largestScratchBytes <= 2 * (1 << 20), "\(engine.largestScratchBytes) bytes")
    }

    /// AverageSmallInteger divides in float32: it must give what float64 division then
    /// rounding gives, for every sum and window size it takes (both below 2^24).
    @Test func float32DivisionOfSmallSumsRoundsLikeFloat64() {
        var rng = SplitMix64(seed: 24)
        for n in 1...96 {
            for sum in -(n * 128)...(n * 255) where Float(sum) / Float(n) != Float(Double(sum) / Double(n)) {
                Issue.record("sum \(sum) over \(n)")
                return
            }
        }
        for n in [97, 125, 343, 511, 729, 1000, 4096, 65792, 131071] {
            let limit = (1 << 24) - 1
            for _ in 0..<200_000 {
                let sum = Int(rng.next() % UInt64(2 * limit + 1)) - limit
                #expect(Float(sum) / Float(n) == Float(Double(sum) / Double(n)), "sum \(sum) over \(n)")
            }
        }
    }

    /// Around the bound of the float32-division path (int16: windows below 512), means stay exact.
    @Test(arguments: [511, 512, 513])
    func int16MeansAreExactAtTheFloatDivisionBound(window: Int) throws {
        var rng = SplitMix64(seed: UInt64(window))
        let input = Buffer(.int16, count: 4 * window)
        for i in 0..<input.count { input[i] = i < window ? 32767 : (i < 2 * window ? -32768 : Double(Int16(truncatingIfNeeded: rng.next()))) }
        let desc = PoolDescriptor(kind: .average, kernelSize: [window], stride: [window])
        let run = try runEngine(desc, storage: input, offset: 0, shape: [1, 4 * window, 1], strides: [4 * window, 1, 1])
        for o in 0..<4 {
            let sum = (0..<window).reduce(0.0) { $0 + input[o * window + $1] }
            #expect(run.output[o] == Double(Float(sum / Double(window))), "window \(o)")
        }
    }

    /// Around the bound of 16-bit sums (int8: windows of 255 elements, whose sums fit in Int16;
    /// uint8: 257, in UInt16; one more sums in Int32), means stay exact: windows of the type's
    /// extreme values, whose sums come within 128 of the limit (255 x 257 is UInt16.max), over
    /// 3 channels at stride 1 (every position folded) and at a stride of a quarter window
    /// (differences of running sums, which wrap many times over a row).
    @Test(arguments: [(DType.int8, 255), (.int8, 256), (.uint8, 128), (.uint8, 129), (.uint8, 257), (.uint8, 258)])
    func byteMeansAreExactAtTheSixteenBitBound(dtype: DType, window: Int) throws {
        var rng = SplitMix64(seed: UInt64(window))
        let channels = 3, length = 4 * window
        let extreme = dtype == .int8 ? -128.0 : 255.0, other = dtype == .int8 ? 127.0 : 0.0
        let input = Buffer(dtype, count: length * channels)
        for i in 0..<input.count {
            let column = i / channels
            input[i] = column < window + 7 ? extreme : (column < 2 * window ? other
                : Double(dtype == .int8 ? Int(Int8(truncatingIfNeeded: rng.next())) : Int(UInt8(truncatingIfNeeded: rng.next()))))
        }
        let fitsInt16 = window * Int(Swift.abs(extreme)) <= (dtype == .int8 ? Int(Int16.max) : Int(UInt16.max))
        let plain = PoolDescriptor(kind: .average, kernelSize: [window]), shape = [1, length, channels]
        let geometry = try PoolGeometry(plain, input: TensorView(data: nil, dtype: dtype, shape: shape),
                                        outputShape: try plain.outputShape(inputShape: shape))
        #expect(try accumulatorType(geometry, .average, dtype) == (fitsInt16 ? Int16.self : Int32.self) as Any.Type)
        for stride in [1, window / 4] {
            let desc = PoolDescriptor(kind: .average, kernelSize: [window], stride: [stride])
            let run = try runEngine(desc, storage: input, offset: 0, shape: [1, length, channels],
                                    strides: [length * channels, channels, 1])
            #expect(run.shape == [1, (length - window) / stride + 1, channels])
            for o in 0..<run.shape[1] {
                for c in 0..<channels {
                    let sum = (0..<window).reduce(0.0) { $0 + input[(o * stride + $1) * channels + c] }
                    #expect(run.output[o * channels + c] == Double(Float(sum / Double(window))), "stride \(stride) output \(o) channel \(c)")
                }
            }
        }
    }

    /// 64-bit integers widen to Double through their 32-bit halves (vectorisable on AVX2): the
    /// same double as Double(x), at the edges of both ranges and at random.
    @Test func sixtyFourBitIntegersWidenAsDoubleDoes() {
        var rng = SplitMix64(seed: 64)
        var signed: [Int64] = [0, 1, -1, .max, .min, .min + 1, 1 << 53, (1 << 53) + 1, -(1 << 53) - 1, (1 << 62) + 1023, 0xFFFF_FFFF]
        var unsigned: [UInt64] = [0, 1, .max, .max - 1024, 1 << 63, (1 << 63) + 1025, (1 << 53) + 1, 0xFFFF_FFFF, 1 << 32]
        for _ in 0..<100_000 {
            let bits = rng.next(), shift = rng.next() % 64
            signed.append(Int64(bitPattern: bits) >> shift)
            unsigned.append(bits >> shift)
        }
        for x in signed {
            let widened = AverageWideInteger<Int64>.vectorizableDouble(UInt64(bitPattern: x), signed: true)
            #expect(widened.bitPattern == Double(x).bitPattern, "\(x)")
        }
        for x in unsigned {
            let widened = AverageWideInteger<UInt64>.vectorizableDouble(x, signed: false)
            #expect(widened.bitPattern == Double(x).bitPattern, "\(x)")
        }
    }

    /// Integer means at the far end of each sum's window range: Int32 (uint8 x 300), Double
    /// (int16 x 70000, past Int32.max; int32 x 2^22, at 2^53) and Int64 (uint32 x 2^21 + 1, past
    /// 2^53). Wrapping sums fail it; which sum ran past 2^53 a float32 mean cannot show (the
    /// choice is `fits`, each reduction's own bound).
    @Test func wideIntegerWindowsSumExactly() throws {
        for (dtype, count, value) in [(DType.uint8, 300, 255.0), (.int16, 70_000, 32767), (.int32, 1 << 22, -2147483648),
                                      (.uint32, (1 << 21) + 1, 4294967295)] {
            let input = Buffer(dtype, count: count)
            for i in 0..<count { input[i] = value }
            let run = try runEngine(PoolDescriptor(kind: .average, kernelSize: [count]), storage: input, offset: 0,
                                    shape: [1, count, 1], strides: [count, 1, 1])
            #expect(run.output[0] == Double(Float(value)), "\(dtype) x \(count)")
        }
    }

    /// Strided integer windows that overlap sum as differences of running sums (`unmerge`) in each
    /// exact sum the window size selects: Int32 divided in float32 (int16 windows below 512), Int32
    /// (int16 windows of 512 to 65,536), Int64 (uint32 windows past 2^21, and 32-bit windows of any
    /// size that overlap or touch along W at strided positions, 1-d and 2-d). Windows long along H
    /// and short enough along W for a chunk's buffer, strides whose span of channels is too wide to
    /// reduce every position (past 64 for 32-bit sums in 2-d, `subsampledSpan`), on whole rows and
    /// tiles cut along W: against the float64 reference (the means are exact, so equal). A float32
    /// mean of 2^21 terms cannot show a sum wrong in its low bits: for Int64, a wrong sign or start
    /// can.
    @Test(arguments: [(DType.int16, [2, 7], [1, 6], [2, 3, 40, 3]), (.int16, [64, 9], [1, 6], [1, 65, 60, 3]),
                      (.uint32, [16300, 129], [1, 9], [1, 16300, 156, 2]), (.int32, [11], [7], [3, 300, 3]),
                      (.uint32, [3, 9], [2, 9], [2, 7, 200, 8]), (.int32, [5, 4], [1, 4], [2, 8, 90, 17])])
    func stridedIntegerWindowsUnmergeEachExactSum(dtype: DType, kernel: [Int], stride: [Int], shape: [Int]) throws {
        let input = randomInput(dtype, shape: shape, seed: UInt64(kernel.reduce(1, *)))
        let desc = PoolDescriptor(kind: .average, kernelSize: kernel, stride: stride)
        let strides = TensorView.contiguousStrides(shape)
        if dtype.size == 4 {
            let geometry = try PoolGeometry(desc, input: TensorView(data: nil, dtype: dtype, shape: shape),
                                            outputShape: desc.outputShape(inputShape: shape))
            #expect(try accumulatorType(geometry, .average, dtype) == Int64.self, "\(desc) \(dtype)")
        }
        let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
        for engine in [PoolEngine(threads: 1), PoolEngine(threads: 2, tileBudgetBytes: 64, serialWorkBelow: 0)] {
            let run = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: engine)
            #expect(firstMismatch(desc, dtype: dtype, actual: run.output, expected: expected.values) == nil, "\(desc) \(dtype)")
        }
    }

    /// Running sums of 6 and 7 channels are summed as one vector of 8 per column (`runningSums`),
    /// whose lanes past the channels sum the next column's first inputs and store them where
    /// the next column's sums go (past the last column, into room the chunk keeps), and whose
    /// last columns, where 8 inputs would pass the row's end, continue in scalars. Integer
    /// averages, 1-d and 2-d, windows that touch and overlap, with and without padding, rows of
    /// several chunks and rows whose last column ends the tensor: against the float64
    /// reference (the means are exact, so equal) and bit for bit on tiles cut along W.
    @Test(arguments: [DType.int8, .uint8, .int16, .uint16, .int32, .uint32, .int64])
    func runningSumsOfSixOrSevenChannelsAsOneVector(dtype: DType) throws {
        let engines = [PoolEngine(threads: 1), PoolEngine(threads: 2, tileBudgetBytes: 200, serialWorkBelow: 0)]
        var checked = 0
        for channels in [6, 7] {
            for (kernel, stride) in [(9, 9), (6, 3), (5, 2), (8, 6), (11, 4)] {
                for (dims, positions) in [(1, 700), (1, 3), (2, 150)] {
                    let padding = (kernel + channels) % 3 == 0 ? 0 : kernel / 2
                    let width = positions * stride + kernel + channels % 3
                    let desc = PoolDescriptor(kind: .average, kernelSize: [Int](repeating: 2, count: dims - 1) + [kernel],
                                              stride: [Int](repeating: 1, count: dims - 1) + [stride],
                                              padding: [Int](repeating: 0, count: dims - 1) + [padding])
                    let shape = [2] + [Int](repeating: 3, count: dims - 1) + [width, channels], strides = TensorView.contiguousStrides(shape)
                    let input = randomInput(dtype, shape: shape, seed: UInt64(channels * 100 + kernel * 10 + dims))
                    try expectEnginesAgree(desc, dtype, storage: input, shape: shape, strides: strides, engines: engines, "\(desc) \(dtype) \(shape)")
                    checked += 1
                }
            }
        }
        #expect(checked == 30)
    }

    /// 32-bit integer averages keep Double sums where W is not reduced as differences of
    /// running sums (windows at every position, subsampled rows: stride x channels at most
    /// 4 for rows alone; strided windows with gaps between them; windows of 2 or 3 columns at
    /// W stride 2 alone), and sum in Int64 at W strides of 3, and of 2 with 4+ columns.
    @Test func thirtyTwoBitAveragesSumInInt64WhereRunningSumsServe() throws {
        for (kernel, stride, channels, sum) in [(3, 1, 4, Double.self), (3, 2, 2, Double.self), (5, 9, 3, Double.self),
                                                (3, 2, 3, Double.self), (2, 2, 4, Double.self), (7, 3, 6, Int64.self),
                                                (4, 2, 8, Int64.self), (3, 3, 2, Int64.self)] as [(Int, Int, Int, Any.Type)] {
            let desc = PoolDescriptor(kind: .average, kernelSize: [kernel], stride: [stride])
            let shape = [1, 50, channels]
            let geometry = try PoolGeometry(desc, input: TensorView(data: nil, dtype: .int32, shape: shape),
                                            outputShape: desc.outputShape(inputShape: shape))
            #expect(try accumulatorType(geometry, .average, .int32) == sum, "\(desc)")
        }
    }
}

@Suite struct StreamingTests {
    /// Outputs streamed to memory (large, 8+ channels) equal outputs stored through the cache,
    /// bit for bit, and the reference.
    @Test(arguments: [DType.float32, .float64, .int8, .bfloat16], PoolKind.allCases)
    func streamedOutputsEqualCachedOnes(dtype: DType, kind: PoolKind) throws {
        let shape = [2, 5, 9, 11, 16]
        let desc = PoolDescriptor(kind: kind, kernelSize: [3, 2, 3], stride: [1, 2, 1], padding: [1, 1, 1])
        let input = randomInput(dtype, shape: shape, seed: 12)
        let strides = TensorView.contiguousStrides(shape)
        let streaming = PoolEngine(threads: 2, tileBudgetBytes: 2048, streamingOutputBytes: 0)
        let cached = PoolEngine(threads: 2, tileBudgetBytes: 2048, streamingOutputBytes: .max)
        let a = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: streaming)
        let b = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: cached)
        #expect(memcmp(a.output.raw, b.output.raw, a.output.count * a.output.dtype.size) == 0)
        let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
        #expect(firstMismatch(desc, dtype: dtype, actual: a.output, expected: expected.values) == nil)
    }
}

extension StreamingTests {
    /// Output planes of many cache lines, finished and streamed a chunk at a time: 9 channels
    /// so planes start at every offset within a line, and 3 (fewer than a vector, whose whole
    /// rows stream too where not subsampled), windows that scan along D and H (k7) and that
    /// fold (k3), tiles of whole planes and tiles cut along H, 1- to 8-byte outputs. The same
    /// bits as outputs stored through the cache, and the reference.
    @Test(arguments: [DType.float32, .float64, .float16, .int8, .uint16], PoolKind.allCases)
    func planesLongerThanAChunkStreamEqually(dtype: DType, kind: PoolKind) throws {
        for channels in [9, 3] {
            try planesLongerThanAChunkStreamEqually(dtype: dtype, kind: kind, channels: channels)
        }
    }

    func planesLongerThanAChunkStreamEqually(dtype: DType, kind: PoolKind, channels: Int) throws {
        let shape = [2, 9, 23, 37, channels]
        let input = randomInput(dtype, shape: shape, seed: 41)
        let strides = TensorView.contiguousStrides(shape)
        for (kernel, padding) in [([7, 3, 5], [3, 1, 2]), ([3, 3, 3], [1, 1, 1])] {
            let desc = PoolDescriptor(kind: kind, kernelSize: kernel, stride: [1, 1, 1], padding: padding)
            let cached = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides,
                                       engine: PoolEngine(threads: 2, streamingOutputBytes: .max))
            let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
            #expect(firstMismatch(desc, dtype: dtype, actual: cached.output, expected: expected.values) == nil)
            // Tiles of whole rows of all channels (the streamed finish), a whole plane's rows
            // and fewer: the budgets that give them, for this type's accumulators.
            let view = TensorView(data: nil, dtype: dtype, shape: shape)
            let geometry = try PoolGeometry(desc, input: view, outputShape: try desc.outputShape(inputShape: shape))
            // Every plane strategy streams here but averages of 8-bit integers, whose float32
            // outputs are wider than their sums (depth first never streams).
            let plan = try #require(try PoolEngine(threads: 2, streamingOutputBytes: 0).kernelPlan(desc, input: view))
            let planes = plan.strategy == .widthFirst || plan.strategy == .heightFirst
            #expect(plan.streamOutput == (planes && !(kind == .average && dtype.size == 1)), "\(desc) \(dtype) \(channels)")
            var rows: Set<Int> = []
            for budget in [1 << 20, KernelSettings.defaultTileBudgetBytes, 96 << 10, 48 << 10, 24 << 10, 12 << 10, 6 << 10] {
                let tile = try tileShape(geometry, kind, dtype, KernelSettings(tileBudgetBytes: budget))
                guard tile.columns == 37 && tile.channels == channels && rows.insert(tile.rows == 23 ? 23 : 0).inserted else { continue }
                let streamed = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides,
                                             engine: PoolEngine(threads: 2, tileBudgetBytes: budget, streamingOutputBytes: 0))
                #expect(memcmp(streamed.output.raw, cached.output.raw, cached.output.count * cached.output.dtype.size) == 0,
                        "\(desc) \(dtype) \(channels) budget \(budget)")
            }
            #expect(rows == [23, 0], "\(desc) \(dtype) \(channels): tiles of whole rows, all and some of them")
        }
    }
}

extension StreamingTests {
    /// Maxima of rows reduced at every position and subsampled (W stride 2, 8 channels: a
    /// span of 16): large outputs of whole rows, without D windows, gather each row's kept
    /// positions and stream the row out. The same bits as outputs stored through the cache
    /// (and the reference), 1- to 8-byte types, whole rows and rows cut by a small budget
    /// (stored in place), and behind a D window (height first compacts its ring there, whose
    /// rows then stream as runs: `KernelPlan.compactsRing`).
    @Test(arguments: [DType.float32, .float64, .int8, .int16, .bfloat16])
    func subsampledMaximaStreamEqually(dtype: DType) throws {
        for channels in [8, 9] {
            for (kernel, padding, planes) in [(3, 1, false), (5, 2, false), (3, 1, true)] {
                let shape = [2] + (planes ? [4] : []) + [13, 37, channels]
                let desc = PoolDescriptor(kind: .max, kernelSize: (planes ? [2] : []) + [kernel, kernel],
                                          stride: (planes ? [1] : []) + [2, 2], padding: (planes ? [1] : []) + [padding, padding])
                let input = randomInput(dtype, shape: shape, seed: UInt64(channels * 10 + kernel))
                let strides = TensorView.contiguousStrides(shape)
                let view = TensorView(data: nil, dtype: dtype, shape: shape)
                let streamingPlan = try #require(try PoolEngine(threads: 2, streamingOutputBytes: 0).kernelPlan(desc, input: view))
                // (9 channels: a span of 18, reduced at the output's positions where the type's
                // subsampled span is 16: float64, and float32 outside 3-d windows.)
                let geometry = try PoolGeometry(desc, input: view, outputShape: try desc.outputShape(inputShape: shape))
                #expect(streamingPlan.subsampledRows == (2 * channels <= subsampledSpan(.max, dtype, geometry)) && streamingPlan.streamOutput,
                        "\(desc) \(dtype) C=\(channels)")
                let cached = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides,
                                           engine: PoolEngine(threads: 2, streamingOutputBytes: .max))
                let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
                #expect(firstMismatch(desc, dtype: dtype, actual: cached.output, expected: expected.values) == nil)
                for budget in [KernelSettings.defaultTileBudgetBytes, 2 << 10] {
                    let streamed = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides,
                                                 engine: PoolEngine(threads: 2, tileBudgetBytes: budget, streamingOutputBytes: 0,
                                                                    serialWorkBelow: 0))
                    #expect(memcmp(streamed.output.raw, cached.output.raw, cached.output.count * cached.output.dtype.size) == 0,
                            "\(desc) \(dtype) C=\(channels) budget \(budget)")
                }
            }
        }
    }
}

@Suite struct RowTileTests {
    /// Windows one row and one plane tall (1-d pooling) share no rows between tiles: their
    /// rows are cut into tiles that fit `KernelSettings.rowTileBudgetBytes`, however large the
    /// L2 budget, and each output finishes straight from its one reduced plane (and, for large
    /// outputs, each tile's run is streamed out). Against the float64 reference, and bit for
    /// bit across thread counts, a budget that cuts the rows into tiles of a few windows and
    /// streamed runs (folds, the max's doubling, strides, an even kernel, rows shorter than a
    /// tile).
    @Test(arguments: PoolKind.allCases, [DType.float32, .float16, .int8, .float64])
    func oneDimensionalRowsAreCutToL1(kind: PoolKind, dtype: DType) throws {
        let large = KernelSettings(tileBudgetBytes: 4 << 20)
        for (kernel, stride, padding, channels, length) in [(3, 1, 1, 8, 3000), (7, 1, 3, 8, 3000), (11, 1, 5, 3, 6000),
                                                            (7, 2, 3, 1, 20000), (4, 1, 2, 16, 2000), (9, 3, 4, 8, 40)] {
            let shape = [2, length, channels]
            let desc = PoolDescriptor(kind: kind, kernelSize: [kernel], stride: [stride], padding: [padding])
            let view = TensorView(data: nil, dtype: dtype, shape: shape)
            let outputShape = try desc.outputShape(inputShape: shape)
            let geometry = try PoolGeometry(desc, input: view, outputShape: outputShape)
            let tile = try tileShape(geometry, kind, dtype, large)
            if length > 1000 {
                #expect(tile.columns < outputShape[1] && tile.channels == channels, "\(desc) \(dtype) \(shape): \(tile)")
            }
            let input = randomInput(dtype, shape: shape, seed: UInt64(kernel * 100 + channels))
            let strides = TensorView.contiguousStrides(shape)
            let one = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides,
                                    engine: PoolEngine(threads: 1, tileBudgetBytes: 4 << 20))
            let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
            let mismatch = firstMismatch(desc, dtype: dtype, actual: one.output, expected: expected.values)
            #expect(mismatch == nil, "\(desc) \(dtype) \(shape): \(mismatch ?? "")")
            let small = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides,
                                      engine: PoolEngine(threads: 2, tileBudgetBytes: 2 << 10, serialWorkBelow: 0))
            #expect(memcmp(small.output.raw, one.output.raw, one.output.count * one.output.dtype.size) == 0,
                    "\(desc) \(dtype) \(shape): small tiles on two threads")
            // Each tile's run streamed out (8+ channels), tiles ending anywhere in a cache line.
            let streamed = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides,
                                         engine: PoolEngine(threads: 2, streamingOutputBytes: 0, serialWorkBelow: 0))
            #expect(memcmp(streamed.output.raw, one.output.raw, one.output.count * one.output.dtype.size) == 0,
                    "\(desc) \(dtype) \(shape): streamed")
        }
    }
}

@Suite struct MidSizedCallTests {
    /// One output plane that fits one tile is cut along H among the workers where each part
    /// keeps twice the rows it shares with its neighbour: the same bits as one thread, and
    /// the reference, where it is cut (k3, k7 on 40 rows) and where it is not (k7 on 20).
    @Test(arguments: PoolKind.allCases)
    func aPlaneOfOneTileIsCutAmongWorkers(kind: PoolKind) throws {
        for (kernel, rows, cut) in [(3, 40, true), (7, 40, true), (7, 20, false)] {
            let shape = [1, rows, 24, 8]
            let desc = PoolDescriptor(kind: kind, kernelSize: [kernel, kernel], stride: [1, 1], padding: [kernel / 2, kernel / 2])
            let view = TensorView(data: nil, dtype: .float32, shape: shape)
            let geometry = try PoolGeometry(desc, input: view, outputShape: try desc.outputShape(inputShape: shape))
            #expect(try tileShape(geometry, kind, .float32, KernelSettings()).rows == rows)
            let two = try tileShape(geometry, kind, .float32, KernelSettings(), workers: 2)
            #expect(two.rows == (cut ? rows / 2 : rows) && two.columns == 24 && two.channels == 8, "k\(kernel) on \(rows): \(two)")
            let input = randomInput(.float32, shape: shape, seed: UInt64(kernel * rows))
            let strides = TensorView.contiguousStrides(shape)
            let one = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: PoolEngine(threads: 1))
            let both = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: PoolEngine(threads: 2))
            #expect(memcmp(one.output.raw, both.output.raw, one.output.count * 4) == 0, "k\(kernel) on \(rows)")
            let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
            #expect(firstMismatch(desc, dtype: .float32, actual: both.output, expected: expected.values) == nil)
        }
    }
}

@Suite struct WholeWindowTests {
    /// Windows that do not overlap, over 64+ channels, fold whole from the input (the plan
    /// asserted: all but float sums of more than 12 taps): every dtype and kind against the
    /// float64 reference, and bit for bit across thread counts and budgets whose tiles split
    /// rows and channels. Windows of 1 to 27 taps (beyond 6 through the partial sums),
    /// padding that shortens the edge windows or holds whole ones, strides beyond the kernel,
    /// and a view whose pixels are not dense (no prefetch).
    @Test(arguments: DType.allCases)
    func nonOverlappingWindowsFoldWhole(dtype: DType) throws {
        let engines = [PoolEngine(threads: 1), PoolEngine(threads: 2, tileBudgetBytes: 300, serialWorkBelow: 0),
                       PoolEngine(threads: 2, tileBudgetBytes: 3000, serialWorkBelow: 0)]
        // kernel, stride, padding, shape, pixel pitch (nil: dense)
        let cases: [([Int], [Int], [Int], [Int], Int?)] = [
            ([2, 2, 2], [2, 2, 2], [0, 0, 0], [2, 4, 6, 8, 64], nil),
            ([2, 2, 2], [2, 2, 2], [1, 1, 1], [1, 5, 5, 7, 65], nil),
            ([3, 2, 2], [3, 2, 3], [1, 1, 0], [1, 7, 6, 9, 72], nil),
            ([1, 3, 2], [2, 3, 2], [0, 1, 1], [2, 3, 7, 7, 66], nil),
            ([2, 2], [2, 2], [1, 0], [2, 7, 6, 68], nil),
            ([1], [3], [0], [3, 10, 64], nil),
            ([2, 2, 2], [2, 3, 2], [0, 1, 1], [1, 4, 5, 6, 65], 70),
            // Padding beyond the kernel (windows wholly in it), and an empty input axis.
            ([2, 2, 2], [2, 2, 2], [2, 3, 2], [1, 3, 4, 5, 64], nil),
            ([2, 1, 2], [2, 1, 2], [1, 0, 1], [1, 0, 2, 3, 64], nil),
            // More than 12 taps: whole for maxima and integer sums only.
            ([3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 7, 8, 10, 64], nil),
            ([4, 4], [5, 4], [2, 1], [2, 11, 13, 66], nil),
        ]
        var planned = 0
        for kind in PoolKind.allCases {
            for (index, (kernel, strideSizes, padding, shape, pitch)) in cases.enumerated() {
                let desc = PoolDescriptor(kind: kind, kernelSize: kernel, stride: strideSizes, padding: padding)
                var strides = TensorView.contiguousStrides(shape)
                if let pitch {
                    // Pixels `pitch` elements apart, rows and planes packed from there.
                    strides[strides.count - 2] = pitch
                    for axis in stride(from: strides.count - 3, through: 0, by: -1) { strides[axis] = strides[axis + 1] * shape[axis + 1] }
                }
                let view = TensorView(data: nil, dtype: dtype, shape: shape, strides: strides)
                if !shape.contains(0), let plan = try engines[0].kernelPlan(desc, input: view) {
                    // Sums in floating point: float types, and 64-bit integers (in float64).
                    let floatSum = kind == .average && (dtype.isFloatingPoint || dtype.size == 8)
                    #expect((plan.strategy == .wholeWindows) == !(floatSum && kernel.reduce(1, *) > 12), "\(desc) \(dtype) \(shape)")
                    planned += 1
                }
                let input = randomInput(dtype, shape: [strides[0] * shape[0]], seed: UInt64(index * 7) + UInt64(kind.code))
                let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
                var baseline: PoolRun?
                for engine in engines {
                    let run = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: engine)
                    let mismatch = firstMismatch(desc, dtype: dtype, actual: run.output, expected: expected.values)
                    #expect(mismatch == nil, "\(desc) \(dtype) \(shape): \(mismatch ?? "")")
                    if let baseline {
                        #expect(memcmp(run.output.raw, baseline.output.raw, run.output.count * run.output.dtype.size) == 0,
                                "\(desc) \(dtype) \(shape): engines differ")
                    } else {
                        baseline = run
                    }
                }
            }
        }
        // Every case but the empty input's, for each kind.
        #expect(planned == PoolKind.allCases.count * 10)
    }
}
