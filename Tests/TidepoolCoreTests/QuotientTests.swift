import Testing
import TidepoolKernelsAVX2

/// The means of integers, divided in the AVX2 build without a division (`quotient`).
@Suite struct QuotientTests {
    /// The AVX2 build's integer means divide by a multiply and two fused multiply-adds
    /// (`quotient`): the same bits as the division, for every sum and window size the 16-bit
    /// sums take (8-bit inputs, windows of up to 257), every sum of 8-bit windows of up to 96 on
    /// the float32 path, random sums at larger windows of each path, and sums at and next to
    /// float32 rounding midpoints on the float64 paths. Run through the AVX2
    /// module's types (here, compiled for any CPU, a fused multiply-add is exact in software
    /// too), so it runs everywhere.
    @Test func integerMeansDivideAsTheDivisionDoes() {
        typealias Byte16 = TidepoolKernelsAVX2.AverageInt16Sum<UInt8>
        typealias SignedByte16 = TidepoolKernelsAVX2.AverageInt16Sum<Int8>
        typealias Small = TidepoolKernelsAVX2.AverageSmallInteger<Int16>
        typealias Wide32 = TidepoolKernelsAVX2.AverageInt32Sum<Int16>
        typealias Narrow = TidepoolKernelsAVX2.AverageNarrowInteger<Int32>
        typealias Wide = TidepoolKernelsAVX2.AverageWideInteger<Int64>
        var wrong = 0
        func check(_ actual: Float, _ expected: Float, _ what: @autoclosure () -> String) {
            guard actual.bitPattern != expected.bitPattern else { return }
            wrong += 1
            if wrong <= 5 { Issue.record("\(what()): \(actual) where the division gives \(expected)") }
        }
        for n in 1...257 {
            for sum in 0...(255 * n) {
                check(Byte16.finish(Int16(truncatingIfNeeded: sum), windowSize: n), Float(sum) / Float(n), "uint8 sum \(sum) over \(n)")
            }
        }
        for n in 1...255 {
            for sum in (-128 * n)...(127 * n) {
                check(SignedByte16.finish(Int16(sum), windowSize: n), Float(sum) / Float(n), "int8 sum \(sum) over \(n)")
            }
        }
        for n in 1...96 {
            for sum in (-255 * n)...(255 * n) {
                check(Small.finish(Int32(sum), windowSize: n), Float(sum) / Float(n), "int16 sum \(sum) over \(n)")
            }
        }
        var rng = SplitMix64(seed: 25)
        for _ in 0..<300_000 {
            let n = Int(rng.next() % 65793) + 1, limit = (1 << 24) - 1
            let sum = Int(rng.next() % UInt64(2 * limit + 1)) - limit
            check(Small.finish(Int32(sum), windowSize: n), Float(sum) / Float(n), "float32 path: sum \(sum) over \(n)")
            let big = Int32(truncatingIfNeeded: rng.next()), many = Int(rng.next() % (1 << 31)) + 1
            check(Wide32.finish(big, windowSize: many), Float(Double(big) / Double(many)), "Int32 sum \(big) over \(many)")
            let huge = Int64(bitPattern: rng.next()) >> Int(rng.next() % 40)
            check(Narrow.finish(huge, windowSize: many), Float(Double(huge) / Double(many)), "Int64 sum \(huge) over \(many)")
            let double = Double(huge) * 4096
            check(Wide.finish(double, windowSize: many), Float(double / Double(many)), "Double sum \(double) over \(many)")
            // At and next to the window times a float32 midpoint (an odd 25-bit integer over a power of
            // two): there the last bit of the float64 quotient decides the float32 one.
            let odd = Int64(1 << 24) + 2 * Int64(rng.next() % (1 << 23)) + 1, factor = Int64(rng.next() % 2047) + 1
            let window = Int(factor) << Int(rng.next() % 21), near = odd * factor + Int64(rng.next() % 3) - 1
            let expected = Float(Double(near) / Double(window))
            check(Narrow.finish(near, windowSize: window), expected, "Int64 sum \(near) over \(window)")
            check(Wide.finish(Double(near), windowSize: window), expected, "Double sum \(near) over \(window)")
            if let small = Int32(exactly: near) { check(Wide32.finish(small, windowSize: window), expected, "Int32 sum \(near) over \(window)") }
        }
        #expect(wrong == 0)
    }
}
