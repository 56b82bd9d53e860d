import CTidepoolVector
import Testing
import TidepoolCore
import TidepoolKernels

/// Which strategy (KernelPlan.swift) runs for representative geometries: an edit of a
/// predicate that moves a case to another path, or leaves a path unreached, fails here, while
/// the result tests (PoolingTests) would stay green.
struct StrategyTests {
    struct Case: CustomStringConvertible, Sendable {
        let kind: PoolKind
        let dtype: DType
        let shape: [Int]
        let kernel: Int, stride: Int, padding: Int
        let strategy: Strategy
        var description: String {
            "\(kind) \(shape.count - 2)-d k\(kernel) s\(stride) p\(padding) \(dtype) \(shape)"
        }

        func plan(_ engine: PoolEngine = PoolEngine(threads: 2)) throws -> KernelPlan {
            let dims = shape.count - 2
            let desc = PoolDescriptor(kind: kind, kernelSize: Array(repeating: kernel, count: dims),
                                      stride: Array(repeating: stride, count: dims), padding: Array(repeating: padding, count: dims))
            let input = TensorView(data: nil, dtype: dtype, shape: shape)
            return try #require(try engine.kernelPlan(desc, input: input))
        }
    }

    /// The `make bench` cases and their neighbours in other dtypes, dimensions and channel counts.
    static let cases: [Case] = [
        // k2 s2 with 4 channels: W subsampled (stride x channels fits a vector), rows strided.
        Case(kind: .average, dtype: .float32, shape: [8, 16, 32, 32, 4], kernel: 2, stride: 2, padding: 0, strategy: .heightFirst),
        // k2 s2 with 32 channels: windows do not overlap, at most 12 taps.
        Case(kind: .average, dtype: .float32, shape: [4, 32, 64, 64, 32], kernel: 2, stride: 2, padding: 0, strategy: .wholeWindows),
        Case(kind: .max, dtype: .int8, shape: [2, 8, 16, 16, 9], kernel: 2, stride: 2, padding: 1, strategy: .wholeWindows),
        // k3 s3: 27 taps is too many for whole windows of float sums (32 channels: a span
        // past float32 sums' 64, so positions at the stride).
        Case(kind: .average, dtype: .float32, shape: [1, 9, 9, 9, 32], kernel: 3, stride: 3, padding: 0, strategy: .widthFirst),
        Case(kind: .average, dtype: .float32, shape: [4, 32, 64, 64, 32], kernel: 3, stride: 1, padding: 1, strategy: .widthFirst),
        Case(kind: .max, dtype: .float32, shape: [4, 32, 64, 64, 32], kernel: 3, stride: 1, padding: 1, strategy: .widthFirst),
        Case(kind: .average, dtype: .float32, shape: [2, 64, 224, 224, 3], kernel: 3, stride: 2, padding: 1, strategy: .heightFirst),
        // k5 s1 p2 on one channel: depth first only where the input is widened or 16 bits wide.
        Case(kind: .average, dtype: .float32, shape: [4, 128, 128, 128, 1], kernel: 5, stride: 1, padding: 2, strategy: .widthFirst),
        Case(kind: .average, dtype: .float64, shape: [4, 128, 128, 128, 1], kernel: 5, stride: 1, padding: 2, strategy: .widthFirst),
        Case(kind: .average, dtype: .bfloat16, shape: [4, 128, 128, 128, 1], kernel: 5, stride: 1, padding: 2, strategy: .depthFirst),
        Case(kind: .average, dtype: .float16, shape: [4, 128, 128, 128, 1], kernel: 5, stride: 1, padding: 2, strategy: .depthFirst),
        Case(kind: .average, dtype: .int8, shape: [4, 128, 128, 128, 1], kernel: 5, stride: 1, padding: 2, strategy: .depthFirst),
        Case(kind: .average, dtype: .int32, shape: [4, 128, 128, 128, 1], kernel: 5, stride: 1, padding: 2, strategy: .depthFirst),
        Case(kind: .max, dtype: .float16, shape: [4, 128, 128, 128, 1], kernel: 5, stride: 1, padding: 2, strategy: .depthFirst),
        Case(kind: .max, dtype: .int32, shape: [4, 128, 128, 128, 1], kernel: 5, stride: 1, padding: 2, strategy: .widthFirst),
        // Depth first needs 2 to 5 planes and rows short enough for one tile.
        Case(kind: .average, dtype: .bfloat16, shape: [1, 16, 16, 16, 1], kernel: 7, stride: 1, padding: 3, strategy: .widthFirst),
        Case(kind: .average, dtype: .bfloat16, shape: [1, 8, 8, 40000, 1], kernel: 3, stride: 1, padding: 1, strategy: .widthFirst),
        // 1-d and 2-d layers are lifted to 3-d with one plane (kernel 1 along D).
        Case(kind: .average, dtype: .float32, shape: [8, 56, 56, 3], kernel: 3, stride: 2, padding: 1, strategy: .heightFirst),
        Case(kind: .max, dtype: .float32, shape: [8, 112, 112, 64], kernel: 3, stride: 2, padding: 1, strategy: .widthFirst),
        Case(kind: .max, dtype: .float32, shape: [8, 112, 112, 64], kernel: 2, stride: 2, padding: 0, strategy: .wholeWindows),
        Case(kind: .average, dtype: .float32, shape: [64, 4096, 1], kernel: 2, stride: 2, padding: 0, strategy: .widthFirst),
        Case(kind: .average, dtype: .float32, shape: [64, 4096, 64], kernel: 9, stride: 1, padding: 4, strategy: .widthFirst),
        // Windows of one element of float averages run whole, of any channel count (a -0 passes
        // through, as in MLX); other reductions keep their plan.
        Case(kind: .average, dtype: .float32, shape: [8, 56, 56, 3], kernel: 1, stride: 2, padding: 1, strategy: .wholeWindows),
        Case(kind: .average, dtype: .bfloat16, shape: [4, 128, 128, 128, 1], kernel: 1, stride: 1, padding: 0, strategy: .wholeWindows),
        Case(kind: .average, dtype: .int8, shape: [8, 56, 56, 3], kernel: 1, stride: 2, padding: 1, strategy: .heightFirst),
        Case(kind: .max, dtype: .float32, shape: [64, 4096, 1], kernel: 1, stride: 1, padding: 0, strategy: .widthFirst),
        // Few channels at a W stride too wide to subsample (4 x 7 channels, past float64's span
        // of 16): H first all the same, W then at the output's positions. With 16 channels W
        // stays first.
        Case(kind: .average, dtype: .float64, shape: [2, 16, 20, 20, 7], kernel: 4, stride: 4, padding: 2, strategy: .heightFirst),
        Case(kind: .average, dtype: .float64, shape: [2, 16, 20, 20, 16], kernel: 5, stride: 5, padding: 0, strategy: .widthFirst),
        // Windows that do not overlap, over 2+ rows, fold whole only where a position's
        // channels span 128 bytes of input, number 64, or are 9+ byte maxima: 8 int8 or
        // float32 channels and 32 float16 ones fold an axis at a time.
        Case(kind: .max, dtype: .int8, shape: [2, 8, 16, 16, 8], kernel: 2, stride: 2, padding: 1, strategy: .heightFirst),
        Case(kind: .average, dtype: .int8, shape: [2, 8, 16, 16, 32], kernel: 2, stride: 2, padding: 0, strategy: .heightFirst),
        Case(kind: .average, dtype: .int8, shape: [2, 8, 16, 16, 64], kernel: 2, stride: 2, padding: 0, strategy: .wholeWindows),
        Case(kind: .average, dtype: .float16, shape: [2, 8, 16, 16, 32], kernel: 2, stride: 2, padding: 0, strategy: .heightFirst),
        Case(kind: .average, dtype: .float16, shape: [2, 8, 16, 16, 64], kernel: 2, stride: 2, padding: 0, strategy: .wholeWindows),
        Case(kind: .max, dtype: .float32, shape: [2, 16, 30, 8], kernel: 3, stride: 3, padding: 0, strategy: .widthFirst),
        // Rows alone keep whole windows from 8 channels (where not subsampled).
        Case(kind: .average, dtype: .float64, shape: [4, 300, 8], kernel: 3, stride: 3, padding: 0, strategy: .wholeWindows),
        // More than 12 taps: whole for maxima and integer sums (exact in any order) up to 125,
        // not for float sums, nor for rows alone.
        Case(kind: .average, dtype: .int8, shape: [1, 9, 9, 9, 64], kernel: 3, stride: 3, padding: 0, strategy: .wholeWindows),
        Case(kind: .max, dtype: .float32, shape: [1, 9, 9, 9, 32], kernel: 3, stride: 3, padding: 0, strategy: .wholeWindows),
        Case(kind: .average, dtype: .uint8, shape: [2, 18, 18, 18, 64], kernel: 5, stride: 5, padding: 2, strategy: .wholeWindows),
        Case(kind: .average, dtype: .uint8, shape: [2, 18, 18, 18, 64], kernel: 9, stride: 9, padding: 3, strategy: .widthFirst),
        Case(kind: .average, dtype: .float32, shape: [2, 18, 18, 64], kernel: 5, stride: 5, padding: 0, strategy: .widthFirst),
        Case(kind: .max, dtype: .int32, shape: [4, 300, 32], kernel: 13, stride: 13, padding: 0, strategy: .widthFirst),
    ]

    @Test(arguments: cases)
    func strategy(_ c: Case) throws {
        #expect(try c.plan().strategy == c.strategy)
    }

    /// A contiguous input of any rank, and a view whose only odd steps are those of unit axes
    /// (never used to address an element), has dense rows: the plan reads whole planes as
    /// runs and a float average is not packed first. 1-d inputs, lifted with steps of 0,
    /// counted as strided before, and every 1-d float average copied its whole input.
    @Test func unitAxesKeepRowsDense() throws {
        func geometry(_ shape: [Int], strides: [Int]? = nil) throws -> PoolGeometry {
            let dims = shape.count - 2
            let desc = PoolDescriptor(kind: .average, kernelSize: Array(repeating: 1, count: dims),
                                      stride: Array(repeating: 1, count: dims), padding: Array(repeating: 0, count: dims))
            let view = TensorView(data: nil, dtype: .float32, shape: shape, strides: strides)
            return try PoolGeometry(desc, input: view, outputShape: try desc.outputShape(inputShape: shape))
        }
        for shape in [[4, 4096, 8], [2, 1, 3], [3, 5, 1], [4, 9, 7, 8], [2, 1, 7, 3], [2, 6, 1, 3], [2, 3, 4, 5, 6], [1, 1, 1, 9, 2]] {
            #expect(try geometry(shape).hasDenseRows, "\(shape)")
        }
        // Unit axes with any step: a plane of (1, 7, 3) and one channel of (5, 4, 1).
        #expect(try geometry([2, 1, 7, 3], strides: [21, 0, 3, 1]).hasDenseRows)
        #expect(try geometry([2, 1, 7, 3], strides: [21, 1000, 3, 1]).hasDenseRows)
        #expect(try geometry([2, 5, 4, 1], strides: [20, 4, 1, 7]).hasDenseRows)
        // Strided where it matters: every other channel, every other row.
        #expect(try !geometry([2, 7, 3], strides: [42, 6, 2]).hasDenseRows)
        #expect(try !geometry([2, 5, 7, 3], strides: [210, 42, 3, 1]).hasDenseRows)
    }

    /// Every strategy is reached by some case above, so every path keeps a pinned geometry.
    @Test func everyStrategyIsPinned() {
        #expect(Set(Self.cases.map(\.strategy)) == Set(Strategy.allCases))
    }

    /// AvgPool3d k5 s1 p2 on one channel of bfloat16: depth first, finished by the AVX-512
    /// kernel where this CPU has it (checked on both kinds of CPU: the answer follows the CPU).
    @Test func bfloat16DepthFirstOptions() throws {
        let plan = try Self.cases[9].plan()
        #expect(plan.strategy == .depthFirst)
        #expect(plan.usesVectorFinish == (tpvector_supports(TPVECTOR_BFLOAT16) != 0))
        #expect(plan.prefetchInput && !plan.streamOutput)
        #expect(try !Self.cases[9].plan(PoolEngine(threads: 2, usesVectorKernels: false)).usesVectorFinish)
    }

    /// The options of the width-first and height-first cases.
    @Test func planeOptions() throws {
        // float32 k5 s1 p2, one channel: rows reduce as one run; prefetches on (overlapping D,
        // 32 MiB: past `KernelLimits.prefetchedInputBytes`);
        // whole rows at every position stream out, as runs of the tile's planes.
        let oneChannel = try Self.cases[7].plan()
        #expect(oneChannel.rowsAsOneRun && oneChannel.prefetchInput && oneChannel.streamOutput)
        #expect(!oneChannel.usesVectorFinish)
        // float64 (64 MiB) fetches its input too, as every 8-byte input of 16 MiB or more
        // (`KernelLimits.prefetchedWideInputBytes`); one plane less than 16 MiB does not, nor
        // does it fetch the next plane ahead; narrower inputs from 8 MiB
        // (`KernelLimits.prefetchedInputBytes`). Height first fetches each next plane while it
        // reduces the one before whatever the size (its H folds waited on memory).
        #expect(try Self.cases[8].plan().prefetchInput && Self.cases[8].plan().prefetchPlaneAhead)
        for (planes, fetches) in [(128, true), (127, false)] {
            for (kind, dtype) in [(PoolKind.average, DType.float64), (.max, .uint64), (.average, .float32), (.max, .int32)] {
                let sized = Case(kind: kind, dtype: dtype, shape: [1, planes, 128, 128, 1], kernel: 5, stride: 1, padding: 2,
                                 strategy: .widthFirst)
                #expect(try sized.plan().strategy == .widthFirst, "\(sized)")
                #expect(try sized.plan().prefetchInput == fetches && sized.plan().prefetchPlaneAhead == fetches, "\(sized)")
            }
        }
        let strided64 = Case(kind: .max, dtype: .float64, shape: [4, 128, 128, 128, 1], kernel: 9, stride: 3, padding: 4,
                             strategy: .heightFirst)
        #expect(try strided64.plan().strategy == .heightFirst && strided64.plan().prefetchInput)
        // Whether or not D windows overlap (k2 s2, k3 s3: each plane in one window).
        #expect(try Self.cases[0].plan().strategy == .heightFirst && Self.cases[0].plan().prefetchInput)
        for dtype in [DType.float64, .int8] {
            let apart = Case(kind: .max, dtype: dtype, shape: [2, 9, 30, 30, 5], kernel: 3, stride: 3, padding: 0, strategy: .heightFirst)
            #expect(try apart.plan().strategy == .heightFirst && apart.plan().prefetchInput && apart.plan().prefetchPlaneAhead, "\(apart)")
        }
        // Width first fetches each plane while the one before is reduced at a D stride of 1 only
        // (k5 s1, one channel, above), not where windows add several planes (k11 s5).
        #expect(try Self.cases[7].plan().strategy == .widthFirst && Self.cases[7].plan().prefetchPlaneAhead)
        let several = Case(kind: .average, dtype: .bfloat16, shape: [8, 30, 30, 30, 24], kernel: 11, stride: 5, padding: 4,
                           strategy: .widthFirst)
        #expect(try several.plan().strategy == .widthFirst && several.plan().prefetchInput && !several.plan().prefetchPlaneAhead)
        // 32 channels, 64 MiB of output: streamed, not reduced as one run.
        let wide = try Self.cases[4].plan()
        #expect(wide.streamOutput && !wide.rowsAsOneRun)
        #expect(try !Self.cases[4].plan(PoolEngine(threads: 2, streamingOutputBytes: .max)).streamOutput)
        // k3 s2 with 3 channels: W reduced at every position, the output subsampled, and the
        // ring keeps the output's positions alone, so its rows finish as runs.
        let subsampled = try Self.cases[6].plan()
        #expect(subsampled.subsampledRows && subsampled.compactsRing && subsampled.rowsFinishAsRuns)
        // 8 channels at stride 2 (a span of 16) too, so H first: position by position, one
        // vector per position, cost 3-d pooling twice its floor. At stride 3 (24) positions
        // stay for float64 (float32 maxima of short 3-d windows subsample spans up to 64).
        for (stride, strategy) in [(2, Strategy.heightFirst), (3, .widthFirst)] {
            let eight = Case(kind: .max, dtype: .float64, shape: [4, 81, 81, 81, 8], kernel: 3, stride: stride, padding: 1,
                             strategy: strategy)
            #expect(try eight.plan().strategy == strategy && eight.plan().subsampledRows == (stride == 2))
        }
        // bfloat16 rows finish through the vector kernel where the CPU has it; float16 never.
        let bf16 = Case(kind: .average, dtype: .bfloat16, shape: [2, 8, 16, 16, 32], kernel: 3, stride: 1, padding: 1, strategy: .widthFirst)
        #expect(try bf16.plan().strategy == .widthFirst)
        #expect(try bf16.plan().usesVectorFinish == (tpvector_supports(TPVECTOR_BFLOAT16) != 0))
        let f16 = Case(kind: .average, dtype: .float16, shape: [2, 8, 16, 16, 32], kernel: 3, stride: 1, padding: 1, strategy: .widthFirst)
        #expect(try !f16.plan().usesVectorFinish)
        // 64-bit integer averages widen each row once (not for subsampled rows).
        let wide64 = Case(kind: .average, dtype: .int64, shape: [4, 16, 64, 64, 8], kernel: 3, stride: 1, padding: 1, strategy: .widthFirst)
        #expect(try wide64.plan().widenOnce && wide64.plan().prefetchInput)
        // So do float16 and bfloat16 maxima (a key costs more than a pass) where W folds taps,
        // or doubles a row of few channels, not where W doubles straight from the rows, nor in
        // 1-d (rows of few channels fold as one run from the input). (3-d k3 plans depth
        // first, whose passes do not read the option; it is pinned all the same.)
        for dtype in [DType.float16, .bfloat16] {
            for (shape, kernel, padding, widens, strategy) in [([2, 8, 16, 16, 5], 4, 2, true, Strategy.widthFirst),
                                                                ([2, 8, 16, 16, 5], 3, 1, true, .depthFirst),
                                                                ([2, 64, 64, 6], 11, 5, true, .widthFirst),
                                                                ([2, 16, 64, 32], 5, 2, true, .widthFirst),
                                                                ([2, 16, 64, 32], 7, 3, false, .widthFirst),
                                                                ([4, 512, 3], 9, 4, false, .widthFirst),
                                                                ([4, 512, 3], 4, 2, false, .widthFirst),
                                                                ([4, 512, 8], 5, 1, false, .widthFirst)] {
                let half = Case(kind: .max, dtype: dtype, shape: shape, kernel: kernel, stride: 1, padding: padding,
                                strategy: strategy)
                let plan = try half.plan()
                #expect(plan.strategy == strategy, "\(half): \(plan.strategy)")
                #expect(plan.widenOnce == widens && plan.rowsAsOneRun == (shape == [4, 512, 3]), "\(half)")
            }
        }
    }

    /// The plan does not depend on the thread count or the tile budget (results are the same
    /// for any engine); and strided inputs leave the dense-row paths.
    @Test func planIgnoresThreadsAndBudget() throws {
        for c in Self.cases {
            for engine in [PoolEngine(threads: 1), PoolEngine(threads: 7, tileBudgetBytes: 2048)] {
                let plan = try c.plan(engine)
                #expect(plan.strategy == c.strategy, "\(c)")
            }
        }
        let desc = PoolDescriptor(kind: .average, kernelSize: [5, 5, 5], stride: [1, 1, 1], padding: [2, 2, 2])
        let shape = [1, 16, 16, 16, 1]
        var strides = TensorView.contiguousStrides(shape)
        strides[3] = 2  // every other column
        strides = strides.enumerated().map { $0.offset < 3 ? $0.element * 2 : $0.element }
        let strided = TensorView(data: nil, dtype: .bfloat16, shape: shape, strides: strides)
        let plan = try #require(try PoolEngine(threads: 2).kernelPlan(desc, input: strided))
        #expect(plan.strategy == .widthFirst && !plan.rowsAsOneRun)
    }

    /// The default tile budget follows the L2 of a core, within 512 to 896 KB, and an unknown
    /// size (sysconf's 0 or -1) gives the smallest.
    @Test func tileBudgetFollowsTheL2() {
        let budget = KernelSettings.tileBudget(level2CacheBytes:)
        #expect(budget(-1) == 512 << 10 && budget(0) == 512 << 10 && budget(512 << 10) == 512 << 10)
        #expect(budget(768 << 10) == 672 << 10 && budget(1 << 20) == 896 << 10 && budget(2 << 20) == 896 << 10)
        #expect(budget(Int.max) == 896 << 10)
        #expect((512 << 10...896 << 10).contains(KernelSettings.defaultTileBudgetBytes))
    }
}

extension PoolEngine {
    /// The plan (strategy and options) this engine's kernels follow for `desc` on `input`, or
    /// nil when the output is empty.
    func kernelPlan(_ desc: PoolDescriptor, input: TensorView) throws -> KernelPlan? {
        let shape = try desc.outputShape(inputShape: input.shape)
        guard !shape.contains(0) else { return nil }
        let geometry = try PoolGeometry(desc, input: input, outputShape: shape)
        return try TidepoolKernels.kernelPlan(geometry, desc.kind, input.dtype, settings)
    }
}
