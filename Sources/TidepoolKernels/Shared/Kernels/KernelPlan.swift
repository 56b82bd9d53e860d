import CTidepoolVector
import TidepoolTypes

/// Which code pools a geometry, decided in one place: `KernelPlan.init` takes the geometry,
/// the element type (its `WindowReduction`) and what the CPU offers, and returns the strategy
/// and its options. Nothing else decides a path; the strategies only follow the plan (and
/// cut their tiles' edges, which never changes the order of any output's fold).
///
/// The decision depends on the geometry and the type alone, never on the tiling, the thread
/// count or the scratch budget, so every engine folds an output in the same order and results
/// are bit-identical for any number of threads. Measurements behind each rule are in
/// docs/performance.md ("Why each strategy is chosen where it is").
///
/// Example: AvgPool3d k5 s1 p2 on one channel of bfloat16 runs `.depthFirst` (a 16-bit input,
/// stride 1, 2 to 5 planes, few channels, rows short enough for the budget) with the AVX-512
/// bfloat16 finish where the CPU has it; the same on float32 runs `.widthFirst` (depth first
/// does not pay for inputs that need no widening) with its rows reduced as one run.

/// The ways a tile is folded. Each has its own file in Kernels/.
public enum Strategy: String, CaseIterable, Sendable {
    /// Each input plane is reduced along W, then H, into a ring of `kernelD` planes; each output
    /// plane folds its ring planes along D and finishes (WidthFirst.swift). The default.
    case widthFirst
    /// As width first, but each plane is reduced along H before W (HeightFirst.swift): with a
    /// row stride above 1, W then runs over the output's rows only, fewer than the input's.
    /// For W reduced at every position, and for W at the output's positions over fewer than
    /// `KernelLimits.vectorChannels` channels, whose per-position folds are scalar or one
    /// short vector while H folds whole rows as vectors (W first took up to 7 times as long
    /// there, docs/performance.md). Many channels keep W first (not measured H first): their
    /// positions fold as full vectors, and H then runs over the output's columns only.
    case heightFirst
    /// Each output plane folds its input planes (widened) along D, then H, then W, finishing on
    /// the way; no ring of planes (DepthFirst.swift). An input is widened once per pair of output
    /// planes instead of once per W tap.
    case depthFirst
    /// Windows that do not overlap fold tap by tap straight from the input, channels innermost
    /// (WholeWindows.swift): separating the axes would save no work, only add passes. Windows
    /// of one element of float averages too, whatever the channels: no fold from the identity.
    case wholeWindows
}

/// The thresholds the plan and the strategies use, named once.
enum KernelLimits {
    /// Channels that fill a vector register's lanes well: with fewer, a fused (W, C) row is
    /// too short per position for per-position loops, and rows are handled as runs instead.
    static let vectorChannels = 8
    /// With a W stride above 1, W is reduced at every position (and the output subsampled)
    /// while the stride's span of channels is at most this many elements (so 8 channels at
    /// most, at stride 2), or the wider spans below (`WidthPlan.span`).
    static let subsampledSpan = 16
    /// The same for sums of 2- and 4-byte inputs, maxima of 2-byte inputs and maxima of
    /// 4-byte inputs over short 3-d windows (`WidthPlan.span`).
    static let subsampledSpanOfNarrowTypes = 64
    /// The same for sums of 1-byte inputs.
    static let subsampledSpanOfByteSums = 128
    /// The same for float16 and bfloat16 sums over windows that overlap by at most a stride,
    /// in 1-d only at strides up to `widerHalfFloatSpansOfRowsAlone`.
    static let subsampledSpanOfHalfFloatSums = 128
    static let widerHalfFloatSpansOfRowsAlone = 3
    /// Rows alone (1-d windows) take the wider spans only where their windows overlap, at
    /// strides up to this, over at most two strides and a column.
    static let widerSpansOfRowsAlone = 4
    /// Rows alone of up to 8 channels reduce W at every position, whatever the span, where
    /// their windows of at most this many columns overlap or touch (`WidthPlan`).
    static let subsampledWindowsOfRowsAlone = 5
    /// Rows alone of 3 to 8 channels of float16 and bfloat16 averages reduce W at the
    /// stride, whatever the span, over windows of at least this many columns (`WidthPlan`).
    static let stridedWindowsOfWidenedRowsAlone = 8
    /// Maxima of 4-byte inputs take the wider span only over 3-d windows of at most this
    /// many columns.
    static let widerSpanColumnsOfWordMaxima = 5
    /// The same for windows one row and one plane tall of 8-byte integer sums and maxima
    /// (`WidthPlan`).
    static let subsampledSpanOfWideRows = 4
    /// The same for 1-byte maxima (`WidthPlan`): one AVX2 vector of them, and two where the
    /// windows overlap by half a stride or more.
    static let subsampledSpanOfByteMaxima = 32
    static let subsampledSpanOfOverlappingByteMaxima = 64
    /// Overlapping D windows (or rows as planes) of 8-byte inputs of at least this many bytes
    /// prefetch their input (`KernelPlan.prefetchInput`). From memory, without the fetch,
    /// each plane's first pass waited on it: 64 MiB, 1 thread, MaxPool2d k3 s1 p1 of 16
    /// float64 channels took 1.45-1.6x as long, MaxPool3d k3 s1 p1 of 3 uint64 1.35-1.6x,
    /// AvgPool3d k5 s1 p2 of 2 float64 1.25x, MaxPool2d k7 s1 p1 of 2 float64 1.2x. In cache
    /// the fetches cost (up to 1.5x at 1 MiB), and at 4 and 8 MiB gains and losses were
    /// mixed; at 16 MiB, half this machine kind's L3 with the output beside it, every cell
    /// gained.
    static let prefetchedWideInputBytes = 16 << 20
    /// The same for 1- to 4-byte inputs and 64-bit integer averages. Below it the fetches of
    /// lines in cache cost: 1 thread, MaxPool2d k6 s1 p1 of 2 uint8 channels took 1.35x as
    /// long fetching at 1 MiB and 4 MiB, AvgPool3d k5 s1 p2 of 1 float32 1.1x. At 8 MiB, a
    /// judgment: five of eight cells gained (AvgPool2d k8 s1 of 12 float16 1.15x as long
    /// without, AvgPool3d k3 s1 p1 of 4 int16 1.1x), the two float32 ones lost (AvgPool3d k3 s1
    /// p1 of 8 channels 1.09x as long fetching, k5 s1 p2 of 1 1.05x), a bfloat16 one tied.
    static let prefetchedInputBytes = 8 << 20
    /// Full windows of this many rows or planes (at stride 1) fold in pairs (`foldPair`).
    static let pairedTaps = 2...5
    /// Row strides at which two H windows fold together (`KernelPlan.pairsH`): each window's
    /// own rows, two strides of them, fit the one pass that finishes the pair (`windowPair`).
    static let pairedHStride = 4
    /// Whole windows: at most two passes of taps, since a float sum's rounding error grows with
    /// the taps one fold adds; maxima and integer sums, exact in any order, up to 125 (k5 in
    /// 3-d): at 729 (k9), whose windows read 81 rows at once, MaxPool3d k9 s9 p3 of 16 uint8
    /// channels took 1.6 times as long as width first.
    static let wholeWindowTaps = 2 * sourcesPerPass
    static let wholeWindowExactTaps = 125
    /// Whole windows over 2+ rows or planes need this many bytes of a position's input
    /// channels, or `wholeWindowChannels` channels, or byte maxima of
    /// `TPVECTOR_BYTE_MAXIMA_CHANNELS` (`KernelPlan.suitsWholeWindows`).
    static let wholeWindowBytes = 128
    static let wholeWindowChannels = 64
    /// W windows of up to this many columns fold as pairs (`KernelPlan.pairsW`): their pairs,
    /// and an odd window's last column, fit one fold pass.
    static let pairedWTaps = 2 * sourcesPerPass
    /// Accumulators of pairs `TilePass.pairAlongW` adds, then folds, at a time: 2 to 8 KB,
    /// within L1 beside the row's inputs and the positions they fold into.
    static let pairedWPart = 1024
    /// Accumulators a strided row's widened chunk holds (`widenedInChunks`): a buffer on the
    /// stack, 8 to 16 KB, within L1 beside the row it is read from.
    static let widenedChunk = 2048
    /// The smallest default tile budget (`KernelSettings.tileBudget(level2CacheBytes:)`).
    static let smallestTileBudgetBytes = KernelSettings.tileBudget(level2CacheBytes: 0)
}

/// How a geometry runs: the strategy and its options. Built only by `init(_:_:...)`.
public struct KernelPlan: Sendable {
    public let strategy: Strategy
    /// How W is reduced: at the output's positions, or at every position and subsampled.
    let width: WidthPlan
    /// Rows are widened once before the W folds (`WindowReduction.widenOutweighsAPass`), not
    /// once per tap; never for subsampled rows, where it costs more than it saves, nor for
    /// maxima whose rows double along W or whose windows are one row.
    public let widenOnce: Bool
    /// Width first: a plane's dense rows reduce along W as one run (`reduceRowsAsOneRun`) when
    /// the tile holds whole rows of all channels.
    public let rowsAsOneRun: Bool
    /// Width and height first: whole output rows finish as one run; subsampled rows only where
    /// finishing costs more than a copy (then they finish in scratch and the kept positions are
    /// copied out) and the outputs fit where their accumulators were.
    public let rowsFinishAsRuns: Bool
    /// Height first with subsampled rows: each row, reduced along W at every position, keeps
    /// the output's positions alone in the ring (`reduceIntoRing`), so the D folds and the
    /// finish run over those alone, as runs.
    public let compactsRing: Bool
    /// Compacting rows of sums whose columns are 4 or 8 bytes of accumulators (one or two
    /// channels; 8 not at stride 3), at W strides 2 to 8: each row folded along H is split
    /// into the stride's phases (`splitIntoPhases`) and the output's positions alone fold
    /// their taps from them, a tap of every position one contiguous run of a phase
    /// (`foldPhasesAlongW`), instead of every position reduced (pairs, folds) and the
    /// output's gathered. Windows fold their taps left to right here, where they otherwise
    /// pair them (`pairsW`): the plan, and so the bits, depend on the geometry and the type
    /// alone.
    public let foldsPhasesW: Bool
    /// Whole-row outputs are finished in scratch and streamed to memory, bypassing the cache
    /// (and so are the runs of `rowWindows` tiles).
    public let streamOutput: Bool
    /// Windows one row and one plane tall (1-d pooling), width first: tiles share no rows, so
    /// they are cut to fit the L1 (`TilePlan`), and each tile's outputs are one run.
    public let rowWindows: Bool
    /// The next plane's input rows are prefetched while the current plane finishes.
    public let prefetchInput: Bool
    /// Each input plane after a tile's first is also prefetched while the one before is
    /// reduced (height first; width first at a D stride of 1).
    public let prefetchPlaneAhead: Bool
    /// The AVX-512 kernels (`VectorFinish`) finish the outputs, where the strategy, the type and
    /// this CPU allow.
    let vectorFinish: VectorFinish?
    /// Windows along H (rows reduced along W) and along D (the plane ring) fold by block scans
    /// (BlockScans.swift), at a cost that does not grow with the window, instead of tap by tap.
    public let scansH: Bool
    public let scansD: Bool
    /// Sums along W at every position (rows not reduced as one run), windows of
    /// `blockScanTaps` to `KernelLimits.pairedWTaps` columns: each column added to the next
    /// once, and each window folds its pairs (and an odd window's last column) in one pass
    /// (BlockScans.swift), about half the adds and loads of the tap-by-tap fold. Windows over
    /// more than one axis only. (Not for max: a float max's merge is several instructions, and
    /// doubling needs fewer of them.)
    public let pairsW: Bool
    /// Max along W at every position (rows not reduced as one run): windows of 2^j columns
    /// doubled level by level, each window the merge of two that overlap (BlockScans.swift).
    public let doublesW: Bool
    /// Height first, H windows of two or more whole row strides of 3 or more: each output row
    /// merges the blocks of `strideH` rows its window covers, each block folded once for the
    /// windows that share it, instead of folding its rows again for each (HeightFirst.swift).
    /// From the scans' threshold (`blockScanTaps`). Not at stride 2, nor where a window ends
    /// in part of a block: there a window's fewer loads came with more passes over the row
    /// (AvgPool2d k7 s2 of 6 int16 channels took 1.2x as long, k10 s4 of 2 int16 channels
    /// 1.1-1.2x; docs/performance.md).
    public let blocksH: Bool
    /// Height first, H windows at a row stride of 2 to 4 that blocks do not take: two output
    /// rows (the first at an even row) fold together, the rows their windows share once, then
    /// each window's own `strideH` rows (`HeightRows.foldPair`): k + s + 1 loads of rows for
    /// the two instead of 2k. Maxima and integer sums keep a left fold's bits (associative
    /// merges); float sums add a first window's own rows last, whether it is paired or not
    /// (`foldFirstOfPair`), so the bits never depend on the tiling. From the scans' threshold,
    /// as the blocks.
    public let pairsH: Bool
    /// A 2-d pooling runs as a 3-d one whose planes are its rows (`KernelPlan.forCall`): its H
    /// windows scan along D, where the ring streams each column of tiles from top to bottom.
    /// Set on the plan of the relabelled geometry.
    public private(set) var rowsAsPlanes = false

    public var usesVectorFinish: Bool { vectorFinish != nil }
    /// Whether outputs are taken at every `stride`-th position of rows reduced at every position.
    public var subsampledRows: Bool { width.subsampled }
    /// Whether rows are split into the W stride's phases as they are widened.
    public var splitsRowsIntoPhases: Bool { width.splitsPhases }

    /// The plan for `g` with elements reduced by `R`, under the engine's `settings` (tests
    /// change them to reach every path).
    init<R: WindowReduction>(_ g: PoolGeometry, _: R.Type, _ settings: KernelSettings = KernelSettings()) {
        let inputSize = MemoryLayout<R.Input>.stride, accumulatorSize = MemoryLayout<R.Accumulator>.stride
        let outputSize = MemoryLayout<R.Output>.stride
        width = WidthPlan(g, sums: !R.mergesOverlaps, unmergesExactly: R.unmergesExactly, inputSize: inputSize,
                          accumulatorSize: accumulatorSize,
                          splitsRows: R.splitsRowsIntoPhases(stride: g.strideW, kernel: g.kernelW, channels: g.channels) && settings.splitsRows)
        let scanTaps = Swift.max(2, settings.blockScanTaps ?? R.blockScanTaps)
        // Maxima widen once where W folds each window's taps, not where it doubles straight
        // from the row (`doubleAlongW(row:)` reads each input twice; rows of few channels
        // that would fold as one run double too once widened), nor for one-row windows
        // (1-d), which fold straight from the input. Widened once, MaxPool2d k7 p3 of 32
        // bfloat16 channels took 1.1 times as long, MaxPool1d k7 p2 of one 1.4 times and k5
        // p1 of 8 channels 1.2 times.
        // Dense rows of fewer channels than a vector: a plane's rows run as one (below).
        let denseFewChannels = g.hasDenseRows && g.channels < KernelLimits.vectorChannels
        let doublesFromRows = g.kernelW >= scanTaps && !denseFewChannels
        let keepsRows = R.mergesOverlaps && (doublesFromRows || (g.kernelH == 1 && g.kernelD == 1))
        widenOnce = R.widenOutweighsAPass && !width.subsampled && !keepsRows
        // Depth first pays for inputs that are widened, and for 16-bit ones: an input is
        // widened once per pair of output planes whose windows hold it instead of once per W
        // tap, and the D fold reads inputs narrower than the sums the W-first finish reads.
        // For float32 its six input planes per pair crowd L2, and it is slower.
        let depthFirstPays = inputSize == 2 || accumulatorSize > inputSize
        // Whole windows start each fold from its first tap; the other strategies fold some
        // windows from the identity (edges, padded rows, tiles cut small). (Where channels are
        // strided, as in views of float averages that are not packed, a lone -0 may become +0.)
        if R.passesSingleTapsThrough && g.windowSize == 1 && g.stepC == 1 {
            strategy = .wholeWindows
        } else if depthFirstPays && Self.suitsDepthFirst(g, accumulatorSize: accumulatorSize) {
            strategy = .depthFirst
        } else if Self.suitsWholeWindows(g, width: width, R.self) {
            strategy = .wholeWindows
        } else if g.strideH > 1 && (width.step == 1 || g.channels < KernelLimits.vectorChannels) {
            strategy = .heightFirst
        } else {
            strategy = .widthFirst
        }
        rowsAsOneRun = strategy == .widthFirst && denseFewChannels && !widenOnce && width.step == 1
        let narrowing = outputSize <= accumulatorSize
        // Compacted, the D folds and the finish skip the positions the output drops (AvgPool3d
        // k9 s3 of 2 int16 channels took 1.2x as long without, AvgPool2d k7 s2 of 6 1.15x). Not
        // for maxima of one plane kept as they are: their finish is the copy the compaction
        // would add (MaxPool2d k3 s2 of 8 float32 channels took 1.1x as long compacted).
        let keptMaxima = R.finishKeepsBits && R.Output.self == R.Accumulator.self
        compactsRing = strategy == .heightFirst && width.subsampled && !(keptMaxima && g.kernelD == 1)
        // W from the stride's phases: the W pass then runs over the output's positions alone,
        // where reduced at every position it ran over `stride` times as many and the output's
        // were copied out. 64 MiB, 1 thread, ms, best of four rounds of medians of 5, one build
        // switched: AvgPool2d k6 s2 of 1 float16 channel 13.8 vs 11.3, AvgPool3d k6 s2 of 2
        // int8 13.8 vs 11.4, AvgPool2d k10 s4 of 2 int16 6.9 vs 6.0, k5 s3 of 1 int16 9.2 vs
        // 8.0, AvgPool3d k8 s4 of 1 int8 12.2 vs 11.0. Not 8-byte units at stride 3, whose
        // split LLVM's loops take (AvgPool3d k6 s3 of 1 float64 channel 4.3 vs 4.5, k9 s3 of 2
        // int16 8.3 vs 8.5). Not maxima, whose doubling costs less than the folds at strides
        // past 2 (an earlier build taking every compacted row, best of two rounds: MaxPool3d
        // k10 s5 of 1 int32 3.9 vs 5.1, k9 s3 of 4 uint8 6.4 vs 8.0, k6 s4 of 1 uint8 8.9 vs
        // 11.5, k11 s8 of 2 int8 4.1 vs 5.4) and was mixed at 2 (the switch above: k4 s2 of 1
        // float32 6.7 vs 6.0; against the previous library, best of three: of 1 float16 8.9
        // vs 9.7).
        // One or two channels: a tile holds both or one, a unit the split takes either way
        // (4 channels of 16-bit sums cut to 3 would not be).
        let phaseUnit = g.channels * accumulatorSize
        foldsPhasesW = compactsRing && !R.mergesOverlaps && g.channels <= 2 && g.strideW <= 8
            && (phaseUnit == 4 || (phaseUnit == 8 && g.strideW != 3))
        rowsFinishAsRuns = !width.subsampled || compactsRing || (narrowing && R.finishOutweighsACopy)
        // Streaming pays off when memory is the bottleneck: large outputs, and rows wide enough
        // that the folds run at full vector width, or, of fewer channels, rows at every
        // position over 2+ rows or planes, whose tiles' planes stream out as whole runs
        // (stored through the cache, each output line was read first: AvgPool2d k3 s1 p1 of 1
        // float16 channel took 1.19x as long, AvgPool3d k5 s1 p2 of 3 float32 1.32x). Not
        // subsampled rows of fewer, whose rows gather first, nor 1-d tiles, a few hundred bytes
        // that stream as partial lines. The finished values must fit where the accumulators
        // were. Whole windows write straight to the output: staging rows to stream them did not
        // pay.
        let outputBytes = g.pixels * g.channels * outputSize  // fits: PoolEngine.plan checked it
        rowWindows = strategy == .widthFirst && g.kernelH == 1 && g.kernelD == 1
        let streamsRuns = g.channels >= KernelLimits.vectorChannels || (!width.subsampled && !rowWindows)
        streamOutput = (strategy == .widthFirst || strategy == .heightFirst) && outputBytes >= settings.streamingOutputBytes
            && streamsRuns && narrowing
        // Prefetching pays for overlapping windows of inputs past the caches: of 1- to 4-byte
        // inputs and 64-bit integer averages, whose compute per byte is long, from
        // `KernelLimits.prefetchedInputBytes`; of other 8-byte inputs from
        // `KernelLimits.prefetchedWideInputBytes`. Where windows do not overlap the prefetches
        // only compete with the loads, but in height first, whose H folds of strided rows
        // waited on memory for every type and size (MaxPool3d k9 s3 p4 of 1 float64 channel
        // took 1.8x as long without), whether or not D windows overlap (MaxPool3d k2 s2 p0 of
        // 3 float32 channels 1.9x, k3 s3 of 5 int8 channels 2.5x).
        let fetchedFrom = inputSize < 8 || R.widenOutweighsAPass ? KernelLimits.prefetchedInputBytes : KernelLimits.prefetchedWideInputBytes
        prefetchInput = strategy == .heightFirst || (g.kernelD > g.strideD && g.inputElements >= fetchedFrom / inputSize)
        // Fetched while the plane before is reduced, the next plane is in cache before the
        // finish that used to fetch it alone (MaxPool3d k3 s1 p1 of 16 float32 channels took
        // 1.15 times as long without, AvgPool3d of 8 1.08). Not at larger D strides, whose
        // windows add several planes each: fetched one by one, AvgPool3d k11 s5 of 24
        // bfloat16 channels took 1.04 times as long, k5 s2 of 16 int8 maxima the same.
        prefetchPlaneAhead = prefetchInput && (strategy == .heightFirst || strategy == .widthFirst && g.strideD == 1)
        scansH = (strategy == .widthFirst || strategy == .depthFirst) && Self.scans(g.kernelH, stride: g.strideH, from: scanTaps)
        scansD = (strategy == .widthFirst || strategy == .heightFirst) && Self.scans(g.kernelD, stride: g.strideD, from: scanTaps)
        let scansW = (strategy == .widthFirst || strategy == .heightFirst) && width.step == 1 && !rowsAsOneRun && g.kernelW >= scanTaps
        // Windows along W alone keep adding left to right, as MLX does (float32 averages in 1-d
        // are bit-identical to MLX's, test_mlx_parity.py): pairs only where H or D windows have
        // changed the order already. Not where W folds from the stride's phases instead
        // (`foldsPhasesW`), which lays out no row for the pairs.
        pairsW = scansW && !foldsPhasesW && !R.mergesOverlaps && g.kernelW <= KernelLimits.pairedWTaps && (g.kernelH > 1 || g.kernelD > 1)
        doublesW = scansW && R.mergesOverlaps
        blocksH = strategy == .heightFirst && g.strideH >= 3 && g.kernelH % g.strideH == 0
            && Self.scans(g.kernelH, stride: g.strideH, from: scanTaps)
        pairsH = strategy == .heightFirst && !blocksH && g.strideH >= 2 && g.strideH <= KernelLimits.pairedHStride
            && Self.scans(g.kernelH, stride: g.strideH, from: scanTaps)
        let vector = settings.usesVectorKernels ? R.vectorFinish : nil
        switch strategy {
        case .depthFirst: vectorFinish = vector
        // The plane strategies' finish runs use them only where the Swift loop is slower
        // (bfloat16; float16 converts in one F16C instruction already).
        case .widthFirst, .heightFirst: vectorFinish = vector?.finishesRuns == true ? vector : nil
        case .wholeWindows: vectorFinish = nil
        }
    }

    /// The geometry a call runs and its plan: `g` and its plan, or `g` with its rows as planes
    /// (`PoolGeometry.rowsAsPlanes`) and that geometry's plan, for a 2-d pooling whose H windows
    /// scan (width first, rows at stride 1) over a plane of more than
    /// `KernelSettings.rowsAsPlanesAbove` bytes of accumulators, where the relabelled geometry
    /// scans along D; and for one whose H windows fold in pairs (2 to 5 rows at stride 1) over
    /// rows of 8 channels or more, whose outputs are no wider than their sums.
    ///
    /// Why: H scans run on tiles of a few output rows, each reducing again the kh - 1 input
    /// rows it shares with the tile above (and rows so long that few fit are cut along W,
    /// which loses the whole-row finish); the plane ring streams down each column of tiles and
    /// reduces every input row once. A plane that fits one tile redoes nothing, and as rows
    /// it would only add a pass of the ring per row and tiles for other threads; strided rows
    /// redo fewer rows per tile, and there the ring costs more than it saves. The threshold is
    /// the smallest tile budget, never the machine's, so the plan (and the bits) depend on
    /// the geometry and the type alone. docs/performance.md has the measurements.
    ///
    /// Paired H windows: in the plane the W pass writes every row of a tile, the H pass reads
    /// them and writes the tile's sums, and the finish reads those again, three passes through
    /// L2; as rows, the finish folds the window's ring rows straight into the output. 64 MiB,
    /// 1 thread, best of three rounds, as rows over in the plane: AvgPool2d k3 s1 p1 of 8
    /// float16 channels 0.81, int16 0.68, float32 0.86, MaxPool2d of 16 float32 0.70, int8
    /// 0.73. Not with fewer channels, whose plane's rows reduce along W as one run
    /// (`rowsAsOneRun`; 4 float32 channels took 1.19x as long as rows, 4 bfloat16 1.05x),
    /// nor averages of 8-bit integers, whose float32 outputs are wider than their 16-bit sums
    /// (uint8 of 16 channels 1.40x, int8 of 64 1.17x).
    ///
    /// Every window folds in the same order either way (block scans aligned in padded
    /// coordinates, suffix then prefix; a window clipped by the axis's end inside one block is
    /// that block's suffix; paired windows in `foldPair`'s order, see `runPlaneRing`), so the
    /// bits do not depend on the choice: a dask task's block and the whole array may choose
    /// differently.
    static func forCall<R: WindowReduction>(_ g: PoolGeometry, _: R.Type, _ settings: KernelSettings) -> (PoolGeometry, KernelPlan) {
        let plan = KernelPlan(g, R.self, settings)
        // The plane's accumulators fit: the input's element count was checked.
        let planeBytes = g.inH * g.inW * g.channels * MemoryLayout<R.Accumulator>.stride
        let pairs = !plan.scansH && foldsInPairs(g.kernelH) && g.channels >= KernelLimits.vectorChannels
            && MemoryLayout<R.Output>.stride <= MemoryLayout<R.Accumulator>.stride
        guard plan.strategy == .widthFirst && (plan.scansH || pairs) && g.strideH == 1 && g.inD == 1 && g.outD == 1
            && g.kernelD == 1 && g.padD == 0 && planeBytes > settings.rowsAsPlanesAbove else { return (g, plan) }
        let rows = g.rowsAsPlanes
        var rowPlan = KernelPlan(rows, R.self, settings)
        guard rowPlan.strategy == .widthFirst && (plan.scansH ? rowPlan.scansD : !rowPlan.scansD) else { return (g, plan) }
        rowPlan.rowsAsPlanes = true
        return (rows, rowPlan)
    }

    /// Whether windows of `kernel` taps at `stride` fold by block scans: three merges per input
    /// element and one per output, where a fold costs kernel / stride merges per input element
    /// (less for the pairs of 2 to 5 taps). Windows smaller than `taps` (`KernelSettings`' scan
    /// thresholds), and windows that overlap little, keep the folds.
    static func scans(_ kernel: Int, stride: Int, from taps: Int) -> Bool {
        kernel >= taps && kernel / 2 >= stride
    }

    /// Whether a geometry can run depth first: stride 1 along every axis, output rows as
    /// long as input rows (centred windows), windows of 2 to 5 planes (pairs along D) and
    /// at most one fold pass of columns, no wider than a row, dense rows of few channels (W
    /// reduces as a plane run), and short enough that a tile of one output row fits the
    /// smallest default budget (depth first, tiles hold whole rows; the machine's budget would
    /// make the plan, and so the bits, depend on the machine).
    static func suitsDepthFirst(_ g: PoolGeometry, accumulatorSize: Int) -> Bool {
        g.strideD == 1 && g.strideH == 1 && g.strideW == 1 && foldsInPairs(g.kernelD) && g.outW == g.inW
            && g.kernelW <= Swift.min(sourcesPerPass, g.inW) && g.channels < KernelLimits.vectorChannels && g.hasDenseRows
            && (2 * g.kernelH + 3) * g.inW * g.channels * accumulatorSize <= KernelLimits.smallestTileBudgetBytes
    }

    /// Whether windows fold whole, tap by tap from the input: where no two windows overlap
    /// (stride at least the kernel on every axis), one axis at a time saves no work and only
    /// adds passes through scratch. With enough contiguous channels to vectorise over, and at
    /// most `KernelLimits.wholeWindowTaps` taps (`wholeWindowExactTaps` for maxima and integer
    /// sums over 2+ rows or planes). Never true together with `suitsDepthFirst` (that needs
    /// stride 1 and 2+ planes, so windows overlap), and checked after it anyway.
    /// Not rows alone that `width` reduces at every position (8 channels at most): their
    /// windows of 8 channels folded whole took longer (64 MiB, 1 thread, ms, best of two or
    /// three rounds of medians of 5, one build switched: AvgPool1d k2 s2 of 8 uint8 channels
    /// 24.7 vs 11.0, float32 7.8 vs 5.9, k3 s3 of 8 bfloat16 10.7 vs 8.3).
    /// Windows over 2+ rows or planes only where a position's channels span 128 bytes of input
    /// or number 64, and byte maxima of 9 channels or more (a C fold of many windows where the
    /// AVX2 kernels run, `tpvector_byte_maxima`): a window's fold is loops as long as its
    /// channels, whose calls and set-up outweigh few channels' loads and merges. 64 MiB, 1
    /// thread, whole over width first, AvgPool3d k2 s2 / AvgPool2d k3 s3: 8 int8 channels 3.9 /
    /// 2.9, 32 1.4 / 1.4, 64 0.8 / 0.7; 32 float16 1.7 / 1.0, 64 0.4 / 0.7; 8 float32 2.2 /
    /// 1.5, 32 0.8 / 1.2; maxima alike (docs/performance.md). Rows alone keep the rule before
    /// (8+ channels where not subsampled, at most 12 taps; not measured against this one).
    static func suitsWholeWindows<R: WindowReduction>(_ g: PoolGeometry, width: WidthPlan, _: R.Type) -> Bool {
        let rowsAlone = g.kernelH == 1 && g.kernelD == 1
        let exact = R.mergesOverlaps || R.unmergesExactly
        let taps = exact && !rowsAlone ? KernelLimits.wholeWindowExactTaps : KernelLimits.wholeWindowTaps
        let wide = rowsAlone || g.channels * MemoryLayout<R.Input>.stride >= KernelLimits.wholeWindowBytes
            || g.channels >= KernelLimits.wholeWindowChannels
            || (isByteMaximum(R.self) && g.channels >= Int(TPVECTOR_BYTE_MAXIMA_CHANNELS))
        return g.strideD >= g.kernelD && g.strideH >= g.kernelH && g.strideW >= g.kernelW
            && g.windowSize <= taps && g.channels >= KernelLimits.vectorChannels && g.stepC == 1
            && !(width.subsampled && rowsAlone) && wide
    }
}

/// How the W axis is reduced. With a W stride above 1 whose span of channels (stride x
/// channels) is at most `KernelLimits.subsampledSpan` elements, reducing at every position
/// (stride 1) keeps the fused row contiguous and vectorised, and the output then takes every
/// `stride`-th position; otherwise positions are the output's own. (Eight channels at stride 2
/// are within it: position by position, each a loop of one vector sized at run time, 3-d k3
/// s2 ran at twice its floor.)
///
/// Windows one row and one plane tall (rows alone, no H or D pass to share the work) of 8-byte sums
/// and maxima (32- and 64-bit integer and float64 averages, float64 and 64-bit maxima: `wideRows`)
/// are subsampled only up to `KernelLimits.subsampledSpanOfWideRows`: 4 lanes per vector make every
/// position's taps cost more than the strided positions' folds (or running sums) from a span of 6
/// on. The whole engine compiled alone, 64 MiB, 1 thread, ms, subsampled vs at the stride: int32
/// k11 s7 C=2 (Int64 sums) 25-26 vs 9-10, k7 s3 C=3 (Double sums) 24-27 vs 21, k4 s2 C=8 24 vs 19;
/// float64 max k9 s5 C=3 16 vs 8 (64-bit integer maxima, 4 lanes too, were not measured apart); but
/// int64 averages k3 s2 C=1 11-12 vs 16-23, int32 k3 s2 C=2 25 vs 25-31. Float64 averages (as
/// measured with them at 16 or 4): k11 s7 C=2 11-14 vs 6, k9 s5 C=3 12-14 vs 7, k7 s3 C=5 10-12 vs
/// 8, k3 s2 C=6 10-11 vs 9-10, k2 s2 C=4 9-10 vs 10. Each window folds its taps left to right
/// either way (no pairs along W for rows alone; a max's doubling keeps the first of equal values
/// and the last NaN, as the fold does; a sum's padded taps add +0, which changes no sum but a -0,
/// and the finish adds +0 to every sum of 2+ taps), so the bits do not depend on the choice. Other
/// types keep 16 (or the wider spans below): float32, float16, bfloat16 and int8 averages and
/// float32 and int8 maxima were as fast or faster subsampled (float16 k7 s3 C=3 25-27 vs 38-40),
/// and 2-d and 3-d windows of int32 too (3-d k3 s2 C=2 13-14 vs 17-26).
///
/// Maxima of 1-byte types go further (`KernelLimits.subsampledSpanOfByteMaxima`): at every
/// position their rows fold as whole vectors of 32 bytes, doubled level by level, where at the
/// stride each position folds its kernel's taps as one short vector of its channels. Subsampled
/// up to a span of 32, or 64 where the kernel is at least 1.5 strides: 64 MiB, 1 thread, ms, at
/// the stride vs subsampled, int8 k10 s4 C=6 15.7 vs 9.5, uint8 k5 s4 C=8 7.3-7.5 vs 4.8-4.9,
/// 3-d k3 s2 C=24 12.4-12.5 vs 5.3-5.5, k4 s4 C=6 9.5-9.8 vs 6.2-6.4; but k7 s6 C=8 (a span of
/// 48, a kernel under 1.5 strides) 6.0-6.3 vs 9.2-9.7, and k10 s8 C=6 (48) 8.2-8.3 vs 8.4. Not
/// 2-byte maxima (int16 k10 s4 C=6 7.4-7.7 vs 8.0-8.1; but see below for more channels).
///
/// Wider spans (`KernelLimits.subsampledSpanOfNarrowTypes`, 64, and `subsampledSpanOfByteSums`,
/// 128), for more than 8 channels, for sums of 1-, 2- and 4-byte inputs, maxima of 2-byte inputs
/// and maxima of 4-byte inputs over 3-d windows of at most 5 columns: past 16 their positions at
/// the stride reduce one short vector of channels at a time (9 to 15 channels: one vector of 8 and
/// an overlapping one) where rows reduced at every position run whole vectors. 64 MiB, 1 thread,
/// ms, at the stride vs subsampled: AvgPool3d k3 s2 C=9 int8 29.4 vs 10.5, float16 18.9 vs 7.1,
/// float32 9.7 vs 5.2; AvgPool1d k3 s2 C=32 int16 14.7 vs 7.4; MaxPool3d k3 s2 C=16 float16 12.6 vs
/// 5.0, float32 6.6 vs 4.7; AvgPool3d k9 s8 C=12 uint8 11.7 vs 6.6 (span 96); AvgPool3d k5 s2 C=12
/// int32 (Int64 running sums at the stride) 12.6 vs 8.1. Not where it lost: 8 channels or fewer
/// (AvgPool1d k10 s4 C=6 float32 5.9 vs 8.1, MaxPool1d k10 s4 C=6 float16 9.4 vs 12.5, AvgPool2d
/// k10 s4 C=6 float32 4.7 vs 5.0); rows alone whose windows touch or leave gaps (MaxPool1d k2 s2
/// C=24 int16 5.0 vs 6.2, AvgPool1d k2 s2 C=24 float32 3.9 vs 4.1), at strides past 4 (AvgPool1d k9
/// s8 C=12 int8 8.5 vs 13.0, k7 s6 C=16 9.9 vs 10.3) or over more than two strides and a column
/// (AvgPool1d k10 s4 C=12 int8 14.6 vs 18.1, k11 s3 C=12 bfloat16 16.8 vs 20.9, MaxPool1d k10 s4
/// C=12 int16 8.4 vs 11.5; k9 s2 C=12 float16 gained, 21.5 vs 16.6, and is left out with them);
/// maxima of 4-byte inputs in 1-d and 2-d (MaxPool1d k5 s2 C=16 float32 6.8 vs 10.7, MaxPool2d k7
/// s3 C=12 5.2 vs 6.5) or over long 3-d windows (MaxPool3d k11 s5 C=12 5.2 vs 5.5-5.9); 8-byte
/// inputs (AvgPool3d k5 s2 C=12 float64 5.7 vs 6.4, MaxPool3d k11 s5 C=12 4.7 vs 5.9).
///
/// float16 and bfloat16 averages over windows that overlap by at most a stride (stride < kernel <=
/// 2 strides), rows alone only at strides up to 3, go to 128
/// (`KernelLimits.subsampledSpanOfHalfFloatSums`): at the stride their float sums have no
/// differences of running sums, as integer sums do, and each position folds its taps, converting
/// each input again per window. 64 vs 128, ms as above: AvgPool3d k3 s2 C=40 float16 12.0 vs 6.3,
/// k6 s5 C=13 11.2 vs 6.5, k12 s6 C=12 bfloat16 12.7 vs 7.1, AvgPool2d k6 s5 C=24 bfloat16 9.0 vs
/// 5.0, k3 s2 C=48 float16 12.6 vs 8.5. Not where it lost: touching windows (AvgPool3d k6 s6 C=12
/// bfloat16 3.6 vs 5.5), windows of two strides and a column (AvgPool3d k13 s6 C=9 float16 9.6 vs
/// 10.8, AvgPool2d k15 s7 C=9 7.6 vs 8.5), rows alone at stride 4 (AvgPool1d k6 s4 C=24 bfloat16
/// 10.1 vs 12.5, k7 s4 C=24 float16 11.0 vs 11.5; at 2 and 3 they gained: k3 s2 C=48 float16 13.9
/// vs 7.6, k4 s3 C=40 12.0 vs 7.7), 16-bit integer averages (AvgPool2d k8 s5 C=20 int16 6.4 vs 7.2)
/// and float32 ones (AvgPool2d k7 s5 C=24 3.6 vs 4.4).
struct WidthPlan: Sendable {
    /// Positions held by a reduced row: position q's window starts at q * step - padding.
    let step: Int
    /// Output ow is position ow * stride / step.
    var subsampled: Bool { step == 1 && stride > 1 }
    let stride: Int
    /// Rows alone of 1 or 2 dense channels at the stride, split into its phases as they are
    /// widened (`widenedInChunks`).
    let splitsPhases: Bool

    /// `sums`: the reduction sums (not maxima), of `inputSize`-byte inputs into
    /// `accumulatorSize`-byte accumulators; `unmergesExactly`: sums exact in any order
    /// (integers), which at the stride run as differences of running sums (`widenedInChunks`).
    /// `splitsRows`: sums whose rows `widenedInChunks` splits into the stride's phases
    /// (`splitsRowsIntoPhases`).
    init(_ g: PoolGeometry, sums: Bool, unmergesExactly: Bool, inputSize: Int, accumulatorSize: Int, splitsRows: Bool = false) {
        stride = g.strideW
        let rowsAlone = g.kernelH == 1 && g.kernelD == 1
        let span = Self.span(g, sums: sums, unmergesExactly: unmergesExactly, inputSize: inputSize, accumulatorSize: accumulatorSize)
        // Dense rows alone of 1 or 2 channels at the stride, split into phases: every
        // position folded its kernel's taps, converting each input once per tap (AvgPool1d
        // k11 s7 of 1 float16 channel took 1.5x as long, k6 s4 1.2x).
        // (Steps 2 to 16 split: `splitIntoPhases`.)
        splitsPhases = splitsRows && rowsAlone && g.channels <= 2 && g.stepC == 1 && g.stepW == g.channels
            && g.strideW >= 2 && g.strideW * g.channels <= KernelLimits.subsampledSpan
        // Rows alone of up to 8 channels whose windows of at most
        // `KernelLimits.subsampledWindowsOfRowsAlone` columns overlap or touch (no gaps),
        // of 1- to 4-byte accumulators, reduce at every position whatever the span: a few
        // vector merges per input cost less than the output's positions folded (or widened
        // into phases) a column of 3 to 8 channels at a time. 64 MiB, 1 thread, ms, best of
        // two or three rounds of medians of 5, one build switched, at the stride vs subsampled:
        // AvgPool1d k3 s3 of 6 float16 channels 22.7 vs 7.7, of 7 13.0 vs 7.9, of 6 int16 14.3
        // vs 9.7, of 6 int8 18.6 vs 10.1, of 7 float32 5.9 vs 5.2, k4 s4 of 7 float16 11.2 vs
        // 8.5, k5 s3 of 7 float16 13.9 vs 9.8, k5 s5 of 7 int8 16.2 vs 9.7, MaxPool1d k3 s3 of
        // 7 float16 10.6 vs 6.3. Longer windows took longer at every position (k9 s5 of 6 float32
        // 5.2 vs 13.4, int16 9.2 vs 12.9, k10 s5 of 6 bfloat16 14.7 vs 18.4, MaxPool1d k9 s5 of
        // 6 float16 7.6 vs 11.1; float16 averages alone gained, k9 s5 of 6 20.4 vs 14.6).
        let shortWindows = rowsAlone && g.channels <= KernelLimits.vectorChannels && accumulatorSize < 8
            && g.strideW <= g.kernelW && g.kernelW <= KernelLimits.subsampledWindowsOfRowsAlone
        // Rows alone of 3 to 8 channels of float16 and bfloat16 averages (widened sums, not
        // exact in any order) over windows of `KernelLimits.stridedWindowsOfWidenedRowsAlone`
        // columns or more reduce at the stride whatever the span: each input widened once
        // into the stride's phases and kernel / stride adds (`widenedInChunks`) cost less than
        // kernel adds at every position. 64 MiB, 1 thread, ms, best of two rounds, one build
        // switched, subsampled vs at the stride: AvgPool1d k9 s5 of 3 bfloat16 channels 17.7
        // vs 13.3, k8 s4 of 4 15.7 vs 12.2, k12 s3 of 5 28.2 vs 15.2, k10 s2 of 7 21.8 vs
        // 16.8, k13 s4 of 4 float16 20.2 vs 13.5, k11 s5 of 3 17.6 vs 14.3, k8 s2 of 8 18.3
        // vs 16.4 (k9 s2 of 6 17.8 vs 18.2, k8 s3 of 4 14.5 vs 15.0). Shorter windows lost at
        // the stride: k6 s2 of 8 10.8 vs 13.3, k6 s4 of 3 11.5 vs 14.3, k3 s4 of 4 6.8 vs 9.3.
        let longWidenedWindows = rowsAlone && sums && !unmergesExactly && inputSize < accumulatorSize
            && (3...KernelLimits.vectorChannels).contains(g.channels)
            && g.kernelW >= KernelLimits.stridedWindowsOfWidenedRowsAlone
        step = g.strideW > 1 && (g.strideW * g.channels <= span || shortWindows) && !splitsPhases && !longWidenedWindows
            ? 1 : g.strideW
    }

    /// The largest span of channels (stride x channels) whose rows are reduced at every
    /// position and subsampled (the type's comment above).
    static func span(_ g: PoolGeometry, sums: Bool, unmergesExactly: Bool, inputSize: Int, accumulatorSize: Int) -> Int {
        if !sums && inputSize == 1 {
            return 2 * g.kernelW >= 3 * g.strideW ? KernelLimits.subsampledSpanOfOverlappingByteMaxima : KernelLimits.subsampledSpanOfByteMaxima
        }
        let rowsAlone = g.kernelH == 1 && g.kernelD == 1
        if rowsAlone && accumulatorSize >= 8 { return KernelLimits.subsampledSpanOfWideRows }
        let overlapping = g.kernelW > g.strideW && g.strideW <= KernelLimits.widerSpansOfRowsAlone && g.kernelW <= 2 * g.strideW + 1
        guard g.channels > KernelLimits.vectorChannels && (!rowsAlone || overlapping) else { return KernelLimits.subsampledSpan }
        switch (sums, inputSize) {
        case (true, 1): return KernelLimits.subsampledSpanOfByteSums
        case (true, 2) where !unmergesExactly && g.kernelW > g.strideW && g.kernelW <= 2 * g.strideW
            && (!rowsAlone || g.strideW <= KernelLimits.widerHalfFloatSpansOfRowsAlone):
            return KernelLimits.subsampledSpanOfHalfFloatSums
        case (true, 2), (true, 4), (false, 2): return KernelLimits.subsampledSpanOfNarrowTypes
        case (false, 4) where g.kernelD > 1 && g.kernelW <= KernelLimits.widerSpanColumnsOfWordMaxima:
            return KernelLimits.subsampledSpanOfNarrowTypes
        default: return KernelLimits.subsampledSpan
        }
    }

    /// Positions covering outputs [ow0, ow1).
    func positions(_ ow0: Int, _ ow1: Int) -> Range<Int> { (ow0 * stride / step)..<((ow1 - 1) * stride / step + 1) }

    /// The columns spanned by the windows of `positions` consecutive positions (at least one).
    func columnSpan(positions: Int, kernel: Int) -> Int { (positions - 1) * step + kernel }
}
