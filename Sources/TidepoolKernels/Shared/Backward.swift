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
        let isCancelled = call.isCancelled
        if workers == 1 {
            for index in 0..<count {
                if let isCancelled, isCancelled() { return }
                body(0, index)
            }
            return
        }
        DispatchQueue.concurrentPerform(iterations: workers) { worker in
            var index = worker
            while index < count {
                if let isCancelled, isCancelled() { return }
                body(worker, index)
                index += workers
            }
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
        let c = g.channels
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
                        target[ch] = R.finish(sum, windowSize: g.windowSize)
                    }
                }
            }
        }
    }

    // MARK: max

    /// The in-bounds part of output (od, oh, ow)'s window on each axis, and its padded count.
    @inline(__always) func window(_ od: Int, _ oh: Int, _ ow: Int) -> (Range<Int>, Range<Int>, Range<Int>, padded: Int) {
        let (d0, d1) = windowBounds(od, stride: g.strideD, padding: g.padD, kernel: g.kernelD, length: g.inD)
        let (h0, h1) = windowBounds(oh, stride: g.strideH, padding: g.padH, kernel: g.kernelH, length: g.inH)
        let (w0, w1) = windowBounds(ow, stride: g.strideW, padding: g.padW, kernel: g.kernelW, length: g.inW)
        let rd = d0..<Swift.max(d0, d1), rh = h0..<Swift.max(h0, h1), rw = w0..<Swift.max(w0, w1)
        return (rd, rh, rw, g.windowSize - rd.count * rh.count * rw.count)
    }

    /// `body(worker, n, od, oh, ow, o, rd, rh, rw, padded)` for every output position: o the
    /// flat index of its first channel, rd/rh/rw the in-bounds part of its window, `padded`
    /// its padding positions. Output planes (n, od) are spread over the threads.
    func forEachWindow(_ body: (Int, Int, Int, Int, Int, Int, Range<Int>, Range<Int>, Range<Int>, Int) -> Void) {
        parallel(g.batch * g.outD) { worker, index in
            let n = index / g.outD, od = index % g.outD
            for oh in 0..<g.outH { for ow in 0..<g.outW {
                let (rd, rh, rw, padded) = window(od, oh, ow)
                body(worker, n, od, oh, ow, (((n * g.outD + od) * g.outH + oh) * g.outW + ow) * g.channels, rd, rh, rw, padded)
            } }
        }
    }

    /// `body(worker, n, d, h, w, out)` for every input position, `out` its gradient's first
    /// channel. Input planes (n, d) are spread over the threads.
    func forEachElement(_ body: (Int, Int, Int, Int, Int, UnsafeMutablePointer<R.Input>) -> Void) {
        parallel(g.batch * g.inD) { worker, index in
            let n = index / g.inD, d = index % g.inD
            let plane = gradInput + index * planeElements
            for h in 0..<g.inH { for w in 0..<g.inW { body(worker, n, d, h, w, plane + (h * g.inW + w) * g.channels) } }
        }
    }

    /// The input's channels at (n, d, h, w), widened into `row`.
    @inline(__always) func loadRow(_ row: UnsafeMutablePointer<R.Accumulator>, _ n: Int, _ d: Int, _ h: Int, _ w: Int) {
        let base = input + (n * g.stepN + d * g.stepD + h * g.stepH + w * g.stepW)
        for ch in 0..<g.channels { row[ch] = R.widen(base[ch * g.stepC]) }
    }

    /// Per window, its maximum and the share of each element equal to it; then each input
    /// element gathers from its windows, in the order (od, oh, ow).
    func maxSplit() throws {
        let rowCount = 4 * g.channels * workers(g.batch * Swift.max(g.outD, g.inD))
        try withScratch(R.Accumulator.self, [outputElements, outputElements, rowCount], "the max's gradient") {
            maxSplit(maxima: $0[0], shares: $0[1], rows: $0[2])
        }
    }

    func maxSplit(maxima: UnsafeMutablePointer<R.Accumulator>, shares: UnsafeMutablePointer<R.Accumulator>,
                  rows: UnsafeMutablePointer<R.Accumulator>) {
        let c = g.channels
        // Windows of one element are no reduction at all (MLX reduces nothing there): the
        // cotangent passes through, NaN inputs included.
        let single = g.windowSize == 1
        forEachWindow { worker, n, od, oh, ow, o, rd, rh, rw, padded in
            let value = rows + worker * 4 * c, m = value + c, ties = m + c, nan = ties + c
            for ch in 0..<c { m[ch] = -.infinity; ties[ch] = 0; nan[ch] = 0 }
            for d in rd { for h in rh { for w in rw {
                loadRow(value, n, d, h, w)
                for ch in 0..<c {
                    let v = value[ch]
                    if v.isNaN { nan[ch] = 1 } else if v > m[ch] { m[ch] = v; ties[ch] = 1 } else if v == m[ch] { ties[ch] += 1 }
                }
            } } }
            for ch in 0..<c {
                if m[ch] == -.infinity { ties[ch] += R.Accumulator(padded) }
                let gradient = cotangent(n, od, oh, ow, ch)
                maxima[o + ch] = nan[ch] != 0 ? .nan : m[ch]
                shares[o + ch] = single ? gradient : nan[ch] != 0 ? .nan : gradient / ties[ch]
            }
        }
        forEachElement { worker, n, d, h, w, out in
            let value = rows + worker * 4 * c, sum = value + c
            loadRow(value, n, d, h, w)
            for ch in 0..<c { sum[ch] = 0 }
            for od in holdersD[d] { for oh in holdersH[h] { for ow in holdersW[w] {
                let o = (((n * g.outD + od) * g.outH + oh) * g.outW + ow) * c
                for ch in 0..<c {
                    let share = shares[o + ch]
                    sum[ch] += single || value[ch] == maxima[o + ch] ? share : share * 0
                }
            } } }
            for ch in 0..<c { out[ch] = R.finish(sum[ch], windowSize: 1) }
        }
    }

    /// Per window, the position PyTorch's kernel picks (greater, or NaN, wins; the first
    /// in-bounds position if none does); then each input element gathers the cotangents of
    /// the windows that picked it, in the order (od, oh, ow).
    func maxFirst() throws {
        let rowCount = 2 * g.channels * workers(g.batch * Swift.max(g.outD, g.inD))
        try withScratch(Int.self, [outputElements], "the max's gradient") { picks in
            try withScratch(R.Accumulator.self, [rowCount], "the max's gradient") { maxFirst(picks: picks[0], rows: $0[0]) }
        }
    }

    func maxFirst(picks: UnsafeMutablePointer<Int>, rows: UnsafeMutablePointer<R.Accumulator>) {
        let c = g.channels
        forEachWindow { worker, n, _, _, _, o, rd, rh, rw, _ in
            let value = rows + worker * 2 * c, m = value + c
            // As PyTorch: the running maximum starts at -inf on the first in-bounds position,
            // and a value greater than it, or NaN, takes its place.
            let first = rd.isEmpty || rh.isEmpty || rw.isEmpty ? -1 : (rd.lowerBound * g.inH + rh.lowerBound) * g.inW + rw.lowerBound
            for ch in 0..<c { m[ch] = -.infinity; picks[o + ch] = first }
            for d in rd { for h in rh { for w in rw {
                loadRow(value, n, d, h, w)
                let position = (d * g.inH + h) * g.inW + w
                for ch in 0..<c where value[ch] > m[ch] || value[ch].isNaN {
                    m[ch] = value[ch]
                    picks[o + ch] = position
                }
            } } }
        }
        forEachElement { worker, n, d, h, w, out in
            let sum = rows + worker * 2 * c
            let position = (d * g.inH + h) * g.inW + w
            for ch in 0..<c { sum[ch] = 0 }
            for od in holdersD[d] { for oh in holdersH[h] { for ow in holdersW[w] {
                let o = (((n * g.outD + od) * g.outH + oh) * g.outW + ow) * c
                for ch in 0..<c where picks[o + ch] == position { sum[ch] += cotangent(n, od, oh, ow, ch) }
            } } }
            for ch in 0..<c { out[ch] = R.finish(sum[ch], windowSize: 1) }
        }
    }
}
