import CTidepoolSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Threads kept between calls that help a call through its items (the kernels' tiles, the
/// gradients' planes): `forEach` runs on the calling thread and on as many helpers as are free
/// and awake in time, each taking the next item until none is left.
///
/// Why not `DispatchQueue.concurrentPerform`: on Linux it runs every iteration on the global
/// queue's threads, none on the caller's, and wakes them for each call; on this project's
/// 2-vCPU machines that cost tens of microseconds before the first item started and again
/// before the call returned, more than a whole small pooling (docs/performance.md, "Threads
/// of our own"). Here the caller starts at once, and a helper that finished a call spins for
/// `spinNanoseconds` before it sleeps, so back-to-back calls find it awake (waking a sleeping
/// thread on an idle vCPU costs about as much as the hand-off above). Since items are taken on
/// demand, the caller never waits for a helper that has not started: a late helper only takes
/// fewer items, and the results do not depend on who computed them.
///
/// One call at a time has the helpers; a call made while another has them (another thread of
/// the host, the daemon's concurrent jobs) runs on its own thread. At most one helper per CPU
/// online beside the caller is started: more only take turns. A forked child starts its own.
/// (So a call's `body` must not fork: fork waits for the call to end.)
///
/// Not `Locked`: the pool needs a try-lock and a condition variable, both pthread's, which
/// ThreadSanitizer models as it does `Locked`'s mutex.
public final class WorkerPool: @unchecked Sendable {
    public static let shared = WorkerPool()

    /// How long a helper that finished a call keeps looking for the next before it sleeps.
    static let spinNanoseconds: UInt64 = 100_000

    /// The call's word: its generation (bits 32-63, new for each call), whether it is closed to
    /// helpers (bit 31), how many helpers may join (bits 16-30) and have joined (bits 0-15).
    /// Helpers join with a compare-and-exchange on the whole word, so a helper joins only the
    /// call it saw, only while it is open, and never beyond its limit.
    private let state = Atomic<UInt64>(0)
    private static let closedBit: UInt64 = 1 << 31
    /// Helpers of the current call that have finished its items.
    private let finished = Atomic<Int>(0)
    /// The current call's body: written by the caller before the generation that publishes it
    /// (release) and cleared after every helper that joined has finished; read by helpers
    /// only after joining (acquire).
    private var body: ((Int) -> Void)?

    /// Held by the call that has the helpers (try-lock: another call runs alone).
    private let calling: UnsafeMutablePointer<pthread_mutex_t>
    /// Helpers asleep wait on `wake` under `sleepLock`, `sleepers` of them.
    private let sleepLock: UnsafeMutablePointer<pthread_mutex_t>
    private let wake: UnsafeMutablePointer<pthread_cond_t>
    private var sleepers = 0
    /// Helpers started (under `calling`).
    private var helpers = 0
    /// The most helpers: one per other CPU online, and what the word's fields hold.
    private let mostHelpers: Int

    private init() {
        calling = .allocate(capacity: 1)
        sleepLock = .allocate(capacity: 1)
        wake = .allocate(capacity: 1)
        pthread_mutex_init(calling, nil)
        pthread_mutex_init(sleepLock, nil)
        pthread_cond_init(wake, nil)
        mostHelpers = Swift.min(Swift.max(0, sysconf(Int32(_SC_NPROCESSORS_ONLN)) - 1), 0x7fff)
        // fork() waits for a call in progress (prepare takes both locks; a helper holds
        // `sleepLock` only for a moment), so the child gets the pool between calls, with
        // none of the helpers: it starts its own when it needs them.
        pthread_atfork({ WorkerPool.shared.lockBeforeFork() }, { WorkerPool.shared.unlockAfterFork(inChild: false) },
                       { WorkerPool.shared.unlockAfterFork(inChild: true) })
    }

    private func lockBeforeFork() {
        pthread_mutex_lock(calling)
        pthread_mutex_lock(sleepLock)
    }

    private func unlockAfterFork(inChild: Bool) {
        if inChild {
            helpers = 0
            sleepers = 0
            // The condition variable counts the parent's sleeping helpers among its waiters,
            // and a broadcast waits for them to leave it: made new, it has none.
            pthread_cond_init(wake, nil)
        }
        pthread_mutex_unlock(sleepLock)
        pthread_mutex_unlock(calling)
    }

    /// Calls `body(worker, index)` for every index in 0..<count, each once, on up to `workers`
    /// threads (the caller's among them); `worker` (in 0..<workers) tells them apart, for their
    /// scratch: no two run at once with the same `worker`. A thread stops taking indices once
    /// `body` returns false (a cancelled call), so then some indices are never run. Each
    /// thread then calls `finish(worker)` once, on itself (the kernels fence their streaming
    /// stores there). Returns when every thread has returned from `finish`.
    ///
    /// `inRuns`: each thread takes runs of consecutive indices, a share of what is left
    /// (`count - next` over twice the threads, at least 1), so that each works through its
    /// own stretch of memory; otherwise one index at a time, the threads interleaved. Runs
    /// suit many small items whose neighbours share little (a 1-d pooling's row tiles: taken
    /// alternately, two threads took 1.2-2.3x as long as in runs, at times longer than one
    /// thread). Items that share much with their neighbours may do better interleaved, the
    /// shared part read once for both threads (3-d tiles of a few output planes, whose
    /// neighbours read kd - sd of the same input planes: one such cell measured 8% slower in
    /// runs; docs/performance.md).
    /// The runs shrink as the items run out, so the threads still finish together.
    public func forEach(_ count: Int, workers: Int, inRuns: Bool = false, _ body: (_ worker: Int, _ index: Int) -> Bool,
                        finish: (_ worker: Int) -> Void = { _ in }) {
        if workers <= 1 || count <= 1 {
            for index in 0..<count where !body(0, index) { break }
            return finish(0)
        }
        let next = Atomic<Int>(0)
        let threads = Swift.min(workers, count), share = inRuns ? 2 * threads : count
        run(helpers: threads - 1) { worker in
            var first = next.load(ordering: .relaxed)
            taking: while first < count {
                let size = Swift.max(1, (count - first) / share)
                let (taken, seen) = next.compareExchange(expected: first, desired: first + size, ordering: .relaxed)
                guard taken else {
                    first = seen
                    continue
                }
                for index in first..<(first + size) where !body(worker, index) { break taking }
                first = next.load(ordering: .relaxed)
            }
            finish(worker)
        }
    }

    /// `body(0)` on the caller and `body(i)` on each helper i in 1...wanted that joins while
    /// the caller's `body(0)` runs.
    private func run(helpers wanted: Int, _ body: (Int) -> Void) {
        guard pthread_mutex_trylock(calling) == 0 else { return body(0) }
        defer { pthread_mutex_unlock(calling) }
        let limit = startHelpers(wanted)
        guard limit > 0 else { return body(0) }
        withoutActuallyEscaping(body) { body in
            self.body = body
            finished.store(0, ordering: .relaxed)
            let generation = ((state.load(ordering: .relaxed) >> 32) &+ 1) & 0xffff_ffff
            state.store(generation << 32 | UInt64(limit) << 16, ordering: .releasing)
            pthread_mutex_lock(sleepLock)
            if sleepers > 0 { pthread_cond_broadcast(wake) }
            pthread_mutex_unlock(sleepLock)

            body(0)

            let joined = Int(state.bitwiseOr(Self.closedBit, ordering: .acquiringAndReleasing).oldValue & 0xffff)
            var spins = 0
            while finished.load(ordering: .acquiring) < joined {
                // A helper finishing a long item: give the CPU to it rather than spin on it.
                spins += 1
                if spins > 1000 { sched_yield() } else { tpsys_cpu_relax() }
            }
            self.body = nil
        }
    }

    /// Starts helpers up to `wanted` (at most `mostHelpers`) and returns how many there are,
    /// fewer if the system refuses a thread. Called with `calling` held.
    private func startHelpers(_ wanted: Int) -> Int {
        let wanted = Swift.min(wanted, mostHelpers)
        while helpers < wanted {
            // Helpers take no signals meant for the process (a host's SIGINT goes to a thread
            // that handles it); faults (SIGBUS on a truncated client mapping, which the daemon
            // guards) still reach the thread that made them.
            var all = sigset_t(), previous = sigset_t()
            sigfillset(&all)
            for fault in [SIGBUS, SIGSEGV, SIGFPE, SIGILL, SIGTRAP] { sigdelset(&all, fault) }
            pthread_sigmask(SIG_SETMASK, &all, &previous)
            var thread = pthread_t()
            let code = pthread_create(&thread, nil, { raw in
                let pool = Unmanaged<WorkerPool>.fromOpaque(raw!).takeUnretainedValue()
                tpsys_name_thread("tidepool-help")
                pool.serve()
            }, Unmanaged.passUnretained(self).toOpaque())
            pthread_sigmask(SIG_SETMASK, &previous, nil)
            guard code == 0 else { break }
            pthread_detach(thread)
            helpers += 1
        }
        return Swift.min(helpers, wanted)
    }

    /// A helper's life: wait for a call, join it if there is room, run its body.
    private func serve() -> Never {
        var seen = state.load(ordering: .acquiring) >> 32
        while true {
            var word = awaitCall(after: seen)
            seen = word >> 32
            while word >> 32 == seen && word & Self.closedBit == 0 && word & 0xffff < (word >> 16) & 0x7fff {
                let (joined, original) = state.compareExchange(expected: word, desired: word + 1, ordering: .acquiringAndReleasing)
                if joined {
                    body!(Int(word & 0xffff) + 1)
                    finished.wrappingAdd(1, ordering: .releasing)
                    break
                }
                word = original
            }
        }
    }

    /// The word once its generation is not `seen`: spinning for `spinNanoseconds`, then asleep.
    private func awaitCall(after seen: UInt64) -> UInt64 {
        let start = monotonicNanoseconds()
        var turns = 0
        while true {
            let word = state.load(ordering: .acquiring)
            if word >> 32 != seen { return word }
            turns += 1
            if turns % 64 == 0 && monotonicNanoseconds() - start > Self.spinNanoseconds { break }
            tpsys_cpu_relax()
        }
        pthread_mutex_lock(sleepLock)
        sleepers += 1
        var word = state.load(ordering: .acquiring)
        while word >> 32 == seen {
            pthread_cond_wait(wake, sleepLock)
            word = state.load(ordering: .acquiring)
        }
        sleepers -= 1
        pthread_mutex_unlock(sleepLock)
        return word
    }
}
