import CTidepool
import CTidepoolStream
import TidepoolSync
import TidepoolTypes

#if canImport(Glibc)
import Glibc
#endif

/// Runs `call` with the reduction of its kind and dtype; the body of every build's
/// `PoolKernels.run`.
func runKernels(_ call: KernelCall) throws -> Int {
    let g = call.geometry
    if call.kind == .average && call.dtype.isFloatingPoint && !g.hasDenseRows && g.inputElements > 0 && g.spansItsElements {
        return try runPacked(call)
    }
    return try withReduction(call.kind, call.dtype, call.geometry, Job(call: call))
}

/// `call` on a dense copy of its input, a few batch entries at a time. The plan reads the
/// input's layout (dense rows reduce as one run; depth first and whole windows need them), and
/// a float sum's bits depend on the plan's order of additions: packed, a strided view gives
/// the bits of the same values in a contiguous array. (Max and integer sums are exact in any
/// order and read strided input in place, as are broadcast and overlapping views, whose copy
/// could be far larger than the memory they read.) At most `packedBytes` of scratch, or one
/// entry (no more than the memory the view spans), checked as the kernels' scratch is.
private func runPacked(_ call: KernelCall) throws -> Int {
    let g = call.geometry, size = call.dtype.size
    // Fits: the input's element count was checked (PoolGeometry), and one entry is part of it.
    let entryBytes = g.inD * g.inH * g.inW * g.channels * size
    let entries = Swift.min(g.batch, Swift.max(1, packedBytes / entryBytes))
    let bytes = entries * entryBytes
    try checkScratch(perWorker: bytes, tensorBytes: [g.inputElements * size], g)
    guard let packed = ScratchPool.shared.take(bytes: bytes) else {
        throw PoolError(TP_ERR_NO_MEMORY, "cannot allocate \(bytes) bytes to pack a strided input")
    }
    defer { ScratchPool.shared.give(packed, bytes: bytes) }
    let outputEntry = g.outD * g.outH * g.outW * g.channels * size
    var scratch = 0
    for first in stride(from: 0, to: g.batch, by: entries) {
        if let isCancelled = call.isCancelled, isCancelled() { break }
        var dense = g
        dense.batch = Swift.min(entries, g.batch - first)
        (dense.stepC, dense.stepW) = (1, g.channels)
        dense.stepH = g.inW * dense.stepW
        dense.stepD = g.inH * dense.stepH
        dense.stepN = g.inD * dense.stepD
        for n in 0..<dense.batch {
            pack(g, n: first + n, size: size, from: call.input, into: packed + n * entryBytes)
        }
        let part = KernelCall(geometry: dense, kind: call.kind, dtype: call.dtype, input: UnsafeRawPointer(packed),
                              output: call.output + first * outputEntry, threads: call.threads, settings: call.settings,
                              progress: call.progress, isCancelled: call.isCancelled)
        scratch = Swift.max(scratch, try withReduction(call.kind, call.dtype, g, Job(call: part)))
    }
    return scratch + bytes
}

/// Bytes of packed input held at once (`runPacked`), unless one batch entry is larger.
let packedBytes = 4 << 20

/// Copies batch entry `n` of the input (elements of `size` bytes at `g`'s steps) into `target`,
/// channels innermost, then W, H, D.
private func pack(_ g: PoolGeometry, n: Int, size: Int, from input: UnsafeRawPointer, into target: UnsafeMutableRawPointer) {
    func elements<E>(_: E.Type) {
        let source = input.assumingMemoryBound(to: E.self) + n * g.stepN
        var out = target.assumingMemoryBound(to: E.self)
        for d in 0..<g.inD {
            for h in 0..<g.inH {
                let row = source + d * g.stepD + h * g.stepH
                if g.stepC == 1 && g.stepW == g.channels {
                    out.update(from: row, count: g.inW * g.channels)
                    out += g.inW * g.channels
                    continue
                }
                for w in 0..<g.inW {
                    let position = row + w * g.stepW
                    for c in 0..<g.channels { out[c] = position[c * g.stepC] }
                    out += g.channels
                }
            }
        }
    }
    switch size {
    case 2: elements(UInt16.self)
    case 4: elements(UInt32.self)
    default: elements(UInt64.self)
    }
}

/// The plan (strategy and options, see KernelPlan.swift) that `runKernels` follows for
/// `geometry` (for a 2-d pooling whose rows run as planes, the plan of that geometry), for
/// tests and for explaining a path.
package func kernelPlan(_ geometry: PoolGeometry, _ kind: PoolKind, _ dtype: DType, _ settings: KernelSettings) throws -> KernelPlan {
    struct Planner: ReductionVisitor {
        let geometry: PoolGeometry, settings: KernelSettings
        func visit<R: WindowReduction>(_: R.Type) -> KernelPlan { KernelPlan.forCall(geometry, R.self, settings).1 }
    }
    return try withReduction(kind, dtype, geometry, Planner(geometry: geometry, settings: settings))
}

/// The output rows, columns and channels of a tile that `runKernels` cuts for `geometry` with
/// `workers` threads (a 2-d pooling whose rows run as planes has tiles of one row), for tests.
package func tileShape(_ geometry: PoolGeometry, _ kind: PoolKind, _ dtype: DType, _ settings: KernelSettings, workers: Int = 1) throws
    -> (rows: Int, columns: Int, channels: Int) {
    struct Planner: ReductionVisitor {
        let geometry: PoolGeometry, settings: KernelSettings, workers: Int
        func visit<R: WindowReduction>(_: R.Type) -> (rows: Int, columns: Int, channels: Int) {
            let (geometry, kernel) = KernelPlan.forCall(geometry, R.self, settings)
            let plan = TilePlan(geometry, kernel: kernel, accumulatorSize: MemoryLayout<R.Accumulator>.stride,
                                workers: workers, budgetBytes: settings.tileBudgetBytes)
            return (plan.tileOH, plan.tileOW, plan.tileC)
        }
    }
    return try withReduction(kind, dtype, geometry, Planner(geometry: geometry, settings: settings, workers: workers))
}

/// The type `runKernels` sums `dtype` in for `geometry`, for tests.
package func accumulatorType(_ geometry: PoolGeometry, _ kind: PoolKind, _ dtype: DType) throws -> Any.Type {
    struct Accumulator: ReductionVisitor {
        func visit<R: WindowReduction>(_: R.Type) -> Any.Type { R.Accumulator.self }
    }
    return try withReduction(kind, dtype, geometry, Accumulator())
}

/// Scratch per thread that is always allowed (see `checkScratch`).
let minimumScratchLimit = 64 << 20

/// Refuses `perWorker` bytes of scratch per thread (nil: more than Int.max) past 4 times the
/// bytes of the call's tensors (`tensorBytes`: those it reads and writes), at least 64 MiB,
/// with TP_ERR_NO_MEMORY. Scratch grows with the kernel and the padding, not only with the
/// tensors (a window of 2^30 over one element would need gigabytes), so a small request cannot
/// make the process allocate without limit. The sum and its multiple saturate.
func checkScratch(perWorker: Int?, tensorBytes: [Int], _ geometry: PoolGeometry) throws {
    let scaled = try? Checked.multiply(tensorBytes.reduce(0) { try Checked.add($0, $1, "") }, 4, "")
    let limit = scaled.map { Swift.max(minimumScratchLimit, $0) } ?? Int.max
    guard let perWorker, perWorker <= limit else {
        throw PoolError(TP_ERR_NO_MEMORY,
            "windows of kernel_size \(geometry.kernelDescription) with padding \(geometry.paddingDescription) need "
                + "\(perWorker.map { "\($0)" } ?? "over 2^63") bytes of scratch per thread, "
                + "more than the \(limit) allowed for these tensors (4 times their size, at least 64 MiB)")
    }
}

/// Whether a pooling of `g`, or its gradient, runs on the calling thread alone: its windows
/// read fewer elements than `settings.serialWorkBelow`.
func staysOnCallingThread(_ g: PoolGeometry, _ settings: KernelSettings) -> Bool {
    // `channels * windowSize` needs no check: each kernel is at most its axis's padded length,
    // and the padded volume, channels included, fits in 64 bits (`PoolGeometry.init` checks
    // both); kernels run only where that volume is not 0 (an empty output or gradient returns
    // before them: a probe with batch 0, 2^40 channels and a window of 2^54 returns success).
    let work = g.pixels.multipliedReportingOverflow(by: g.channels * g.windowSize)
    return !work.overflow && work.partialValue < settings.serialWorkBelow
}

/// One validated operation, split over threads.
private struct Job: ReductionVisitor, @unchecked Sendable {
    let call: KernelCall
    var settings: KernelSettings { call.settings }

    func visit<R: WindowReduction>(_: R.Type) throws -> Int {
        // The geometry the kernels run (a 2-d pooling's rows may run as planes); errors name
        // the call's own.
        let (geometry, kernel) = KernelPlan.forCall(call.geometry, R.self, settings)
        let threads = call.threads
        let serial = threads == 1 || staysOnCallingThread(geometry, settings)
        let plan = TilePlan(geometry, kernel: kernel, accumulatorSize: MemoryLayout<R.Accumulator>.stride,
                            workers: serial ? 1 : threads, budgetBytes: settings.tileBudgetBytes)
        // The output's byte count fits (plan checked it).
        let outputBytes = geometry.pixels * geometry.channels * MemoryLayout<R.Output>.stride
        let workers = serial ? 1 : Swift.min(threads, plan.tileCount)
        // Both byte counts were checked to fit (plan).
        let inputBytes = geometry.inputElements * MemoryLayout<R.Input>.stride
        let perWorker = plan.scratchCount.multipliedReportingOverflow(by: MemoryLayout<R.Accumulator>.stride)
        try checkScratch(perWorker: perWorker.overflow ? nil : perWorker.partialValue, tensorBytes: [inputBytes, outputBytes], call.geometry)
        // Scratch for every worker, reused across calls: fresh pages would cost the kernel
        // more to zero than the pooling itself on mid-sized tensors.
        let bytes = perWorker.partialValue * workers
        guard let scratch = ScratchPool.shared.take(bytes: bytes) else {
            throw PoolError(TP_ERR_NO_MEMORY, "cannot allocate \(plan.scratchCount) accumulators for each of \(workers) threads")
        }
        defer { ScratchPool.shared.give(scratch, bytes: bytes) }
        let accumulators = scratch.bindMemory(to: R.Accumulator.self, capacity: workers * plan.scratchCount)
        let typedInput = call.input.assumingMemoryBound(to: R.Input.self)
        let typedOutput = call.output.assumingMemoryBound(to: R.Output.self)

        // Tiles are taken on demand, which balances tiles that cost less near padded edges;
        // in runs of neighbours unless they are blocks of output planes whose D windows
        // overlap (each then shares kd - sd input planes with the next: `forEach`).
        let inRuns = plan.counts.od == 1 || geometry.kernelD <= geometry.strideD
        WorkerPool.shared.forEach(plan.tileCount, workers: workers, inRuns: inRuns) { worker, index in
            if let isCancelled = call.isCancelled, isCancelled() { return false }
            poolTile(R.self, geometry, plan, plan.tile(index, geometry), input: typedInput, output: typedOutput,
                     scratch: accumulators + worker * plan.scratchCount, progress: call.progress)
            return true
        } finish: { _ in
            // Each thread orders its own streaming stores before the call returns.
            if kernel.streamOutput { tpstream_fence() }
        }
        return bytes
    }
}

/// Something done with the reduction type of a kind and dtype (`withReduction`): one generic
/// method, so the table of types is written once for every use.
protocol ReductionVisitor {
    associatedtype Result
    func visit<R: WindowReduction>(_: R.Type) throws -> Result
}

/// Calls `visitor` with the reduction that pools `dtype` by `kind` over `g`. Integer averages
/// of up to 32 bits take the cheapest exact sum the window allows (see each reduction's
/// `fits`), except that 32-bit integers whose W windows overlap or touch at strided positions
/// sum in Int64 rather than Double: a row's windows are then differences of running sums
/// (`widenedInChunks`, exact only for integer sums), which cost less than Double folds of every
/// window's taps (AvgPool1d k11 s7 of 3 int32 channels 0.60x the time, AvgPool2d k7 s3 of 6
/// 0.63x), at W strides of 3 too (k3 s3 C=2 0.55x, k7 s3 C=3 0.64x) and at 2 with windows of
/// 4+ columns (k5 s2 C=4 0.82x, k4 s2 C=8 0.81x). Windows of 2 or 3 columns at W stride 2
/// alone keep Double, each input in at most two of them, where an Int64 sum's conversion to
/// Double (one element at a time without AVX-512) costs more than the folds save (k3 s2 C=3
/// 1.09x-1.29x, k2 s2 C=4 1.08x-1.14x). Both sums are exact, and Double(sum) / Double(window
/// size) is then the same quotient: the choice changes no bits.
func withReduction<V: ReductionVisitor>(_ kind: PoolKind, _ dtype: DType, _ g: PoolGeometry, _ visitor: V) throws -> V.Result {
    let windowSize = g.windowSize
    func averageOfIntegers<I: FixedWidthInteger>(_: I.Type) throws -> V.Result {
        if AverageInt16Sum<I>.fits(windowSize: windowSize) { return try visitor.visit(AverageInt16Sum<I>.self) }
        if AverageSmallInteger<I>.fits(windowSize: windowSize) { return try visitor.visit(AverageSmallInteger<I>.self) }
        if AverageInt32Sum<I>.fits(windowSize: windowSize) { return try visitor.visit(AverageInt32Sum<I>.self) }
        if AverageWideInteger<I>.fits(windowSize: windowSize) && !sumsRunAlongW(g) { return try visitor.visit(AverageWideInteger<I>.self) }
        return try visitor.visit(AverageNarrowInteger<I>.self)
    }
    switch (kind, dtype) {
    case (.average, .float32): return try visitor.visit(AverageFloat32.self)
    case (.average, .float64): return try visitor.visit(AverageFloat64.self)
    case (.average, .float16): return try visitor.visit(AverageFloat16.self)
    case (.average, .bfloat16): return try visitor.visit(AverageBFloat16.self)
    case (.average, .int8): return try averageOfIntegers(Int8.self)
    case (.average, .int16): return try averageOfIntegers(Int16.self)
    case (.average, .int32): return try averageOfIntegers(Int32.self)
    case (.average, .uint8): return try averageOfIntegers(UInt8.self)
    case (.average, .uint16): return try averageOfIntegers(UInt16.self)
    case (.average, .uint32): return try averageOfIntegers(UInt32.self)
    case (.average, .int64): return try visitor.visit(AverageWideInteger<Int64>.self)
    case (.average, .uint64): return try visitor.visit(AverageWideInteger<UInt64>.self)
    case (.max, .float32): return try visitor.visit(MaxFloat<Float>.self)
    case (.max, .float64): return try visitor.visit(MaxFloat<Double>.self)
    case (.max, .float16): return try visitor.visit(MaxHalfFloat<Float16>.self)
    case (.max, .bfloat16): return try visitor.visit(MaxHalfFloat<BFloat16>.self)
    case (.max, .int8): return try visitor.visit(MaxInteger<Int8>.self)
    case (.max, .int16): return try visitor.visit(MaxInteger<Int16>.self)
    case (.max, .int32): return try visitor.visit(MaxInteger<Int32>.self)
    case (.max, .int64): return try visitor.visit(MaxInteger<Int64>.self)
    case (.max, .uint8): return try visitor.visit(MaxInteger<UInt8>.self)
    case (.max, .uint16): return try visitor.visit(MaxInteger<UInt16>.self)
    case (.max, .uint32): return try visitor.visit(MaxInteger<UInt32>.self)
    case (.max, .uint64): return try visitor.visit(MaxInteger<UInt64>.self)
    }
}

/// Whether 32-bit integer averages over `g` sum in Int64 running sums (`withReduction`): W
/// reduced at strided positions (a step above 1), whose windows overlap or touch, but for
/// windows of 2 or 3 columns at W stride 2 alone. Both sums are 8-byte integer sums (the
/// accumulator size `WidthPlan` is given).
private func sumsRunAlongW(_ g: PoolGeometry) -> Bool {
    WidthPlan(g, sums: true, unmergesExactly: true, inputSize: 4, accumulatorSize: 8).step > 1 && g.kernelW >= g.strideW
        && (g.strideW > 2 || g.kernelW > 3 || g.strideH > 1 || g.strideD > 1)
}

/// Scratch buffers kept between calls (a few, of a few hundred KB each per worker), so
/// repeated calls do not fault in fresh pages. Concurrent calls take different buffers.
final class ScratchPool: Sendable {
    static let shared = ScratchPool()
    /// Buffers kept when idle; more concurrent calls allocate and free their own.
    static let keep = 8
    /// Larger buffers (huge windows) go back to the system at once: kept, a few of them
    /// would hold hundreds of megabytes for the life of the process.
    static let largestKept = 16 << 20
    private let idle = Locked<[(pointer: UnsafeMutableRawPointer, bytes: Int)]>([])

    private init() {
        // A host may fork while another of its threads is in a call (multiprocessing): the
        // child must not find the lock held by a thread it does not have.
        pthread_atfork({ ScratchPool.shared.idle.lockBeforeFork() }, { ScratchPool.shared.idle.unlockAfterFork() },
                       { ScratchPool.shared.idle.unlockAfterFork() })
    }

    /// A buffer of at least `bytes` bytes (64-byte aligned), or nil when memory runs out.
    func take(bytes: Int) -> UnsafeMutableRawPointer? {
        let reused = idle.withLock { buffers -> UnsafeMutableRawPointer? in
            guard let index = buffers.firstIndex(where: { $0.bytes >= bytes }) else { return nil }
            return buffers.remove(at: index).pointer
        }
        if let reused { return reused }
        var pointer: UnsafeMutableRawPointer?
        return posix_memalign(&pointer, 64, Swift.max(bytes, 64)) == 0 ? pointer : nil
    }

    /// Returns a buffer from `take`, with the size it was asked for.
    func give(_ pointer: UnsafeMutableRawPointer, bytes: Int) {
        guard bytes <= Self.largestKept else {
            free(pointer)
            return
        }
        let evicted = idle.withLock { buffers -> UnsafeMutableRawPointer? in
            buffers.append((pointer, bytes))
            guard buffers.count > Self.keep else { return nil }
            // Keep the largest: they serve any smaller request.
            let smallest = buffers.indices.min { buffers[$0].bytes < buffers[$1].bytes }!
            return buffers.remove(at: smallest).pointer
        }
        free(evicted)
    }
}
