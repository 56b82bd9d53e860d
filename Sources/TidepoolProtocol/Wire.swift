import CTidepool
import TidepoolCore

/// Tidepool's wire protocol, version 2 (docs/protocol.md is the language-neutral spec).
/// Requests and replies are multipart ZeroMQ messages whose first frame starts with a
/// fixed 24-byte little-endian header. This module only turns bytes into checked values and
/// back: no sockets, no shared memory. Every message of either side is encoded and decoded
/// here and nowhere else.

public enum Wire {
    public static let magic: UInt32 = 0x4C4F_5054  // bytes "TPOL"
    /// 2: REGISTER leaves the name to its client; region ids carry the daemon's instance;
    /// PING answers the instance; a POOL id already in flight is a resubmission.
    public static let version: UInt16 = 2
    public static let headerSize = 24
    /// Set in a reply's type; alone (0x8000), it answers a request whose type was unreadable.
    public static let replyBit: UInt16 = 0x8000
    /// Most frames a request may have (header plus the input and cotangent of an inline BACKWARD).
    public static let maxFrames = 3
    /// Largest extent accepted for one axis; keeps every product well inside 64 bits.
    public static let maxAxisLength = 1 << 40
    /// POOL and BACKWARD flag: frame 0 ends with a done word's region and offset (`doneWordFieldsSize`
    /// more bytes); the daemon sets the word when the job ends, before its reply.
    public static let doneWordFlag: UInt32 = 1
    public static let doneWordFieldsSize = 16
    /// POOL and BACKWARD flag: the job may have been sent before on a connection that was lost. A daemon
    /// that knows it (running, or finished lately with a shared-memory output) does not run it
    /// again: a running one answers when it ends, a finished one is answered again.
    public static let resubmittedFlag: UInt32 = 2
    /// POOL and BACKWARD flags: PyTorch's pooling options (`PoolDescriptor.ceilMode`, and
    /// count_include_pad=False for averages). A daemon older than them refuses them (FLAGS)
    /// rather than running MLX's rules in their place.
    public static let ceilModeFlag: UInt32 = 4
    public static let excludePaddingFlag: UInt32 = 8
    /// Every POOL and BACKWARD flag.
    public static let jobFlags = doneWordFlag | resubmittedFlag | ceilModeFlag | excludePaddingFlag
    /// A done word's values: 0 while the job runs (the client's), 1 done, 2 failed (see the reply).
    public static let doneWordSucceeded: UInt32 = 1
    public static let doneWordFailed: UInt32 = 2
}

public enum MessageType: UInt16, CaseIterable, Sendable {
    case ping = 1, pool = 2, register = 3, unregister = 4, stats = 5, bye = 6, backward = 7

    /// Size of frame 0 of a request of this type: the header plus the type's fixed body
    /// (POOL: without the done word's fields).
    public var requestSize: Int {
        switch self {
        case .ping, .stats, .bye: return Wire.headerSize
        case .pool: return Wire.headerSize + PoolRequest.bodySize
        case .backward: return Wire.headerSize + PoolRequest.bodySize + BackwardFields.bodySize
        case .register: return Wire.headerSize + RegisterRequest.bodySize
        case .unregister: return Wire.headerSize + 8
        }
    }

    /// Size of frame 0 of a successful reply.
    public var replySize: Int {
        switch self {
        case .ping: return Wire.headerSize + PingReply.bodySize
        case .pool, .backward: return Wire.headerSize + PoolReply.bodySize
        case .register: return Wire.headerSize + 8
        case .unregister, .stats, .bye: return Wire.headerSize
        }
    }

    /// Frames of a request: REGISTER carries its object's name, an inline POOL its input, an
    /// inline BACKWARD its input and cotangent.
    var fixedFrameCount: Int? {
        switch self {
        case .register: return 2
        case .pool, .backward: return nil
        default: return 1
        }
    }

    public var name: String {
        switch self {
        case .ping: return "PING"
        case .pool: return "POOL"
        case .backward: return "BACKWARD"
        case .register: return "REGISTER"
        case .unregister: return "UNREGISTER"
        case .stats: return "STATS"
        case .bye: return "BYE"
        }
    }
}

/// A request that cannot be served, with what a reply needs to say so.
public struct ProtocolViolation: Error, CustomStringConvertible {
    public let status: tp_status
    public let message: String
    /// Known when the header could be read, so the error reply can echo them.
    public let type: MessageType?
    public let id: UInt64

    public init(_ status: tp_status, _ message: String, type: MessageType? = nil, id: UInt64 = 0) {
        self.status = status
        self.message = message
        self.type = type
        self.id = id
    }

    public var description: String { message }
}

public struct Header: Equatable, Sendable {
    public var type: UInt16
    public var id: UInt64
    public var status: Int32
    public var flags: UInt32

    public init(type: UInt16, id: UInt64, status: Int32 = 0, flags: UInt32 = 0) {
        self.type = type
        self.id = id
        self.status = status
        self.flags = flags
    }

    public func write(to writer: inout ByteWriter) {
        writer.put(Wire.magic)
        writer.put(Wire.version)
        writer.put(type)
        writer.put(id)
        writer.put(status)
        writer.put(flags)
    }

    /// Reads and checks magic and version; the caller checks type and flags.
    public static func read(_ frame: UnsafeRawBufferPointer) throws -> Header {
        guard frame.count >= Wire.headerSize else {
            throw ProtocolViolation(TP_ERR_PROTOCOL, "frame 0 is \(frame.count) bytes, shorter than the \(Wire.headerSize)-byte header")
        }
        var reader = ByteReader(frame)
        let magic = reader.get(UInt32.self)
        guard magic == Wire.magic else {
            throw ProtocolViolation(TP_ERR_PROTOCOL, "magic is 0x\(String(magic, radix: 16)), not 0x\(String(Wire.magic, radix: 16)) (\"TPOL\")")
        }
        let version = reader.get(UInt16.self)
        let type = reader.get(UInt16.self), id = reader.get(UInt64.self)
        guard version == Wire.version else {
            throw ProtocolViolation(TP_ERR_VERSION, "protocol version is \(version) but this daemon speaks version \(Wire.version)",
                                    type: MessageType(rawValue: type), id: id)
        }
        return Header(type: type, id: id, status: reader.get(Int32.self), flags: reader.get(UInt32.self))
    }
}

/// Region ids carry the instance of the daemon that issued them in their upper 32 bits, so a
/// daemon recognises an id from an earlier instance (a restart) instead of taking it for one
/// of its own.
public enum RegionID {
    public static func instanceTag(_ regionID: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: regionID >> 32) }
    public static func instanceTag(ofInstance instance: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: instance >> 32) }
    public static func make(instance: UInt64, sequence: UInt32) -> UInt64 {
        UInt64(instanceTag(ofInstance: instance)) << 32 | UInt64(sequence)
    }
}
