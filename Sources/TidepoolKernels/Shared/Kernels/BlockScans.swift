import TidepoolTypes

/// Block scans (van Herk 1992, Gil and Werman 1993): windows of any size along H or D in three
/// merges per input element and one per output, where folding tap by tap costs one merge per
/// tap (`KernelPlan.scans` says where).
///
/// The axis is cut into blocks of `kernel` positions, aligned in the padded coordinates
/// (block j starts at j * kernel - padding) and clipped to the axis, so every tile and thread
/// cuts them the same way. Within a block, the prefix P[i] folds the block's positions up to i
/// (left to right), the suffix S[i] those from i to the block's end (as x[i] merged with
/// S[i + 1]). A window of at most `kernel` positions meets at most one block boundary m:
/// - across m, it is S[start] merged with P[end - 1];
/// - starting at a block's start, P[end - 1];
/// - otherwise it ends at its block's end (a window clipped by the axis's end), S[start]
///   (along H, where that block's suffixes are not made yet, folded in the same order).
///
/// Each output folds the same positions in an order set by the geometry alone, so results do
/// not depend on tiles or threads. Max gives the left fold's bits in (d, h, w) order: `merge`
/// keeps the first of equal values and the last NaN of its two arguments, so merging the
/// results of two adjacent ranges gives the result of their concatenation, however bracketed
/// (signed zeros and NaN payloads included; the folds' pairs merge the middle taps first and
/// may keep another zero or NaN, never another value). Integer sums are exact. A float sum
/// adds at most kernel - 1 terms into each of S and P, then the two: the error bound of a
/// plain sum of the window.
extension TilePass {
    /// The block (clipped to [0, length)) that holds position `i` of an axis.
    func scanBlock(_ i: Int, kernel: Int, padding: Int, length: Int) -> Range<Int> {
        // i + padding >= 0 for every position of the axis, and start + kernel <= i + padding +
        // kernel: the padded length n + 2p fits (PoolDescriptor checks it), and a kernel that
        // scans is bounded by the scratch a call may have (it holds kernel rows or planes).
        let start = (i + padding) / kernel * kernel - padding
        return Swift.max(0, start)..<Swift.max(Swift.max(0, start), Swift.min(length, start + kernel))
    }

    /// `destination[j] = merge(a[j], b[j])` for `length` accumulators.
    @inline(__always)
    func mergeRuns(_ destination: UnsafeMutablePointer<R.Accumulator>, _ a: UnsafePointer<R.Accumulator>,
                   _ b: UnsafePointer<R.Accumulator>, _ length: Int) {
        for j in 0..<length { destination[j] = R.merge(a[j], b[j]) }
    }

    /// `destination[j] = merge(a[j], destination[j])` for `length` accumulators: a run merged
    /// into the run after it, in place. Not `mergeRuns(destination, a, destination, ...)`: the
    /// compiler's overlap check between the destination and its equal second source failed at
    /// run time and took the scalar loop, with a branch per merge for the max (half the H
    /// scan's time in MaxPool3d k7 on rows of 81, whose last windows are clipped). Out of line
    /// so the check is the call's own, not hoisted out of the caller's loop.
    @inline(never)
    func mergeIntoLater(_ destination: UnsafeMutablePointer<R.Accumulator>, _ a: UnsafePointer<R.Accumulator>, _ length: Int) {
        for j in 0..<length { destination[j] = R.merge(a[j], destination[j]) }
    }

    /// Rows `rows` of `block` (from `blockRow` on) replaced by their suffixes within their
    /// blocks of H: each row merged with the (already suffixed) row below it in its block.
    func suffixRows(_ block: UnsafeMutablePointer<R.Accumulator>, from blockRow: Int, rows: Range<Int>) {
        var h = rows.upperBound - 2
        while h >= rows.lowerBound {
            let row = block + (h - blockRow) * rowLength
            if scanBlock(h + 1, kernel: g.kernelH, padding: g.padH, length: g.inH).lowerBound != h + 1 {
                mergeRuns(row, row, row + rowLength, rowLength)
            }
            h -= 1
        }
    }

    /// `reduceAlongH` by block scans. `block` holds the tile's input rows (`inputRows`), reduced
    /// along W, from `blockRow` on; they are overwritten by their suffixes block by block, once
    /// no output reads them as they were. The prefix is one running row (`prefixRow`): each
    /// output reads it at its window's last row, and those only increase.
    func scanAlongH(_ block: UnsafeMutablePointer<R.Accumulator>, from blockRow: Int, rows: Range<Int>,
                    into plane: UnsafeMutablePointer<R.Accumulator>) {
        let rowLength = rowLength, prefix = prefixRow
        let available = blockRow..<inputRows.upperBound
        func row(_ h: Int) -> UnsafeMutablePointer<R.Accumulator> { block + (h - blockRow) * rowLength }
        // The block whose prefix `prefix` holds, up to row `prefixAt`; rows below `suffixed` are
        // suffixes already.
        var current = 0..<0, prefixAt = Int.min
        var suffixed = available.lowerBound
        for oh in rows {
            let out = plane + (oh - rows.lowerBound) * rowLength
            let (h0, h1) = windowBounds(oh, stride: g.strideH, padding: g.padH, kernel: g.kernelH, length: g.inH)
            if h0 >= h1 {
                for j in 0..<rowLength { out[j] = R.identity }
                continue
            }
            let last = scanBlock(h1 - 1, kernel: g.kernelH, padding: g.padH, length: g.inH)
            let start = Swift.max(last.lowerBound, available.lowerBound)
            if last != current {
                // Windows from here on end in `last` or later: the rows before it are read only
                // as suffixes now. The prefix starts over at the block's first row here.
                suffixRows(block, from: blockRow, rows: suffixed..<Swift.max(suffixed, last.lowerBound))
                suffixed = Swift.max(suffixed, last.lowerBound)
                current = last
                for j in 0..<rowLength { prefix[j] = row(start)[j] }
                prefixAt = start
            }
            while prefixAt < h1 - 2 {
                prefixAt += 1
                mergeRuns(prefix, prefix, row(prefixAt), rowLength)
            }
            if h0 < last.lowerBound {
                // Across the boundary: the prefix takes in the window's last row and the output
                // is the first row's suffix merged with it, in one pass.
                if prefixAt < h1 - 1 {
                    prefixAt += 1
                    let newest = row(prefixAt), suffix = row(h0)
                    for j in 0..<rowLength {
                        let p = R.merge(prefix[j], newest[j])
                        prefix[j] = p
                        out[j] = R.merge(suffix[j], p)
                    }
                } else {
                    mergeRuns(out, row(h0), prefix, rowLength)
                }
                continue
            }
            if prefixAt < h1 - 1 {
                prefixAt += 1
                mergeRuns(prefix, prefix, row(prefixAt), rowLength)
            }
            if h0 == last.lowerBound {
                for j in 0..<rowLength { out[j] = prefix[j] }
            } else {
                // A window clipped by the axis's end, inside one block: its rows are still as
                // reduced along W (this block's suffixes come later), so fold them right to
                // left, as the suffix S[h0] is made (x[h0] merged with S[h0 + 1]) and as the
                // scans along D read it: a 2-d pooling gives the same bits with its rows as
                // planes (`KernelPlan.forCall`) and without.
                for j in 0..<rowLength { out[j] = row(h1 - 1)[j] }
                var h = h1 - 2
                while h >= h0 {
                    mergeIntoLater(out, row(h), rowLength)
                    h -= 1
                }
            }
        }
    }

    /// Scans input plane d, just reduced into its ring slot, along D: the prefix plane takes it
    /// in, and when it is the last of its block, the block's planes held in the ring become
    /// their suffixes. Planes arrive in order from `firstPlane`, the first the tile reduced.
    ///
    /// The ring of kernelD slots still suffices: an output whose window ends at plane e reads
    /// S[start] with start > e - kernelD, so plane d overwrites plane d - kernelD only when no
    /// later output reads it; and a block's suffixes are made when its last plane arrives, when
    /// the ring holds exactly that block's planes (those from `firstPlane` on).
    func scanPlaneAlongD(_ d: Int, firstPlane: Int) {
        let block = scanBlock(d, kernel: g.kernelD, padding: g.padD, length: g.inD)
        let start = Swift.max(block.lowerBound, firstPlane)
        let newest = plane(d)
        if d == start {
            for j in 0..<planeLength { prefixPlane[j] = newest[j] }
        } else {
            mergeRuns(prefixPlane, prefixPlane, newest, planeLength)
        }
        guard d == block.upperBound - 1 else { return }
        var e = d - 1
        while e >= start {
            mergeRuns(ringSlot(e), ringSlot(e), plane(e + 1), planeLength)
            e -= 1
        }
    }

    /// The sources that fold output plane od's window [d0, d1) (not empty) from the scanned ring:
    /// S[d0] and the prefix, or one of them (see the type's comment).
    func scannedPlanes(_ d0: Int, _ d1: Int) -> (count: Int, first: UnsafePointer<R.Accumulator>, second: UnsafePointer<R.Accumulator>) {
        let last = scanBlock(d1 - 1, kernel: g.kernelD, padding: g.padD, length: g.inD)
        let prefix = UnsafePointer(prefixPlane)
        if d0 < last.lowerBound { return (2, plane(d0), prefix) }
        return d0 == last.lowerBound ? (1, prefix, prefix) : (1, plane(d0), prefix)
    }

    /// Sums along W as pairs (`KernelPlan.pairsW`): pair j adds columns j and j + 1 of the
    /// span (`source`, from `firstColumn`, the identity in the padding), once for all windows;
    /// position q then folds pairs q, q + 2, ... and, for an odd kernel, column q + kernel - 1,
    /// in one pass left to right. Half the adds and loads of a tap-by-tap fold, and the same
    /// order for every position, tile and thread. Integer sums are exact; a float sum adds
    /// pairs first, within the error bound of a plain sum of the window.
    func pairAlongW<L: SourceLoader>(_: L.Type, _ source: UnsafePointer<L.Source>, into destination: UnsafeMutablePointer<R.Accumulator>)
        where L.Reduction == R {
        let channels = channels, pairs = doubledRow, kernel = g.kernelW, load = L.load
        // Pairs that windows start at: positions.count + 2 (kernel / 2 - 1), the last reading
        // column positions.count + 2 (kernel / 2) - 2 < columnSpan.
        let reach = 2 * (kernel / 2 - 1), count = positions.count
        // Two pointers, not an index sum in the loop (see `doubleAlongW`).
        let next = source + channels
        let pitch = 2 * channels
        // A part of the row's positions at a time, each right after the pairs it adds: paired
        // over the whole row first, the pairs (a row of accumulators, often past L1) were read
        // back from L2. Every position folds the same pairs in the same order either way.
        let part = Swift.max(1, KernelLimits.pairedWPart / channels)
        var paired = 0, q = 0
        while q < count {
            let end = Swift.min(q + part, count)
            let needed = end + reach
            for j in (paired * channels)..<(needed * channels) { pairs[j] = R.merge(load(source[j]), load(next[j])) }
            paired = needed
            let from = q * channels, length = (end - q) * channels
            if kernel % 2 == 0 {
                foldTaps(AccumulatorLoader<R>.self, destination + from, length, taps: 0..<(kernel / 2), first: true,
                         source: { UnsafePointer(pairs + from + $0 * pitch) })
            } else {
                foldRunsThenLast(L.self, destination + from, length, runs: UnsafePointer(pairs + from), pitch: pitch, count: kernel / 2,
                                 last: source + from + (kernel - 1) * channels)
            }
            q = end
        }
    }

    /// `reducePaddedRow` for max by doubling (`KernelPlan.doublesW`): level by level, column j
    /// holds the max of columns j ..< j + 2^i (two of the level below, 2^(i-1) apart), between
    /// `padded` and `doubledRow`, up to the largest 2^i within the kernel; each position is
    /// then the merge of the two such windows that start at its first and end at its last
    /// column. About log2(kernel) + 1 merges per position instead of kernel - 1, with the left
    /// fold's bits. The type's comment argues it for adjacent parts; for parts that overlap it
    /// holds too: the right part holds the window's last columns, so a NaN there is the
    /// window's last NaN, which `merge` keeps; without one, the left part holds the window's
    /// first columns, so where its maximum is not below the right's, its first maximum is the
    /// window's, and `merge` keeps the left of equal values.
    /// The padding columns of `padded` (`paddedRow` or a row like it) are set back to the
    /// identity afterwards.
    func doubleAlongW(_ padded: UnsafeMutablePointer<R.Accumulator>, into destination: UnsafeMutablePointer<R.Accumulator>) {
        doubleLevels(padded, doubledRow, width: 1, into: destination)
        fillPadding(of: padded)
    }

    /// `doubleAlongW` for fused input row `row` (at the tile's first channel), its first level
    /// (each column merged with the next) read straight from the row, as `pairAlongW` adds
    /// pairs: widening the row into `paddedRow` first, a copy for a float max, was a pass of
    /// its own over every row. The same merges of the same values, so the same bits; the
    /// identity stands for the padding as it does in `paddedRow`, which is left as scratch.
    func doubleAlongW(row: UnsafePointer<R.Input>, into destination: UnsafeMutablePointer<R.Accumulator>) {
        let channels = channels, inputs = inputColumns, count = columnSpan - 1
        let pairs = g.kernelW == 2 ? destination : doubledRow
        let source = row + firstColumn * channels
        // Pairs of two input columns in one vector loop (two pointers, see `doubleLevels`).
        let inner = Swift.min(inputs.lowerBound, count)..<Swift.max(Swift.min(inputs.lowerBound, count), inputs.upperBound - 1)
        let next = source + channels
        for j in (inner.lowerBound * channels)..<(inner.upperBound * channels) { pairs[j] = R.merge(R.widen(source[j]), R.widen(next[j])) }
        // The few pairs that touch the padding, at each end: their columns widened into
        // `paddedRow` (at their offsets in the span, the identity for the padding) and merged
        // as a run, as `reduceEdge` does. Column by column, with a branch per element, they
        // took about a third of this function's time on rows of 81 columns.
        func mergeEnd(_ ends: Range<Int>) {
            guard !ends.isEmpty else { return }
            widenIntoPaddedRow(ends.lowerBound..<(ends.upperBound + 1), row: row)
            let from = paddedRow + ends.lowerBound * channels
            mergeRuns(pairs + ends.lowerBound * channels, from, from + channels, ends.count * channels)
        }
        mergeEnd(0..<inner.lowerBound)
        mergeEnd(inner.upperBound..<count)
        if g.kernelW > 2 { doubleLevels(doubledRow, paddedRow, width: 2, into: destination) }
    }

    /// The doubling's levels from windows of `width` columns at `from` (the span's columns
    /// less width - 1), alternating with `to`, then each position's two windows into
    /// `destination`. A level whose windows are the kernel is the result, written there.
    private func doubleLevels(_ from: UnsafeMutablePointer<R.Accumulator>, _ to: UnsafeMutablePointer<R.Accumulator>, width: Int,
                              into destination: UnsafeMutablePointer<R.Accumulator>) {
        let channels = channels
        var from = from, to = to, width = width, valid = columnSpan - width + 1
        while 2 * width <= g.kernelW {
            // Two pointers and plain loops (`mergeRuns`): an index sum in the loop, checked for
            // overflow, kept the loop scalar with a branch per merge.
            let target = 2 * width == g.kernelW ? destination : to
            mergeRuns(target, from, from + width * channels, (valid - width) * channels)
            if target == destination { return }
            swap(&from, &to)
            valid -= width
            width *= 2
        }
        mergeRuns(destination, from, from + (g.kernelW - width) * channels, rowLength)
    }
}
