// libFuzzer target: the daemon's handling of requests, in process. Each input is a short
// conversation of up to 8 messages from one of three peers (a local process, another local
// process, a tcp peer) to a fresh RequestHandler that has three shared-memory regions
// registered (ids 0x7469_6465_0000_0001 to _0003, sizes 4096, 16384 and 65536), so the
// location, overlap and done-word checks are reached. Admitted jobs run on the spot.
//
// Input: records of [flags u8][frame 0 length u16][frame 1 length u16][frame 0][frame 1]...
//   flags bits 0-1: frames (0: one, 1: two, 2: three, 3: one), bit 2-3: peer, bit 4: draining.
// Checked beyond "no crash, no sanitizer report": every reply decodes as a reply with the
// request's id, no job stays in flight, and the handler holds no more regions than allowed.
// Every input is also parsed as a CurveZMQ certificate (the daemon's other outside input).

import CTidepool
import Logging
import TidepoolCore
import TidepoolProtocol
import TidepoolServer
import TidepoolSharedMemory
import TidepoolZMQ

#if canImport(Glibc)
import Glibc
#endif

let instance: UInt64 = 0x7469_6465_0000_0000  // "tide": region ids 0x74696465_00000001...
let regionSizes = [4096, 16384, 65536]
/// Created at the first input; their names stay in /dev/shm while this process lives and go
/// when it exits normally. (The file is a library under -sanitize=fuzzer: no top-level code.)
let regions: [SharedRegion] = {
    let made = regionSizes.map { try! SharedRegion.create(size: $0) }
    regionNames = made.map(\.name)
    atexit { for name in regionNames { SharedRegion.unlink(name: name) } }
    return made
}()
nonisolated(unsafe) var regionNames: [String] = []
let me = Peer.local(uid: geteuid(), gid: getegid(), pid: getpid())
let peers: [Peer] = [me, .local(uid: geteuid(), gid: getegid(), pid: getppid()), .remote(address: "127.0.0.1"), .unknown]
let engine = PoolEngine(threads: 1)
nonisolated(unsafe) var logger = Logger(label: "fuzz")
let configuration = ServerConfiguration(endpoints: ["ipc:///nonexistent/fuzz.sock"], threads: 1, maxInflight: 4,
                                        maxJobBytes: 1 << 20, maxQueuedBytes: 1 << 21)

func freshHandler() -> RequestHandler {
    logger.logLevel = .critical
    let handler = RequestHandler(configuration: configuration, logger: logger, engine: engine, instance: instance, firstSequence: 1)
    for (index, region) in regions.enumerated() {
        let frames = RegisterRequest(id: UInt64(index), size: region.size, pid: getpid(), name: region.name).encode()
        guard case .reply(let reply) = handler.handle(key: [1], peer: me, envelope: [], frames: frames.map(ZMQFrame.init),
                                                     draining: false),
              // The frames must outlive the pointer into them.
              let decoded = withExtendedLifetime(reply, { try? DecodedReply.decode(reply[0].bytes, frame1: nil) }),
              decoded.status == TP_OK
        else { fatalError("the fuzzer's own regions could not be registered") }
    }
    return handler
}

func checkReply(_ frames: [ZMQFrame], request: [ZMQFrame]) {
    precondition(!frames.isEmpty, "an empty reply")
    guard let decoded = try? DecodedReply.decode(frames[0].bytes, frame1: frames.count > 1 ? frames[1].bytes : nil) else {
        // Only a request whose type could not be read gets a reply of type 0x8000.
        let header = try? Header.read(frames[0].bytes)
        precondition(header?.type == Wire.replyBit && header?.status != 0, "a reply that does not decode")
        return
    }
    if decoded.status != TP_OK { precondition(!decoded.message.isEmpty, "an error reply without a message") }
    if let header = try? Header.read(request[0].bytes), MessageType(rawValue: header.type) != nil {
        precondition(decoded.id == header.id, "a reply with another id")
        precondition(decoded.type.rawValue == header.type, "a reply of another type")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDaemon(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    // The same bytes as a certificate file, which the daemon reads with this parser
    // (--curve-secret-key, every authorized key): two 32-byte keys or a CurveError.
    let text = String(decoding: bytes, as: UTF8.self)
    for secret in [false, true] {
        if let certificate = try? CurveCertificate.parse(text, path: "fuzz", secret: secret) {
            precondition(certificate.publicKey.bytes.count == 32 && (!secret || certificate.secretKey?.bytes.count == 32))
        }
    }
    let handler = freshHandler()
    var offset = 0
    var messages = 0
    while offset + 5 <= bytes.count && messages < 8 {
        messages += 1
        let flags = bytes[offset]
        let length0 = Int(bytes[offset + 1]) | Int(bytes[offset + 2]) << 8
        let length1 = Int(bytes[offset + 3]) | Int(bytes[offset + 4]) << 8
        offset += 5
        let frameCount = [1, 2, 3, 1][Int(flags & 3)]
        var frames: [ZMQFrame] = []
        for index in 0..<frameCount {
            let wanted = index == 0 ? length0 : length1
            let take = Swift.min(wanted, bytes.count - offset)
            frames.append(ZMQFrame(Array(bytes[offset..<(offset + take)])))
            offset += take
        }
        let peer = peers[Int(flags >> 2) & 3]
        switch handler.handle(key: [1], peer: peer, envelope: [], frames: frames, draining: flags & 16 != 0) {
        case .reply(let reply):
            checkReply(reply, request: frames)
        case .run(let job):
            let completion = job.run()
            handler.jobEnded(job, completion)
            checkReply(handler.finish(completion), request: frames)
        case .none:
            break
        }
        precondition(handler.inflight == 0, "a job left in flight")
        precondition(handler.regionCount <= RequestHandler.maxRegions, "too many regions")
    }
    handler.dropAll()
    return 0
}
