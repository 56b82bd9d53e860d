import CTidepool
import CTidepoolSystem
import CZeroMQ
import Dispatch
import Logging
import Synchronization
import TidepoolCore
import TidepoolProtocol
import TidepoolSharedMemory
import TidepoolZMQ

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's logic, served leader/follower style: one thread at a time (the leader) polls
/// the ROUTER socket and handles requests, and runs the jobs it takes itself, so a job meets
/// no thread hop on its way in or out (on a VM each hop costs 20 to 50 us: the wake-up
/// crosses to another virtual CPU). While it computes, it looks at the socket between output
/// planes; once a request or signal waits there, it wakes a follower to lead, so compute
/// keeps the socket waiting little more than `leadCheckInterval`.
/// `state` guards the socket and all client state; nobody holds it while sleeping in poll.
public final class PoolServer: @unchecked Sendable {
    public let configuration: ServerConfiguration
    /// The endpoints actually bound (tcp port 0 resolved to its port).
    public private(set) var boundEndpoints: [String] = []

    private let logger: Logger
    private let context: ZMQContext
    private let socket: ZMQSocket
    private let engine: PoolEngine
    private let socketFd: Int32
    private let wakeFd: Int32
    private let shutdownRequested = Atomic<Bool>(false)

    /// Held by whoever touches the socket or the state below: the leader (except in poll) and
    /// a thread sending its job's reply. (A ZeroMQ socket may change threads behind a barrier.)
    private let state = Mutex<Void>(())
    private var clients: [[UInt8]: ClientState] = [:]
    /// Jobs admitted and not yet replied to (a drain waits for them).
    private var inflight = 0
    /// Jobs admitted whose end is not yet known to their client: what --max-inflight limits.
    /// Released before the done word is set, so a client that saw its job end may submit
    /// another at once, though the reply is still on its way.
    private let jobsRunning = Atomic<Int>(0)
    private var stats = ServerStats()
    private var nextRegionID: UInt64 = 1
    private let startTime = monotonicSeconds()
    private var nextSweep = 0.0
    static let sweepInterval = 30.0
    private var announcedDrain = false
    /// Threads waiting to lead, woken one at a time by `followerWake`.
    private var idleFollowers = 0
    private let followerWake = DispatchSemaphore(value: 0)
    private var stopped = false
    private var socketFailure: Error?

    /// Regions one client may hold, and all clients together (the SIGBUS guard has 4096 slots).
    static let maxRegionsPerClient = 1024
    static let maxRegions = 4000
    /// Requests handled per wake-up before pidfds and signals get their turn.
    static let receiveBatch = 256
    /// How often a leader running a job looks at the socket and the wake-up eventfd.
    static let leadCheckInterval: UInt64 = 100_000  // ns

    public init(configuration: ServerConfiguration, logger: Logger) throws {
        guard configuration.maxInflight > 0 else { throw ServerError("--max-inflight must be positive") }
        guard configuration.maxJobBytes > 0 else { throw ServerError("--max-job-bytes must be positive") }
        guard !configuration.endpoints.isEmpty else { throw ServerError("at least one endpoint is needed") }
        self.configuration = configuration
        self.logger = logger
        engine = PoolEngine()
        try engine.setThreadCount(configuration.threads)
        context = try ZMQContext()
        socket = try ZMQSocket(context, type: ZMQ_ROUTER)
        // Replies to clients that have gone fail at once instead of queueing.
        try socket.set(ZMQ_ROUTER_MANDATORY, Int32(1))
        // libzmq drops peers that send a frame larger than any valid job could need.
        try socket.set(ZMQ_MAXMSGSIZE, Int64(configuration.maxJobBytes) + 4096)
        try socket.set(ZMQ_LINGER, Int32(0))
        for endpoint in configuration.endpoints {
            let address = Endpoint.bindAddress(endpoint)
            try Endpoint.prepareDirectory(address)
            do {
                try socket.bind(address)
            } catch {
                throw ServerError("cannot bind \(address): \(error)")
            }
            boundEndpoints.append(socket.lastEndpoint)
        }
        socketFd = socket.fileDescriptor
        guard socketFd >= 0 else { throw ServerError("zmq_getsockopt(ZMQ_FD) failed") }
        wakeFd = tpsys_eventfd()
        guard wakeFd >= 0 else { throw ServerError("eventfd: \(String(cString: strerror(errno)))") }
        sweepOrphans()
    }

    deinit {
        close(wakeFd)
        for state in clients.values where state.pidFd >= 0 { close(state.pidFd) }
    }

    /// Stop taking jobs, answer those in flight, then return from `run`. Safe from any
    /// thread and from a signal-handling queue.
    public func requestShutdown() {
        shutdownRequested.store(true, ordering: .sequentiallyConsistent)
        tpsys_eventfd_signal(wakeFd)
    }

    /// Serves until `requestShutdown`; then answers every job in flight, releases every
    /// mapping, closes the socket and returns. The calling thread is the first leader.
    public func run() throws {
        logger.info("tidepoold started", metadata: [
            "version": "\(TidepoolVersion.string)", "libzmq": "\(ZMQContext.version)",
            "endpoints": "\(boundEndpoints.joined(separator: " "))", "threads": "\(engine.threadCount)",
            "max_inflight": "\(configuration.maxInflight)", "max_job_bytes": "\(configuration.maxJobBytes)",
        ])
        serve()
        if let failure = state.withLock({ _ in socketFailure }) { throw failure }
    }

    /// The life of every server thread: lead, run the jobs taken, and once the lead has gone
    /// to another thread meanwhile, wait to lead again; return once the server has stopped.
    private func serve() {
        while let job = lead() {
            if runLeading(job) { continue }
            let stop = state.withLock { _ -> Bool in
                if !stopped { idleFollowers += 1 }
                return stopped
            }
            if stop { return }
            followerWake.wait()
            if state.withLock({ _ in stopped }) { return }
        }
    }

    /// Runs a job the leader took and sends its reply; returns whether this thread still leads.
    private func runLeading(_ job: Job) -> Bool {
        let watch = LeadWatch(next: monotonicNanoseconds() + Self.leadCheckInterval)
        if let gate = configuration.jobGate {
            // A test's gate may hold the job indefinitely: lead on elsewhere meanwhile.
            state.withLock { _ in handLeadOver(watch, why: "a job gate") }
            gate()
        }
        let completion = job.run { [self] in
            guard !watch.handedOver.load(ordering: .relaxed) else { return }
            let now = monotonicNanoseconds()
            let next = watch.next.load(ordering: .relaxed)
            guard now >= next, watch.next.compareExchange(expected: next, desired: now + Self.leadCheckInterval,
                                                          ordering: .relaxed).exchanged else { return }
            state.withLock { _ in
                // ZMQ_EVENTS, not ZMQ_FD: requests that came with the job raise no new edge.
                if socket.hasInput || (try? poll([.fd(wakeFd)], timeoutMs: 0).first) == true {
                    handLeadOver(watch, why: "a request or signal")
                }
            }
        }
        jobsRunning.subtract(1, ordering: .sequentiallyConsistent)
        if let (region, offset) = job.doneWord {
            signalDone(region, offset, completion.failure == nil ? Wire.doneWordSucceeded : Wire.doneWordFailed)
        }
        let handedOver = watch.handedOver.load(ordering: .sequentiallyConsistent)
        let leaderMustLook = state.withLock { _ in
            finish(completion)
            // This send may have taken the edge of ZMQ_FD that was to wake the leader for a
            // new request, and a drain may have ended. Otherwise waking the leader would only
            // compete with the reply for a CPU.
            return handedOver && (socket.hasInput || shutdownRequested.load(ordering: .sequentiallyConsistent))
        }
        if leaderMustLook { tpsys_eventfd_signal(wakeFd) }
        return !handedOver
    }

    private enum Step {
        case runJob(Job)
        case stop
        case sleep(watched: [([UInt8], Int32)], timeoutMs: Int)
    }

    /// Leads until it takes a job to run (returned; a follower leads by then) or the server
    /// stops (nil).
    private func lead() -> Job? {
        while true {
            switch state.withLock({ _ in takeWork() }) {
            case .runJob(let job):
                return job
            case .stop:
                return nil
            case .sleep(let watched, let timeoutMs):
                var ready: [Bool]
                do {
                    ready = try poll([.fd(socketFd), .fd(wakeFd)] + watched.map { .fd($0.1) }, timeoutMs: timeoutMs)
                } catch {
                    ready = []
                    state.withLock { _ in fatal(error) }
                }
                state.withLock { _ in
                    if ready.count > 1 && ready[1] { tpsys_eventfd_drain(wakeFd) }
                    for (index, (key, _)) in watched.enumerated() where ready.count > 2 + index && ready[2 + index] {
                        if let pid = clients[key]?.pid {
                            dropClient(key, reason: "its process \(pid) exited")
                            SharedRegion.removeOrphans(ofProcess: pid)
                        }
                    }
                    if monotonicSeconds() >= nextSweep { sweepOrphans() }
                }
            }
        }
    }

    /// With the lock held: handles what the socket holds, up to a batch. Stops the server
    /// once draining has answered every job.
    private func takeWork() -> Step {
        let draining = shutdownRequested.load(ordering: .sequentiallyConsistent)
        if draining && !announcedDrain {
            logger.info("shutting down: finishing jobs in flight", metadata: ["inflight": "\(inflight)"])
            announcedDrain = true
        }
        if stopped || (draining && inflight == 0) || socketFailure != nil {
            stop()
            return .stop
        }
        var batchEnded = true
        for _ in 0..<Self.receiveBatch {
            let frames: [ZMQFrame]?
            do {
                frames = try socket.receive(dontWait: true)
            } catch {
                fatal(error)
                return .stop
            }
            guard let frames else {
                batchEnded = false
                break
            }
            // Read per request: a shutdown asked for while this thread slept in poll must
            // refuse the jobs that woke it.
            if let job = handle(frames, draining: shutdownRequested.load(ordering: .sequentiallyConsistent)) {
                return .runJob(job)
            }
        }
        let watched = clients.filter { $0.value.pidFd >= 0 }.map { ($0.key, $0.value.pidFd) }
        let untilSweep = Swift.max(Int((nextSweep - monotonicSeconds()) * 1000) + 1, 0)
        // After a full batch, look at pidfds and signals without sleeping, then go on.
        return .sleep(watched: watched, timeoutMs: batchEnded ? 0 : untilSweep)
    }

    /// A socket error other than EAGAIN/EINTR cannot be served through: stop, and let `run`
    /// throw it.
    private func fatal(_ error: Error) {
        logger.critical("socket failed; stopping", metadata: ["error": "\(error)"])
        if socketFailure == nil { socketFailure = error }
        shutdownRequested.store(true, ordering: .sequentiallyConsistent)
    }

    /// With the lock held, by the last leader once no job is in flight: releases everything,
    /// then lets every waiting follower (`run`'s thread may be one) return.
    private func stop() {
        guard !stopped else { return }
        let released = clients.values.reduce(0) { $0 + $1.regions.count }
        for key in Array(clients.keys) { dropClient(key, reason: nil) }
        // Let the last replies leave before the socket goes.
        try? socket.set(ZMQ_LINGER, configuration.shutdownLingerMs)
        socket.close()
        // Waits for the queued replies to leave; the process may exit right after. (Unbinding
        // first would drop the connections accepted on the endpoint, and their replies.)
        context.terminate()
        // libzmq leaves ipc socket files behind; they are ours, remove them.
        for endpoint in boundEndpoints where endpoint.hasPrefix("ipc://") {
            unlink(String(endpoint.dropFirst("ipc://".count)))
        }
        logger.info("tidepoold stopped", metadata: [
            "jobs_completed": "\(stats.jobsCompleted)", "jobs_failed": "\(stats.jobsFailed)", "regions_released": "\(released)",
        ])
        stopped = true
        for _ in 0..<idleFollowers { followerWake.signal() }
        idleFollowers = 0
    }

    /// Removes what dead clients left in /dev/shm; at start-up and every `sweepInterval`.
    /// (A client that dies between creating an object and registering it cannot be watched.)
    private func sweepOrphans() {
        let removed = SharedRegion.removeOrphans()
        if removed > 0 { logger.info("removed shared-memory objects of exited clients", metadata: ["objects": "\(removed)"]) }
        nextSweep = monotonicSeconds() + Self.sweepInterval
    }

    // MARK: requests

    /// Answers one request, or returns the job the caller must run (the lead handed over).
    private func handle(_ frames: [ZMQFrame], draining: Bool) -> Job? {
        // ROUTER puts the sender's identity first; REQ-style clients add an empty delimiter.
        guard frames.count >= 2 else {
            stats.protocolErrors += 1
            return nil
        }
        var envelope = [frames[0]]
        var start = 1
        if frames[1].size == 0 && frames.count > 2 {
            envelope.append(frames[1])
            start = 2
        }
        let request = Array(frames[start...])
        let key = frames[0].array
        do {
            guard request.count <= Wire.maxFrames else {
                let header = try? Header.read(request[0].bytes)
                throw ProtocolViolation(TP_ERR_PROTOCOL, "message has \(request.count) frames; at most \(Wire.maxFrames) are defined",
                                        type: header.flatMap { MessageType(rawValue: $0.type) }, id: header?.id ?? 0)
            }
            let header = try Header.read(request[0].bytes)
            guard let type = MessageType(rawValue: header.type) else {
                throw ProtocolViolation(TP_ERR_PROTOCOL, "message type \(header.type) is unknown", id: header.id)
            }
            if type != .pool {
                try checkFixedRequest(request, header: header, type: type)
            }
            switch type {
            case .ping:
                reply(envelope, [Reply.success(.ping, id: header.id) { $0.put(TidepoolVersion.number); $0.put(UInt32(getpid())) }])
            case .pool:
                return try startJob(request, envelope: envelope, key: key, draining: draining)
            case .register:
                try register(request, header: header, envelope: envelope, key: key)
            case .unregister:
                var reader = ByteReader(request[0].bytes, offset: Wire.headerSize)
                let id = reader.get(UInt64.self)
                guard clients[key]?.regions.removeValue(forKey: id) != nil else {
                    throw ProtocolViolation(TP_ERR_NOT_FOUND, "region \(id) is not registered by this client", type: .unregister, id: header.id)
                }
                reply(envelope, [Reply.success(.unregister, id: header.id)])
            case .stats:
                let json = stats.json(inflight: inflight, clients: clients.count,
                                      regions: clients.values.reduce(0) { $0 + $1.regions.count },
                                      uptimeSeconds: monotonicSeconds() - startTime, configuration: configuration,
                                      threads: engine.threadCount)
                reply(envelope, [Reply.success(.stats, id: header.id), Array(json.utf8)])
            case .bye:
                dropClient(key, reason: nil)
                reply(envelope, [Reply.success(.bye, id: header.id)])
            }
        } catch let violation as ProtocolViolation {
            fail(envelope, violation)
        } catch {
            fail(envelope, ProtocolViolation(TP_ERR_INTERNAL, "internal error: \(error)"))
        }
        return nil
    }

    /// Every type but POOL has a fixed frame 0, no flags, and a fixed frame count.
    private func checkFixedRequest(_ request: [ZMQFrame], header: Header, type: MessageType) throws {
        guard request[0].size == type.requestSize else {
            throw ProtocolViolation(TP_ERR_PROTOCOL, "a \(type.name) request's frame 0 is \(type.requestSize) bytes but this one is \(request[0].size)",
                                    type: type, id: header.id)
        }
        guard header.flags == 0 else {
            throw ProtocolViolation(TP_ERR_FLAGS, "flags is 0x\(String(header.flags, radix: 16)) but must be 0", type: type, id: header.id)
        }
        let frames = type == .register ? 2 : 1
        guard request.count == frames else {
            throw ProtocolViolation(TP_ERR_PROTOCOL, "a \(type.name) request has \(frames) frame(s) but this one has \(request.count)",
                                    type: type, id: header.id)
        }
    }

    private func register(_ request: [ZMQFrame], header: Header, envelope: [ZMQFrame], key: [UInt8]) throws {
        func violation(_ status: tp_status, _ message: String) -> ProtocolViolation {
            ProtocolViolation(status, message, type: .register, id: header.id)
        }
        var reader = ByteReader(request[0].bytes, offset: Wire.headerSize)
        let size = reader.get(UInt64.self), pid = reader.get(UInt32.self), reserved = reader.get(UInt32.self)
        guard reserved == 0 else { throw violation(TP_ERR_PROTOCOL, "REGISTER's reserved field must be 0") }
        guard size > 0, size <= UInt64(configuration.maxJobBytes) else {
            throw violation(TP_ERR_TOO_LARGE, "region size \(size) must be between 1 and --max-job-bytes \(configuration.maxJobBytes)")
        }
        guard pid > 0, pid <= UInt32(Int32.max) else { throw violation(TP_ERR_INVALID_ARGUMENT, "pid must be the client's process id but is \(pid)") }
        guard let name = String(validating: request[1].bytes, as: UTF8.self) else {
            throw violation(TP_ERR_INVALID_ARGUMENT, "region name is not UTF-8")
        }
        let held = clients[key]?.regions.count ?? 0
        guard held < Self.maxRegionsPerClient, clients.values.reduce(0, { $0 + $1.regions.count }) < Self.maxRegions else {
            throw violation(TP_ERR_TOO_LARGE, "too many regions registered (\(held) by this client; at most \(Self.maxRegionsPerClient))")
        }
        var state = clients[key] ?? ClientState()
        if state.pid != Int32(pid) {
            // Watch the owning process: when it exits, its mappings are dropped.
            if state.pidFd >= 0 { close(state.pidFd) }
            state.pid = Int32(pid)
            state.pidFd = tpsys_pidfd_open(Int32(pid))
            if state.pidFd < 0 {
                let code = errno
                if code == ESRCH {
                    // The client died after creating the object: nothing will unlink it but us.
                    SharedRegion.removeOrphans(ofProcess: Int32(pid))
                    throw violation(TP_ERR_INVALID_ARGUMENT, "pid \(pid) is not a running process")
                }
                logger.warning("cannot watch client process; its regions live until it unregisters them",
                               metadata: ["pid": "\(pid)", "error": "\(String(cString: strerror(code)))"])
            }
        }
        let region: SharedRegion
        do {
            region = try SharedRegion.open(name: name, size: Int(size))
        } catch {
            clients[key] = state
            throw violation(TP_ERR_SYSTEM, "cannot map region \(name): \(error)")
        }
        // Mapped: the name is no longer needed, so nothing can linger in /dev/shm.
        SharedRegion.unlink(name: name)
        let id = nextRegionID
        nextRegionID += 1
        state.regions[id] = region
        clients[key] = state
        stats.regionsRegistered += 1
        reply(envelope, [Reply.success(.register, id: header.id) { $0.put(id) }])
    }

    private func dropClient(_ key: [UInt8], reason: String?) {
        guard let state = clients.removeValue(forKey: key) else { return }
        if state.pidFd >= 0 { close(state.pidFd) }
        if let reason, !state.regions.isEmpty {
            logger.info("released a client's regions", metadata: ["regions": "\(state.regions.count)", "reason": "\(reason)"])
        }
    }

    // MARK: jobs

    /// Validates a job and counts it in flight; the leader runs it on return.
    private func startJob(_ request: [ZMQFrame], envelope: [ZMQFrame], key: [UInt8], draining: Bool) throws -> Job {
        let pool = try PoolRequest.decode(request[0].bytes, payloadFrames: request.count - 1, maxJobBytes: configuration.maxJobBytes)
        func violation(_ status: tp_status, _ message: String) -> ProtocolViolation {
            ProtocolViolation(status, message, type: .pool, id: pool.id)
        }
        // The done word first: once it is known good, every outcome sets it.
        var doneWord: (SharedRegion, Int)?
        if let word = pool.doneWord {
            guard let region = clients[key]?.regions[word.region] else {
                throw violation(TP_ERR_NOT_FOUND, "done_region \(word.region) is not registered by this client")
            }
            guard region.contains(offset: word.offset, count: 4) else {
                throw violation(TP_ERR_INVALID_ARGUMENT, "done_offset \(word.offset) + 4 exceeds region \(word.region)'s \(region.size) bytes")
            }
            doneWord = (region, word.offset)
        }
        var admitted = false
        defer {
            if !admitted, let (region, offset) = doneWord { signalDone(region, offset, Wire.doneWordFailed) }
        }
        guard !draining else { throw violation(TP_ERR_CLOSED, "the daemon is shutting down and takes no new jobs") }
        func resolve(_ name: String, _ reference: TensorReference) throws -> (SharedRegion, Int)? {
            guard case .region(let id, let offset) = reference.placement else { return nil }
            guard let region = clients[key]?.regions[id] else {
                throw violation(TP_ERR_NOT_FOUND, "\(name)_region \(id) is not registered by this client")
            }
            guard region.contains(offset: offset, count: reference.bytes) else {
                throw violation(TP_ERR_INVALID_ARGUMENT,
                    "\(name)_offset \(offset) + \(name)_bytes \(reference.bytes) exceeds region \(id)'s \(region.size) bytes")
            }
            return (region, offset)
        }
        let inputRegion = try resolve("input", pool.input)
        let outputRegion = try resolve("output", pool.output)
        let inputFrame = inputRegion == nil ? request[1] : nil
        if let inputFrame, inputFrame.size != pool.input.bytes {
            throw violation(TP_ERR_PROTOCOL, "frame 1 holds \(inputFrame.size) bytes but input_bytes is \(pool.input.bytes)")
        }
        guard jobsRunning.load(ordering: .sequentiallyConsistent) < configuration.maxInflight else {
            stats.busyRejections += 1
            throw violation(TP_ERR_BUSY, "the daemon is running --max-inflight \(configuration.maxInflight) jobs; retry later")
        }
        let job = Job(request: pool, envelope: envelope, inputFrame: inputFrame, inputRegion: inputRegion,
                      outputRegion: outputRegion, doneWord: doneWord, engine: engine)
        inflight += 1
        jobsRunning.add(1, ordering: .sequentiallyConsistent)
        admitted = true
        return job
    }

    /// Sets a job's done word, before its reply: a client waiting on the word need not wait
    /// for the reply's trip through both ZeroMQ I/O threads. (A truncated region's SIGBUS is
    /// caught by its guard.)
    private func signalDone(_ region: SharedRegion, _ offset: Int, _ value: UInt32) {
        tpsys_word_set((region.base + offset).assumingMemoryBound(to: UInt32.self), value)
    }

    /// With the lock held, by a leader running a job: wakes an idle follower to lead, or starts
    /// a new thread to. If no thread can start, the job runs on and this thread leads after it.
    private func handLeadOver(_ watch: LeadWatch, why: String) {
        guard !watch.handedOver.load(ordering: .relaxed) else { return }
        if idleFollowers > 0 {
            idleFollowers -= 1
            followerWake.signal()
        } else {
            let retained = Unmanaged.passRetained(self)
            var thread = pthread_t()
            // Inherits this thread's signal mask: tidepoold keeps the stop signals blocked.
            let code = pthread_create(&thread, nil, { server in
                Unmanaged<PoolServer>.fromOpaque(server!).takeRetainedValue().serve()
                return nil
            }, retained.toOpaque())
            guard code == 0 else {
                retained.release()
                watch.next.store(.max, ordering: .relaxed)  // no retry (and no more warnings) during this job
                logger.warning("cannot start a thread to lead while a job runs; requests wait for the job",
                               metadata: ["waiting": "\(why)", "error": "\(String(cString: strerror(code)))"])
                return
            }
            pthread_detach(thread)
        }
        watch.handedOver.store(true, ordering: .sequentiallyConsistent)
    }

    /// Accounts for a finished job and sends its reply.
    private func finish(_ completion: Completion) {
        inflight -= 1
        if let failure = completion.failure {
            stats.jobsFailed += 1
            logger.notice("job failed", metadata: ["id": "\(completion.id)", "status": "\(statusName(failure.status) ?? "?")",
                                                   "error": "\(failure.message)"])
        } else {
            stats.jobsCompleted += 1
            stats.bytesProcessed += completion.bytes
        }
        for id in completion.poisonedRegions {
            for key in clients.keys where clients[key]?.regions.removeValue(forKey: id) != nil {
                logger.warning("unregistered a region its owner truncated during a job", metadata: ["region": "\(id)"])
            }
        }
        send(completion.envelope, completion.reply)
    }

    // MARK: replies

    private func reply(_ envelope: [ZMQFrame], _ frames: [[UInt8]]) {
        send(envelope, frames.map(ZMQFrame.init))
    }

    private func fail(_ envelope: [ZMQFrame], _ violation: ProtocolViolation) {
        if violation.status == TP_ERR_PROTOCOL || violation.status == TP_ERR_VERSION { stats.protocolErrors += 1 }
        if violation.status != TP_ERR_BUSY {
            logger.notice("request refused", metadata: ["type": "\(violation.type?.name ?? "?")", "id": "\(violation.id)",
                                                        "status": "\(statusName(violation.status) ?? "?")", "error": "\(violation.message)"])
        }
        reply(envelope, Reply.error(violation))
    }

    private func send(_ envelope: [ZMQFrame], _ frames: [ZMQFrame]) {
        do {
            try socket.send(envelope + frames, dontWait: true)
        } catch {
            // The client left or stopped reading; its reply has nowhere to go.
            stats.repliesDropped += 1
        }
    }
}

/// A client, by ZeroMQ routing identity: its regions and the process that owns them.
struct ClientState {
    var regions: [UInt64: SharedRegion] = [:]
    var pid: Int32 = 0
    var pidFd: Int32 = -1
}

struct Completion: @unchecked Sendable {
    let id: UInt64
    let envelope: [ZMQFrame]
    let reply: [ZMQFrame]
    let failure: ProtocolViolation?
    let bytes: Int
    let poisonedRegions: [UInt64]
}

/// One validated job, run by the thread that took it. It holds its regions and frames, so they stay
/// valid even if the client unregisters them meanwhile.
struct Job: @unchecked Sendable {
    let request: PoolRequest
    let envelope: [ZMQFrame]
    let inputFrame: ZMQFrame?
    let inputRegion: (SharedRegion, Int)?
    let outputRegion: (SharedRegion, Int)?
    let doneWord: (SharedRegion, Int)?
    let engine: PoolEngine

    func run(progress: @escaping @Sendable () -> Void) -> Completion {
        var poisoned: [UInt64] = []
        do {
            let frames = try compute(progress: progress)
            for (reference, region) in [(request.input, inputRegion), (request.output, outputRegion)] {
                if let (region, _) = region, region.isPoisoned, case .region(let id, _) = reference.placement { poisoned.append(id) }
            }
            if let first = poisoned.first {
                throw ProtocolViolation(TP_ERR_SYSTEM, "region \(first) was truncated by its owner during the job; it is unregistered",
                                        type: .pool, id: request.id)
            }
            return Completion(id: request.id, envelope: envelope, reply: frames, failure: nil,
                              bytes: request.input.bytes + request.output.bytes, poisonedRegions: [])
        } catch {
            let violation = error as? ProtocolViolation
                ?? (error as? PoolError).map { ProtocolViolation($0.status, $0.message, type: .pool, id: request.id) }
                ?? ProtocolViolation(TP_ERR_INTERNAL, "internal error: \(error)", type: .pool, id: request.id)
            return Completion(id: request.id, envelope: envelope, reply: Reply.error(violation).map(ZMQFrame.init),
                              failure: violation, bytes: 0, poisonedRegions: poisoned)
        }
    }

    private func compute(progress: @escaping @Sendable () -> Void) throws -> [ZMQFrame] {
        let outputShape = request.outputShape
        var input: UnsafeRawPointer
        var alignedCopy: UnsafeMutableRawPointer?
        defer { free(alignedCopy) }
        if let (region, offset) = inputRegion {
            input = UnsafeRawPointer(region.base + offset)
        } else {
            input = UnsafeRawPointer(inputFrame!.data)
            // libzmq may hand a small frame inside its receive buffer at any address.
            if Int(bitPattern: input) % request.dtype.size != 0 {
                guard let copy = malloc(Swift.max(request.input.bytes, 1)) else {
                    throw PoolError(TP_ERR_NO_MEMORY, "cannot allocate \(request.input.bytes) bytes to align the input")
                }
                copy.copyMemory(from: input, byteCount: request.input.bytes)
                alignedCopy = copy
                input = UnsafeRawPointer(copy)
            }
        }
        let outputFrame: ZMQFrame?
        let output: UnsafeMutableRawPointer
        if let (region, offset) = outputRegion {
            outputFrame = nil
            output = region.base + offset
        } else {
            guard let frame = ZMQFrame(size: request.output.bytes) else {
                throw PoolError(TP_ERR_NO_MEMORY, "cannot allocate a \(request.output.bytes)-byte output frame")
            }
            outputFrame = frame
            output = frame.data
        }
        try engine.pool(request.descriptor, input: TensorView(data: input, dtype: request.dtype, shape: request.inputShape),
                        output: OutputView(data: output, dtype: request.outputDType, shape: outputShape),
                        progress: progress)
        let header = ZMQFrame(Reply.pool(id: request.id, dtype: request.outputDType, shape: outputShape))
        return outputFrame.map { [header, $0] } ?? [header]
    }
}

/// Whether the leader running a job has handed the lead over, and when it looks next.
final class LeadWatch: Sendable {
    let handedOver = Atomic<Bool>(false)
    let next: Atomic<UInt64>
    init(next: UInt64) { self.next = Atomic(next) }
}
