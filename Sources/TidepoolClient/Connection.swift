import CTidepool
import CTidepoolSystem
import Synchronization
import TidepoolCore
import TidepoolSync
import TidepoolProtocol
import TidepoolSharedMemory
import TidepoolZMQ

#if canImport(Glibc)
import Glibc
#endif

/// The socket, the state of the link to the daemon and the bookkeeping of requests in
/// flight; only touched under the client's lock.
///
/// Requests stay in `pending` until answered, with what is needed to send them again: when
/// the link drops and comes back, `resume` asks the daemon who it is (PING), registers the
/// buffers again if it is another daemon, and sends every pending request again. ZeroMQ's
/// guide calls this the Lazy Pirate pattern; jobs are idempotent, and the resubmitted flag
/// lets a daemon that already ran one answer without running it twice.
final class Connection {
    /// One ZeroMQ context (and I/O thread) for every client of the process, as libzmq
    /// recommends; it lives as long as the process.
    private static let context = Result { try ZMQContext() }
    private static let monitors = Atomic<Int>(0)

    /// How long a lost link may stay down before calls fail with TP_ERR_CONNECTION: time for
    /// a daemon to be restarted, not enough to look like a slow one.
    static let reconnectGraceSeconds = 3.0
    /// ZMTP heartbeats: a daemon that stops answering them (stopped, or its host gone) is
    /// taken for lost after the timeout; one that dies on this host is noticed at once.
    static let heartbeatIntervalMs: Int32 = 1_000
    static let heartbeatTimeoutMs: Int32 = 5_000
    /// How long a wait on a done word sleeps before it looks at the socket for a reply that
    /// comes without the word (a request the daemon refused before it could check the word).
    static let doneWordSliceMs = 5
    static let doneWordsBytes = 4096

    let endpoint: String
    let curve: CurveClientKeys?
    private var socket: ZMQSocket?
    /// Why the daemon's end refused the last handshake (CURVE keys, or a mechanism it does not
    /// speak); nil after a handshake that succeeded. A link down for this reason fails calls at
    /// once: waiting would not mend it.
    private var refusal: String?
    private var monitor: ZMQMonitor?
    /// nil while the link is up; else when it went down.
    private var downSince: Double?
    /// The link came back: `resume` must run before anything else is sent.
    private var needsResume = false
    /// The daemon last seen (PING), 0 before the first answer.
    private(set) var instance: UInt64 = 0
    private var lastID: UInt64 = 0
    /// Requests sent and not yet answered, with what it takes to send them again.
    private var pending: [UInt64: Pending] = [:]
    /// Replies received for requests nobody waited on yet.
    private var finished: [UInt64: Result<Answer, PoolError>] = [:]
    /// Live shared buffers, to recognise tensors that live in one and to register again.
    private var buffers: [SharedBuffer] = []
    /// Done words (docs/protocol.md): a registered page of them, one per job in flight whose
    /// tensors are all in shared memory; its waiter sleeps on the word, woken by the daemon
    /// directly, instead of on the reply, which crosses two ZeroMQ I/O threads first.
    private var doneWords: SharedBuffer?
    private var freeDoneWords: [Int] = []
    private var doneWordsUnavailable = false
    /// Words of jobs given up on (timed out, cancelled) that the daemon may still set: kept
    /// out of use until the job's reply comes, or the daemon is another one.
    private var quarantinedWords: [UInt64: Int] = [:]

    enum Pending {
        /// PING, STATS, REGISTER...: the frames to send again as they are.
        case control([[UInt8]])
        case job(PendingJob)
    }

    init(endpoint: String, curve: CurveClientKeys?) throws {
        self.endpoint = endpoint
        self.curve = curve
        let context: ZMQContext
        do {
            context = try Connection.context.get()
        } catch {
            throw PoolError(TP_ERR_SYSTEM, "cannot create a ZeroMQ context: \(error)")
        }
        var made: ZMQSocket?
        do {
            let socket = try ZMQSocket(context, type: .dealer)
            made = socket
            try socket.set(.linger, Int32(0))
            // Not ZMQ_IMMEDIATE: with it libzmq drops the pipe of a connection that ends, and
            // with it replies received but not read yet (a daemon answering its last job as it
            // exits). Without it, a request sent while the link is down waits in the pipe and
            // goes out on reconnection; `resume` sends it again too, flagged, and the daemon
            // runs it once. Whether the link is up comes from the monitor, not from send().
            // A routing id of our own survives reconnections, so the same daemon still knows
            // this client (and its regions) after a dropped link. Random, not guessable; the
            // daemon also checks that every request comes from the process that registered.
            var routingID = (0..<16).map { _ in UInt8.random(in: 0...255) }
            routingID[0] = UInt8.random(in: 1...255)  // a leading 0 is reserved by libzmq
            try socket.set(.routingID, routingID)
            try socket.set(.heartbeatInterval, Self.heartbeatIntervalMs)
            try socket.set(.heartbeatTimeout, Self.heartbeatTimeoutMs)
            try socket.set(.reconnectInterval, Int32(100))
            try socket.set(.reconnectIntervalMax, Int32(500))
            if let curve {
                try socket.set(.curveServerKey, curve.serverKey.bytes)
                try socket.set(.curvePublicKey, curve.client.publicKey.bytes)
                try socket.set(.curveSecretKey, curve.client.secretKey!.bytes)
            }
            let name = "inproc://tidepool-client-monitor-\(getpid())-\(Self.monitors.wrappingAdd(1, ordering: .relaxed).oldValue)"
            monitor = try ZMQMonitor(context, watching: socket, name: name,
                                     events: [.disconnected, .handshakeSucceeded, .handshakeFailedAuth, .handshakeFailedProtocol])
            try socket.connect(endpoint)
            self.socket = socket
        } catch let error as ZMQError {
            made?.stopMonitor()
            monitor = nil
            made?.close()
            throw PoolError(TP_ERR_CONNECTION, "cannot connect to \(endpoint): \(error)")
        }
        // Until the first handshake the link counts as down since now.
        downSince = monotonicSeconds()
    }

    deinit { close() }

    func nextID() -> UInt64 {
        lastID += 1
        return lastID
    }

    private func liveSocket() throws -> ZMQSocket {
        guard let socket else { throw PoolError(TP_ERR_CLOSED, "the client is closed") }
        return socket
    }

    // MARK: the link

    /// The first exchange: a PING through the usual path, which waits for the first
    /// handshake as for a link that came back; records who answered.
    func greet(deadline: Deadline) throws {
        let answer = try call(.ping, deadline: deadline)
        instance = PingReply(answer.body).instance
    }

    /// Reads the monitor's events: the link went down, or came back.
    private func takeEvents() throws {
        _ = try liveSocket()
        while let (event, value, _) = monitor?.next() {
            if event == .disconnected {
                if downSince == nil { downSince = monotonicSeconds() }
            } else if event == .handshakeSucceeded {
                downSince = nil
                needsResume = true
                refusal = nil
            } else if event == .handshakeFailedAuth {
                refusal = "the daemon at \(endpoint) refused this client (ZAP status \(value)): its CURVE public key "
                    + "\(curve?.client.publicKey.z85 ?? "") is not among the daemon's authorized keys"
            } else if event == .handshakeFailedProtocol {
                refusal = curve == nil
                    ? "the daemon at \(endpoint) refused ZeroMQ's handshake (protocol error 0x\(String(value, radix: 16))): it "
                        + "requires CURVE; give curve_server_key and curve_client_cert (or $\(CurveClientKeys.serverKeyVariable) "
                        + "and $\(CurveClientKeys.clientCertVariable))"
                    : "the CURVE handshake with \(endpoint) failed (protocol error 0x\(String(value, radix: 16))): the daemon "
                        + "does not speak CURVE there, or the server key is not its key"
            }
        }
    }

    /// Makes sure the link is up and resumed before a request goes out or while one waits:
    /// waits for a lost link to come back within the grace (and the deadline), then resumes.
    /// Replies still arriving meanwhile are filed (they left before the link dropped); once
    /// `answered` holds, it returns at once whatever the link.
    private func ensureLink(deadline: Deadline, unless answered: () -> Bool = { false }) throws {
        while true {
            if answered() { return }
            try takeEvents()
            if let since = downSince {
                if let refusal { throw PoolError(TP_ERR_CONNECTION, refusal) }
                // A lost link gets the grace to come back; the first one, the caller's whole
                // limit if it has one (a daemon may be slow to start), else the grace too.
                let giveUp = instance == 0 && deadline.time.isFinite
                    ? Swift.max(deadline.time, since + Self.reconnectGraceSeconds) : since + Self.reconnectGraceSeconds
                let now = monotonicSeconds()
                guard now < giveUp else {
                    throw PoolError(TP_ERR_CONNECTION, instance == 0
                        ? "no daemon answered at \(endpoint) within \(format1(giveUp - since)) s"
                        : "lost the connection to the daemon at \(endpoint) \(format1(now - since)) s ago; no daemon has answered since")
                }
                guard !deadline.passed else {
                    throw PoolError(TP_ERR_TIMEOUT, "the connection to the daemon at \(endpoint) is down; it did not come back in time")
                }
                let wait = Deadline(at: Swift.min(giveUp, deadline.time))
                let socket = try liveSocket()
                if try poll([.socket(monitor!.socket), .socket(socket)], timeoutMs: wait.remainingMs)[1] {
                    while let frames = try socket.receive(dontWait: true) { accept(frames) }
                }
                continue
            }
            if needsResume {
                try resume(deadline: deadline)
                continue
            }
            return
        }
    }

    /// After the link came back: who answers now? Another daemon (a restart) needs every
    /// buffer registered again; then every request without an answer is sent again.
    private func resume(deadline: Deadline) throws {
        needsResume = false
        let socket = try liveSocket()
        do {
            let ping = nextID()
            try transmit(socket, [ZMQFrame(Request.bare(.ping, id: ping))], deadline: deadline)
            let now = PingReply(try receiveDirect(ping, deadline: deadline).body).instance
            if now != instance {
                try registerAgain(deadline: deadline)
                // Recorded only once every buffer has its new id: a resume cut short starts over.
                instance = now
                // The other daemon never set the words it had, and never will.
                for (_, slot) in quarantinedWords { freeDoneWords.append(slot) }
                quarantinedWords.removeAll()
            }
            try sendPendingAgain(socket, deadline: deadline)
        } catch {
            needsResume = true
            throw error
        }
    }

    /// Registers every live buffer (and the page of done words) with the daemon now
    /// answering. A buffer it refuses is lost: jobs on it fail, saying why.
    private func registerAgain(deadline: Deadline) throws {
        for buffer in buffers + (doneWords.map { [$0] } ?? []) {
            do {
                buffer.regionID = try registerDirect(buffer.region, deadline: deadline)
                buffer.lostReason = nil
            } catch let error as PoolError where error.status == TP_ERR_CONNECTION || error.status == TP_ERR_TIMEOUT {
                throw error
            } catch {
                buffer.regionID = 0
                buffer.lostReason = "the daemon restarted and could not map the buffer again: \(error)"
            }
        }
        if let words = doneWords, words.regionID == 0 {
            doneWords = nil
            doneWordsUnavailable = true
        }
    }

    /// Sends again, in id order, every request still without an answer. A job whose done
    /// word says it ended is answered here (only its reply was lost); one that cannot be
    /// encoded any more (its buffer is lost) fails.
    private func sendPendingAgain(_ socket: ZMQSocket, deadline: Deadline) throws {
        for id in pending.keys.sorted() {
            guard let entry = pending[id] else { continue }
            switch entry {
            case .control(let frames):
                if !frames.isEmpty { try transmit(socket, frames.map(ZMQFrame.init), deadline: deadline) }
            case .job(var job):
                if let slot = job.wordSlot, let words = doneWords {
                    let word = (words.data + slot).assumingMemoryBound(to: UInt32.self)
                    if tpsys_word_wait(word, 0) == Wire.doneWordSucceeded {
                        pending.removeValue(forKey: id)
                        freeDoneWords.append(slot)
                        finished[id] = .success(Answer(body: [], payload: ""))
                        continue
                    }
                    word.pointee = 0
                }
                job.resubmitted = true
                let frames: [ZMQFrame]
                do {
                    frames = try job.encode(id: id, doneWordsRegion: doneWords?.regionID)
                } catch {
                    pending.removeValue(forKey: id)
                    if let slot = job.wordSlot { freeDoneWords.append(slot) }
                    finished[id] = .failure(error as? PoolError ?? PoolError(TP_ERR_INTERNAL, "\(error)"))
                    continue
                }
                pending[id] = .job(job)
                try transmit(socket, frames, deadline: deadline)
            }
        }
    }

    /// Sends one message. A full queue (the daemon is slow to read, or the link is down) is
    /// waited out until the deadline; a link known to be down is TP_ERR_CONNECTION (a pending
    /// request then goes out again on resume).
    private func transmit(_ socket: ZMQSocket, _ frames: [ZMQFrame], deadline: Deadline) throws {
        while true {
            do {
                try socket.send(frames, dontWait: true)
                return
            } catch let error as ZMQError where error.isAgain {
                try takeEvents()
                if downSince != nil {
                    throw PoolError(TP_ERR_CONNECTION, "the connection to the daemon at \(endpoint) dropped")
                }
                guard !deadline.passed else {
                    throw PoolError(TP_ERR_TIMEOUT, "the daemon at \(endpoint) did not take the request in time")
                }
                _ = try poll([.writable(socket), .socket(monitor!.socket)], timeoutMs: deadline.remainingMs)
            } catch {
                throw PoolError(TP_ERR_CONNECTION, "cannot send to the daemon: \(error)")
            }
        }
    }

    /// Waits for the reply to `id` while resuming, filing every other reply that comes.
    private func receiveDirect(_ id: UInt64, deadline: Deadline) throws -> Answer {
        pending[id] = .control([])
        defer { pending.removeValue(forKey: id) }
        let socket = try liveSocket()
        while true {
            if let result = finished.removeValue(forKey: id) { return try result.get() }
            try takeEvents()
            if downSince != nil {
                needsResume = true
                throw PoolError(TP_ERR_CONNECTION, "the connection to the daemon at \(endpoint) dropped again while resuming")
            }
            guard !deadline.passed else { throw PoolError(TP_ERR_TIMEOUT, "the daemon did not answer in time after reconnecting") }
            if try poll([.socket(socket), .socket(monitor!.socket)], timeoutMs: deadline.remainingMs)[0] {
                while let frames = try socket.receive(dontWait: true) { accept(frames) }
            }
        }
    }

    private func registerDirect(_ region: SharedRegion, deadline: Deadline) throws -> UInt64 {
        let id = nextID()
        let frames = RegisterRequest(id: id, size: region.size, pid: getpid(), name: region.name).encode()
        try transmit(try liveSocket(), frames.map(ZMQFrame.init), deadline: deadline)
        let answer = try receiveDirect(id, deadline: deadline)
        return RegisterReply.region(answer.body)
    }

    // MARK: requests

    enum ControlRequest {
        case ping, stats
        case register(name: String, size: Int)
    }

    /// Sends a PING, STATS or REGISTER and waits for its answer.
    func call(_ request: ControlRequest, deadline: Deadline) throws -> Answer {
        let id = nextID()
        let frames: [[UInt8]]
        switch request {
        case .ping: frames = [Request.bare(.ping, id: id)]
        case .stats: frames = [Request.bare(.stats, id: id)]
        case .register(let name, let size): frames = RegisterRequest(id: id, size: size, pid: getpid(), name: name).encode()
        }
        try send(id, .control(frames), frames.map(ZMQFrame.init), deadline: deadline)
        let answer = try wait(id, deadline: deadline)
        // Another daemon than the one this client registered with, with no sign of it on
        // the link: resume before the next request.
        if case .ping = request, instance != 0, PingReply(answer.body).instance != instance { needsResume = true }
        return answer
    }

    /// Registers a request as pending and sends it once the link is up.
    private func send(_ id: UInt64, _ entry: Pending, _ frames: [ZMQFrame], deadline: Deadline) throws {
        try ensureLink(deadline: deadline)
        pending[id] = entry
        do {
            try transmit(try liveSocket(), frames, deadline: deadline)
        } catch let error as PoolError where error.status == TP_ERR_CONNECTION {
            // Pending: it goes out again when the link is back (the wait sees to it).
        }
    }

    /// Waits for the reply to `id` (or its done word), handling every other reply and every
    /// change of the link meanwhile. Any outcome but TP_ERR_TIMEOUT ends the request.
    func wait(_ id: UInt64, deadline: Deadline) throws -> Answer {
        while true {
            if let result = finished.removeValue(forKey: id) { return try result.get() }
            guard pending[id] != nil else { throw PoolError(TP_ERR_NOT_FOUND, "job \(id) is not pending on this client") }
            let socket = try liveSocket()
            // Replies already here are answers, even if the link has dropped since they came.
            while let frames = try socket.receive(dontWait: true) { accept(frames) }
            if finished[id] != nil { continue }
            do {
                try ensureLink(deadline: deadline, unless: { finished[id] != nil })
            } catch let error as PoolError where error.status == TP_ERR_CONNECTION {
                if finished[id] != nil { continue }
                end(id)
                throw error
            }
            // ensureLink may have resumed, and the answer come meanwhile.
            if finished[id] != nil || pending[id] == nil { continue }
            guard !deadline.passed else {
                throw PoolError(TP_ERR_TIMEOUT, "no reply from the daemon in time (request \(id) is still pending)")
            }
            let wait = deadline.remainingMs
            if case .job(let job) = pending[id], let offset = job.wordSlot, let words = doneWords {
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
                // On a failed word (2) the reply says why: wait for it below.
            }
            let ready = try poll([.socket(socket), .socket(monitor!.socket)], timeoutMs: wait)
            if ready[0] { while let frames = try socket.receive(dontWait: true) { accept(frames) } }
        }
    }

    /// Ends a request the caller no longer waits for: its reply, if it comes, is dropped, and
    /// its done word is kept out of use until then.
    private func end(_ id: UInt64) {
        finished.removeValue(forKey: id)
        guard let entry = pending.removeValue(forKey: id) else { return }
        if case .job(let job) = entry, let slot = job.wordSlot { quarantinedWords[id] = slot }
    }

    func cancel(_ id: UInt64) throws {
        guard pending[id] != nil || finished[id] != nil else {
            throw PoolError(TP_ERR_NOT_FOUND, "job \(id) is not pending on this client")
        }
        end(id)
    }

    /// Files one reply under its id, copying an inline output to where the caller wants it.
    private func accept(_ frames: [ZMQFrame]) {
        guard let reply = try? DecodedReply.decode(frames[0].bytes, frame1: frames.count > 1 ? frames[1].bytes : nil) else { return }
        if let slot = quarantinedWords.removeValue(forKey: reply.id) {
            // The job given up on has ended: the daemon set its word before this reply.
            freeDoneWords.append(slot)
            return
        }
        // Replies nobody waits for (UNREGISTER, BYE, jobs ended by their done word) end here.
        guard let entry = pending[reply.id] else { return }
        if case .job(var job) = entry, reply.status == TP_ERR_NOT_FOUND, job.usesRegions, !job.resumedForRestart,
           reply.message.contains("another daemon instance") {
            // A restart the link did not show: resume (once for this job), and send it again then.
            job.resumedForRestart = true
            pending[reply.id] = .job(job)
            needsResume = true
            return
        }
        pending.removeValue(forKey: reply.id)
        guard case .job(let job) = entry else {
            finished[reply.id] = reply.status == TP_OK
                ? .success(Answer(body: reply.body, payload: frames.count > 1 ? String(decoding: frames[1].bytes, as: UTF8.self) : ""))
                : .failure(PoolError(reply.status, reply.message))
            return
        }
        if let slot = job.wordSlot { freeDoneWords.append(slot) }
        guard reply.status == TP_OK else {
            finished[reply.id] = .failure(PoolError(reply.status, reply.message))
            return
        }
        if let destination = job.inlineOutput {
            guard frames.count == 2, frames[1].size == job.outputBytes else {
                finished[reply.id] = .failure(PoolError(TP_ERR_PROTOCOL, "the daemon's reply does not carry the \(job.outputBytes)-byte output"))
                return
            }
            if job.outputBytes > 0 { destination.copyMemory(from: frames[1].data, byteCount: job.outputBytes) }
        }
        finished[reply.id] = .success(Answer(body: reply.body, payload: ""))
    }

    // MARK: buffers

    func allocate(bytes: Int, deadline: Deadline, owner: PoolClient) throws -> SharedBuffer {
        try ensureLink(deadline: deadline)
        let region: SharedRegion
        do {
            region = try SharedRegion.create(size: bytes)
        } catch let error as SharedMemoryError {
            throw PoolError(error.kind == .invalid ? TP_ERR_INVALID_ARGUMENT : TP_ERR_SYSTEM, error.message)
        }
        do {
            let answer = try call(.register(name: region.name, size: bytes), deadline: deadline)
            let regionID = RegisterReply.region(answer.body)
            let buffer = SharedBuffer(region: region, regionID: regionID, owner: owner)
            buffers.append(buffer)
            return buffer
        } catch {
            SharedRegion.unlink(name: region.name)
            throw error
        }
    }

    func unregister(_ buffer: SharedBuffer) {
        buffers.removeAll { $0 === buffer }
        guard let socket, downSince == nil, buffer.regionID != 0 else { return }
        // Fire and forget: the reply is dropped when it arrives.
        try? socket.send([ZMQFrame(Request.unregister(id: nextID(), region: buffer.regionID))], dontWait: true)
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

    // MARK: jobs

    /// Sends a POOL job, or a BACKWARD job when `backward` (the tie rule and the cotangent)
    /// is given; `output` is then the gradient.
    func submit(_ desc: PoolDescriptor, input: TensorView, output: OutputView, backward: (MaxTies, TensorView)? = nil,
                deadline: Deadline, owner: PoolClient) throws -> UInt64 {
        _ = try liveSocket()
        try ensureLink(deadline: deadline)
        // The engine's checks passed: these products fit.
        func bytes(_ shape: [Int], _ dtype: DType) -> Int { shape.reduce(1, *) * dtype.size }
        /// A tensor read goes by reference when it lies contiguous in one of our buffers.
        func reference(_ view: TensorView) -> (SharedBuffer, Int)? {
            let count = bytes(view.shape, view.dtype)
            let contiguous = view.strides == TensorView.contiguousStrides(view.shape) || count == 0
            return contiguous ? buffer(containing: view.data, bytes: count) : nil
        }
        let inputBytes = bytes(input.shape, input.dtype), outputBytes = bytes(output.shape, output.dtype)
        let inputBuffer = reference(input)
        let outputBuffer = buffer(containing: output.data.map(UnsafeRawPointer.init), bytes: outputBytes)
        let cotangent = backward.map { ties, view in
            PendingCotangent(ties: ties, view: view, buffer: reference(view), bytes: bytes(view.shape, view.dtype))
        }
        // A done word only where nothing comes back in the reply.
        let slot = outputBuffer != nil ? takeDoneWord(deadline: deadline, owner: owner) : nil
        let job = PendingJob(desc: desc, input: input, output: output, inputBuffer: inputBuffer, outputBuffer: outputBuffer,
                             inputBytes: inputBytes, outputBytes: outputBytes, cotangent: cotangent, wordSlot: slot)
        let id = nextID()
        let frames: [ZMQFrame]
        do {
            frames = try job.encode(id: id, doneWordsRegion: doneWords?.regionID)
        } catch {
            if let slot { freeDoneWords.append(slot) }
            throw error
        }
        try send(id, .job(job), frames, deadline: deadline)
        return id
    }

    /// A free done word, set to 0 (the page is registered at first use); nil when there is
    /// none to spare or the daemon would not register the page, and the reply is waited for.
    private func takeDoneWord(deadline: Deadline, owner: PoolClient) -> Int? {
        if doneWords == nil && !doneWordsUnavailable {
            guard let page = try? allocate(bytes: Self.doneWordsBytes, deadline: deadline, owner: owner) else {
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
    /// Nothing is written into a caller's memory afterwards: pending requests are forgotten.
    func close() {
        guard let socket else { return }
        if downSince == nil { try? socket.send([ZMQFrame(Request.bare(.bye, id: nextID()))], dontWait: true) }
        // The monitor stops before its reader goes, or libzmq's I/O thread (shared by every
        // client of the process) could block sending an event nobody reads.
        socket.stopMonitor()
        monitor = nil
        // A short linger lets the BYE leave; the daemon also notices the process exit.
        try? socket.set(.linger, Int32(200))
        socket.close()
        self.socket = nil
        pending.removeAll()
        finished.removeAll()
        quarantinedWords.removeAll()
        buffers.removeAll()
        // Not free(): that takes the client's lock, held here. Its mapping goes with the object.
        if let words = doneWords { SharedRegion.unlink(name: words.region.name) }
        doneWords = nil
        freeDoneWords.removeAll()
    }
}

/// What a BACKWARD job reads besides its input: the cotangent, by reference or inline.
struct PendingCotangent {
    let ties: MaxTies
    let view: TensorView
    let buffer: (SharedBuffer, Int)?
    let bytes: Int
}

/// A job sent and not yet answered: enough to encode it again, with the region ids of the
/// moment (a restarted daemon gives its buffers new ones).
struct PendingJob {
    let desc: PoolDescriptor
    let input: TensorView
    let output: OutputView
    let inputBuffer: (SharedBuffer, Int)?
    let outputBuffer: (SharedBuffer, Int)?
    let inputBytes: Int
    let outputBytes: Int
    /// Set for a BACKWARD job (`output` is the gradient).
    let cotangent: PendingCotangent?
    /// The job's done word (an offset in the page), held until the job ends.
    var wordSlot: Int?
    var resubmitted = false
    /// The daemon said its regions were another instance's, and a resume followed.
    var resumedForRestart = false

    var usesRegions: Bool { inputBuffer != nil || outputBuffer != nil || cotangent?.buffer != nil || wordSlot != nil }
    var inlineOutput: UnsafeMutableRawPointer? { outputBuffer == nil ? output.data : nil }

    func encode(id: UInt64, doneWordsRegion: UInt64?) throws -> [ZMQFrame] {
        func placement(_ buffer: (SharedBuffer, Int)?) throws -> TensorPlacement {
            guard let (buffer, offset) = buffer else { return .inline }
            guard buffer.regionID != 0 else {
                throw PoolError(TP_ERR_CONNECTION, buffer.lostReason ?? "the buffer is no longer registered with the daemon")
            }
            return .region(id: buffer.regionID, offset: offset)
        }
        // Inline tensors follow frame 0 in the order the request lists them: input, cotangent.
        var frames: [ZMQFrame] = []
        for (name, view, buffer, bytes) in [("input", input, inputBuffer, inputBytes)]
            + (cotangent.map { [("cotangent", $0.view, $0.buffer, $0.bytes)] } ?? []) where buffer == nil {
            guard let frame = ZMQFrame(size: bytes) else {
                throw PoolError(TP_ERR_NO_MEMORY, "cannot allocate a \(bytes)-byte message for the \(name)")
            }
            if bytes > 0 { packContiguous(view, into: frame.data) }
            frames.append(frame)
        }
        let word = wordSlot.flatMap { slot in doneWordsRegion.map { DoneWord(region: $0, offset: slot) } }
        let request = PoolRequest(id: id, descriptor: desc, dtype: input.dtype, inputShape: input.shape,
                                  input: TensorReference(placement: try placement(inputBuffer), bytes: inputBytes),
                                  output: TensorReference(placement: try placement(outputBuffer), bytes: outputBytes),
                                  doneWord: word, resubmitted: resubmitted,
                                  backward: try cotangent.map { cotangent in
                                      BackwardFields(ties: cotangent.ties, gradOutput: TensorReference(
                                          placement: try placement(cotangent.buffer), bytes: cotangent.bytes))
                                  })
        return [ZMQFrame(request.encode())] + frames
    }
}

struct Answer {
    var body: [UInt8]
    var payload: String
}

private func format1(_ seconds: Double) -> String {
    let tenths = Int((seconds * 10).rounded())
    return "\(tenths / 10).\(tenths % 10)"
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
