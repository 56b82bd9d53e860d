import CTidepool
import TidepoolCore

/// PING's reply body: who answered.
public struct PingReply: Equatable, Sendable {
    static let bodySize = 16
    public var libraryVersion: UInt32
    /// 0 when the asker is not a local process the daemon could identify (tcp).
    public var pid: UInt32
    /// Random, drawn when the daemon starts: a different value means another daemon.
    public var instance: UInt64

    public init(libraryVersion: UInt32, pid: UInt32, instance: UInt64) {
        self.libraryVersion = libraryVersion
        self.pid = pid
        self.instance = instance
    }

    public func encode(id: UInt64) -> [UInt8] {
        Reply.success(.ping, id: id) { writer in
            writer.put(libraryVersion)
            writer.put(pid)
            writer.put(instance)
        }
    }

    public init(_ body: [UInt8]) {
        (libraryVersion, pid, instance) = body.withUnsafeBytes { raw in
            (ByteReader.value(UInt32.self, in: raw, at: 0), ByteReader.value(UInt32.self, in: raw, at: 4),
             ByteReader.value(UInt64.self, in: raw, at: 8))
        }
    }
}
