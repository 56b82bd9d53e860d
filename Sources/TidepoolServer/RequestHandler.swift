import CTidepool
import CTidepoolSystem
import Logging
import Synchronization
import TidepoolCore
import TidepoolSync
import TidepoolProtocol
import TidepoolSharedMemory
import TidepoolZMQ

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's decisions, without a socket: it takes one request (the sender's routing id,
/// who the kernel says the sender is, the frames) and answers it, or admits a job for the
/// caller to run; it keeps the clients, their regions and their jobs. `PoolServer` drives it
/// from the socket under its lock; the fuzz targets drive it directly. Not thread-safe: the
/// caller serialises every call.
public final class RequestHandler {
    public enum Outcome {
        /// Send these frames back to the sender.
        case reply([ZMQFrame])
        /// Run this job (then `finish` it): it was admitted.
        case run(Job)
        /// Nothing to send: a resubmitted job already running answers for both.
        case none
    }

    public let configuration: ServerConfiguration
    /// CURVE keys and refusals, for STATS (nil without CURVE).
    let curve: CurveAuthorization?
    let logger: Logger
    /// Lines a client can cause (refusals, failed jobs) go through it: a flood of them is
    /// held back and counted, not written line by line.
    let logLimiter = LogLimiter()
    let engine: PoolEngine
    /// Random, drawn at start: region ids carry its upper half, PING answers it.
    public let instance: UInt64
    private let instanceTag: UInt32
    private(set) var stats = ServerStats()
    /// The clients, their regions and their processes.
    let registry: ClientRegistry
    /// Jobs admitted and not yet finished (a drain waits for them).
    public private(set) var inflight = 0
    /// Jobs admitted whose end is not yet known to their client: what --max-inflight limits.
    /// Released by the running thread before the done word is set, so a client that saw its
    /// job end may submit another at once, though the reply is still on its way.
    let jobsRunning = Atomic<Int>(0)
    /// Inline output bytes held for all clients (see ServerConfiguration.maxQueuedBytes).
    let queuedBytes = QueuedBytes()
    private let startTime = monotonicSeconds()

    /// Regions one process may hold (over all its connections), one user, and all together
    /// (the SIGBUS guard has 4096 slots): no process or user can take the table from others.
    public static let maxRegionsPerProcess = 1024
    public static let maxRegionsPerUser = 2048
    public static let maxRegions = 4000

    /// `instance` and `firstSequence` fix the region ids, for fuzzing (a fuzzer learns ids
    /// that stay the same from run to run); a daemon draws both at random.
    public init(configuration: ServerConfiguration, logger: Logger, engine: PoolEngine, instance: UInt64? = nil,
                firstSequence: UInt32? = nil, curve: CurveAuthorization? = nil) {
        self.curve = curve
        self.configuration = configuration
        self.logger = logger
        self.engine = engine
        var drawn = instance ?? 0
        while RegionID.instanceTag(ofInstance: drawn) == 0 { drawn = UInt64.random(in: 1...UInt64.max) }
        self.instance = drawn
        instanceTag = RegionID.instanceTag(ofInstance: drawn)
        // A random start too: even two instances that drew the same tag (one chance in 2^32)
        // would hand out different ids.
        registry = ClientRegistry(instance: drawn, firstSequence: firstSequence ?? UInt32.random(in: 1...UInt32.max), logger: logger,
                                  logLimiter: logLimiter)
    }

    public var clientCount: Int { registry.clientCount }
    public var regionCount: Int { registry.regionCount }

    /// Processes whose exit ends their clients: (pid, pidfd).
    var watchedProcesses: [(pid_t, Int32)] { registry.watchedProcesses }

    /// Open descriptors the handler holds (pidfds), for tests and STATS.
    public var watchedProcessCount: Int { registry.watchedProcessCount }

    func dropClient(_ key: [UInt8], reason: String?) { registry.drop(key, reason: reason) }
    public func processExited(_ pid: pid_t) { registry.processExited(pid) }
    public func pruneIdle() { registry.pruneIdle() }
    @discardableResult public func dropAll() -> Int { registry.dropAll() }

    // MARK: requests

    /// Answers one request from `key` (its routing id), sent by `peer`. `draining` refuses new jobs.
    public func handle(key: [UInt8], peer: Peer, envelope: [ZMQFrame], frames: [ZMQFrame], draining: Bool) -> Outcome {
        do {
            let request = try Request.decode(frames.map(\.bytes), maxJobBytes: configuration.maxJobBytes)
            switch request {
            case .ping(let id):
                // A pid is handed out only to a peer the kernel identified (ipc).
                let pid: UInt32 = if case .local = peer { UInt32(getpid()) } else { 0 }
                return .reply([ZMQFrame(PingReply(libraryVersion: TidepoolVersion.number, pid: pid, instance: instance).encode(id: id))])
            case .pool(let pool):
                return try startJob(pool, key: key, peer: peer, envelope: envelope, frames: frames, draining: draining)
            case .register(let register):
                return .reply([ZMQFrame(try self.register(register, key: key, peer: peer))])
            case .unregister(let id, let region):
                guard let state = registry.existing(key, peer: peer), state.regions.removeValue(forKey: region) != nil else {
                    throw regionViolation(region, field: "region", type: .unregister, id: id)
                }
                logger.debug("unregistered a region", metadata: ["region": "\(region)", "client": "\(peer)"])
                registry.prune(key)
                return .reply([ZMQFrame(Reply.success(.unregister, id: id))])
            case .stats(let id):
                let json = stats.json(inflight: inflight, clients: registry.clientCount, regions: regionCount, queuedBytes: queuedBytes.current,
                                      uptimeSeconds: monotonicSeconds() - startTime, configuration: configuration,
                                      threads: engine.threadCount, cpuLevel: engine.cpuLevel,
                                      curve: curve.map { ($0.authorizedCount, $0.refusals) })
                return .reply([ZMQFrame(Reply.success(.stats, id: id)), ZMQFrame(Array(json.utf8))])
            case .bye(let id):
                registry.drop(key, reason: "it said BYE")
                return .reply([ZMQFrame(Reply.success(.bye, id: id))])
            }
        } catch let violation as ProtocolViolation {
            return .reply(refuse(violation))
        } catch {
            return .reply(refuse(ProtocolViolation(TP_ERR_INTERNAL, "internal error: \(error)")))
        }
    }

    private func refuse(_ violation: ProtocolViolation) -> [ZMQFrame] {
        if violation.status == TP_ERR_PROTOCOL || violation.status == TP_ERR_VERSION { stats.protocolErrors += 1 }
        if violation.status == TP_ERR_PERMISSION { stats.permissionDenials += 1 }
        if violation.status != TP_ERR_BUSY {
            logLimiter.log(logger, .notice, "request refused", metadata: [
                "type": "\(violation.type?.name ?? "?")", "id": "\(violation.id)", "status": "\(statusName(violation.status) ?? "?")",
                "error": "\(violation.message)",
            ])
        }
        return Reply.error(violation).map(ZMQFrame.init)
    }

    /// The NOT_FOUND for a region id this client does not hold, saying whether it came from
    /// another instance of the daemon.
    private func regionViolation(_ region: UInt64, field: String, type: MessageType, id: UInt64) -> ProtocolViolation {
        let message = RegionID.instanceTag(region) == instanceTag
            ? "\(field) \(region) is not registered by this client"
            : "\(field) \(region) was registered with another daemon instance (the daemon restarted); register the buffer again"
        return ProtocolViolation(TP_ERR_NOT_FOUND, message, type: type, id: id)
    }

    private func register(_ request: RegisterRequest, key: [UInt8], peer: Peer) throws -> [UInt8] {
        func violation(_ status: tp_status, _ message: String) -> ProtocolViolation {
            ProtocolViolation(status, message, type: .register, id: request.id)
        }
        // Only the kernel's word counts: over tcp nobody can be proven to own an object.
        guard case .local(let uid, _, let pid) = peer else {
            throw violation(TP_ERR_PERMISSION, "shared memory is registered only over ipc, where the kernel tells the daemon who "
                + "asks; this request came from \(peer). Send tensors inline instead")
        }
        guard request.pid == pid else {
            throw violation(TP_ERR_PERMISSION, "REGISTER says pid \(request.pid) but the connection belongs to process \(pid)")
        }
        let held = registry.regionsHeld(pid: pid, uid: uid), all = regionCount
        guard held.process < Self.maxRegionsPerProcess, held.user < Self.maxRegionsPerUser, all < Self.maxRegions else {
            throw violation(TP_ERR_TOO_LARGE, "too many regions registered: \(held.process) by process \(pid) (at most "
                + "\(Self.maxRegionsPerProcess)), \(held.user) by uid \(uid) (at most \(Self.maxRegionsPerUser)), \(all) in all "
                + "(at most \(Self.maxRegions)); free some buffers")
        }
        guard let state = registry.existing(key, peer: peer) ?? registry.add(key, peer: peer) else {
            // The client died after sending this: nothing will unlink its objects but us.
            SharedRegion.removeOrphans(ofProcess: pid, owner: uid)
            throw violation(TP_ERR_INVALID_ARGUMENT, "process \(pid) is no longer running")
        }
        let region: SharedRegion
        do {
            region = try SharedRegion.open(name: request.name, size: request.size, owner: uid)
        } catch let error as SharedMemoryError {
            registry.prune(key)
            switch error.kind {
            case .permission: throw violation(TP_ERR_PERMISSION, "cannot register \(request.name.prefix(64)): \(error)")
            case .invalid: throw violation(TP_ERR_INVALID_ARGUMENT, "cannot register \(request.name.prefix(64)): \(error)")
            case .system: throw violation(TP_ERR_SYSTEM, "cannot map region \(request.name.prefix(64)): \(error)")
            }
        }
        let id = registry.freshRegionID()
        state.regions[id] = region
        stats.regionsRegistered += 1
        logger.debug("registered a region", metadata: ["region": "\(id)", "name": "\(request.name.prefix(64))",
                                                       "bytes": "\(request.size)", "client": "\(peer)"])
        return RegisterReply.encode(id: request.id, region: id)
    }

    // MARK: jobs

    /// Validates a job against the daemon's state and admits it.
    private func startJob(_ pool: PoolRequest, key: [UInt8], peer: Peer, envelope: [ZMQFrame], frames: [ZMQFrame],
                          draining: Bool) throws -> Outcome {
        func violation(_ status: tp_status, _ message: String) -> ProtocolViolation {
            ProtocolViolation(status, message, type: pool.type, id: pool.id)
        }
        let existing = registry.existing(key, peer: peer)
        // A client that lost its connection sends again the jobs it has no answer for. Running
        // one twice could write its output after the client saw the first end: a job still
        // running answers both, and one that ended lately is answered again from memory.
        if pool.resubmitted, let existing {
            if existing.jobs[pool.id] != nil { return .none }
            if let reply = existing.recentReplies[pool.id] { return .reply(reply.map(ZMQFrame.init)) }
        }
        func region(_ id: UInt64, field: String) throws -> SharedRegion {
            guard let region = existing?.regions[id] else { throw regionViolation(id, field: field, type: pool.type, id: pool.id) }
            return region
        }
        // The done word first: once it is known good, every outcome sets it.
        var doneWord: (SharedRegion, Int)?
        if let word = pool.doneWord {
            let region = try region(word.region, field: "done_region")
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
            let region = try region(id, field: "\(name)_region")
            guard region.contains(offset: offset, count: reference.bytes) else {
                throw violation(TP_ERR_INVALID_ARGUMENT,
                    "\(name)_offset \(offset) + \(name)_bytes \(reference.bytes) exceeds region \(id)'s \(region.size) bytes")
            }
            return (region, offset)
        }
        // Each tensor read is in a region or in the next frame (the decoder counted them).
        var reads: [JobTensor] = []
        var nextFrame = 1
        for (name, reference) in pool.reads {
            if let (region, offset) = try resolve(name, reference) {
                reads.append(.region(region, offset))
                continue
            }
            let frame = frames[nextFrame]
            guard frame.size == reference.bytes else {
                throw violation(TP_ERR_PROTOCOL, "frame \(nextFrame) holds \(frame.size) bytes but \(name)_bytes is \(reference.bytes)")
            }
            reads.append(.frame(frame))
            nextFrame += 1
        }
        let outputRegion = try resolve("output", pool.output)
        guard jobsRunning.load(ordering: .sequentiallyConsistent) < configuration.maxInflight else {
            stats.busyRejections += 1
            throw violation(TP_ERR_BUSY, "the daemon is running --max-inflight \(configuration.maxInflight) jobs; retry later")
        }
        guard let state = existing ?? registry.add(key, peer: peer) else {
            throw violation(TP_ERR_CLOSED, "the process that sent the job has exited")
        }
        var reservation: OutputReservation?
        if outputRegion == nil && pool.output.bytes > 0 {
            let bytes = pool.output.bytes
            let mine = state.queuedBytes.current, all = queuedBytes.current
            guard mine <= configuration.maxQueuedBytes / 2 - bytes, all <= configuration.maxQueuedBytes - bytes else {
                stats.busyRejections += 1
                registry.prune(key)
                throw violation(TP_ERR_BUSY, "the daemon holds \(mine) bytes of inline outputs for this client and \(all) in all; "
                    + "with this job's \(bytes) that passes --max-queued-bytes \(configuration.maxQueuedBytes) "
                    + "(half of it per client): read the replies, then retry")
            }
            reservation = OutputReservation(bytes: bytes, counters: [queuedBytes, state.queuedBytes])
        }
        let cancellation = JobCancellation()
        let job = Job(key: key, request: pool, envelope: envelope, reads: reads, outputRegion: outputRegion, doneWord: doneWord, engine: engine, cancellation: cancellation,
                      outputReservation: reservation)
        state.jobs[pool.id] = cancellation
        inflight += 1
        jobsRunning.add(1, ordering: .sequentiallyConsistent)
        admitted = true
        return .run(job)
    }

    /// Called by the thread that ran `job`, without the caller's lock: frees its
    /// --max-inflight slot and sets its done word, before the reply is sent.
    public func jobEnded(_ job: Job, _ completion: Completion) {
        jobsRunning.subtract(1, ordering: .sequentiallyConsistent)
        if let (region, offset) = job.doneWord {
            signalDone(region, offset, completion.failure == nil ? Wire.doneWordSucceeded : Wire.doneWordFailed)
        }
    }

    /// Sets a job's done word, before its reply: a client waiting on the word need not wait
    /// for the reply's trip through both ZeroMQ I/O threads. (A truncated region's SIGBUS is
    /// caught by its guard.)
    private func signalDone(_ region: SharedRegion, _ offset: Int, _ value: UInt32) {
        tpsys_word_set((region.base + offset).assumingMemoryBound(to: UInt32.self), value)
    }

    /// Accounts for a finished job; returns its reply.
    public func finish(_ completion: Completion) -> [ZMQFrame] {
        inflight -= 1
        if let failure = completion.failure {
            stats.jobsFailed += 1
            logLimiter.log(logger, .notice, "job failed", metadata: [
                "id": "\(completion.id)", "status": "\(statusName(failure.status) ?? "?")", "error": "\(failure.message)",
            ])
        } else {
            stats.jobsCompleted += 1
            stats.bytesProcessed += completion.bytes
            logger.debug("job done", metadata: [
                "id": "\(completion.id)", "type": "\(completion.request.type.name)", "layer": "\(completion.request.descriptor)", "dtype": "\(completion.request.dtype)",
                "input": "\(pythonTuple(completion.request.inputShape))", "bytes": "\(completion.bytes)",
                "ms": "\(format3(completion.seconds * 1e3))",
                "tensors": "\(completion.outputInRegion ? "shared memory" : "inline")",
            ])
        }
        if let state = registry.clients[completion.key] {
            if state.jobs[completion.id] === completion.cancellation {
                state.jobs.removeValue(forKey: completion.id)
                if completion.outputInRegion { state.remember(completion.id, reply: completion.reply.map(\.array)) }
            }
            for id in completion.poisonedRegions where state.regions.removeValue(forKey: id) != nil {
                logLimiter.log(logger, .warning, "unregistered a region its owner truncated during a job", metadata: ["region": "\(id)"])
            }
            registry.prune(completion.key)
        }
        return completion.reply
    }

    func noteDroppedReply() { stats.repliesDropped += 1 }
}
