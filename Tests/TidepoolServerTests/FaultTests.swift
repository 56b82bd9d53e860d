import CTidepool
import Dispatch
import Synchronization
import Testing
import TidepoolClient
import TidepoolSync
import TidepoolCore
import TidepoolProtocol
import TidepoolServer

#if canImport(Glibc)
import Glibc
#endif

/// The client across daemon restarts, deaths and timeouts (issue 14). In ServerTests, whose
/// tests run one at a time: these stop and start daemons on one endpoint.
extension ServerTests {
    /// Pools `input` (float32, [1, 16, 16, 2], kernel 2) into `output` through the client.
    func maxPool(_ client: PoolClient, _ input: UnsafeMutableRawPointer, _ output: UnsafeMutableRawPointer) throws {
        try client.pool(PoolDescriptor(kind: .max, kernelSize: [2, 2]),
                        input: TensorView(data: input, dtype: .float32, shape: [1, 16, 16, 2]),
                        output: OutputView(data: output, dtype: .float32, shape: [1, 8, 8, 2]))
    }

    func expectedMaxPool(_ input: UnsafeMutableRawPointer) throws -> [Float] {
        var expected = [Float](repeating: 0, count: 128)
        try expected.withUnsafeMutableBytes { out in
            try PoolEngine.shared.pool(PoolDescriptor(kind: .max, kernelSize: [2, 2]),
                                       input: TensorView(data: input, dtype: .float32, shape: [1, 16, 16, 2]),
                                       output: OutputView(data: out.baseAddress, dtype: .float32, shape: [1, 8, 8, 2]))
        }
        return expected
    }

    func floats(_ pointer: UnsafeMutableRawPointer, _ count: Int) -> [Float] {
        Array(UnsafeBufferPointer(start: pointer.assumingMemoryBound(to: Float.self), count: count))
    }

    /// Issue 14's first scenario: buffers kept across a restart. Jobs on them still work and
    /// pool their own data; a buffer made after the restart does not stand in for an old one,
    /// and no other buffer is written.
    @Test func buffersSurviveADaemonRestart() throws {
        let first = try RunningServer()
        let client = try PoolClient(endpoint: first.endpoint, timeoutMs: 30_000)
        defer { client.close() }
        let a = try client.allocate(bytes: 2048), b = try client.allocate(bytes: 512)
        fill(a.data, count: 512, seed: 1)
        try maxPool(client, a.data, b.data)
        let expectedA = try expectedMaxPool(a.data)
        #expect(floats(b.data, 128) == expectedA)
        let instance = client.daemonInstance
        first.stop()

        let second = try RunningServer(endpoint: first.endpoint)
        defer { second.stop() }
        // A new buffer after the restart, filled with other data.
        let c = try client.allocate(bytes: 2048), d = try client.allocate(bytes: 512)
        fill(c.data, count: 512, seed: 2)
        memset(d.data, 0x55, 512)
        memset(b.data, 0, 512)
        try maxPool(client, a.data, b.data)
        #expect(client.daemonInstance != instance)
        #expect(floats(b.data, 128) == expectedA, "a job on an old buffer pooled another buffer's data")
        // Nothing written where nothing was asked: the first word of every other buffer.
        #expect(d.data.load(as: UInt32.self) == 0x5555_5555)
        try maxPool(client, c.data, d.data)
        #expect(floats(d.data, 128) == (try expectedMaxPool(c.data)))
        for buffer in [a, b, c, d] { buffer.free() }
    }

    /// A daemon that is gone: a waiting call fails with TP_ERR_CONNECTION within the grace
    /// (not its whole timeout), later calls fail at once, and once a daemon is back the same
    /// client works again.
    @Test func aDeadDaemonIsNoticedAndCallsFailFast() throws {
        let first = try RunningServer()
        let endpoint = first.endpoint
        let client = try PoolClient(endpoint: endpoint, timeoutMs: 60_000)
        defer { client.close() }
        #expect(try client.ping() > 0)
        first.stop()
        var started = monotonicSeconds()
        do {
            _ = try client.ping()
            Issue.record("a ping to a stopped daemon succeeded")
        } catch let error as PoolError {
            #expect(error.status == TP_ERR_CONNECTION, "\(error.message)")
        }
        let waited = monotonicSeconds() - started
        #expect(waited < 10, "the call took \(waited) s to notice")
        started = monotonicSeconds()
        #expect(throws: PoolError.self) { _ = try client.ping() }
        #expect(monotonicSeconds() - started < 0.5, "a call after the daemon's death did not fail fast")

        let second = try RunningServer(endpoint: endpoint)
        defer { second.stop() }
        // The link comes back on libzmq's reconnect interval; a call within the grace waits for it.
        let deadline = monotonicSeconds() + 10
        var back = false
        while !back && monotonicSeconds() < deadline {
            back = (try? client.ping()) != nil
        }
        #expect(back, "the client never came back to the restarted daemon")
    }

    /// A synchronous call that times out cancels its job: when the daemon answers late, the
    /// inline output (caller memory, perhaps reused by then) is not written.
    @Test func aTimedOutCallNeverWritesLater() throws {
        let entered = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let running = try RunningServer(jobGate: { entered.signal(); release.wait() })
        defer { running.stop() }
        let client = try PoolClient(endpoint: running.endpoint, timeoutMs: 200)
        defer { client.close() }
        let input = [Float](repeating: 1, count: 512)
        var output = [Float](repeating: -7, count: 128)
        try input.withUnsafeBytes { i in
            try output.withUnsafeMutableBytes { o in
                do {
                    try client.pool(PoolDescriptor(kind: .max, kernelSize: [2, 2]),
                                    input: TensorView(data: i.baseAddress, dtype: .float32, shape: [1, 16, 16, 2]),
                                    output: OutputView(data: o.baseAddress, dtype: .float32, shape: [1, 8, 8, 2]))
                    Issue.record("a held job returned")
                } catch let error as PoolError {
                    #expect(error.status == TP_ERR_TIMEOUT)
                    #expect(error.message.contains("cancelled"))
                }
            }
        }
        entered.wait()
        release.signal()
        // The late reply arrives while the client handles its next request; it must be dropped.
        let stats = try PoolClient(endpoint: running.endpoint, timeoutMs: 30_000)
        let deadline = monotonicSeconds() + 10
        while !(try stats.stats()).contains("\"jobs_completed\": 1") && monotonicSeconds() < deadline {}
        stats.close()
        #expect(try client.ping() > 0)
        #expect(output.allSatisfy { $0 == -7 }, "the reply of a timed-out call was written into the caller's memory")
    }

    /// tp_client_cancel's contract for an async job: after cancel, no inline write; the job id
    /// is no longer pending.
    @Test func cancelEndsAPendingJob() throws {
        let entered = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let running = try RunningServer(jobGate: { entered.signal(); release.wait() })
        defer { running.stop() }
        let client = try PoolClient(endpoint: running.endpoint, timeoutMs: 30_000)
        defer { client.close() }
        var held = HeldJob()
        for index in held.output.indices { held.output[index] = -3 }
        let job = try held.submit(client)
        entered.wait()
        try client.cancel(job)
        #expect(throws: PoolError.self) { try client.wait(job, timeoutMs: 0) }
        release.signal()
        #expect(try client.ping() > 0)
        let deadline = monotonicSeconds() + 10
        while !(try client.stats()).contains("\"jobs_completed\": 1") && monotonicSeconds() < deadline {}
        #expect(try client.ping() > 0)
        #expect(held.output.allSatisfy { $0 == -3 })
    }
}
