import CTidepool
import Logging
import Testing
import TidepoolCore
import TidepoolProtocol
import TidepoolServer
import TidepoolSharedMemory
import TidepoolSync
import TidepoolZMQ

#if canImport(Glibc)
import Glibc
#endif

/// A RequestHandler driven directly: the daemon's decisions, without a socket or threads.
final class HandlerHarness {
    let handler: RequestHandler
    let me = Peer.local(uid: geteuid(), gid: getegid(), pid: getpid())
    var nextID: UInt64 = 100

    init(maxInflight: Int = 8, maxJobBytes: Int = 1 << 20, maxQueuedBytes: Int? = nil, logger given: Logger? = nil) {
        var logger = given ?? Logger(label: "test")
        if given == nil { logger.logLevel = .critical }
        let configuration = ServerConfiguration(endpoints: ["ipc:///nonexistent/x.sock"], threads: 1, maxInflight: maxInflight,
                                                maxJobBytes: maxJobBytes, maxQueuedBytes: maxQueuedBytes)
        handler = RequestHandler(configuration: configuration, logger: logger, engine: PoolEngine(threads: 1))
    }

    func id() -> UInt64 {
        nextID += 1
        return nextID
    }

    func send(_ frames: [[UInt8]], key: [UInt8] = [1, 2, 3], peer: Peer? = nil) -> RequestHandler.Outcome {
        handler.handle(key: key, peer: peer ?? me, envelope: [ZMQFrame(key)], frames: frames.map(ZMQFrame.init), draining: false)
    }

    /// The reply of an outcome that must be one: (status, message, frame 0).
    func reply(_ outcome: RequestHandler.Outcome, sourceLocation: SourceLocation = #_sourceLocation) -> (tp_status, String, [UInt8]) {
        guard case .reply(let frames) = outcome else {
            Issue.record("expected a reply, got \(outcome)", sourceLocation: sourceLocation)
            return (TP_ERR_INTERNAL, "", [])
        }
        let decoded = try! DecodedReply.decode(frames[0].bytes, frame1: frames.count > 1 ? frames[1].bytes : nil)
        return (decoded.status, decoded.message, frames[0].array)
    }

    /// Runs an admitted job to its end, as the server does, and returns its reply.
    func run(_ outcome: RequestHandler.Outcome, sourceLocation: SourceLocation = #_sourceLocation) -> (tp_status, String) {
        guard case .run(let job) = outcome else {
            Issue.record("expected a job, got \(outcome)", sourceLocation: sourceLocation)
            return (TP_ERR_INTERNAL, "")
        }
        let completion = job.run()
        handler.jobEnded(job, completion)
        let frames = handler.finish(completion)
        let decoded = try! DecodedReply.decode(frames[0].bytes, frame1: frames.count > 1 ? frames[1].bytes : nil)
        return (decoded.status, decoded.message)
    }

    func register(_ region: SharedRegion, key: [UInt8] = [1, 2, 3], peer: Peer? = nil, pid: Int32 = getpid()) -> RequestHandler.Outcome {
        send(RegisterRequest(id: id(), size: region.size, pid: pid, name: region.name).encode(), key: key, peer: peer)
    }

    func registeredID(_ region: SharedRegion, key: [UInt8] = [1, 2, 3]) -> UInt64 {
        let (status, message, frame) = reply(register(region, key: key))
        #expect(status == TP_OK, "\(message)")
        return frame.withUnsafeBytes { ByteReader.value(UInt64.self, in: $0, at: Wire.headerSize) }
    }

    /// A max pooling of 16 float32 into 8 (kernel 2), both tensors in `region`.
    func poolInRegion(_ region: UInt64, id: UInt64, resubmitted: Bool = false, doneWord: DoneWord? = nil) -> [[UInt8]] {
        [PoolRequest(id: id, descriptor: PoolDescriptor(kind: .max, kernelSize: [2]), dtype: .float32, inputShape: [1, 16, 1],
                     input: TensorReference(placement: .region(id: region, offset: 0), bytes: 64),
                     output: TensorReference(placement: .region(id: region, offset: 64), bytes: 32),
                     doneWord: doneWord, resubmitted: resubmitted).encode()]
    }

    /// An inline average pooling of `count` float32 with kernel 1: an output of 4 x count bytes.
    func poolInline(count: Int, id: UInt64) -> [[UInt8]] {
        [PoolRequest(id: id, descriptor: PoolDescriptor(kind: .average, kernelSize: [1]), dtype: .float32,
                     inputShape: [1, count, 1], input: TensorReference(placement: .inline, bytes: 4 * count),
                     output: TensorReference(placement: .inline, bytes: 4 * count)).encode(),
         [UInt8](repeating: 0, count: 4 * count)]
    }
}

/// A shared-memory object of this process, created as a client would, removed at the end.
func makeRegion(_ size: Int = 4096) throws -> SharedRegion {
    let region = try SharedRegion.create(size: size)
    return region
}

@Suite struct HandlerTests {
    /// Over tcp nobody can be proven to own an object: REGISTER is refused, whoever asks.
    @Test func registerOverTcpIsRefused() throws {
        let h = HandlerHarness()
        let region = try makeRegion()
        defer { SharedRegion.unlink(name: region.name) }
        let (status, message, _) = h.reply(h.register(region, peer: .remote(address: "127.0.0.1")))
        #expect(status == TP_ERR_PERMISSION)
        #expect(message.contains("only over ipc"), "\(message)")
        let (unknown, _, _) = h.reply(h.register(region, peer: .unknown))
        #expect(unknown == TP_ERR_PERMISSION)
        #expect(h.handler.regionCount == 0)
    }

    /// The pid in a REGISTER must be the connection's own process, as the kernel says.
    @Test func registerClaimingAnotherPidIsRefused() throws {
        let h = HandlerHarness()
        let region = try makeRegion()
        defer { SharedRegion.unlink(name: region.name) }
        let (status, message, _) = h.reply(h.register(region, pid: 1))
        #expect(status == TP_ERR_PERMISSION)
        #expect(message.contains("says pid 1 but the connection belongs to process \(getpid())"), "\(message)")
    }

    /// Another user's object is refused even to a root daemon; the owner's own registration
    /// works and the object is left as it was (not unlinked, not written).
    @Test(.enabled(if: geteuid() == 0, "needs root to give an object to another uid"))
    func anotherUsersObjectIsRefused() throws {
        let h = HandlerHarness()
        let region = try makeRegion()
        defer { SharedRegion.unlink(name: region.name) }
        region.base.storeBytes(of: 0x1234_5678, as: UInt32.self)
        #expect(chown("/dev/shm" + region.name, 65534, 65534) == 0)
        let (status, message, _) = h.reply(h.register(region))
        #expect(status == TP_ERR_PERMISSION)
        #expect(message.contains("belongs to uid 65534, but the process registering it runs as uid 0"), "\(message)")
        #expect(access("/dev/shm" + region.name, F_OK) == 0, "a refused object must stay where it is")
        // Uid 65534 asking for its own object: a root daemon maps it for that user.
        let owner = Peer.local(uid: 65534, gid: 65534, pid: getpid())
        let (ownStatus, ownMessage, _) = h.reply(h.register(region, key: [9], peer: owner))
        #expect(ownStatus == TP_OK, "\(ownMessage)")
        #expect(region.base.load(as: UInt32.self) == 0x1234_5678)
    }

    /// A region id of an earlier daemon is refused as such, never taken for a new region.
    @Test func regionIdsOfAnotherInstanceAreRecognised() throws {
        let before = HandlerHarness(), after = HandlerHarness()
        #expect(before.handler.instance != after.handler.instance)
        let region = try makeRegion()
        defer { SharedRegion.unlink(name: region.name) }
        let old = before.registeredID(region)
        let new = after.registeredID(region)
        #expect(old != new)
        #expect(RegionID.instanceTag(old) != RegionID.instanceTag(new))
        let (status, message, _) = after.reply(after.send(after.poolInRegion(old, id: after.id())))
        #expect(status == TP_ERR_NOT_FOUND)
        #expect(message.contains("another daemon instance (the daemon restarted)"), "\(message)")
        // The done word of an old id is not written either.
        region.base.storeBytes(of: 0, toByteOffset: 96, as: UInt32.self)
        let (wordStatus, _, _) = after.reply(after.send(after.poolInRegion(new, id: after.id(), doneWord: DoneWord(region: old, offset: 96))))
        #expect(wordStatus == TP_ERR_NOT_FOUND)
        #expect(region.base.load(fromByteOffset: 96, as: UInt32.self) == 0)
    }

    /// A resubmitted job that is running is not run again; one that ended is answered from
    /// memory; a plain request with a reused id runs.
    @Test func resubmissionsAreNotRunTwice() throws {
        let h = HandlerHarness()
        let region = try makeRegion()
        defer { SharedRegion.unlink(name: region.name) }
        let id = h.registeredID(region)
        let running = h.send(h.poolInRegion(id, id: 7))
        guard case .run = running else {
            Issue.record("the job was not admitted")
            return
        }
        guard case .none = h.send(h.poolInRegion(id, id: 7, resubmitted: true)) else {
            Issue.record("a resubmission of a running job was answered or run")
            return
        }
        #expect(h.run(running).0 == TP_OK)
        let (again, _, _) = h.reply(h.send(h.poolInRegion(id, id: 7, resubmitted: true)))
        #expect(again == TP_OK)
        #expect(h.handler.inflight == 0)
        if case .run(let job) = h.send(h.poolInRegion(id, id: 7)) {
            _ = h.run(.run(job))
        } else {
            Issue.record("a fresh request with an old id was not run")
        }
    }

    /// Inline outputs held for a client are bounded: past half of --max-queued-bytes, BUSY
    /// with the reason; once the replies are gone (sent or dropped), jobs are admitted again.
    @Test func queuedReplyBytesAreBounded() throws {
        let h = HandlerHarness(maxInflight: 64, maxJobBytes: 8192, maxQueuedBytes: 16384)
        var replies: [[ZMQFrame]] = []
        for _ in 0..<2 {
            guard case .run(let job) = h.send(h.poolInline(count: 1024, id: h.id())) else {
                Issue.record("an inline job within the bound was refused")
                return
            }
            let completion = job.run()
            h.handler.jobEnded(job, completion)
            replies.append(h.handler.finish(completion))  // held, as unread replies in libzmq
        }
        let (status, message, _) = h.reply(h.send(h.poolInline(count: 1024, id: h.id())))
        #expect(status == TP_ERR_BUSY)
        #expect(message.contains("--max-queued-bytes 16384"), "\(message)")
        // Another client still has its half.
        guard case .run(let other) = h.send(h.poolInline(count: 1024, id: h.id()), key: [7, 7]) else {
            Issue.record("one client's unread replies blocked another")
            return
        }
        _ = h.run(.run(other))
        replies.removeAll()  // libzmq frees the frames once sent
        guard case .run(let job) = h.send(h.poolInline(count: 1024, id: h.id())) else {
            Issue.record("the bound did not come back once the replies were gone")
            return
        }
        _ = h.run(.run(job))
    }

    /// BYE cancels the client's jobs: one still to run ends at once with CLOSED.
    @Test func byeCancelsJobs() throws {
        let h = HandlerHarness()
        let region = try makeRegion()
        defer { SharedRegion.unlink(name: region.name) }
        let id = h.registeredID(region)
        let admitted = h.send(h.poolInRegion(id, id: 11))
        #expect(h.reply(h.send([Request.bare(.bye, id: 12)])).0 == TP_OK)
        #expect(h.handler.regionCount == 0)
        let (status, message) = h.run(admitted)
        #expect(status == TP_ERR_CLOSED, "\(message)")
    }

    /// A routing id that another process now uses does not bring the first one's regions.
    @Test func regionsBelongToTheProcessThatRegistered() throws {
        let h = HandlerHarness()
        let region = try makeRegion()
        defer { SharedRegion.unlink(name: region.name) }
        let id = h.registeredID(region)
        let other = Peer.local(uid: geteuid(), gid: getegid(), pid: getppid())
        let (status, _, _) = h.reply(h.send(h.poolInRegion(id, id: h.id()), peer: other))
        #expect(status == TP_ERR_NOT_FOUND)
        #expect(h.handler.regionCount == 0)
    }

    /// Issue 13's four one-message crashes, sent to the handler with a region registered: each
    /// is answered with its status.
    @Test func theFourReproducersAreAnswered() throws {
        let h = HandlerHarness(maxJobBytes: 1 << 30)
        let region = try makeRegion(1 << 16)
        defer { SharedRegion.unlink(name: region.name) }
        let id = h.registeredID(region)
        func pool(kernel: Int, stride: Int, shape: [Int], input: TensorReference, output: TensorReference, word: DoneWord? = nil) -> [[UInt8]] {
            var frame = PoolRequest(id: 1, descriptor: PoolDescriptor(kind: .average, kernelSize: [kernel], stride: [stride]),
                                    dtype: .float32, inputShape: shape, input: input, output: output, doneWord: word).encode()
            if case .inline = input.placement { return [frame, [UInt8](repeating: 0, count: input.bytes)] }
            frame = Array(frame)
            return [frame]
        }
        // 1: kernel 2^62 + 1, stride 2^62, shape (1, 1, 1): an empty output, computed.
        let first = h.send(pool(kernel: (1 << 62) + 1, stride: 1 << 62, shape: [1, 1, 1],
                                input: TensorReference(placement: .inline, bytes: 4), output: TensorReference(placement: .inline, bytes: 0)))
        #expect(h.run(first).0 == TP_OK)
        // 2: stride 2^62 with 3 channels: one window, computed.
        let outcome = h.send(pool(kernel: 2, stride: 1 << 62, shape: [1, 4, 3], input: TensorReference(placement: .inline, bytes: 48),
                                  output: TensorReference(placement: .inline, bytes: 12)))
        #expect(h.run(outcome).0 == TP_OK)
        // 3: input and output in one region, output offset 2^63 - 4.
        let (s3, m3, _) = h.reply(h.send(pool(kernel: 2, stride: 2, shape: [1, 4, 1],
                                               input: TensorReference(placement: .region(id: id, offset: 0), bytes: 16),
                                               output: TensorReference(placement: .region(id: id, offset: Int.max - 3), bytes: 8))))
        #expect(s3 == TP_ERR_OVERFLOW, "\(m3)")
        // 4: input offset 2^63 - 4, the done word in the same region.
        let (s4, m4, _) = h.reply(h.send(pool(kernel: 2, stride: 2, shape: [1, 4, 1],
                                               input: TensorReference(placement: .region(id: id, offset: Int.max - 3), bytes: 16),
                                               output: TensorReference(placement: .region(id: id, offset: 64), bytes: 8),
                                               word: DoneWord(region: id, offset: 128))))
        #expect(s4 == TP_ERR_OVERFLOW, "\(m4)")
    }
}

extension HandlerTests {
    /// Anyone can create files in /dev/shm: a FIFO or a link under a Tidepool name is refused
    /// at once, never waited on or followed.
    @Test func plantedFilesAreRefused() throws {
        let h = HandlerHarness()
        let fifo = "/tidepool-\(getpid())-planted-fifo", link = "/tidepool-\(getpid())-planted-link"
        #expect(mkfifo("/dev/shm" + fifo, 0o600) == 0)
        defer { unlink("/dev/shm" + fifo) }
        let (status, message, _) = h.reply(h.send(RegisterRequest(id: 1, size: 4096, pid: getpid(), name: fifo).encode()))
        #expect(status == TP_ERR_PERMISSION, "\(message)")
        #expect(message.contains("not a regular shared-memory object"), "\(message)")
        let region = try makeRegion()
        defer { SharedRegion.unlink(name: region.name) }
        #expect(symlink("/dev/shm" + region.name, "/dev/shm" + link) == 0)
        defer { unlink("/dev/shm" + link) }
        let (linked, linkMessage, _) = h.reply(h.send(RegisterRequest(id: 2, size: 4096, pid: getpid(), name: link).encode()))
        #expect(linked == TP_ERR_SYSTEM, "\(linkMessage)")
        #expect(h.handler.regionCount == 0)
    }
}

/// Lines a client can cause are held back past a burst (`LogLimiter`), and counted.
extension HandlerTests {
    @Test func logLimiterHoldsBackAndCounts() {
        let clock = Locked(0.0)
        let limiter = LogLimiter(burst: 3, interval: 10, now: { clock.withLock { $0 } })
        #expect((0..<5).map { _ in limiter.admit("a") } == [0, 0, 0, nil, nil])
        // Kinds are limited apart.
        #expect(limiter.admit("b") == 0)
        clock.withLock { $0 = 9.9 }
        #expect(limiter.admit("a") == nil)
        // A new window: the first line says how many were held back since the last one logged.
        clock.withLock { $0 = 10 }
        #expect(limiter.admit("a") == 3)
        #expect(limiter.admit("a") == 0)
        #expect(limiter.admit("a") == 0)
        #expect(limiter.admit("a") == nil)
        clock.withLock { $0 = 25 }
        #expect(limiter.admit("a") == 1)
    }

    /// A flood of refused requests writes a burst of lines, not one per request; the stats
    /// count every one.
    @Test func refusalFloodsAreHeldBack() throws {
        let lines = Locked<[String]>([])
        var logger = Logger(label: "test") { _ in CapturedLog(lines: lines) }
        logger.logLevel = .info
        let h = HandlerHarness(logger: logger)
        for i in 0..<500 {
            // A PING one byte too long: refused as a protocol error.
            let (status, _, _) = h.reply(h.send([Request.bare(.ping, id: UInt64(i)) + [0]]))
            #expect(status == TP_ERR_PROTOCOL)
        }
        let refused = lines.withLock { $0.filter { $0.contains("request refused") } }
        #expect(refused.count == LogLimiter().burst, "\(refused.count) lines for 500 refusals")
        guard case .reply(let frames) = h.send([Request.bare(.stats, id: 1)]), frames.count == 2 else {
            Issue.record("no STATS reply")
            return
        }
        let json = String(decoding: frames[1].bytes, as: UTF8.self)
        #expect(json.contains("\"protocol_errors\": 500"), "\(json)")
    }
}
