import TidepoolTypes

/// Depth first (`Strategy.depthFirst`).
extension TilePass {
    /// The tile depth first, for geometries that `KernelPlan.suitsDepthFirst`: each output plane
    /// folds its input planes (widened) along D, then H, then W, finishing on the way. Planes
    /// go in pairs that share their middle input planes, in `foldPair`'s order, set by the
    /// plane's parity as for rows. No ring of reduced planes is kept.
    func runDepthFirst(progress: (() -> Void)?) {
        let outputRow = g.outW * g.channels, outputPlane = g.outH * outputRow
        let rows = inputRows
        let planes = input + tile.n * g.stepN + firstRow * g.stepH
        let length = rows.count * g.stepH, taps = g.kernelD, stepD = g.stepD
        let odd = oddPlaneSums
        var od = tile.od.lowerBound
        while od < tile.od.upperBound {
            progress?()
            let (d0, d1) = windowBounds(od, stride: 1, padding: g.padD, kernel: taps, length: g.inD)
            let out = output + ((tile.n * g.outD + od) * g.outH + tile.oh.lowerBound) * outputRow
            let full = d1 - d0 == taps
            let paired = full && od % 2 == 0 && od + 1 < tile.od.upperBound && d1 < g.inD
            let source = { (d: Int) in planes + d * stepD }
            if paired {
                foldPair(InputLoader<R>.self, evenPlaneSums, odd, length, taps: taps, source: { source(d0 + $0) })
            } else if full {
                foldShared(InputLoader<R>.self, evenPlaneSums, length, taps: taps, even: od % 2 == 0, source: { source(d0 + $0) })
            } else if d0 < d1 {
                foldTaps(InputLoader<R>.self, evenPlaneSums, length, taps: d0..<d1, first: true, source: source)
            } else {
                for j in 0..<length { evenPlaneSums[j] = R.identity }
            }
            // The input new to the next pair is fetched while the last plane finishes. The output
            // is not fetched for writing, as width first does: here it did not pay.
            reduceAlongH(evenPlaneSums, from: firstRow, rows: tile.oh, into: merged)
            finishAlongW(into: out, upcoming: paired ? .none : upcomingInput(after: od))
            if paired {
                progress?()
                reduceAlongH(odd, from: firstRow, rows: tile.oh, into: merged)
                finishAlongW(into: out + outputPlane, upcoming: upcomingInput(after: od + 1, count: 2))
            }
            od += paired ? 2 : 1
        }
    }

    /// Reduces the tile's rows of `merged` (reduced along D and H already) along W and writes
    /// the finished outputs to `out`, prefetching `upcoming` meanwhile: the interior as one
    /// run over all rows, then the edge positions slot by slot, as `reduceRowsAsOneRun` does
    /// (output rows are as long as input rows, see `KernelPlan.suitsDepthFirst`).
    func finishAlongW(into out: UnsafeMutablePointer<R.Output>, upcoming: PrefetchRegion) {
        let channels = channels, first = firstColumn, interior = interiorPositions, windowSize = g.windowSize
        let source = UnsafePointer(merged)
        if let vector = kernel.vectorFinish {
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
}
