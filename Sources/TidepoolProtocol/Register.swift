import CTidepool
import TidepoolCore

/// REGISTER: lend the daemon a shared-memory object of the sender's, by name.
public struct RegisterRequest: Equatable, Sendable {
    public static let bodySize = 16

    public var id: UInt64
    public var size: Int
    public var pid: Int32
    public var name: String

    public init(id: UInt64, size: Int, pid: Int32, name: String) {
        self.id = id
        self.size = size
        self.pid = pid
        self.name = name
    }

    /// Frames 0 and 1.
    public func encode() -> [[UInt8]] {
        var writer = ByteWriter(capacity: MessageType.register.requestSize)
        Header(type: MessageType.register.rawValue, id: id).write(to: &writer)
        writer.put(UInt64(size))
        writer.put(UInt32(bitPattern: pid))
        writer.put(UInt32(0))
        return [writer.bytes, Array(name.utf8)]
    }

    static func decode(header: Header, frame0: UnsafeRawBufferPointer, name nameFrame: UnsafeRawBufferPointer,
                       maxJobBytes: Int) throws -> RegisterRequest {
        func violation(_ status: tp_status, _ message: String) -> ProtocolViolation {
            ProtocolViolation(status, message, type: .register, id: header.id)
        }
        var reader = ByteReader(frame0, offset: Wire.headerSize)
        let size = reader.get(UInt64.self), pid = reader.get(UInt32.self), reserved = reader.get(UInt32.self)
        guard reserved == 0 else { throw violation(TP_ERR_PROTOCOL, "REGISTER's reserved field must be 0") }
        guard size > 0, size <= UInt64(maxJobBytes) else {
            throw violation(TP_ERR_TOO_LARGE, "region size \(size) must be between 1 and --max-job-bytes \(maxJobBytes)")
        }
        guard pid > 0, pid <= UInt32(Int32.max) else {
            throw violation(TP_ERR_INVALID_ARGUMENT, "pid must be the client's process id but is \(pid)")
        }
        // The name's form is checked where objects are opened (TidepoolSharedMemory), once.
        guard let name = String(validating: nameFrame, as: UTF8.self) else {
            throw violation(TP_ERR_INVALID_ARGUMENT, "region name is not UTF-8")
        }
        return RegisterRequest(id: header.id, size: Int(size), pid: Int32(pid), name: name)
    }
}

/// REGISTER's reply body: the region id the daemon gave the object.
public enum RegisterReply {
    public static func encode(id: UInt64, region: UInt64) -> [UInt8] { Reply.success(.register, id: id) { $0.put(region) } }

    /// The region id of a successful reply's body (`DecodedReply.body`, its size checked).
    public static func region(_ body: [UInt8]) -> UInt64 {
        body.withUnsafeBytes { ByteReader.value(UInt64.self, in: $0, at: 0) }
    }
}
