import Synchronization
import Testing
import TidepoolSync

#if canImport(Glibc)
import Glibc
#endif

/// The kernels' threads (WorkerPool.swift): every index once, worker numbers that never run
/// twice at once, a stop that stops, and calls from many threads at once. (Forked children
/// and the helpers' signal mask: bindings/python/tests/test_threads.py.)
@Suite struct WorkerPoolTests {
    /// Runs `forEach` and checks each index ran once, on a worker in range, never two bodies of
    /// one worker at a time; returns how many distinct workers ran.
    @discardableResult
    static func check(_ count: Int, workers: Int, work: Int = 0, inRuns: Bool = false) -> Int {
        let runs = UnsafeMutablePointer<Atomic<Int>>.allocate(capacity: Swift.max(count, 1))
        let busy = UnsafeMutablePointer<Atomic<Int>>.allocate(capacity: Swift.max(workers, 1))
        let used = UnsafeMutablePointer<Atomic<Int>>.allocate(capacity: Swift.max(workers, 1))
        let finished = UnsafeMutablePointer<Atomic<Int>>.allocate(capacity: Swift.max(workers, 1))
        for i in 0..<count { (runs + i).initialize(to: Atomic(0)) }
        for i in 0..<Swift.max(workers, 1) {
            (busy + i).initialize(to: Atomic(0))
            (used + i).initialize(to: Atomic(0))
            (finished + i).initialize(to: Atomic(0))
        }
        defer { runs.deallocate(); busy.deallocate(); used.deallocate(); finished.deallocate() }
        let overlaps = Atomic<Int>(0), outOfRange = Atomic<Int>(0)
        WorkerPool.shared.forEach(count, workers: workers, inRuns: inRuns) { worker, index in
            guard (0..<Swift.max(workers, 1)).contains(worker) else {
                outOfRange.wrappingAdd(1, ordering: .relaxed)
                return true
            }
            if busy[worker].wrappingAdd(1, ordering: .acquiringAndReleasing).oldValue != 0 {
                overlaps.wrappingAdd(1, ordering: .relaxed)
            }
            used[worker].store(1, ordering: .relaxed)
            var sink = index
            for step in 0..<work { sink = sink &* 31 &+ step }
            if sink == -1 { print(sink) }
            runs[index].wrappingAdd(1, ordering: .relaxed)
            busy[worker].wrappingSubtract(1, ordering: .acquiringAndReleasing)
            return true
        } finish: { worker in
            finished[worker].wrappingAdd(1, ordering: .relaxed)
        }
        #expect(outOfRange.load(ordering: .relaxed) == 0)
        #expect(overlaps.load(ordering: .relaxed) == 0, "two bodies of one worker at once")
        let missed = (0..<count).filter { runs[$0].load(ordering: .relaxed) != 1 }
        #expect(missed.isEmpty, "indices not run exactly once: \(missed.prefix(10)) (count \(count), workers \(workers))")
        let distinct = (0..<Swift.max(workers, 1)).filter { used[$0].load(ordering: .relaxed) == 1 }
        // The caller and every thread that ran an item finished once; a helper that joined
        // too late for an item finishes once too, and none finishes twice.
        for worker in 0..<Swift.max(workers, 1) {
            let times = finished[worker].load(ordering: .relaxed)
            let least = distinct.contains(worker) || worker == 0 ? 1 : 0
            #expect((least...1).contains(times), "worker \(worker) finished \(times) times")
        }
        return distinct.count
    }

    @Test(arguments: [false, true])
    func everyIndexOnce(inRuns: Bool) {
        for workers in [1, 2, 3, 4, 64] {
            for count in [0, 1, 2, 3, 7, 100, 1000] {
                Self.check(count, workers: workers, work: 200, inRuns: inRuns)
            }
        }
    }

    /// Back to back, as a host calling in a loop does: the helpers are awake between calls.
    @Test func manyCallsInARow() {
        for call in 0..<2000 { Self.check(1 + call % 17, workers: 2, inRuns: call % 2 == 1) }
    }

    /// In runs, each thread takes consecutive indices, a share of those left at a time: a
    /// few dozen runs for 10,000 indices over 2 threads, whoever takes them (one at a time
    /// alternately would be thousands), and every index once.
    @Test func runsAreConsecutive() {
        for _ in 0..<20 {
            let count = 10_000, workers = 2
            let last = UnsafeMutablePointer<Atomic<Int>>.allocate(capacity: workers)
            for i in 0..<workers { (last + i).initialize(to: Atomic(-2)) }
            defer { last.deallocate() }
            let runs = Atomic<Int>(0)
            WorkerPool.shared.forEach(count, workers: workers, inRuns: true) { worker, index in
                var sink = index
                for step in 0..<2000 { sink = sink &* 31 &+ step }
                if sink == -1 { print(sink) }
                if last[worker].exchange(index, ordering: .relaxed) != index - 1 { runs.wrappingAdd(1, ordering: .relaxed) }
                return true
            }
            // A quarter of those left per run (at least 1): 33 runs at most, fewer where one
            // thread takes two in a row.
            #expect((1...33).contains(runs.load(ordering: .relaxed)), "\(runs.load(ordering: .relaxed)) runs")
        }
        Self.check(10_000, workers: 2, work: 50, inRuns: true)
    }

    /// With more than one CPU and items that take a while, a helper takes part. (One CPU: the
    /// pool starts no helper, and the caller does everything, which `check` covers.)
    @Test(arguments: [false, true])
    func helpersTakePart(inRuns: Bool) {
        guard sysconf(Int32(_SC_NPROCESSORS_ONLN)) > 1 else { return }
        var most = 0
        for _ in 0..<50 where most < 2 { most = Swift.max(most, Self.check(64, workers: 2, work: 200_000, inRuns: inRuns)) }
        #expect(most == 2, "no helper ran an item in 50 calls of 64 long items")
    }

    /// A body that returns false stops its thread taking more: the caller alone (workers 1)
    /// stops at once; with helpers, each stops after its current item.
    @Test func stopStops() {
        let ran = Atomic<Int>(0)
        WorkerPool.shared.forEach(100, workers: 1) { _, index in
            ran.wrappingAdd(1, ordering: .relaxed)
            return index < 4
        }
        #expect(ran.load(ordering: .relaxed) == 5)
        for inRuns in [false, true] {
            let ranThreaded = Atomic<Int>(0)
            WorkerPool.shared.forEach(10_000, workers: 4, inRuns: inRuns) { _, _ in
                ranThreaded.wrappingAdd(1, ordering: .relaxed)
                return false
            }
            #expect((1...4).contains(ranThreaded.load(ordering: .relaxed)))
        }
    }

    /// Calls from several threads at once: one has the helpers, the others run alone, and all
    /// of them run every index once.
    @Test func callsFromManyThreads() {
        let threads = 6
        final class Box: @unchecked Sendable {
            let failures: UnsafeMutablePointer<Atomic<Int>>
            init(_ failures: UnsafeMutablePointer<Atomic<Int>>) { self.failures = failures }
        }
        let counter = UnsafeMutablePointer<Atomic<Int>>.allocate(capacity: 1)
        counter.initialize(to: Atomic(0))
        defer { counter.deallocate() }
        var ids = [pthread_t](repeating: pthread_t(), count: threads)
        for t in 0..<threads {
            let box = Unmanaged.passRetained(Box(counter))
            let code = pthread_create(&ids[t], nil, { raw in
                let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
                for call in 0..<200 {
                    let count = 1 + call % 50
                    let hits = UnsafeMutablePointer<Atomic<Int>>.allocate(capacity: count)
                    for i in 0..<count { (hits + i).initialize(to: Atomic(0)) }
                    WorkerPool.shared.forEach(count, workers: 3) { _, index in
                        hits[index].wrappingAdd(1, ordering: .relaxed)
                        return true
                    }
                    if (0..<count).contains(where: { hits[$0].load(ordering: .relaxed) != 1 }) {
                        box.failures.pointee.wrappingAdd(1, ordering: .relaxed)
                    }
                    hits.deallocate()
                }
                return nil
            }, box.toOpaque())
            #expect(code == 0)
        }
        for id in ids { pthread_join(id, nil) }
        #expect(counter.pointee.load(ordering: .relaxed) == 0, "calls that missed or repeated an index")
    }
}
