import CTidepoolStream

/// Pooling one axis at a time. A box window reduces to a reduction along W, then along H
/// of those rows, then along D of those planes (both folds are associative), so an output
/// costs kw + kh + kd folds instead of kw * kh * kd. Every fold runs over a contiguous
/// row of accumulators — the fused (W, C) row, since channels are innermost — which the
/// compiler vectorises. Reduced rows and planes live in small per-thread rings, and the
/// output is cut into tiles sized to stay in cache, so a call allocates a few hundred KB
/// per thread whatever the tensor's size.
///
/// Every output is folded in an order set by the geometry and the type alone, whatever the
/// tiling (W offsets, then rows by increasing h, then planes by increasing d; H before W where
/// `TilePass.heightFirst` says; D, then H, then W where `TilePlan.depthFirst` says; full
/// windows of 2 to 5 rows or planes at stride 1 in the order of `foldPair`, set by the output
/// row's or plane's parity; windows that do not overlap, tap by tap in (d, h, w) order where
/// `TilePlan.suitsWholeWindows` says), so results do not depend on the thread count.

/// How the W axis is reduced. With few channels and a W stride above 1, reducing at every
/// position (stride 1) keeps the fused row contiguous and vectorised, and the output then
/// takes every `stride`-th position; otherwise positions are the output's own.
struct WidthPlan {
    /// Positions held by a reduced row: position q's window starts at q * step - padding.
    let step: Int
    /// Output ow is position ow * stride / step.
    var subsampled: Bool { step == 1 && stride > 1 }
    let stride: Int

    init(_ g: PoolGeometry) {
        stride = g.strideW
        step = g.strideW > 1 && g.channels < 8 && g.strideW * g.channels <= 16 ? 1 : g.strideW
    }

    /// Positions covering outputs [ow0, ow1).
    func positions(_ ow0: Int, _ ow1: Int) -> Range<Int> { (ow0 * stride / step)..<((ow1 - 1) * stride / step + 1) }
}

/// The size of equal parts of `count`, each at most `largest` (at least 1).
func evenSplit(_ count: Int, largest: Int) -> Int {
    guard count > 0 else { return 1 }
    let parts = (count + largest - 1) / Swift.max(largest, 1)
    return (count + parts - 1) / parts
}

/// One unit of work: a block of output depths, rows, columns and channels of one batch entry.
struct Tile {
    var n: Int
    var od: Range<Int>
    var oh: Range<Int>
    var ow: Range<Int>
    var c: Range<Int>
}

/// The cut of a pooling into tiles and the scratch each worker needs.
public struct TilePlan {
    let width: WidthPlan
    let tileOD: Int, tileOH: Int, tileOW: Int, tileC: Int
    let counts: (n: Int, od: Int, oh: Int, ow: Int, c: Int)
    /// Accumulators per reduced row; reduced input rows per plane; a widened input row with
    /// its padding; per worker in all.
    let rowCapacity: Int
    let rowBlockRows: Int
    let paddedRowCapacity: Int
    let scratchCount: Int
    /// Whether whole-row outputs are streamed to memory rather than stored through the cache.
    var streamOutput = false
    /// Prefetch the next plane's input rows while finishing the current plane, and the output
    /// plane while reducing input (see TilePass.run).
    var prefetchInput = false
    var prefetchOutput = false
    /// Vector kernels for the finishing folds, where the type and CPU have them.
    var vectorFinish: VectorFinish?
    /// Whether tiles run depth first (`TilePass.runDepthFirst`).
    let depthFirst: Bool
    /// Whether windows are folded whole, straight from the input (`TilePass.runWholeWindows`).
    let wholeWindows: Bool

    /// Scratch per worker, in bytes: reduced rows and kd planes fit in L2 with room left.
    public static let defaultBudgetBytes = 512 << 10

    /// Whether a geometry can run depth first: stride 1 along every axis, output rows as
    /// long as input rows (centred windows), windows of 2 to 5 planes (pairs along D) and
    /// at most one fold pass of columns, no wider than a row, dense rows of few channels (W
    /// reduces as a plane run), and short enough that a tile of one output row fits the
    /// default budget (depth first, tiles hold whole rows).
    static func suitsDepthFirst(_ g: PoolGeometry, accumulatorSize: Int) -> Bool {
        g.strideD == 1 && g.strideH == 1 && g.strideW == 1 && foldsInPairs(g.kernelD) && g.outW == g.inW
            && g.kernelW <= Swift.min(sourcesPerPass, g.inW) && g.channels < 8 && g.stepC == 1 && g.stepW == g.channels
            && g.stepH == g.inW * g.channels
            && (2 * g.kernelH + 3) * g.inW * g.channels * accumulatorSize <= defaultBudgetBytes
    }

    /// Whether windows fold whole, tap by tap from the input: where no two windows overlap
    /// (stride at least the kernel on every axis), one axis at a time saves no work and only
    /// adds passes through scratch (k2 s2, 32 channels, 2 threads: float32 1.87 -> 1.28 ms,
    /// max 1.87 -> 1.35, float16 1.7 -> 0.87, int8 1.3 -> 0.7, float64 4.1 -> 3.6). With 8+
    /// contiguous channels to vectorise over, and at most two passes of taps (the sums' rounding
    /// error grows with the taps of one fold).
    static func suitsWholeWindows(_ g: PoolGeometry) -> Bool {
        g.strideD >= g.kernelD && g.strideH >= g.kernelH && g.strideW >= g.kernelW && g.windowSize <= 2 * sourcesPerPass
            && g.channels >= 8 && g.stepC == 1
    }

    init(_ g: PoolGeometry, accumulatorSize: Int, workers: Int, budgetBytes: Int = defaultBudgetBytes,
         depthFirstAllowed: Bool = false) {
        width = WidthPlan(g)
        let budget = Swift.max(budgetBytes / accumulatorSize, 1)
        // Chosen by the geometry and the type alone, never the budget, so that every engine
        // folds an output in the same order.
        depthFirst = depthFirstAllowed && Self.suitsDepthFirst(g, accumulatorSize: accumulatorSize)
        wholeWindows = Self.suitsWholeWindows(g)
        // Rows of scratch per output row of a tile: sh reduced input rows, kd plane rows, one
        // merged row, plus kh - 1 more reduced rows per tile. Depth first: sh rows of D sums
        // for each plane of a pair and one merged row, plus 2 (kh - 1).
        let rowsPerOutputRow = depthFirst ? 2 * g.strideH + 1 : g.strideH + g.kernelD + 1
        let rowsHeld = (depthFirst ? 2 : 1) * g.kernelH
        let rowsNeeded = rowsHeld + rowsPerOutputRow
        // Channels are tiled only when one position's channels alone overflow the budget.
        tileC = depthFirst ? g.channels : Swift.min(g.channels, Swift.max(1, budget / rowsNeeded))
        let positionsAll = width.positions(0, g.outW).count
        let positionsFit = Swift.max(1, budget / (rowsNeeded * tileC))
        if depthFirst || positionsFit >= positionsAll {
            tileOW = g.outW
        } else {
            // Outputs whose positions fit: position span of k outputs is (k - 1) * stride / step + 1.
            tileOW = Swift.max(1, (positionsFit - 1) * width.step / width.stride + 1)
        }
        rowCapacity = width.positions(0, Swift.min(tileOW, g.outW)).count * tileC
        let rowsFit = budget / rowCapacity - rowsHeld
        // As many rows as fit, then evened out so that no tile is a small remainder (tiles of
        // equal cost keep both workers busy to the end).
        tileOH = evenSplit(g.outH, largest: Swift.max(1, rowsFit / rowsPerOutputRow))
        let ohTiles = (g.outH + tileOH - 1) / tileOH
        let owTiles = (g.outW + tileOW - 1) / tileOW
        let cTiles = (g.channels + tileC - 1) / tileC
        // Split depth only as far as needed to give every worker a few tiles: each block
        // recomputes the (kd - sd) planes it shares with its neighbour.
        let others = g.batch * ohTiles * owTiles * cTiles
        let blocksWanted = (2 * workers + others - 1) / others
        tileOD = evenSplit(g.outD, largest: Swift.max(Swift.min(8, g.outD), (g.outD + blocksWanted - 1) / Swift.max(blocksWanted, 1)))
        counts = (g.batch, (g.outD + tileOD - 1) / tileOD, ohTiles, owTiles, cTiles)
        rowBlockRows = (tileOH - 1) * g.strideH + g.kernelH
        paddedRowCapacity = rowCapacity + (g.kernelW - 1) * tileC
        // Whole windows need only the partial sums of one position's channels.
        scratchCount = wholeWindows ? tileC
            : rowCapacity * (rowBlockRows + (depthFirst ? rowBlockRows : g.kernelD * tileOH) + tileOH) + paddedRowCapacity
    }

    var tileCount: Int { counts.n * counts.od * counts.oh * counts.ow * counts.c }

    func tile(_ index: Int, _ g: PoolGeometry) -> Tile {
        var rest = index
        let c = rest % counts.c; rest /= counts.c
        let ow = rest % counts.ow; rest /= counts.ow
        let oh = rest % counts.oh; rest /= counts.oh
        let od = rest % counts.od; rest /= counts.od
        func range(_ i: Int, _ size: Int, _ limit: Int) -> Range<Int> { (i * size)..<Swift.min((i + 1) * size, limit) }
        return Tile(n: rest, od: range(od, tileOD, g.outD), oh: range(oh, tileOH, g.outH), ow: range(ow, tileOW, g.outW),
                    c: range(c, tileC, g.channels))
    }
}

/// How a fold reads its sources: input elements (widened) or accumulators. A static type,
/// not a closure, so every loop is specialised and vectorised.
protocol SourceLoader {
    associatedtype Reduction: WindowReduction
    associatedtype Source
    static func load(_ x: Source) -> Reduction.Accumulator
}

enum InputLoader<R: WindowReduction>: SourceLoader {
    typealias Reduction = R
    typealias Source = R.Input
    @inline(__always) static func load(_ x: R.Input) -> R.Accumulator { R.widen(x) }
}

enum AccumulatorLoader<R: WindowReduction>: SourceLoader {
    typealias Reduction = R
    typealias Source = R.Accumulator
    @inline(__always) static func load(_ x: R.Accumulator) -> R.Accumulator { x }
}

/// Folds up to 6 sources into `destination` in one pass, in order: destination (unless
/// `first`), then s0, s1, ... Fewer passes over the accumulators than one per source.
@inline(__always)
func foldPass<L: SourceLoader>(
    _: L.Type, _ destination: UnsafeMutablePointer<L.Reduction.Accumulator>, _ length: Int, first: Bool, count: Int,
    _ s0: UnsafePointer<L.Source>, _ s1: UnsafePointer<L.Source>, _ s2: UnsafePointer<L.Source>, _ s3: UnsafePointer<L.Source>, _ s4: UnsafePointer<L.Source>, _ s5: UnsafePointer<L.Source>
) {
    typealias R = L.Reduction
    let load = L.load
    let d = destination
    switch (count, first) {
    case (1, true): for j in 0..<length { d[j] = load(s0[j]) }
    case (1, false): for j in 0..<length { d[j] = R.merge(d[j], load(s0[j])) }
    case (2, true): for j in 0..<length { d[j] = R.merge(load(s0[j]), load(s1[j])) }
    case (2, false): for j in 0..<length { d[j] = R.merge(R.merge(d[j], load(s0[j])), load(s1[j])) }
    case (3, true): for j in 0..<length { d[j] = R.merge(R.merge(load(s0[j]), load(s1[j])), load(s2[j])) }
    case (3, false): for j in 0..<length { d[j] = R.merge(R.merge(R.merge(d[j], load(s0[j])), load(s1[j])), load(s2[j])) }
    case (4, true): for j in 0..<length { d[j] = R.merge(R.merge(R.merge(load(s0[j]), load(s1[j])), load(s2[j])), load(s3[j])) }
    case (4, false): for j in 0..<length { d[j] = R.merge(R.merge(R.merge(R.merge(d[j], load(s0[j])), load(s1[j])), load(s2[j])), load(s3[j])) }
    case (5, true): for j in 0..<length { d[j] = R.merge(R.merge(R.merge(R.merge(load(s0[j]), load(s1[j])), load(s2[j])), load(s3[j])), load(s4[j])) }
    case (5, false): for j in 0..<length { d[j] = R.merge(R.merge(R.merge(R.merge(R.merge(d[j], load(s0[j])), load(s1[j])), load(s2[j])), load(s3[j])), load(s4[j])) }
    case (_, true): for j in 0..<length { d[j] = R.merge(R.merge(R.merge(R.merge(R.merge(load(s0[j]), load(s1[j])), load(s2[j])), load(s3[j])), load(s4[j])), load(s5[j])) }
    case (_, false): for j in 0..<length { d[j] = R.merge(R.merge(R.merge(R.merge(R.merge(R.merge(d[j], load(s0[j])), load(s1[j])), load(s2[j])), load(s3[j])), load(s4[j])), load(s5[j])) }
    }
}

/// Sources folded per pass.
let sourcesPerPass = 6

/// Folds sources `taps` (each located by `source`) into `destination`, 6 per pass.
@inline(__always)
func foldTaps<L: SourceLoader>(
    _: L.Type, _ destination: UnsafeMutablePointer<L.Reduction.Accumulator>, _ length: Int, taps: Range<Int>, first: Bool,
    source: (Int) -> UnsafePointer<L.Source>
) {
    var k = taps.lowerBound
    var isFirst = first
    while k < taps.upperBound {
        let count = Swift.min(sourcesPerPass, taps.upperBound - k)
        let s0 = source(k)
        foldPass(L.self, destination, length, first: isFirst, count: count, s0, count > 1 ? source(k + 1) : s0, count > 2 ? source(k + 2) : s0, count > 3 ? source(k + 3) : s0, count > 4 ? source(k + 4) : s0, count > 5 ? source(k + 5) : s0)
        k += count
        isFirst = false
    }
}

/// Whether full windows of `taps` along an axis of stride 1 fold in pairs (`foldPair`).
func foldsInPairs(_ taps: Int) -> Bool { (2...5).contains(taps) }

/// Folds two outputs whose windows of `taps` sources (2 to 5) start one source apart:
/// they share the fold of their middle `taps - 1` sources, then merge the first and the
/// last source respectively, `taps` merges for the two instead of 2 * (taps - 1). Sources
/// are `source(0...taps)`.
@inline(__always)
func foldPair<L: SourceLoader>(
    _: L.Type, _ o0: UnsafeMutablePointer<L.Reduction.Accumulator>, _ o1: UnsafeMutablePointer<L.Reduction.Accumulator>,
    _ length: Int, taps: Int, source: (Int) -> UnsafePointer<L.Source>
) {
    typealias R = L.Reduction
    let load = L.load
    let s0 = source(0), s1 = source(1), s2 = source(2)
    switch taps {
    case 2:
        for j in 0..<length { let m = load(s1[j]); o0[j] = R.merge(m, load(s0[j])); o1[j] = R.merge(m, load(s2[j])) }
    case 3:
        let s3 = source(3)
        for j in 0..<length { let m = R.merge(load(s1[j]), load(s2[j])); o0[j] = R.merge(m, load(s0[j])); o1[j] = R.merge(m, load(s3[j])) }
    case 4:
        let s3 = source(3), s4 = source(4)
        for j in 0..<length {
            let m = R.merge(R.merge(load(s1[j]), load(s2[j])), load(s3[j]))
            o0[j] = R.merge(m, load(s0[j])); o1[j] = R.merge(m, load(s4[j]))
        }
    default:
        let s3 = source(3), s4 = source(4), s5 = source(5)
        for j in 0..<length {
            let m = R.merge(R.merge(R.merge(load(s1[j]), load(s2[j])), load(s3[j])), load(s4[j]))
            o0[j] = R.merge(m, load(s0[j])); o1[j] = R.merge(m, load(s5[j]))
        }
    }
}

/// Writes finished outputs from up to 6 sources (after `partial`, when `hasPartial`).
@inline(__always)
func finishPass<L: SourceLoader>(
    _: L.Type, _ output: UnsafeMutablePointer<L.Reduction.Output>, _ length: Int, windowSize: Int, count: Int,
    hasPartial: Bool, _ partial: UnsafePointer<L.Reduction.Accumulator>, _ s0: UnsafePointer<L.Source>, _ s1: UnsafePointer<L.Source>, _ s2: UnsafePointer<L.Source>, _ s3: UnsafePointer<L.Source>, _ s4: UnsafePointer<L.Source>, _ s5: UnsafePointer<L.Source>
) {
    typealias R = L.Reduction
    let o = output, w = windowSize, p = partial, load = L.load
    switch (count, hasPartial) {
    case (1, false): for j in 0..<length { o[j] = R.finish(load(s0[j]), windowSize: w) }
    case (2, false): for j in 0..<length { o[j] = R.finish(R.merge(load(s0[j]), load(s1[j])), windowSize: w) }
    case (3, false): for j in 0..<length { o[j] = R.finish(R.merge(R.merge(load(s0[j]), load(s1[j])), load(s2[j])), windowSize: w) }
    case (4, false): for j in 0..<length { o[j] = R.finish(R.merge(R.merge(R.merge(load(s0[j]), load(s1[j])), load(s2[j])), load(s3[j])), windowSize: w) }
    case (5, false): for j in 0..<length { o[j] = R.finish(R.merge(R.merge(R.merge(R.merge(load(s0[j]), load(s1[j])), load(s2[j])), load(s3[j])), load(s4[j])), windowSize: w) }
    case (_, false): for j in 0..<length { o[j] = R.finish(R.merge(R.merge(R.merge(R.merge(R.merge(load(s0[j]), load(s1[j])), load(s2[j])), load(s3[j])), load(s4[j])), load(s5[j])), windowSize: w) }
    case (1, true): for j in 0..<length { o[j] = R.finish(R.merge(p[j], load(s0[j])), windowSize: w) }
    case (2, true): for j in 0..<length { o[j] = R.finish(R.merge(R.merge(p[j], load(s0[j])), load(s1[j])), windowSize: w) }
    case (3, true): for j in 0..<length { o[j] = R.finish(R.merge(R.merge(R.merge(p[j], load(s0[j])), load(s1[j])), load(s2[j])), windowSize: w) }
    case (4, true): for j in 0..<length { o[j] = R.finish(R.merge(R.merge(R.merge(R.merge(p[j], load(s0[j])), load(s1[j])), load(s2[j])), load(s3[j])), windowSize: w) }
    case (_, true): for j in 0..<length { o[j] = R.finish(R.merge(R.merge(R.merge(R.merge(R.merge(p[j], load(s0[j])), load(s1[j])), load(s2[j])), load(s3[j])), load(s4[j])), windowSize: w) }
    }
}

/// The last step of a window: folds `taps` (through `partial` when there are more than
/// fit one pass) and writes the finished outputs, in the same order as `foldTaps`.
@inline(__always)
func finishTaps<L: SourceLoader>(
    _: L.Type, _ output: UnsafeMutablePointer<L.Reduction.Output>, _ length: Int, partial: UnsafeMutablePointer<L.Reduction.Accumulator>,
    taps: Range<Int>, source: (Int) -> UnsafePointer<L.Source>, windowSize: Int
) {
    typealias R = L.Reduction
    var k = taps.lowerBound
    var hasPartial = false
    if taps.count > sourcesPerPass {
        // Fold all but the last pass's worth into `partial`.
        let split = taps.upperBound - (sourcesPerPass - 1)
        foldTaps(L.self, partial, length, taps: k..<split, first: true, source: source)
        k = split
        hasPartial = true
    }
    let count = taps.upperBound - k
    let s0 = source(k)
    if !hasPartial && count <= 2 {
        // The common small windows, as plain loops the vectoriser always takes.
        let o = output, load = L.load
        if count == 1 {
            for j in 0..<length { o[j] = R.finish(load(s0[j]), windowSize: windowSize) }
        } else {
            let s1 = source(k + 1)
            for j in 0..<length { o[j] = R.finish(R.merge(load(s0[j]), load(s1[j])), windowSize: windowSize) }
        }
        return
    }
    finishPass(L.self, output, length, windowSize: windowSize, count: count, hasPartial: hasPartial, UnsafePointer(partial),
               s0, count > 1 ? source(k + 1) : s0, count > 2 ? source(k + 2) : s0, count > 3 ? source(k + 3) : s0, count > 4 ? source(k + 4) : s0, count > 5 ? source(k + 5) : s0)
}

/// The W reduction position by position, for strided W with many channels and for inputs
/// whose rows are not contiguous. Kept out of line so its channel loop is optimised alone.
@inline(never)
func reducePositions<R: WindowReduction>(
    _: R.Type, _ g: PoolGeometry, row: UnsafePointer<R.Input>, positions: Range<Int>, step: Int, channels: Int,
    into destination: UnsafeMutablePointer<R.Accumulator>
) {
    for (slot, q) in positions.enumerated() {
        let out = destination + slot * channels
        let (lower, upper) = windowBounds(q, stride: step, padding: g.padW, kernel: g.kernelW, length: g.inW)
        let columns = lower..<Swift.max(upper, lower)
        if columns.isEmpty {
            for c in 0..<channels { out[c] = R.identity }
        } else if g.stepC == 1 {
            // All of a position's taps in one pass over its channels, first tap copied.
            foldTaps(InputLoader<R>.self, out, channels, taps: columns, first: true, source: { row + $0 * g.stepW })
        } else {
            for c in 0..<channels { out[c] = R.identity }
            for column in columns {
                let source = row + column * g.stepW
                for c in 0..<channels { out[c] = R.merge(out[c], R.widen(source[c * g.stepC])) }
            }
        }
    }
}

/// Pools one tile. `scratch` holds `plan.scratchCount` accumulators.
func poolTile<R: WindowReduction>(
    _: R.Type, _ g: PoolGeometry, _ plan: TilePlan, _ tile: Tile, input: UnsafePointer<R.Input>,
    output: UnsafeMutablePointer<R.Output>, scratch: UnsafeMutablePointer<R.Accumulator>, progress: (() -> Void)? = nil
) {
    var pass = TilePass<R>(g, plan, tile, input: input, output: output, scratch: scratch)
    pass.run(progress: progress)
}

/// Memory to prefetch, for reading or for writing: `planes` runs of `planeBytes`,
/// `planeStride` bytes apart.
struct PrefetchRegion {
    let start: UnsafeRawPointer
    let planeBytes: Int
    let planes: Int
    let planeStride: Int
    var forWriting = false

    /// Nothing to prefetch (its address is never used).
    static let none = PrefetchRegion(start: UnsafeRawPointer(bitPattern: 64)!, planeBytes: 0, planes: 0, planeStride: 0)
    var isEmpty: Bool { planeBytes * planes == 0 }
}

/// One tile's passes. A struct with methods rather than nested functions: methods of a
/// generic type are specialised with it, where capturing closures may not be.
struct TilePass<R: WindowReduction> {
    let g: PoolGeometry
    let plan: TilePlan
    let tile: Tile
    let input: UnsafePointer<R.Input>
    let output: UnsafeMutablePointer<R.Output>
    let width: WidthPlan
    let positions: Range<Int>
    let channels: Int
    /// Rows are packed at this pitch, so a tile's rows form one contiguous run.
    let rowLength: Int
    let planeLength: Int
    let firstRow: Int
    let rowBlock: UnsafeMutablePointer<R.Accumulator>   // reduced input rows firstRow...
    let planeRing: UnsafeMutablePointer<R.Accumulator>  // kd planes, slot d % kd (depth first: the odd plane's D sums)
    let planeSlot: Int
    let merged: UnsafeMutablePointer<R.Accumulator>
    let paddedRow: UnsafeMutablePointer<R.Accumulator>
    let fusedRow: Bool
    /// Tap k of position q reads column firstColumn + q + k (W reduced at every position): the
    /// tile's windows span `columnSpan` columns from `firstColumn`, of which `inputColumns`
    /// (offsets into the span) are in the input and the rest padding. `interiorPositions` are
    /// those whose windows lie wholly in the input.
    let firstColumn: Int
    let columnSpan: Int
    let inputColumns: Range<Int>
    let interiorPositions: Range<Int>
    /// Whether a plane's rows reduce along W as one run (`reduceRowsAsOneRun`): fused, dense
    /// rows, as many positions as columns (so reduced rows have the input's pitch), few channels.
    let planeRun: Bool
    /// Whether rows are widened once before folding (see WindowReduction.widenOutweighsAPass);
    /// not for subsampled rows, where it measured slower (int64 k3 s2: +15%).
    let widenOnce: Bool
    /// Whether planes reduce along H before W (`reducePlaneHeightFirst`): W reduced at every
    /// position (step 1) and H strided. Decided by the geometry alone, never the tiling, so
    /// every output folds in the same order whatever the tiles.
    let heightFirst: Bool
    var newestPlane = Int.min

    init(_ g: PoolGeometry, _ plan: TilePlan, _ tile: Tile, input: UnsafePointer<R.Input>,
         output: UnsafeMutablePointer<R.Output>, scratch: UnsafeMutablePointer<R.Accumulator>) {
        self.g = g
        self.plan = plan
        self.tile = tile
        self.input = input
        self.output = output
        width = plan.width
        positions = width.positions(tile.ow.lowerBound, tile.ow.upperBound)
        channels = tile.c.count
        rowLength = positions.count * channels
        planeLength = tile.oh.count * rowLength
        firstRow = Swift.max(0, tile.oh.lowerBound * g.strideH - g.padH)
        rowBlock = scratch
        planeRing = scratch + plan.rowBlockRows * plan.rowCapacity
        planeSlot = plan.tileOH * plan.rowCapacity
        merged = planeRing + (plan.depthFirst ? plan.rowBlockRows * plan.rowCapacity : g.kernelD * planeSlot)
        paddedRow = merged + plan.tileOH * plan.rowCapacity
        fusedRow = channels == g.channels && g.stepC == 1 && g.stepW == g.channels
        widenOnce = R.widenOutweighsAPass && !width.subsampled
        heightFirst = width.step == 1 && g.strideH > 1
        firstColumn = positions.lowerBound - g.padW
        columnSpan = positions.count + g.kernelW - 1
        let inputLower = Swift.min(Swift.max(0, -firstColumn), columnSpan)
        inputColumns = inputLower..<Swift.max(Swift.min(columnSpan, g.inW - firstColumn), inputLower)
        let interiorLower = Swift.min(Swift.max(0, -firstColumn), positions.count)
        interiorPositions = interiorLower..<Swift.max(Swift.min(positions.count, g.inW - firstColumn - g.kernelW + 1), interiorLower)
        planeRun = fusedRow && !widenOnce && width.step == 1 && g.channels < 8 && positions.count == g.inW
            && g.stepH == g.inW * g.channels && !interiorPositions.isEmpty
    }

    /// Reduces input row (d, h) along W into `destination`.
    func reduceRow(d: Int, h: Int, into destination: UnsafeMutablePointer<R.Accumulator>) {
        let row = input + tile.n * g.stepN + d * g.stepD + h * g.stepH
        guard fusedRow && width.step == 1 else {
            reducePositions(R.self, g, row: row + tile.c.lowerBound * g.stepC, positions: positions, step: width.step,
                            channels: channels, into: destination)
            return
        }
        // For a fixed tap, the positions read a contiguous run of the fused row.
        let channels = channels, first = firstColumn
        if inputColumns == 0..<columnSpan && !widenOnce {
            foldTaps(InputLoader<R>.self, destination, rowLength, taps: 0..<g.kernelW, first: true,
                     source: { UnsafePointer(row + (first + $0) * channels) })
            return
        }
        // With few channels and wide padding, the edge positions' scalar loops cost more than
        // one more vector pass over the row; otherwise fold the interior straight from the
        // input and the few edge positions one by one.
        if !widenOnce && (channels >= 8 || 4 * g.padW * g.kernelW * 8 <= columnSpan * channels) {
            let interior = interiorPositions
            if !interior.isEmpty {
                let start = interior.lowerBound * channels
                foldTaps(InputLoader<R>.self, destination + start, interior.count * channels, taps: 0..<g.kernelW,
                         first: true, source: { UnsafePointer(row + (first + $0) * channels + start) })
            }
            reduceEdge(0..<interior.lowerBound, row: row, first: first, into: destination)
            reduceEdge(interior.upperBound..<positions.count, row: row, first: first, into: destination)
            return
        }
        // Windows reach into padding, or widening costs more than a pass: widen the row once,
        // with identity where the padding is, and fold every position the same way (the order
        // of taps is unchanged).
        fillPaddingOfPaddedRow()
        let source = row + first * channels
        for j in (inputColumns.lowerBound * channels)..<(inputColumns.upperBound * channels) { paddedRow[j] = R.widen(source[j]) }
        reducePaddedRow(into: destination)
    }

    /// Sets the columns of `paddedRow` that lie in padding to the identity.
    func fillPaddingOfPaddedRow() {
        for j in 0..<(inputColumns.lowerBound * channels) { paddedRow[j] = R.identity }
        for j in (inputColumns.upperBound * channels)..<(columnSpan * channels) { paddedRow[j] = R.identity }
    }

    /// Reduces `paddedRow` (the span's columns, widened) along W into `destination`, every
    /// position the same way.
    func reducePaddedRow(into destination: UnsafeMutablePointer<R.Accumulator>) {
        let padded = paddedRow, channels = channels
        foldTaps(AccumulatorLoader<R>.self, destination, rowLength, taps: 0..<g.kernelW, first: true,
                 source: { UnsafePointer(padded + $0 * channels) })
    }

    /// Reduces input rows `rows` of plane d along W as one vector run over all of them, which
    /// `planeRun` allows: with few channels a row is a few vectors long, and loops per
    /// row would cost more than their folds. Positions outside `interiorPositions` (windows crossing a
    /// row's edge) get sums over the neighbouring row's columns from the run; they are redone
    /// one by one after it. Every position folds the same taps in the same order as `reduceRow`.
    func reduceRowsAsOneRun(d: Int, rows: Range<Int>, outputAhead: PrefetchRegion) {
        guard !rows.isEmpty else { return }
        let block = input + tile.n * g.stepN + d * g.stepD + rows.lowerBound * g.stepH
        let channels = channels, first = firstColumn, interior = interiorPositions
        // From the first row's first interior position to the last row's last one: every read
        // stays within the rows.
        let start = interior.lowerBound * channels
        let length = ((rows.count - 1) * g.inW + interior.upperBound) * channels - start
        inParts(start..<(start + length), prefetching: outputAhead) { part in
            foldTaps(InputLoader<R>.self, rowBlock + part.lowerBound, part.count, taps: 0..<g.kernelW, first: true,
                     source: { UnsafePointer(block + (first + $0) * channels + part.lowerBound) })
        }
        let destination = rowBlock + (rows.lowerBound - firstRow) * rowLength
        reduceEdgeOfRows(InputLoader<R>.self, 0..<interior.lowerBound, rows: rows.count, block: block, first: first,
                         into: destination, store: { $0 })
        reduceEdgeOfRows(InputLoader<R>.self, interior.upperBound..<positions.count, rows: rows.count, block: block, first: first,
                         into: destination, store: { $0 })
    }

    /// Positions `slots` of `rows` consecutive fused rows from `block`, slot by slot: a slot's
    /// taps are the same in every row, so its bounds are found once and the loop over rows
    /// keeps each channel's sum in a register (few channels, see `planeRun`). Rows are
    /// `rowLength` apart in both `block` and `destination` (in a plane run, input rows are as
    /// long as reduced ones); `store` turns each sum into what `destination` holds.
    @inline(__always)
    func reduceEdgeOfRows<L: SourceLoader, Target>(
        _: L.Type, _ slots: Range<Int>, rows: Int, block: UnsafePointer<L.Source>, first: Int,
        into destination: UnsafeMutablePointer<Target>, store: (R.Accumulator) -> Target
    ) where L.Reduction == R {
        let channels = channels, pitch = rowLength
        for slot in slots {
            let column = first + slot
            let taps = tapsInBounds(ofWindowAt: column)
            for c in 0..<channels {
                var source = block + (column + taps.lowerBound) * channels + c
                var out = destination + slot * channels + c
                for _ in 0..<rows {
                    var sum = R.identity
                    var tap = source
                    for _ in taps {
                        sum = R.merge(sum, L.load(tap.pointee))
                        tap += channels
                    }
                    out.pointee = store(sum)
                    source += pitch
                    out += pitch
                }
            }
        }
    }

    /// The taps of a W window starting at input column `column` that fall inside the row.
    func tapsInBounds(ofWindowAt column: Int) -> Range<Int> {
        let (lower, upper) = windowBounds(column, stride: 1, padding: 0, kernel: g.kernelW, length: g.inW)
        return (lower - column)..<(Swift.max(upper, lower) - column)
    }

    /// Positions `slots` of a fused row, each folding only its in-bounds taps.
    func reduceEdge(_ slots: Range<Int>, row: UnsafePointer<R.Input>, first: Int, into destination: UnsafeMutablePointer<R.Accumulator>) {
        guard channels >= 8 else {
            // A channel's taps in a register: the vector loop below would be a chain of
            // stores and reloads when there are only a few channels.
            reduceEdgeOfRows(InputLoader<R>.self, slots, rows: 1, block: row, first: first, into: destination, store: { $0 })
            return
        }
        for slot in slots {
            let out = destination + slot * channels
            let column = first + slot
            let taps = tapsInBounds(ofWindowAt: column)
            for c in 0..<channels { out[c] = R.identity }
            for k in taps {
                let source = row + (column + k) * channels
                for c in 0..<channels { out[c] = R.merge(out[c], R.widen(source[c])) }
            }
        }
    }

    /// One full window of `taps` sources in the order `foldPair` gives it: an even output
    /// (the first of a pair) folds sources 1..<taps then 0, an odd one 0..<taps. The order
    /// follows the output's index, so results do not depend on where tiles begin.
    func foldShared<L: SourceLoader>(_: L.Type, _ destination: UnsafeMutablePointer<R.Accumulator>, _ length: Int, taps: Int,
                                     even: Bool, source: (Int) -> UnsafePointer<L.Source>) where L.Reduction == R {
        foldTaps(L.self, destination, length, taps: 0..<taps, first: true,
                 source: { even ? source(($0 + 1) % taps) : source($0) })
    }

    /// Folds `pairs` pairs of output rows, `pitch` apart, whose windows of `taps` rows (2 to 5)
    /// start one row apart (`foldPair`).
    func foldPairs(_ destination: UnsafeMutablePointer<R.Accumulator>, _ sources: UnsafePointer<R.Accumulator>, pitch: Int,
                   pairs: Int, taps: Int) {
        for pair in 0..<pairs {
            let o0 = destination + 2 * pair * pitch, s0 = sources + 2 * pair * pitch
            foldPair(AccumulatorLoader<R>.self, o0, o0 + pitch, pitch, taps: taps, source: { s0 + $0 * pitch })
        }
    }

    /// Input rows the tile's windows reach.
    var inputRows: Range<Int> { firstRow..<Swift.max(firstRow, Swift.min(g.inH, (tile.oh.upperBound - 1) * g.strideH - g.padH + g.kernelH)) }

    /// Reduces input plane d along W and H into its ring slot, for the tile's rows, prefetching
    /// `outputAhead` for writing meanwhile (in W-first order only: H-first planes are strided,
    /// and their outputs subsampled in scratch, so there is rarely an output to fetch).
    func reducePlane(_ d: Int, outputAhead: PrefetchRegion) {
        if heightFirst {
            reducePlaneHeightFirst(d)
            return
        }
        if planeRun {
            reduceRowsAsOneRun(d: d, rows: inputRows, outputAhead: outputAhead)
        } else {
            inParts(inputRows, prefetching: outputAhead) { part in
                for h in part { reduceRow(d: d, h: h, into: rowBlock + (h - firstRow) * rowLength) }
            }
        }
        reduceAlongH(rowBlock, from: firstRow, rows: tile.oh, into: planeRing + (d % g.kernelD) * planeSlot)
    }

    /// Reduces `block`, rows of a plane reduced along W (or not at all) from input row
    /// `blockRow` on, along H into output rows `rows`, the first at `plane`.
    func reduceAlongH(_ block: UnsafeMutablePointer<R.Accumulator>, from blockRow: Int, rows: Range<Int>,
                      into plane: UnsafeMutablePointer<R.Accumulator>) {
        let rowLength = rowLength
        func row(_ h: Int) -> UnsafePointer<R.Accumulator> { UnsafePointer(block + (h - blockRow) * rowLength) }
        var oh = rows.lowerBound
        while oh < rows.upperBound {
            let out = plane + (oh - rows.lowerBound) * rowLength
            let (h0, h1) = windowBounds(oh, stride: g.strideH, padding: g.padH, kernel: g.kernelH, length: g.inH)
            if g.strideH == 1 && h1 - h0 == g.kernelH {
                // Rows whose windows are all in bounds: output row oh + i takes reduced row
                // h0 + i + k for every tap k.
                var run = 1
                while oh + run < rows.upperBound && oh + run - g.padH + g.kernelH <= g.inH { run += 1 }
                if !foldsInPairs(g.kernelH) {
                    foldTaps(AccumulatorLoader<R>.self, out, run * rowLength, taps: 0..<g.kernelH, first: true,
                             source: { row(h0 + $0) })
                    oh += run
                    continue
                }
                var first = 0
                if oh % 2 == 1 {
                    foldShared(AccumulatorLoader<R>.self, out, rowLength, taps: g.kernelH, even: false, source: { row(h0 + $0) })
                    first = 1
                }
                let pairs = (run - first) / 2
                foldPairs(out + first * rowLength, row(h0 + first), pitch: rowLength, pairs: pairs, taps: g.kernelH)
                if first + 2 * pairs < run {
                    let last = first + 2 * pairs
                    foldShared(AccumulatorLoader<R>.self, out + last * rowLength, rowLength, taps: g.kernelH, even: true,
                               source: { row(h0 + last + $0) })
                }
                oh += run
                continue
            }
            if h0 >= h1 {
                for j in 0..<rowLength { out[j] = R.identity }
            } else {
                foldTaps(AccumulatorLoader<R>.self, out, rowLength, taps: h0..<h1, first: true, source: row)
            }
            oh += 1
        }
    }

    /// Reduces input plane d along H, then W, into its ring slot: with a row stride above 1,
    /// W then runs over the output's rows only, fewer than the input's. Each output row's input
    /// rows are folded (widened) into `paddedRow`, identity where the padding is, and that row
    /// is reduced along W at every position.
    func reducePlaneHeightFirst(_ d: Int) {
        let plane = planeRing + (d % g.kernelD) * planeSlot
        let channels = channels, stepW = g.stepW, stepC = g.stepC
        let base = input + tile.n * g.stepN + d * g.stepD + (firstColumn + inputColumns.lowerBound) * stepW + tile.c.lowerBound * stepC
        let valid = paddedRow + inputColumns.lowerBound * channels, validCount = inputColumns.count * channels
        fillPaddingOfPaddedRow()
        for oh in tile.oh {
            let out = plane + (oh - tile.oh.lowerBound) * rowLength
            let (h0, h1) = windowBounds(oh, stride: g.strideH, padding: g.padH, kernel: g.kernelH, length: g.inH)
            if h0 >= h1 {
                for j in 0..<rowLength { out[j] = R.identity }
                continue
            }
            if stepC == 1 && stepW == channels {
                foldTaps(InputLoader<R>.self, valid, validCount, taps: h0..<h1, first: true,
                         source: { UnsafePointer(base + $0 * g.stepH) })
            } else {
                for j in 0..<validCount { valid[j] = R.identity }
                for h in h0..<h1 {
                    let row = base + h * g.stepH
                    for column in 0..<inputColumns.count {
                        for c in 0..<channels {
                            valid[column * channels + c] = R.merge(valid[column * channels + c], R.widen(row[column * stepW + c * stepC]))
                        }
                    }
                }
            }
            reducePaddedRow(into: out)
        }
    }

    /// Prefetches are spread over this many parts of the finishing pass, so they overlap with
    /// its arithmetic instead of queueing up at once.
    static var prefetchChunks: Int { 16 }

    /// The input rows that the planes new to output planes `od + 1 ... od + count` (those in
    /// the tile) will read, when rows are dense: the finishing pass of `od` touches no input,
    /// so without a prefetch, memory would idle through it.
    func upcomingInput(after od: Int, count: Int = 1) -> PrefetchRegion {
        guard plan.prefetchInput, od + 1 < tile.od.upperBound else { return .none }
        let (_, d1) = windowBounds(od, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
        let last = Swift.min(od + count, tile.od.upperBound - 1)
        let (next0, _) = windowBounds(od + 1, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
        let (_, next1) = windowBounds(last, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
        let first = Swift.max(next0, d1)
        return inputRegion(planes: first..<Swift.max(first, next1), rows: inputRows)
    }

    /// Input rows `rows` of planes `planes` of the tile's batch entry, when rows are dense (a
    /// contiguous run per plane); nothing otherwise.
    func inputRegion(planes: Range<Int>, rows: Range<Int>) -> PrefetchRegion {
        guard g.stepC == 1, g.stepW == g.channels, g.stepH == g.inW * g.channels, !planes.isEmpty, !rows.isEmpty else {
            return .none
        }
        let size = MemoryLayout<R.Input>.stride
        return PrefetchRegion(start: UnsafeRawPointer(input + tile.n * g.stepN + planes.lowerBound * g.stepD + rows.lowerBound * g.stepH),
                              planeBytes: rows.count * g.stepH * size, planes: planes.count, planeStride: g.stepD * size)
    }

    /// Runs `body` over `range` cut into `prefetchChunks` parts, prefetching the matching part of
    /// `region` after each (in one part when there is nothing to prefetch).
    @inline(__always)
    func inParts(_ range: Range<Int>, prefetching region: PrefetchRegion, _ body: (Range<Int>) -> Void) {
        let parts = region.isEmpty ? 1 : Self.prefetchChunks
        for part in 0..<parts {
            body((range.lowerBound + range.count * part / parts)..<(range.lowerBound + range.count * (part + 1) / parts))
            prefetch(region, part: part, of: parts)
        }
    }

    /// Prefetches part `part` of `region` cut into `parts` equal parts.
    func prefetch(_ region: PrefetchRegion, part: Int, of parts: Int) {
        let total = region.planeBytes * region.planes
        guard total > 0 else { return }
        var from = total * part / parts
        let to = total * (part + 1) / parts
        while from < to {
            let plane = from / region.planeBytes, offset = from % region.planeBytes
            let bytes = Swift.min(to - from, region.planeBytes - offset)
            let address = region.start + plane * region.planeStride + offset
            if region.forWriting {
                tpstream_prefetch_write(UnsafeMutableRawPointer(mutating: address), bytes)
            } else {
                tpstream_prefetch(address, bytes)
            }
            from += bytes
        }
    }

    func plane(_ d: Int) -> UnsafePointer<R.Accumulator> { UnsafePointer(planeRing + (d % g.kernelD) * planeSlot) }

    /// Copies every stride-th position of the tile's subsampled rows, finished in `from`, to
    /// the output rows at `to`.
    @inline(__always)
    func copyKeptPositions(_ from: UnsafePointer<R.Output>, to: UnsafeMutablePointer<R.Output>, channels: Int, outputRow: Int) {
        let jump = width.stride * channels
        for oh in 0..<tile.oh.count {
            let source = from + oh * rowLength, destination = to + oh * outputRow
            for ow in 0..<g.outW {
                for c in 0..<channels { destination[ow * channels + c] = source[ow * jump + c] }
            }
        }
    }

    /// Reduces the tile's rows of `merged` (reduced along D and H already) along W and writes
    /// the finished outputs to `out`, prefetching `upcoming` meanwhile: the interior as one
    /// run over all rows, then the edge positions slot by slot, as `reduceRowsAsOneRun` does
    /// (output rows are as long as input rows, see `TilePlan.suitsDepthFirst`).
    func finishAlongW(into out: UnsafeMutablePointer<R.Output>, upcoming: PrefetchRegion) {
        let channels = channels, first = firstColumn, interior = interiorPositions, windowSize = g.windowSize
        let source = UnsafePointer(merged)
        if let vector = plan.vectorFinish {
            // Taps outside a row read as zeros: the edge loops' sums, which start from zero.
            let rowLength = rowLength
            inParts(0..<tile.oh.count, prefetching: upcoming) { part in
                vector.rows(R.self, out + part.lowerBound * rowLength, source + part.lowerBound * rowLength, rows: part.count,
                            rowLength: rowLength, first: first * channels, step: channels, taps: g.kernelW, windowSize: windowSize)
            }
            return
        }
        let start = interior.lowerBound * channels
        let length = ((tile.oh.count - 1) * g.inW + interior.upperBound) * channels - start
        inParts(start..<(start + length), prefetching: upcoming) { part in
            // At most one pass of taps (suitsDepthFirst), so `partial` is never written.
            finishTaps(AccumulatorLoader<R>.self, out + part.lowerBound, part.count, partial: merged, taps: 0..<g.kernelW,
                       source: { source + (first + $0) * channels + part.lowerBound }, windowSize: windowSize)
        }
        let finish = { (sum: R.Accumulator) in R.finish(sum, windowSize: windowSize) }
        reduceEdgeOfRows(AccumulatorLoader<R>.self, 0..<interior.lowerBound, rows: tile.oh.count, block: source, first: first,
                         into: out, store: finish)
        reduceEdgeOfRows(AccumulatorLoader<R>.self, interior.upperBound..<positions.count, rows: tile.oh.count, block: source,
                         first: first, into: out, store: finish)
    }

    /// The tile depth first, for geometries that `TilePlan.suitsDepthFirst`: each output plane
    /// folds its input planes (widened) along D, then H, then W, finishing on the way. Planes
    /// go in pairs that share their middle input planes, in `foldPair`'s order, set by the
    /// plane's parity as for rows. No ring of reduced planes is kept.
    mutating func runDepthFirst(progress: (() -> Void)?) {
        let outputRow = g.outW * g.channels, outputPlane = g.outH * outputRow
        let rows = inputRows
        let planes = input + tile.n * g.stepN + firstRow * g.stepH
        let length = rows.count * g.stepH, kernel = g.kernelD, stepD = g.stepD
        let odd = planeRing
        var od = tile.od.lowerBound
        while od < tile.od.upperBound {
            progress?()
            let (d0, d1) = windowBounds(od, stride: 1, padding: g.padD, kernel: kernel, length: g.inD)
            let out = output + ((tile.n * g.outD + od) * g.outH + tile.oh.lowerBound) * outputRow
            let full = d1 - d0 == kernel
            let paired = full && od % 2 == 0 && od + 1 < tile.od.upperBound && d1 < g.inD
            let source = { (d: Int) in planes + d * stepD }
            if paired {
                foldPair(InputLoader<R>.self, rowBlock, odd, length, taps: kernel, source: { source(d0 + $0) })
            } else if full {
                foldShared(InputLoader<R>.self, rowBlock, length, taps: kernel, even: od % 2 == 0, source: { source(d0 + $0) })
            } else if d0 < d1 {
                foldTaps(InputLoader<R>.self, rowBlock, length, taps: d0..<d1, first: true, source: source)
            } else {
                for j in 0..<length { rowBlock[j] = R.identity }
            }
            // The input new to the next pair is fetched while the last plane finishes. Fetching
            // the output for writing too, as W-first does, did not pay here (k5 s1 p2, 2 threads,
            // medians of 6 runs: float16 1.80 ms without, 1.78 with; bfloat16 2.09 and 2.25).
            reduceAlongH(rowBlock, from: firstRow, rows: tile.oh, into: merged)
            finishAlongW(into: out, upcoming: paired ? .none : upcomingInput(after: od))
            if paired {
                progress?()
                reduceAlongH(odd, from: firstRow, rows: tile.oh, into: merged)
                finishAlongW(into: out + outputPlane, upcoming: upcomingInput(after: od + 1, count: 2))
            }
            od += paired ? 2 : 1
        }
    }

    /// The tile window by window (`TilePlan.suitsWholeWindows`): each output position folds its
    /// in-bounds taps in (d, h, w) order, channels innermost, and finishes. The input rows of
    /// the next output row are fetched meanwhile, in parts spread over the row (k2 s2, 32
    /// channels, float32, one thread: average 3.5 ms with no prefetch, 2.8 with the row fetched
    /// at once, 2.2 spread; max 5.0 at once, 2.35 spread).
    func runWholeWindows(progress: (() -> Void)?) {
        let base = input + tile.n * g.stepN + tile.c.lowerBound
        let channels = channels, windowSize = g.windowSize, partial = rowBlock
        withUnsafeTemporaryAllocation(of: UnsafePointer<R.Input>.self, capacity: g.windowSize) { taps in
            for od in tile.od {
                progress?()
                let (d0, d1) = windowBounds(od, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
                for oh in tile.oh {
                    let (h0, h1) = windowBounds(oh, stride: g.strideH, padding: g.padH, kernel: g.kernelH, length: g.inH)
                    let row = output + ((tile.n * g.outD + od) * g.outH + oh) * g.outW * g.channels + tile.c.lowerBound
                    let (next0, next1) = windowBounds(oh + 1, stride: g.strideH, padding: g.padH, kernel: g.kernelH, length: g.inH)
                    let upcoming = inputRegion(planes: d0..<Swift.max(d0, d1), rows: next0..<Swift.max(next0, next1))
                    // Windows of the same width have their taps at the same offsets from their first column.
                    var tapsWidth = -1, tapsColumn = 0, count = 0
                    inParts(tile.ow, prefetching: upcoming) { part in
                        for ow in part {
                            let (w0, w1) = windowBounds(ow, stride: g.strideW, padding: g.padW, kernel: g.kernelW, length: g.inW)
                            if w1 - w0 != tapsWidth {
                                count = 0
                                for d in d0..<Swift.max(d0, d1) {
                                    for h in h0..<Swift.max(h0, h1) {
                                        for w in w0..<Swift.max(w0, w1) {
                                            taps[count] = UnsafePointer(base + d * g.stepD + h * g.stepH + w * g.stepW)
                                            count += 1
                                        }
                                    }
                                }
                                tapsWidth = w1 - w0
                                tapsColumn = w0
                            }
                            let out = row + ow &* g.channels
                            guard count > 0 else {
                                // Padding may exceed the kernel: a window can lie wholly in it.
                                for c in 0..<channels { out[c] = R.finish(R.identity, windowSize: windowSize) }
                                continue
                            }
                            let shift = (w0 &- tapsColumn) &* g.stepW
                            finishTaps(InputLoader<R>.self, out, channels, partial: partial, taps: 0..<count,
                                       source: { taps[$0] + shift }, windowSize: windowSize)
                        }
                    }
                }
            }
        }
    }

    /// `progress` runs before each output plane.
    mutating func run(progress: (() -> Void)?) {
        if plan.depthFirst {
            runDepthFirst(progress: progress)
            return
        }
        if plan.wholeWindows {
            runWholeWindows(progress: progress)
            return
        }
        let windowSize = g.windowSize
        // Large outputs are finished into scratch and streamed out (see tidepool_stream.h).
        let streaming = plan.streamOutput
        let outputRow = g.outW * g.channels
        // Whole rows fold and finish as one vector run. Subsampled ones may too, finished in
        // scratch (where the accumulators were, so the outputs must fit there) with every
        // stride-th position copied out (see WindowReduction.finishOutweighsACopy).
        let narrowing = MemoryLayout<R.Output>.stride <= MemoryLayout<R.Accumulator>.stride
        let wholeRows = channels == g.channels && tile.ow.count == g.outW
            && (!width.subsampled || (narrowing && R.finishOutweighsACopy))
        let inScratch = streaming || width.subsampled
        for od in tile.od {
            progress?()
            let (d0, d1) = windowBounds(od, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
            let out = output + ((tile.n * g.outD + od) * g.outH + tile.oh.lowerBound) * outputRow
            // The output plane is fetched for writing while the new planes are reduced: the
            // finishing pass then stores into cache instead of waiting on each line.
            var outputAhead = !(wholeRows && !inScratch && plan.prefetchOutput) ? PrefetchRegion.none
                : PrefetchRegion(start: UnsafeRawPointer(out), planeBytes: planeLength * MemoryLayout<R.Output>.stride, planes: 1,
                                 planeStride: 0, forWriting: true)
            for d in stride(from: Swift.max(d0, newestPlane + 1), to: d1, by: 1) {
                reducePlane(d, outputAhead: outputAhead)
                outputAhead = .none
                newestPlane = d
            }
            if wholeRows {
                let target = inScratch ? UnsafeMutableRawPointer(merged).assumingMemoryBound(to: R.Output.self) : out
                if d0 >= d1 {
                    for j in 0..<planeLength { target[j] = R.finish(R.identity, windowSize: windowSize) }
                } else {
                    inParts(0..<planeLength, prefetching: upcomingInput(after: od)) { part in
                        if let vector = plan.vectorFinish, vector.finishesRuns, d1 - d0 <= sourcesPerPass {
                            vector.runs(R.self, target + part.lowerBound, part.count, taps: d0..<d1,
                                        source: { plane($0) + part.lowerBound }, windowSize: windowSize)
                        } else {
                            finishTaps(AccumulatorLoader<R>.self, target + part.lowerBound, part.count, partial: merged + part.lowerBound, taps: d0..<d1,
                                       source: { plane($0) + part.lowerBound }, windowSize: windowSize)
                        }
                    }
                }
                if width.subsampled {
                    // A fixed channel count per case, so each position's copy is unrolled.
                    switch channels {
                    case 1: copyKeptPositions(target, to: out, channels: 1, outputRow: outputRow)
                    case 2: copyKeptPositions(target, to: out, channels: 2, outputRow: outputRow)
                    case 3: copyKeptPositions(target, to: out, channels: 3, outputRow: outputRow)
                    case 4: copyKeptPositions(target, to: out, channels: 4, outputRow: outputRow)
                    default: copyKeptPositions(target, to: out, channels: channels, outputRow: outputRow)
                    }
                } else if streaming {
                    tpstream_copy(out, target, planeLength * MemoryLayout<R.Output>.stride)
                }
                continue
            }
            if d0 >= d1 {
                for j in 0..<planeLength { merged[j] = R.identity }
            } else {
                foldTaps(AccumulatorLoader<R>.self, merged, planeLength, taps: d0..<d1, first: true, source: plane)
            }
            let upcoming = upcomingInput(after: od)
            for oh in tile.oh {
                prefetch(upcoming, part: oh - tile.oh.lowerBound, of: tile.oh.count)
                let source = merged + (oh - tile.oh.lowerBound) * rowLength
                let destination = out + (oh - tile.oh.lowerBound) * outputRow + tile.c.lowerBound
                for ow in tile.ow {
                    let from = source + (ow * width.stride / width.step - positions.lowerBound) * channels
                    let to = destination + ow * g.channels
                    for c in 0..<channels { to[c] = R.finish(from[c], windowSize: windowSize) }
                }
            }
        }
    }
}
