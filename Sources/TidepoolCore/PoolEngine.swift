@_exported import TidepoolTypes
import CTidepool
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Runs pooling operations on a configurable number of threads. Stateless apart from the
/// thread count, so one engine serves any number of concurrent callers.
public final class PoolEngine: Sendable {
    public static let shared = PoolEngine()
    public static let maxThreads = 1024

    /// 0 means one thread per online CPU.
    private let configuredThreads = Atomic<Int>(0)
    /// Tile budget, streaming threshold, vector kernels: tests change them to force every
    /// tiling and finishing path on small tensors.
    package let settings: KernelSettings
    /// The build of the kernels this engine runs (`KernelSelection`).
    public let cpuLevel: CPULevel
    let kernels: any PoolKernels.Type
    private let largestScratch = Atomic<Int>(0)

    /// The most scratch memory one call of this engine has used, for all its threads: the
    /// engine's only memory beyond the caller's tensors.
    public var largestScratchBytes: Int { largestScratch.load(ordering: .relaxed) }

    /// `cpuLevel` nil takes the process's level (`KernelSelection.processLevel`: the best this
    /// CPU runs, or TIDEPOOL_CPU's). Another level must be one this CPU runs
    /// (`KernelSelection.supports`): asking for one it lacks is a programming error that stops
    /// the process here rather than at an illegal instruction later.
    public init(threads: Int = 0, tileBudgetBytes: Int = KernelSettings.defaultTileBudgetBytes,
                streamingOutputBytes: Int = KernelSettings.defaultStreamingOutputBytes, usesVectorKernels: Bool = true,
                gradientStateBytes: Int = KernelSettings.defaultGradientStateBytes,
                blockScanTaps: Int? = nil, rowsAsPlanesAbove: Int = KernelSettings.tileBudget(level2CacheBytes: 0),
                serialWorkBelow: Int = KernelSettings.defaultSerialWorkBelow, splitsRows: Bool = true, cpuLevel: CPULevel? = nil) {
        let level = cpuLevel ?? KernelSelection.processLevel
        precondition(KernelSelection.supports(level), "this CPU cannot run the kernels built for \(level)")
        configuredThreads.store(Swift.max(0, Swift.min(threads, Self.maxThreads)), ordering: .relaxed)
        settings = KernelSettings(tileBudgetBytes: tileBudgetBytes, streamingOutputBytes: streamingOutputBytes,
                                  usesVectorKernels: usesVectorKernels, gradientStateBytes: gradientStateBytes,
                                  blockScanTaps: blockScanTaps, rowsAsPlanesAbove: rowsAsPlanesAbove,
                                  serialWorkBelow: serialWorkBelow, splitsRows: splitsRows)
        self.cpuLevel = level
        kernels = KernelSelection.kernels(level)
    }

    /// The CPUs online when first asked: glibc's sysconf opens and reads
    /// /sys/devices/system/cpu/online on every call, which cost a tiny pooling most of its time.
    public static let onlineCPUs: Int = Swift.max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))

    /// The number of threads `pool` uses (never 0).
    public var threadCount: Int {
        let configured = configuredThreads.load(ordering: .relaxed)
        return configured == 0 ? Self.onlineCPUs : configured
    }

    /// 0 restores the default, one thread per online CPU.
    public func setThreadCount(_ threads: Int) throws {
        guard (0...Self.maxThreads).contains(threads) else {
            throw PoolError.invalid("thread count must be between 0 (all CPUs) and \(Self.maxThreads) but got \(threads)")
        }
        configuredThreads.store(threads, ordering: .relaxed)
    }

    /// The threads one call runs on: its own count (1 to `maxThreads`), or the engine's.
    func threadCount(for call: Int?) throws -> Int {
        guard let t = call else { return threadCount }
        guard (1...Self.maxThreads).contains(t) else {
            throw PoolError.invalid("thread count must be between 1 and \(Self.maxThreads) but got \(t)")
        }
        return t
    }

    /// Checks everything `pool` would check, without touching memory.
    public func check(_ desc: PoolDescriptor, input: TensorView, output: OutputView) throws {
        _ = try plan(desc, input: input, output: output)
    }

    /// Checks everything about an operation without touching memory, returning the
    /// geometry to run, or nil when the output is empty (nothing to compute). Called by
    /// `pool` before any element is written.
    func plan(_ desc: PoolDescriptor, input: TensorView, output: OutputView) throws -> PoolGeometry? {
        let prepared = try prepare(desc, input: input, output: output)
        try prepared.place(input: input.data, output: output.data)
        return prepared.geometry
    }

    /// A pooling checked for everything but its data addresses (`prepare`): `pool(_:input:
    /// output:)` runs it on tensors of the same description at any addresses, checking only
    /// those, so a caller pooling many small tensors alike pays for the rest once.
    public struct Prepared: @unchecked Sendable {
        let kind: PoolKind
        let dtype: DType
        let inputShape: [Int], outputShape: [Int]
        /// The bytes each tensor touches from its address (nil: no elements).
        let inputReach: Range<Int>?, outputReach: Range<Int>?
        /// nil when the output is empty.
        let geometry: PoolGeometry?

        /// The checks of the data addresses: not null where there are elements, no address
        /// range past 64 bits, no overlap.
        func place(input: UnsafeRawPointer?, output: UnsafeRawPointer?) throws {
            let inputSpan = try inputReach.map { try TensorView.place($0, at: input, shape: inputShape, what: "input") }
            let outputSpan = try outputReach.map { try TensorView.place($0, at: output, shape: outputShape, what: "output") }
            if let inputSpan, let outputSpan, inputSpan.overlaps(outputSpan) {
                throw PoolError(TP_ERR_LAYOUT, "output memory overlaps the input; pooling cannot run in place")
            }
        }
    }

    /// Checks everything about an operation but its data addresses (see `Prepared`).
    public func prepare(_ desc: PoolDescriptor, input: TensorView, output: OutputView) throws -> Prepared {
        let expectedShape = try desc.outputShape(inputShape: input.shape)
        let expectedDType = input.dtype.result(of: desc.kind)
        guard output.dtype == expectedDType else {
            throw PoolError(TP_ERR_DTYPE,
                "output dtype must be \(expectedDType) (\(desc.kind) pooling of \(input.dtype)) but is \(output.dtype)")
        }
        guard output.shape == expectedShape else {
            throw PoolError.shape(
                "output shape must be \(pythonTuple(expectedShape)) for input \(pythonTuple(input.shape)) and \(desc) "
                    + "but is \(pythonTuple(output.shape))")
        }
        try output.checkContiguous()
        let inputReach = try input.reach(what: "input")
        let outputReach = try output.asInput.reach(what: "output")
        // Checked by outputReach: the output's element count fits, so every product of its
        // shape entries does too.
        let geometry = expectedShape.contains(0) ? nil : try PoolGeometry(desc, input: input, outputShape: expectedShape)
        return Prepared(kind: desc.kind, dtype: input.dtype, inputShape: input.shape, outputShape: output.shape,
                        inputReach: inputReach, outputReach: outputReach, geometry: geometry)
    }

    /// Pools `input` into `output`. Everything is validated first; on error nothing is
    /// written. `threads` overrides the engine's thread count for this call. `progress` runs
    /// on the computing threads before each output plane of a tile (every few to a few hundred
    /// microseconds), so a caller can watch for something else to do meanwhile; keep it cheap.
    /// `isCancelled` is asked before each tile; once it says yes, no further tile starts and
    /// the call throws TP_ERR_CLOSED (the output is then partly written).
    public func pool(_ desc: PoolDescriptor, input: TensorView, output: OutputView, threads: Int? = nil,
                     progress: (@Sendable () -> Void)? = nil, isCancelled: (@Sendable () -> Bool)? = nil) throws {
        try pool(prepare(desc, input: input, output: output), input: input.data, output: output.data, threads: threads,
                 progress: progress, isCancelled: isCancelled)
    }

    /// Pools the tensors at `input` and `output`, described as when `prepared`, as the
    /// other `pool` does: the addresses are checked first; on error nothing is written.
    public func pool(_ prepared: Prepared, input: UnsafeRawPointer?, output: UnsafeMutableRawPointer?, threads: Int? = nil,
                     progress: (@Sendable () -> Void)? = nil, isCancelled: (@Sendable () -> Bool)? = nil) throws {
        try prepared.place(input: input, output: output)
        guard let geometry = prepared.geometry, let outputData = output else { return }
        // An input with no elements is never read (every window lies in padding), so any
        // non-null address stands in for its data.
        let inputData = input ?? UnsafeRawPointer(outputData)
        let threads = try threadCount(for: threads)
        let call = KernelCall(geometry: geometry, kind: prepared.kind, dtype: prepared.dtype, input: inputData, output: outputData,
                              threads: threads, settings: settings, progress: progress, isCancelled: isCancelled)
        largestScratch.max(try kernels.run(call), ordering: .relaxed)
        if isCancelled?() == true { throw PoolError(TP_ERR_CLOSED, "the job was cancelled") }
    }
}
