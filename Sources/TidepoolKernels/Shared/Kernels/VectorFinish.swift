import CTidepoolVector
import TidepoolTypes

/// The last step of averages of 16-bit floats by the kernels of tidepool_vector.h: sums
/// folded, scaled and rounded in AVX-512, bit for bit as `finishTaps` and the edge loops do,
/// where this CPU has the instructions (chosen at run time, never assumed from the build
/// machine). In depth first the edge positions are vector lanes too, so none is redone alone.
public struct VectorFinish: Sendable {
    let format: tpvector_format
    /// Whether `runs` pays: for bfloat16, whose rounding is long in Swift; not for float16,
    /// whose Swift loop converts in one instruction already (F16C) and was slower with it.
    let finishesRuns: Bool

    /// nil where this CPU lacks the kernels for `format`.
    init?(_ format: tpvector_format) {
        guard tpvector_supports(format) != 0 else { return nil }
        self.format = format
        finishesRuns = format == TPVECTOR_BFLOAT16
    }

    /// `finishTaps` for up to `sourcesPerPass` taps, without a partial.
    func runs<R: WindowReduction>(_: R.Type, _ output: UnsafeMutablePointer<R.Output>, _ length: Int, taps: Range<Int>,
                                  source: (Int) -> UnsafePointer<R.Accumulator>, windowSize: Int) {
        precondition(taps.count <= sourcesPerPass && R.Accumulator.self == Float.self && MemoryLayout<R.Output>.size == 2)
        withUnsafeTemporaryAllocation(of: UnsafePointer<Float>?.self, capacity: sourcesPerPass) { sources in
            for (i, k) in taps.enumerated() { sources[i] = UnsafeRawPointer(source(k)).assumingMemoryBound(to: Float.self) }
            tpvector_finish_runs(format, UnsafeMutableRawPointer(output).assumingMemoryBound(to: UInt16.self), length,
                                 sources.baseAddress, Int32(taps.count), 1 / Float(windowSize))
        }
    }

    /// `rows` rows of `rowLength` sums at `source` (and of outputs at `output`), each output j
    /// folding `taps` taps from j + `first`, `step` apart, those outside the row as zeros.
    func rows<R: WindowReduction>(_: R.Type, _ output: UnsafeMutablePointer<R.Output>, _ source: UnsafePointer<R.Accumulator>,
                                  rows: Int, rowLength: Int, first: Int, step: Int, taps: Int, windowSize: Int) {
        precondition((1...sourcesPerPass).contains(taps) && R.Accumulator.self == Float.self && MemoryLayout<R.Output>.size == 2)
        tpvector_finish_rows(format, UnsafeMutableRawPointer(output).assumingMemoryBound(to: UInt16.self),
                             UnsafeRawPointer(source).assumingMemoryBound(to: Float.self), rows, rowLength, first, step,
                             Int32(taps), 1 / Float(windowSize))
    }
}
