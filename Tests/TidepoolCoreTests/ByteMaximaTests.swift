import CTidepoolVector
import Testing

@Suite struct ByteMaximaTests {
    /// `tpvector_byte_maxima` (the AVX2 byte maxima that `foldPositions` takes for 16 channels
    /// or more) gives each position's channels the maximum of its taps, signed or unsigned as
    /// asked, for 16 to 300 channels (vectors of 16 bytes below 32, of 32 from there, up to 4
    /// per sweep over the taps, the last ending at the last channel), one to several taps, odd
    /// and even position counts (two positions at a time, then one), windows that overlap,
    /// touch or leave gaps, and a source off any alignment; it writes nothing past each
    /// position's channels and reads nothing outside the windows (the bytes around them are the
    /// type's largest value, which would win). It declines, writing nothing, fewer than 16
    /// channels and windows of no tap.
    /// Only where the CPU runs x86-64-v3 code (the function is never called elsewhere);
    /// `PoolingTests.stridedRowsOfManyChannels` covers byte maxima of these channel counts on
    /// every CPU, through whichever fold the kernels take.
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
            for channels in [8, 15, 16, 17, 27, 31, 32, 33, 37, 64, 70, 80, 100, 300] {
                for taps in [0, 1, 2, 3, 7] {
                    for (count, gap) in [(0, 0), (1, 0), (2, 3), (5, 0), (6, 11), (9, -1)] {
                        // Columns `tapStep` bytes apart hold `channels` window bytes then `gap`
                        // outside ones; positions `jump` apart (overlapping windows where
                        // the gap is negative: columns of the next position's window).
                        let tapStep = channels + Swift.max(gap, 0)
                        let jump = gap < 0 ? tapStep : Swift.max(taps, 1) * tapStep + 5
                        let span = (count == 0 ? 0 : (count - 1) * jump + Swift.max(taps, 1) * tapStep) + 64
                        var source = [UInt8](repeating: outside, count: span + 1)
                        for i in 0..<count {
                            for t in 0..<taps {
                                for c in 0..<channels { source[1 + i * jump + t * tapStep + c] = next() & 0xFE }
                            }
                        }
                        var out = [UInt8](repeating: 0xEE, count: (count + 1) * channels)
                        let done = source.withUnsafeBytes { from in
                            out.withUnsafeMutableBytes { to in
                                tpvector_byte_maxima(from.baseAddress! + 1, count, jump, tapStep, taps, channels, isSigned ? 1 : 0,
                                                     to.baseAddress!)
                            }
                        }
                        let takes = channels >= 16 && taps >= 1
                        #expect((done != 0) == takes, "channels \(channels) taps \(taps)")
                        var expected = [UInt8](repeating: 0xEE, count: out.count)
                        if takes {
                            for i in 0..<count {
                                for c in 0..<channels {
                                    let values = (0..<taps).map { source[1 + i * jump + $0 * tapStep + c] }
                                    expected[i * channels + c] = isSigned
                                        ? UInt8(bitPattern: values.map { Int8(bitPattern: $0) }.max()!)
                                        : values.max()!
                                }
                            }
                            checked += 1
                        }
                        #expect(out == expected, "signed \(isSigned) channels \(channels) taps \(taps) count \(count) gap \(gap)")
                    }
                }
            }
        }
        #expect(checked == 2 * 12 * 4 * 6)
    }
}
