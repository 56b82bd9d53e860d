import CTidepool
import Dispatch
import Logging
import Synchronization
import Testing
import TidepoolClient
import TidepoolSync
import TidepoolCore
import TidepoolEndpoint
import TidepoolProtocol
import TidepoolServer
import TidepoolSharedMemory

#if canImport(Glibc)
import Glibc
#endif

/// A PoolServer on a private ipc endpoint, run on its own thread for one test.
final class RunningServer: @unchecked Sendable {
    let server: PoolServer
    let endpoint: String
    private let stopped = DispatchSemaphore(value: 0)

    init(endpoint: String? = nil, maxInflight: Int = 64, maxJobBytes: Int = 1 << 30, jobGate: (@Sendable () -> Void)? = nil,
         logger: Logger? = nil, configure: (inout ServerConfiguration) -> Void = { _ in }) throws {
        let directory = "/tmp/tidepool-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        self.endpoint = endpoint ?? "ipc://\(directory)/tidepool.sock"
        var quiet = Logger(label: "test")
        quiet.logLevel = .critical
        let logger = logger ?? quiet
        var configuration = ServerConfiguration(endpoints: [self.endpoint], threads: 2, maxInflight: maxInflight, maxJobBytes: maxJobBytes)
        configuration.jobGate = jobGate
        configure(&configuration)
        server = try PoolServer(configuration: configuration, logger: logger)
        let thread = Thread { [server, stopped] in
            try? server.run()
            stopped.signal()
        }
        thread.start()
    }

    func stop() {
        server.requestShutdown()
        stopped.wait()
    }
}

/// Minimal thread wrapper (no Foundation).
final class Thread {
    private let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
    func start() {
        let box = Unmanaged.passRetained(self)
        var thread = pthread_t()
        pthread_create(&thread, nil, { raw in
            let me = Unmanaged<Thread>.fromOpaque(raw!).takeRetainedValue()
            me.body()
            return nil
        }, box.toOpaque())
        pthread_detach(thread)
    }
}

func fill(_ pointer: UnsafeMutableRawPointer, count: Int, seed: Int) {
    let floats = pointer.assumingMemoryBound(to: Float.self)
    for i in 0..<count { floats[i] = Float((i * 7919 + seed) % 1000) / 100 - 5 }
}

@Suite(.serialized) struct ServerTests {
    @Test func inlineAndSharedMemoryJobsEqualInProcess() throws {
        let running = try RunningServer()
        defer { running.stop() }
        let client = try PoolClient(endpoint: running.endpoint, timeoutMs: 30_000)
        defer { client.close() }
        #expect(try client.ping() > 0)

        let desc = PoolDescriptor(kind: .average, kernelSize: [3, 3, 2], stride: [1, 2, 2], padding: [1, 1, 0])
        let shape = [2, 6, 8, 10, 3]
        let count = shape.reduce(1, *)
        let outShape = try desc.outputShape(inputShape: shape)
        let outCount = outShape.reduce(1, *)
        var local = [Float](repeating: 0, count: count)
        local.withUnsafeMutableBytes { fill($0.baseAddress!, count: count, seed: 1) }
        var expected = [Float](repeating: 0, count: outCount)
        try local.withUnsafeBytes { input in
            try expected.withUnsafeMutableBytes { output in
                try PoolEngine.shared.pool(desc, input: TensorView(data: input.baseAddress, dtype: .float32, shape: shape),
                                           output: OutputView(data: output.baseAddress, dtype: .float32, shape: outShape))
            }
        }
        // Inline: the tensors travel in the messages.
        var remote = [Float](repeating: 0, count: outCount)
        try local.withUnsafeBytes { input in
            try remote.withUnsafeMutableBytes { output in
                try client.pool(desc, input: TensorView(data: input.baseAddress, dtype: .float32, shape: shape),
                                output: OutputView(data: output.baseAddress, dtype: .float32, shape: outShape))
            }
        }
        #expect(remote == expected)

        // Shared memory: both tensors in registered buffers, nothing copied.
        let inputBuffer = try client.allocate(bytes: count * 4)
        let outputBuffer = try client.allocate(bytes: outCount * 4)
        fill(inputBuffer.data, count: count, seed: 1)
        try client.pool(desc, input: TensorView(data: inputBuffer.data, dtype: .float32, shape: shape),
                        output: OutputView(data: outputBuffer.data, dtype: .float32, shape: outShape))
        let shared = Array(UnsafeBufferPointer(start: outputBuffer.data.assumingMemoryBound(to: Float.self), count: outCount))
        #expect(shared == expected)
        let stats = try client.stats()
        #expect(stats.contains("\"jobs_completed\": 2"))
        #expect(stats.contains("\"regions\": 3"))  // two buffers and the page of done words
        inputBuffer.free()
        outputBuffer.free()
    }

    @Test func errorsNameTheField() throws {
        let running = try RunningServer(maxJobBytes: 4096)
        defer { running.stop() }
        let client = try PoolClient(endpoint: running.endpoint, timeoutMs: 30_000)
        defer { client.close() }
        let desc = PoolDescriptor(kind: .max, kernelSize: [2])
        var input = [Float](repeating: 1, count: 2048), output = [Float](repeating: 0, count: 1024)
        do {
            try input.withUnsafeBytes { i in
                try output.withUnsafeMutableBytes { o in
                    try client.pool(desc, input: TensorView(data: i.baseAddress, dtype: .float32, shape: [1, 2048, 1]),
                                    output: OutputView(data: o.baseAddress, dtype: .float32, shape: [1, 1024, 1]))
                }
            }
            Issue.record("a job over --max-job-bytes succeeded")
        } catch let error as PoolError {
            #expect(error.status == TP_ERR_TOO_LARGE)
            #expect(error.message.contains("--max-job-bytes 4096"))
        }
        #expect(try client.ping() > 0)
    }

    /// A job big enough to leave the socket thread: 64 x 64 outputs of a 3 x 3 window.
    struct HeldJob {
        let desc = PoolDescriptor(kind: .average, kernelSize: [3, 3], stride: [1, 1], padding: [1, 1])
        var input = [Float](repeating: 1, count: 64 * 64)
        var output = [Float](repeating: 0, count: 64 * 64)

        mutating func submit(_ client: PoolClient) throws -> UInt64 {
            try input.withUnsafeBytes { i in
                try output.withUnsafeMutableBytes { o in
                    try client.submit(desc, input: TensorView(data: i.baseAddress, dtype: .float32, shape: [1, 64, 64, 1]),
                                      output: OutputView(data: o.baseAddress, dtype: .float32, shape: [1, 64, 64, 1]))
                }
            }
        }
    }

    /// The leader runs the jobs it takes; a request queued behind one (here sent with it, so
    /// it raises no new edge on ZMQ_FD) must make it hand the lead over, not wait for the job.
    @Test func requestBehindARunningJobIsAnsweredFirst() throws {
        let running = try RunningServer()
        defer { running.stop() }
        let client = try PoolClient(endpoint: running.endpoint, timeoutMs: 60000)
        defer { client.close() }
        let desc = PoolDescriptor(kind: .average, kernelSize: [5, 5, 5], stride: [1, 1, 1], padding: [2, 2, 2])
        let shape = [2, 64, 64, 64, 8]
        let count = shape.reduce(1, *)
        let input = try client.allocate(bytes: count * 4), output = try client.allocate(bytes: count * 4)
        defer { input.free(); output.free() }
        fill(input.data, count: count, seed: 3)
        let started = monotonicSeconds()
        let job = try client.submit(desc, input: TensorView(data: input.data, dtype: .float32, shape: shape),
                                    output: OutputView(data: output.data, dtype: .float32, shape: shape))
        #expect(try client.ping() > 0)
        let pinged = monotonicSeconds()
        do {
            try client.wait(job, timeoutMs: 0)
            Issue.record("the ping was answered only after the job (\(pinged - started) s)")
            return
        } catch let error as PoolError {
            #expect(error.status == TP_ERR_TIMEOUT)
        }
        try client.wait(job)
        let finished = monotonicSeconds()
        // The margin that makes this test meaningful: the job took far longer than the ping.
        #expect(finished - pinged > 10 * (pinged - started), "job \(finished - started) s, ping \(pinged - started) s")
        #expect(output.data.load(fromByteOffset: 4 * 1000, as: Float.self).isFinite)
    }

    /// Jobs whose tensors are all in shared memory end on their done word: several in flight
    /// waited for out of order, a timeout that leaves the job waitable, a refusal (word 2)
    /// reported with the reply's message.
    @Test func doneWordsEndJobsAndCarryFailures() throws {
        let entered = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let gateOn = Atomic<Bool>(false)
        let running = try RunningServer(maxInflight: 4, jobGate: {
            if gateOn.load(ordering: .sequentiallyConsistent) { entered.signal(); release.wait() }
        })
        defer { running.stop() }
        let client = try PoolClient(endpoint: running.endpoint, timeoutMs: 30_000)
        defer { client.close() }
        let desc = PoolDescriptor(kind: .max, kernelSize: [2, 2], stride: [2, 2])
        let shape = [1, 16, 16, 2], outShape = [1, 8, 8, 2]
        let input = try client.allocate(bytes: 16 * 16 * 2 * 4)
        defer { input.free() }
        fill(input.data, count: 16 * 16 * 2, seed: 5)
        var expected = [Float](repeating: 0, count: 128)
        try expected.withUnsafeMutableBytes { out in
            try PoolEngine.shared.pool(desc, input: TensorView(data: input.data, dtype: .float32, shape: shape),
                                       output: OutputView(data: out.baseAddress, dtype: .float32, shape: outShape))
        }
        let outputs = try (0..<6).map { _ in try client.allocate(bytes: 128 * 4) }
        defer { outputs.forEach { $0.free() } }
        func submit(_ output: SharedBuffer) throws -> UInt64 {
            memset(output.data, 0, 128 * 4)
            return try client.submit(desc, input: TensorView(data: input.data, dtype: .float32, shape: shape),
                                     output: OutputView(data: output.data, dtype: .float32, shape: outShape))
        }
        func result(_ output: SharedBuffer) -> [Float] {
            Array(UnsafeBufferPointer(start: output.data.assumingMemoryBound(to: Float.self), count: 128))
        }
        let jobs = try outputs.prefix(4).map(submit)
        for (job, output) in zip(jobs, outputs).reversed() {
            try client.wait(job)
            #expect(result(output) == expected)
        }

        gateOn.store(true, ordering: .sequentiallyConsistent)
        let held = try submit(outputs[0])
        entered.wait()
        do {
            try client.wait(held, timeoutMs: 20)
            Issue.record("a held job ended")
        } catch let error as PoolError {
            #expect(error.status == TP_ERR_TIMEOUT)
        }
        // Fill the daemon: three more held jobs, then one refused.
        let more = try outputs[1..<4].map(submit)
        for _ in more { entered.wait() }
        do {
            try client.wait(try submit(outputs[4]))
            Issue.record("a job beyond --max-inflight was accepted")
        } catch let error as PoolError {
            #expect(error.status == TP_ERR_BUSY)
            #expect(error.message.contains("--max-inflight 4"))
        }
        gateOn.store(false, ordering: .sequentiallyConsistent)
        for _ in 0..<4 { release.signal() }
        for (job, output) in zip([held] + more, outputs) {
            try client.wait(job)
            #expect(result(output) == expected)
        }
        try client.wait(try submit(outputs[5]))
        #expect(result(outputs[5]) == expected)
    }

    @Test func busyWhenMaxInflightIsReached() throws {
        let entered = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let running = try RunningServer(maxInflight: 1, jobGate: { entered.signal(); release.wait() })
        defer { running.stop() }
        let client = try PoolClient(endpoint: running.endpoint, timeoutMs: 30_000)
        defer { client.close() }
        var first = HeldJob(), second = HeldJob()
        let held = try first.submit(client)
        entered.wait()  // the first job now occupies the only slot
        do {
            try client.wait(try second.submit(client))
            Issue.record("a job beyond --max-inflight was accepted")
        } catch let error as PoolError {
            #expect(error.status == TP_ERR_BUSY)
            #expect(error.message.contains("--max-inflight 1"))
        }
        release.signal()
        try client.wait(held)
        #expect(first.output[65] == 1)
        #expect(try client.stats().contains("\"busy_rejections\": 1"))
    }

    @Test func shutdownAnswersJobsInFlightAndRefusesNewOnes() throws {
        let entered = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let running = try RunningServer(jobGate: { entered.signal(); release.wait() })
        let client = try PoolClient(endpoint: running.endpoint, timeoutMs: 30_000)
        defer { client.close() }
        var job = HeldJob(), late = HeldJob()
        let held = try job.submit(client)
        entered.wait()
        running.server.requestShutdown()
        do {
            try client.wait(try late.submit(client))
            Issue.record("a job sent during shutdown was accepted")
        } catch let error as PoolError {
            #expect(error.status == TP_ERR_CLOSED)
        }
        release.signal()
        try client.wait(held)
        #expect(job.output[65] == 1)
        running.stop()
    }

    @Test func tcpWithoutHostBindsLoopback() {
        #expect(Endpoint.bindAddress("tcp://:5555") == "tcp://127.0.0.1:5555")
        #expect(Endpoint.bindAddress("tcp://5555") == "tcp://127.0.0.1:5555")
        #expect(Endpoint.bindAddress("tcp://*:5555") == "tcp://*:5555")
        #expect(Endpoint.bindAddress("tcp://10.1.2.3:5555") == "tcp://10.1.2.3:5555")
        #expect(Endpoint.bindAddress("ipc:///tmp/x.sock") == "ipc:///tmp/x.sock")
    }

    @Test func defaultEndpointFollowsTheEnvironment() {
        let saved = (getenv("TIDEPOOL_ENDPOINT").map { String(cString: $0) }, getenv("XDG_RUNTIME_DIR").map { String(cString: $0) })
        defer {
            if let value = saved.0 { setenv("TIDEPOOL_ENDPOINT", value, 1) } else { unsetenv("TIDEPOOL_ENDPOINT") }
            if let value = saved.1 { setenv("XDG_RUNTIME_DIR", value, 1) } else { unsetenv("XDG_RUNTIME_DIR") }
        }
        unsetenv("TIDEPOOL_ENDPOINT")
        unsetenv("XDG_RUNTIME_DIR")
        #expect(Endpoint.defaultEndpoint() == "ipc:///tmp/tidepool-\(getuid())/tidepool.sock")
        setenv("XDG_RUNTIME_DIR", "/run/user/7", 1)
        #expect(Endpoint.defaultEndpoint() == "ipc:///run/user/7/tidepool.sock")
        setenv("TIDEPOOL_ENDPOINT", "tcp://127.0.0.1:9", 1)
        #expect(Endpoint.defaultEndpoint() == "tcp://127.0.0.1:9")
    }

    @Test func unreachableEndpoint() {
        #expect(throws: PoolError.self) { try PoolClient(endpoint: "ipc:///tmp/nonexistent-tidepool/x.sock", timeoutMs: 100) }
    }
}
