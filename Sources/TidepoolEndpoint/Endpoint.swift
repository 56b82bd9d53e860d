#if canImport(Glibc)
import Glibc
#endif

/// Which endpoint the daemon and its clients use, and whether an ipc endpoint's directory
/// can be trusted: the one place both sides take these decisions from, so that a client
/// refuses exactly the places a daemon would refuse to serve in.
public enum Endpoint {
    /// $TIDEPOOL_ENDPOINT, else ipc://$XDG_RUNTIME_DIR/tidepool.sock, else
    /// ipc:///tmp/tidepool-$UID/tidepool.sock.
    public static func defaultEndpoint() -> String {
        if let value = environment("TIDEPOOL_ENDPOINT"), !value.isEmpty { return value }
        if let runtime = environment("XDG_RUNTIME_DIR"), !runtime.isEmpty { return "ipc://\(runtime)/tidepool.sock" }
        return "ipc://\(fallbackDirectory)/tidepool.sock"
    }

    /// The directory of the last default: /tmp/tidepool-$UID.
    public static var fallbackDirectory: String { "/tmp/tidepool-\(geteuid())" }

    /// The address to bind: tcp endpoints without a host ("tcp://:5555" or "tcp://5555")
    /// bind to loopback only; an explicit host (even "*") is used as given.
    public static func bindAddress(_ endpoint: String) -> String {
        guard endpoint.hasPrefix("tcp://") else { return endpoint }
        let rest = endpoint.dropFirst("tcp://".count)
        if rest.hasPrefix(":") { return "tcp://127.0.0.1\(rest)" }
        if !rest.isEmpty, rest.allSatisfy(\.isNumber) { return "tcp://127.0.0.1:\(rest)" }
        return endpoint
    }

    /// Whether a tcp address (as `bindAddress` gives it) binds loopback only: a host of
    /// 127.0.0.0/8, ::1, localhost or the interface lo. Anything else (a wildcard, another
    /// address, a host name, another interface) may be reachable from other hosts.
    public static func isLoopbackTCP(_ address: String) -> Bool {
        guard address.hasPrefix("tcp://") else { return false }
        let rest = address.dropFirst("tcp://".count)
        guard let colon = rest.lastIndex(of: ":") else { return false }
        var host = rest[..<colon]
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        if host == "localhost" || host == "lo" || host == "::1" { return true }
        let octets = host.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets[0] == "127"
            && octets.allSatisfy { !$0.isEmpty && $0.count <= 3 && $0.allSatisfy(\.isASCII) && UInt8($0) != nil }
    }

    /// The socket path of an ipc endpoint, nil for other transports.
    public static func ipcPath(_ endpoint: String) -> String? {
        endpoint.hasPrefix("ipc://") ? String(endpoint.dropFirst("ipc://".count)) : nil
    }

    /// Daemon side, before binding an ipc endpoint: creates the socket's directory private to
    /// this user (0700) when it is missing, then refuses a directory another user could have
    /// planted or can write into, a path held by another user's file, and an endpoint a daemon
    /// already serves. Other transports pass.
    public static func prepareToServe(_ endpoint: String) throws {
        guard let path = ipcPath(endpoint) else { return }
        let directory = parent(of: path)
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw EndpointError("cannot create \(directory): \(lastError())")
        }
        try checkDirectory(directory, private: isDefaultDirectory(directory), role: "serve")
        var info = stat()
        if lstat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFSOCK, info.st_uid == geteuid() else {
                throw EndpointError("refusing to serve on \(path): it exists and is \(describe(info)), not a socket of this "
                    + "user (uid \(geteuid())); remove it, or choose another --endpoint")
            }
            // libzmq would silently take the path over from a daemon still serving on it.
            if isServing(path) { throw EndpointError("another daemon is already serving \(endpoint)") }
        }
    }

    /// Client side, before connecting: an ipc endpoint must be a socket in a directory that
    /// only this user (or root) controls, owned by this user or root; anything else may be
    /// another user's daemon waiting for this user's tensors. Other transports pass.
    public static func checkBeforeConnecting(_ endpoint: String) throws {
        guard let path = ipcPath(endpoint) else { return }
        let directory = parent(of: path)
        var info = stat()
        if stat(directory, &info) != 0 && errno == ENOENT {
            throw EndpointError("no daemon at \(endpoint): \(directory) does not exist (start one with `make run`)", missing: true)
        }
        try checkDirectory(directory, private: isDefaultDirectory(directory), role: "connect to")
        guard lstat(path, &info) == 0 else {
            throw EndpointError(errno == ENOENT ? "no daemon at \(endpoint): \(path) does not exist (start one with `make run`)"
                                    : "cannot inspect \(path): \(lastError())", missing: errno == ENOENT)
        }
        guard info.st_mode & S_IFMT == S_IFSOCK, info.st_uid == geteuid() || info.st_uid == 0 else {
            throw EndpointError("refusing to connect to \(path): it is \(describe(info)), not a socket of this user "
                + "(uid \(geteuid())) or root; another user's daemon would receive your tensors")
        }
    }

    /// Whether `directory` is where a default endpoint lives (and so must be private).
    static func isDefaultDirectory(_ directory: String) -> Bool {
        if directory == fallbackDirectory { return true }
        if let runtime = environment("XDG_RUNTIME_DIR"), !runtime.isEmpty, normalized(runtime) == directory { return true }
        return false
    }

    /// A private directory (a default endpoint's) must be a real directory, not a link, owned
    /// by this user with no group or other permissions. Any other directory must be owned by
    /// this user or root and, if others can write into it, sticky (as /tmp), so nobody else can
    /// replace the socket in it.
    static func checkDirectory(_ directory: String, private: Bool, role: String) throws {
        var info = stat()
        let found = `private` ? lstat(directory, &info) : stat(directory, &info)
        guard found == 0 else { throw EndpointError("cannot inspect \(directory): \(lastError())", missing: errno == ENOENT) }
        let me = geteuid()
        let advice = "remove it (another user may have created it to intercept jobs), or choose another endpoint"
        if `private` {
            guard info.st_mode & S_IFMT == S_IFDIR else {
                throw EndpointError("refusing to \(role) \(directory): it is \(describe(info)), not a directory; \(advice)")
            }
            guard info.st_uid == me else {
                throw EndpointError("refusing to \(role) \(directory): it belongs to uid \(info.st_uid), not to this user "
                    + "(uid \(me)); \(advice)")
            }
            guard info.st_mode & 0o077 == 0 else {
                throw EndpointError("refusing to \(role) \(directory): its mode is \(octal(info.st_mode)), open to other users; "
                    + "it must be 0700 (chmod 700 \(directory))")
            }
            return
        }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw EndpointError("refusing to \(role) \(directory): it is \(describe(info)), not a directory")
        }
        guard info.st_uid == me || info.st_uid == 0 else {
            throw EndpointError("refusing to \(role) \(directory): it belongs to uid \(info.st_uid), not to this user "
                + "(uid \(me)) or root; \(advice)")
        }
        guard info.st_mode & 0o022 == 0 || info.st_mode & S_ISVTX != 0 else {
            throw EndpointError("refusing to \(role) \(directory): other users can write into it (mode \(octal(info.st_mode))) "
                + "and it is not sticky, so they could replace the socket; \(advice)")
        }
    }

    /// Whether something accepts connections on the unix socket at `path` (a stale file from
    /// a crashed daemon refuses them).
    static func isServing(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
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

    static func parent(of path: String) -> String {
        let trimmed = normalized(path)
        guard let slash = trimmed.lastIndex(of: "/") else { return "." }
        return slash == trimmed.startIndex ? "/" : String(trimmed[..<slash])
    }

    /// Drops trailing slashes, so "/run/user/0/" names the same directory as "/run/user/0".
    static func normalized(_ path: String) -> String {
        var path = path
        while path.count > 1 && path.hasSuffix("/") { path.removeLast() }
        return path
    }

    static func describe(_ info: stat) -> String {
        let kind: String
        switch info.st_mode & S_IFMT {
        case S_IFDIR: kind = "a directory"
        case S_IFLNK: kind = "a symbolic link"
        case S_IFSOCK: kind = "a socket"
        case S_IFREG: kind = "a regular file"
        default: kind = "a special file"
        }
        return "\(kind) of uid \(info.st_uid), mode \(octal(info.st_mode))"
    }

    static func octal(_ mode: mode_t) -> String {
        let text = String(mode & 0o7777, radix: 8)
        return String(repeating: "0", count: Swift.max(0, 4 - text.count)) + text
    }

    /// The value of environment variable `name`, nil where unset.
    public static func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
    static func lastError() -> String { String(cString: strerror(errno)) }
}

public struct EndpointError: Error, CustomStringConvertible {
    public let description: String
    /// The socket or its directory does not exist (no daemon there), as opposed to an
    /// endpoint that exists but is not safe to use.
    public let missing: Bool

    public init(_ description: String, missing: Bool = false) {
        self.description = description
        self.missing = missing
    }
}
