import TidepoolProtocol

#if canImport(Glibc)
import Glibc
#endif

/// What tidepoold is told on its command line.
public struct ServerConfiguration: Sendable {
    public var endpoints: [String]
    /// Engine threads per job; 0 means one per CPU.
    public var threads: Int
    /// Jobs queued or running at once; more get a TP_ERR_BUSY reply at once.
    public var maxInflight: Int
    /// Input plus output bytes of one job.
    public var maxJobBytes: Int
    /// How long shutdown waits for queued replies to leave the socket.
    public var shutdownLingerMs: Int32
    /// Called on the thread that runs each job, before it runs (the lead has then passed to
    /// another thread); tests block in it to hold jobs in flight deterministically.
    public var jobGate: (@Sendable () -> Void)?

    public init(endpoints: [String] = [Endpoint.defaultEndpoint()], threads: Int = 0, maxInflight: Int = 64,
                maxJobBytes: Int = 1 << 30, shutdownLingerMs: Int32 = 2000) {
        self.endpoints = endpoints
        self.threads = threads
        self.maxInflight = maxInflight
        self.maxJobBytes = maxJobBytes
        self.shutdownLingerMs = shutdownLingerMs
    }
}

public enum Endpoint {
    public static func defaultEndpoint() -> String { Wire.defaultEndpoint() }

    /// The address to bind: tcp endpoints without a host ("tcp://:5555" or "tcp://5555")
    /// bind to loopback only; an explicit host (even "*") is used as given.
    public static func bindAddress(_ endpoint: String) -> String {
        guard endpoint.hasPrefix("tcp://") else { return endpoint }
        let rest = endpoint.dropFirst("tcp://".count)
        if rest.hasPrefix(":") { return "tcp://127.0.0.1\(rest)" }
        if !rest.isEmpty, rest.allSatisfy(\.isNumber) { return "tcp://127.0.0.1:\(rest)" }
        return endpoint
    }

    /// For ipc endpoints, creates the socket's directory private to the user (0700) when it
    /// is missing, and refuses one that others can enter.
    public static func prepareDirectory(_ endpoint: String) throws {
        guard endpoint.hasPrefix("ipc://") else { return }
        let path = String(endpoint.dropFirst("ipc://".count))
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return }
        let directory = String(path[..<slash])
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw ServerError("cannot create \(directory): \(String(cString: strerror(errno)))")
        }
        var info = stat()
        guard stat(directory, &info) == 0 else { throw ServerError("cannot stat \(directory): \(String(cString: strerror(errno)))") }
        if info.st_uid == getuid() && directory.hasPrefix("/tmp/tidepool-") && info.st_mode & 0o077 != 0 {
            throw ServerError("\(directory) is open to other users (mode \(String(info.st_mode & 0o777, radix: 8))); it must be 0700")
        }
        // libzmq would silently take the path over from a daemon still serving on it.
        if isServing(path) { throw ServerError("another daemon is already serving \(endpoint)") }
    }

    /// Whether something accepts connections on the unix socket at `path` (a stale file from
    /// a crashed daemon refuses them).
    static func isServing(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0 }
        }
    }
}

public struct ServerError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
