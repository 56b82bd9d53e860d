import TidepoolTypes

/// Height first (`Strategy.heightFirst`): the plane ring of width first (WidthFirst.swift), each
/// plane reduced along H before W.
extension TilePass {
    /// Reduces input plane d along H, then W, into its ring slot: with a row stride above 1,
    /// W then runs over the output's rows only, fewer than the input's. Each output row's input
    /// rows are folded (widened) into `paddedRow`, identity where the padding is, and that row
    /// is reduced along W at the plan's positions (every position, or the output's own at a
    /// W stride above 1), each window's taps from its first column, padded ones included.
    func reducePlaneHeightFirst(_ d: Int) {
        let plane = ringSlot(d)
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
            if width.step == 1 {
                reducePaddedRow(into: out)
            } else {
                foldPositions(AccumulatorLoader<R>.self, UnsafePointer(paddedRow), count: positions.count, jump: width.step * channels,
                              tapStep: channels, taps: g.kernelW, channels: channels, into: out)
            }
        }
    }
}
