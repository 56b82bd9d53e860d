import CTidepool
import TidepoolCore

/// A request as the daemon reads it: the header checked, the frames counted, the body
/// decoded and every field checked that can be checked without the daemon's state.
public enum Request: Sendable {
    case ping(id: UInt64)
    /// POOL or BACKWARD (`PoolRequest.backward` set).
    case pool(PoolRequest)
    case register(RegisterRequest)
    case unregister(id: UInt64, region: UInt64)
    case stats(id: UInt64)
    case bye(id: UInt64)

    public var id: UInt64 {
        switch self {
        case .ping(let id), .stats(let id), .bye(let id), .unregister(let id, _): return id
        case .pool(let request): return request.id
        case .register(let request): return request.id
        }
    }

    public var type: MessageType {
        switch self {
        case .ping: return .ping
        case .pool(let request): return request.type
        case .register: return .register
        case .unregister: return .unregister
        case .stats: return .stats
        case .bye: return .bye
        }
    }

    /// Decodes the frames of one request (without the ROUTER envelope). A violation carries
    /// the type and id when the header could be read, so its reply can echo them.
    public static func decode(_ frames: [UnsafeRawBufferPointer], maxJobBytes: Int) throws -> Request {
        guard let first = frames.first else { throw ProtocolViolation(TP_ERR_PROTOCOL, "the message has no frames") }
        guard frames.count <= Wire.maxFrames else {
            let header = try? Header.read(first)
            throw ProtocolViolation(TP_ERR_PROTOCOL, "message has \(frames.count) frames; at most \(Wire.maxFrames) are defined",
                                    type: header.flatMap { MessageType(rawValue: $0.type) }, id: header?.id ?? 0)
        }
        let header = try Header.read(first)
        guard let type = MessageType(rawValue: header.type) else {
            throw ProtocolViolation(TP_ERR_PROTOCOL, "message type \(header.type) is unknown", id: header.id)
        }
        if type == .pool || type == .backward {
            return .pool(try PoolRequest.decode(first, type: type, payloadFrames: frames.count - 1, maxJobBytes: maxJobBytes))
        }
        func violation(_ status: tp_status, _ message: String) -> ProtocolViolation {
            ProtocolViolation(status, message, type: type, id: header.id)
        }
        guard first.count == type.requestSize else {
            throw violation(TP_ERR_PROTOCOL, "a \(type.name) request's frame 0 is \(type.requestSize) bytes but this one is \(first.count)")
        }
        guard header.flags == 0 else { throw violation(TP_ERR_FLAGS, "flags is 0x\(String(header.flags, radix: 16)) but must be 0") }
        let frameCount = type.fixedFrameCount ?? 1
        guard frames.count == frameCount else {
            throw violation(TP_ERR_PROTOCOL, "a \(type.name) request has \(frameCount) frame(s) but this one has \(frames.count)")
        }
        switch type {
        case .ping: return .ping(id: header.id)
        case .stats: return .stats(id: header.id)
        case .bye: return .bye(id: header.id)
        case .unregister: return .unregister(id: header.id, region: ByteReader.value(UInt64.self, in: first, at: Wire.headerSize))
        case .register: return .register(try RegisterRequest.decode(header: header, frame0: first, name: frames[1], maxJobBytes: maxJobBytes))
        case .pool, .backward: fatalError("decoded above")
        }
    }

    /// Frame 0 of a request with no body (PING, STATS, BYE).
    public static func bare(_ type: MessageType, id: UInt64) -> [UInt8] {
        var writer = ByteWriter(capacity: Wire.headerSize)
        Header(type: type.rawValue, id: id).write(to: &writer)
        return writer.bytes
    }

    public static func unregister(id: UInt64, region: UInt64) -> [UInt8] {
        var writer = ByteWriter(capacity: MessageType.unregister.requestSize)
        Header(type: MessageType.unregister.rawValue, id: id).write(to: &writer)
        writer.put(region)
        return writer.bytes
    }
}
