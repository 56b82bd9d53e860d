import CTidepoolSystem
import Logging
import TidepoolProtocol
import TidepoolSharedMemory
import TidepoolZMQ

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's clients, by ZeroMQ routing id: who each is, the regions it registered, its
/// jobs in flight, and the local processes they belong to (each watched once, through a
/// pidfd, so that a process's exit ends its clients). `RequestHandler` owns one and serialises
/// every call.
final class ClientRegistry {
    private(set) var clients: [[UInt8]: ClientState] = [:]
    /// The local processes with client states, each watched once through a pidfd however
    /// many connections it has (a connection that vanished without BYE cannot be told from an
    /// idle one; its process's exit ends it).
    private var processes: [pid_t: WatchedProcess] = [:]
    private let instance: UInt64
    private var nextSequence: UInt32
    private let logger: Logger
    private let logLimiter: LogLimiter
    /// Client states kept before idle ones are looked for.
    static let pruneThreshold = 256

    init(instance: UInt64, firstSequence: UInt32, logger: Logger, logLimiter: LogLimiter) {
        self.instance = instance
        nextSequence = firstSequence
        self.logger = logger
        self.logLimiter = logLimiter
    }

    deinit {
        for key in Array(clients.keys) { remove(key) }
    }

    var clientCount: Int { clients.count }
    var regionCount: Int { clients.values.reduce(0) { $0 + $1.regions.count } }
    var watchedProcesses: [(pid_t, Int32)] { processes.map { ($0.key, $0.value.fd) } }
    var watchedProcessCount: Int { processes.count }

    /// The state of the client at `key`, if it has one. A routing id now used by another peer
    /// (a ROUTER hand-over to a different process) starts afresh: regions and jobs of the
    /// previous owner are not the new one's.
    func existing(_ key: [UInt8], peer: Peer) -> ClientState? {
        guard let state = clients[key] else { return nil }
        if state.owner == peer { return state }
        drop(key, reason: "its routing id is now used by \(peer)")
        return nil
    }

    /// A new client state. A local client's process is watched, so that its regions and jobs
    /// go when it exits; nil when it has exited already.
    func add(_ key: [UInt8], peer: Peer) -> ClientState? {
        // Clients whose last replies have left since their last request go now, so clients
        // that come and go cannot pile states up.
        if clients.count >= Self.pruneThreshold { pruneIdle() }
        if case .local(_, _, let pid) = peer {
            if processes[pid] == nil {
                let fd = tpsys_pidfd_open(pid)
                if fd < 0 {
                    let code = errno
                    if code == ESRCH { return nil }
                    logger.warning("cannot watch a client process; its regions live until it unregisters them",
                                   metadata: ["pid": "\(pid)", "error": "\(String(cString: strerror(code)))"])
                } else {
                    processes[pid] = WatchedProcess(fd: fd)
                }
            }
            processes[pid]?.keys.insert(key)
        }
        let state = ClientState(owner: peer)
        clients[key] = state
        logger.debug("new client", metadata: ["client": "\(peer)", "clients": "\(clients.count)"])
        return state
    }

    /// Forgets a client state: releases it and, with its process's last one, the pidfd.
    private func remove(_ key: [UInt8]) {
        guard let state = clients.removeValue(forKey: key) else { return }
        state.release()
        if case .local(_, _, let pid) = state.owner, var process = processes[pid] {
            process.keys.remove(key)
            if process.keys.isEmpty {
                close(process.fd)
                processes.removeValue(forKey: pid)
            } else {
                processes[pid] = process
            }
        }
    }

    /// Regions held by the clients of process `pid` and of user `uid`.
    func regionsHeld(pid: pid_t, uid: uid_t) -> (process: Int, user: Int) {
        var process = 0, user = 0
        for state in clients.values {
            guard case .local(let owner, _, let ownerPid) = state.owner, owner == uid else { continue }
            user += state.regions.count
            if ownerPid == pid { process += state.regions.count }
        }
        return (process, user)
    }

    /// The next region id of this instance not in use (the 32-bit sequence may wrap).
    func freshRegionID() -> UInt64 {
        while true {
            let id = RegionID.make(instance: instance, sequence: nextSequence)
            nextSequence = nextSequence == UInt32.max ? 1 : nextSequence + 1
            if !clients.values.contains(where: { $0.regions[id] != nil }) { return id }
        }
    }

    /// Forgets a client: cancels its jobs, drops its regions (the jobs hold theirs until they
    /// end) and stops watching its process.
    func drop(_ key: [UInt8], reason: String?) {
        guard let state = clients[key] else { return }
        if let reason, !state.regions.isEmpty || !state.jobs.isEmpty {
            logLimiter.log(logger, .info, "released a client", metadata: [
                "regions": "\(state.regions.count)", "jobs_cancelled": "\(state.jobs.count)", "reason": "\(reason)",
            ])
        }
        if let reason {
            logger.debug("client gone", metadata: ["client": "\(state.owner)", "reason": "\(reason)"])
        }
        remove(key)
    }

    /// A watched process exited (its pidfd became readable): every client of it goes, and its
    /// objects in /dev/shm too.
    func processExited(_ pid: pid_t) {
        guard let process = processes[pid] else { return }
        var uid: uid_t?
        for key in process.keys {
            if case .local(let owner, _, _)? = clients[key]?.owner { uid = owner }
            drop(key, reason: "its process \(pid) exited")
        }
        if let uid { SharedRegion.removeOrphans(ofProcess: pid, owner: uid) }
    }

    /// Drops a client that holds nothing any more, so clients that come and go (tcp ones
    /// cannot be watched) leave no state behind. One whose replies still wait in libzmq keeps
    /// its state, which counts them against its share of --max-queued-bytes.
    func prune(_ key: [UInt8]) {
        if let state = clients[key], state.isIdle { remove(key) }
    }

    /// Drops every idle client (see `prune`): those whose replies have left since.
    func pruneIdle() {
        for (key, state) in clients where state.isIdle { remove(key) }
    }

    @discardableResult
    func dropAll() -> Int {
        let released = regionCount
        for key in Array(clients.keys) { drop(key, reason: nil) }
        return released
    }
}

/// A client, by ZeroMQ routing identity: who it is, its regions, its jobs in flight, and
/// the process that owns them.
final class ClientState {
    let owner: Peer
    var regions: [UInt64: SharedRegion] = [:]
    /// Jobs admitted and not finished, by job id.
    var jobs: [UInt64: JobCancellation] = [:]
    let queuedBytes = QueuedBytes()
    /// The replies of the last jobs that wrote into shared memory, by job id, to answer a
    /// resubmission without running the job again; oldest first in `recentOrder`.
    private(set) var recentReplies: [UInt64: [[UInt8]]] = [:]
    private var recentOrder: [UInt64] = []
    static let recentCapacity = 1024

    init(owner: Peer) { self.owner = owner }

    /// Nothing registered, running, or waiting to be read.
    var isIdle: Bool { regions.isEmpty && jobs.isEmpty && queuedBytes.current == 0 }

    func remember(_ id: UInt64, reply: [[UInt8]]) {
        if recentReplies.updateValue(reply, forKey: id) == nil { recentOrder.append(id) }
        if recentOrder.count > Self.recentCapacity {
            recentReplies.removeValue(forKey: recentOrder.removeFirst())
        }
    }

    /// Cancels the jobs, drops the regions.
    func release() {
        for job in jobs.values { job.cancel() }
        jobs.removeAll()
        regions.removeAll()
    }
}

/// A local process with client states, watched through one pidfd.
struct WatchedProcess {
    let fd: Int32
    var keys: Set<[UInt8]> = []
}
