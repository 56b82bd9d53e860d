import CTidepoolVector
import TidepoolTypes

/// Whole windows (`Strategy.wholeWindows`).
extension TilePass {
    /// The tile window by window (`KernelPlan.suitsWholeWindows`): each output position folds its
    /// in-bounds taps in (d, h, w) order, channels innermost, and finishes. The input rows of
    /// the next output row are fetched meanwhile, in parts spread over the row: fetched at once,
    /// the prefetches queue up and stall the loads.
    func runWholeWindows(progress: (() -> Void)?) {
        if g.windowSize == 1 {
            runSingleTaps(progress: progress)
            return
        }
        let base = input + tile.n * g.stepN + tile.c.lowerBound
        let channels = channels, windowSize = g.windowSize, partial = partial
        // Byte maxima of 9 channels or more, where the AVX2 kernels run: the windows inside the
        // row along W in C vectors of 8 to 32 bytes (`tpvector_byte_maxima`, each window's
        // (d, h) rows at their offsets). Folded in Swift, a loop as long as the channels ran
        // mostly in LLVM's scalar remainder (MaxPool2d k3 s3 of 28 uint8 channels spent its
        // time in byte loads and compares, `perf`, and took 3.5x as long; docs/performance.md).
        // Exact in any order.
        let bytesSign = channels >= Int(TPVECTOR_BYTE_MAXIMA_CHANNELS) ? byteMaximaSignInC(R.self) : nil
        let columnsInside = windowsInside(stride: g.strideW, padding: g.padW, kernel: g.kernelW, length: g.inW, outputs: g.outW)
        withUnsafeTemporaryAllocation(of: UnsafePointer<R.Input>.self, capacity: g.windowSize) { taps in
            withUnsafeTemporaryAllocation(of: Int.self, capacity: g.windowSize) { rowsAt in
                for od in tile.od {
                    progress?()
                    let (d0, d1) = windowBounds(od, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
                    for oh in tile.oh {
                        let (h0, h1) = windowBounds(oh, stride: g.strideH, padding: g.padH, kernel: g.kernelH, length: g.inH)
                        let row = output + ((tile.n * g.outD + od) * g.outH + oh) * g.outW * g.channels + tile.c.lowerBound
                        let (next0, next1) = windowBounds(oh + 1, stride: g.strideH, padding: g.padH, kernel: g.kernelH, length: g.inH)
                        let upcoming = inputRegion(planes: d0..<Swift.max(d0, d1), rows: next0..<Swift.max(next0, next1))
                        var rows = 0
                        if bytesSign != nil {
                            for d in d0..<Swift.max(d0, d1) {
                                for h in h0..<Swift.max(h0, h1) {
                                    rowsAt[rows] = d * g.stepD + h * g.stepH
                                    rows += 1
                                }
                            }
                        }
                        // Windows of the same width have their taps at the same offsets from their first column.
                        var tapsWidth = -1, tapsColumn = 0, count = 0
                        @inline(__always) func window(_ ow: Int) {
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
                                return
                            }
                            let shift = (w0 &- tapsColumn) &* g.stepW
                            finishTaps(InputLoader<R>.self, out, channels, partial: partial, taps: 0..<count,
                                       source: { taps[$0] + shift }, windowSize: windowSize)
                        }
                        inParts(tile.ow, prefetching: upcoming) { part in
                            let inC = rows > 0 && part.overlaps(columnsInside)
                                ? part.clamped(to: columnsInside) : part.upperBound..<part.upperBound
                            for ow in part.lowerBound..<inC.lowerBound { window(ow) }
                            if !inC.isEmpty, let bytesSign {
                                let first = base + (inC.lowerBound * g.strideW - g.padW) * g.stepW
                                var windows = tpvector_byte_windows(
                                    first: UnsafeRawPointer(first), count: inC.count, jump: g.strideW * g.stepW,
                                    rows_at: UnsafePointer(rowsAt.baseAddress!), rows: rows, tap_step: g.stepW, taps: g.kernelW,
                                    channels: channels, out: UnsafeMutableRawPointer(row + inC.lowerBound * g.channels),
                                    out_step: g.channels)
                                let done = tpvector_byte_maxima(&windows, bytesSign)
                                precondition(done != 0, "tpvector_byte_maxima takes bytesSign's channels")
                            }
                            for ow in inC.upperBound..<part.upperBound { window(ow) }
                        }
                    }
                }
            }
        }
    }

    /// Windows of one element (kernel 1 on every axis): each output is its tap finished, or
    /// the identity finished where the window lies in padding. A row's taps inside the input
    /// are one run where they are its fused row's consecutive positions (W stride 1), a loop
    /// the compiler vectorises; else position by position.
    private func runSingleTaps(progress: (() -> Void)?) {
        let base = input + tile.n * g.stepN + tile.c.lowerBound
        let channels = channels, empty = R.finish(R.identity, windowSize: 1)
        let columnsInside = windowsInside(stride: g.strideW, padding: g.padW, kernel: 1, length: g.inW, outputs: g.outW)
            .clamped(to: tile.ow)
        let run = fusedRow && g.strideW == 1
        @inline(__always) func fill(_ row: UnsafeMutablePointer<R.Output>, _ columns: Range<Int>) {
            for ow in columns {
                for c in 0..<channels { row[ow * g.channels + c] = empty }
            }
        }
        for od in tile.od {
            progress?()
            let (d0, d1) = windowBounds(od, stride: g.strideD, padding: g.padD, kernel: 1, length: g.inD)
            for oh in tile.oh {
                let (h0, h1) = windowBounds(oh, stride: g.strideH, padding: g.padH, kernel: 1, length: g.inH)
                let row = output + ((tile.n * g.outD + od) * g.outH + oh) * g.outW * g.channels + tile.c.lowerBound
                let inside = d0 < d1 && h0 < h1 ? columnsInside : tile.ow.upperBound..<tile.ow.upperBound
                fill(row, tile.ow.lowerBound..<inside.lowerBound)
                fill(row, inside.upperBound..<tile.ow.upperBound)
                guard !inside.isEmpty else { continue }
                let taps = base + d0 * g.stepD + h0 * g.stepH
                if run {
                    let out = row + inside.lowerBound * channels
                    let source = taps + (inside.lowerBound - g.padW) * channels
                    for j in 0..<(inside.count * channels) { out[j] = R.finish(R.widen(source[j]), windowSize: 1) }
                } else {
                    var tap = taps + (inside.lowerBound * g.strideW - g.padW) * g.stepW, out = row + inside.lowerBound * g.channels
                    let tapStep = g.strideW * g.stepW, outStep = g.channels
                    @inline(__always) func positions(_ width: Int) {
                        for _ in inside {
                            for c in 0..<width { out[c] = R.finish(R.widen(tap[c]), windowSize: 1) }
                            tap += tapStep
                            out += outStep
                        }
                    }
                    unrolledChannels(channels, positions)
                }
            }
        }
    }
}
