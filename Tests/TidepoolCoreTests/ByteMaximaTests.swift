import CTidepoolVector
import Testing
import TidepoolCore
import TidepoolKernels

@Suite struct ByteMaximaTests {
    /// `tpvector_byte_maxima` (the AVX2 byte maxima that `foldPositions` takes for 9 channels
    /// or more, and whole windows for the windows inside a row) gives each position's channels
    /// the maximum of its taps, signed or unsigned as asked, for 9 to 300 channels (vectors of 8
    /// bytes below 16, of 16 below 32, of 32 from there, up to 4 per sweep over the taps, the
    /// last ending at the last channel), one to several taps in one to three rows, odd and even
    /// position counts (two positions at a time, then one), windows that overlap, touch or
    /// leave gaps, outputs packed or further apart, and a source off any alignment; it writes
    /// nothing past each position's channels and reads nothing outside the windows (the bytes
    /// around them are the type's largest value, which would win). It declines, writing
    /// nothing, fewer than 9 channels and windows of no tap or no row.
    /// Only where the CPU runs x86-64-v3 code (the function is never called elsewhere);
    /// `PoolingTests.stridedRowsOfManyChannels` and `wholeWindowsOfManyChannels` below cover
    /// byte maxima of these channel counts on every CPU, through whichever fold the kernels take.
    @Test(.enabled(if: tpvector_supports_x86_64_v3() != 0))
    func foldsEachPositionsTaps() {
        var checked = 0
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt8 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 56)
        }
        for isSigned in [true, false] {
            // The largest value of the type: read from outside a window, it would be the maximum.
            let outside: UInt8 = isSigned ? 0x7F : 0xFF
            for channels in [8, 9, 12, 15, 16, 17, 27, 31, 32, 33, 37, 64, 70, 100, 300] {
                for (taps, rows) in [(0, 1), (1, 0), (1, 1), (2, 1), (3, 1), (7, 1), (1, 3), (3, 2), (2, 3)] {
                    for (count, gap) in [(0, 0), (1, 0), (2, 3), (5, 0), (6, 11), (9, -1)] {
                        // Columns `tapStep` bytes apart hold `channels` window bytes then `gap`
                        // outside ones, a window's rows `rowStep` apart; positions `jump`
                        // apart (overlapping windows where the gap is negative: columns of
                        // the next position's window), outputs `outStep` apart.
                        let tapStep = channels + Swift.max(gap, 0), rowStep = Swift.max(taps, 1) * tapStep + 3
                        let jump = gap < 0 ? tapStep : Swift.max(rows, 1) * rowStep + 5
                        let outStep = channels + Swift.max(gap, 0)
                        let span = (count == 0 ? 0 : (count - 1) * jump + Swift.max(rows, 1) * rowStep) + 64
                        var source = [UInt8](repeating: outside, count: span + 1)
                        for i in 0..<count {
                            for r in 0..<rows {
                                for t in 0..<taps {
                                    for c in 0..<channels { source[1 + i * jump + r * rowStep + t * tapStep + c] = next() & 0xFE }
                                }
                            }
                        }
                        var out = [UInt8](repeating: 0xEE, count: (count + 1) * outStep)
                        let rowsAt = (0..<3).map { $0 * rowStep }
                        let done = source.withUnsafeBytes { from in
                            out.withUnsafeMutableBytes { to in
                                rowsAt.withUnsafeBufferPointer { rowsAt in
                                    // One row at 0 given as no table, as `foldPositions` does.
                                    var windows = tpvector_byte_windows(
                                        first: from.baseAddress! + 1, count: count, jump: jump, rows_at: rows == 1 ? nil : rowsAt.baseAddress,
                                        rows: rows, tap_step: tapStep, taps: taps, channels: channels, out: to.baseAddress!, out_step: outStep)
                                    return tpvector_byte_maxima(&windows, isSigned ? 1 : 0)
                                }
                            }
                        }
                        let takes = channels >= 9 && taps >= 1 && rows >= 1
                        #expect((done != 0) == takes, "channels \(channels) taps \(taps) rows \(rows)")
                        var expected = [UInt8](repeating: 0xEE, count: out.count)
                        if takes {
                            for i in 0..<count {
                                for c in 0..<channels {
                                    let values = (0..<rows).flatMap { r in
                                        (0..<taps).map { source[1 + i * jump + r * rowStep + $0 * tapStep + c] }
                                    }
                                    expected[i * outStep + c] = isSigned
                                        ? UInt8(bitPattern: values.map { Int8(bitPattern: $0) }.max()!)
                                        : values.max()!
                                }
                            }
                            checked += 1
                        }
                        #expect(out == expected, "signed \(isSigned) channels \(channels) taps \(taps) rows \(rows) count \(count) gap \(gap)")
                    }
                }
            }
        }
        #expect(checked == 2 * 14 * 7 * 6)
    }

    /// Byte maxima of whole windows (strides at least the kernel, `Strategy.wholeWindows`), on
    /// every CPU: where the AVX2 kernels run, the windows inside a row along W go to
    /// `tpvector_byte_maxima` (their (d, h) rows as offsets), those that padding cuts, and
    /// tiles of fewer than 9 channels, fold in Swift. 2-d and 3-d, 9 to 70 channels, padding 0
    /// and 1, one thread's tiles and tiles of a few channels (outputs further apart than the
    /// tile's channels). Against the reference.
    @Test(arguments: [DType.int8, .uint8])
    func wholeWindowsOfManyChannels(dtype: DType) throws {
        let engines = [PoolEngine(threads: 1)] + [64, 300].map { PoolEngine(threads: 2, tileBudgetBytes: $0, serialWorkBelow: 0) }
        var checked = 0
        for channels in [9, 12, 15, 16, 28, 31, 33, 64, 70] {
            for spatial in [[7, 11], [3, 5, 9]] {
                let dims = spatial.count
                let windows = dims == 2 ? [(2, 2, 0), (2, 2, 1), (3, 3, 1), (2, 3, 1), (3, 4, 0)]
                                        : [(2, 2, 0), (2, 2, 1), (2, 3, 1), (2, 4, 0), (2, 5, 1)]
                for (kernel, stride, padding) in windows {
                    let desc = PoolDescriptor(kind: .max, kernelSize: [Int](repeating: kernel, count: dims),
                                              stride: [Int](repeating: stride, count: dims), padding: [Int](repeating: padding, count: dims))
                    let shape = [2] + spatial + [channels], strides = TensorView.contiguousStrides(shape)
                    let plan = try #require(try engines[0].kernelPlan(desc, input: TensorView(data: nil, dtype: dtype, shape: shape)))
                    #expect(plan.strategy == .wholeWindows, "\(desc) \(shape)")
                    let input = randomInput(dtype, shape: shape, seed: UInt64(channels * 100 + kernel * 10 + stride))
                    let expected = try #require(referencePool(desc, storage: input, offset: 0, shape: shape, strides: strides))
                    for engine in engines {
                        let run = try runEngine(desc, storage: input, offset: 0, shape: shape, strides: strides, engine: engine)
                        #expect(firstMismatch(desc, dtype: dtype, actual: run.output, expected: expected.values) == nil,
                                "\(desc) \(dtype) \(shape) budget \(engine.settings.tileBudgetBytes)")
                        checked += 1
                    }
                }
            }
        }
        #expect(checked == 9 * 2 * 5 * 3)
    }
}
