import CTidepool
import Dispatch
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

private struct Backward<R: WindowReduction>: @unchecked Sendable where R.Input == R.Output, R.Accumulator: BinaryFloatingPoint {
    let call: BackwardCall
    let g: PoolGeometry
    let input: UnsafePointer<R.Input>
    let gradOutput: UnsafePointer<R.Input>
    let gradInput: UnsafeMutablePointer<R.Input>
    /// Per input index on each axis, the windows that hold it.
    let holdersD: [Range<Int>], holdersH: [Range<Int>], holdersW: [Range<Int>]

    init(_ call: BackwardCall) {
        self.call = call
        g = call.geometry
        input = call.input.assumingMemoryBound(to: R.Input.self)
        gradOutput = call.gradOutput.assumingMemoryBound(to: R.Input.self)
        gradInput = call.gradInput.assumingMemoryBound(to: R.Input.self)
        let g = call.geometry
        holdersD = (0..<g.inD).map { windowsHolding($0, kernel: g.kernelD, stride: g.strideD, padding: g.padD, outputs: g.outD) }
        holdersH = (0..<g.inH).map { windowsHolding($0, kernel: g.kernelH, stride: g.strideH, padding: g.padH, outputs: g.outH) }
        holdersW = (0..<g.inW).map { windowsHolding($0, kernel: g.kernelW, stride: g.strideW, padding: g.padW, outputs: g.outW) }
    }

    var planeElements: Int { g.inH * g.inW * g.channels }
    var outputElements: Int { g.pixels * g.channels }

    /// How many threads `parallel` uses for `count` items.
    func workers(_ count: Int) -> Int { Swift.max(1, Swift.min(call.threads, count)) }

    /// `body(worker, index)` for index in 0..<count on `workers(count)` threads, each index on
    /// one; `worker` says which thread, for its scratch.
    /// Stops starting items once `call.isCancelled` says yes.
    func parallel(_ count: Int, _ body: (Int, Int) -> Void) {
        let workers = workers(count)
        let isCancelled = call.isCancelled ?? { false }
        if workers == 1 {
            for index in 0..<count where !isCancelled() { body(0, index) }
            return
        }
        DispatchQueue.concurrentPerform(iterations: workers) { worker in
            for index in stride(from: worker, to: count, by: workers) where !isCancelled() { body(worker, index) }
        }
    }

    /// `body` with scratch of `counts[i]` values of `V` each (64-byte aligned runs, from the
    /// engine's ScratchPool), or TP_ERR_NO_MEMORY.
    func withScratch<V>(_: V.Type, _ counts: [Int], _ what: String, _ body: ([UnsafeMutablePointer<V>]) throws -> Void) throws {
        let sizes = try counts.map { try Checked.multiply(($0 + 15) / 16 * 16, MemoryLayout<V>.stride, what) }
        let bytes = try sizes.reduce(0) { try Checked.add($0, $1, what) }
        guard let scratch = ScratchPool.shared.take(bytes: bytes) else {
            throw PoolError(TP_ERR_NO_MEMORY, "cannot allocate \(bytes) bytes of scratch for \(what)")
        }
        defer { ScratchPool.shared.give(scratch, bytes: bytes) }
        var offset = 0
        try body(zip(counts, sizes).map { count, size in
            defer { offset += size }
            return (scratch + offset).bindMemory(to: V.self, capacity: count)
        })
    }

    func run() throws {
        let elements = g.batch * g.inD * planeElements
        guard g.outD > 0, g.outH > 0, g.outW > 0 else {
            gradInput.initialize(repeating: R.finish(0, windowSize: 1), count: elements)
            return
        }
        switch (call.kind, call.ties) {
        case (.average, _): try average()
        case (.max, .split): try maxSplit()
        case (.max, .first): try maxFirst()
        }
    }

    @inline(__always) func cotangent(_ n: Int, _ od: Int, _ oh: Int, _ ow: Int, _ c: Int) -> R.Accumulator {
        let s = call.gradSteps
        return R.widen(gradOutput[n * s.n + od * s.d + oh * s.h + ow * s.w + c * s.c])
    }

    // MARK: average

    /// A box filter of the cotangent: per input plane, the cotangent planes of its D windows
    /// summed, then per input row the rows of its H windows, then per element its W windows.
    func average() throws {
        let c = g.channels, outPlane = g.outH * g.outW * c, outRow = g.outW * c
        try withScratch(R.Accumulator.self, [workers(g.batch * g.inD) * (outPlane + outRow)], "the average's gradient") {
            average(planes: $0[0], outPlane: outPlane, outRow: outRow)
        }
    }

    func average(planes: UnsafeMutablePointer<R.Accumulator>, outPlane: Int, outRow: Int) {
        // A local, so that finish's 1 / windowSize is hoisted out of the loops: read through
        // self it is read again after every store (which might alias it), and divided again.
        let c = g.channels, windowSize = g.windowSize
        parallel(g.batch * g.inD) { worker, index in
            let n = index / g.inD, d = index % g.inD
            let plane = planes + worker * (outPlane + outRow), row = plane + outPlane
            plane.initialize(repeating: 0, count: outPlane)
            for od in holdersD[d] {
                for oh in 0..<g.outH { for ow in 0..<g.outW { for ch in 0..<c {
                    plane[(oh * g.outW + ow) * c + ch] += cotangent(n, od, oh, ow, ch)
                } } }
            }
            let out = gradInput + (n * g.inD + d) * planeElements
            for h in 0..<g.inH {
                row.initialize(repeating: 0, count: outRow)
                for oh in holdersH[h] {
                    let source = plane + oh * outRow
                    for j in 0..<outRow { row[j] += source[j] }
                }
                for w in 0..<g.inW {
                    let target = out + (h * g.inW + w) * c
                    for ch in 0..<c {
                        var sum: R.Accumulator = 0
                        for ow in holdersW[w] { sum += row[ow * c + ch] }
                        target[ch] = R.finish(sum, windowSize: windowSize)
                    }
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
    // O(k) steps per element instead of 2k^3 (each plane's rows and columns are redone for
    // every window plane holding it: (kD / sD + 1) (kW + kH) + kD, plus the way back).

    /// Row (n, d, h) of the input, widened into `row` as contiguous (W, C): the loops over
    /// windows then run over contiguous channels, which vectorise, whatever the input's strides.
    func widenRow(_ n: Int, _ d: Int, _ h: Int, into row: UnsafeMutablePointer<R.Accumulator>) {
        let c = g.channels, base = input + (n * g.stepN + d * g.stepD + h * g.stepH)
        for w in 0..<g.inW {
            let source = base + w * g.stepW, target = row + w * c
            for ch in 0..<c { target[ch] = R.widen(source[ch * g.stepC]) }
        }
    }

    /// `cond ? share : share * 0`: a share that is not taken still spreads NaN when it is not
    /// finite, as MLX's `g * mask / count` does.
    @inline(__always) func masked(_ cond: Bool, _ share: R.Accumulator) -> R.Accumulator { cond ? share : share * 0 }

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

    /// Level 1 of `split` for input plane (n, d): per row h and output column ow, the maximum of
    /// the row's window in m1[(h * outW + ow) * C + ch] and its ties in c1 (padding counted
    /// as -inf elements).
    func splitRows(_ n: Int, _ d: Int, _ m1: UnsafeMutablePointer<R.Accumulator>, _ c1: UnsafeMutablePointer<R.Accumulator>,
                   _ row: UnsafeMutablePointer<R.Accumulator>) {
        let c = g.channels
        for h in 0..<g.inH {
            widenRow(n, d, h, into: row)
            for ow in 0..<g.outW {
                let (w0, w1) = windowBounds(ow, stride: g.strideW, padding: g.padW, kernel: g.kernelW, length: g.inW)
                let m = m1 + (h * g.outW + ow) * c, k = c1 + (h * g.outW + ow) * c
                for ch in 0..<c { m[ch] = -.infinity; k[ch] = 0 }
                for w in w0..<Swift.max(w0, w1) {
                    let x = row + w * c
                    for ch in 0..<c { tie(&m[ch], &k[ch], x[ch], 1) }
                }
                let padded = R.Accumulator(g.kernelW - Swift.max(0, w1 - w0))
                for ch in 0..<c where m[ch] == -.infinity { k[ch] += padded }
            }
        }
    }

    /// Level 2 of `split`: per output position (oh, ow) of the plane, the maximum of its rows'
    /// maxima in m2[(oh * outW + ow) * C + ch] and the ties in c2 (padded rows count kernelW).
    func splitColumns(_ m1: UnsafeMutablePointer<R.Accumulator>, _ c1: UnsafeMutablePointer<R.Accumulator>,
                      _ m2: UnsafeMutablePointer<R.Accumulator>, _ c2: UnsafeMutablePointer<R.Accumulator>) {
        let c = g.channels, outRow = g.outW * c
        for oh in 0..<g.outH {
            let (h0, h1) = windowBounds(oh, stride: g.strideH, padding: g.padH, kernel: g.kernelH, length: g.inH)
            let m = m2 + oh * outRow, k = c2 + oh * outRow
            for j in 0..<outRow { m[j] = -.infinity; k[j] = 0 }
            for h in h0..<Swift.max(h0, h1) {
                let rm = m1 + h * outRow, rk = c1 + h * outRow
                for j in 0..<outRow { tie(&m[j], &k[j], rm[j], rk[j]) }
            }
            let padded = R.Accumulator((g.kernelH - Swift.max(0, h1 - h0)) * g.kernelW)
            for j in 0..<outRow where m[j] == -.infinity { k[j] += padded }
        }
    }

    /// Per window, its maximum (NaN when it holds one) in `maxima` and each tied element's
    /// share of its cotangent in `shares`; then each input plane gathers its gradient.
    func maxSplit() throws {
        let c = g.channels
        let rows = g.inH * g.outW * c, plane = g.outH * g.outW * c
        let perWorker = 2 * rows + 3 * plane + (g.inW + 1) * c
        let workers = workers(g.batch * Swift.max(g.outD, g.inD))
        let single = g.windowSize == 1
        try withScratch(R.Accumulator.self, [outputElements, outputElements, workers * perWorker], "the max's gradient") {
            let maxima = $0[0], shares = $0[1], scratch = $0[2]
            // Level 3 and the shares, per output plane (n, od): its planes' maxima and ties.
            parallel(g.batch * g.outD) { worker, index in
                let n = index / g.outD, od = index % g.outD
                let m1 = scratch + worker * perWorker, c1 = m1 + rows, m2 = c1 + rows, c2 = m2 + plane
                let row = c2 + 2 * plane
                let m = maxima + index * plane, k = shares + index * plane
                for j in 0..<plane { m[j] = -.infinity; k[j] = 0 }
                let (d0, d1) = windowBounds(od, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
                for d in d0..<Swift.max(d0, d1) {
                    splitRows(n, d, m1, c1, row)
                    splitColumns(m1, c1, m2, c2)
                    for j in 0..<plane { tie(&m[j], &k[j], m2[j], c2[j]) }
                }
                let padded = R.Accumulator((g.kernelD - Swift.max(0, d1 - d0)) * g.kernelH * g.kernelW)
                for oh in 0..<g.outH { for ow in 0..<g.outW { for ch in 0..<c {
                    let j = (oh * g.outW + ow) * c + ch
                    if m[j] == -.infinity { k[j] += padded }
                    let gradient = cotangent(n, od, oh, ow, ch)
                    // Windows of one element are no reduction at all (MLX reduces nothing there):
                    // the cotangent passes through, NaN inputs included.
                    k[j] = single ? gradient : m[j].isNaN ? .nan : gradient / k[j]
                } } }
            }
            // The way back, per input plane (n, d): window -> plane maxima -> row maxima -> elements.
            parallel(g.batch * g.inD) { worker, index in
                let n = index / g.inD, d = index % g.inD
                let m1 = scratch + worker * perWorker, c1 = m1 + rows, m2 = c1 + rows, c2 = m2 + plane, s2 = c2 + plane
                let row = s2 + plane, sum = row + g.inW * c
                let s1 = c1  // the row ties are not needed on the way back
                splitRows(n, d, m1, c1, row)
                splitColumns(m1, c1, m2, c2)
                for j in 0..<plane { s2[j] = 0 }
                for od in holdersD[d] {
                    let m = maxima + (n * g.outD + od) * plane, share = shares + (n * g.outD + od) * plane
                    for j in 0..<plane { s2[j] += masked(single || m2[j] == m[j], share[j]) }
                }
                let outRow = g.outW * c
                for h in 0..<g.inH {
                    let s = s1 + h * outRow, rm = m1 + h * outRow
                    for j in 0..<outRow { s[j] = 0 }
                    for oh in holdersH[h] {
                        let pm = m2 + oh * outRow, ps = s2 + oh * outRow
                        for j in 0..<outRow { s[j] += masked(single || rm[j] == pm[j], ps[j]) }
                    }
                }
                let out = gradInput + index * planeElements
                for h in 0..<g.inH {
                    widenRow(n, d, h, into: row)
                    for w in 0..<g.inW {
                        let x = row + w * c
                        for ch in 0..<c { sum[ch] = 0 }
                        for ow in holdersW[w] {
                            let rm = m1 + (h * g.outW + ow) * c, rs = s1 + (h * g.outW + ow) * c
                            for ch in 0..<c { sum[ch] += masked(single || x[ch] == rm[ch], rs[ch]) }
                        }
                        let target = out + (h * g.inW + w) * c
                        for ch in 0..<c { target[ch] = R.finish(sum[ch], windowSize: 1) }
                    }
                }
            }
        }
    }

    /// One step of a running (maximum, pick) in PyTorch's scan: a greater value, or NaN, takes
    /// the place, so ties keep the first and NaNs the last.
    @inline(__always) func pick(_ m: inout R.Accumulator, _ p: inout Int, _ v: R.Accumulator, _ at: Int) {
        let mv = m, pv = p
        let take = v > mv || v != v
        m = take ? v : mv + 0  // as in `tie`
        p = take ? at : pv
    }

    /// Level 1 of `first` for input plane (n, d): per row h and output column ow, the running
    /// maximum of the row's window in m1 and the column picked in p1 (its first column when
    /// nothing is taken; -1 for a window with no column in bounds).
    func firstRows(_ n: Int, _ d: Int, _ m1: UnsafeMutablePointer<R.Accumulator>, _ p1: UnsafeMutablePointer<Int>,
                   _ row: UnsafeMutablePointer<R.Accumulator>) {
        let c = g.channels
        for h in 0..<g.inH {
            widenRow(n, d, h, into: row)
            for ow in 0..<g.outW {
                let (w0, w1) = windowBounds(ow, stride: g.strideW, padding: g.padW, kernel: g.kernelW, length: g.inW)
                let m = m1 + (h * g.outW + ow) * c, p = p1 + (h * g.outW + ow) * c
                for ch in 0..<c { m[ch] = -.infinity; p[ch] = w1 > w0 ? w0 : -1 }
                for w in w0..<Swift.max(w0, w1) {
                    let x = row + w * c
                    for ch in 0..<c { pick(&m[ch], &p[ch], x[ch], w) }
                }
            }
        }
    }

    /// Level 2 of `first`: per output position (oh, ow) of the plane, the running maximum of
    /// its rows' maxima in m2 and the row picked in p2.
    func firstColumns(_ m1: UnsafeMutablePointer<R.Accumulator>, _ m2: UnsafeMutablePointer<R.Accumulator>,
                      _ p2: UnsafeMutablePointer<Int>) {
        let outRow = g.outW * g.channels
        for oh in 0..<g.outH {
            let (h0, h1) = windowBounds(oh, stride: g.strideH, padding: g.padH, kernel: g.kernelH, length: g.inH)
            let m = m2 + oh * outRow, p = p2 + oh * outRow
            for j in 0..<outRow { m[j] = -.infinity; p[j] = h1 > h0 ? h0 : -1 }
            for h in h0..<Swift.max(h0, h1) {
                let rm = m1 + h * outRow
                for j in 0..<outRow { pick(&m[j], &p[j], rm[j], h) }
            }
        }
    }

    /// Per window, the plane PyTorch's kernel picks (the position, level by level); then each
    /// input plane gathers the cotangents of the windows that picked its elements.
    func maxFirst() throws {
        let c = g.channels
        let rows = g.inH * g.outW * c, plane = g.outH * g.outW * c
        let workers = workers(g.batch * Swift.max(g.outD, g.inD))
        let perWorker = 2 * rows + 2 * plane + (g.inW + 1) * c, perWorkerPicks = rows + plane
        try withScratch(Int.self, [outputElements, workers * perWorkerPicks], "the max's gradient") { picks in
            try withScratch(R.Accumulator.self, [workers * perWorker], "the max's gradient") {
                maxFirst(picksD: picks[0], picks: picks[1], scratch: $0[0], perWorker: perWorker, perWorkerPicks: perWorkerPicks)
            }
        }
    }

    func maxFirst(picksD: UnsafeMutablePointer<Int>, picks: UnsafeMutablePointer<Int>, scratch: UnsafeMutablePointer<R.Accumulator>,
                  perWorker: Int, perWorkerPicks: Int) {
        let c = g.channels
        let rows = g.inH * g.outW * c, plane = g.outH * g.outW * c
        // Level 3, per output plane (n, od): the plane each window picks.
        parallel(g.batch * g.outD) { worker, index in
            let n = index / g.outD, od = index % g.outD
            let m1 = scratch + worker * perWorker, m2 = m1 + rows, m = m2 + plane, row = m + plane
            let p1 = picks + worker * perWorkerPicks, p2 = p1 + rows, p = picksD + index * plane
            let (d0, d1) = windowBounds(od, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
            for j in 0..<plane { m[j] = -.infinity; p[j] = d1 > d0 ? d0 : -1 }
            for d in d0..<Swift.max(d0, d1) {
                firstRows(n, d, m1, p1, row)
                firstColumns(m1, m2, p2)
                for j in 0..<plane { pick(&m[j], &p[j], m2[j], d) }
            }
        }
        // The way back, per input plane (n, d): windows -> the rows they picked -> elements.
        parallel(g.batch * g.inD) { worker, index in
            let n = index / g.inD, d = index % g.inD
            let m1 = scratch + worker * perWorker, m2 = m1 + rows, s2 = m2 + plane, s1 = s2 + plane
            let row = s1 + rows, sum = row + g.inW * c
            let p1 = picks + worker * perWorkerPicks, p2 = p1 + rows
            firstRows(n, d, m1, p1, row)
            firstColumns(m1, m2, p2)
            for j in 0..<plane { s2[j] = 0 }
            for od in holdersD[d] {
                let p = picksD + (n * g.outD + od) * plane
                for oh in 0..<g.outH { for ow in 0..<g.outW {
                    let j = (oh * g.outW + ow) * c
                    for ch in 0..<c { s2[j + ch] += p[j + ch] == d ? cotangent(n, od, oh, ow, ch) : 0 }
                } }
            }
            let outRow = g.outW * c
            for h in 0..<g.inH {
                let s = s1 + h * outRow
                for j in 0..<outRow { s[j] = 0 }
                for oh in holdersH[h] {
                    let pp = p2 + oh * outRow, ps = s2 + oh * outRow
                    // Added whether picked or not (0 then): blends vectorise, masked stores are slow.
                    for j in 0..<outRow { s[j] += pp[j] == h ? ps[j] : 0 }
                }
            }
            let out = gradInput + index * planeElements
            for h in 0..<g.inH {
                for w in 0..<g.inW {
                    for ch in 0..<c { sum[ch] = 0 }
                    for ow in holdersW[w] {
                        let pr = p1 + (h * g.outW + ow) * c, rs = s1 + (h * g.outW + ow) * c
                        for ch in 0..<c { sum[ch] += pr[ch] == w ? rs[ch] : 0 }
                    }
                    let target = out + (h * g.inW + w) * c
                    for ch in 0..<c { target[ch] = R.finish(sum[ch], windowSize: 1) }
                }
            }
        }
    }
}
