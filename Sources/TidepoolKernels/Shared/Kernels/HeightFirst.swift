import TidepoolTypes

/// Height first (`Strategy.heightFirst`): the plane ring of width first (WidthFirst.swift), each
/// plane reduced along H before W.
extension TilePass {
    /// Reduces input plane d along H, then W, into its ring slot: with a row stride above 1,
    /// W then runs over the output's rows only, fewer than the input's. Each output row's input
    /// rows are folded (widened) into `paddedRow`, identity where the padding is, and that row
    /// is reduced along W at the plan's positions (every position, or the output's own at a
    /// W stride above 1), each window's taps from its first column, padded ones included.
    /// Where the plan pairs H windows (`KernelPlan.pairsH`), two output rows fold at once,
    /// the second into `blockRows`.
    /// Where no plane is fetched ahead (2-d poolings; a tile's last plane), each fold of dense rows
    /// fetches the rows that the next output row (or pair) adds, a part after each part of the
    /// rows it folds (`HeightRows.fetchedPartBytes`): the hardware's prefetch alone left the H
    /// folds waiting on memory for the new rows, and the same rows fetched at once before
    /// each output row were no faster (docs/performance.md).
    func reducePlaneHeightFirst(_ d: Int) {
        let plane = ringSlot(d)
        let channels = channels, stepW = g.stepW, stepC = g.stepC
        let base = input + tile.n * g.stepN + d * g.stepD + (firstColumn + inputColumns.lowerBound) * stepW + tile.c.lowerBound * stepC
        let valid = paddedRow + inputColumns.lowerBound * channels
        let source = HeightRows<R>(base: base, columns: inputColumns.count, channels: channels, stepH: g.stepH, stepW: stepW, stepC: stepC)
        fillPadding(of: paddedRow)
        // Pairs along H: the second row of a pair (the same padding).
        let pairs = kernel.pairsH && source.dense
        if pairs { fillPadding(of: blockRows) }
        var blocks = HeightBlocks(self, rows: source)
        // The next plane this tile reduces, fetched while this one is, spread over its rows:
        // fetched all at once while the plane before finished (`upcomingInput`), the planes
        // that the next output plane's window adds (3 at D stride 3) were late (AvgPool3d k9
        // s3 of 1 bfloat16 channel, blocks along H: 1.3x as long; docs/performance.md).
        let ahead = planeAfter(d)
        let strideH = g.strideH, kernelH = g.kernelH
        // The rows that the `count` output rows after `oh` add (dense rows only: `region`).
        func rowsAhead(after oh: Int, count: Int) -> PrefetchRegion {
            guard ahead.isEmpty else { return .none }
            return source.region(rows: positionsAhead(after: oh, count: count, stride: strideH, padding: g.padH, kernel: kernelH,
                                                      length: g.inH, within: inputRows))
        }
        var oh = tile.oh.lowerBound
        while oh < tile.oh.upperBound {
            ahead.fetch(part: oh - tile.oh.lowerBound, of: tile.oh.count)
            let out = plane + (oh - tile.oh.lowerBound) * ringRow
            let (h0, h1) = windowBounds(oh, stride: strideH, padding: g.padH, kernel: kernelH, length: g.inH)
            // Two full windows (none of their rows in padding), the first at an even row, fold
            // as a pair; a full window at an even row folds alone in the pair's order.
            let start = oh * strideH - g.padH
            let fullAndEven = kernel.pairsH && oh % 2 == 0 && h1 - h0 == kernelH
            if pairs && fullAndEven && oh + 1 < tile.oh.upperBound && start + strideH + kernelH <= g.inH {
                ahead.fetch(part: oh + 1 - tile.oh.lowerBound, of: tile.oh.count)
                source.foldPair(from: start, kernel: kernelH, stride: strideH, into: valid, blockRows + inputColumns.lowerBound * channels,
                                fetching: rowsAhead(after: oh + 1, count: 2))
                reduceIntoRing(paddedRow, into: out)
                reduceIntoRing(blockRows, into: out + ringRow)
                oh += 2
                continue
            }
            if h0 >= h1 {
                for j in 0..<ringRow { out[j] = R.identity }
            } else {
                let next = rowsAhead(after: oh, count: 1)
                if kernel.blocksH {
                    blocks.fold(oh, into: valid, fetching: next)
                } else if fullAndEven {
                    source.foldFirstOfPair(from: start, kernel: kernelH, stride: strideH, into: valid, fetching: next)
                } else {
                    source.fold(h0..<h1, into: valid, first: true, fetching: next)
                }
                reduceIntoRing(paddedRow, into: out)
            }
            oh += 1
        }
    }

    /// Reduces `padded` along W into ring row `out`: where the plan compacts the ring, at every
    /// position into `reducedRows` first, then the output's positions gathered.
    @inline(__always) private func reduceIntoRing(_ padded: UnsafeMutablePointer<R.Accumulator>, into out: UnsafeMutablePointer<R.Accumulator>) {
        guard kernel.compactsRing else {
            reduceAlongW(padded, into: out)
            return
        }
        if kernel.foldsPhasesW {
            foldPhasesAlongW(padded, into: out)
            return
        }
        reduceAlongW(padded, into: reducedRows)
        positionsCopied(count: tile.ow.count, jumps: (width.stride * channels, channels), channels: channels, from: UnsafePointer(reducedRows), to: out)
    }

    /// The output's positions of `padded` (a row of the span, folded along H) into ring row
    /// `out`, each folding its taps left to right from the row split into the W stride's
    /// phases in `reducedRows` (`KernelPlan.foldsPhasesW`): position i's tap t is place i + t / s
    /// of phase t % s, so a tap of all the positions is one run of a phase. A unit of the
    /// split is a column's channels: the row's one or two, or one of two where the tile holds
    /// one (2, 4 or 8 bytes, units the split takes).
    @inline(__always) private func foldPhasesAlongW(_ padded: UnsafeMutablePointer<R.Accumulator>, into out: UnsafeMutablePointer<R.Accumulator>) {
        let step = width.stride, channels = channels, count = tile.ow.count, kernel = g.kernelW
        // The columns the positions' windows span.
        let columns = (count - 1) * step + kernel, perPhase = (columns + step - 1) / step
        let phases = reducedRows
        let split = columnsSplitIntoPhases(UnsafePointer(padded), columns: columns, channels: channels, step: step,
                                           phaseLength: perPhase, into: phases)
        precondition(split, "foldsPhasesW holds only for units and steps that split")
        foldTaps(AccumulatorLoader<R>.self, out, count * channels, taps: 0..<kernel, first: true,
                 source: { UnsafePointer(phases + phasePlace($0, step: step, phaseLength: perPhase) * channels) })
    }

    /// Reduces `padded` (a row of the span, folded along H) along W into ring row `out`, at
    /// every position or at the plan's.
    @inline(__always) private func reduceAlongW(_ padded: UnsafeMutablePointer<R.Accumulator>, into out: UnsafeMutablePointer<R.Accumulator>) {
        if width.step == 1 {
            reducePaddedRow(padded, into: out)
        } else {
            foldPositions(AccumulatorLoader<R>.self, UnsafePointer(padded), count: positions.count, jump: width.step * channels,
                          tapStep: channels, taps: g.kernelW, channels: channels, into: out)
        }
    }
}

/// The tile's input rows of one plane, as height first folds them: `columns` positions of
/// `channels` from `base` (the first input column of the tile's span), rows `stepH` apart.
struct HeightRows<R: WindowReduction> {
    let base: UnsafePointer<R.Input>
    let columns: Int, channels: Int, stepH: Int, stepW: Int, stepC: Int

    /// Channels contiguous and positions packed: a row's columns are one run.
    var dense: Bool { stepC == 1 && stepW == channels }

    /// The bytes of each row a fold reads between two parts of the rows it fetches ahead.
    /// Larger parts leave the fetches bunched (a C loop of MaxPool2d k5 s2's H fold of 2-byte
    /// rows over 64 MiB: 0.13 ns per input with a part after each 0.6 KB of each row, 0.14
    /// after 1.2 KB, 0.17 after 2.5 KB, 0.215 without); smaller ones cost a fold call each (in
    /// the engine, parts of 256 bytes were slower than of 512 or 1024, docs/performance.md).
    static var fetchedPartBytes: Int { 1024 }

    /// The tile's columns of rows `rows` (dense rows: a run each), to prefetch.
    func region(rows: Range<Int>) -> PrefetchRegion {
        guard dense, !rows.isEmpty else { return .none }
        let size = MemoryLayout<R.Input>.stride
        return PrefetchRegion(start: UnsafeRawPointer(base + rows.lowerBound * stepH), planeBytes: columns * channels * size,
                              planes: rows.count, planeStride: stepH * size)
    }

    /// Runs `body` over the elements of dense rows in parts of about `fetchedPartBytes` of a
    /// row, prefetching the matching part of `ahead` after each (one part where it is empty).
    @inline(__always) private func inParts(fetching ahead: PrefetchRegion, _ body: (Range<Int>) -> Void) {
        let length = columns * channels
        fetchingInParts(0..<length, Swift.max(1, length * MemoryLayout<R.Input>.stride / Self.fetchedPartBytes), ahead, body)
    }

    /// The windows of rows `start ..< start + kernel` and the next, `stride` rows on (all in
    /// the input; dense rows), into `first` and `second` (`KernelPlan.pairsH`): the rows they
    /// share folded once into `second`, then each window's own rows merged in one pass
    /// (`windowPair`). The second window's bits are `fold`'s, the first's
    /// `foldFirstOfPair`'s, so a window's bits do not depend on whether it was paired.
    @inline(__always) func foldPair(from start: Int, kernel: Int, stride: Int,
                                    into first: UnsafeMutablePointer<R.Accumulator>, _ second: UnsafeMutablePointer<R.Accumulator>,
                                    fetching ahead: PrefetchRegion) {
        let base = base, stepH = stepH
        inParts(fetching: ahead) { part in
            let from = base + part.lowerBound
            foldTaps(InputLoader<R>.self, second + part.lowerBound, part.count, taps: (start + stride)..<(start + kernel), first: true,
                     source: { from + $0 * stepH })
            windowPair(InputLoader<R>.self, first + part.lowerBound, second + part.lowerBound, part.count, stride: stride,
                       source: { from + (start + ($0 < stride ? $0 : kernel - stride + $0)) * stepH })
        }
    }

    /// The first window of a pair (`foldPair`) folded alone, in the pair's order: for maxima
    /// `fold`'s (merges are associative), for sums the rows after its first `stride`, then
    /// those (float sums round in that order).
    @inline(__always) func foldFirstOfPair(from start: Int, kernel: Int, stride: Int, into target: UnsafeMutablePointer<R.Accumulator>,
                                           fetching ahead: PrefetchRegion) {
        if R.mergesOverlaps {
            fold(start..<(start + kernel), into: target, first: true, fetching: ahead)
        } else {
            fold((start + stride)..<(start + kernel), into: target, first: true, fetching: ahead)
            fold(start..<(start + stride), into: target, first: false)
        }
    }

    /// Merges rows `rows` (widened), in order, into the `columns * channels` accumulators at
    /// `target`, after what it holds unless `first`. Dense rows (channels contiguous, positions
    /// packed) fold as runs, starting from the first row; others element by element from the
    /// identity (the same values: only a float sum of -0s differs, as +0, and a mean of more
    /// than one element is +0 either way). Dense rows fold in parts, fetching `ahead`.
    @inline(__always) func fold(_ rows: Range<Int>, into target: UnsafeMutablePointer<R.Accumulator>, first: Bool,
                                fetching ahead: PrefetchRegion = .none) {
        let base = base, stepH = stepH
        if dense {
            inParts(fetching: ahead) { part in
                let from = base + part.lowerBound
                foldTaps(InputLoader<R>.self, target + part.lowerBound, part.count, taps: rows, first: first, source: { from + $0 * stepH })
            }
            return
        }
        if first {
            for j in 0..<(columns * channels) { target[j] = R.identity }
        }
        for h in rows {
            let row = base + h * stepH
            for column in 0..<columns {
                for c in 0..<channels {
                    target[column * channels + c] = R.merge(target[column * channels + c], R.widen(row[column * stepW + c * stepC]))
                }
            }
        }
    }
}

/// Blocks along H (`KernelPlan.blocksH`: kh a multiple of sh): block j holds rows
/// j * sh - ph ..< j * sh - ph + sh (those in the input), folded left to right, so output row
/// oh's window is blocks oh ..< oh + kh / sh. Each block is folded once, for the kh / sh
/// windows that share it: an input row is widened and merged 1 + kh / sh^2 times instead of
/// kh / sh (AvgPool3d k9 s3: 2 instead of 3, k8 s4: 1.5 instead of 2). The blocks lie where
/// the geometry puts them, whatever the tile, so every window merges the same blocks in the
/// same order (bits independent of the tiling); for maxima and integer sums the merges are
/// associative, so the bits are a left fold's.
struct HeightBlocks<R: WindowReduction> {
    let source: HeightRows<R>
    let ring: UnsafeMutablePointer<R.Accumulator>
    let stride: Int, whole: Int, pitch: Int, padding: Int, length: Int
    /// Blocks below this one are folded into their ring slots.
    var built: Int

    init(_ pass: TilePass<R>, rows: HeightRows<R>) {
        source = rows
        ring = pass.blockRows
        stride = pass.g.strideH
        whole = pass.g.kernelH / stride
        pitch = pass.plan.paddedRowCapacity
        padding = pass.g.padH
        length = pass.g.inH
        built = pass.tile.oh.lowerBound
    }

    /// Block j's rows, those in the input (block j starts window j).
    @inline(__always) func rows(_ j: Int) -> Range<Int> {
        let start = j * stride - padding
        let lower = Swift.max(start, 0), upper = Swift.min(start + stride, length)
        return lower..<Swift.max(lower, upper)
    }

    /// Output row oh's window (not empty) into `target`, folding the blocks it needs first
    /// into their ring slots (`whole` of them: block j in slot j % whole), fetching `ahead`.
    mutating func fold(_ oh: Int, into target: UnsafeMutablePointer<R.Accumulator>, fetching ahead: PrefetchRegion) {
        let ring = ring, pitch = pitch, slots = whole
        built = Swift.max(built, oh)
        while built < oh + whole {
            source.fold(rows(built), into: ring + (built % slots) * pitch, first: true, fetching: ahead)
            built += 1
        }
        // The blocks holding input rows are consecutive, and one at least (the window is not empty).
        var first = oh, last = oh + whole
        while first < last && rows(first).isEmpty { first += 1 }
        while last > first && rows(last - 1).isEmpty { last -= 1 }
        foldTaps(AccumulatorLoader<R>.self, target, source.columns * source.channels, taps: first..<last, first: true,
                 source: { UnsafePointer(ring + ($0 % slots) * pitch) })
    }
}
