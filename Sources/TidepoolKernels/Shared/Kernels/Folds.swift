import CTidepoolVector
import TidepoolTypes

/// The folds every strategy is built from. Each runs over a contiguous run of accumulators
/// (a fused (W, C) row, since channels are innermost), which the compiler vectorises; a fold's
/// order of merges is fixed by its arguments alone, so results never depend on the tiling.

/// How a fold reads its sources: input elements (widened) or accumulators. A static type,
/// not a closure, so every loop is specialised and vectorised.
protocol SourceLoader {
    associatedtype Reduction: WindowReduction
    associatedtype Source
    static func load(_ x: Source) -> Reduction.Accumulator
}

enum InputLoader<R: WindowReduction>: SourceLoader {
    typealias Reduction = R
    typealias Source = R.Input
    @inline(__always) static func load(_ x: R.Input) -> R.Accumulator { R.widen(x) }
}

enum AccumulatorLoader<R: WindowReduction>: SourceLoader {
    typealias Reduction = R
    typealias Source = R.Accumulator
    @inline(__always) static func load(_ x: R.Accumulator) -> R.Accumulator { x }
}

/// Folds up to 6 sources into `destination` in one pass, in order: destination (unless
/// `first`), then s0, s1, ... Fewer passes over the accumulators than one per source.
@inline(__always)
func foldPass<L: SourceLoader>(
    _: L.Type, _ destination: UnsafeMutablePointer<L.Reduction.Accumulator>, _ length: Int, first: Bool, count: Int,
    _ s0: UnsafePointer<L.Source>, _ s1: UnsafePointer<L.Source>, _ s2: UnsafePointer<L.Source>, _ s3: UnsafePointer<L.Source>, _ s4: UnsafePointer<L.Source>, _ s5: UnsafePointer<L.Source>
) {
    typealias R = L.Reduction
    let load = L.load
    let d = destination
    switch (count, first) {
    case (1, true): for j in 0..<length { d[j] = load(s0[j]) }
    case (1, false): for j in 0..<length { d[j] = R.merge(d[j], load(s0[j])) }
    case (2, true): for j in 0..<length { d[j] = R.merge(load(s0[j]), load(s1[j])) }
    case (2, false): for j in 0..<length { d[j] = R.merge(R.merge(d[j], load(s0[j])), load(s1[j])) }
    case (3, true): for j in 0..<length { d[j] = R.merge(R.merge(load(s0[j]), load(s1[j])), load(s2[j])) }
    case (3, false): for j in 0..<length { d[j] = R.merge(R.merge(R.merge(d[j], load(s0[j])), load(s1[j])), load(s2[j])) }
    case (4, true): for j in 0..<length { d[j] = R.merge(R.merge(R.merge(load(s0[j]), load(s1[j])), load(s2[j])), load(s3[j])) }
    case (4, false): for j in 0..<length { d[j] = R.merge(R.merge(R.merge(R.merge(d[j], load(s0[j])), load(s1[j])), load(s2[j])), load(s3[j])) }
    case (5, true): for j in 0..<length { d[j] = R.merge(R.merge(R.merge(R.merge(load(s0[j]), load(s1[j])), load(s2[j])), load(s3[j])), load(s4[j])) }
    case (5, false): for j in 0..<length { d[j] = R.merge(R.merge(R.merge(R.merge(R.merge(d[j], load(s0[j])), load(s1[j])), load(s2[j])), load(s3[j])), load(s4[j])) }
    case (_, true): for j in 0..<length { d[j] = R.merge(R.merge(R.merge(R.merge(R.merge(load(s0[j]), load(s1[j])), load(s2[j])), load(s3[j])), load(s4[j])), load(s5[j])) }
    case (_, false): for j in 0..<length { d[j] = R.merge(R.merge(R.merge(R.merge(R.merge(R.merge(d[j], load(s0[j])), load(s1[j])), load(s2[j])), load(s3[j])), load(s4[j])), load(s5[j])) }
    }
}

/// Sources folded per pass.
let sourcesPerPass = 6

/// Folds sources `taps` (each located by `source`) into `destination`, 6 per pass.
@inline(__always)
func foldTaps<L: SourceLoader>(
    _: L.Type, _ destination: UnsafeMutablePointer<L.Reduction.Accumulator>, _ length: Int, taps: Range<Int>, first: Bool,
    source: (Int) -> UnsafePointer<L.Source>
) {
    var k = taps.lowerBound
    var isFirst = first
    while k < taps.upperBound {
        let count = Swift.min(sourcesPerPass, taps.upperBound - k)
        let s0 = source(k)
        foldPass(L.self, destination, length, first: isFirst, count: count, s0, count > 1 ? source(k + 1) : s0, count > 2 ? source(k + 2) : s0, count > 3 ? source(k + 3) : s0, count > 4 ? source(k + 4) : s0, count > 5 ? source(k + 5) : s0)
        k += count
        isFirst = false
    }
}

/// Whether full windows of `taps` along an axis of stride 1 fold in pairs (`foldPair`).
func foldsInPairs(_ taps: Int) -> Bool { KernelLimits.pairedTaps.contains(taps) }

/// Folds two outputs whose windows of `taps` sources (2 to 5) start one source apart:
/// they share the fold of their middle `taps - 1` sources, then merge the first and the
/// last source respectively, `taps` merges for the two instead of 2 * (taps - 1). Sources
/// are `source(0...taps)`.
@inline(__always)
func foldPair<L: SourceLoader>(
    _: L.Type, _ o0: UnsafeMutablePointer<L.Reduction.Accumulator>, _ o1: UnsafeMutablePointer<L.Reduction.Accumulator>,
    _ length: Int, taps: Int, source: (Int) -> UnsafePointer<L.Source>
) {
    typealias R = L.Reduction
    let load = L.load
    let s0 = source(0), s1 = source(1), s2 = source(2)
    switch taps {
    case 2:
        for j in 0..<length { let m = load(s1[j]); o0[j] = R.merge(m, load(s0[j])); o1[j] = R.merge(m, load(s2[j])) }
    case 3:
        let s3 = source(3)
        for j in 0..<length { let m = R.merge(load(s1[j]), load(s2[j])); o0[j] = R.merge(m, load(s0[j])); o1[j] = R.merge(m, load(s3[j])) }
    case 4:
        let s3 = source(3), s4 = source(4)
        for j in 0..<length {
            let m = R.merge(R.merge(load(s1[j]), load(s2[j])), load(s3[j]))
            o0[j] = R.merge(m, load(s0[j])); o1[j] = R.merge(m, load(s4[j]))
        }
    default:
        let s3 = source(3), s4 = source(4), s5 = source(5)
        for j in 0..<length {
            let m = R.merge(R.merge(R.merge(load(s1[j]), load(s2[j])), load(s3[j])), load(s4[j]))
            o0[j] = R.merge(m, load(s0[j])); o1[j] = R.merge(m, load(s5[j]))
        }
    }
}

/// Finishes two windows that start `stride` (2 to `KernelLimits.pairedHStride`) sources
/// apart, the sources they share folded into `second` already, in one pass: into `first`,
/// the first window's own sources (`source(0 ..< stride)`, before the shared ones) and
/// `second`; into `second`, the second window's own (`source(stride ..< 2 * stride)`, after
/// them). The second window is a left fold of its sources. The first is one too for maxima
/// (own sources, then the shared fold: merges are associative, and of equal values the first
/// must stay); sums add their own sources after the shared fold, the order in which
/// `HeightRows.foldFirstOfPair` folds such a window alone (`KernelPlan.pairsH`).
@inline(__always)
func windowPair<L: SourceLoader>(
    _: L.Type, _ first: UnsafeMutablePointer<L.Reduction.Accumulator>, _ second: UnsafeMutablePointer<L.Reduction.Accumulator>,
    _ length: Int, stride: Int, source: (Int) -> UnsafePointer<L.Source>
) {
    typealias R = L.Reduction
    let load = L.load, o0 = first, o1 = second
    let a0 = source(0), a1 = source(1), b0 = source(stride), b1 = source(stride + 1)
    switch stride {
    case 2:
        for j in 0..<length {
            let m = o1[j]
            o0[j] = R.mergesOverlaps ? R.merge(R.merge(load(a0[j]), load(a1[j])), m) : R.merge(R.merge(m, load(a0[j])), load(a1[j]))
            o1[j] = R.merge(R.merge(m, load(b0[j])), load(b1[j]))
        }
    case 3:
        let a2 = source(2), b2 = source(5)
        for j in 0..<length {
            let m = o1[j]
            o0[j] = R.mergesOverlaps ? R.merge(R.merge(R.merge(load(a0[j]), load(a1[j])), load(a2[j])), m)
                : R.merge(R.merge(R.merge(m, load(a0[j])), load(a1[j])), load(a2[j]))
            o1[j] = R.merge(R.merge(R.merge(m, load(b0[j])), load(b1[j])), load(b2[j]))
        }
    default:
        let a2 = source(2), a3 = source(3), b2 = source(6), b3 = source(7)
        for j in 0..<length {
            let m = o1[j]
            o0[j] = R.mergesOverlaps ? R.merge(R.merge(R.merge(R.merge(load(a0[j]), load(a1[j])), load(a2[j])), load(a3[j])), m)
                : R.merge(R.merge(R.merge(R.merge(m, load(a0[j])), load(a1[j])), load(a2[j])), load(a3[j]))
            o1[j] = R.merge(R.merge(R.merge(R.merge(m, load(b0[j])), load(b1[j])), load(b2[j])), load(b3[j]))
        }
    }
}

/// Writes finished outputs from 3 to 6 sources.
@inline(__always)
func finishPass<L: SourceLoader>(
    _: L.Type, _ output: UnsafeMutablePointer<L.Reduction.Output>, _ length: Int, windowSize: Int, count: Int,
    _ s0: UnsafePointer<L.Source>, _ s1: UnsafePointer<L.Source>, _ s2: UnsafePointer<L.Source>, _ s3: UnsafePointer<L.Source>, _ s4: UnsafePointer<L.Source>, _ s5: UnsafePointer<L.Source>
) {
    typealias R = L.Reduction
    let o = output, w = windowSize, load = L.load
    switch count {
    case 3: for j in 0..<length { o[j] = R.finish(R.merge(R.merge(load(s0[j]), load(s1[j])), load(s2[j])), windowSize: w) }
    case 4: for j in 0..<length { o[j] = R.finish(R.merge(R.merge(R.merge(load(s0[j]), load(s1[j])), load(s2[j])), load(s3[j])), windowSize: w) }
    case 5: for j in 0..<length { o[j] = R.finish(R.merge(R.merge(R.merge(R.merge(load(s0[j]), load(s1[j])), load(s2[j])), load(s3[j])), load(s4[j])), windowSize: w) }
    default: for j in 0..<length { o[j] = R.finish(R.merge(R.merge(R.merge(R.merge(R.merge(load(s0[j]), load(s1[j])), load(s2[j])), load(s3[j])), load(s4[j])), load(s5[j])), windowSize: w) }
    }
}

/// The last step of a window: folds `taps` (through `partial` when there are more than
/// fit one pass) and writes the finished outputs, in the same order as `foldTaps`. `taps`
/// is not empty.
@inline(__always)
func finishTaps<L: SourceLoader>(
    _: L.Type, _ output: UnsafeMutablePointer<L.Reduction.Output>, _ length: Int, partial: UnsafeMutablePointer<L.Reduction.Accumulator>,
    taps: Range<Int>, source: (Int) -> UnsafePointer<L.Source>, windowSize: Int
) {
    typealias R = L.Reduction
    if taps.count > sourcesPerPass {
        // Every tap folded into `partial` (a left fold in tap order, as below), then finished
        // from it. A last pass reading `partial` beside its 5 sources was compiled scalar,
        // with a branch per merge, for the max of floats: MaxPool3d k7 took 7x k5's time.
        foldTaps(L.self, partial, length, taps: taps, first: true, source: source)
        let o = output, p = partial
        for j in 0..<length { o[j] = R.finish(p[j], windowSize: windowSize) }
        return
    }
    let k = taps.lowerBound
    let count = taps.upperBound - k
    let s0 = source(k)
    if count <= 2 {
        // The common small windows, as plain loops the vectoriser always takes.
        let o = output, load = L.load
        if count == 1 {
            for j in 0..<length { o[j] = R.finish(load(s0[j]), windowSize: windowSize) }
        } else {
            let s1 = source(k + 1)
            for j in 0..<length { o[j] = R.finish(R.merge(load(s0[j]), load(s1[j])), windowSize: windowSize) }
        }
        return
    }
    finishPass(L.self, output, length, windowSize: windowSize, count: count, s0, count > 1 ? source(k + 1) : s0, count > 2 ? source(k + 2) : s0, count > 3 ? source(k + 3) : s0, count > 4 ? source(k + 4) : s0, count > 5 ? source(k + 5) : s0)
}

/// Folds `count` (1 to 5) accumulator runs `pitch` apart from `runs`, then `last` (loaded by
/// `L`), into `destination` in one pass, left to right: an odd W window's pairs and its last
/// column (`TilePass.pairAlongW`).
@inline(__always)
func foldRunsThenLast<L: SourceLoader>(
    _: L.Type, _ destination: UnsafeMutablePointer<L.Reduction.Accumulator>, _ length: Int,
    runs: UnsafePointer<L.Reduction.Accumulator>, pitch: Int, count: Int, last: UnsafePointer<L.Source>
) {
    typealias R = L.Reduction
    let load = L.load, d = destination, x = last, p0 = runs
    switch count {
    case 1: for j in 0..<length { d[j] = R.merge(p0[j], load(x[j])) }
    case 2:
        let p1 = p0 + pitch
        for j in 0..<length { d[j] = R.merge(R.merge(p0[j], p1[j]), load(x[j])) }
    case 3:
        let p1 = p0 + pitch, p2 = p1 + pitch
        for j in 0..<length { d[j] = R.merge(R.merge(R.merge(p0[j], p1[j]), p2[j]), load(x[j])) }
    case 4:
        let p1 = p0 + pitch, p2 = p1 + pitch, p3 = p2 + pitch
        for j in 0..<length { d[j] = R.merge(R.merge(R.merge(R.merge(p0[j], p1[j]), p2[j]), p3[j]), load(x[j])) }
    default:
        let p1 = p0 + pitch, p2 = p1 + pitch, p3 = p2 + pitch, p4 = p3 + pitch
        for j in 0..<length { d[j] = R.merge(R.merge(R.merge(R.merge(R.merge(p0[j], p1[j]), p2[j]), p3[j]), p4[j]), load(x[j])) }
    }
}

/// `body(a, b)` for each channel of `count` positions that lie `jumps.0` elements apart in one
/// run and `jumps.1` in another, `channels` contiguous elements each: `a` and `b` are the
/// element's offsets in the two. A loop over a run-time 3 or 4 channels per position cost more
/// than the merges in it (strided rows of few channels, forward and gradient), hence
/// `unrolledChannels`. Offsets are wrapping adds, not checked ones per element: callers keep
/// them within rows whose sizes the geometry checked.
@inline(__always)
func channelsByPosition(count: Int, jumps: (Int, Int), channels: Int, _ body: (_ a: Int, _ b: Int) -> Void) {
    @inline(__always) func run(_ channels: Int) {
        var a = 0, b = 0
        for _ in 0..<count {
            for ch in 0..<channels { body(a &+ ch, b &+ ch) }
            a &+= jumps.0
            b &+= jumps.1
        }
    }
    unrolledChannels(channels, run)
}

/// Copies the `channels` elements of each of `count` positions, `jumps.0` elements apart from
/// `from`, to `jumps.1` apart from `to`, each position as one move of a constant size (for 1 to
/// 8 channels): element by element, LLVM could not merge a position's loads (the next
/// position's store might alias them), and 1-d rows of 6 int8 channels moved their kept maxima
/// a byte at a time (a copy of 4096 positions compiled alone: 2.2 times as long at 6 channels, 10
/// at 8). The regions may overlap where each position moves to an offset at or below its own
/// (a gather in place): each move reads its position whole before it writes.
@inline(__always)
func positionsCopied<T>(count: Int, jumps: (Int, Int), channels: Int, from: UnsafePointer<T>, to: UnsafeMutablePointer<T>) {
    @inline(__always) func run(_ channels: Int) {
        let bytes = channels &* MemoryLayout<T>.stride
        var a = 0, b = 0
        for _ in 0..<count {
            UnsafeMutableRawPointer(to + b).copyMemory(from: from + a, byteCount: bytes)
            a &+= jumps.0
            b &+= jumps.1
        }
    }
    guard channels <= 8 else {
        // More channels: moves of 8, 16 or 32 bytes, the last ending at the position's last
        // byte. A call to memmove per position cost more than a loop of elements, and that
        // loop moved a byte at a time (gathering every second position of 12 int8 channels
        // took 30% of MaxPool2d k3 s2's time, `perf`). In a gather in place each move's
        // stores end where the next move's loads begin, or before; the last move, which
        // overlaps the others, is loaded first.
        let bytes = channels &* MemoryLayout<T>.stride
        @inline(__always) func moves<M>(_: M.Type) {
            let size = MemoryLayout<M>.size, last = bytes &- size
            let source = UnsafeRawPointer(from), target = UnsafeMutableRawPointer(to)
            let stepA = jumps.0 &* MemoryLayout<T>.stride, stepB = jumps.1 &* MemoryLayout<T>.stride
            var a = 0, b = 0
            for _ in 0..<count {
                let tail = source.loadUnaligned(fromByteOffset: a &+ last, as: M.self)
                var at = 0
                while at < last {
                    target.storeBytes(of: source.loadUnaligned(fromByteOffset: a &+ at, as: M.self), toByteOffset: b &+ at, as: M.self)
                    at &+= size
                }
                target.storeBytes(of: tail, toByteOffset: b &+ last, as: M.self)
                a &+= stepA
                b &+= stepB
            }
        }
        if bytes <= 16 {
            moves(UInt64.self)
        } else if bytes <= 32 {
            moves(SIMD16<UInt8>.self)
        } else {
            moves(SIMD32<UInt8>.self)
        }
        return
    }
    unrolledChannels(channels, run)
}

/// The `is_signed` argument of `tpvector_byte_maxima` where the kernels fold `R` in C: byte
/// maxima, in the kernels built for AVX2 (a constant once specialised); nil elsewhere.
@inline(__always)
func byteMaximaSignInC<R: WindowReduction>(_: R.Type) -> Int32? {
    guard kernelLevel == .avx2 && isByteMaximum(R.self) else { return nil }
    return R.self == MaxInteger<Int8>.self ? 1 : 0
}

/// Whether `R` is the max of int8 or uint8, on any CPU.
@inline(__always)
func isByteMaximum<R: WindowReduction>(_: R.Type) -> Bool {
    R.self == MaxInteger<Int8>.self || R.self == MaxInteger<UInt8>.self
}

/// `body(channels)`, with `channels` a constant for 1 to 8 once inlined: a loop over a
/// position's channels then unrolls, and its channels can go as one small vector or stay in
/// registers. Pass an `@inline(__always)` function, so that each constant gets its own copy.
@inline(__always)
func unrolledChannels(_ channels: Int, _ body: (_ channels: Int) -> Void) {
    switch channels {
    case 1: body(1)
    case 2: body(2)
    case 3: body(3)
    case 4: body(4)
    case 5: body(5)
    case 6: body(6)
    case 7: body(7)
    case 8: body(8)
    default: body(channels)
    }
}

/// Splits `groups` groups of `step` units from `from` into `step` phases, phase r at
/// `phases + r * phaseLength` (at least `groups` units) holding units r, r + step, ... (a unit
/// is a column's channels: 1, 2, 4 or 8 bytes). False, with nothing written, for other units and
/// for steps outside 2 to 16. For a constant step LLVM compiles the loop to shuffles of whole
/// vectors (an interleaved group): compiled alone, from 2.5 to 13 times as fast as taking the
/// units one by one at steps 2 to 8 (0.03-0.15 ns per unit against 0.37), and unrolled, 1.4
/// times, where it does not vectorise (most steps past 8). The AVX2 build hands the steps of 4
/// and more that it can, and 4-byte units at 3, to C transposes (`tpvector_split_into_phases`):
/// at those steps LLVM's shuffles were the largest part of a split row's time, and at 3 they
/// were slower (AvgPool1d k5 s3 p1 of 2 float16 channels 9.7 vs 9.1 ms; docs/performance.md).
@inline(never)
func splitIntoPhases(_ from: UnsafeRawPointer, unitBytes: Int, step: Int, groups: Int, phaseLength: Int, into phases: UnsafeMutableRawPointer) -> Bool {
    // Every split of 16-bit rows at steps of 4 and more, of 32-bit rows at 3 to 8, and of
    // byte rows at 4 (`tpvector_splits_into_phases`).
    if kernelLevel == .avx2 && tpvector_split_into_phases(from, unitBytes, step, groups, phaseLength, phases) != 0 {
        return true
    }
    // Units move as raw bytes: a row of 2-byte inputs need not be aligned to a unit of 4, and
    // the phases' memory is bound to the input type. (As fast as typed loads, compiled alone.)
    @inline(__always) func split<let S: Int, U: FixedWidthInteger>(_: InlineArray<S, U>.Type) {
        let size = MemoryLayout<U>.stride
        for i in 0..<groups {
            for r in 0..<S {
                phases.storeBytes(of: from.loadUnaligned(fromByteOffset: (S &* i &+ r) &* size, as: U.self),
                                  toByteOffset: (r &* phaseLength &+ i) &* size, as: U.self)
            }
        }
    }
    @inline(__always) func units<U: FixedWidthInteger>(_: U.Type) -> Bool {
        switch step {
        case 2: split(InlineArray<2, U>.self)
        case 3: split(InlineArray<3, U>.self)
        case 4: split(InlineArray<4, U>.self)
        case 5: split(InlineArray<5, U>.self)
        case 6: split(InlineArray<6, U>.self)
        case 7: split(InlineArray<7, U>.self)
        case 8: split(InlineArray<8, U>.self)
        case 9: split(InlineArray<9, U>.self)
        case 10: split(InlineArray<10, U>.self)
        case 11: split(InlineArray<11, U>.self)
        case 12: split(InlineArray<12, U>.self)
        case 13: split(InlineArray<13, U>.self)
        case 14: split(InlineArray<14, U>.self)
        case 15: split(InlineArray<15, U>.self)
        case 16: split(InlineArray<16, U>.self)
        default: return false
        }
        return true
    }
    switch unitBytes {
    case 1: return units(UInt8.self)
    case 2: return units(UInt16.self)
    case 4: return units(UInt32.self)
    case 8: return units(UInt64.self)
    default: return false
    }
}

/// `columns` columns of `channels` contiguous elements from `from` split into `step` phases of
/// `phaseLength` columns at `phases`, column j at place j / step of phase j % step: whole groups
/// of `step` columns through `splitIntoPhases`, the columns after them one by one (a group read
/// whole would pass the row's end). False, with nothing written, for units and steps the split
/// does not take.
@inline(__always)
func columnsSplitIntoPhases<T>(_ from: UnsafePointer<T>, columns: Int, channels: Int, step: Int, phaseLength: Int,
                               into phases: UnsafeMutablePointer<T>) -> Bool {
    let whole = columns / step
    guard splitIntoPhases(UnsafeRawPointer(from), unitBytes: channels * MemoryLayout<T>.stride, step: step, groups: whole,
                          phaseLength: phaseLength, into: UnsafeMutableRawPointer(phases)) else { return false }
    for column in (whole * step)..<columns {
        let place = phasePlace(column, step: step, phaseLength: phaseLength) * channels
        for c in 0..<channels { phases[place + c] = from[column * channels + c] }
    }
    return true
}

/// Where column (or tap) `column` of a row split into `step` phases of `phaseLength` columns
/// lies, in columns from the first phase's start: place column / step of phase column % step.
/// A tap of positions `step` columns apart is then one run from there.
@inline(__always)
func phasePlace(_ column: Int, step: Int, phaseLength: Int) -> Int { (column % step) * phaseLength + column / step }
