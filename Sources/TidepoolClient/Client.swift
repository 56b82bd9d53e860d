import CTidepool
import CTidepoolSystem
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

/// A connection to tidepoold. Every method is safe to call from several threads; calls on
/// one client are serialised (they share one socket).
///
/// The connection survives the daemon: when it drops (the daemon died, or stalled past the
/// heartbeat) and comes back within `Connection.reconnectGraceSeconds`, the client checks
/// whether the same daemon answers, registers its buffers again if not, and sends again the
/// jobs it has no answer for, so calls succeed and nothing is lost. A call waiting longer
/// fails with TP_ERR_CONNECTION, and so does every call until the daemon is back.
public final class PoolClient: @unchecked Sendable {
    public let endpoint: String
    /// Default limit of synchronous calls, in milliseconds (-1: none).
    public let timeoutMs: Int
    private let state: Locked<Connection>

    /// Checks the endpoint (an ipc socket must be this user's or root's, in a directory no
    /// other user controls), connects and pings the daemon, so an unreachable endpoint fails
    /// here with TP_ERR_CONNECTION rather than on the first job.
    /// With `curve`, the connection speaks CurveZMQ (tcp endpoints: `CurveClientKeys.resolve`).
    public init(endpoint: String, timeoutMs: Int, curve: CurveClientKeys? = nil) throws {
        self.endpoint = endpoint
        self.timeoutMs = timeoutMs
        do {
            try Endpoint.checkBeforeConnecting(endpoint)
        } catch let error as EndpointError {
            throw PoolError(error.missing ? TP_ERR_CONNECTION : TP_ERR_PERMISSION, error.description)
        }
        let connection = try Connection(endpoint: endpoint, curve: curve)
        state = Locked(connection)
        try state.withLock { connection in
            do {
                try connection.greet(deadline: Deadline(timeoutMs))
            } catch let error as PoolError where error.status == TP_ERR_TIMEOUT {
                connection.close()
                throw PoolError(TP_ERR_CONNECTION, "no reply from a daemon at \(endpoint) within \(timeoutMs) ms")
            } catch {
                connection.close()
                throw error
            }
        }
    }

    /// Round-trip time of a PING, in seconds.
    public func ping(timeoutMs: Int? = nil) throws -> Double {
        try state.withLock { connection in
            let start = monotonicSeconds()
            _ = try connection.call(.ping, deadline: Deadline(timeoutMs ?? self.timeoutMs))
            return monotonicSeconds() - start
        }
    }

    /// The daemon's counters as JSON.
    public func stats() throws -> String {
        try state.withLock { connection in try connection.call(.stats, deadline: Deadline(timeoutMs)).payload }
    }

    /// The random identity of the daemon last answering (docs/protocol.md, PING).
    public var daemonInstance: UInt64 { state.withLock { $0.instance } }

    /// A shared-memory buffer of `bytes` bytes, registered with the daemon: tensors placed
    /// in it travel to jobs by reference, with no copy.
    public func allocate(bytes: Int) throws -> SharedBuffer {
        try state.withLock { connection in try connection.allocate(bytes: bytes, deadline: Deadline(timeoutMs), owner: self) }
    }

    /// Sends a job and returns its id for `wait`. Tensors in this client's shared buffers
    /// go by reference; others are copied into the message (and the output back out of the
    /// reply), so `input` and `output` must stay valid until `wait` returns something other
    /// than TP_ERR_TIMEOUT, or `cancel` returns: until then the job may be sent again (after a
    /// lost connection) and its output written.
    public func submit(_ desc: PoolDescriptor, input: TensorView, output: OutputView) throws -> UInt64 {
        try PoolEngine.shared.check(desc, input: input, output: output)
        return try state.withLock { connection in
            try connection.submit(desc, input: input, output: output, deadline: Deadline(timeoutMs), owner: self)
        }
    }

    /// Sends a backward job (`PoolEngine.backward` run by the daemon) and returns its id for
    /// `wait`; the tensors' lifetimes as for `submit`.
    public func submitBackward(_ desc: PoolDescriptor, input: TensorView, gradOutput: TensorView, gradInput: OutputView,
                               ties: MaxTies = .split) throws -> UInt64 {
        try PoolEngine.shared.checkBackward(desc, input: input, gradOutput: gradOutput, gradInput: gradInput)
        return try state.withLock { connection in
            try connection.submit(desc, input: input, output: gradInput, backward: (ties, gradOutput), deadline: Deadline(timeoutMs),
                                  owner: self)
        }
    }

    /// Waits for a submitted job (-1: no limit). TP_ERR_TIMEOUT leaves it pending, to be
    /// waited for again or cancelled; any other outcome ends it.
    public func wait(_ job: UInt64, timeoutMs: Int? = nil) throws {
        try state.withLock { connection in _ = try connection.wait(job, deadline: Deadline(timeoutMs ?? self.timeoutMs)) }
    }

    /// Ends a pending job without waiting: once this returns, nothing is written into the
    /// job's inline output, and its input is not read again. (An output in a shared buffer may
    /// still be written by the daemon until the job ends there: the buffer is the caller's.)
    /// Throws TP_ERR_NOT_FOUND for a job that is not pending.
    public func cancel(_ job: UInt64) throws {
        try state.withLock { connection in try connection.cancel(job) }
    }

    /// Runs a job and waits for it; on a timeout the job is cancelled, so the caller's
    /// memory is never written after this returns.
    public func pool(_ desc: PoolDescriptor, input: TensorView, output: OutputView) throws {
        try PoolEngine.shared.check(desc, input: input, output: output)
        try run { connection, deadline in
            try connection.submit(desc, input: input, output: output, deadline: deadline, owner: self)
        }
    }

    /// The gradient of pooling `input` (`PoolEngine.backward`), computed by the daemon and
    /// waited for as `pool` waits.
    public func backward(_ desc: PoolDescriptor, input: TensorView, gradOutput: TensorView, gradInput: OutputView,
                         ties: MaxTies = .split) throws {
        try PoolEngine.shared.checkBackward(desc, input: input, gradOutput: gradOutput, gradInput: gradInput)
        try run { connection, deadline in
            try connection.submit(desc, input: input, output: gradInput, backward: (ties, gradOutput), deadline: deadline, owner: self)
        }
    }

    private func run(_ submit: (inout Connection, Deadline) throws -> UInt64) throws {
        try state.withLock { connection in
            let deadline = Deadline(timeoutMs)
            let job = try submit(&connection, deadline)
            do {
                _ = try connection.wait(job, deadline: deadline)
            } catch let error as PoolError where error.status == TP_ERR_TIMEOUT {
                try? connection.cancel(job)
                throw PoolError(TP_ERR_TIMEOUT, "no reply from the daemon within \(timeoutMs) ms; the job was cancelled")
            }
        }
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

/// Shared memory registered with the daemon. Its memory stays valid until the last reference
/// goes, even after the client is closed; its name stays in /dev/shm until `free`, so that a
/// restarted daemon can map it again.
public final class SharedBuffer: @unchecked Sendable {
    public let region: SharedRegion
    /// The daemon's id for it; changes when a restarted daemon registers it again, 0 when
    /// that failed. Only read and written under the client's lock.
    public internal(set) var regionID: UInt64
    /// Why the buffer could not be registered again after a restart.
    var lostReason: String?
    private weak var owner: PoolClient?
    private let freed = Atomic<Bool>(false)

    init(region: SharedRegion, regionID: UInt64, owner: PoolClient) {
        self.region = region
        self.regionID = regionID
        self.owner = owner
    }

    public var data: UnsafeMutableRawPointer { region.base }
    public var size: Int { region.size }

    /// Unregisters the buffer (if the client is still open) and removes its name. The
    /// memory is unmapped when the last reference to the buffer goes.
    public func free() {
        guard !freed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        owner?.release(self)
        SharedRegion.unlink(name: region.name)
    }

    deinit { if !freed.load(ordering: .relaxed) { SharedRegion.unlink(name: region.name) } }
}

/// When a call gives up: an absolute monotonic time, or never.
struct Deadline {
    let time: Double
    /// `milliseconds` < 0: no limit.
    init(_ milliseconds: Int) { time = milliseconds < 0 ? .infinity : monotonicSeconds() + Double(milliseconds) / 1000 }
    init(at time: Double) { self.time = time }
    var remainingMs: Int {
        guard time.isFinite else { return -1 }
        return Swift.max(0, Int(((time - monotonicSeconds()) * 1000).rounded(.up)))
    }
    var passed: Bool { monotonicSeconds() >= time }
}
