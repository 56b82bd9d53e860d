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

/// The daemon's logic. One thread (the caller of `run`) owns the ROUTER socket and all
/// client state; jobs compute on Dispatch's worker threads and hand their replies back
/// through a queue and an eventfd, so compute never blocks the socket loop.
public final class PoolServer: @unchecked Sendable {
    public let configuration: ServerConfiguration
    /// The endpoints actually bound (tcp port 0 resolved to its port).
    public private(set) var boundEndpoints: [String] = []

    private let logger: Logger
    private let context: ZMQContext
    private let socket: ZMQSocket
    private let engine: PoolEngine
    private let wakeFd: Int32
    private let completions = Mutex<[Completion]>([])
    private let shutdownRequested = Atomic<Bool>(false)

    // Owned by the loop thread.
    private var clients: [[UInt8]: ClientState] = [:]
    private var inflight = 0
    private var stats = ServerStats()
    private var nextRegionID: UInt64 = 1
    private let startTime = monotonicSeconds()
    private var nextSweep = 0.0
    static let sweepInterval = 30.0

    /// Regions one client may hold, and all clients together (the SIGBUS guard has 4096 slots).
    static let maxRegionsPerClient = 1024
    static let maxRegions = 4000
    /// Requests handled per wake-up before completions get their turn.
    static let receiveBatch = 256
    /// Jobs reading at most this many elements (a few microseconds of work) run on the loop
    /// thread itself: handing them to a worker and back would cost more than the job.
    static let inlineWorkLimit = 1 << 14

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
    /// mapping, closes the socket and returns.
    public func run() throws {
        logger.info("tidepoold started", metadata: [
            "version": "\(TidepoolVersion.string)", "libzmq": "\(ZMQContext.version)",
            "endpoints": "\(boundEndpoints.joined(separator: " "))", "threads": "\(engine.threadCount)",
            "max_inflight": "\(configuration.maxInflight)", "max_job_bytes": "\(configuration.maxJobBytes)",
        ])
        var announcedDrain = false
        while true {
            let draining = shutdownRequested.load(ordering: .sequentiallyConsistent)
            if draining && !announcedDrain {
                logger.info("shutting down: finishing jobs in flight", metadata: ["inflight": "\(inflight)"])
                announcedDrain = true
            }
            if draining && inflight == 0 { break }
            let watched = clients.filter { $0.value.pidFd >= 0 }.map { ($0.key, $0.value.pidFd) }
            let untilSweep = Int((nextSweep - monotonicSeconds()) * 1000) + 1
            let ready = try poll([.socket(socket), .fd(wakeFd)] + watched.map { .fd($0.1) }, timeoutMs: Swift.max(untilSweep, 0))
            if ready[1] {
                tpsys_eventfd_drain(wakeFd)
                sendCompletions()
            }
            if ready[0] {
                for _ in 0..<Self.receiveBatch {
                    guard let frames = try socket.receive(dontWait: true) else { break }
                    // Read per request: a shutdown asked for while this thread slept in poll
                    // must refuse the jobs that woke it.
                    handle(frames, draining: shutdownRequested.load(ordering: .sequentiallyConsistent))
                }
            }
            for (index, (key, _)) in watched.enumerated() where ready[2 + index] {
                if let pid = clients[key]?.pid {
                    dropClient(key, reason: "its process \(pid) exited")
                    SharedRegion.removeOrphans(ofProcess: pid)
                }
            }
            if monotonicSeconds() >= nextSweep {
                sweepOrphans()
            }
        }
        sendCompletions()
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
    }

    /// Removes what dead clients left in /dev/shm; at start-up and every `sweepInterval`.
    /// (A client that dies between creating an object and registering it cannot be watched.)
    private func sweepOrphans() {
        let removed = SharedRegion.removeOrphans()
        if removed > 0 { logger.info("removed shared-memory objects of exited clients", metadata: ["objects": "\(removed)"]) }
        nextSweep = monotonicSeconds() + Self.sweepInterval
    }

    // MARK: requests

    private func handle(_ frames: [ZMQFrame], draining: Bool) {
        // ROUTER puts the sender's identity first; REQ-style clients add an empty delimiter.
        guard frames.count >= 2 else {
            stats.protocolErrors += 1
            return
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
                guard !draining else {
                    throw ProtocolViolation(TP_ERR_CLOSED, "the daemon is shutting down and takes no new jobs", type: .pool, id: header.id)
                }
                try startJob(request, envelope: envelope, key: key)
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

    private func startJob(_ request: [ZMQFrame], envelope: [ZMQFrame], key: [UInt8]) throws {
        let pool = try PoolRequest.decode(request[0].bytes, payloadFrames: request.count - 1, maxJobBytes: configuration.maxJobBytes)
        func violation(_ status: tp_status, _ message: String) -> ProtocolViolation {
            ProtocolViolation(status, message, type: .pool, id: pool.id)
        }
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
        guard inflight < configuration.maxInflight else {
            stats.busyRejections += 1
            throw violation(TP_ERR_BUSY, "the daemon is running --max-inflight \(configuration.maxInflight) jobs; retry later")
        }
        inflight += 1
        let job = Job(request: pool, envelope: envelope, inputFrame: inputFrame, inputRegion: inputRegion,
                      outputRegion: outputRegion, engine: engine)
        let work = pool.outputShape.reduce(1, *).multipliedReportingOverflow(by: pool.descriptor.kernelSize.reduce(1, *))
        if !work.overflow && work.partialValue <= Self.inlineWorkLimit {
            finish(job.run())
            return
        }
        DispatchQueue.global(qos: .userInitiated).async { [self] in
            configuration.jobGate?()
            let completion = job.run()
            completions.withLock { $0.append(completion) }
            tpsys_eventfd_signal(wakeFd)
        }
    }

    private func sendCompletions() {
        let done = completions.withLock { queue -> [Completion] in
            defer { queue.removeAll() }
            return queue
        }
        done.forEach(finish)
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

/// One validated job, run on a worker thread. It holds its regions and frames, so they stay
/// valid even if the client unregisters them meanwhile.
struct Job: @unchecked Sendable {
    let request: PoolRequest
    let envelope: [ZMQFrame]
    let inputFrame: ZMQFrame?
    let inputRegion: (SharedRegion, Int)?
    let outputRegion: (SharedRegion, Int)?
    let engine: PoolEngine

    func run() -> Completion {
        var poisoned: [UInt64] = []
        do {
            let frames = try compute()
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

    private func compute() throws -> [ZMQFrame] {
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
                        output: OutputView(data: output, dtype: request.outputDType, shape: outputShape))
        let header = ZMQFrame(Reply.pool(id: request.id, dtype: request.outputDType, shape: outputShape))
        return outputFrame.map { [header, $0] } ?? [header]
    }
}

func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}
