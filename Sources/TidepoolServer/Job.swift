import CTidepool
import Synchronization
import TidepoolCore
import TidepoolProtocol
import TidepoolSync
import TidepoolSharedMemory
import TidepoolZMQ

#if canImport(Glibc)
import Glibc
#endif

/// Set when nobody waits for a job any more (its client exited, said BYE, or lost its
/// routing id to another process): the engine starts no further tile.
final class JobCancellation: Sendable {
    private let flag = Atomic<Bool>(false)
    func cancel() { flag.store(true, ordering: .relaxed) }
    var isCancelled: Bool { flag.load(ordering: .relaxed) }
}

/// Bytes of inline outputs held for clients: reserved when a job is admitted, handed to the
/// reply frame, and given back when libzmq frees that frame (sent, or dropped with its
/// connection), or at once when the job fails before it has one.
final class QueuedBytes: Sendable {
    private let value = Atomic<Int>(0)
    var current: Int { value.load(ordering: .relaxed) }
    func add(_ bytes: Int) { value.add(bytes, ordering: .relaxed) }
    func subtract(_ bytes: Int) { value.subtract(bytes, ordering: .relaxed) }
}

/// A reservation of `bytes` against the daemon's and one client's queued bytes, released
/// exactly once: by the reply frame that carries the output, or by the job if it never makes one.
final class OutputReservation: FrameRelease, @unchecked Sendable {
    let bytes: Int
    private let counters: [QueuedBytes]
    private let done = Atomic<Bool>(false)
    /// Whether a frame owns the reservation (and will release it when freed).
    private let taken = Atomic<Bool>(false)

    init(bytes: Int, counters: [QueuedBytes]) {
        self.bytes = bytes
        self.counters = counters
        for counter in counters { counter.add(bytes) }
    }

    override func released() {
        guard !done.exchange(true, ordering: .acquiringAndReleasing) else { return }
        for counter in counters { counter.subtract(bytes) }
    }

    /// A frame now owns the reservation.
    func handOver() { taken.store(true, ordering: .relaxed) }

    /// Releases the reservation unless a frame owns it.
    func releaseUnlessHandedOver() {
        if !taken.load(ordering: .relaxed) { released() }
    }
}

public struct Completion: @unchecked Sendable {
    let key: [UInt8]
    let id: UInt64
    let envelope: [ZMQFrame]
    let reply: [ZMQFrame]
    let failure: ProtocolViolation?
    let bytes: Int
    let poisonedRegions: [UInt64]
    let cancellation: JobCancellation
    /// Whether the output went to shared memory (the reply carries no tensor bytes).
    let outputInRegion: Bool
    /// What ran, and how long it took (for the debug log).
    let request: PoolRequest
    let seconds: Double
}

/// Where a job reads one tensor: a registered region at an offset, or a received frame.
enum JobTensor: @unchecked Sendable {
    case region(SharedRegion, Int)
    case frame(ZMQFrame)

    var region: SharedRegion? {
        if case .region(let region, _) = self { return region }
        return nil
    }
}

/// One validated job, run by the thread that took it. It holds its regions and frames, so they
/// stay valid even if the client unregisters them meanwhile.
public struct Job: @unchecked Sendable {
    let key: [UInt8]
    public let request: PoolRequest
    let envelope: [ZMQFrame]
    /// The tensors read, as `request.reads` lists them.
    let reads: [JobTensor]
    let outputRegion: (SharedRegion, Int)?
    let doneWord: (SharedRegion, Int)?
    let engine: PoolEngine
    let cancellation: JobCancellation
    /// For an inline output: the bytes reserved for its reply frame.
    let outputReservation: OutputReservation?

    /// Runs the job; `progress` as in PoolEngine.pool.
    public func run(progress: @escaping @Sendable () -> Void = {}) -> Completion {
        var poisoned: [UInt64] = []
        let start = monotonicNanoseconds()
        func elapsed() -> Double { Double(monotonicNanoseconds() &- start) / 1e9 }
        defer { outputReservation?.releaseUnlessHandedOver() }
        do {
            let frames = try compute(progress: progress)
            let regions = zip(request.reads.map(\.reference), reads.map(\.region)) + [(request.output, outputRegion?.0)]
            for (reference, region) in regions {
                if let region, region.isPoisoned, case .region(let id, _) = reference.placement, !poisoned.contains(id) {
                    poisoned.append(id)
                }
            }
            if let first = poisoned.first {
                throw ProtocolViolation(TP_ERR_SYSTEM, "region \(first) was truncated by its owner during the job; it is unregistered",
                                        type: request.type, id: request.id)
            }
            return Completion(key: key, id: request.id, envelope: envelope, reply: frames, failure: nil,
                              bytes: request.reads.reduce(request.output.bytes) { $0 + $1.reference.bytes }, poisonedRegions: [], cancellation: cancellation,
                              outputInRegion: outputRegion != nil, request: request, seconds: elapsed())
        } catch {
            let violation = error as? ProtocolViolation
                ?? (error as? PoolError).map { ProtocolViolation($0.status, $0.message, type: request.type, id: request.id) }
                ?? ProtocolViolation(TP_ERR_INTERNAL, "internal error: \(error)", type: request.type, id: request.id)
            return Completion(key: key, id: request.id, envelope: envelope, reply: Reply.error(violation).map(ZMQFrame.init),
                              failure: violation, bytes: 0, poisonedRegions: poisoned, cancellation: cancellation,
                              outputInRegion: outputRegion != nil, request: request, seconds: elapsed())
        }
    }

    private func compute(progress: @escaping @Sendable () -> Void) throws -> [ZMQFrame] {
        var alignedCopies: [UnsafeMutableRawPointer] = []
        defer { alignedCopies.forEach { free($0) } }
        let inputs = try zip(reads, request.reads).map { read, described -> UnsafeRawPointer in
            switch read {
            case .region(let region, let offset):
                return UnsafeRawPointer(region.base + offset)
            case .frame(let frame):
                let data = UnsafeRawPointer(frame.data)
                // libzmq may hand a small frame inside its receive buffer at any address.
                guard Int(bitPattern: data) % request.dtype.size != 0 else { return data }
                let bytes = described.reference.bytes
                guard let copy = malloc(Swift.max(bytes, 1)) else {
                    throw PoolError(TP_ERR_NO_MEMORY, "cannot allocate \(bytes) bytes to align the \(described.name)")
                }
                alignedCopies.append(copy)
                copy.copyMemory(from: data, byteCount: bytes)
                return UnsafeRawPointer(copy)
            }
        }
        let outputFrame: ZMQFrame?
        let output: UnsafeMutableRawPointer
        if let (region, offset) = outputRegion {
            outputFrame = nil
            output = region.base + offset
        } else if let reservation = outputReservation {
            // The frame takes over the reservation: it is released when libzmq frees the frame.
            guard let frame = ZMQFrame(size: request.output.bytes, release: reservation) else {
                throw PoolError(TP_ERR_NO_MEMORY, "cannot allocate a \(request.output.bytes)-byte output frame")
            }
            reservation.handOver()
            outputFrame = frame
            output = frame.data
        } else {
            // An empty output: nothing reserved, nothing to write.
            let frame = ZMQFrame()
            outputFrame = frame
            output = frame.data
        }
        let cancellation = cancellation
        let input = TensorView(data: inputs[0], dtype: request.dtype, shape: request.inputShape)
        let written = OutputView(data: output, dtype: request.outputDType, shape: request.outputShape)
        if let backward = request.backward {
            try engine.backward(request.descriptor, input: input, gradOutput: TensorView(data: inputs[1], dtype: request.dtype,
                                                                                         shape: request.pooledShape),
                                gradInput: written, ties: backward.ties, isCancelled: { cancellation.isCancelled })
        } else {
            try engine.pool(request.descriptor, input: input, output: written, progress: progress, isCancelled: { cancellation.isCancelled })
        }
        let header = ZMQFrame(PoolReply.encode(request.type, id: request.id, dtype: request.outputDType, shape: request.outputShape))
        return outputFrame.map { [header, $0] } ?? [header]
    }
}
