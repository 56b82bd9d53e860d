import Synchronization
import TidepoolSync
import TidepoolZMQ

#if canImport(Glibc)
import Glibc
#endif

/// The daemon's CurveZMQ keys: its own certificate, which every tcp endpoint speaks CURVE
/// with, and the public keys of the clients it admits, read from a directory of public
/// certificates (`*.key`, CZMQ's and pyzmq's convention) at start and again on `reload`
/// (SIGHUP). `PeerAuthenticator` asks it about every new tcp connection.
public final class CurveAuthorization: Sendable {
    let certificate: CurveCertificate
    let directory: String
    private let keys: Locked<Set<CurveKey>>
    private let refusalCount = Atomic<Int>(0)

    /// Loads the secret certificate and the directory, or fails saying which file and why.
    public init(secretCertificate path: String, authorizedKeys directory: String) throws {
        do {
            certificate = try CurveCertificate.load(path: path, secret: true)
        } catch {
            throw ServerError("--curve-secret-key: \(error)")
        }
        self.directory = directory
        let loaded = try Self.load(directory)
        keys = Locked(loaded.keys)
        skippedAtStart = loaded.skipped
    }

    /// Files of the directory passed over at start, each with why (logged by the server).
    let skippedAtStart: [String]

    func isAuthorized(_ key: CurveKey) -> Bool { keys.withLock { $0.contains(key) } }

    var authorizedCount: Int { keys.withLock { $0.count } }
    var refusals: Int { refusalCount.load(ordering: .relaxed) }
    func countRefusal() { refusalCount.add(1, ordering: .relaxed) }

    /// Reads the directory again and, if it can be read, replaces the keys with its keys
    /// (connections already admitted stay; the new set decides from the next handshake).
    /// On failure the keys stay as they were. Returns the new count and the files skipped.
    func reload() throws -> (count: Int, skipped: [String]) {
        let loaded = try Self.load(directory)
        keys.withLock { $0 = loaded.keys }
        return (loaded.keys.count, loaded.skipped)
    }

    /// The public keys of the directory's `*.key` files. The directory must be this user's or
    /// root's and writable by nobody else (whoever can write into it decides who is admitted);
    /// a file another user owns or can write, or that is not a certificate, is skipped with a
    /// reason, so one bad file does not lock every client out.
    static func load(_ directory: String) throws -> (keys: Set<CurveKey>, skipped: [String]) {
        var info = stat()
        guard stat(directory, &info) == 0 else {
            throw ServerError("--curve-authorized-keys: cannot inspect \(directory): \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & S_IFMT == S_IFDIR else { throw ServerError("--curve-authorized-keys: \(directory) is not a directory") }
        try checkOwner(info, directory, what: "the directory")
        guard let stream = opendir(directory) else {
            throw ServerError("--curve-authorized-keys: cannot read \(directory): \(String(cString: strerror(errno)))")
        }
        defer { closedir(stream) }
        var names: [String] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name.hasSuffix(".key") && !name.hasPrefix(".") { names.append(name) }
        }
        var keys = Set<CurveKey>()
        var skipped: [String] = []
        for name in names.sorted() {
            let path = directory.hasSuffix("/") ? directory + name : directory + "/" + name
            do {
                var file = stat()
                guard stat(path, &file) == 0 else { throw ServerError("cannot inspect it: \(String(cString: strerror(errno)))") }
                try checkOwner(file, path, what: "the certificate")
                keys.insert(try CurveCertificate.load(path: path, secret: false).publicKey)
            } catch {
                skipped.append("\(path): \(error)")
            }
        }
        return (keys, skipped)
    }

    private static func checkOwner(_ info: stat, _ path: String, what: String) throws {
        guard info.st_uid == geteuid() || info.st_uid == 0 else {
            throw ServerError("refusing \(what) \(path): it belongs to uid \(info.st_uid), not to this user (uid \(geteuid())) or root")
        }
        guard info.st_mode & 0o022 == 0 else {
            throw ServerError("refusing \(what) \(path): its mode 0\(String(info.st_mode & 0o777, radix: 8)) lets other users "
                + "write it, and so choose who is admitted; chmod go-w \(path)")
        }
    }
}
