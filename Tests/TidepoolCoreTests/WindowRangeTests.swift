import Testing
import TidepoolKernels
import TidepoolTypes

/// The ranges along one axis that the passes derive from a geometry, against sets counted
/// window by window.
@Suite struct WindowRangeTests {
    /// `positionsAhead`, the rows height first fetches while it folds a window (or a pair): the
    /// rows the next windows read that no window up to this one read, clipped to the tile's
    /// rows and the input. Prefetches never fault, so a range past the input or the tile would
    /// go unseen by every result test; here it fails.
    @Test func positionsAheadAreTheNextWindowsNewRows() {
        var checked = 0
        for kernel in 1...9 {
            for stride in 1...(kernel + 2) {
                for padding in 0...(kernel / 2) {
                    for length in [1, 2, 5, 13, 30] {
                        let outputs = (length + 2 * padding - kernel) / stride + 1
                        guard outputs > 0 else { continue }
                        for within in [0..<length, (length / 3)..<(length - length / 4)] {
                            for o in 0..<outputs {
                                for count in 1...2 {
                                    let range = positionsAhead(after: o, count: count, stride: stride, padding: padding, kernel: kernel,
                                                               length: length, within: within)
                                    // Rows read by windows o + 1 ... o + count and by none up to o
                                    // (window starts grow with o, so those end before o's end).
                                    let read = (o + 1)...(o + count)
                                    let expected = Set(read.flatMap { w in (w * stride - padding)..<(w * stride - padding + kernel) })
                                        .filter { $0 >= o * stride - padding + kernel && within.contains($0) && $0 >= 0 && $0 < length }
                                    #expect(range.allSatisfy { within.contains($0) && $0 >= 0 && $0 < length },
                                            "k\(kernel) s\(stride) p\(padding) n\(length) o\(o) count \(count): \(range)")
                                    if count == 1 || stride <= kernel {
                                        #expect(Set(range) == expected,
                                                "k\(kernel) s\(stride) p\(padding) n\(length) o\(o) count \(count): \(range), not \(expected.sorted())")
                                    } else {
                                        // Gaps between the windows come with them.
                                        #expect(expected.isSubset(of: Set(range)), "k\(kernel) s\(stride) count 2: \(range)")
                                    }
                                    checked += 1
                                }
                            }
                        }
                    }
                }
            }
        }
        #expect(checked > 10_000)
    }

    /// `PartCuts`, the parts a pass and its prefetches run in: stepped without divisions, each
    /// part must be total * i / parts ..< total * (i + 1) / parts exactly, so the parts cover
    /// the run once, in order, and a part's fetched bytes match its elements as before.
    @Test func partCutsAreTheDividedCuts() {
        var checked = 0
        let totals = Array(0...130) + [1 << 20, 5_786, 4_000_037, (1 << 40) + 12_345]
        for total in totals {
            for parts in [1, 2, 3, 5, 7, 15, 16, 17, 64, 129] {
                var cuts = PartCuts(total, parts), expected = 0
                for i in 0..<parts {
                    let part = cuts.next()
                    #expect(part == (total * i / parts)..<(total * (i + 1) / parts), "total \(total) parts \(parts) part \(i): \(part)")
                    #expect(part.lowerBound == expected)
                    expected = part.upperBound
                    checked += 1
                }
                #expect(expected == total, "total \(total) parts \(parts) ended at \(expected)")
            }
        }
        #expect(checked > 10_000)
    }
}
