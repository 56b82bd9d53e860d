import TidepoolTypes

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

/// Where each named region of a worker's scratch lies, in accumulators from its start. Each
/// strategy has its own regions (`TilePlan.init` lays them out once); the others are empty.
struct ScratchLayout {
    /// Width first: the input rows of a plane reduced along W (`rowBlockRows` rows). Height
    /// first: the row reduced at every position before a compacted ring keeps the output's
    /// (`KernelPlan.compactsRing`), or the row split into the W stride's phases
    /// (`KernelPlan.foldsPhasesW`: a padded row and up to stride - 1 columns more).
    var reducedRows = 0..<0
    /// Width and height first: the ring of `kernelD` planes reduced along W and H, one slot of
    /// `planeSlot` accumulators per plane, slot d % kernelD.
    var planeRing = 0..<0
    var planeSlot = 0
    /// Width, height and depth first: the tile's output rows folded along D (and H).
    var merged = 0..<0
    /// Width and height first: one row with its padding columns, widened.
    var paddedRow = 0..<0
    /// Depth first: the D sums of the tile's input rows for the even and the odd plane of a pair.
    var evenPlaneSums = 0..<0
    var oddPlaneSums = 0..<0
    /// Whole windows: the partial sums of one position's channels.
    var partial = 0..<0
    /// Block scans along H: the running prefix, one row.
    var prefixRow = 0..<0
    /// Doubling along W: the other of the two rows it alternates between (with `paddedRow`);
    /// pairs along W: the row of pairs.
    var doubledRow = 0..<0
    /// Block scans along D: the prefix of the newest block's planes.
    var prefixPlane = 0..<0
    /// Blocks along H (height first): a ring of kernelH / strideH blocks of rows, one padded
    /// row each. Pairs along H: the second row of a pair, padded as `paddedRow`.
    var blockRows = 0..<0

    /// Accumulators per worker. (No array of the regions: this is asked on every call, and a
    /// tiny pooling's cost is mostly such overhead.)
    var count: Int {
        Swift.max(reducedRows.upperBound, planeRing.upperBound, merged.upperBound, paddedRow.upperBound,
                  evenPlaneSums.upperBound, oddPlaneSums.upperBound, partial.upperBound, prefixRow.upperBound,
                  prefixPlane.upperBound, doubledRow.upperBound, blockRows.upperBound)
    }

    /// Appends a region of `size` accumulators after those laid out so far.
    mutating func next(_ size: Int) -> Range<Int> {
        let start = count
        return start..<(start + size)
    }
}

/// The cut of a pooling into tiles and the scratch each worker needs, for a `KernelPlan`.
public struct TilePlan {
    let kernel: KernelPlan
    let tileOD: Int, tileOH: Int, tileOW: Int, tileC: Int
    let counts: (n: Int, od: Int, oh: Int, ow: Int, c: Int)
    /// Accumulators per reduced row; reduced input rows per plane; a widened input row with
    /// its padding.
    let rowCapacity: Int
    let rowBlockRows: Int
    let paddedRowCapacity: Int
    let scratch: ScratchLayout

    /// Scratch per worker, in bytes: reduced rows and kd planes fit in L2 with room left.
    public static let defaultBudgetBytes = KernelSettings.defaultTileBudgetBytes

    /// Accumulators per worker.
    var scratchCount: Int { scratch.count }

    init(_ g: PoolGeometry, kernel: KernelPlan, accumulatorSize: Int, workers: Int, budgetBytes: Int = defaultBudgetBytes) {
        self.kernel = kernel
        let width = kernel.width
        let depthFirst = kernel.strategy == .depthFirst
        let budget = Swift.max(budgetBytes / accumulatorSize, 1)
        // Rows of scratch per output row of a tile: sh reduced input rows, kd plane rows, one
        // merged row, plus kh - 1 more reduced rows per tile. Depth first: sh rows of D sums
        // for each plane of a pair and one merged row, plus 2 (kh - 1).
        // Block scans add a plane of prefixes along D, and a row of them along H.
        let rowsPerOutputRow = (depthFirst ? 2 * g.strideH + 1 : g.strideH + g.kernelD + 1) + (kernel.scansD ? 1 : 0)
        let rowsHeld = (depthFirst ? 2 : 1) * g.kernelH + (kernel.scansH ? 1 : 0)
        let rowsNeeded = rowsHeld + rowsPerOutputRow
        // Channels are tiled only when one position's channels alone overflow the budget.
        let tileC = depthFirst ? g.channels : Swift.min(g.channels, Swift.max(1, budget / rowsNeeded))
        self.tileC = tileC
        let positionsAll = width.positions(0, g.outW).count
        var positionsFit = Swift.max(1, budget / (rowsNeeded * tileC))
        // Windows one row and one plane tall (1-d pooling) share no rows between tiles, which
        // is what the budget keeps in L2; their tiles are cut so that their few rows (the ring
        // slot, the widened and doubled rows) stay in L1 between the W passes and the finish,
        // as long as a tile keeps 4 kw positions (the kw - 1 columns read twice stay few).
        // Measured: 1-d k3-k7 over 3-64 channels took 10-30% less CPU time than with L2-sized
        // tiles, C=1 k7 and C=64 k11 about the same (docs/performance.md).
        if kernel.rowWindows {
            let rowBudget = Swift.min(budgetBytes, KernelSettings.rowTileBudgetBytes) / accumulatorSize
            positionsFit = Swift.min(positionsFit, Swift.max(rowBudget / (5 * tileC), 4 * g.kernelW, 1))
        }
        // Height first widens the input columns its positions' windows span into `paddedRow`:
        // at a W step above 1, `step` columns per position, which the rows above do not count;
        // positions are cut until that span takes at most half the budget.
        if kernel.strategy == .heightFirst && width.step > 1 {
            positionsFit = Swift.min(positionsFit, Swift.max(1, budget / (2 * tileC * width.step)))
        }
        // As many rows as fit beside the held ones, then evened out so that no tile is a small
        // remainder (tiles of equal cost keep both workers busy to the end).
        func tileRows(_ ow: Int) -> Int {
            let rowsFit = budget / (width.positions(0, Swift.min(ow, g.outW)).count * tileC) - rowsHeld
            return evenSplit(g.outH, largest: Swift.max(1, rowsFit / rowsPerOutputRow))
        }
        var ow: Int
        if depthFirst || positionsFit >= positionsAll {
            ow = g.outW
        } else {
            // Outputs whose positions fit: position span of k outputs is (k - 1) * stride / step + 1.
            ow = Swift.max(1, (positionsFit - 1) * width.step / width.stride + 1)
        }
        // Width first reduces each of a tile's rows along W, the kh - sh rows it shares with the
        // tile above too. Rows so long that few fit (many channels, tall windows) would redo
        // most of that work (k7 on 8192-element rows: 8 rows reduced for every 2 output rows),
        // so such rows are cut along W where that costs less: narrower tiles re-read kw - 1
        // columns instead. Fused rows of 8+ channels only, which stay vectorised when cut.
        if kernel.strategy == .widthFirst && tileC == g.channels && g.channels >= KernelLimits.vectorChannels
            && g.stepC == 1 && g.stepW == g.channels && g.kernelH > g.strideH {
            func cost(_ ow: Int) -> Double {
                let rows = tileRows(ow), positions = width.positions(0, Swift.min(ow, g.outW)).count
                return Double((rows - 1) * g.strideH + g.kernelH) / Double(rows * g.strideH)
                    * Double(positions + g.kernelW - 1) / Double(positions)
            }
            // Halving the width while a tile keeps 2 kw positions; the cheapest, if it saves a
            // fifth, and only where whole rows would reduce twice the rows they need: a cut
            // tile loses the whole-row finish (one vector run, streamed out), which costs more
            // than some redone W work (AvgPool2d k3 s1 p1 on 724-wide rows of 8 channels, cut
            // to 91 positions for 1.06 rows per output row instead of 1.34, ran 1.5x slower;
            // k7, 1.13 instead of 1.6, 10% slower). Streaming the cut rows' short runs was
            // slower still.
            let whole = cost(ow)
            var best = ow, bestCost = whole, candidate = ow
            while candidate > 1 {
                candidate = (candidate + 1) / 2
                guard width.positions(0, Swift.min(candidate, g.outW)).count >= Swift.max(2 * g.kernelW, 8) else { break }
                let c = cost(candidate)
                if c < bestCost { best = candidate; bestCost = c }
            }
            if whole >= 2 && bestCost < 0.8 * whole { ow = best }
        }
        tileOW = ow
        rowCapacity = width.positions(0, Swift.min(tileOW, g.outW)).count * tileC
        let owTiles = (g.outW + tileOW - 1) / tileOW
        let cTiles = (g.channels + tileC - 1) / tileC
        var rows = tileRows(tileOW)
        // A call with fewer tiles than workers, and one output plane per batch entry (depth
        // cannot be split, below): its rows are cut among the workers where each part still
        // has at least twice the rows it shares with its neighbour (a part reduces kh - sh
        // input rows again; with fewer rows per part that costs more than the worker saves).
        let tilesBesideRows = g.batch * owTiles * cTiles
        if workers > 1 && g.outD == 1 && g.outH > 1 && tilesBesideRows > 0 && tilesBesideRows * ((g.outH + rows - 1) / rows) < workers {
            let parts = (workers + tilesBesideRows - 1) / tilesBesideRows
            let cut = evenSplit(g.outH, largest: (g.outH + parts - 1) / parts)
            if cut < rows && cut * g.strideH >= 2 * (g.kernelH - Swift.min(g.strideH, g.kernelH)) { rows = cut }
        }
        tileOH = rows
        let ohTiles = (g.outH + tileOH - 1) / tileOH
        // Split depth only as far as needed to give every worker a few tiles: each block
        // recomputes the (kd - sd) planes it shares with its neighbour.
        let others = g.batch * ohTiles * owTiles * cTiles
        let blocksWanted = (2 * workers + others - 1) / others
        tileOD = evenSplit(g.outD, largest: Swift.max(Swift.min(8, g.outD), (g.outD + blocksWanted - 1) / Swift.max(blocksWanted, 1)))
        counts = (g.batch, (g.outD + tileOD - 1) / tileOD, ohTiles, owTiles, cTiles)
        rowBlockRows = (tileOH - 1) * g.strideH + g.kernelH
        // Width first at a W step above 1 folds its positions from the input, not this row.
        let paddedPositions = rowCapacity / tileC
        paddedRowCapacity = tileC * (kernel.strategy == .heightFirst ? width.columnSpan(positions: paddedPositions, kernel: g.kernelW)
            : paddedPositions + g.kernelW - 1)

        var layout = ScratchLayout()
        switch kernel.strategy {
        case .widthFirst, .heightFirst:
            layout.reducedRows = layout.next(Swift.max(rowBlockRows * rowCapacity,
                                                       kernel.foldsPhasesW ? paddedRowCapacity + tileC * (g.strideW - 1) : 0))
            layout.planeSlot = tileOH * rowCapacity
            layout.planeRing = layout.next(g.kernelD * layout.planeSlot)
            layout.merged = layout.next(tileOH * rowCapacity)
            layout.paddedRow = layout.next(paddedRowCapacity)
        case .depthFirst:
            layout.evenPlaneSums = layout.next(rowBlockRows * rowCapacity)
            layout.oddPlaneSums = layout.next(rowBlockRows * rowCapacity)
            layout.merged = layout.next(tileOH * rowCapacity)
        case .wholeWindows:
            layout.partial = layout.next(tileC)
        }
        if kernel.scansH { layout.prefixRow = layout.next(rowCapacity) }
        if kernel.scansD { layout.prefixPlane = layout.next(tileOH * rowCapacity) }
        if kernel.doublesW || kernel.pairsW { layout.doubledRow = layout.next(paddedRowCapacity) }
        if kernel.blocksH { layout.blockRows = layout.next(g.kernelH / g.strideH * paddedRowCapacity) }
        if kernel.pairsH { layout.blockRows = layout.next(paddedRowCapacity) }
        scratch = layout
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
