import CTidepoolVector
import Testing

@Suite struct PhaseSplitTests {
    /// `tpvector_split_into_phases` (the AVX2 splits that `splitIntoPhases` takes) puts unit r of
    /// group g at phase r, place g, for each unit and step it takes (1-, 2- and 4-byte units at
    /// step 4, 2-byte units at steps 5 to 16, 4-byte units at steps 3 and 5 to 8), for every group
    /// count from none to past several vector steps (the groups a step's runs would read past go
    /// one by one), phases longer than the groups (their places past the groups untouched), and a
    /// source off any alignment; it declines, writing nothing, every other unit and step, as
    /// `tpvector_splits_into_phases` says.
    /// Only where the CPU runs x86-64-v3 code (the function is never called elsewhere);
    /// `rowsOfOneOrTwoChannelsSplitIntoPhases` covers these steps on every CPU, through
    /// whichever split the kernels take.
    @Test(.enabled(if: tpvector_supports_x86_64_v3() != 0))
    func splitsPlaceEachUnit() {
        var split = 0
        for unitBytes in [1, 2, 4, 8] {
            for step in 2...16 {
                for groups in Array(0...40) + [100, 101] {
                    for extra in [0, 3] {
                        let phaseLength = groups + extra
                        // Byte k of the source is k mod 251 (a prime period: a unit put in
                        // another's place shows unless moved by a multiple of 251 units), one
                        // byte in: the loads are unaligned.
                        let source = (0..<(step * groups * unitBytes + 1)).map { UInt8($0 % 251) }
                        var phases = [UInt8](repeating: 0xEE, count: step * phaseLength * unitBytes)
                        let done = source.withUnsafeBytes { from in
                            phases.withUnsafeMutableBytes { to in
                                tpvector_split_into_phases(from.baseAddress! + 1, unitBytes, step, groups, phaseLength, to.baseAddress!)
                            }
                        }
                        let takes = (step == 4 && unitBytes <= 4) || (unitBytes == 2 && step >= 5) || (unitBytes == 4 && (3...8).contains(step))
                        #expect((done != 0) == takes, "unit \(unitBytes) step \(step)")
                        #expect((tpvector_splits_into_phases(unitBytes, step) != 0) == takes, "unit \(unitBytes) step \(step)")
                        var expected = [UInt8](repeating: 0xEE, count: phases.count)
                        if takes {
                            for g in 0..<groups {
                                for r in 0..<step {
                                    for b in 0..<unitBytes {
                                        expected[(r * phaseLength + g) * unitBytes + b] = source[1 + (step * g + r) * unitBytes + b]
                                    }
                                }
                            }
                            split += 1
                        }
                        #expect(phases == expected, "unit \(unitBytes) step \(step) groups \(groups) phase length \(phaseLength)")
                    }
                }
            }
        }
        #expect(split == 20 * 43 * 2)
    }
}
