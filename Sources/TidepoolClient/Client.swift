import CTidepool
import CTidepoolSystem
import CZeroMQ
import Synchronization
import TidepoolCore
import TidepoolProtocol
import TidepoolSharedMemory
import TidepoolZMQ

#if canImport(Glibc)
import Glibc
#endif

/// A connection to tidepoold. Every method is safe to call from several threads; calls on
/// one client are serialised (they share one socket).
public final class PoolClient: @unchecked Sendable {
    public let endpoint: String
    /// Default limit of synchronous calls, in milliseconds (-1: none).
    public let timeoutMs: Int
    private let state: Mutex<Connection>

    /// Connects and pings the daemon, so an unreachable endpoint fails here with
    /// TP_ERR_CONNECTION rather than on the first job.
    public init(endpoint: String, timeoutMs: Int) throws {
        self.endpoint = endpoint
        self.timeoutMs = timeoutMs
        if endpoint.hasPrefix("ipc://") {
            let path = String(endpoint.dropFirst("ipc://".count))
            guard access(path, F_OK) == 0 else {
                throw PoolError(TP_ERR_CONNECTION, "no daemon at \(endpoint): \(path) does not exist (start one with `make run`)")
            }
        }
        let connection = try Connection(endpoint: endpoint)
        state = Mutex(connection)
        do {
            _ = try ping(timeoutMs: timeoutMs)
        } catch let error as PoolError where error.status == TP_ERR_TIMEOUT {
            throw PoolError(TP_ERR_CONNECTION, "no reply from a daemon at \(endpoint) within \(timeoutMs) ms")
        }
    }

    /// Round-trip time of a PING, in seconds.
    public func ping(timeoutMs: Int? = nil) throws -> Double {
        try state.withLock { connection in
            let start = monotonicSeconds()
            let id = try connection.request([Connection.header(.ping, id: connection.nextID())])
            _ = try connection.wait(id, timeoutMs: timeoutMs ?? self.timeoutMs)
            return monotonicSeconds() - start
        }
    }

    /// The daemon's counters as JSON.
    public func stats() throws -> String {
        try state.withLock { connection in
            let id = try connection.request([Connection.header(.stats, id: connection.nextID())])
            return try connection.wait(id, timeoutMs: timeoutMs).payload
        }
    }

    /// A shared-memory buffer of `bytes` bytes, registered with the daemon: tensors placed
    /// in it travel to jobs by reference, with no copy.
    public func allocate(bytes: Int) throws -> SharedBuffer {
        try state.withLock { connection in try connection.allocate(bytes: bytes, timeoutMs: timeoutMs, owner: self) }
    }

    /// Sends a job and returns its id for `wait`. Tensors in this client's shared buffers
    /// go by reference; others are copied into the message (and the output back out of the
    /// reply), so `input` and `output` must stay valid until `wait` returns.
    public func submit(_ desc: PoolDescriptor, input: TensorView, output: OutputView) throws -> UInt64 {
        try PoolEngine.shared.check(desc, input: input, output: output)
        return try state.withLock { connection in try connection.submit(desc, input: input, output: output, owner: self) }
    }

    /// Waits for a submitted job (-1: no limit). TP_ERR_TIMEOUT leaves it pending, to be
    /// waited for again; any other outcome ends it.
    public func wait(_ job: UInt64, timeoutMs: Int? = nil) throws {
        try state.withLock { connection in _ = try connection.wait(job, timeoutMs: timeoutMs ?? self.timeoutMs) }
    }

    public func pool(_ desc: PoolDescriptor, input: TensorView, output: OutputView) throws {
        let job = try submit(desc, input: input, output: output)
        try wait(job)
    }

    /// Tells the daemon to drop this client's regions and closes the socket. Buffers stay
    /// mapped here until freed. Further calls fail with TP_ERR_CLOSED.
    public func close() {
        state.withLock { $0.close() }
    }

    func release(_ buffer: SharedBuffer) {
        state.withLock { $0.unregister(buffer) }
    }
}

/// Shared memory registered with the daemon. Its memory stays valid until `free`, even
/// after the client is closed.
public final class SharedBuffer: @unchecked Sendable {
    public let region: SharedRegion
    public let regionID: UInt64
    private weak var owner: PoolClient?
    private let freed = Atomic<Bool>(false)

    init(region: SharedRegion, regionID: UInt64, owner: PoolClient) {
        self.region = region
        self.regionID = regionID
        self.owner = owner
    }

    public var data: UnsafeMutableRawPointer { region.base }
    public var size: Int { region.size }

    /// Unregisters the buffer (if the client is still open). The memory is unmapped when
    /// the last reference to the buffer goes.
    public func free() {
        guard !freed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        owner?.release(self)
    }
}

/// The socket and the bookkeeping of jobs in flight; only touched under the client's lock.
final class Connection {
    /// One ZeroMQ context (and I/O thread) for every client of the process, as libzmq
    /// recommends; it lives as long as the process.
    private static let context = Result { try ZMQContext() }

    private var socket: ZMQSocket?
    private var lastID: UInt64 = 0
    /// Jobs sent and not yet answered: where an inline output goes.
    private var pending: [UInt64: PendingJob] = [:]
    /// Replies received for jobs nobody waited on yet.
    private var finished: [UInt64: Result<Answer, PoolError>] = [:]
    /// Live shared buffers by base address, to recognise tensors that live in one.
    private var buffers: [SharedBuffer] = []
    /// Done words (docs/protocol.md): a registered page of them, one per job in flight whose
    /// tensors are all in shared memory; its waiter sleeps on the word, woken by the daemon
    /// directly, instead of on the reply, which crosses two ZeroMQ I/O threads first.
    private var doneWords: SharedBuffer?
    private var freeDoneWords: [Int] = []
    private var doneWordsUnavailable = false
    static let doneWordsBytes = 4096
    /// How long a wait on a done word sleeps before it looks at the socket for a reply that
    /// comes without the word (a request the daemon refused before it could check the word).
    static let doneWordSliceMs = 5

    init(endpoint: String) throws {
        let context: ZMQContext
        do {
            context = try Connection.context.get()
        } catch {
            throw PoolError(TP_ERR_SYSTEM, "cannot create a ZeroMQ context: \(error)")
        }
        let socket = try ZMQSocket(context, type: ZMQ_DEALER)
        try socket.set(ZMQ_LINGER, Int32(0))
        do {
            try socket.connect(endpoint)
        } catch {
            throw PoolError(TP_ERR_CONNECTION, "cannot connect to \(endpoint): \(error)")
        }
        self.socket = socket
    }

    func nextID() -> UInt64 {
        lastID += 1
        return lastID
    }

    static func header(_ type: MessageType, id: UInt64, body: (inout ByteWriter) -> Void = { _ in }) -> [UInt8] {
        var writer = ByteWriter(capacity: type.requestSize)
        Header(type: type.rawValue, id: id).write(to: &writer)
        body(&writer)
        return writer.bytes
    }

    private func liveSocket() throws -> ZMQSocket {
        guard let socket else { throw PoolError(TP_ERR_CLOSED, "the client is closed") }
        return socket
    }

    /// Sends a request whose frame 0 holds its id; registers it as pending.
    func request(_ frames: [[UInt8]], extra: [ZMQFrame] = [], output: PendingJob = PendingJob()) throws -> UInt64 {
        let socket = try liveSocket()
        let id = frames[0].withUnsafeBytes { ByteReader.value(UInt64.self, in: $0, at: 8) }
        do {
            try socket.send(frames.map(ZMQFrame.init) + extra)
        } catch {
            throw PoolError(TP_ERR_CONNECTION, "cannot send to the daemon: \(error)")
        }
        pending[id] = output
        return id
    }

    /// Waits for the reply to `id` (or its done word), handling every other reply that
    /// arrives meanwhile.
    func wait(_ id: UInt64, timeoutMs: Int) throws -> Answer {
        let deadline = timeoutMs < 0 ? Double.infinity : monotonicSeconds() + Double(timeoutMs) / 1000
        while true {
            if let result = finished.removeValue(forKey: id) { return try result.get() }
            guard let job = pending[id] else { throw PoolError(TP_ERR_NOT_FOUND, "job \(id) is not pending on this client") }
            let socket = try liveSocket()
            let remaining = deadline - monotonicSeconds()
            guard remaining > 0 else {
                throw PoolError(TP_ERR_TIMEOUT, "no reply from the daemon within \(timeoutMs) ms (job \(id) is still pending)")
            }
            let wait = remaining.isInfinite ? -1 : Int((remaining * 1000).rounded(.up))
            // On a failed word (2) the reply says why: wait for it below.
            if let offset = job.wordSlot, let words = doneWords {
                let word = (words.data + offset).assumingMemoryBound(to: UInt32.self)
                let value = tpsys_word_wait(word, Int32(wait < 0 ? Self.doneWordSliceMs : Swift.min(wait, Self.doneWordSliceMs)))
                if value == Wire.doneWordSucceeded {
                    // Done and written; the reply still on its way is dropped when it comes.
                    pending.removeValue(forKey: id)
                    freeDoneWords.append(offset)
                    return Answer(body: [], payload: "")
                }
                if value == 0 {
                    while let frames = try socket.receive(dontWait: true) { accept(frames) }
                    continue
                }
            }
            guard try poll([.socket(socket)], timeoutMs: wait)[0] else { continue }
            while let frames = try socket.receive(dontWait: true) { accept(frames) }
        }
    }

    /// Files one reply under its id, copying an inline output to where the caller wants it.
    private func accept(_ frames: [ZMQFrame]) {
        guard let reply = try? DecodedReply.decode(frames[0].bytes, frame1: frames.count > 1 ? frames[1].bytes : nil),
              let job = pending.removeValue(forKey: reply.id)
        else { return }  // replies nobody waits for (UNREGISTER, BYE, jobs ended by their done word) end here
        if let offset = job.wordSlot { freeDoneWords.append(offset) }
        guard reply.status == TP_OK else {
            finished[reply.id] = .failure(PoolError(reply.status, reply.message))
            return
        }
        if let destination = job.inlineOutput {
            guard frames.count == 2, frames[1].size == job.outputBytes else {
                finished[reply.id] = .failure(PoolError(TP_ERR_PROTOCOL, "the daemon's reply does not carry the \(job.outputBytes)-byte output"))
                return
            }
            destination.copyMemory(from: frames[1].data, byteCount: job.outputBytes)
        }
        let payload = frames.count > 1 && job.inlineOutput == nil ? String(decoding: frames[1].bytes, as: UTF8.self) : ""
        finished[reply.id] = .success(Answer(body: reply.body, payload: payload))
    }

    func allocate(bytes: Int, timeoutMs: Int, owner: PoolClient) throws -> SharedBuffer {
        _ = try liveSocket()
        let region: SharedRegion
        do {
            region = try SharedRegion.create(size: bytes)
        } catch {
            throw PoolError(TP_ERR_SYSTEM, "\(error)")
        }
        // However registration ends, the name must not stay in /dev/shm (the daemon
        // unlinks it once mapped; this covers failures and timeouts).
        defer { SharedRegion.unlink(name: region.name) }
        let id = nextID()
        let frame0 = Connection.header(.register, id: id) { writer in
            writer.put(UInt64(bytes))
            writer.put(UInt32(getpid()))
            writer.put(UInt32(0))
        }
        _ = try request([frame0, Array(region.name.utf8)])
        let answer = try wait(id, timeoutMs: timeoutMs)
        let regionID = answer.body.withUnsafeBytes { ByteReader.value(UInt64.self, in: $0, at: 0) }
        let buffer = SharedBuffer(region: region, regionID: regionID, owner: owner)
        buffers.append(buffer)
        return buffer
    }

    func unregister(_ buffer: SharedBuffer) {
        buffers.removeAll { $0 === buffer }
        guard let socket else { return }
        let frame0 = Connection.header(.unregister, id: nextID()) { $0.put(buffer.regionID) }
        // Fire and forget: the reply is dropped when it arrives.
        try? socket.send([ZMQFrame(frame0)], dontWait: true)
    }

    /// The buffer holding [address, address + bytes), if any.
    private func buffer(containing address: UnsafeRawPointer?, bytes: Int) -> (SharedBuffer, Int)? {
        guard let address else { return nil }
        for buffer in buffers {
            let offset = address - UnsafeRawPointer(buffer.data)
            if offset >= 0, buffer.region.contains(offset: offset, count: bytes) { return (buffer, offset) }
        }
        return nil
    }

    func submit(_ desc: PoolDescriptor, input: TensorView, output: OutputView, owner: PoolClient) throws -> UInt64 {
        _ = try liveSocket()
        let outputDType = input.dtype.result(of: desc.kind)
        let inputBytes = input.shape.reduce(1, *) * input.dtype.size
        let outputBytes = output.shape.reduce(1, *) * outputDType.size
        let contiguous = input.strides == TensorView.contiguousStrides(input.shape) || inputBytes == 0
        let inputBuffer = contiguous ? buffer(containing: input.data, bytes: inputBytes) : nil
        let outputBuffer = buffer(containing: output.data.map(UnsafeRawPointer.init), bytes: outputBytes)
        var inputFrame: [ZMQFrame] = []
        if inputBuffer == nil {
            guard let frame = ZMQFrame(size: inputBytes) else {
                throw PoolError(TP_ERR_NO_MEMORY, "cannot allocate a \(inputBytes)-byte message for the input")
            }
            if inputBytes > 0 { packContiguous(input, into: frame.data) }
            inputFrame = [frame]
        }
        // A done word only where nothing comes back in the reply.
        let slot = outputBuffer != nil ? takeDoneWord(owner: owner) : nil
        let request = PoolRequest(
            id: nextID(), descriptor: desc, dtype: input.dtype, inputShape: input.shape,
            input: TensorReference(placement: inputBuffer.map { .region(id: $0.0.regionID, offset: $0.1) } ?? .inline, bytes: inputBytes),
            output: TensorReference(placement: outputBuffer.map { .region(id: $0.0.regionID, offset: $0.1) } ?? .inline, bytes: outputBytes),
            doneWord: slot.map { DoneWord(region: doneWords!.regionID, offset: $0) })
        let job = PendingJob(inlineOutput: outputBuffer == nil ? output.data : nil, outputBytes: outputBytes, wordSlot: slot)
        do {
            return try self.request([request.encode()], extra: inputFrame, output: job)
        } catch {
            if let slot { freeDoneWords.append(slot) }
            throw error
        }
    }

    /// A free done word, set to 0 (the page is registered at first use); nil when there is
    /// none to spare or the daemon would not register the page, and the reply is waited for.
    private func takeDoneWord(owner: PoolClient) -> Int? {
        if doneWords == nil && !doneWordsUnavailable {
            guard let page = try? allocate(bytes: Self.doneWordsBytes, timeoutMs: 10_000, owner: owner) else {
                doneWordsUnavailable = true
                return nil
            }
            // Not a buffer for tensors: no tensor may be found in it.
            buffers.removeAll { $0 === page }
            doneWords = page
            freeDoneWords = Array(stride(from: Self.doneWordsBytes - 4, through: 0, by: -4))
        }
        guard let words = doneWords, let slot = freeDoneWords.popLast() else { return nil }
        (words.data + slot).assumingMemoryBound(to: UInt32.self).pointee = 0
        return slot
    }

    /// Sends BYE (without waiting) so the daemon drops this client's regions, and closes.
    func close() {
        guard let socket else { return }
        try? socket.send([ZMQFrame(Connection.header(.bye, id: nextID()))], dontWait: true)
        // A short linger lets the BYE leave; the daemon also notices the process exit.
        try? socket.set(ZMQ_LINGER, Int32(200))
        socket.close()
        self.socket = nil
        pending.removeAll()
        finished.removeAll()
        buffers.removeAll()
        doneWords = nil
        freeDoneWords.removeAll()
    }
}

struct PendingJob {
    var inlineOutput: UnsafeMutableRawPointer? = nil
    var outputBytes = 0
    /// The job's done word (an offset in the page), held until the job ends.
    var wordSlot: Int? = nil
}

struct Answer {
    var body: [UInt8]
    var payload: String
}

/// Copies a strided view into contiguous row-major order, one element at a time, with the
/// innermost unit-stride runs copied whole.
func packContiguous(_ view: TensorView, into destination: UnsafeMutableRawPointer) {
    let size = view.dtype.size, rank = view.shape.count
    guard let source = view.data, rank > 0 else { return }
    let innerRun = view.strides[rank - 1] == 1 ? view.shape[rank - 1] : 1
    let outerRank = innerRun == 1 ? rank : rank - 1
    var index = [Int](repeating: 0, count: outerRank)
    var out = destination
    let runs = view.shape.prefix(outerRank).reduce(1, *)
    for _ in 0..<runs {
        var offset = 0
        for axis in 0..<outerRank { offset += index[axis] * view.strides[axis] }
        out.copyMemory(from: source + offset * size, byteCount: innerRun * size)
        out += innerRun * size
        var axis = outerRank - 1
        while axis >= 0 {
            index[axis] += 1
            if index[axis] < view.shape[axis] { break }
            index[axis] = 0
            axis -= 1
        }
    }
}
