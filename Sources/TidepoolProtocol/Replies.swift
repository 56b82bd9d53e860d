import CTidepool
import TidepoolCore

/// Replies: frame 0 is the header (status 0 on success) plus the type's body; a failed
/// request's reply is the bare header with its status, and frame 1 a UTF-8 message.
public enum Reply {
    public static func error(_ violation: ProtocolViolation) -> [[UInt8]] {
        error(type: violation.type, id: violation.id, status: violation.status, message: violation.message)
    }

    public static func error(type: MessageType?, id: UInt64, status: tp_status, message: String) -> [[UInt8]] {
        var writer = ByteWriter(capacity: Wire.headerSize)
        Header(type: (type?.rawValue ?? 0) | Wire.replyBit, id: id, status: Int32(status.rawValue)).write(to: &writer)
        return [writer.bytes, Array(message.utf8)]
    }

    /// Frame 0 of a successful reply: the header and the type's body, written by `body`.
    public static func success(_ type: MessageType, id: UInt64, body: (inout ByteWriter) -> Void = { _ in }) -> [UInt8] {
        var writer = ByteWriter(capacity: type.replySize)
        Header(type: type.rawValue | Wire.replyBit, id: id).write(to: &writer)
        body(&writer)
        precondition(writer.bytes.count == type.replySize, "\(type.name) reply body has the wrong size")
        return writer.bytes
    }
}

/// A reply as a client reads it.
public struct DecodedReply: Sendable {
    public var type: MessageType
    public var id: UInt64
    public var status: tp_status
    /// The error message of a failed request.
    public var message: String
    /// Frame 0 after the header.
    public var body: [UInt8]

    public static func decode(_ frame0: UnsafeRawBufferPointer, frame1: UnsafeRawBufferPointer?) throws -> DecodedReply {
        let header = try Header.read(frame0)
        guard header.type & Wire.replyBit != 0 else {
            throw ProtocolViolation(TP_ERR_PROTOCOL, "message type 0x\(String(header.type, radix: 16)) is not a reply")
        }
        let status = tp_status(rawValue: UInt32(bitPattern: header.status))
        let text = { frame1.map { String(decoding: $0, as: UTF8.self) } ?? "" }
        guard let type = MessageType(rawValue: header.type & ~Wire.replyBit) else {
            // The daemon could not read our request's type: a protocol bug on our side.
            throw ProtocolViolation(status == TP_OK ? TP_ERR_PROTOCOL : status, text(), id: header.id)
        }
        if status != TP_OK {
            return DecodedReply(type: type, id: header.id, status: status, message: text(), body: [])
        }
        guard frame0.count == type.replySize else {
            throw ProtocolViolation(TP_ERR_PROTOCOL, "\(type.name) reply frame 0 is \(frame0.count) bytes, not \(type.replySize)", id: header.id)
        }
        return DecodedReply(type: type, id: header.id, status: status, message: "", body: Array(frame0[Wire.headerSize...]))
    }
}
