import CTidepool
import CTidepoolStream
import TidepoolSync
import TidepoolTypes

#if canImport(Glibc)
import Glibc
#endif

/// The backward pass (vector-Jacobian product) of the six layers, as MLX differentiates its
/// pad, window and reduce: each input element gathers the contributions of the windows that
/// hold it, in a fixed order (od, oh, ow ascending), so every element is computed by one
/// thread alone and results are bit-identical for any thread count.
///
/// - Average: a window's share is its cotangent times 1/(window size, padding counted); an
///   element receives the shares of its windows, summed (a box filter of the cotangent, done
///   one axis at a time: D, then H, then W).
/// - Max, `MaxTies.split`: per window, the maximum M (NaN if any element is NaN), the number K
///   of padded positions equal to it (padding is -inf, so it ties only with an all -inf
///   window) and the share g / K; an element equal to M receives the share, any other share x 0
///   (0, or NaN where the share is not finite, as MLX's g x mask / K gives); a NaN window gives
///   NaN to all its elements (MLX's mask is all false there: 0 / 0). A window of one element
///   passes its cotangent through, NaN or not (MLX reduces nothing there).
/// - Max, `MaxTies.first`: per window, the in-bounds position PyTorch's CPU kernel picks; it
///   alone receives the cotangent.
///
/// Sums run in float32 (float64 for float64 inputs) and are rounded to the input's type once.

/// The element types are those of the average reductions (ElementPolicies.swift): `widen`
/// gives the sum's type, `finish(sum, windowSize: n)` rounds sum x 1/n to the element once (n
/// = 1 for the max's sums, exact).
func runBackwardKernels(_ call: BackwardCall) throws {
    switch call.dtype {
    case .float32: try Backward<AverageFloat32>(call).run()
    case .float64: try Backward<AverageFloat64>(call).run()
    case .float16: try Backward<AverageFloat16>(call).run()
    case .bfloat16: try Backward<AverageBFloat16>(call).run()
    default: preconditionFailure("the gradient of \(call.dtype) is refused before the kernels")
    }
}

/// The output positions whose windows hold input index `i` on one axis: [lower, upper).
@inline(__always)
func windowsHolding(_ i: Int, kernel: Int, stride: Int, padding: Int, outputs: Int) -> Range<Int> {
    // Window o holds i when o * stride - padding <= i < o * stride - padding + kernel.
    let first = i + padding - kernel + 1
    let lower = first <= 0 ? 0 : (first + stride - 1) / stride
    let upper = Swift.min(outputs, (i + padding) / stride + 1)
    return lower..<Swift.max(lower, upper)
}

/// One gradient's state. A class, not a struct: the closures of `parallel` and the scratch
/// helpers capture it, and each capture of a struct retained its arrays and the call's closure
/// one by one (swift_retain and swift_release took a fifth of a tiny gradient's time); a class
/// is one reference.
private final class Backward<R: WindowReduction>: @unchecked Sendable where R.Input == R.Output, R.Accumulator: BinaryFloatingPoint {
    let call: BackwardCall
    let g: PoolGeometry
    let input: UnsafePointer<R.Input>
    let gradOutput: UnsafePointer<R.Input>
    let gradInput: UnsafeMutablePointer<R.Input>
    /// Per input index on each axis, the windows that hold it (along W for PyTorch's ties only).
    let holdersD: [Range<Int>], holdersH: [Range<Int>], holdersW: [Range<Int>]
    /// The most H windows holding one input row: the rows `throughRows` keeps.
    let rowRing: Int
    /// Whether `maxSplitDirect` computes this gradient (the max's, ties split): windows that
    /// overlap along no axis (each element in at most one), in a gradient small enough to stay
    /// on the calling thread, input included (strides above the kernel leave elements that only
    /// take a zero). A property of the geometry and settings, never of the thread count.
    let splitsDirectly: Bool
    /// Whether the gradient's rows go out with streaming stores (tidepool_stream.h): a large
    /// gradient is written once and not read back soon, and the stores then skip reading each
    /// line first.
    let streams: Bool
    /// The threads the gradient may use: the call's, or one where its work is as small as a
    /// forward call's that stays on its thread (`staysOnCallingThread`): waking a worker for a
    /// tiny gradient costs more than the share of the work it would take over.
    let threads: Int

    init(_ call: BackwardCall) {
        self.call = call
        g = call.geometry
        input = call.input.assumingMemoryBound(to: R.Input.self)
        gradOutput = call.gradOutput.assumingMemoryBound(to: R.Input.self)
        gradInput = call.gradInput.assumingMemoryBound(to: R.Input.self)
        let g = call.geometry
        splitsDirectly = call.kind == .max && call.ties == .split && g.kernelD <= g.strideD && g.kernelH <= g.strideH
            && g.kernelW <= g.strideW && staysOnCallingThread(g, call.settings) && g.inputElements < call.settings.serialWorkBelow
        // `maxSplitDirect` reads none of these (empty arrays allocate nothing).
        let direct = splitsDirectly
        func holders(_ length: Int, _ kernel: Int, _ stride: Int, _ padding: Int, _ outputs: Int) -> [Range<Int>] {
            direct ? [] : (0..<length).map { windowsHolding($0, kernel: kernel, stride: stride, padding: padding, outputs: outputs) }
        }
        holdersD = holders(g.inD, g.kernelD, g.strideD, g.padD, g.outD)
        holdersH = holders(g.inH, g.kernelH, g.strideH, g.padH, g.outH)
        // Only PyTorch's ties go back column by column; the others walk W tap by tap.
        holdersW = call.kind == .max && call.ties == .first ? holders(g.inW, g.kernelW, g.strideW, g.padW, g.outW) : []
        rowRing = Swift.max(1, holdersH.lazy.map { $0.count }.max() ?? 1)
        threads = staysOnCallingThread(g, call.settings) ? 1 : call.threads
        // The gradient's byte count fits (checked before the kernels).
        streams = g.inputElements * MemoryLayout<R.Input>.stride >= call.settings.streamingOutputBytes
    }

    var planeElements: Int { g.inH * g.inW * g.channels }
    var outputElements: Int { g.pixels * g.channels }

    /// How many threads `parallel` uses for `count` items.
    func workers(_ count: Int) -> Int { Swift.max(1, Swift.min(threads, count)) }

    /// `body(worker, index)` for index in 0..<count on up to `workers(count)` threads, each
    /// index on one; `worker` says which thread, for its scratch.
    /// Stops starting items once `call.isCancelled` says yes.
    func parallel(_ count: Int, _ body: (Int, Int) -> Void) {
        let isCancelled = call.isCancelled ?? { false }
        WorkerPool.shared.forEach(count, workers: workers(count)) { worker, index in
            if isCancelled() { return false }
            body(worker, index)
            return true
        } finish: { _ in
            // Each thread orders its own streamed rows (`writeRow`) before the call returns.
            if streams { tpstream_fence() }
        }
    }

    /// Per input row h of a plane (of `rows`), in order: `fill(oh, slot)` for each output row
    /// oh of its H windows not filled yet (slot oh % rowRing of a ring of rows), then `row(h)`.
    /// Each output row is filled once per plane: the windows of consecutive rows ascend, and at
    /// most rowRing of them hold one row, so a slot is refilled only once no row needs it.
    @inline(__always) func throughRows(_ rows: Range<Int>, _ fill: (Int, Int) -> Void, _ row: (Int) -> Void) {
        var next = 0
        for h in rows {
            let holders = holdersH[h]
            for oh in Swift.max(next, holders.lowerBound)..<Swift.max(next, holders.upperBound) { fill(oh, oh % rowRing) }
            next = Swift.max(next, holders.upperBound)
            row(h)
        }
    }

    /// `body` with a staging row of W * C elements per worker of `parallel(items)` for
    /// `writeRow` (`parallel` fences the streaming stores of each of its threads).
    func withStagedRows(_ items: Int, _ body: (UnsafeMutablePointer<R.Input>) throws -> Void) throws {
        let count = streams ? workers(items) * stagedRow : 1
        try withScratch(R.Input.self, count, "the gradient's staging rows", body)
    }

    /// A worker's staging row's length (whole 64-byte lines, so each starts aligned).
    var stagedRow: Int { aligned(g.inW * g.channels) }

    /// Gradient row (n, d, h) written by `body(target)`: straight into the gradient, or into
    /// `staged` (this worker's row of `withStagedRows`) and streamed out.
    @inline(__always) func writeRow(_ n: Int, _ d: Int, _ h: Int, staged: UnsafeMutablePointer<R.Input>,
                                    _ body: (UnsafeMutablePointer<R.Input>) -> Void) {
        let destination = gradInput + ((n * g.inD + d) * g.inH + h) * g.inW * g.channels
        guard streams else { body(destination); return }
        body(staged)
        tpstream_copy(destination, staged, g.inW * g.channels * MemoryLayout<R.Input>.stride)
    }

    /// `body` with scratch of `count` values of `V` (a 64-byte aligned run from the engine's
    /// ScratchPool), or TP_ERR_NO_MEMORY. One run, no arrays: allocating arrays of counts and
    /// pointers took a visible share of a tiny gradient's instructions.
    func withScratch<V>(_: V.Type, _ count: Int, _ what: String, _ body: (UnsafeMutablePointer<V>) throws -> Void) throws {
        let bytes = try Checked.multiply((count + 15) / 16 * 16, MemoryLayout<V>.stride, what)
        guard let scratch = ScratchPool.shared.take(bytes: bytes) else {
            throw PoolError(TP_ERR_NO_MEMORY, "cannot allocate \(bytes) bytes of scratch for \(what)")
        }
        defer { ScratchPool.shared.give(scratch, bytes: bytes) }
        try body(scratch.bindMemory(to: V.self, capacity: count))
    }

    /// Refuses (`checkScratch`) a worker's scratch of `parts` (counts of values of a size);
    /// the call's tensors are the input, the cotangent and the gradient. The counts are sums
    /// of products of the padded axes, which the engine keeps below 2^55 elements.
    func limitScratch(_ parts: [(count: Int, size: Int)]) throws {
        // nil (and Int.max) where a product or sum passes 64 bits.
        let perWorker = try? parts.reduce(0) { try Checked.add($0, Checked.multiply($1.count, $1.size, ""), "") }
        let element = MemoryLayout<R.Input>.stride
        let input = (try? Checked.multiply(g.inputElements, element, "")) ?? Int.max
        let cotangent = (try? Checked.multiply(outputElements, element, "")) ?? Int.max
        try checkScratch(perWorker: perWorker, tensorBytes: [input, cotangent, input], g)
    }

    func run() throws {
        let elements = g.batch * g.inD * planeElements
        guard g.outD > 0, g.outH > 0, g.outW > 0 else {
            gradInput.initialize(repeating: R.finish(0, windowSize: 1), count: elements)
            return
        }
        switch (call.kind, call.ties) {
        case (.average, _): try average()
        case (.max, .split) where splitsDirectly: maxSplitDirect()
        case (.max, .split): try maxSplit()
        case (.max, .first): try maxFirst()
        }
    }

    // MARK: average

    /// A box filter of the cotangent, one axis at a time, row by row so that everything but
    /// the cotangent and the gradient stays in the first-level caches: per input row (n, d, h),
    /// the cotangent rows (od, oh) of its windows summed over D (each such row once per input
    /// plane, kept in a ring while the H windows that need it pass), then over H, then spread
    /// along W tap by tap (a contiguous run per tap when the stride is 1, which vectorises for
    /// any channel count), then rounded once.
    func average() throws {
        let c = g.channels, outRow = g.outW * c
        let perWorker = aligned(rowRing * outRow) + aligned(outRow) + aligned(g.inW * c)
        try limitScratch([(perWorker, MemoryLayout<R.Accumulator>.stride)])
        try withStagedRows(g.batch * g.inD) { staged in
            try withScratch(R.Accumulator.self, workers(g.batch * g.inD) * perWorker, "the average's gradient") {
                average(scratch: $0, perWorker: perWorker, staged: staged)
            }
        }
    }

    /// `count` rounded up to whole 64-byte lines of accumulators, so that the parts of a
    /// worker's scratch start aligned, and one line more: parts and ring slots are often a
    /// power of two long (planes of 64 x 64 x 32), and parts at the same offset modulo 4 KiB
    /// make a load wait for an unrelated store to another (4K aliasing) and share the L2's sets.
    func aligned(_ count: Int) -> Int { (count + 15) / 16 * 16 + 16 }

    /// The output positions along an axis whose tap `t` falls on an input index in bounds.
    @inline(__always) func outputsOfTap(_ t: Int, stride: Int, padding: Int, length: Int, outputs: Int) -> Range<Int> {
        // Output o's tap t reads index o * stride - padding + t, in [0, length).
        let lower = padding - t <= 0 ? 0 : (padding - t + stride - 1) / stride
        let last = length - 1 + padding - t
        let upper = last < 0 ? 0 : Swift.min(outputs, last / stride + 1)
        return lower..<Swift.max(lower, upper)
    }

    /// `body(t, outputsOfTap(t))` for each tap t along W that falls on the input for some
    /// output, each once, in ascending order of t (descending with `descending`). Only those:
    /// padding may make a kernel far longer than the row (any length the padded volume allows),
    /// and a loop over all its taps took seconds to hours for a gradient of a few elements.
    /// Output o's taps on the input are [p - o * s, p - o * s + W), whose ends descend as o
    /// ascends. With a stride of at most W, consecutive ones meet, so their union is one range
    /// (each of its taps reached, at most (outW - 1) * s + W of them); otherwise it is walked
    /// window by window, skipping the taps already visited: at most outW steps more than the
    /// taps visited, each of which does work.
    @inline(__always) func reachingTapsW(descending: Bool = false, _ body: (Int, Range<Int>) -> Void) {
        let (k, s, p, n, outputs) = (g.kernelW, g.strideW, g.padW, g.inW, g.outW)
        // p - o * s and its sum with n fit: o * s is at most the padded extent (PoolGeometry).
        func visit(_ t: Int) { body(t, outputsOfTap(t, stride: s, padding: p, length: n, outputs: outputs)) }
        if s <= n {
            let first = Swift.max(0, p - (outputs - 1) * s), end = Swift.max(first, Swift.min(k, p + n))
            if descending {
                for t in (first..<end).reversed() { visit(t) }
            } else {
                for t in first..<end { visit(t) }
            }
            return
        }
        if descending {
            var low = k  // the taps from low up are visited
            for o in 0..<outputs {
                let a = Swift.max(0, p - o * s)
                var t = Swift.min(low, p - o * s + n) - 1
                while t >= a {
                    visit(t)
                    t -= 1
                }
                low = Swift.min(low, a)
            }
        } else {
            var next = 0  // the taps below next are visited
            for o in Swift.stride(from: outputs - 1, through: 0, by: -1) {
                let a = Swift.max(next, p - o * s), b = Swift.min(k, p - o * s + n)
                for t in a..<Swift.max(a, b) { visit(t) }
                next = Swift.max(next, b)
            }
        }
    }

    /// `target` = the sum over the D windows holding plane d of the cotangent's row (n, od, oh),
    /// as contiguous (W, C) accumulators.
    func sumOverD(_ n: Int, _ d: Int, _ oh: Int, into target: UnsafeMutablePointer<R.Accumulator>) {
        let c = g.channels, outRow = g.outW * c, s = call.gradSteps
        let holders = holdersD[d]
        guard !holders.isEmpty else { target.initialize(repeating: 0, count: outRow); return }
        if g.divisor != .window {
            sumOverDScaled(n, d, oh, into: target)
            return
        }
        let contiguous = s.c == 1 && s.w == c
        for od in holders {
            let source = gradOutput + (n * s.n + od * s.d + oh * s.h)
            let first = od == holders.lowerBound
            if contiguous {
                if first { for j in 0..<outRow { target[j] = R.widen(source[j]) } }
                else { for j in 0..<outRow { target[j] += R.widen(source[j]) } }
            } else {
                for ow in 0..<g.outW {
                    let from = source + ow * s.w, to = target + ow * c
                    if first { for ch in 0..<c { to[ch] = R.widen(from[ch * s.c]) } }
                    else { for ch in 0..<c { to[ch] += R.widen(from[ch * s.c]) } }
                }
            }
        }
    }

    /// `sumOverD` for averages whose windows have divisors of their own (ceil_mode,
    /// count_include_pad=False): each cotangent scaled by windowSize / its window's divisor
    /// first, so that the final x 1 / windowSize leaves g / divisor. A window with no input
    /// position passes nothing back (it read nothing).
    func sumOverDScaled(_ n: Int, _ d: Int, _ oh: Int, into target: UnsafeMutablePointer<R.Accumulator>) {
        let c = g.channels, s = call.gradSteps, whole = R.Accumulator(g.windowSize)
        let countH = g.divisor(oh, stride: g.strideH, padding: g.padH, kernel: g.kernelH, length: g.inH)
        target.initialize(repeating: 0, count: g.outW * c)
        for od in holdersD[d] {
            let countD = g.divisor(od, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
            let source = gradOutput + (n * s.n + od * s.d + oh * s.h)
            for ow in 0..<g.outW {
                let count = countD * countH * g.divisor(ow, stride: g.strideW, padding: g.padW, kernel: g.kernelW, length: g.inW)
                let scale = count == 0 ? 0 : whole / R.Accumulator(count)
                let from = source + ow * s.w, to = target + ow * c
                for ch in 0..<c { to[ch] += R.widen(from[ch * s.c]) * scale }
            }
        }
    }

    func average(scratch: UnsafeMutablePointer<R.Accumulator>, perWorker: Int, staged: UnsafeMutablePointer<R.Input>) {
        // A local, so that finish's 1 / windowSize is hoisted out of the loops: read through
        // self it is read again after every store (which might alias it), and divided again.
        let c = g.channels, outRow = g.outW * c, windowSize = g.windowSize
        parallel(g.batch * g.inD) { worker, index in
            let n = index / g.inD, d = index % g.inD
            let rows = scratch + worker * perWorker, summed = rows + aligned(rowRing * outRow)
            let spread = summed + aligned(outRow), staging = staged + worker * stagedRow
            throughRows(0..<g.inH, { oh, slot in sumOverD(n, d, oh, into: rows + slot * outRow) }) { h in
                let holders = holdersH[h]
                // Over H: the ring's rows of this row's windows (one of them is used in place).
                let row: UnsafeMutablePointer<R.Accumulator>
                if holders.count == 1 {
                    row = rows + (holders.lowerBound % rowRing) * outRow
                } else {
                    row = summed
                    row.initialize(repeating: 0, count: outRow)
                    for oh in holders {
                        let source = rows + (oh % rowRing) * outRow
                        for j in 0..<outRow { row[j] += source[j] }
                    }
                }
                // Along W: each output column's sum goes to the inputs under its taps.
                spread.initialize(repeating: 0, count: g.inW * c)
                reachingTapsW { t, outputs in
                    if g.strideW == 1 {
                        // One contiguous run (from the tap's first input in bounds): it vectorises
                        // for any channel count.
                        let target = spread + (outputs.lowerBound - g.padW + t) * c, source = row + outputs.lowerBound * c
                        for j in 0..<outputs.count * c { target[j] += source[j] }
                    } else {
                        let target = spread + (outputs.lowerBound * g.strideW - g.padW + t) * c, source = row + outputs.lowerBound * c
                        channelsByPosition(count: outputs.count, jumps: (g.strideW &* c, c), channels: c) { e, w in target[e] += source[w] }
                    }
                }
                writeRow(n, d, h, staged: staging) { target in
                    for j in 0..<g.inW * c { target[j] = R.finish(spread[j], windowSize: windowSize) }
                }
            }
        }
    }

    // MARK: max

    // A window's maximum, its ties and its pick are found axis by axis, as the forward pass
    // finds maxima: per input plane (n, d), each row's windows along W (level 1), then those
    // rows' windows along H (level 2), then the planes' along D (level 3). The gradient goes
    // back the same way: an element receives a window's share through the row maximum it
    // equals, the plane maximum that equals that, and the window maximum that equals that.
    // As x <= row max <= plane max <= window max, the three equalities hold together exactly
    // when x equals the window's maximum, so the sums are those of the definition, in
    // O(k) steps per element instead of 2k^3.
    //
    // The planes stream through `throughPlanes`: each plane's levels are found once, folded
    // into the windows holding it (MLX's split) or read back from the ring when a window
    // completes (PyTorch's picks), and kept in a ring until the last window holding the plane
    // is complete; then the plane takes its gradient. No temporary grows with the tensor.

    /// Row (n, d, h) of the input as contiguous (W, C) accumulators, so that the loops over
    /// windows run over contiguous channels, which vectorise, whatever the input's strides.
    func inputRow(_ n: Int, _ d: Int, _ h: Int, _ row: UnsafeMutablePointer<R.Accumulator>) -> UnsafePointer<R.Accumulator> {
        contiguousRow(input + (n * g.stepN + d * g.stepD + h * g.stepH), positions: g.inW, step: g.stepW, channelStep: g.stepC, row)
    }

    /// The cotangent's row (n, od, oh) as contiguous (W, C) accumulators, as `inputRow`.
    func cotangentRow(_ n: Int, _ od: Int, _ oh: Int, _ row: UnsafeMutablePointer<R.Accumulator>) -> UnsafePointer<R.Accumulator> {
        let s = call.gradSteps
        return contiguousRow(gradOutput + (n * s.n + od * s.d + oh * s.h), positions: g.outW, step: s.w, channelStep: s.c, row)
    }

    /// `positions` positions of C elements from `base` (`step` and `channelStep` apart) as
    /// contiguous accumulators: the tensor itself where it is that already, else widened into
    /// `row`.
    @inline(__always) func contiguousRow(_ base: UnsafePointer<R.Input>, positions: Int, step: Int, channelStep: Int,
                                         _ row: UnsafeMutablePointer<R.Accumulator>) -> UnsafePointer<R.Accumulator> {
        let c = g.channels, contiguous = channelStep == 1 && step == c
        if contiguous && R.Input.self == R.Accumulator.self {
            return UnsafeRawPointer(base).assumingMemoryBound(to: R.Accumulator.self)
        }
        if contiguous {
            for j in 0..<positions * c { row[j] = R.widen(base[j]) }
        } else {
            for position in 0..<positions {
                let source = base + position * step, target = row + position * c
                for ch in 0..<c { target[ch] = R.widen(source[ch * channelStep]) }
            }
        }
        return UnsafePointer(row)
    }

    /// `cond ? share : share * 0`: a share that is not taken still spreads NaN when it is not
    /// finite, as MLX's `g * mask / count` does. Written as a product with a selected constant,
    /// so that the compiler does not make the loads under it conditional (masked loads).
    @inline(__always) func masked(_ cond: Bool, _ share: R.Accumulator) -> R.Accumulator { share * (cond ? 1 : 0) }

    /// Whether x (an element, a row's or a plane's maximum) reaches the maximum m above it:
    /// equal, or NaN. A NaN x lies in a window whose maximum and share are NaN, which spreads
    /// whatever the mask says, except in a window of one element, whose cotangent passes
    /// through untouched (MLX reduces nothing there): `x != x` gives it that, with no test of
    /// the window size in the loops (which the compiler vectorised poorly). The two never hold
    /// together, so `!=` is their `or` without a short circuit, which the compiler had turned
    /// into two masked loads of the share per element.
    @inline(__always) func reaches(_ x: R.Accumulator, _ m: R.Accumulator) -> Bool { (x == m) != (x != x) }

    /// One step of a running (maximum, tie count) over parts whose maxima and tie counts are
    /// `v`, `count`: a greater maximum restarts the count, an equal one adds to it, NaN sticks.
    /// Both are loaded and stored whatever the comparisons say, so the channel loops vectorise
    /// into blends rather than masked loads and stores (slow on some CPUs).
    @inline(__always) func tie(_ m: inout R.Accumulator, _ k: inout R.Accumulator, _ v: R.Accumulator, _ count: R.Accumulator) {
        let mv = m, kv = k
        let greater = v > mv
        let added = kv + (v == mv ? count : 0)
        k = greater ? count : added
        // `+ 0` (which turns -0 into +0, the same to the comparisons) keeps the compiler from
        // storing only where the maximum changes: a masked store.
        m = greater || v != v ? v : mv + 0
    }

    /// A running (maximum, tie count) started from its first part: `tie` from (-inf, 0) with
    /// one store per value instead of a store, a load and a store. The same values, except
    /// the count where the maximum is NaN, which nothing reads (NaN windows share NaN).
    @inline(__always) func seed(_ m: UnsafeMutablePointer<R.Accumulator>, _ k: UnsafeMutablePointer<R.Accumulator>,
                                _ v: UnsafePointer<R.Accumulator>, _ count: UnsafePointer<R.Accumulator>, _ n: Int) {
        for j in 0..<n { m[j] = v[j]; k[j] = count[j] }
    }

    /// A window part's padding, `padded` positions of -inf, tied into its count: they tie only
    /// with a maximum of -inf. Stored unconditionally (see `tie`).
    @inline(__always) func tiePadding(_ m: UnsafeMutablePointer<R.Accumulator>, _ k: UnsafeMutablePointer<R.Accumulator>,
                                      _ count: Int, _ padded: Int) {
        guard padded > 0 else { return }
        let extra = R.Accumulator(padded)
        for j in 0..<count { k[j] = k[j] + (m[j] == -.infinity ? extra : 0) }
    }

    /// Level 1 of `split` for input row (n, d, h): per output column ow, the maximum of the
    /// row's window in m[ow * C + ch] and its ties in k (padding counted as -inf elements).
    ///
    /// Tap by tap over all the windows, not window by window: each window still takes its
    /// columns left to right (the same ties in the same order, so the same bits), and at a
    /// stride of 1 a tap's windows read one contiguous run, a loop that vectorises whatever the
    /// channel count (a loop over 1 to 7 channels per window does not).
    func splitRow(_ n: Int, _ d: Int, _ h: Int, _ m: UnsafeMutablePointer<R.Accumulator>, _ k: UnsafeMutablePointer<R.Accumulator>,
                  _ row: UnsafeMutablePointer<R.Accumulator>) {
        let c = g.channels, elements = inputRow(n, d, h, row), stride = g.strideW
        for j in 0..<g.outW * c { m[j] = -.infinity; k[j] = 0 }
        reachingTapsW { t, outputs in
            let mt = m + outputs.lowerBound * c, kt = k + outputs.lowerBound * c
            let x = elements + (outputs.lowerBound * stride - g.padW + t) * c
            if stride == 1 {
                for j in 0..<outputs.count * c { tie(&mt[j], &kt[j], x[j], 1) }
                return
            }
            channelsByPosition(count: outputs.count, jumps: (stride &* c, c), channels: c) { e, w in tie(&mt[w], &kt[w], x[e], 1) }
        }
        for ow in 0..<g.outW {
            let (w0, w1) = windowBounds(ow, stride: stride, padding: g.padW, kernel: g.kernelW, length: g.inW)
            tiePadding(m + ow * c, k + ow * c, c, g.kernelW - Swift.max(0, w1 - w0))
        }
    }

    /// Level 2 of `split` for output row oh of a plane: the maximum of its rows' maxima (row h
    /// at m1 + h * outW * C, its ties in the ring `c1` at slot h % columnRing) in m and the
    /// ties in k (padded rows count kernelW each).
    func splitColumn(_ oh: Int, _ m1: UnsafeMutablePointer<R.Accumulator>, _ c1: UnsafeMutablePointer<R.Accumulator>,
                     _ m: UnsafeMutablePointer<R.Accumulator>, _ k: UnsafeMutablePointer<R.Accumulator>) {
        let outRow = g.outW * g.channels
        let (h0, h1) = windowBounds(oh, stride: g.strideH, padding: g.padH, kernel: g.kernelH, length: g.inH)
        if h1 > h0 {
            seed(m, k, m1 + h0 * outRow, c1 + (h0 % columnRing) * outRow, outRow)
        } else {
            for j in 0..<outRow { m[j] = -.infinity; k[j] = 0 }
        }
        for h in (h0 + 1)..<Swift.max(h0 + 1, h1) {
            let rm = m1 + h * outRow, rk = c1 + (h % columnRing) * outRow
            for j in 0..<outRow { tie(&m[j], &k[j], rm[j], rk[j]) }
        }
        tiePadding(m, k, outRow, (g.kernelH - Swift.max(0, h1 - h0)) * g.kernelW)
    }

    /// The rows of level 1 an output row's level 2 reads, kept in a ring: its window's rows,
    /// the last just found.
    var columnRing: Int { Swift.max(1, Swift.min(g.kernelH, g.inH)) }

    /// Level 1 and level 2 of a band of input plane (n, d), output row by output row: `row(h)`
    /// for each of the band's level rows in order, each as soon as an output row needs it (all
    /// of them, needed or not), and `column(oh)` for each of its windows once the rows of the
    /// window are found.
    @inline(__always) func byRows(_ band: RowBand, _ row: (Int) -> Void, _ column: (Int) -> Void) {
        var next = band.levels.lowerBound  // the next input row to find
        for oh in band.windows {
            while next < rowsOf(oh).1 { row(next); next += 1 }
            column(oh)
        }
        while next < band.levels.upperBound { row(next); next += 1 }
    }

    /// The in-bounds rows [h0, h1) of H window oh.
    @inline(__always) func rowsOf(_ oh: Int) -> (Int, Int) {
        windowBounds(oh, stride: g.strideH, padding: g.padH, kernel: g.kernelH, length: g.inH)
    }

    /// Input rows whose gradient one item of `throughPlanes` writes (`rows`), the H windows
    /// that hold them (`windows`) and the rows those windows read (`levels`, which hold
    /// `rows`). Bands side by side each find the rows and windows they share, the same way, so
    /// results do not depend on the bands; a band's state is its levels' and windows' rows.
    struct RowBand {
        let rows: Range<Int>, windows: Range<Int>, levels: Range<Int>
    }

    func band(_ rows: Range<Int>) -> RowBand {
        let held = holdersH[rows].filter { !$0.isEmpty }
        let windows = (held.first?.lowerBound ?? 0)..<(held.last?.upperBound ?? 0)
        guard !windows.isEmpty else { return RowBand(rows: rows, windows: windows, levels: rows) }
        let levels = Swift.min(rows.lowerBound, rowsOf(windows.lowerBound).0)..<Swift.max(rows.upperBound, rowsOf(windows.upperBound - 1).1)
        return RowBand(rows: rows, windows: windows, levels: levels)
    }

    /// The planes of `throughPlanes` cut into the fewest bands (1, 2, 4, ... of equal rows)
    /// whose state, `state(levels, windows)` bytes per worker for a band of so many level rows
    /// and window rows, fits `gradientStateBytes`. Whole planes of state (5 windows' and 6
    /// ring planes for k3 s1) are a full-size temporary where the planes are large: 3 to 4
    /// times a 2-d image, found by one thread per image. Bands are kept at least 2 kernelH
    /// rows long, so that the rows and windows found again at their edges stay a fraction of
    /// the work. Returns the bands and their largest level and window counts.
    func bands(_ state: (Int, Int) -> Int) -> (bands: [RowBand], levels: Int, windows: Int) {
        func cut(_ count: Int) -> (bands: [RowBand], levels: Int, windows: Int) {
            let bands = (0..<count).map { band(($0 * g.inH / count)..<(($0 + 1) * g.inH / count)) }
            // Closures, not key paths: a key path into this generic type is built at run time,
            // on every call, a large share of a tiny gradient's time.
            return (bands, bands.lazy.map { $0.levels.count }.max() ?? 0, bands.lazy.map { $0.windows.count }.max() ?? 0)
        }
        var count = 1, chosen = cut(1)
        while state(chosen.levels, chosen.windows) > call.settings.gradientStateBytes && g.inH / (2 * count) >= Swift.max(2, 2 * g.kernelH) {
            count *= 2
            chosen = cut(count)
        }
        return chosen
    }

    /// A worker's row of the max's scratch: an input or cotangent row (W or outW positions;
    /// outW is the larger where the padding is wider than half the kernel), then a row of
    /// sums (`maxSplit`'s W positions; `maxFirst` uses C of them).
    var rowLine: Int { aligned((Swift.max(g.inW, g.outW) + g.inW) * g.channels) }

    /// The ring sizes of `throughPlanes`: planes kept (a plane is needed until the last window
    /// holding it is complete, at most kernelD - 1 planes later, and a window is found from its
    /// at most kernelD planes) and windows kept (window od is in use from its last plane, not
    /// before od * strideD - padD, to the gradient of its last plane, at most 2 kernelD - 2
    /// planes after od * strideD - padD).
    var planeRing: Int { Swift.max(1, Swift.min(g.kernelD, g.inD)) }
    var windowRing: Int { Swift.max(1, Swift.min(g.outD, (2 * g.kernelD - 2) / g.strideD + 1)) }

    /// The in-bounds planes [d0, d1) of D window od.
    @inline(__always) func planes(of od: Int) -> (Int, Int) {
        windowBounds(od, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
    }

    /// The pipeline of the max's gradient, per batch element n, band of rows (`bands`) and run
    /// of input planes [a, b) (runs split only to give every thread work): for each plane dd
    /// that the windows of the run's planes hold, ascending, `plane(worker, n, dd, planeSlot,
    /// windows, band)`, which finds the band's levels of the plane (ring slot dd % planeRing),
    /// folds them into `windows` (those of the run's that hold dd; slot od % windowRing; dd is
    /// window od's first plane when it is `planes(of: od).0`) and completes those whose last
    /// plane dd is; then `back(worker, n, d, planeSlot, band)` for each plane of the run whose
    /// windows are all complete. Planes and windows just outside a run are redone by the next
    /// run, the same way, so the results do not depend on the runs (nor on the bands).
    func throughPlanes(_ bands: [RowBand], plane: (Int, Int, Int, Int, Range<Int>, RowBand) -> Void,
                       back: (Int, Int, Int, Int, RowBand) -> Void) {
        let items = g.batch * bands.count
        let runs = Swift.min(g.inD, Swift.max(1, (2 * threads + items - 1) / items))
        let isCancelled = call.isCancelled ?? { false }
        // The plane after which plane d can take its gradient: the last plane of its last window.
        func ready(_ d: Int) -> Int { holdersD[d].isEmpty ? d : Swift.max(d, planes(of: holdersD[d].upperBound - 1).1 - 1) }
        parallel(items * runs) { worker, item in
            let band = bands[item % bands.count], n = item / bands.count / runs, run = item / bands.count % runs
            let a = run * g.inD / runs, b = (run + 1) * g.inD / runs
            guard a < b else { return }
            let holders = holdersD[a..<b].filter { !$0.isEmpty }
            let windows = (holders.first?.lowerBound ?? 0)..<(holders.last?.upperBound ?? 0)
            var (first, last) = (a, b)
            if !windows.isEmpty { first = Swift.min(a, planes(of: windows.lowerBound).0); last = Swift.max(b, planes(of: windows.upperBound - 1).1) }
            var next = a  // the next plane of the run to take its gradient
            for dd in first..<last {
                if isCancelled() { return }
                plane(worker, n, dd, dd % planeRing, holdersD[dd].clamped(to: windows), band)
                while next < b && ready(next) <= dd {
                    back(worker, n, next, next % planeRing, band)
                    next += 1
                }
            }
        }
    }

    /// Per window, its maximum (NaN when it holds one) and each tied element's share of its
    /// cotangent; each plane then gathers its gradient back through its levels.
    func maxSplit() throws {
        let c = g.channels, outRow = g.outW * c, line = rowLine
        let (rp, rw) = (planeRing, windowRing)
        let (ties1, ties2, shares2, shares1) = (aligned(columnRing * outRow), aligned(outRow), aligned(rowRing * outRow), aligned(outRow))
        // Per worker: the ring's band of row and plane maxima, the windows' maxima and shares,
        // the ring of row tie counts level 2 reads, one output row's tie counts, the plane
        // shares' ring of rows and a row's shares on the way back, a row.
        func perWorker(_ levels: Int, _ windows: Int) -> Int {
            let rows = aligned(levels * outRow), plane = aligned(windows * outRow)
            return rp * (rows + plane) + 2 * rw * plane + ties1 + ties2 + shares2 + shares1 + line
        }
        let (bands, levels, windows) = bands { (try? Checked.multiply(perWorker($0, $1), MemoryLayout<R.Accumulator>.stride, "")) ?? .max }
        let rows = aligned(levels * outRow), plane = aligned(windows * outRow), perWorker = perWorker(levels, windows)
        try limitScratch([(perWorker, MemoryLayout<R.Accumulator>.stride)])
        let single = g.windowSize == 1, items = g.batch * g.inD * bands.count
        try withStagedRows(items) { staged in try withScratch(R.Accumulator.self, workers(items) * perWorker, "the max's gradient") {
            let scratch = $0
            func parts(_ worker: Int) -> (m1: UnsafeMutablePointer<R.Accumulator>, m2: UnsafeMutablePointer<R.Accumulator>,
                                          wm: UnsafeMutablePointer<R.Accumulator>, ws: UnsafeMutablePointer<R.Accumulator>,
                                          c1: UnsafeMutablePointer<R.Accumulator>, c2: UnsafeMutablePointer<R.Accumulator>,
                                          s2: UnsafeMutablePointer<R.Accumulator>, s1: UnsafeMutablePointer<R.Accumulator>,
                                          row: UnsafeMutablePointer<R.Accumulator>) {
                let m1 = scratch + worker * perWorker, m2 = m1 + rp * rows, wm = m2 + rp * plane, ws = wm + rw * plane
                let c1 = ws + rw * plane, c2 = c1 + ties1, s2 = c2 + ties2, s1 = s2 + shares2
                return (m1, m2, wm, ws, c1, c2, s2, s1, s1 + shares1)
            }
            throughPlanes(bands, plane: { worker, n, d, slot, windows, band in
                // Output row by output row, so that everything but the rings' rows stays in the
                // first-level caches: the rows' and the row's maxima, folded into each window
                // holding the plane (level 3), and a window's shares once this is its last plane.
                // (The band's first level row and window are the planes' first rows: their
                // bases are moved back, so that rows are found by their index in the plane.)
                let p = parts(worker), (wm, ws) = (p.wm - band.windows.lowerBound * outRow, p.ws - band.windows.lowerBound * outRow)
                let m1 = p.m1 + slot * rows - band.levels.lowerBound * outRow, m2 = p.m2 + slot * plane - band.windows.lowerBound * outRow
                byRows(band, { h in
                    splitRow(n, d, h, m1 + h * outRow, p.c1 + (h % columnRing) * outRow, p.row)
                }) { oh in
                    let pm = m2 + oh * outRow, pk = p.c2
                    splitColumn(oh, m1, p.c1, pm, pk)
                    for od in windows {
                        let (d0, d1) = planes(of: od)
                        let m = wm + (od % rw) * plane + oh * outRow, k = ws + (od % rw) * plane + oh * outRow
                        if d == d0 {
                            seed(m, k, pm, pk, outRow)
                        } else {
                            for j in 0..<outRow { tie(&m[j], &k[j], pm[j], pk[j]) }
                        }
                        guard d == d1 - 1 else { continue }
                        // The padding's ties, then each tied element's share.
                        tiePadding(m, k, outRow, (g.kernelD - (d1 - d0)) * g.kernelH * g.kernelW)
                        let gradient = cotangentRow(n, od, oh, p.row)
                        // Windows of one element are no reduction at all (MLX reduces nothing
                        // there): the cotangent passes through, NaN inputs included.
                        if single {
                            for j in 0..<outRow { k[j] = gradient[j] }
                        } else {
                            for j in 0..<outRow {
                                // A NaN window's share is its maximum (NaN): a select of two
                                // loaded values, which vectorises where a NaN constant did not.
                                let mv = m[j], share = gradient[j] / k[j]
                                k[j] = mv != mv ? mv : share
                            }
                        }
                    }
                }
            }, back: { worker, n, d, slot, band in
                // Row by row (the shares stay in the first-level caches): the plane's share of
                // each output row from its windows, in a ring; the row's share of each of its
                // windows' rows; then each element's.
                let p = parts(worker), (wm, ws) = (p.wm - band.windows.lowerBound * outRow, p.ws - band.windows.lowerBound * outRow)
                let m1 = p.m1 + slot * rows - band.levels.lowerBound * outRow, m2 = p.m2 + slot * plane - band.windows.lowerBound * outRow
                let s2 = p.s2, s1 = p.s1, row = p.row, sum = row + Swift.max(g.inW, g.outW) * c, staging = staged + worker * stagedRow
                throughRows(band.rows, { oh, ringSlot in
                    let s = s2 + ringSlot * outRow, pm = m2 + oh * outRow
                    for j in 0..<outRow { s[j] = 0 }
                    for od in holdersD[d] {
                        let m = wm + (od % rw) * plane + oh * outRow, share = ws + (od % rw) * plane + oh * outRow
                        for j in 0..<outRow { s[j] += masked(reaches(pm[j], m[j]), share[j]) }
                    }
                }) { h in
                    let rm = m1 + h * outRow
                    for j in 0..<outRow { s1[j] = 0 }
                    for oh in holdersH[h] {
                        let pm = m2 + oh * outRow, ps = s2 + (oh % rowRing) * outRow
                        for j in 0..<outRow { s1[j] += masked(reaches(rm[j], pm[j]), ps[j]) }
                    }
                    let x0 = inputRow(n, d, h, row)
                    // Each element gathers its windows' shares in ascending ow, tap by tap over
                    // the row (taps from the last, so that each element's windows come in that
                    // order), as `splitRow` finds them.
                    for j in 0..<g.inW * c { sum[j] = 0 }
                    reachingTapsW(descending: true) { t, outputs in
                        let first = (outputs.lowerBound * g.strideW - g.padW + t) * c
                        let target = sum + first, x = x0 + first
                        let rm = m1 + (h * g.outW + outputs.lowerBound) * c, rs = s1 + outputs.lowerBound * c
                        if g.strideW == 1 {
                            for j in 0..<outputs.count * c { target[j] += masked(reaches(x[j], rm[j]), rs[j]) }
                            return
                        }
                        channelsByPosition(count: outputs.count, jumps: (g.strideW &* c, c), channels: c) { e, w in
                            target[e] += masked(reaches(x[e], rm[w]), rs[w])
                        }
                    }
                    writeRow(n, d, h, staged: staging) { out in
                        for j in 0..<g.inW * c { out[j] = R.finish(sum[j], windowSize: 1) }
                    }
                }
            })
        } }
    }

    /// `maxSplit` window by window, for windows that do not overlap: each window's maximum
    /// and ties over its elements in (d, h, w) order, its share, then each element's. The
    /// pipeline's levels (row, plane and window maxima and ties in rings of scratch) are there
    /// for windows that share elements; for windows that do not, on a tiny gradient, they
    /// were most of its cost (docs/performance.md). The same bits: the maximum is the same value (the
    /// NaN kept is the last in (d, h, w) order either way, quieted unless it is the window's
    /// last element), the tie count the same integer; and where an element is in one window,
    /// `maxSplit`'s three levels, 0 + masked(reaches(x, row max), 0 + masked(reaches(row max,
    /// plane max), 0 + masked(reaches(plane max, maximum), share))), are 0 + masked(reaches(x,
    /// maximum), share): for a finite share, x reaches every level exactly when it equals the
    /// maximum (they lie between x and it), and a level it misses gives +0 to the levels
    /// above; a share that is infinite gives NaN (share x 0) at the first level missed, as
    /// here; a NaN share spreads its NaN either way. BackwardTests compares the two.
    func maxSplitDirect() {
        let c = g.channels, windowSize = g.windowSize, single = windowSize == 1, s = call.gradSteps
        let isCancelled = call.isCancelled ?? { false }
        // Elements that no window holds take 0.
        gradInput.initialize(repeating: R.finish(0, windowSize: 1), count: g.inputElements)
        let (stepD, stepH, stepW, stepC) = (g.stepD, g.stepH, g.stepW, g.stepC)
        withUnsafeTemporaryAllocation(of: R.Accumulator.self, capacity: 2 * c) { state in
            // Per channel, the window's maximum and tie count, then its share in place of the count.
            let m = state.baseAddress!, k = m + c
            for n in 0..<g.batch {
                for od in 0..<g.outD {
                    if isCancelled() { return }
                    let (d0, d1) = planes(of: od)
                    for oh in 0..<g.outH {
                        let (h0, h1) = rowsOf(oh)
                        for ow in 0..<g.outW {
                            let (w0, w1) = windowBounds(ow, stride: g.strideW, padding: g.padW, kernel: g.kernelW, length: g.inW)
                            guard d0 < d1, h0 < h1, w0 < w1 else { continue }
                            for ch in 0..<c { m[ch] = -.infinity; k[ch] = 0 }
                            let window = input + (n * g.stepN + d0 * stepD + h0 * stepH + w0 * stepW)
                            for d in 0..<(d1 - d0) { for h in 0..<(h1 - h0) { for w in 0..<(w1 - w0) {
                                let x = window + (d * stepD + h * stepH + w * stepW)
                                for ch in 0..<c { tie(&m[ch], &k[ch], R.widen(x[ch * stepC]), 1) }
                            } } }
                            tiePadding(m, k, c, windowSize - (d1 - d0) * (h1 - h0) * (w1 - w0))
                            let gradient = gradOutput + (n * s.n + od * s.d + oh * s.h + ow * s.w)
                            for ch in 0..<c {
                                let mv = m[ch], share = R.widen(gradient[ch * s.c])
                                // Windows of one element pass the cotangent through (see `maxSplit`).
                                k[ch] = single ? share : mv != mv ? mv : share / k[ch]
                            }
                            for d in d0..<d1 { for h in h0..<h1 { for w in w0..<w1 {
                                let x = window + ((d - d0) * stepD + (h - h0) * stepH + (w - w0) * stepW)
                                let target = gradInput + (((n * g.inD + d) * g.inH + h) * g.inW + w) * c
                                for ch in 0..<c {
                                    var sum: R.Accumulator = 0
                                    sum += masked(reaches(R.widen(x[ch * stepC]), m[ch]), k[ch])
                                    target[ch] = R.finish(sum, windowSize: 1)
                                }
                            } } }
                        }
                    }
                }
            }
        }
    }

    /// One step of a running (maximum, pick) in PyTorch's scan: a greater value, or NaN, takes
    /// the place, so ties keep the first and NaNs the last.
    @inline(__always) func pick<P: FixedWidthInteger>(_ m: inout R.Accumulator, _ p: inout P, _ v: R.Accumulator, _ at: P) {
        let mv = m, pv = p
        let take = v > mv || v != v
        m = take ? v : mv + 0  // as in `tie`
        p = take ? at : pv
    }

    /// Level 1 of `first` for input row (n, d, h): per output column ow, the running maximum
    /// of the row's window in m[ow * C + ch] and the column picked in p (its first column when
    /// nothing is taken; -1 for a window with no column in bounds).
    func firstRow<P: FixedWidthInteger>(_ n: Int, _ d: Int, _ h: Int, _ m: UnsafeMutablePointer<R.Accumulator>,
                                        _ p: UnsafeMutablePointer<P>, _ row: UnsafeMutablePointer<R.Accumulator>) {
        let c = g.channels, elements = inputRow(n, d, h, row)
        for ow in 0..<g.outW {
            let (w0, w1) = windowBounds(ow, stride: g.strideW, padding: g.padW, kernel: g.kernelW, length: g.inW)
            let m = m + ow * c, p = p + ow * c
            for ch in 0..<c { m[ch] = -.infinity; p[ch] = w1 > w0 ? P(w0) : -1 }
            for w in w0..<Swift.max(w0, w1) {
                let x = elements + w * c, at = P(w)
                for ch in 0..<c { pick(&m[ch], &p[ch], x[ch], at) }
            }
        }
    }

    /// Level 2 of `first` for output row oh of a plane: the running maximum of its rows' maxima
    /// (row h in the ring `m1` at slot h % columnRing) in m and the row picked in p.
    func firstColumn<P: FixedWidthInteger>(_ oh: Int, _ m1: UnsafeMutablePointer<R.Accumulator>,
                                           _ m: UnsafeMutablePointer<R.Accumulator>, _ p: UnsafeMutablePointer<P>) {
        let outRow = g.outW * g.channels
        let (h0, h1) = windowBounds(oh, stride: g.strideH, padding: g.padH, kernel: g.kernelH, length: g.inH)
        if h1 > h0 {
            // `pick` from (-inf, h0) takes row h0's maximum, -inf included: one store each.
            let rm = m1 + (h0 % columnRing) * outRow, first = P(h0)
            for j in 0..<outRow { m[j] = rm[j]; p[j] = first }
        } else {
            for j in 0..<outRow { m[j] = -.infinity; p[j] = -1 }
        }
        for h in (h0 + 1)..<Swift.max(h0 + 1, h1) {
            let rm = m1 + (h % columnRing) * outRow, at = P(h)
            for j in 0..<outRow { pick(&m[j], &p[j], rm[j], at) }
        }
    }

    /// Per window, the plane PyTorch's kernel picks (the position, level by level); each plane
    /// then gathers the cotangents of the windows that picked its elements. Picks are indices
    /// along one axis: 32-bit (as wide as float32's lanes, half the memory) unless an axis is
    /// longer.
    func maxFirst() throws {
        if Swift.max(g.inD, g.inH, g.inW) < Int(Int32.max) { try maxFirst(Int32.self) } else { try maxFirst(Int.self) }
    }

    func maxFirst<P: FixedWidthInteger>(_: P.Type) throws {
        let c = g.channels, line = rowLine
        let (rp, rw) = (planeRing, windowRing)
        let outRow = g.outW * c, (rows1, shares2) = (aligned(columnRing * outRow), aligned(rowRing * outRow))
        // Per worker: the ring's band of plane maxima, the ring of row maxima level 2 reads (a
        // row's cotangents on the way back), the plane cotangents' ring of rows (a window's
        // running maxima while it is found), a row; the ring's band of row and plane picks,
        // the windows' picked planes.
        func perWorker(_ levels: Int, _ windows: Int) -> (Int, Int) {
            let rows = aligned(levels * outRow), plane = aligned(windows * outRow)
            return (rp * plane + rows1 + shares2 + line, rp * (rows + plane) + rw * plane)
        }
        let (bands, levels, windows) = bands {
            let (values, picks) = perWorker($0, $1)
            return (try? Checked.add(Checked.multiply(values, MemoryLayout<R.Accumulator>.stride, ""),
                                     Checked.multiply(picks, MemoryLayout<P>.stride, ""), "")) ?? .max
        }
        let rows = aligned(levels * outRow), plane = aligned(windows * outRow), (perWorker, perWorkerPicks) = perWorker(levels, windows)
        try limitScratch([(perWorker, MemoryLayout<R.Accumulator>.stride), (perWorkerPicks, MemoryLayout<P>.stride)])
        let items = g.batch * g.inD * bands.count, workers = workers(items)
        try withStagedRows(items) { staged in try withScratch(P.self, workers * perWorkerPicks, "the max's gradient") { picks in
            try withScratch(R.Accumulator.self, workers * perWorker, "the max's gradient") {
                let scratch = $0
                func parts(_ worker: Int) -> (m1: UnsafeMutablePointer<R.Accumulator>, m2: UnsafeMutablePointer<R.Accumulator>,
                                              s2: UnsafeMutablePointer<R.Accumulator>, row: UnsafeMutablePointer<R.Accumulator>,
                                              p1: UnsafeMutablePointer<P>, p2: UnsafeMutablePointer<P>, wp: UnsafeMutablePointer<P>) {
                    let m2 = scratch + worker * perWorker, m1 = m2 + rp * plane, s2 = m1 + rows1
                    let p1 = picks + worker * perWorkerPicks, p2 = p1 + rp * rows
                    return (m1, m2, s2, s2 + shares2, p1, p2, p2 + rp * plane)
                }
                throughPlanes(bands, plane: { worker, n, d, slot, windows, band in
                    // (Bases moved back by the band's first rows, as in `maxSplit`.)
                    let p = parts(worker), wp = p.wp - band.windows.lowerBound * outRow, p1 = p.p1 + slot * rows - band.levels.lowerBound * outRow
                    let m2 = p.m2 + slot * plane - band.windows.lowerBound * outRow, p2 = p.p2 + slot * plane - band.windows.lowerBound * outRow
                    byRows(band, { h in
                        firstRow(n, d, h, p.m1 + (h % columnRing) * outRow, p1 + h * outRow, p.row)
                    }) { oh in
                        firstColumn(oh, p.m1, m2 + oh * outRow, p2 + oh * outRow)
                    }
                    // Level 3 once a window's last plane is found, row by row: a window picks
                    // its first plane unless a later one takes the place. (Its picks are what
                    // is kept, not its maxima, so nothing is folded before.)
                    for od in windows {
                        let (d0, d1) = planes(of: od)
                        guard d == d1 - 1 else { continue }
                        let picked = wp + (od % rw) * plane, m = p.s2
                        for oh in band.windows {
                            let pr = picked + oh * outRow, first = P(d0)
                            for j in 0..<outRow { m[j] = -.infinity; pr[j] = first }
                            for d in d0..<d1 {
                                let pm = p.m2 + (d % rp) * plane + (oh - band.windows.lowerBound) * outRow, at = P(d)
                                for j in 0..<outRow { pick(&m[j], &pr[j], pm[j], at) }
                            }
                        }
                    }
                }, back: { worker, n, d, slot, band in
                    // Row by row, as in `maxSplit`: the cotangents of the windows that picked
                    // this plane, per output row, in a ring; those of the rows that picked row h;
                    // then each element's.
                    let p = parts(worker), wp = p.wp - band.windows.lowerBound * outRow, p1 = p.p1 + slot * rows - band.levels.lowerBound * outRow
                    let p2 = p.p2 + slot * plane - band.windows.lowerBound * outRow
                    let s2 = p.s2, s1 = p.m1, row = p.row, sum = row + Swift.max(g.inW, g.outW) * c, staging = staged + worker * stagedRow
                    let here = P(d)
                    throughRows(band.rows, { oh, ringSlot in
                        let s = s2 + ringSlot * outRow
                        for j in 0..<outRow { s[j] = 0 }
                        for od in holdersD[d] {
                            let gradient = cotangentRow(n, od, oh, row), pp = wp + (od % rw) * plane + oh * outRow
                            // Added whether picked or not (0 then): blends vectorise, masked stores are slow.
                            for j in 0..<outRow { s[j] += pp[j] == here ? gradient[j] : 0 }
                        }
                    }) { h in
                        for j in 0..<outRow { s1[j] = 0 }
                        let rowHere = P(h)
                        for oh in holdersH[h] {
                            let pp = p2 + oh * outRow, ps = s2 + (oh % rowRing) * outRow
                            for j in 0..<outRow { s1[j] += pp[j] == rowHere ? ps[j] : 0 }
                        }
                        writeRow(n, d, h, staged: staging) { out in
                            for w in 0..<g.inW {
                                for ch in 0..<c { sum[ch] = 0 }
                                let columnHere = P(w)
                                for ow in holdersW[w] {
                                    let pr = p1 + (h * g.outW + ow) * c, rs = s1 + ow * c
                                    for ch in 0..<c { sum[ch] += pr[ch] == columnHere ? rs[ch] : 0 }
                                }
                                let target = out + w * c
                                for ch in 0..<c { target[ch] = R.finish(sum[ch], windowSize: 1) }
                            }
                        }
                    }
                })
            }
        } }
    }
}
