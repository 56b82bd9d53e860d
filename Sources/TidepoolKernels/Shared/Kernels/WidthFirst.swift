import CTidepoolStream
import CTidepoolVector
import TidepoolTypes

/// Width first (`Strategy.widthFirst`), and the plane ring it shares with height first: each
/// new input plane is reduced along W, then H, into a ring of `kernelD` planes, and each output
/// plane folds its ring planes along D and finishes.
extension TilePass {
    /// The plane ring (width and height first): each output plane reduces the input planes new
    /// to its window (`reducePlane`), then folds its `kernelD` ring planes along D and finishes.
    func runPlaneRing(progress: (() -> Void)?) {
        let windowSize = g.windowSize
        // Large outputs are finished into scratch and streamed out (see tidepool_stream.h).
        let streaming = kernel.streamOutput
        let outputRow = g.outW * g.channels
        // Whole rows fold and finish as one vector run (subsampled ones where the plan says,
        // finished in scratch with every stride-th position copied out).
        let wholeRows = channels == g.channels && tile.ow.count == g.outW && kernel.rowsFinishAsRuns
        let inScratch = streaming || ringSubsampled
        // The newest input plane reduced into the ring, and the first (block scans along D
        // start their prefixes there). Locals, not state of the pass: a method that mutates
        // the pass had its 864 bytes copied before calls it made to methods that read it.
        var newestPlane = Int.min, firstPlane = Int.max
        for od in tile.od {
            progress?()
            let (d0, d1) = windowBounds(od, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
            let out = output + ((tile.n * g.outD + od) * g.outH + tile.oh.lowerBound) * outputRow
            for d in stride(from: Swift.max(d0, newestPlane + 1), to: d1, by: 1) {
                reducePlane(d)
                firstPlane = Swift.min(firstPlane, d)
                if kernel.scansD { scanPlaneAlongD(d, firstPlane: firstPlane) }
                newestPlane = d
            }
            // The window's sources: its ring planes, or with block scans S[d0] and the prefix.
            let scanned = kernel.scansD && d0 < d1 ? scannedPlanes(d0, d1) : nil
            // A 2-d pooling's rows as planes fold a whole window of 2 to 5 rows in the order its
            // H fold gives it (`foldPair`, `foldShared`), so the bits do not depend on the
            // relabelling: an even output row from its second row on and its first last. The
            // first is tap d1, whose ring slot is d0's (slots repeat every kernelD planes), not
            // yet overwritten.
            let rotated = kernel.rowsAsPlanes && scanned == nil && od % 2 == 0 && d1 - d0 == g.kernelD && foldsInPairs(g.kernelD)
            let taps = scanned.map { 0..<$0.count } ?? (rotated ? (d0 + 1)..<(d1 + 1) : d0..<Swift.max(d0, d1))
            if wholeRows {
                if streaming && !ringSubsampled && d0 < d1 {
                    finishStreamed(to: out, taps: taps, scanned: scanned, prefetching: upcomingInput(after: od))
                    continue
                }
                let target = inScratch ? UnsafeMutableRawPointer(merged).assumingMemoryBound(to: R.Output.self) : out
                if d0 >= d1 {
                    for j in 0..<planeLength { target[j] = R.finish(R.identity, windowSize: windowSize) }
                } else {
                    inParts(0..<planeLength, prefetching: upcomingInput(after: od)) { part in
                        finishRun(part, into: target + part.lowerBound, partial: merged + part.lowerBound, taps: taps, scanned: scanned)
                    }
                }
                if ringSubsampled {
                    // Every stride-th position of the rows finished in scratch (whole rows: the
                    // tile's channels are the output's).
                    for oh in 0..<tile.oh.count {
                        let source = UnsafePointer(target) + oh * ringRow, destination = out + oh * outputRow
                        positionsCopied(count: g.outW, jumps: (width.stride * channels, channels), channels: channels, from: source, to: destination)
                    }
                } else if streaming {
                    tpstream_copy(out, target, planeLength * MemoryLayout<R.Output>.stride)
                }
                continue
            }
            // A window of one plane (every 1-d and 2-d pooling) finishes straight from it: its
            // fold into `merged` would be a copy of the plane.
            var reduced = UnsafePointer(merged)
            if d0 >= d1 {
                for j in 0..<planeLength { merged[j] = R.identity }
            } else if taps.count == 1 {
                reduced = windowPlane(taps.lowerBound, scanned)
            } else {
                foldTaps(AccumulatorLoader<R>.self, merged, planeLength, taps: taps, first: true, source: { windowPlane($0, scanned) })
            }
            let upcoming = upcomingInput(after: od)
            // Reduced at the output positions, of all channels: each tile row's outputs are one
            // contiguous run (one vector loop, where a loop per position with a division in it
            // cost 1-d pooling with few channels up to 3x its floor).
            let runs = !ringSubsampled && channels == g.channels
            for oh in tile.oh {
                upcoming.fetch(part: oh - tile.oh.lowerBound, of: tile.oh.count)
                let source = reduced + (oh - tile.oh.lowerBound) * ringRow
                let destination = out + (oh - tile.oh.lowerBound) * outputRow + tile.c.lowerBound
                if runs {
                    let from = source  // a row's positions start at the tile's first output
                    let to = destination + tile.ow.lowerBound * g.channels, count = tile.ow.count * channels
                    if streaming && kernel.rowWindows && reduced != UnsafePointer(merged)
                        && MemoryLayout<R.Output>.stride == MemoryLayout<R.Accumulator>.stride {
                        // A 1-d tile's outputs, one run of a few KB, finished into `merged` (free:
                        // the window is its one plane) and streamed out: 6-19% faster where
                        // outputs are as wide as the sums (float32/64, any max). Not where they
                        // narrow (16-bit averages were 10-20% slower), nor for cut 2-d rows,
                        // whose shorter runs were slower streamed (`TilePlan`).
                        let staged = UnsafeMutableRawPointer(merged).assumingMemoryBound(to: R.Output.self)
                        for j in 0..<count { staged[j] = R.finish(from[j], windowSize: windowSize) }
                        tpstream_copy(to, staged, count * MemoryLayout<R.Output>.stride)
                        continue
                    }
                    for j in 0..<count { to[j] = R.finish(from[j], windowSize: windowSize) }
                    continue
                }
                // Position ow is ow * stride / step: ow itself, or ow * stride in subsampled rows.
                let ow0 = tile.ow.lowerBound
                let from = source + (ow0 * width.stride / width.step - positions.lowerBound) * channels
                let to = destination + ow0 * g.channels
                if ringSubsampled && channels == g.channels && R.finishKeepsBits && R.Output.self == R.Accumulator.self {
                    // The kept maxima copied out position by position, as they are. Large
                    // outputs of whole rows without D windows gather them into `merged` and
                    // stream the row out: stored in place, each line of the output was read
                    // first, and at a quarter of the input (strides 2 along H and W) that read
                    // cost more than the extra pass (MaxPool2d k3 s2 of 8 float32 channels
                    // took 1.1x as long). Behind a D window, whose output is an eighth of the
                    // input, it did not pay (MaxPool3d k3 s2 of 4 float32 channels, 1.05x
                    // slower streamed; docs/performance.md).
                    let count = tile.ow.count
                    if streaming && count == g.outW && g.kernelD == 1 {
                        positionsCopied(count: count, jumps: (width.stride * channels, channels), channels: channels, from: from, to: merged)
                        tpstream_copy(to, merged, count * channels * MemoryLayout<R.Output>.stride)
                        continue
                    }
                    let kept = UnsafeMutableRawPointer(to).assumingMemoryBound(to: R.Accumulator.self)
                    positionsCopied(count: count, jumps: (width.stride * channels, channels), channels: channels, from: from, to: kept)
                    continue
                }
                if ringSubsampled && channels == g.channels && R.finishOutweighsACopy {
                    // The kept sums gathered into one run at the start of `merged`, then finished
                    // as one vector loop: finished position by position, a conversion's scalar
                    // rounding per element cost about as much as folding the row. In place
                    // where `from` lies in `merged`: each sum moves to an offset at or below its
                    // own, after every sum read before it (later rows lie past the run).
                    let count = tile.ow.count * channels
                    positionsCopied(count: tile.ow.count, jumps: (width.stride * channels, channels), channels: channels, from: from, to: merged)
                    for j in 0..<count { to[j] = R.finish(merged[j], windowSize: windowSize) }
                    continue
                }
                channelsByPosition(count: tile.ow.count, jumps: ((ringSubsampled ? width.stride : 1) * channels, g.channels), channels: channels) { a, b in
                    to[b] = R.finish(from[a], windowSize: windowSize)
                }
            }
        }
    }

    /// Finishes accumulators `run` of the output plane's window (`taps` of `windowPlane`) into
    /// `target`, `partial` holding sums between passes (it may be where `target` is: the
    /// finished values fit where their accumulators were).
    @inline(__always)
    func finishRun(_ run: Range<Int>, into target: UnsafeMutablePointer<R.Output>, partial: UnsafeMutablePointer<R.Accumulator>,
                   taps: Range<Int>, scanned: (count: Int, first: UnsafePointer<R.Accumulator>, second: UnsafePointer<R.Accumulator>)?) {
        if let vector = kernel.vectorFinish, taps.count <= sourcesPerPass {
            vector.runs(R.self, target, run.count, taps: taps, source: { windowPlane($0, scanned) + run.lowerBound },
                        windowSize: g.windowSize)
        } else {
            finishTaps(AccumulatorLoader<R>.self, target, run.count, partial: partial, taps: taps,
                       source: { windowPlane($0, scanned) + run.lowerBound }, windowSize: g.windowSize)
        }
    }

    /// Bytes of output finished into scratch at a time and streamed out (`finishStreamed`):
    /// a small part of L1, beside the lines the sources stream through.
    static var streamedChunkBytes: Int { 4096 }

    /// Finishes the tile's output plane (whole rows, `planeLength` outputs at `out`) a chunk at
    /// a time into the start of `merged` and streams each chunk out while it is in L1: finished
    /// whole into scratch first, the plane went through L2 twice more (stored, then read back
    /// by the copy). Chunks end on the output's cache lines (where `out` is aligned to its
    /// type), so no line is written by two streams. `region` is prefetched in
    /// `prefetchChunks` parts spread over the pass, as `inParts` spreads them.
    func finishStreamed(to out: UnsafeMutablePointer<R.Output>, taps: Range<Int>,
                        scanned: (count: Int, first: UnsafePointer<R.Accumulator>, second: UnsafePointer<R.Accumulator>)?,
                        prefetching region: PrefetchRegion) {
        let size = MemoryLayout<R.Output>.stride, address = Int(bitPattern: out)
        let buffer = UnsafeMutableRawPointer(merged).assumingMemoryBound(to: R.Output.self)
        // Outputs before the first line boundary: they go with the first chunk.
        let lead = address % size == 0 ? ((64 - (address & 63)) & 63) / size : 0
        let chunk = Self.streamedChunkBytes / size
        let parts = region.isEmpty ? 0 : Self.prefetchChunks
        var cut = PartCuts(region.planeBytes * region.planes, Swift.max(parts, 1))
        var start = 0, prefetched = 0
        while start < planeLength {
            let end = Swift.min(planeLength, (start == 0 ? lead : start) + chunk)
            finishRun(start..<end, into: buffer, partial: merged, taps: taps, scanned: scanned)
            tpstream_copy(out + start, buffer, (end - start) * size)
            while prefetched < parts && (prefetched + 1) * planeLength <= end * parts {
                region.fetch(bytes: cut.next())
                prefetched += 1
            }
            start = end
        }
    }

    /// Reduces input plane d along W and H into its ring slot, for the tile's rows, prefetching
    /// the next plane meanwhile where the plan says (`planeAfter`).
    func reducePlane(_ d: Int) {
        if kernel.strategy == .heightFirst {
            reducePlaneHeightFirst(d)
            return
        }
        // Rows that H leaves as they are (one tap, stride 1, no padding, as a 2-d pooling's
        // rows run as planes: `KernelPlan.rowsAsPlanes`) are the plane's output rows: they are
        // reduced along W straight into its ring slot, not copied there from `reducedRows`.
        let rowsAreOutputs = g.kernelH == 1 && g.strideH == 1 && g.padH == 0
        let target = rowsAreOutputs ? ringSlot(d) : reducedRows
        let ahead = planeAfter(d)
        if planeRun {
            reduceRowsAsOneRun(d: d, rows: inputRows, into: target, inputAhead: ahead)
        } else {
            inParts(inputRows, prefetching: ahead) { part in
                for h in part { reduceRow(d: d, h: h, into: target + (h - firstRow) * rowLength) }
            }
        }
        if !rowsAreOutputs { reduceAlongH(reducedRows, from: firstRow, rows: tile.oh, into: ringSlot(d)) }
    }

    /// The ring slot of input plane d.
    func ringSlot(_ d: Int) -> UnsafeMutablePointer<R.Accumulator> { planeRing + (d % g.kernelD) * planeSlot }

    func plane(_ d: Int) -> UnsafePointer<R.Accumulator> { UnsafePointer(ringSlot(d)) }

    /// Tap k of an output plane's window: ring plane k, or the k-th of `scanned`'s sources.
    @inline(__always)
    func windowPlane(_ k: Int, _ scanned: (count: Int, first: UnsafePointer<R.Accumulator>, second: UnsafePointer<R.Accumulator>)?)
        -> UnsafePointer<R.Accumulator> {
        guard let scanned else { return plane(k) }
        return k == 0 ? scanned.first : scanned.second
    }

    /// Reduces input row (d, h) along W into `destination`.
    func reduceRow(d: Int, h: Int, into destination: UnsafeMutablePointer<R.Accumulator>) {
        let row = input + tile.n * g.stepN + d * g.stepD + h * g.stepH
        if kernel.pairsW {
            // Every position through the pairs, whatever the layout and the tile (a sum's order
            // is the pairs' everywhere): straight from a fused row whose span is all input,
            // else from the span widened into `paddedRow`.
            if fusedRow && inputColumns == 0..<columnSpan && !kernel.widenOnce {
                pairAlongW(InputLoader<R>.self, UnsafePointer(row + firstColumn * channels), into: destination)
                return
            }
            if fusedRow {
                widenIntoPaddedRow(0..<columnSpan, row: row)
            } else {
                gatherIntoPaddedRow(row + tile.c.lowerBound * g.stepC)
            }
            reducePaddedRow(paddedRow, into: destination)
            return
        }
        guard fusedRow && width.step == 1 else {
            reducePositions(R.self, g, row: row + tile.c.lowerBound * g.stepC, positions: positions, width: width,
                            channels: channels, into: destination)
            return
        }
        // For a fixed tap, the positions read a contiguous run of the fused row.
        let channels = channels, first = firstColumn
        if inputColumns == 0..<columnSpan && !kernel.widenOnce && !kernel.doublesW {
            foldTaps(InputLoader<R>.self, destination, rowLength, taps: 0..<g.kernelW, first: true,
                     source: { UnsafePointer(row + (first + $0) * channels) })
            return
        }
        // With few channels and wide padding, the edge positions' scalar loops cost more than
        // one more vector pass over the row; otherwise fold the interior straight from the
        // input and the few edge positions one by one.
        if !kernel.widenOnce && !kernel.doublesW
            && (channels >= KernelLimits.vectorChannels || 4 * g.padW * g.kernelW * 8 <= columnSpan * channels) {
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
        // The max doubles along W from the row itself (its first level reads each input twice,
        // so not where widening costs more than a pass).
        if kernel.doublesW && !kernel.widenOnce {
            doubleAlongW(row: row, into: destination)
            return
        }
        // Windows reach into padding or widening costs more than a pass: widen the row once,
        // with identity where the padding is, and reduce every position the same way (the
        // order of taps is unchanged).
        widenIntoPaddedRow(0..<columnSpan, row: row)
        reducePaddedRow(paddedRow, into: destination)
    }

    /// Reduces input rows `rows` of plane d (from `firstRow` on) along W into `reduced`, at
    /// `rowLength` apart, as one vector run over all of them, which `planeRun` allows: with few
    /// channels a row is a few vectors long, and loops per row would cost more than their folds.
    /// Positions outside `interiorPositions` (windows crossing a row's edge) get sums over the
    /// neighbouring row's columns from the run; they are redone one by one after it. Every position
    /// folds the same taps in the same order as `reduceRow`.
    func reduceRowsAsOneRun(d: Int, rows: Range<Int>, into reduced: UnsafeMutablePointer<R.Accumulator>,
                            inputAhead: PrefetchRegion) {
        guard !rows.isEmpty else { return }
        let block = input + tile.n * g.stepN + d * g.stepD + rows.lowerBound * g.stepH
        let channels = channels, first = firstColumn, interior = interiorPositions
        // From the first row's first interior position to the last row's last one: every read
        // stays within the rows.
        let start = interior.lowerBound * channels
        let length = ((rows.count - 1) * g.inW + interior.upperBound) * channels - start
        inParts(start..<(start + length), prefetching: inputAhead) { part in
            foldTaps(InputLoader<R>.self, reduced + part.lowerBound, part.count, taps: 0..<g.kernelW, first: true,
                     source: { UnsafePointer(block + (first + $0) * channels + part.lowerBound) })
        }
        let destination = reduced + (rows.lowerBound - firstRow) * rowLength
        reduceEdgeOfRows(InputLoader<R>.self, 0..<interior.lowerBound, rows: rows.count, block: block, first: first,
                         into: destination, store: { $0 })
        reduceEdgeOfRows(InputLoader<R>.self, interior.upperBound..<positions.count, rows: rows.count, block: block, first: first,
                         into: destination, store: { $0 })
    }

    /// Columns `columns` of the tile's span (offsets from `firstColumn`) of input row `row`,
    /// widened into `paddedRow` at the same offsets, the identity where they lie in padding.
    func widenIntoPaddedRow(_ columns: Range<Int>, row: UnsafePointer<R.Input>) {
        let channels = channels, padded = paddedRow
        let lower = Swift.min(Swift.max(columns.lowerBound, inputColumns.lowerBound), columns.upperBound)
        let upper = Swift.max(Swift.min(columns.upperBound, inputColumns.upperBound), lower)
        let source = row + firstColumn * channels
        for j in (columns.lowerBound * channels)..<(lower * channels) { padded[j] = R.identity }
        for j in (lower * channels)..<(upper * channels) { padded[j] = R.widen(source[j]) }
        for j in (upper * channels)..<(columns.upperBound * channels) { padded[j] = R.identity }
    }

    /// The tile's span of a row in any layout (`row` at the tile's first channel), widened
    /// into `paddedRow`, the identity where the padding is.
    func gatherIntoPaddedRow(_ row: UnsafePointer<R.Input>) {
        fillPadding(of: paddedRow)
        let channels = channels, padded = paddedRow, stepW = g.stepW, stepC = g.stepC
        for column in inputColumns {
            let source = row + (firstColumn + column) * stepW
            for c in 0..<channels { padded[column * channels + c] = R.widen(source[c * stepC]) }
        }
    }

    /// Positions `slots` of a fused row, at one of its ends, each folding only its in-bounds taps.
    func reduceEdge(_ slots: Range<Int>, row: UnsafePointer<R.Input>, first: Int, into destination: UnsafeMutablePointer<R.Accumulator>) {
        guard !slots.isEmpty else { return }
        guard channels >= KernelLimits.vectorChannels else {
            // A channel's taps in a register: the vector loop below would be a chain of
            // stores and reloads when there are only a few channels.
            reduceEdgeOfRows(InputLoader<R>.self, slots, rows: 1, block: row, first: first, into: destination, store: { $0 })
            return
        }
        // The slots' columns are widened into `paddedRow` (at their offsets in the span, the
        // identity where the padding is) and folded as one run, like the interior. A loop per
        // position and tap over a run-time channel count cost more than the interior's fold
        // when windows are wide (k11 on rows of 81 positions: 10 edge positions of 81).
        // Padding taps add the identity, which leaves every sum and maximum as the in-bounds
        // taps alone give it.
        let channels = channels, padded = paddedRow
        widenIntoPaddedRow(slots.lowerBound..<(slots.upperBound + g.kernelW - 1), row: row)
        foldTaps(AccumulatorLoader<R>.self, destination + slots.lowerBound * channels, slots.count * channels, taps: 0..<g.kernelW,
                 first: true, source: { UnsafePointer(padded + (slots.lowerBound + $0) * channels) })
    }
}

/// The W reduction at positions `step` columns apart (strided W whose span of channels is too
/// wide to reduce every position, and rows that are not contiguous). Kept out of line so its
/// loops are optimised alone.
///
/// Positions whose windows lie in the row, with channels contiguous, fold their channels in
/// registers (`foldPositions`); folding each position's taps by `foldTaps`, a loop over a
/// run-time 3 to 6 channels per pass, cost 6-8 times the byte floor on such rows. The others,
/// at the row's ends, fold their in-bounds taps one position at a time. Both take each
/// window's taps left to right from its first in-bounds one, so the bits are those of a plain
/// left fold either way.
@inline(never)
func reducePositions<R: WindowReduction>(
    _: R.Type, _ g: PoolGeometry, row: UnsafePointer<R.Input>, positions: Range<Int>, width: WidthPlan, channels: Int,
    into destination: UnsafeMutablePointer<R.Accumulator>
) {
    let step = width.step
    // Positions whose windows start at or after column 0 and end at or before inW (none when
    // the kernel is longer than the part of the padded row that holds input).
    let lowest = Swift.max((g.padW + step - 1) / step, positions.lowerBound)
    let highest = Swift.min(g.inW + g.padW >= g.kernelW ? (g.inW + g.padW - g.kernelW) / step + 1 : 0, positions.upperBound)
    let inner = g.stepC == 1 && lowest < highest ? lowest..<highest : positions.lowerBound..<positions.lowerBound

    /// Position `q`'s in-bounds taps, one position.
    func reduceOne(_ q: Int) {
        let out = destination + (q - positions.lowerBound) * channels
        let (lower, upper) = windowBounds(q, stride: step, padding: g.padW, kernel: g.kernelW, length: g.inW)
        let columns = lower..<Swift.max(upper, lower)
        if columns.isEmpty {
            for c in 0..<channels { out[c] = R.identity }
        } else if g.stepC == 1 {
            foldPositions(InputLoader<R>.self, row + lower * g.stepW, count: 1, jump: 0, tapStep: g.stepW, taps: columns.count,
                          channels: channels, into: out)
        } else {
            for c in 0..<channels { out[c] = R.identity }
            for column in columns {
                let source = row + column * g.stepW
                for c in 0..<channels { out[c] = R.merge(out[c], R.widen(source[c * g.stepC])) }
            }
        }
    }
    // In the row's order: the leading positions' columns are the row's first, and folded after
    // the rest they were loads the hardware's prefetch had passed by (AvgPool3d k9 s9 of 64
    // uint8 channels took 1.4-1.7x as long at p3 as at p0 from memory, the same in cache).
    for q in positions.lowerBound..<inner.lowerBound { reduceOne(q) }
    if !inner.isEmpty {
        let out = destination + (inner.lowerBound - positions.lowerBound) * channels
        let first = row + (inner.lowerBound * step - g.padW) * g.stepW
        widenedInChunks(R.self, first, count: inner.count, step: step, stepW: g.stepW, kernel: g.kernelW, channels: channels,
                        splitsPhases: width.splitsPhases, rowEnd: row + g.inW * g.stepW, into: out)
    }
    for q in inner.upperBound..<positions.upperBound { reduceOne(q) }
}

/// `count` positions' `ends` less their `starts` (`jump` elements apart, 9 to 32 channels
/// contiguous, 2 to 7 past a multiple of 8) into `destination` (`channels` per position), as
/// vectors of 8, the last ending at the last channel (a channel taken twice stores the same
/// difference twice). LLVM's loop over the run-time channel count moved a few sums at a time
/// (4 16-bit sums, 8 64-bit) and left the rest to a scalar loop (AvgPool2d k4 s3 p1 of 15
/// uint16 channels took 1.14x as long, k7 s3 p3 of 12 uint8 1.11x, AvgPool3d k5 s3 p2 of 12
/// int32 1.06x); at multiples of 8 its loop was as fast, and with one channel past them
/// faster (AvgPool3d k3 s2 p1 of 9 int8 channels took 1.06x as long as vectors). Those cells
/// were measured before the wider subsampled spans of `WidthPlan.span` and now subsample; this
/// serves spans past the type's (16- and 32-bit sums past 64, byte sums past 128) and rows
/// alone of 32-bit sums (not measured apart since).
@inline(__always)
func differencesAsVectors<R: WindowReduction>(
    _: R.Type, ends: UnsafePointer<R.Accumulator>, starts: UnsafePointer<R.Accumulator>, count: Int, jump: Int, channels: Int,
    into destination: UnsafeMutablePointer<R.Accumulator>
) {
    typealias V = SIMD8<R.Accumulator>
    let last = channels - V.scalarCount
    for i in 0..<count {
        let end = ends + i &* jump, start = starts + i &* jump, out = destination + i * channels
        var c = 0
        while true {
            let at = Swift.min(c, last)
            let difference = unmergeEight(R.self, loadEight(AccumulatorLoader<R>.self, end + at), loadEight(AccumulatorLoader<R>.self, start + at))
            UnsafeMutableRawPointer(out + at).storeBytes(of: difference, as: V.self)
            if at == last { break }
            c += V.scalarCount
        }
    }
}

/// `count` positions `step` columns apart (columns `stepW` elements apart, channels contiguous),
/// each folding `kernel` columns from `first`, into `destination` (`channels` per position).
/// Inputs that widen to another type are widened a chunk of positions at a time into a buffer
/// on the stack, in vector loops, and folded from there: widened tap by tap, a float16's
/// conversion went through one register for every element (a dependency chain from one to the
/// next), slower than the per-position folds; each input is also widened once instead of once
/// per window holding it. Integer sums (`unmergesExactly`) of windows that overlap or touch
/// take the differences of running sums over the chunk instead: the same exact sums. Sums of
/// windows that touch, and float sums of windows that overlap whose widening is cheap, of more
/// than 8 channels, fold straight from the row.
@inline(__always)
func widenedInChunks<R: WindowReduction>(
    _: R.Type, _ first: UnsafePointer<R.Input>, count: Int, step: Int, stepW: Int, kernel: Int, channels: Int,
    splitsPhases: Bool, rowEnd: UnsafePointer<R.Input>, into destination: UnsafeMutablePointer<R.Accumulator>
) {
    // Rows split into phases (below) where the plan says (`WidthPlan.splitsPhases`), of units
    // `splitIntoPhases` moves whole: 8-bit averages split take no running sums. The plan
    // knows the row's channels; a tile may hold fewer (one of two, on a tiny tile budget),
    // and then its columns are not contiguous units.
    let splits = splitsPhases && stepW == channels && [1, 2, 4, 8].contains(channels * MemoryLayout<R.Input>.stride)
    // Sums of windows that touch (kernel == step), of more than 8 channels, fold straight
    // from the row (`foldManyChannels`, which widens 8 channels at a time as it loads them):
    // each input lies in one window, so it is widened once either way, and widened into the
    // buffer first, or summed into running sums, each took a store and a load more
    // (AvgPool3d k3 s3 p1 of 12 int32 channels took 1.65x as long, k4 s4 p1 of 12 bfloat16
    // 2x, AvgPool2d k10 s10 p2 of 12 float16 1.65x). Not maxima (MaxPool2d k10 s10 p2 of 12
    // float16 took 1.15x as long straight), nor windows with gaps between them (AvgPool2d
    // k8 s11 p4 of 24 bfloat16 1.4x, MaxPool2d 2.3x). (Measured before the wider subsampled
    // spans of `WidthPlan.span`: k3 s3 and k4 s4 of 12 channels now subsample, faster still;
    // spans past the type's, as k10 s10 of 12 float16, still come here.)
    // Float sums of windows that overlap too (float16 and bfloat16 averages; float32 and
    // float64 widen nothing and fold from the row anyway): converting an input once per window
    // that holds it, as 8 lanes in one or two instructions, cost less than storing it widened
    // and loading it back for each window. 64 MiB, 1 thread, ms, best of two rounds, one build
    // switched, widened vs straight: AvgPool3d k11 s5 p4 of 24 bfloat16 channels 9.6 vs 7.1,
    // k9 s4 p4 of 24 float16 12.0 vs 8.1, k7 s4 p3 of 40 bfloat16 10.8 vs 8.3, AvgPool2d k5
    // s3 p2 of 48 float16 10.4 vs 8.0, AvgPool1d k9 s4 p4 of 24 float16 10.5 vs 5.1, k3 s2 p1
    // of 128 float16 14.7 vs 6.8; AvgPool2d k7 s3 p3 of 16 float16 8.3 vs 8.4. The same
    // left fold of each window's taps either way, so the same bits. Not where widening costs
    // more than a pass (`widenOutweighsAPass`: 64-bit integer averages, summed in Double):
    // straight, AvgPool2d k7 s3 p3 of 16 int64 channels took 1.3x as long, AvgPool3d k5 s2 p2
    // of 12 1.2x, AvgPool1d k9 s4 p4 of 24 uint64 1.4x.
    let straight = !R.mergesOverlaps && (kernel == step || (kernel > step && !R.unmergesExactly && !R.widenOutweighsAPass))
        && channels > KernelLimits.vectorChannels
    // Windows that overlap or touch, of sums exact in any order: differences of running sums,
    // one merge per input and one unmerge per output instead of kernel / step merges per
    // input (a stand-alone copy: 5 int8 channels at k10 s4 took half the time). The running
    // sums start at the identity, one more column than the chunk's.
    let differences = R.unmergesExactly && kernel >= step && !splits && !straight
    // Other sums of 3 to 8 channels (scalar folds in `foldPositions`) widen the chunk
    // into `step` phases, phase r holding columns r, r + step, ...: for a fixed tap, the
    // chunk's positions then read one contiguous run of a phase, and the taps fold over the
    // whole run (`foldTaps`, vector loops over positions and channels alike) instead of
    // position by position. Each phase is rounded up to whole columns: up to `step - 1`
    // more. Not for the maxima's vector folds or more than 8 channels (MaxPool1d k7 s5 C=6
    // float16 took 1.38x as long, AvgPool2d k9 s5 C=16 float16 1.6x: short runs of a row's
    // few positions).
    // 1 or 2 channels of 16-bit inputs, dense, at a step of 2 to 16 whose span of channels
    // is at most `KernelLimits.subsampledSpan` (rows alone of float16 and bfloat16 averages,
    // of 8-bit integer averages at steps 2 to 4, and of 16- and 32-bit integer averages
    // where the AVX2 transposes take the step: `WidthPlan`, `splitsRowsIntoPhases`):
    // the chunk's columns are split into phases as they lie, by whole vectors
    // (`splitIntoPhases`), and each tap converts as it folds, kernel / step conversions per
    // input where every position's fold took kernel. Split a column or two at a time,
    // widened, they were slower than the positions' folds (AvgPool1d k5 s9 C=2 float16 took
    // 1.14x as long), and widened before the split no faster than every position's fold.
    let phases = !differences && !R.foldsChannelsAsVector && ((3...KernelLimits.vectorChannels).contains(channels) || splits)
    // Positions per chunk: their windows' columns fit the buffer (none when one window's do
    // not, or the input needs no widening, or folds straight from the row).
    // Columns widened as vectors of 8 into phases (below) store up to 5 lanes past the last
    // phase's columns: two more columns of room for 3 channels or more.
    // Running sums that store whole vectors (`runningSumsStored`) need room for the last
    // column's lanes past its channels, in columns.
    let spill = phases && !splits ? 2 : differences ? (runningSumsStored(channels: channels) - 1) / channels : 0
    let spare = KernelLimits.widenedChunk / channels - kernel - (differences ? 1 : 0) - (phases ? step - 1 : 0) - spill
    guard R.Input.self != R.Accumulator.self && spare >= 0 && !straight else {
        foldPositions(InputLoader<R>.self, first, count: count, jump: step &* stepW, tapStep: stepW, taps: kernel,
                      channels: channels, into: destination)
        return
    }
    // Whole groups of 16 positions per chunk where the buffer holds that many: the folds'
    // vector loops then end with the chunk, and only the row's last chunk leaves positions to
    // their element-by-element remainder loops (six of a chunk's 510 float16 positions at
    // k6 s4, each a chain of dependent conversions and adds, took a third of the fold's time).
    let fits = spare / step + 1
    // Chunks that fetch the row's next columns while they are reduced: the hardware's prefetch
    // alone left the split, and the widening, waiting on memory. Running sums too, but for
    // bytes of 8+ channels. 64 MiB, 1 thread, ms, without and with, best of 3-4 alternated
    // rounds of one build: AvgPool1d k6 s3 p2 of 7 int16 channels 13.7 vs 11.3, of 32 int16
    // 11.8 vs 9.1, of 16 int32 12.6 vs 10.5, of 6 uint8 18.4 vs 15.9, AvgPool1d k4 s2 p1 of
    // 24 int32 14.5 vs 12.7; bytes of more channels lost (k8 s6 p4 of 16 int8 10.3 vs 11.2, of
    // 16 uint8 10.3-10.8 vs 11.1-11.5) or stayed (k6 s3 p2 of 9, 24 and 32 uint8 1.00-1.02);
    // 2-d and 3-d rows, a few chunks long, 0.97-1.02. Not the other widened chunks (maxima of
    // 16-bit floats: MaxPool2d k10 s10 p2 of 12 float16 took 5.8 ms against 4.4, best of 3).
    let fetchesAhead = phases || differences && !(MemoryLayout<R.Input>.stride == 1 && channels >= KernelLimits.vectorChannels)
    let perChunk = fits < 16 ? fits : fits / 16 * 16
    // A constant capacity, so that the buffer is on the stack.
    withUnsafeTemporaryAllocation(of: R.Accumulator.self, capacity: KernelLimits.widenedChunk) { buffer in
        let widened = buffer.baseAddress!
        var done = 0
        while done < count {
            let n = Swift.min(perChunk, count - done), columns = (n - 1) * step + kernel
            let from = first + done * step * stepW
            // The row's next columns are fetched while this chunk is split, widened or summed,
            // and folded, where that paid (`fetchesAhead`). Only where a next chunk exists: its
            // first position lies in the row, so the jump to it does not overflow (a lone
            // position's jump may be a product no row holds; computed anyway, it trapped on
            // `errors_test`'s views of huge strides).
            if fetchesAhead && done + n < count {
                let next = from + n * step * stepW, span = columns.multipliedReportingOverflow(by: stepW)
                let ahead = span.overflow ? rowEnd - next : Swift.min(rowEnd - next, span.partialValue)
                if ahead > 0 { tpstream_prefetch(next, ahead * MemoryLayout<R.Input>.stride) }
            }
            if differences {
                // `spare`'s arithmetic leaves room for the sums and the lanes stored past them;
                // checked, as a wrong room would write past the buffer.
                precondition(columns * channels + runningSumsStored(channels: channels) <= KernelLimits.widenedChunk,
                             "running sums past the chunk's buffer")
                runningSums(R.self, from, columns: columns, stepW: stepW, channels: channels, readable: rowEnd - stepW + channels,
                            into: widened)
                let ends = UnsafePointer(widened + kernel * channels), starts = UnsafePointer(widened), out = destination + done * channels
                if (9...32).contains(channels) && channels % 8 >= 2 {
                    differencesAsVectors(R.self, ends: ends, starts: starts, count: n, jump: step * channels, channels: channels, into: out)
                } else {
                    channelsByPosition(count: n, jumps: (step * channels, channels), channels: channels) { a, b in
                        out[b] = R.unmerge(ends[a], starts[a])
                    }
                }
                done += n
                continue
            }
            if phases {
                let perPhase = (columns + step - 1) / step
                if splits {
                    // The phases hold inputs: the buffer is bound to them (no accumulator is
                    // stored in it in this call), `perPhase * step` per channel at most, as
                    // for sums.
                    let raw = UnsafeMutableRawPointer(widened).bindMemory(to: R.Input.self, capacity: KernelLimits.widenedChunk)
                    let split = columnsSplitIntoPhases(from, columns: columns, channels: channels, step: step, phaseLength: perPhase, into: raw)
                    precondition(split, "splits holds only for steps and units that split")
                    foldTaps(InputLoader<R>.self, destination + done * channels, n * channels, taps: 0..<kernel, first: true,
                             source: { UnsafePointer(raw + phasePlace($0, step: step, phaseLength: perPhase) * channels) })
                    done += n
                    continue
                }
                // Phases from `kernel` on hold no window's columns. Each column widens as one
                // vector of 8 inputs from its first channel (`loadEight`), stored whole: the
                // lanes past its channels land where the phase's next column, or the next
                // phase, is stored after it, or past every column a tap reads (`spill` keeps
                // room for the last). Columns whose 8 inputs would pass the row's last column
                // widen channel by channel. Widened column by column in scalars, LLVM gathered
                // each conversion's inputs across columns a 16-bit word at a time.
                // The end of the row's last column: loads of whole vectors stop there.
                let readable = rowEnd - stepW + channels
                for r in 0..<Swift.min(step, kernel) {
                    let phase = widened + r * perPhase * channels, source = from + r * stepW
                    let inPhase = (columns - r + step - 1) / step, jump = step * stepW
                    let room = source.distance(to: readable) - 8
                    let whole = room >= 0 ? Swift.min(inPhase, room / jump + 1) : 0
                    for j in 0..<whole {
                        UnsafeMutableRawPointer(phase + j * channels).storeBytes(
                            of: loadEight(InputLoader<R>.self, source + j * jump), as: SIMD8<R.Accumulator>.self)
                    }
                    channelsByPosition(count: inPhase - whole, jumps: (jump, channels), channels: channels) { a, b in
                        phase[whole * channels + b] = R.widen(source[whole * jump + a])
                    }
                }
                foldTaps(AccumulatorLoader<R>.self, destination + done * channels, n * channels, taps: 0..<kernel, first: true,
                         source: { UnsafePointer(widened + phasePlace($0, step: step, phaseLength: perPhase) * channels) })
                done += n
                continue
            }
            if stepW == channels {
                for j in 0..<(columns * channels) { widened[j] = R.widen(from[j]) }
            } else {
                channelsByPosition(count: columns, jumps: (stepW, channels), channels: channels) { a, b in widened[b] = R.widen(from[a]) }
            }
            foldPositions(AccumulatorLoader<R>.self, UnsafePointer(widened), count: n, jump: step * channels, tapStep: channels,
                          taps: kernel, channels: channels, into: destination + done * channels)
            done += n
        }
    }
}

/// The elements `runningSums` stores from a column's first sum: 8 for 6 or 7 channels, summed
/// as one vector of 8 (below), the channels otherwise.
@inline(__always)
func runningSumsStored(channels: Int) -> Int { (6..<8).contains(channels) ? 8 : channels }

/// The running sums of `columns` columns (`stepW` elements apart, channels contiguous) from
/// `from`, widened: `sums[(j + 1) * channels + c]` merges channel c of columns 0 through j,
/// and the first `channels` hold the identity. Inputs are read up to `readable` (the end of
/// the row's last column); the last column's store is `runningSumsStored` elements long.
@inline(__always)
func runningSums<R: WindowReduction>(
    _: R.Type, _ from: UnsafePointer<R.Input>, columns: Int, stepW: Int, channels: Int, readable: UnsafePointer<R.Input>,
    into sums: UnsafeMutablePointer<R.Accumulator>
) {
    for ch in 0..<channels { sums[ch] = R.identity }
    if runningSumsStored(channels: channels) > channels {
        // 6 or 7 channels: the running sums as one vector of 8 from each column's first
        // channel, whose lanes past the channels sum the next column's first inputs (wrapped
        // integer sums, never read: each column's store is overwritten from its channels on
        // by the next column's, and the last one's lands in the room `widenedInChunks`
        // keeps). Columns whose 8 inputs would pass `readable` continue in scalars. The
        // scalar loop below split the channels into pieces of 4, 2 and 1 lanes, a load, add
        // and store each per column: 1-d averages of 6 and 7 channels took 1.07-1.16x as
        // long (AvgPool1d k9 s9 p3 C=7 int16, k6 s3 p2 C=7 uint8 and int32, k6 s6 C=6
        // uint16). Not 3 to 5 channels, whose pieces were as fast or faster (one vector took
        // 1.08x as long at k6 s6 C=4 uint16, 1.10x at k8 s4 p2 C=3 int32).
        typealias V = SIMD8<R.Accumulator>
        let room = from.distance(to: readable) - V.scalarCount
        let whole = room >= 0 ? Swift.min(columns, room / stepW + 1) : 0
        var running = V(repeating: R.identity), a = 0, b = channels
        for _ in 0..<whole {
            running = mergeEight(R.self, running, loadEight(InputLoader<R>.self, from + a))
            UnsafeMutableRawPointer(sums + b).storeBytes(of: running, as: V.self)
            a &+= stepW
            b &+= channels
        }
        for _ in whole..<columns {
            for ch in 0..<channels { sums[b &+ ch] = R.merge(sums[b &- channels &+ ch], R.widen(from[a &+ ch])) }
            a &+= stepW
            b &+= channels
        }
        return
    }
    guard channels <= 8 else {
        guard channels <= 32 else {
            // Each column's sums from the previous column's, in memory: a vector loop over
            // the channels, whose 5+ vectors per column are independent chains.
            var a = 0, b = channels
            for _ in 0..<columns {
                for ch in 0..<channels { sums[b &+ ch] = R.merge(sums[b &- channels &+ ch], R.widen(from[a &+ ch])) }
                a &+= stepW
                b &+= channels
            }
            return
        }
        // 9 to 32 channels: their running sums in registers, as 2 to 4 vectors of 8 (the last
        // ending at the last channel, as in `foldManyChannels`; a channel summed twice stores
        // the same sums twice). In memory, each column's sums loaded back from the column
        // before's stores made 2 to 4 chains through store-to-load forwarding, which
        // dominated the W reduction (12 int32 channels at k3 s3: 70% of its time on that load
        // and store). Past 32 channels the memory loop has enough chains to hide it, and the
        // registers' several sweeps were no faster.
        typealias V = SIMD8<R.Accumulator>
        let last = channels - V.scalarCount, size = MemoryLayout<R.Accumulator>.stride
        @inline(__always) func sweep(_ vectors: Int) {
            let o1 = Swift.min(8, last), o2 = Swift.min(16, last), o3 = last
            var r0 = V(repeating: R.identity), r1 = r0, r2 = r0, r3 = r0
            var a = 0, b = channels
            for _ in 0..<columns {
                let column = from + a, out = UnsafeMutableRawPointer(sums + b)
                r0 = mergeEight(R.self, r0, loadEight(InputLoader<R>.self, column))
                out.storeBytes(of: r0, as: V.self)
                r1 = mergeEight(R.self, r1, loadEight(InputLoader<R>.self, column + o1))
                out.storeBytes(of: r1, toByteOffset: o1 * size, as: V.self)
                if vectors > 2 {
                    r2 = mergeEight(R.self, r2, loadEight(InputLoader<R>.self, column + o2))
                    out.storeBytes(of: r2, toByteOffset: o2 * size, as: V.self)
                }
                if vectors > 3 {
                    r3 = mergeEight(R.self, r3, loadEight(InputLoader<R>.self, column + o3))
                    out.storeBytes(of: r3, toByteOffset: o3 * size, as: V.self)
                }
                a &+= stepW
                b &+= channels
            }
        }
        switch (channels + 7) / 8 {
        case 2: sweep(2)
        case 3: sweep(3)
        default: sweep(4)
        }
        return
    }
    @inline(__always) func run(_ channels: Int) {
        var running = InlineArray<8, R.Accumulator>(repeating: R.identity)
        var a = 0, b = channels
        for _ in 0..<columns {
            for ch in 0..<channels {
                running[ch] = R.merge(running[ch], R.widen(from[a &+ ch]))
                sums[b &+ ch] = running[ch]
            }
            a &+= stepW
            b &+= channels
        }
    }
    unrolledChannels(channels, run)
}

/// `count` positions `jump` elements apart from `first`, each the left fold of its `taps` taps
/// (`tapStep` apart, channels contiguous), into `destination` (`channels` per position). The
/// jump is a wrapping product from callers and only taken between positions: with one
/// position it may be a stride times a caller's view stride that no row holds.
///
/// A position's 1 to 8 channels fold in registers: tap by tap over all the positions, with
/// the folds in memory, took 3 to 7 times as long (a load and a store per tap and channel).
/// Maxima of 2 to 8 channels fold as one vector (`foldChannelsAsVector`): in scalars LLVM
/// vectorised some channel counts and compiled the others' byte and 16-bit maxima to branches,
/// which random data mispredicts (MaxPool1d k7 s5 of 6 uint8 channels took about 5 times the
/// vector fold's time). Sums keep the scalar folds (`InlineArray`'s elements, each indexed by
/// a constant once unrolled), which have no branches: as vectors, 5 channels of widened sums
/// (two overlapping halves) took about 8% longer.
/// Compiled alone, where the tap step is a run-time value: inlined into `widenedInChunks`,
/// whose tap step is the channel count, LLVM vectorised the taps of integer sums across
/// positions (strided loads, then horizontal adds), twice the instructions of the plain folds.
@inline(never)
func foldPositions<L: SourceLoader>(
    _: L.Type, _ first: UnsafePointer<L.Source>, count: Int, jump: Int, tapStep: Int, taps: Int, channels: Int,
    into destination: UnsafeMutablePointer<L.Reduction.Accumulator>
) {
    typealias R = L.Reduction
    typealias A = R.Accumulator
    guard channels <= 8 else {
        // Byte maxima, where the AVX2 kernels run: C vectors of 32 bytes (16 for 16 to 31
        // channels, 8 for 9 to 15), `tpvector_byte_maxima`. Below, their vectors of 8 fill a
        // quarter of a register, and wider ones were slower as compiled (the fold of a group
        // of vectors stayed a call per pair of positions); MaxPool2d k3 s2 p1 of 64 int8
        // channels took 1.8x as long (docs/performance.md). Exact in any order.
        if L.Source.self == A.self, let signed = byteMaximaSignInC(R.self) {
            var windows = tpvector_byte_windows(first: UnsafeRawPointer(first), count: count, jump: jump, rows_at: nil, rows: 1,
                                                tap_step: tapStep, taps: taps, channels: channels,
                                                out: UnsafeMutableRawPointer(destination), out_step: channels)
            if tpvector_byte_maxima(&windows, signed) != 0 { return }
        }
        @inline(__always) func many<V: SIMD>(_: V.Type) where V.Scalar == A {
            foldManyChannels(L.self, V.self, first, count: count, jump: jump, tapStep: tapStep, taps: taps, channels: channels,
                             into: destination)
        }
        // Sources that are 2-byte accumulators already (16-bit maxima, and 8-bit sums widened
        // before the fold) load as vectors of 16 lanes, a whole register, for 32 channels and
        // more. Not fewer, whose two overlapping vectors fold as many lanes as three of 8
        // (MaxPool1d k7 s5 of 24 int16 channels was no faster), nor byte maxima, slower in
        // Swift vectors of 16 or 32 (MaxPool3d k9 s8 of 40 uint8 channels took 1.2-1.5x as
        // long): these take vectors of 8 on CPUs without AVX2.
        if L.Source.self == A.self && MemoryLayout<A>.stride == 2 && channels >= 32 {
            many(SIMD16<A>.self)
        } else {
            many(SIMD8<A>.self)
        }
        return
    }
    if R.foldsChannelsAsVector && channels > 1 {
        @inline(__always) func vector<V: SIMD>(_: V.Type, _ channels: Int) where V.Scalar == A {
            foldChannelsAsVector(L.self, V.self, first, count: count, jump: jump, tapStep: tapStep, taps: taps, channels: channels, into: destination)
        }
        switch channels {
        case 2: vector(SIMD2<A>.self, 2)
        case 3: vector(SIMD4<A>.self, 3)
        case 4: vector(SIMD4<A>.self, 4)
        case 5: vector(SIMD8<A>.self, 5)
        case 6: vector(SIMD8<A>.self, 6)
        case 7: vector(SIMD8<A>.self, 7)
        default: vector(SIMD8<A>.self, 8)
        }
        return
    }
    let load = L.load
    @inline(__always) func run(_ channels: Int) {
        for i in 0..<count {
            let position = first + i &* jump, out = destination + i * channels
            var fold = InlineArray<8, A>(repeating: R.identity)
            for ch in 0..<channels { fold[ch] = load(position[ch]) }
            var tap = position
            for _ in 1..<taps {
                tap += tapStep
                for ch in 0..<channels { fold[ch] = R.merge(fold[ch], load(tap[ch])) }
            }
            for ch in 0..<channels { out[ch] = fold[ch] }
        }
    }
    unrolledChannels(channels, run)
}

/// `foldPositions` for 2 to 8 channels (a constant once inlined), `V`'s lanes the channel
/// count rounded up to a power of two. Lanes in the lower half hold the first channels, those
/// in the upper half the last ones (channels 0-3 and 2-5 of 6): every lane reads one of the
/// position's own channels, none past them, and a channel held twice folds the same taps in
/// the same order in both lanes, so both store the same value. Each lane is a plain left fold
/// of its channel's taps, the bits of the scalar fold.
@inline(__always)
func foldChannelsAsVector<L: SourceLoader, V: SIMD>(
    _: L.Type, _: V.Type, _ first: UnsafePointer<L.Source>, count: Int, jump: Int, tapStep: Int, taps: Int, channels: Int,
    into destination: UnsafeMutablePointer<L.Reduction.Accumulator>
) where V.Scalar == L.Reduction.Accumulator {
    typealias R = L.Reduction
    typealias A = R.Accumulator
    let lanes = V.scalarCount, half = lanes / 2
    @inline(__always) func channel(_ lane: Int) -> Int { lane < half ? lane : channels - half + (lane - half) }
    @inline(__always) func load(_ p: UnsafePointer<L.Source>) -> V {
        if L.Source.self == A.self {
            // Unwidened: one or two vector loads, not one insert per lane.
            let raw = UnsafeRawPointer(p), upper = (channels - half) * MemoryLayout<A>.stride
            if channels == lanes { return raw.loadUnaligned(as: V.self) }
            if lanes == 8 {
                let v = SIMD8(lowHalf: raw.loadUnaligned(as: SIMD4<A>.self), highHalf: raw.loadUnaligned(fromByteOffset: upper, as: SIMD4<A>.self))
                return unsafeBitCast(v, to: V.self)
            }
            if lanes == 4 {
                let v = SIMD4(lowHalf: raw.loadUnaligned(as: SIMD2<A>.self), highHalf: raw.loadUnaligned(fromByteOffset: upper, as: SIMD2<A>.self))
                return unsafeBitCast(v, to: V.self)
            }
        }
        var v = V()
        for lane in 0..<lanes { v[lane] = L.load(p[channel(lane)]) }
        return v
    }
    for i in 0..<count {
        let position = first + i &* jump, out = destination + i * channels
        var fold = load(position), tap = position
        for _ in 1..<taps {
            tap += tapStep
            let next = load(tap)
            for lane in 0..<lanes { fold[lane] = R.merge(fold[lane], next[lane]) }
        }
        for lane in 0..<lanes { out[channel(lane)] = fold[lane] }
    }
}

/// `foldPositions` for more than 8 channels, two positions at a time: their channels as vectors of
/// `V`'s lanes (8, or 16 for 2-byte accumulators loaded as they are), up to 4 at a time, so that
/// each tap's step of the loop folds up to 8 independent vectors (one position's chains of
/// dependent adds alone left the adds waiting on each other: AvgPool1d k7 s3 C=32 float32 took
/// 1.2x as long); the last vector ends at the last channel (overlapping the one before: a
/// channel folded twice gets the same bits twice). Each lane is a plain left fold of its
/// channel's taps, whatever the vector's width. Folded in memory over all the channels, a pass
/// per 6 taps (`foldTaps`), 12 to 24 channels spent their time in loop set-up and remainders
/// (runs shorter than one unrolled iteration of LLVM's vector loops); one vector per sweep over
/// the positions, the tap loop's own overhead outweighed the folds of short windows. Byte
/// maxima too where the kernels lack AVX2 (with it, `tpvector_byte_maxima`): their vectors of 8
/// fill a quarter of a register, but folded in memory they took up to 5 times as long
/// (docs/performance.md).
///
/// Lanes are named one by one (`loadEight`, `mergeEight`). `V` has 8 lanes, or 16 where the
/// sources are accumulators (loaded whole) and `channels` at least its lanes.
@inline(__always)
func foldManyChannels<L: SourceLoader, V: SIMD>(
    _: L.Type, _: V.Type, _ first: UnsafePointer<L.Source>, count: Int, jump: Int, tapStep: Int, taps: Int, channels: Int,
    into destination: UnsafeMutablePointer<L.Reduction.Accumulator>
) where V.Scalar == L.Reduction.Accumulator {
    typealias R = L.Reduction
    typealias A = R.Accumulator
    let lanes = V.scalarCount, last = channels - lanes
    @inline(__always) func load(_ p: UnsafePointer<L.Source>) -> V {
        if L.Source.self == A.self { return UnsafeRawPointer(p).loadUnaligned(as: V.self) }
        return unsafeBitCast(loadEight(L.self, p), to: V.self)
    }
    @inline(__always) func merge(_ a: V, _ b: V) -> V {
        switch lanes {
        case 16: return unsafeBitCast(mergeSixteen(R.self, unsafeBitCast(a, to: SIMD16<A>.self), unsafeBitCast(b, to: SIMD16<A>.self)), to: V.self)
        default: return unsafeBitCast(mergeEight(R.self, unsafeBitCast(a, to: SIMD8<A>.self), unsafeBitCast(b, to: SIMD8<A>.self)), to: V.self)
        }
    }
    /// `vectors` vectors of the channels from `start` of position `i`, and of position `i + 1`
    /// too where `positionCount` is 2: two positions' chains of dependent merges run side by
    /// side. Both counts come as types (`InlineArray`'s count, as `splitIntoPhases` takes its
    /// step), so each of the eight forms compiles with them as constants, inlined or not: passed
    /// as arguments, they were tested at every tap of the one copy the optimiser had left
    /// uninlined (docs/performance.md).
    @inline(__always) func fold<let vectors: Int, let positionCount: Int>(_: InlineArray<vectors, V>.Type, _: InlineArray<positionCount, V>.Type,
                                                                     from start: Int, _ i: Int) {
        let pair = positionCount == 2
        let o0 = start, o1 = Swift.min(start + lanes, last), o2 = Swift.min(start + 2 * lanes, last)
        let o3 = Swift.min(start + 3 * lanes, last)
        let position = first + i &* jump, out = destination + i * channels
        let next = position + (pair ? jump : 0), nextOut = out + channels
        var f0 = load(position + o0), f1 = V(), f2 = V(), f3 = V()
        var g0 = V(), g1 = V(), g2 = V(), g3 = V()
        if vectors > 1 { f1 = load(position + o1) }
        if vectors > 2 { f2 = load(position + o2) }
        if vectors > 3 { f3 = load(position + o3) }
        if pair {
            g0 = load(next + o0)
            if vectors > 1 { g1 = load(next + o1) }
            if vectors > 2 { g2 = load(next + o2) }
            if vectors > 3 { g3 = load(next + o3) }
        }
        var tap = position, tapNext = next
        for _ in 1..<taps {
            tap += tapStep
            tapNext += tapStep
            f0 = merge(f0, load(tap + o0))
            if vectors > 1 { f1 = merge(f1, load(tap + o1)) }
            if vectors > 2 { f2 = merge(f2, load(tap + o2)) }
            if vectors > 3 { f3 = merge(f3, load(tap + o3)) }
            if pair {
                g0 = merge(g0, load(tapNext + o0))
                if vectors > 1 { g1 = merge(g1, load(tapNext + o1)) }
                if vectors > 2 { g2 = merge(g2, load(tapNext + o2)) }
                if vectors > 3 { g3 = merge(g3, load(tapNext + o3)) }
            }
        }
        UnsafeMutableRawPointer(out + o0).storeBytes(of: f0, as: V.self)
        if vectors > 1 { UnsafeMutableRawPointer(out + o1).storeBytes(of: f1, as: V.self) }
        if vectors > 2 { UnsafeMutableRawPointer(out + o2).storeBytes(of: f2, as: V.self) }
        if vectors > 3 { UnsafeMutableRawPointer(out + o3).storeBytes(of: f3, as: V.self) }
        if pair {
            UnsafeMutableRawPointer(nextOut + o0).storeBytes(of: g0, as: V.self)
            if vectors > 1 { UnsafeMutableRawPointer(nextOut + o1).storeBytes(of: g1, as: V.self) }
            if vectors > 2 { UnsafeMutableRawPointer(nextOut + o2).storeBytes(of: g2, as: V.self) }
            if vectors > 3 { UnsafeMutableRawPointer(nextOut + o3).storeBytes(of: g3, as: V.self) }
        }
    }
    @inline(__always) func positions<let positionCount: Int>(_ i: Int, _ together: InlineArray<positionCount, V>.Type) {
        var start = 0
        while start < channels {
            // The first vector starts at most `lanes` before the end.
            let from = Swift.min(start, last)
            switch (channels - from + lanes - 1) / lanes {
            case 1: fold(InlineArray<1, V>.self, together, from: from, i)
            case 2: fold(InlineArray<2, V>.self, together, from: from, i)
            case 3: fold(InlineArray<3, V>.self, together, from: from, i)
            default: fold(InlineArray<4, V>.self, together, from: from, i)
            }
            start += 4 * lanes
        }
    }
    var i = 0
    while i + 1 < count {
        positions(i, InlineArray<2, V>.self)
        i += 2
    }
    if i < count { positions(i, InlineArray<1, V>.self) }
}

/// Eight sources from `p`, loaded (widened) as one vector. Lanes are named one by one, never
/// indexed in a loop: SwiftPM's release builds split the module's LLVM IR by source file
/// (`-num-threads`), and there the loops over lanes of the widening loads and the merges
/// stayed loops, each lane stored to the stack and loaded back (docs/performance.md has the
/// measurements).
@inline(__always)
func loadEight<L: SourceLoader>(_: L.Type, _ p: UnsafePointer<L.Source>) -> SIMD8<L.Reduction.Accumulator> {
    typealias A = L.Reduction.Accumulator
    if L.Source.self == A.self { return UnsafeRawPointer(p).loadUnaligned(as: SIMD8<A>.self) }
    return SIMD8(L.load(p[0]), L.load(p[1]), L.load(p[2]), L.load(p[3]), L.load(p[4]), L.load(p[5]), L.load(p[6]), L.load(p[7]))
}

/// `R.merge` lane by lane (named one by one, as in `loadEight`).
@inline(__always)
func mergeEight<R: WindowReduction>(_: R.Type, _ a: SIMD8<R.Accumulator>, _ b: SIMD8<R.Accumulator>) -> SIMD8<R.Accumulator> {
    SIMD8(R.merge(a[0], b[0]), R.merge(a[1], b[1]), R.merge(a[2], b[2]), R.merge(a[3], b[3]),
          R.merge(a[4], b[4]), R.merge(a[5], b[5]), R.merge(a[6], b[6]), R.merge(a[7], b[7]))
}

/// `mergeEight` for 16 lanes (named one by one, as in `loadEight`).
@inline(__always)
func mergeSixteen<R: WindowReduction>(_: R.Type, _ a: SIMD16<R.Accumulator>, _ b: SIMD16<R.Accumulator>) -> SIMD16<R.Accumulator> {
    SIMD16(R.merge(a[0], b[0]), R.merge(a[1], b[1]), R.merge(a[2], b[2]), R.merge(a[3], b[3]),
          R.merge(a[4], b[4]), R.merge(a[5], b[5]), R.merge(a[6], b[6]), R.merge(a[7], b[7]),
          R.merge(a[8], b[8]), R.merge(a[9], b[9]), R.merge(a[10], b[10]), R.merge(a[11], b[11]),
          R.merge(a[12], b[12]), R.merge(a[13], b[13]), R.merge(a[14], b[14]), R.merge(a[15], b[15]))
}

/// `R.unmerge` lane by lane (named one by one, as in `loadEight`).
@inline(__always)
func unmergeEight<R: WindowReduction>(_: R.Type, _ a: SIMD8<R.Accumulator>, _ b: SIMD8<R.Accumulator>) -> SIMD8<R.Accumulator> {
    SIMD8(R.unmerge(a[0], b[0]), R.unmerge(a[1], b[1]), R.unmerge(a[2], b[2]), R.unmerge(a[3], b[3]),
          R.unmerge(a[4], b[4]), R.unmerge(a[5], b[5]), R.unmerge(a[6], b[6]), R.unmerge(a[7], b[7]))
}
