import CTidepoolStream
import TidepoolTypes

/// Averages divided by something other than the window size (PyTorch's ceil_mode and
/// count_include_pad=False, `PoolGeometry.AverageDivisor`). The strategies finish every
/// output with 1 / windowSize, which keeps their loops free of a per-position divisor; the
/// outputs whose divisor differs (windows reaching into padding: bands a few outputs wide at the
/// edges of each axis) are then corrected here, tile by tile:
/// - float32 and float64: the finished mean times windowSize / divisor (in the output's type),
///   one multiply per output. Within 2 roundings of the exact mean more than the window-size
///   path (4 units in the last place in all), far inside the dtypes' tolerances. A mean so small
///   that scaling it up would bring a subnormal's lost bits into view is summed again instead.
/// - other types (integer inputs, whose means are exact and rounded once; 16-bit floats, where
///   a second rounding would cost a unit in their last place): summed again over the window's
///   in-bounds positions, tap by tap in (d, h, w) order, and finished with the divisor. That
///   costs about the window's size per edge output, so count_include_pad=False on large 3-d
///   windows of these types is slow (docs/performance.md).
extension TilePass {
    func redoDivisors() {
        if R.Input.self == Float.self && R.Output.self == Float.self {
            correctDivisors(scaling: Float.self)
        } else if R.Input.self == Double.self && R.Output.self == Double.self {
            correctDivisors(scaling: Double.self)
        } else {
            correctDivisors(scaling: Never.self)
        }
    }

    /// Corrects the tile's outputs whose divisor is not windowSize: scaled where `F` is the
    /// output's float type, summed again where it is `Never`.
    private func correctDivisors<F>(scaling _: F.Type) {
        let full = g.fullDivisorOutputs
        if kernel.streamOutput { tpstream_fence() }  // order the kernel's streamed stores before these
        let channels = channels, stepC = g.stepC, windowSize = g.windowSize
        let base = input + tile.n * g.stepN + tile.c.lowerBound * stepC
        withUnsafeTemporaryAllocation(of: R.Accumulator.self, capacity: channels) { sums in
            let sums = sums.baseAddress!
            /// Output `out`'s window [d0, d1) x [h0, h1) x [w0, w1), summed again and finished.
            func sumAgain(_ out: UnsafeMutablePointer<R.Output>, _ d0: Int, _ d1: Int, _ h0: Int, _ h1: Int, _ w0: Int, _ w1: Int,
                          count: Int) {
                for c in 0..<channels { sums[c] = R.identity }
                for d in d0..<Swift.max(d0, d1) {
                    for h in h0..<Swift.max(h0, h1) {
                        for w in w0..<Swift.max(w0, w1) {
                            let tap = base + d * g.stepD + h * g.stepH + w * g.stepW
                            if stepC == 1 {
                                for c in 0..<channels { sums[c] = R.merge(sums[c], R.widen(tap[c])) }
                            } else {
                                for c in 0..<channels { sums[c] = R.merge(sums[c], R.widen(tap[c * stepC])) }
                            }
                        }
                    }
                }
                // A window with no position in the input sums to 0 and averages to 0 (as
                // PyTorch's kernels leave it), not 0 / 0.
                for c in 0..<channels { out[c] = R.finish(sums[c], windowSize: Swift.max(1, count)) }
            }
            for od in tile.od {
                let (d0, d1) = windowBounds(od, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
                let countD = g.divisor(od, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
                for oh in tile.oh {
                    let (h0, h1) = windowBounds(oh, stride: g.strideH, padding: g.padH, kernel: g.kernelH, length: g.inH)
                    let countH = g.divisor(oh, stride: g.strideH, padding: g.padH, kernel: g.kernelH, length: g.inH)
                    let row = output + ((tile.n * g.outD + od) * g.outH + oh) * g.outW * g.channels + tile.c.lowerBound
                    // Rows whose D and H divisors are whole correct only their edge columns.
                    let edgesOnly = full.d.contains(od) && full.h.contains(oh)
                    let split = Swift.min(Swift.max(full.w.lowerBound, tile.ow.lowerBound), tile.ow.upperBound)
                    let resume = Swift.min(Swift.max(full.w.upperBound, split), tile.ow.upperBound)
                    let left = edgesOnly ? tile.ow.lowerBound..<split : tile.ow
                    let right = edgesOnly ? resume..<tile.ow.upperBound : tile.ow.upperBound..<tile.ow.upperBound
                    for ow in left.lowerBound..<(left.upperBound + right.count) {
                        let ow = ow < left.upperBound ? ow : ow - left.upperBound + right.lowerBound
                        let (w0, w1) = windowBounds(ow, stride: g.strideW, padding: g.padW, kernel: g.kernelW, length: g.inW)
                        let count = countD * countH * g.divisor(ow, stride: g.strideW, padding: g.padW, kernel: g.kernelW, length: g.inW)
                        let out = row + ow * g.channels
                        if F.self == Float.self {
                            let values = UnsafeMutableRawPointer(out).assumingMemoryBound(to: Float.self)
                            if scale(values, channels, windowSize: windowSize, count: count) { continue }
                        } else if F.self == Double.self {
                            let values = UnsafeMutableRawPointer(out).assumingMemoryBound(to: Double.self)
                            if scale(values, channels, windowSize: windowSize, count: count) { continue }
                        }
                        sumAgain(out, d0, d1, h0, h1, w0, w1, count: count)
                    }
                }
            }
        }
    }
}

/// Rescales `channels` means by windowSize / count, unless one of them is subnormal, its bits
/// below the normal range lost, which scaling would bring into view (then false: sum again).
/// A count of 0 (no position in the input) gives 0, as the mean of nothing is taken to be.
@inline(__always)
private func scale<F: BinaryFloatingPoint>(_ values: UnsafeMutablePointer<F>, _ channels: Int, windowSize: Int, count: Int) -> Bool {
    for c in 0..<channels where values[c] != 0 && abs(values[c]) < F.leastNormalMagnitude { return false }
    let factor = count == 0 ? 0 : F(windowSize) / F(count)
    for c in 0..<channels { values[c] *= factor }
    return true
}
