import CTidepool
import CTidepoolSystem
import Dispatch
import Logging
import Synchronization
import TidepoolCore
import TidepoolEndpoint
import TidepoolProtocol
import TidepoolSharedMemory
import TidepoolSync
import TidepoolZMQ

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's socket loop, served leader/follower style: one thread at a time (the leader)
/// polls the ROUTER socket and hands requests to the `RequestHandler`, and runs the jobs it
/// admits itself, so a job meets no thread hop on its way in or out (on a VM each hop costs a
/// wake-up that crosses to another virtual CPU). While it computes, it looks at the socket
/// between output planes; once a request or signal waits there, it wakes a follower to lead,
/// so compute keeps the socket waiting little more than `leadCheckInterval`.
/// `state` guards the socket and the handler; nobody holds it while sleeping in poll.
public final class PoolServer: @unchecked Sendable {
    public let configuration: ServerConfiguration
    /// The endpoints actually bound (tcp port 0 resolved to its port).
    public let boundEndpoints: [String]
    /// This daemon's random identity (docs/protocol.md, PING).
    public var instance: UInt64 { handler.instance }

    private let logger: Logger
    private let context: ZMQContext
    private let socket: ZMQSocket
    private let authenticator: PeerAuthenticator
    private let curve: CurveAuthorization?
    private let handler: RequestHandler
    private let engine: PoolEngine
    private let socketFd: Int32
    private let wakeFd: Int32
    private let shutdownRequested = Atomic<Bool>(false)

    /// Held by whoever touches the socket, the handler or the loop's state: the leader
    /// (except in poll) and a thread sending its job's reply. (A ZeroMQ socket may change
    /// threads behind a barrier.)
    private let state = Locked(LoopState())
    static let sweepInterval = 30.0
    private let followerWake = DispatchSemaphore(value: 0)

    /// Requests handled per wake-up before pidfds and signals get their turn.
    static let receiveBatch = 256
    /// How often a leader running a job looks at the socket and the wake-up eventfd.
    static let leadCheckInterval: UInt64 = 100_000  // ns
    /// Requests libzmq queues per connection before it stops reading from that peer (the
    /// daemon reads them as fast as it can; this bounds what a flooding client can pile up).
    static let receiveHighWaterMark: Int32 = 16
    /// ZMTP heartbeats: a tcp peer that vanished (host down, cable cut) is dropped after this.
    static let heartbeatIntervalMs: Int32 = 5_000
    static let heartbeatTimeoutMs: Int32 = 15_000

    /// Binds every endpoint, or fails at once with a message saying which and why, leaving
    /// nothing behind (sockets closed, context terminated).
    public init(configuration: ServerConfiguration, logger: Logger) throws {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger
        engine = PoolEngine()
        try engine.setThreadCount(configuration.threads)
        var curve: CurveAuthorization?
        if let secret = configuration.curveSecretKey, let directory = configuration.curveAuthorizedKeys {
            let loaded = try CurveAuthorization(secretCertificate: secret, authorizedKeys: directory)
            for reason in loaded.skippedAtStart { logger.warning("skipped an authorized key", metadata: ["reason": "\(reason)"]) }
            if loaded.authorizedCount == 0 {
                logger.warning("no authorized CURVE keys: every tcp client is refused until keys are added (then SIGHUP)",
                               metadata: ["directory": "\(directory)"])
            }
            curve = loaded
        }
        self.curve = curve
        handler = RequestHandler(configuration: configuration, logger: logger, engine: engine, curve: curve)
        let context = try ZMQContext()
        var authenticator: PeerAuthenticator?
        var socket: ZMQSocket?
        var bound: [String] = []
        do {
            // The ZAP handler must be bound before an endpoint accepts a connection.
            let zap = try PeerAuthenticator(context: context, curve: curve, logger: logger)
            authenticator = zap
            let router = try ZMQSocket(context, type: .router)
            socket = router
            if curve != nil { try zap.watchHandshakes(of: router, context: context) }
            try zap.start()
            // Replies to clients that have gone fail at once instead of queueing.
            try router.set(.routerMandatory, Int32(1))
            // A client reconnecting with its own routing id takes it over from its dead
            // connection; `RequestHandler` checks every request's sender against the owner.
            try router.set(.routerHandover, Int32(1))
            // libzmq drops peers that send a frame larger than any valid job could need.
            try router.set(.maxMessageSize, Int64(configuration.maxJobBytes) + 4096)
            try router.set(.receiveHighWaterMark, Self.receiveHighWaterMark)
            try router.set(.heartbeatInterval, Self.heartbeatIntervalMs)
            try router.set(.heartbeatTimeout, Self.heartbeatTimeoutMs)
            try router.set(.linger, Int32(0))
            for endpoint in configuration.endpoints {
                let address = Endpoint.bindAddress(endpoint)
                guard address.hasPrefix("ipc://") || address.hasPrefix("tcp://") else {
                    throw ServerError("cannot bind \(endpoint): only ipc:// and tcp:// endpoints are served")
                }
                do {
                    try Endpoint.prepareToServe(address)
                } catch {
                    throw ServerError("\(error)")
                }
                // The domain tells the ZAP handler the transport of each connection (`Peer`).
                try router.set(.zapDomain, address.hasPrefix("ipc://") ? PeerAuthenticator.ipcDomain : PeerAuthenticator.tcpDomain)
                // Security options are taken by each endpoint as it is bound: CURVE on tcp,
                // none on ipc (there the kernel names the peer, and shared memory needs it).
                if let curve {
                    if address.hasPrefix("tcp://") {
                        try router.set(.curveSecretKey, curve.certificate.secretKey!.bytes)
                        try router.set(.curveServer, Int32(1))
                    } else {
                        try router.set(.curveServer, Int32(0))
                    }
                }
                do {
                    try router.bind(address)
                } catch {
                    throw ServerError("cannot bind \(address): \(error)")
                }
                bound.append(router.lastEndpoint)
            }
        } catch {
            socket?.stopMonitor()
            socket?.close()
            authenticator?.stop()
            context.terminate()
            for endpoint in bound { if let path = Endpoint.ipcPath(endpoint) { unlink(path) } }
            throw error
        }
        self.context = context
        self.socket = socket!
        self.authenticator = authenticator!
        boundEndpoints = bound
        socketFd = self.socket.fileDescriptor
        wakeFd = tpsys_eventfd()
        guard socketFd >= 0, wakeFd >= 0 else {
            let message = socketFd < 0 ? "zmq_getsockopt(ZMQ_FD) failed" : "eventfd: \(String(cString: strerror(errno)))"
            stopSocket()
            throw ServerError(message)
        }
        state.withLock { sweepOrphans(&$0) }
    }

    deinit {
        if wakeFd >= 0 { close(wakeFd) }
    }

    /// Stop taking jobs, answer those in flight, then return from `run`. Safe from any
    /// thread and from a signal-handling queue.
    public func requestShutdown() {
        shutdownRequested.store(true, ordering: .sequentiallyConsistent)
        tpsys_eventfd_signal(wakeFd)
    }

    /// Reads the CURVE authorized-keys directory again (SIGHUP) and logs the outcome; a
    /// directory that cannot be read keeps the keys loaded before. Safe from any thread.
    public func reloadAuthorizedKeys() {
        guard let curve else {
            logger.notice("SIGHUP: nothing to reload (no --curve-authorized-keys)")
            return
        }
        do {
            let (count, skipped) = try curve.reload()
            for reason in skipped { logger.warning("skipped an authorized key", metadata: ["reason": "\(reason)"]) }
            logger.notice("authorized keys reloaded", metadata: ["directory": "\(curve.directory)", "keys": "\(count)"])
        } catch {
            logger.error("cannot reload the authorized keys; keeping the \(curve.authorizedCount) loaded before",
                         metadata: ["error": "\(error)"])
        }
    }

    /// Serves until `requestShutdown`; then answers every job in flight, releases every
    /// mapping, closes the socket and returns. The calling thread is the first leader.
    public func run() throws {
        logger.info("tidepoold started", metadata: [
            "version": "\(TidepoolVersion.string)", "libzmq": "\(ZMQContext.version)",
            "endpoints": "\(boundEndpoints.joined(separator: " "))", "threads": "\(engine.threadCount)",
            "cpu_level": "\(engine.cpuLevel)", "max_inflight": "\(configuration.maxInflight)", "max_job_bytes": "\(configuration.maxJobBytes)",
            "max_queued_bytes": "\(configuration.maxQueuedBytes)", "instance": "\(String(instance, radix: 16))",
        ])
        serve()
        if let failure = state.withLock({ $0.socketFailure }) { throw failure }
    }

    /// The life of every server thread: lead, run the jobs taken, and once the lead has gone
    /// to another thread meanwhile, wait to lead again; return once the server has stopped.
    private func serve() {
        while true {
            // The job ends with this scope: a thread that goes on to wait as a follower must
            // not hold the job's frames (an inline input can be gigabytes) while it sleeps.
            let stillLeading: Bool
            do {
                guard let job = lead() else { return }
                stillLeading = runLeading(job)
            }
            if stillLeading { continue }
            let stop = state.withLock { loop -> Bool in
                if !loop.stopped { loop.idleFollowers += 1 }
                return loop.stopped
            }
            if stop { return }
            followerWake.wait()
            if state.withLock({ $0.stopped }) { return }
        }
    }

    /// Runs a job the leader took and sends its reply; returns whether this thread still leads.
    private func runLeading(_ job: Job) -> Bool {
        let watch = LeadWatch(next: monotonicNanoseconds() + Self.leadCheckInterval)
        if let gate = configuration.jobGate {
            // A test's gate may hold the job indefinitely: lead on elsewhere meanwhile.
            state.withLock { handLeadOver(watch, why: "a job gate", &$0) }
            gate()
        }
        let completion = job.run { [self] in
            guard !watch.handedOver.load(ordering: .relaxed) else { return }
            let now = monotonicNanoseconds()
            let next = watch.next.load(ordering: .relaxed)
            guard now >= next, watch.next.compareExchange(expected: next, desired: now + Self.leadCheckInterval,
                                                          ordering: .relaxed).exchanged else { return }
            state.withLock { loop in
                // ZMQ_EVENTS, not ZMQ_FD: requests that came with the job raise no new edge.
                if socket.hasInput || (try? poll([.fd(wakeFd)], timeoutMs: 0).first) == true {
                    handLeadOver(watch, why: "a request or signal", &loop)
                }
            }
        }
        handler.jobEnded(job, completion)
        let handedOver = watch.handedOver.load(ordering: .sequentiallyConsistent)
        let leaderMustLook = state.withLock { _ in
            send(completion.envelope, handler.finish(completion))
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
        case sleep(watched: [(pid_t, Int32)], timeoutMs: Int)
    }

    /// Leads until it takes a job to run (returned; a follower leads by then) or the server
    /// stops (nil).
    private func lead() -> Job? {
        while true {
            switch state.withLock({ takeWork(&$0) }) {
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
                    state.withLock { fatal(error, &$0) }
                }
                state.withLock { loop in
                    if ready.count > 1 && ready[1] { tpsys_eventfd_drain(wakeFd) }
                    for (index, (pid, _)) in watched.enumerated() where ready.count > 2 + index && ready[2 + index] {
                        handler.processExited(pid)
                    }
                    if monotonicSeconds() >= loop.nextSweep { sweepOrphans(&loop) }
                }
            }
        }
    }

    /// With the lock held: handles what the socket holds, up to a batch. Stops the server
    /// once draining has answered every job.
    private func takeWork(_ loop: inout LoopState) -> Step {
        let draining = shutdownRequested.load(ordering: .sequentiallyConsistent)
        if draining && !loop.announcedDrain {
            logger.info("shutting down: finishing jobs in flight", metadata: ["inflight": "\(handler.inflight)"])
            loop.announcedDrain = true
        }
        if loop.stopped || (draining && handler.inflight == 0) || loop.socketFailure != nil {
            stop(&loop)
            return .stop
        }
        var batchEnded = true
        for _ in 0..<Self.receiveBatch {
            let frames: [ZMQFrame]?
            do {
                frames = try socket.receive(dontWait: true)
            } catch {
                fatal(error, &loop)
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
        let watched = handler.watchedProcesses
        let untilSweep = Swift.max(Int((loop.nextSweep - monotonicSeconds()) * 1000) + 1, 0)
        // After a full batch, look at pidfds and signals without sleeping, then go on.
        return .sleep(watched: watched, timeoutMs: batchEnded ? 0 : untilSweep)
    }

    /// Answers one message, or returns the job the caller must run.
    private func handle(_ frames: [ZMQFrame], draining: Bool) -> Job? {
        // ROUTER puts the sender's identity first; REQ-style clients add an empty delimiter.
        guard frames.count >= 2 else { return nil }
        var envelope = [frames[0]]
        var start = 1
        if frames[1].size == 0 && frames.count > 2 {
            envelope.append(frames[1])
            start = 2
        }
        let request = Array(frames[start...])
        // The label the ZAP handler gave this connection: who the kernel says sent it.
        let peer = Peer(userID: request[0].metadata("User-Id"))
        switch handler.handle(key: frames[0].array, peer: peer, envelope: envelope, frames: request, draining: draining) {
        case .reply(let reply): send(envelope, reply)
        case .run(let job): return job
        case .none: break
        }
        return nil
    }

    /// A socket error other than EAGAIN/EINTR cannot be served through: stop, and let `run`
    /// throw it.
    private func fatal(_ error: Error, _ loop: inout LoopState) {
        logger.critical("socket failed; stopping", metadata: ["error": "\(error)"])
        if loop.socketFailure == nil { loop.socketFailure = error }
        shutdownRequested.store(true, ordering: .sequentiallyConsistent)
    }

    /// With the lock held, by the last leader once no job is in flight: releases everything,
    /// then lets every waiting follower (`run`'s thread may be one) return.
    private func stop(_ loop: inout LoopState) {
        guard !loop.stopped else { return }
        let released = handler.dropAll()
        // Let the last replies leave before the socket goes.
        try? socket.set(.linger, configuration.shutdownLingerMs)
        stopSocket()
        logger.info("tidepoold stopped", metadata: [
            "jobs_completed": "\(handler.stats.jobsCompleted)", "jobs_failed": "\(handler.stats.jobsFailed)",
            "regions_released": "\(released)",
        ])
        loop.stopped = true
        for _ in 0..<loop.idleFollowers { followerWake.signal() }
        loop.idleFollowers = 0
    }

    /// Closes the socket and the ZAP handler, waits for queued replies to leave (within the
    /// linger), and removes the ipc socket files, which libzmq leaves behind. (Unbinding first
    /// would drop the connections accepted on the endpoint, and their replies.)
    private func stopSocket() {
        socket.stopMonitor()
        socket.close()
        authenticator.stop()
        context.terminate()
        for endpoint in boundEndpoints { if let path = Endpoint.ipcPath(endpoint) { unlink(path) } }
    }

    /// Removes what dead clients of this user left in /dev/shm; at start-up and every
    /// `sweepInterval`. (A client that dies between creating an object and registering it
    /// cannot be watched.)
    private func sweepOrphans(_ loop: inout LoopState) {
        handler.pruneIdle()
        let removed = SharedRegion.removeOrphans()
        if removed > 0 { logger.info("removed shared-memory objects of exited clients", metadata: ["objects": "\(removed)"]) }
        loop.nextSweep = monotonicSeconds() + Self.sweepInterval
    }

    /// With the lock held, by a leader running a job: wakes an idle follower to lead, or starts
    /// a new thread to. If no thread can start, the job runs on and this thread leads after it.
    private func handLeadOver(_ watch: LeadWatch, why: String, _ loop: inout LoopState) {
        guard !watch.handedOver.load(ordering: .relaxed) else { return }
        if loop.idleFollowers > 0 {
            loop.idleFollowers -= 1
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

    private func send(_ envelope: [ZMQFrame], _ frames: [ZMQFrame]) {
        do {
            try socket.send(envelope + frames, dontWait: true)
        } catch {
            // The client left, or its queue is full (it stopped reading): the reply has
            // nowhere to go, and its frames are freed now.
            handler.noteDroppedReply()
        }
    }
}

/// What the loop's lock guards besides the socket and the handler.
struct LoopState {
    /// When the next sweep of dead clients' objects is due.
    var nextSweep = 0.0
    var announcedDrain = false
    /// Threads waiting to lead, woken one at a time by `followerWake`.
    var idleFollowers = 0
    var stopped = false
    var socketFailure: Error?
}

/// Whether the leader running a job has handed the lead over, and when it looks next.
final class LeadWatch: Sendable {
    let handedOver = Atomic<Bool>(false)
    let next: Atomic<UInt64>
    init(next: UInt64) { self.next = Atomic(next) }
}
