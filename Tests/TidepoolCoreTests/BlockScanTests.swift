import Testing
import TidepoolCore
import TidepoolKernels

#if canImport(Glibc)
import Glibc
#endif

/// Block scans along H and D (BlockScans.swift) against the float64 reference, against the
/// tap-by-tap folds (bit for bit for integer sums, and for max of values without ties or NaNs;
/// see `maxKeepsNaNPayloadsAndSignedZeros` for those) and against themselves under
/// other tilings and thread counts (bit for bit), at their edges: windows near the axis's
/// length, padding wider than the kernel, strides up to half the kernel, windows clipped at
/// both ends, tiles and blocks starting anywhere.
@Suite struct BlockScanTests {
    /// Scans wherever a window has 2+ taps and overlaps its neighbours.
    static let scanning = PoolEngine(threads: 1, blockScanTaps: 2, rowsAsPlanesAbove: 0)
    /// Tiny tiles on 3 threads, small calls too (by default they stay on the caller's).
    static let scanningTiny = [64, 160, 700, 4096].map {
        PoolEngine(threads: 3, tileBudgetBytes: $0, blockScanTaps: 2, rowsAsPlanesAbove: 0, serialWorkBelow: 0)
    }
    static let folding = PoolEngine(threads: 2, blockScanTaps: .max)
    /// H scans on 2-d poolings, whose rows the engines above run as planes.
    static let scanningRows = PoolEngine(threads: 2, blockScanTaps: 2, rowsAsPlanesAbove: .max)

    static func bytes(_ run: PoolRun) -> Int { run.output.count * run.output.dtype.size }

    /// Runs `desc` on every engine and checks the results (see the suite's comment).
    func check(_ desc: PoolDescriptor, _ dtype: DType, shape: [Int], storage: Buffer, againstReference: Bool = true,
               comparesFolds: Bool = true, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let strides = TensorView.contiguousStrides(shape)
        let scanned = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: Self.scanning)
        if againstReference {
            let expected = try #require(referencePool(desc, storage: storage, offset: 0, shape: shape, strides: strides),
                                        sourceLocation: sourceLocation)
            let mismatch = firstMismatch(desc, dtype: dtype, actual: scanned.output, expected: expected.values)
            #expect(mismatch == nil, "\(desc) \(dtype) \(shape): \(mismatch ?? "")", sourceLocation: sourceLocation)
        }
        if againstReference && shape.count == 4 {
            let rows = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: Self.scanningRows)
            let expected = try #require(referencePool(desc, storage: storage, offset: 0, shape: shape, strides: strides),
                                        sourceLocation: sourceLocation)
            let mismatch = firstMismatch(desc, dtype: dtype, actual: rows.output, expected: expected.values)
            #expect(mismatch == nil, "\(desc) \(dtype) \(shape), H scans: \(mismatch ?? "")", sourceLocation: sourceLocation)
        }
        for engine in Self.scanningTiny {
            let run = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: engine)
            #expect(memcmp(run.output.raw, scanned.output.raw, Self.bytes(run)) == 0,
                    "\(desc) \(dtype) \(shape) budget \(engine.settings.tileBudgetBytes)", sourceLocation: sourceLocation)
        }
        if comparesFolds && (desc.kind == .max || !dtype.isFloatingPoint) {
            let folded = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: Self.folding)
            #expect(memcmp(folded.output.raw, scanned.output.raw, Self.bytes(folded)) == 0,
                    "\(desc) \(dtype) \(shape): scans differ from folds", sourceLocation: sourceLocation)
        }
    }

    /// The plans do scan: an edit that turned the scans off would leave the tests above
    /// comparing folds with folds.
    @Test func theseGeometriesScan() throws {
        // (8 channels: rows of fewer reduce along W as one run, without doubling.)
        let input = TensorView(data: nil, dtype: .float32, shape: [1, 9, 9, 9, 8])
        let small = PoolDescriptor(kind: .max, kernelSize: [3, 4, 2], stride: [1, 1, 1], padding: [1, 2, 0])
        let plan = try #require(try Self.scanning.kernelPlan(small, input: input))
        #expect(plan.scansH && plan.scansD && plan.doublesW && !plan.pairsW)
        let folds = try #require(try Self.folding.kernelPlan(small, input: input))
        #expect(!folds.scansH && !folds.scansD && !folds.pairsW && !folds.doublesW)
        // Sums pair along W up to 12 columns and fold beyond; they never double (overlapping
        // parts would count twice).
        let pairs = PoolDescriptor(kind: .average, kernelSize: [3, 4, 12], stride: [1, 1, 1], padding: [1, 2, 6])
        let pairsPlan = try #require(try Self.scanning.kernelPlan(pairs, input: input))
        #expect(pairsPlan.pairsW && !pairsPlan.doublesW)
        let average = PoolDescriptor(kind: .average, kernelSize: [3, 4, 13], stride: [1, 1, 1], padding: [1, 2, 6])
        let averagePlan = try #require(try Self.scanning.kernelPlan(average, input: input))
        #expect(!averagePlan.doublesW && !averagePlan.pairsW)
        // By default: k7 s1 scans, k3 s1 and k7 s4 (little overlap) fold.
        let k7 = PoolDescriptor(kind: .average, kernelSize: [7, 3, 7], stride: [1, 1, 4], padding: [3, 1, 3])
        let byDefault = try #require(try PoolEngine(threads: 2).kernelPlan(k7, input: input))
        #expect(byDefault.scansD && !byDefault.scansH)
        // (W strided over 40 channels, a span past float32 sums' 64, is reduced at the
        // output's positions, so H after it.)
        let strided = PoolDescriptor(kind: .average, kernelSize: [7, 7, 3], stride: [4, 3, 2], padding: [3, 3, 1])
        let forty = TensorView(data: nil, dtype: .float32, shape: [1, 9, 9, 9, 40])
        let stridedPlan = try #require(try PoolEngine(threads: 2).kernelPlan(strided, input: forty))
        #expect(stridedPlan.strategy == .widthFirst)
        #expect(!stridedPlan.scansD && stridedPlan.scansH)
        // The max of float32 and float64 scans from 4 taps; sums and integer maxima from 6.
        let k4 = PoolDescriptor(kind: .max, kernelSize: [4, 4, 4], stride: [1, 1, 1], padding: [2, 2, 2])
        for dtype in [DType.float32, .float64] {
            let floatMax = try #require(try PoolEngine(threads: 2).kernelPlan(k4, input: TensorView(data: nil, dtype: dtype, shape: [1, 9, 9, 9, 8])))
            #expect(floatMax.scansD && floatMax.scansH && floatMax.doublesW, "\(dtype)")
        }
        for dtype in [DType.int32, .float16] {
            let foldingMax = try #require(try PoolEngine(threads: 2).kernelPlan(k4, input: TensorView(data: nil, dtype: dtype, shape: [1, 9, 9, 9, 8])))
            #expect(!foldingMax.scansD && !foldingMax.scansH && !foldingMax.pairsW && !foldingMax.doublesW, "\(dtype)")
        }
        let k5 = PoolDescriptor(kind: .average, kernelSize: [5, 5, 5], stride: [1, 1, 1], padding: [2, 2, 2])
        let sums = try #require(try PoolEngine(threads: 2).kernelPlan(k5, input: input))
        #expect(!sums.scansD && !sums.scansH && !sums.pairsW)
        // Sums pair along W from 6 columns: AvgPool2d k7 on 8 channels.
        let k7Rows = PoolDescriptor(kind: .average, kernelSize: [7, 7], stride: [1, 1], padding: [3, 3])
        let k7Plan = try #require(try PoolEngine(threads: 2).kernelPlan(k7Rows, input: TensorView(data: nil, dtype: .float32, shape: [1, 9, 9, 8])))
        #expect(k7Plan.pairsW && !k7Plan.doublesW)
        // Not in 1-d, where sums add left to right as MLX's do (bit-identical for float32).
        let k7Line = PoolDescriptor(kind: .average, kernelSize: [7], stride: [1], padding: [3])
        let linePlan = try #require(try PoolEngine(threads: 2).kernelPlan(k7Line, input: TensorView(data: nil, dtype: .float32, shape: [1, 99, 8])))
        #expect(!linePlan.pairsW)
    }

    /// W windows of every size from 2 to past the pairs' 12 columns (sums: pairs, then folds; max:
    /// doubling), over rows from shorter than the window to a few windows long, centred, unpadded
    /// and padded wider than the window, at row strides 1 and 2 (width then height first), on fused
    /// rows of 8, 9 and 16 channels (the tiny budgets cut them along W and C) and on rows whose
    /// positions are 11 elements apart (a view of the first 8 channels: not fused).
    @Test(arguments: [DType.float32, .bfloat16, .int16, .float64, .int64], PoolKind.allCases)
    func everyKernelAlongW(dtype: DType, kind: PoolKind) throws {
        var rng = SplitMix64(seed: 0xA1_0000 ^ UInt64(dtype.code) ^ (kind == .max ? 1 : 0))
        for k in 2...14 {
            for (index, channels) in [8, 9, 16].enumerated() {
                let padding = [k / 2, 0, k + 1][(k + index) % 3]
                let width = [Swift.max(1, k - 1 - 2 * padding), k + 2, 3 * k + 1][(k + 2 * index) % 3]
                let strideH = 1 + (k + index) % 2
                let desc = PoolDescriptor(kind: kind, kernelSize: [3, k], stride: [strideH, 1], padding: [1, padding])
                let shape = [2, 5, width, channels]
                guard let out = try? desc.outputShape(inputShape: shape), !out.contains(0) else { continue }
                try check(desc, dtype, shape: shape, storage: randomInput(dtype, shape: shape, seed: rng.next()))
            }
            // Not fused: 8 channels of positions 11 elements apart.
            let desc = PoolDescriptor(kind: kind, kernelSize: [2, k], stride: [1, 1], padding: [1, k / 2])
            let shape = [1, 4, 2 * k + 3, 8], storageShape = [1, 4, 2 * k + 3, 11]
            let storage = randomInput(dtype, shape: storageShape, seed: rng.next())
            let strides = TensorView.contiguousStrides(storageShape)
            let expected = try #require(referencePool(desc, storage: storage, offset: 0, shape: shape, strides: strides))
            let scanned = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: Self.scanning)
            let mismatch = firstMismatch(desc, dtype: dtype, actual: scanned.output, expected: expected.values)
            #expect(mismatch == nil, "k\(k) \(dtype) \(kind) strided: \(mismatch ?? "")")
            let dense = randomInput(dtype, shape: shape, seed: 0)
            for i in 0..<(shape.reduce(1, *)) {
                let position = i / 8, c = i % 8
                dense[i] = storage[position * 11 + c]
            }
            let fused = try runEngine(desc, storage: dense, offset: 0, shape: shape, strides: TensorView.contiguousStrides(shape),
                                      engine: Self.scanning)
            #expect(memcmp(fused.output.raw, scanned.output.raw, Self.bytes(fused)) == 0, "k\(k) \(dtype) \(kind): strided differs from dense")
        }
    }

    /// Sums along W as pairs over rows longer than one part (`KernelLimits.pairedWPart`
    /// accumulators; `TilePass.pairAlongW` pairs and folds a part at a time): every kernel the
    /// pairs serve, even and odd, with parts that do and do not divide the row, one part of a
    /// single position (channels past the part) and padding at both ends, against the reference
    /// and bit for bit against tiny tiles, whose rows fit one part.
    @Test(arguments: [DType.float32, .float16, .int16, .uint8])
    func pairsAlongWInParts(dtype: DType) throws {
        var rng = SplitMix64(seed: 0xFA_17 ^ UInt64(dtype.code))
        // `KernelLimits.pairedWPart` accumulators a part, kernels to `pairedWTaps`.
        let part = 1024
        for k in 2...12 {
            for channels in [8, 9, 13, 64, part + 3] {
                // A few parts' positions (one position a part where channels pass it).
                let parts = channels > part ? 3 : 2 + Int(rng.next() % 2)
                let width = Swift.max(1, parts * part / channels) + Int(rng.next() % UInt64(k + 5))
                let padding = Int(rng.next() % UInt64(k / 2 + 1))
                let desc = PoolDescriptor(kind: .average, kernelSize: [2, k], stride: [1, 1], padding: [1, padding])
                let shape = [1, 2, width, channels]
                guard let out = try? desc.outputShape(inputShape: shape), !out.contains(0) else { continue }
                let plan = try #require(try Self.scanning.kernelPlan(desc, input: TensorView(data: nil, dtype: dtype, shape: shape)))
                #expect(plan.pairsW, "\(desc) \(dtype) \(shape)")
                #expect(out[2] * channels > part, "\(desc) \(shape): one part")
                try check(desc, dtype, shape: shape, storage: randomInput(dtype, shape: shape, seed: rng.next()))
            }
        }
    }

    /// Blocks along H (height first, `KernelPlan.blocksH`) at every row stride from 3 to half
    /// the kernel, kernels a multiple of the stride, and pairs along H (`KernelPlan.pairsH`)
    /// for the others at strides 2 to 4 (past 4 they fold): unpadded, centred and padded wider
    /// than the kernel (blocks wholly in padding), over columns from shorter than the kernel to
    /// a few strides past it (windows clipped at both ends, pairs only where both windows are
    /// whole), with 1 and 3 channels and, along D, one plane and a window of 2. Tiny tiles
    /// start the blocks at every output row and leave no pairs (`check`: the same bits, so a
    /// float sum's window has the pair's bits folded alone), and the folds have neither (the
    /// same bits for maxima and integer sums).
    @Test(arguments: [DType.float32, .bfloat16, .int8, .uint8, .int64, .float64], PoolKind.allCases)
    func blocksAlongHAtEveryRowStride(dtype: DType, kind: PoolKind) throws {
        var rng = SplitMix64(seed: 0xB10C ^ UInt64(dtype.code) << 8 ^ (kind == .max ? 1 : 0))
        for k in 4...13 {
            for stride in 2...(k / 2) {
                let padding = [0, k / 2, k + 1][Int(rng.next() % 3)]
                let rows = Int.random(in: Swift.max(1, k - 2)...(k + 3 * stride), using: &rng)
                let planes = Bool.random(using: &rng)
                let desc = PoolDescriptor(kind: kind, kernelSize: (planes ? [2] : []) + [k, 3], stride: (planes ? [1] : []) + [stride, 1],
                                          padding: (planes ? [1] : []) + [padding, 1])
                let shape = [2] + (planes ? [3] : []) + [rows, 5, Bool.random(using: &rng) ? 1 : 3]
                guard let outputShape = try? desc.outputShape(inputShape: shape), !outputShape.contains(0) else { continue }
                let plan = try #require(try Self.scanning.kernelPlan(desc, input: TensorView(data: nil, dtype: dtype, shape: shape)))
                let blocks = stride >= 3 && k % stride == 0
                #expect(plan.strategy == .heightFirst && plan.blocksH == blocks, "\(desc) \(shape)")
                #expect(plan.pairsH == (!blocks && stride <= 4), "\(desc) \(dtype) \(shape)")
                try check(desc, dtype, shape: shape, storage: randomInput(dtype, shape: shape, seed: rng.next()))
            }
        }
        // By default as the scans (from 6 rows for most): k9 s3 blocks; k5 s3 (less than two
        // strides) and k10 s4 (a part of a block) fold.
        let input = TensorView(data: nil, dtype: dtype, shape: [1, 9, 20, 20, 1])
        let k9 = PoolDescriptor(kind: kind, kernelSize: [3, 9, 3], stride: [1, 3, 3], padding: [1, 4, 1])
        #expect(try PoolEngine(threads: 1).kernelPlan(k9, input: input)?.blocksH == true)
        let k5 = PoolDescriptor(kind: kind, kernelSize: [3, 5, 3], stride: [1, 3, 3], padding: [1, 2, 1])
        #expect(try PoolEngine(threads: 1).kernelPlan(k5, input: input)?.blocksH == false)
        let k10 = PoolDescriptor(kind: kind, kernelSize: [3, 10, 3], stride: [1, 4, 3], padding: [1, 5, 1])
        #expect(try PoolEngine(threads: 1).kernelPlan(k10, input: input)?.blocksH == false)
        #expect(try Self.folding.kernelPlan(k9, input: input)?.blocksH == false)
        // k10 s4 pairs, k5 s3 (below the scans' threshold) does not.
        #expect(try PoolEngine(threads: 1).kernelPlan(k10, input: input)?.pairsH == true)
        #expect(try PoolEngine(threads: 1).kernelPlan(k5, input: input)?.pairsH == false)
        #expect(try PoolEngine(threads: 1).kernelPlan(k9, input: input)?.pairsH == false)
        #expect(try Self.folding.kernelPlan(k10, input: input)?.pairsH == false)
    }

    /// Height first over rows of a few kilobytes, past `HeightRows.fetchedPartBytes`: blocks,
    /// pairs, lone windows and windows with gaps between them fold each row in parts, fetching
    /// the rows the next output row adds after each part (2-d poolings, where no plane is
    /// fetched ahead). The parts must not change a bit: against the reference, tiny tiles
    /// (rows cut along W, one part each) and the folds (neither blocks nor pairs).
    @Test(arguments: [DType.float32, .bfloat16, .uint8, .int32], PoolKind.allCases)
    func heightFirstFoldsLongRowsInParts(dtype: DType, kind: PoolKind) throws {
        var rng = SplitMix64(seed: 0xFE7C ^ UInt64(dtype.code) << 8 ^ (kind == .max ? 1 : 0))
        for (k, stride) in [(6, 3), (5, 2), (9, 2), (3, 2), (2, 3)] {
            let padding = Int(rng.next() % UInt64(k / 2 + 1)), channels = [1, 3, 5][Int(rng.next() % 3)]
            let shape = [1, 4 * stride + k, 4000 / channels + Int(rng.next() % 50), channels]
            let desc = PoolDescriptor(kind: kind, kernelSize: [k, 3], stride: [stride, 1], padding: [padding, 1])
            let plan = try #require(try Self.scanning.kernelPlan(desc, input: TensorView(data: nil, dtype: dtype, shape: shape)))
            #expect(plan.strategy == .heightFirst && plan.blocksH == (k == 6) && plan.pairsH == (k == 5 || k == 9), "\(desc) \(shape)")
            try check(desc, dtype, shape: shape, storage: randomInput(dtype, shape: shape, seed: rng.next()))
        }
    }

    /// Height first at W strides whose rows are reduced at every position (`WidthPlan`:
    /// stride x channels at most 16) keeps the output's positions alone in the ring
    /// (`KernelPlan.compactsRing`): 2-d and 3-d, padding, strides above the kernel, tiny tiles
    /// cut along W and C on 3 threads, against the reference and the folds (`check`). Maxima of
    /// one plane kept as they are (float32, integers) do not compact.
    @Test(arguments: [DType.float32, .bfloat16, .float16, .int8, .int16, .int64], PoolKind.allCases)
    func compactedRingsKeepTheOutputsPositions(dtype: DType, kind: PoolKind) throws {
        var rng = SplitMix64(seed: 0xC0_4AC7 ^ UInt64(dtype.code) << 8 ^ (kind == .max ? 1 : 0))
        var compacted = 0, kept = 0
        for _ in 0..<40 {
            let planes = Bool.random(using: &rng)
            let kw = Int.random(in: 2...7, using: &rng), sw = Int.random(in: 2...4, using: &rng)
            let kh = Int.random(in: 2...6, using: &rng), sh = Int.random(in: 2...3, using: &rng)
            let kd = Int.random(in: 2...3, using: &rng)
            let kernel = (planes ? [kd] : []) + [kh, kw], stride = (planes ? [1] : []) + [sh, sw]
            let padding = kernel.map { Int.random(in: 0...($0 / 2), using: &rng) }
            let channels = Int.random(in: 1...(16 / sw), using: &rng)
            let shape = [Int.random(in: 1...2, using: &rng)] + (planes ? [Int.random(in: 2...5, using: &rng)] : [])
                + [Int.random(in: kh...(kh + 3 * sh), using: &rng), Int.random(in: kw...(kw + 5 * sw), using: &rng), channels]
            let desc = PoolDescriptor(kind: kind, kernelSize: kernel, stride: stride, padding: padding)
            guard let outputShape = try? desc.outputShape(inputShape: shape), !outputShape.contains(0) else { continue }
            let plan = try #require(try Self.scanning.kernelPlan(desc, input: TensorView(data: nil, dtype: dtype, shape: shape)))
            // Depth first or whole windows take some of these geometries.
            guard plan.strategy == .heightFirst else { continue }
            let keepsMaxima = kind == .max && dtype != .bfloat16 && dtype != .float16
            #expect(plan.compactsRing == (planes || !keepsMaxima), "\(desc) \(dtype) \(shape)")
            if plan.compactsRing { compacted += 1 } else { kept += 1 }
            try check(desc, dtype, shape: shape, storage: randomInput(dtype, shape: shape, seed: rng.next()))
        }
        #expect(compacted >= 8, "\(compacted) compacted rings")
        if kind == .max && dtype != .bfloat16 && dtype != .float16 { #expect(kept >= 4, "\(kept) kept rings") }
    }

    /// Compacted rows of sums whose columns are 4 or 8 bytes of accumulators fold W from the
    /// stride's phases (`KernelPlan.foldsPhasesW`) at strides 2 to 8 (3 through the AVX2 split of
    /// 4-byte units, 4 through its step of 4; 8-byte units not at 3); not past 8, not 3 channels
    /// (12 bytes), nor 2 of float64 (16), nor 1 of int8 (2: 16-bit sums), nor 4 (8, but tiles may
    /// hold 3), nor maxima. Each against the reference, its tiny tilings and the folds (`check`),
    /// widths leaving 0 to step - 1 columns past the whole groups and windows from shorter than the
    /// stride to 2.5 strides.
    @Test func rowsOfOneOrTwoChannelsFoldTheirPhases() throws {
        let cases: [(PoolKind, DType, kernel: [Int], stride: [Int], channels: Int, folds: Bool)] = [
            (.average, .float32, [2, 3, 4], [1, 2, 2], 1, true),
            (.average, .float32, [2, 4, 7], [1, 2, 3], 1, true),
            (.average, .float32, [3, 3, 3], [1, 2, 3], 1, true),
            (.average, .bfloat16, [2, 4, 8], [1, 3, 4], 2, true),
            (.average, .float16, [2, 3, 5], [1, 2, 7], 1, true),
            (.average, .float64, [2, 3, 6], [1, 2, 4], 1, true),
            (.average, .float32, [2, 3, 20], [1, 2, 8], 2, true),
            (.average, .int32, [2, 3, 4], [1, 2, 2], 1, true),
            (.average, .uint8, [2, 3, 6], [1, 2, 4], 2, true),
            (.average, .int8, [2, 3, 4], [1, 2, 4], 1, false),
            (.average, .int8, [2, 3, 4], [1, 2, 2], 4, false),
            (.average, .float32, [2, 3, 10], [1, 2, 9], 1, false),
            (.average, .float32, [2, 3, 4], [1, 2, 2], 3, false),
            (.average, .float64, [2, 3, 4], [1, 2, 2], 2, false),
            (.average, .float64, [2, 3, 5], [1, 2, 3], 1, false),
            (.average, .float32, [2, 3, 5], [1, 2, 3], 2, false),
            (.max, .float32, [2, 3, 5], [1, 2, 2], 1, false),
            (.max, .bfloat16, [2, 3, 3], [1, 2, 2], 2, false),
        ]
        var rng = SplitMix64(seed: 0x9_4A5E)
        for (kind, dtype, kernel, stride, channels, folds) in cases {
            let padding = kernel.map { $0 / 2 }
            let desc = PoolDescriptor(kind: kind, kernelSize: kernel, stride: stride, padding: padding)
            for extra in 0..<stride.last! {
                let w = kernel.last! + 4 * stride.last! + extra
                let shape = [1] + kernel.dropLast().map { $0 + 3 } + [w, channels]
                let plan = try #require(try Self.scanning.kernelPlan(desc, input: TensorView(data: nil, dtype: dtype, shape: shape)))
                #expect(plan.strategy == .heightFirst && plan.foldsPhasesW == folds, "\(desc) \(dtype) \(shape)")
                // W folds from the phases, not in pairs (and no row is laid out for them).
                #expect(!(plan.foldsPhasesW && plan.pairsW), "\(desc) \(dtype) \(shape)")
                try check(desc, dtype, shape: shape, storage: randomInput(dtype, shape: shape, seed: rng.next()))
            }
        }
    }

    @Test(arguments: DType.allCases)
    func randomWindowsMatchTheReferenceAndTheFolds(dtype: DType) throws {
        var rng = SplitMix64(seed: 0x5CA_0000 ^ UInt64(dtype.code))
        for _ in 0..<25 {
            let kernel = (0..<3).map { _ in Int.random(in: 2...11, using: &rng) }
            let stride = kernel.map { Int.random(in: 1...Swift.max(1, $0 / 2), using: &rng) }
            let padding = kernel.map { k in Bool.random(using: &rng) ? k / 2 : Int.random(in: 0...(k + 2), using: &rng) }
            // Axes from shorter than the kernel to a few blocks long.
            let shape = [Int.random(in: 1...2, using: &rng)] + kernel.enumerated().map { axis, k in
                axis == 2 ? Int.random(in: 1...12, using: &rng) : Int.random(in: 1...(3 * k + 2), using: &rng)
            } + [Int.random(in: 1...3, using: &rng)]
            let kind: PoolKind = Bool.random(using: &rng) ? .average : .max
            let desc = PoolDescriptor(kind: kind, kernelSize: kernel, stride: stride, padding: padding)
            guard let outputShape = try? desc.outputShape(inputShape: shape), !outputShape.contains(0) else { continue }
            try check(desc, dtype, shape: shape, storage: randomInput(dtype, shape: shape, seed: rng.next()))
        }
    }

    /// 2-d poolings whose H windows scan run with their rows as planes (`KernelPlan.forCall`):
    /// against the float64 reference, other tilings and thread counts (`check`), and the H
    /// scans they replace (bit for bit, float sums too), at the edges: windows longer
    /// than the column, padding wider than the kernel, W strides up to half the kernel, ceil_mode
    /// and count_include_pad=False (divisors redone), one to nine channels, strided storage.
    @Test(arguments: [DType.float32, .bfloat16, .float16, .int16, .float64, .uint8])
    func twoDimensionalRowsRunAsPlanes(dtype: DType) throws {
        var rng = SplitMix64(seed: 0x20_0000 ^ UInt64(dtype.code))
        let rowScans = Self.scanningRows
        var relabelled = 0
        for _ in 0..<40 {
            let kernel = [Int.random(in: 2...11, using: &rng), Int.random(in: 1...9, using: &rng)]
            // Rows at stride 1 half the time: strided rows keep the H scans (checked all the same).
            let stride = [Bool.random(using: &rng) ? 1 : Int.random(in: 1...Swift.max(1, kernel[0] / 2), using: &rng),
                          Int.random(in: 1...Swift.max(1, kernel[1] / 2), using: &rng)]
            let padding = kernel.map { k in Bool.random(using: &rng) ? k / 2 : Int.random(in: 0...(k + 2), using: &rng) }
            let shape = [Int.random(in: 1...2, using: &rng), Int.random(in: 1...(3 * kernel[0] + 2), using: &rng),
                         Int.random(in: 1...12, using: &rng), [1, 3, 8, 9][Int.random(in: 0...3, using: &rng)]]
            let kind: PoolKind = Bool.random(using: &rng) ? .average : .max
            let desc = PoolDescriptor(kind: kind, kernelSize: kernel, stride: stride, padding: padding,
                                      ceilMode: Bool.random(using: &rng), countIncludePad: Bool.random(using: &rng))
            guard let outputShape = try? desc.outputShape(inputShape: shape), !outputShape.contains(0) else { continue }
            let input = TensorView(data: nil, dtype: dtype, shape: shape)
            let plan = try #require(try Self.scanning.kernelPlan(desc, input: input))
            let scansRows = try #require(try rowScans.kernelPlan(desc, input: input))
            #expect(!scansRows.rowsAsPlanes)
            if plan.rowsAsPlanes {
                relabelled += 1
                #expect(plan.scansD && !plan.scansH && scansRows.scansH, "\(desc) \(shape)")
            }
            let storage = randomInput(dtype, shape: shape, seed: rng.next())
            try check(desc, dtype, shape: shape, storage: storage)
            // Bit for bit, float sums too: the choice depends on the plane's size, and a dask
            // task's block may choose otherwise than the whole array.
            let strides = TensorView.contiguousStrides(shape)
            let planes = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: Self.scanning)
            let rows = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: rowScans)
            #expect(memcmp(planes.output.raw, rows.output.raw, Self.bytes(rows)) == 0, "\(desc) \(dtype) \(shape)")
        }
        // Many of them: rows at stride 1 whose W does not stride over few channels (height first).
        #expect(relabelled >= 10, "\(relabelled) of 40")
        try pairedRowsRunAsPlanes(dtype: dtype)
        // Strided storage (every other channel of 16): float sums are packed first, the rest
        // read in place, with the same results as the contiguous values.
        let desc = PoolDescriptor(kind: .average, kernelSize: [7, 5], stride: [1, 1], padding: [3, 2])
        let shape = [2, 13, 11, 8], storageShape = [2, 13, 11, 16]
        let storage = randomInput(dtype, shape: storageShape, seed: rng.next())
        var strides = TensorView.contiguousStrides(storageShape)
        strides[3] = 2
        let strided = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: Self.scanning)
        let expected = try #require(referencePool(desc, storage: storage, offset: 0, shape: shape, strides: strides))
        let mismatch = firstMismatch(desc, dtype: dtype, actual: strided.output, expected: expected.values)
        #expect(mismatch == nil, "strided \(dtype): \(mismatch ?? "")")
    }

    /// Windows of every size up to past the axis's length along H and D, at stride 1 and
    /// centred (the common case), with many channels (wide rows) and one.
    @Test(arguments: [DType.float32, .bfloat16, .int16, .float64], PoolKind.allCases)
    func everyKernelAlongHAndD(dtype: DType, kind: PoolKind) throws {
        for k in 2...13 {
            for channels in [1, 9] {
                let desc = PoolDescriptor(kind: kind, kernelSize: [k, k, 2], stride: [1, 1, 1], padding: [k / 2, k / 2, 1])
                let shape = [1, 11, 12, 3, channels]
                try check(desc, dtype, shape: shape, storage: randomInput(dtype, shape: shape, seed: UInt64(k * 100 + channels)))
            }
        }
    }

    /// Max keeps the first of equal values and the last NaN, in (d, h, w) order (block scans
    /// along H and D, doubling along W): NaN payloads
    /// and signed zeros come out bit for bit as a left fold over the window gives them (the
    /// folds' pairs merge in another order, so only their values are compared). 16-bit floats
    /// compare as integer keys, so their folds and scans agree bit for bit (`check`).
    @Test(arguments: [DType.float32, .float64, .float16, .bfloat16])
    func maxKeepsNaNPayloadsAndSignedZeros(dtype: DType) throws {
        // 3 channels: rows reduce along W as one run (float16 and bfloat16 rows are widened
        // once instead, `KernelPlan.widenOnce`); 8: W doubles.
        for shape in [[2, 9, 10, 13, 3], [1, 6, 7, 17, 8]] {
            try maxKeepsNaNPayloadsAndSignedZeros(dtype: dtype, shape: shape)
        }
    }

    /// 2-d poolings whose H windows of 2 to 5 rows fold in pairs (no scans) run with their rows
    /// as planes over 8 channels or more (`KernelPlan.forCall`), except averages of 8-bit
    /// integers: against the float64 reference, and bit for bit against the pairs they replace
    /// (float sums too, and maxima of signed zeros and NaNs with payloads, whose order shows)
    /// under tiny tiles on 3 threads, at the edges: windows longer than the column, padding
    /// wider than the kernel, odd and even first rows, ceil_mode and count_include_pad=False.
    func pairedRowsRunAsPlanes(dtype: DType) throws {
        var rng = SplitMix64(seed: 0x21_0000 ^ UInt64(dtype.code))
        let asRows = [PoolEngine(threads: 2, rowsAsPlanesAbove: 0)]
            + [64, 700, 4096].map { PoolEngine(threads: 3, tileBudgetBytes: $0, rowsAsPlanesAbove: 0, serialWorkBelow: 0) }
        let inPlane = PoolEngine(threads: 2, rowsAsPlanesAbove: .max)
        var relabelled = 0
        for trial in 0..<40 {
            let kernel = [Int.random(in: 2...5, using: &rng), Int.random(in: 1...7, using: &rng)]
            let stride = [1, Int.random(in: 1...Swift.max(1, kernel[1]), using: &rng)]
            let padding = kernel.map { k in Bool.random(using: &rng) ? k / 2 : Int.random(in: 0...(k + 2), using: &rng) }
            let shape = [Int.random(in: 1...2, using: &rng), Int.random(in: 1...(3 * kernel[0] + 4), using: &rng),
                         Int.random(in: 1...12, using: &rng), [8, 9, 16, 3][trial % 4]]
            let kind: PoolKind = trial % 3 == 2 ? .average : .max
            let desc = PoolDescriptor(kind: kind, kernelSize: kernel, stride: stride, padding: padding,
                                      ceilMode: Bool.random(using: &rng), countIncludePad: Bool.random(using: &rng))
            guard let outputShape = try? desc.outputShape(inputShape: shape), !outputShape.contains(0) else { continue }
            let input = TensorView(data: nil, dtype: dtype, shape: shape)
            let plan = try #require(try asRows[0].kernelPlan(desc, input: input))
            let planePlan = try #require(try inPlane.kernelPlan(desc, input: input))
            #expect(!planePlan.rowsAsPlanes && planePlan.strategy == .widthFirst)
            // (Float maxima scan windows of 4 rows or more: those run as rows whatever the channels.)
            let expectsRows = planePlan.scansH || shape[3] >= 8 && !(kind == .average && dtype.size == 1)
            #expect(plan.rowsAsPlanes == expectsRows, "\(desc) \(dtype) \(shape)")
            if plan.rowsAsPlanes { relabelled += 1 }
            let storage = dtype.isFloatingPoint && kind == .max ? Self.signedZerosAndNaNs(dtype, count: shape.reduce(1, *), seed: rng.next())
                : randomInput(dtype, shape: shape, seed: rng.next())
            let strides = TensorView.contiguousStrides(shape)
            let folded = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: inPlane)
            if kind == .average || !dtype.isFloatingPoint {
                let expected = try #require(referencePool(desc, storage: storage, offset: 0, shape: shape, strides: strides))
                let mismatch = firstMismatch(desc, dtype: dtype, actual: folded.output, expected: expected.values)
                #expect(mismatch == nil, "\(desc) \(dtype) \(shape): \(mismatch ?? "")")
            }
            for engine in asRows {
                let run = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: engine)
                #expect(memcmp(run.output.raw, folded.output.raw, Self.bytes(folded)) == 0,
                        "\(desc) \(dtype) \(shape) budget \(engine.settings.tileBudgetBytes)")
            }
        }
        #expect(relabelled >= 10, "\(relabelled) of 40")
    }

    /// Float values with many ties, signed zeros and NaNs whose payloads name their position.
    static func signedZerosAndNaNs(_ dtype: DType, count: Int, seed: UInt64) -> Buffer {
        let storage = Buffer(dtype, count: count)
        var rng = SplitMix64(seed: seed)
        for i in 0..<count {
            switch rng.next() % 8 {
            case 0: storage[i] = 0
            case 1: storage[i] = -0.0
            case 2: storage[i] = -.infinity
            case 3:
                // A NaN with a payload that names its position, of either sign.
                let payload = UInt64(i % 61 + 1), negative = rng.next() % 2 == 0
                switch dtype {
                case .float32: storage.raw.storeBytes(of: (negative ? 0xFFC0_0000 : 0x7FC0_0000) | UInt32(payload), toByteOffset: i * 4, as: UInt32.self)
                case .float64: storage.raw.storeBytes(of: (negative ? 0xFFF8_0000_0000_0000 : 0x7FF8_0000_0000_0000) | payload, toByteOffset: i * 8, as: UInt64.self)
                case .float16: storage.raw.storeBytes(of: (negative ? 0xFE00 : 0x7E00) | UInt16(payload), toByteOffset: i * 2, as: UInt16.self)
                default: storage.raw.storeBytes(of: (negative ? 0xFFC0 : 0x7FC0) | UInt16(payload), toByteOffset: i * 2, as: UInt16.self)
                }
            default: storage[i] = Double(Int(rng.next() % 5)) - 4  // many ties, all <= 0
            }
        }
        return storage
    }

    func maxKeepsNaNPayloadsAndSignedZeros(dtype: DType, shape: [Int]) throws {
        let storage = Self.signedZerosAndNaNs(dtype, count: shape.reduce(1, *), seed: 77)
        let strides = TensorView.contiguousStrides(shape)
        for k in [2, 3, 5, 6, 8, 11, 13] {
            // Rows at stride 1: W is reduced before H (a row stride would reduce H first, in
            // another order of positions than the reference's).
            let desc = PoolDescriptor(kind: .max, kernelSize: [k, k, k], stride: [Swift.max(1, k / 3), 1, 1], padding: [k / 2, k - 1, k / 2])
            switch dtype {
            case .float32, .float64:
                try check(desc, dtype, shape: shape, storage: storage, againstReference: false, comparesFolds: false)
                let scanned = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: Self.scanning)
                let expected = dtype == .float32 ? leftFoldMax(Float.self, desc, storage, shape).map { UInt64($0.bitPattern) }
                    : leftFoldMax(Double.self, desc, storage, shape).map { $0.bitPattern }
                let actual = (0..<scanned.output.count).map {
                    dtype == .float32 ? UInt64(scanned.output.raw.load(fromByteOffset: $0 * 4, as: UInt32.self))
                        : scanned.output.raw.load(fromByteOffset: $0 * 8, as: UInt64.self)
                }
                let bad = (0..<actual.count).filter { actual[$0] != expected[$0] }
                #expect(bad.isEmpty, "k\(k) \(dtype): \(bad.count) of \(actual.count) differ, first \(bad.first ?? -1) \(String(actual[bad.first ?? 0], radix: 16)) \(String(expected[bad.first ?? 0], radix: 16))")
                let folded = try runEngine(desc, storage: storage, offset: 0, shape: shape, strides: strides, engine: Self.folding)
                #expect((0..<folded.output.count).allSatisfy { i in
                    let a = folded.output[i], b = scanned.output[i]
                    return a == b || (a.isNaN && b.isNaN)
                }, "k\(k) \(dtype)")
            default:
                try check(desc, dtype, shape: shape, storage: storage, againstReference: false)
            }
        }
    }

    /// MLX's max over each window of a contiguous (N, D, H, W, C) input, folded left to right
    /// in (d, h, w) order from the first in-bounds position, on the raw values: the order of
    /// width first with block scans along H and D.
    func leftFoldMax<F: BinaryFloatingPoint>(_: F.Type, _ desc: PoolDescriptor, _ storage: Buffer, _ shape: [Int]) -> [F] {
        let out = try! desc.outputShape(inputShape: shape)
        let x = storage.raw.assumingMemoryBound(to: F.self)
        var result: [F] = []
        for n in 0..<out[0] { for od in 0..<out[1] { for oh in 0..<out[2] { for ow in 0..<out[3] { for c in 0..<out[4] {
            var best: F? = nil
            for d in (od * desc.stride[0] - desc.padding[0])..<(od * desc.stride[0] - desc.padding[0] + desc.kernelSize[0]) where 0..<shape[1] ~= d {
                for h in (oh * desc.stride[1] - desc.padding[1])..<(oh * desc.stride[1] - desc.padding[1] + desc.kernelSize[1]) where 0..<shape[2] ~= h {
                    for w in (ow * desc.stride[2] - desc.padding[2])..<(ow * desc.stride[2] - desc.padding[2] + desc.kernelSize[2]) where 0..<shape[3] ~= w {
                        let v = x[(((n * shape[1] + d) * shape[2] + h) * shape[3] + w) * shape[4] + c]
                        best = best.map { (v > $0 || v.isNaN) ? v : $0 } ?? v
                    }
                }
            }
            result.append(best ?? -F.infinity)
        } } } } }
        return result
    }

    /// Rows so long that few fit a tile beside the kh rows it holds (64 channels, 300 wide, k7)
    /// are cut along W, so that each tile reduces fewer rows twice: the tiles are narrower than
    /// the row and taller than without the cut, and the results exact (folds and scans alike).
    /// (Two planes: a 2-d pooling whose H windows scan runs its rows as planes, uncut.)
    @Test(arguments: PoolKind.allCases)
    func longRowsOfManyChannelsAreCutAlongW(kind: PoolKind) throws {
        let shape = [1, 2, 40, 300, 64]
        let desc = PoolDescriptor(kind: kind, kernelSize: [1, 7, 7], stride: [1, 1, 1], padding: [0, 3, 3])
        let view = TensorView(data: nil, dtype: .float32, shape: shape)
        let geometry = try PoolGeometry(desc, input: view, outputShape: try desc.outputShape(inputShape: shape))
        let cut = try tileShape(geometry, kind, .float32, KernelSettings(tileBudgetBytes: 512 << 10))
        // Without the cut: tiles of the 186 columns that fit 512 KB and 1 output row each (8
        // input rows reduced along W for it).
        #expect(cut.columns < 186 && cut.channels == 64 && cut.rows >= 4, "\(cut)")
        // Rows that redo little keep whole-row tiles: k3 on 724 columns of 8 channels, 6 output
        // rows per tile (1.33 input rows each), would be cut to 91 columns for 1.06. (Planes of
        // a 3-d pooling: a 2-d one's rows, whose H windows pair, run as planes.)
        let short = PoolDescriptor(kind: kind, kernelSize: [1, 3, 3], stride: [1, 1, 1], padding: [0, 1, 1])
        let wide = [1, 4, 724, 724, 8]
        let wideGeometry = try PoolGeometry(short, input: TensorView(data: nil, dtype: .float32, shape: wide),
                                            outputShape: try short.outputShape(inputShape: wide))
        let whole = try tileShape(wideGeometry, kind, .float32, KernelSettings(tileBudgetBytes: 512 << 10))
        #expect(whole.columns == 724 && whole.rows >= 5, "\(whole)")
        // One plane: its rows run as planes, tiles of one row each, cut only where the budget
        // needs it (186 columns for 7 planes and the prefix beside them).
        let flat = PoolDescriptor(kind: kind, kernelSize: [7, 7], stride: [1, 1], padding: [3, 3])
        let flatShape = [1, 40, 300, 64]
        let flatGeometry = try PoolGeometry(flat, input: TensorView(data: nil, dtype: .float32, shape: flatShape),
                                            outputShape: try flat.outputShape(inputShape: flatShape))
        let planes = try tileShape(flatGeometry, kind, .float32, KernelSettings(tileBudgetBytes: 512 << 10))
        #expect(planes.rows == 1 && planes.columns == 186, "\(planes)")
        let input = randomInput(.float32, shape: shape, seed: 300)
        try check(desc, .float32, shape: shape, storage: input)
        let strides = TensorView.contiguousStrides(shape)
        let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
        for engine in [PoolEngine(threads: 2), Self.folding] {
            let run = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: engine)
            #expect(firstMismatch(desc, dtype: .float32, actual: run.output, expected: expected.values) == nil)
        }
    }
}
