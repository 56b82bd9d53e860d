#if canImport(Glibc)
import Glibc
#endif

/// A value guarded by a pthread mutex: the one lock type of Tidepool.
///
/// Not `Synchronization.Mutex`: on Linux that is a bare futex which ThreadSanitizer does not
/// model, so a TSan build reports every access made under it as a data race and cannot find
/// a real one. TSan intercepts `pthread_mutex_lock`, so with this lock `make sanitize` sees
/// the happens-before edges the code relies on.
public final class Locked<Value>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// For a lock that threads of the process may hold when another forks (the kernels'
    /// scratch pool): `pthread_atfork` handlers call `lockBeforeFork` (prepare) and
    /// `unlockAfterFork` (parent and child), so the child, whose one thread is the forking
    /// one, gets the lock free and the value whole, not as a vanished thread left it.
    public func lockBeforeFork() { pthread_mutex_lock(mutex) }
    public func unlockAfterFork() { pthread_mutex_unlock(mutex) }

    /// Runs `body` with the lock held. Not reentrant: `body` must not take the same lock.
    @inline(__always)
    public func withLock<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
