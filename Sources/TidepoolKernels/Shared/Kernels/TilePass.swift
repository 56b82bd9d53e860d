import TidepoolTypes

/// Pooling one axis at a time. A box window reduces to a reduction along W, then along H
/// of those rows, then along D of those planes (both folds are associative), so an output
/// costs kw + kh + kd folds instead of kw * kh * kd. Every fold runs over a contiguous
/// row of accumulators — the fused (W, C) row, since channels are innermost — which the
/// compiler vectorises. Reduced rows and planes live in small per-thread rings, and the
/// output is cut into tiles sized to stay in cache, so a call allocates a few hundred KB
/// per thread whatever the tensor's size.
///
/// Every output is folded in an order set by the geometry and the type alone, whatever the
/// tiling (W offsets, or their pairs for sums of 6 to 12 columns over 2+ axes (`pairsW`), then
/// rows by increasing h, then planes by increasing d; H before W in `Strategy.heightFirst`; D,
/// then H, then W in `Strategy.depthFirst`; full windows of 2 to 5 rows or planes at stride 1
/// in the order of `foldPair`, set by the output row's or plane's parity; windows that do not
/// overlap, tap by tap in (d, h, w) order in `Strategy.wholeWindows`), so results do not depend
/// on the thread count. Which strategy and options run is decided in KernelPlan.swift alone.

/// Pools one tile. `scratch` holds `plan.scratchCount` accumulators.
func poolTile<R: WindowReduction>(
    _: R.Type, _ g: PoolGeometry, _ plan: TilePlan, _ tile: Tile, input: UnsafePointer<R.Input>,
    output: UnsafeMutablePointer<R.Output>, scratch: UnsafeMutablePointer<R.Accumulator>, progress: (() -> Void)? = nil
) {
    let pass = TilePass<R>(g, plan, tile, input: input, output: output, scratch: scratch)
    pass.run(progress: progress)
    if g.divisor != .window { pass.redoDivisors() }
}

/// One tile's passes. A struct with methods rather than nested functions: methods of a
/// generic type are specialised with it, where capturing closures may not be. The state and
/// helpers every strategy shares are here; each strategy's passes are in its own file.
struct TilePass<R: WindowReduction> {
    let g: PoolGeometry
    let plan: TilePlan
    let kernel: KernelPlan
    let tile: Tile
    let input: UnsafePointer<R.Input>
    let output: UnsafeMutablePointer<R.Output>
    let width: WidthPlan
    let positions: Range<Int>
    let channels: Int
    /// Rows are packed at this pitch, so a tile's rows form one contiguous run.
    let rowLength: Int
    let planeLength: Int
    /// Accumulators per ring row: the output's positions alone where the plan compacts the
    /// ring (`KernelPlan.compactsRing`), else `rowLength`.
    let ringRow: Int
    let firstRow: Int
    /// The named regions of `plan.scratch` (`ScratchLayout` says which strategy uses which).
    let reducedRows: UnsafeMutablePointer<R.Accumulator>
    let planeRing: UnsafeMutablePointer<R.Accumulator>
    let planeSlot: Int
    let merged: UnsafeMutablePointer<R.Accumulator>
    let paddedRow: UnsafeMutablePointer<R.Accumulator>
    let evenPlaneSums: UnsafeMutablePointer<R.Accumulator>
    let oddPlaneSums: UnsafeMutablePointer<R.Accumulator>
    let partial: UnsafeMutablePointer<R.Accumulator>
    let prefixRow: UnsafeMutablePointer<R.Accumulator>
    let prefixPlane: UnsafeMutablePointer<R.Accumulator>
    let doubledRow: UnsafeMutablePointer<R.Accumulator>
    let blockRows: UnsafeMutablePointer<R.Accumulator>
    /// The tile's rows hold all channels of dense positions, so a row is one contiguous run.
    let fusedRow: Bool
    /// Tap k of position q reads column firstColumn + q * width.step + k: the tile's windows
    /// span `columnSpan` columns from `firstColumn`, of which `inputColumns` (offsets into the
    /// span) are in the input and the rest padding. `interiorPositions` are those whose
    /// windows lie wholly in the input.
    let firstColumn: Int
    let columnSpan: Int
    let inputColumns: Range<Int>
    let interiorPositions: Range<Int>
    /// Whether a plane's rows reduce along W as one run (`reduceRowsAsOneRun`): the plan allows
    /// it and this tile holds whole rows (as many positions as columns, so reduced rows have the
    /// input's pitch) of all channels, with an interior.
    let planeRun: Bool

    init(_ g: PoolGeometry, _ plan: TilePlan, _ tile: Tile, input: UnsafePointer<R.Input>,
         output: UnsafeMutablePointer<R.Output>, scratch: UnsafeMutablePointer<R.Accumulator>) {
        self.g = g
        self.plan = plan
        kernel = plan.kernel
        self.tile = tile
        self.input = input
        self.output = output
        width = kernel.width
        positions = width.positions(tile.ow.lowerBound, tile.ow.upperBound)
        channels = tile.c.count
        rowLength = positions.count * channels
        ringRow = kernel.compactsRing ? tile.ow.count * channels : rowLength
        planeLength = tile.oh.count * ringRow
        firstRow = Swift.max(0, tile.oh.lowerBound * g.strideH - g.padH)
        let layout = plan.scratch
        reducedRows = scratch + layout.reducedRows.lowerBound
        planeRing = scratch + layout.planeRing.lowerBound
        planeSlot = layout.planeSlot
        merged = scratch + layout.merged.lowerBound
        paddedRow = scratch + layout.paddedRow.lowerBound
        evenPlaneSums = scratch + layout.evenPlaneSums.lowerBound
        oddPlaneSums = scratch + layout.oddPlaneSums.lowerBound
        partial = scratch + layout.partial.lowerBound
        prefixRow = scratch + layout.prefixRow.lowerBound
        prefixPlane = scratch + layout.prefixPlane.lowerBound
        doubledRow = scratch + layout.doubledRow.lowerBound
        blockRows = scratch + layout.blockRows.lowerBound
        fusedRow = channels == g.channels && g.stepC == 1 && g.stepW == g.channels
        firstColumn = positions.lowerBound * width.step - g.padW
        columnSpan = width.columnSpan(positions: positions.count, kernel: g.kernelW)
        let inputLower = Swift.min(Swift.max(0, -firstColumn), columnSpan)
        inputColumns = inputLower..<Swift.max(Swift.min(columnSpan, g.inW - firstColumn), inputLower)
        let inside = windowsInside(stride: width.step, padding: g.padW, kernel: g.kernelW, length: g.inW, outputs: positions.upperBound)
            .clamped(to: positions)
        interiorPositions = (inside.lowerBound - positions.lowerBound)..<(inside.upperBound - positions.lowerBound)
        planeRun = kernel.rowsAsOneRun && channels == g.channels && positions.count == g.inW && !interiorPositions.isEmpty
    }

    /// Ring rows hold every position of subsampled rows (not compacted).
    var ringSubsampled: Bool { width.subsampled && !kernel.compactsRing }

    /// Runs the plan's strategy on the tile. `progress` runs before each output plane.
    func run(progress: (() -> Void)?) {
        switch kernel.strategy {
        case .depthFirst: runDepthFirst(progress: progress)
        case .wholeWindows: runWholeWindows(progress: progress)
        case .widthFirst, .heightFirst: runPlaneRing(progress: progress)
        }
    }

    /// Sets the columns of `row` (`paddedRow` or another row of its span) that lie in padding
    /// to the identity.
    func fillPadding(of row: UnsafeMutablePointer<R.Accumulator>) {
        for j in 0..<(inputColumns.lowerBound * channels) { row[j] = R.identity }
        for j in (inputColumns.upperBound * channels)..<(columnSpan * channels) { row[j] = R.identity }
    }

    /// Reduces `padded` (`paddedRow`, or the second row of an H pair: the span's columns,
    /// widened, the identity in the padding) along W into `destination`, every position the
    /// same way.
    func reducePaddedRow(_ padded: UnsafeMutablePointer<R.Accumulator>, into destination: UnsafeMutablePointer<R.Accumulator>) {
        if kernel.pairsW {
            pairAlongW(AccumulatorLoader<R>.self, UnsafePointer(padded), into: destination)
            return
        }
        if kernel.doublesW {
            doubleAlongW(padded, into: destination)
            return
        }
        let channels = channels
        foldTaps(AccumulatorLoader<R>.self, destination, rowLength, taps: 0..<g.kernelW, first: true,
                 source: { UnsafePointer(padded + $0 * channels) })
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

    /// Reduces `block`, rows of a plane reduced along W (or not at all) from input row
    /// `blockRow` on, along H into output rows `rows`, the first at `plane`.
    func reduceAlongH(_ block: UnsafeMutablePointer<R.Accumulator>, from blockRow: Int, rows: Range<Int>,
                      into plane: UnsafeMutablePointer<R.Accumulator>) {
        if kernel.scansH {
            scanAlongH(block, from: blockRow, rows: rows, into: plane)
            return
        }
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
}
