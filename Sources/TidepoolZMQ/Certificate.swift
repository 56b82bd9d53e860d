import CZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// A CurveZMQ key: 32 bytes, written in Z85 as 40 characters (ZeroMQ RFC 32).
public struct CurveKey: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    /// The key a 40-character Z85 text names; nil for anything else.
    public init?(z85 text: String) {
        let characters = Array(text.utf8)
        guard characters.count == 40, tpzmq_load() == 0 else { return nil }
        var decoded = [UInt8](repeating: 0, count: 32)
        let ok = (characters + [0]).withUnsafeBufferPointer { text in
            text.withMemoryRebound(to: CChar.self) { tpzmq_z85_decode(&decoded, $0.baseAddress) != nil }
        }
        guard ok else { return nil }
        bytes = decoded
    }

    /// The key of 32 raw bytes (a ZAP request's CURVE credentials); nil for another length.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 32 else { return nil }
        self.bytes = bytes
    }

    public var z85: String {
        var text = [CChar](repeating: 0, count: 41)
        guard tpzmq_z85_encode(&text, bytes, bytes.count) != nil else { return "" }
        return String(cString: text)
    }

    public var description: String { z85 }
}

/// Why a certificate or key could not be used, naming the file and what is wrong.
public struct CurveError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A CurveZMQ certificate in ZeroMQ's text format, the one CZMQ's zcert and pyzmq's
/// `zmq.auth.create_certificates` write: ZPL lines, `public-key = "<Z85>"` and, in a secret
/// certificate, `secret-key = "<Z85>"` under a `curve` section. NAME.key holds the public
/// half, to hand out; NAME.key_secret both halves, private to its owner.
public struct CurveCertificate: Sendable {
    public let publicKey: CurveKey
    public let secretKey: CurveKey?

    /// Certificates are a few hundred bytes; anything much larger is not one.
    static let maxFileBytes = 64 * 1024

    public init(publicKey: CurveKey, secretKey: CurveKey?) {
        self.publicKey = publicKey
        self.secretKey = secretKey
    }

    /// Whether this libzmq can do CurveZMQ at all (Debian's is built with libsodium).
    public static var isAvailable: Bool { tpzmq_load() == 0 && tpzmq_has("curve") == 1 }

    static func requireCurve() throws {
        guard tpzmq_load() == 0 else { throw CurveError(String(cString: tpzmq_load_error())) }
        guard tpzmq_has("curve") == 1 else {
            throw CurveError("this libzmq (\(ZMQContext.version)) was built without CurveZMQ (zmq_has(\"curve\") is 0)")
        }
    }

    /// A new random key pair (zmq_curve_keypair).
    public static func generate() throws -> CurveCertificate {
        try requireCurve()
        var publicText = [CChar](repeating: 0, count: 41)
        var secretText = [CChar](repeating: 0, count: 41)
        guard tpzmq_curve_keypair(&publicText, &secretText) == 0,
              let publicKey = CurveKey(z85: String(cString: publicText)),
              let secretKey = CurveKey(z85: String(cString: secretText)) else {
            throw CurveError("zmq_curve_keypair failed: \(String(cString: tpzmq_strerror(tpzmq_errno())))")
        }
        return CurveCertificate(publicKey: publicKey, secretKey: secretKey)
    }

    /// The public key that belongs to `secret` (zmq_curve_public).
    static func publicKey(of secret: CurveKey) throws -> CurveKey {
        try requireCurve()
        var publicText = [CChar](repeating: 0, count: 41)
        guard tpzmq_curve_public(&publicText, secret.z85) == 0, let key = CurveKey(z85: String(cString: publicText)) else {
            throw CurveError("zmq_curve_public failed: \(String(cString: tpzmq_strerror(tpzmq_errno())))")
        }
        return key
    }

    /// Reads the certificate at `path`. With `secret`, it must hold a secret key matching its
    /// public key, and be a regular file of this user (or root) that no other user can read
    /// or write (as ssh demands of its keys: `chmod 600` mends it).
    public static func load(path: String, secret: Bool) throws -> CurveCertificate {
        try requireCurve()
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)
        guard fd >= 0 else { throw CurveError("cannot open the certificate \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw CurveError("cannot inspect \(path): \(String(cString: strerror(errno)))") }
        guard info.st_mode & S_IFMT == S_IFREG else { throw CurveError("the certificate \(path) is not a regular file") }
        guard info.st_size <= maxFileBytes else {
            throw CurveError("\(path) is \(info.st_size) bytes, not a certificate (those are a few hundred bytes)")
        }
        if secret {
            guard info.st_uid == geteuid() || info.st_uid == 0 else {
                throw CurveError("refusing the secret certificate \(path): it belongs to uid \(info.st_uid), not to this user (uid \(geteuid())) or root")
            }
            guard info.st_mode & 0o077 == 0 else {
                throw CurveError("refusing the secret certificate \(path): its mode is 0\(String(info.st_mode & 0o777, radix: 8)), "
                    + "so other users can read or change the secret key; chmod 600 \(path)")
            }
        }
        var contents: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while contents.count <= maxFileBytes {
            let count = read(fd, &chunk, chunk.count)
            if count < 0 && errno == EINTR { continue }
            guard count >= 0 else { throw CurveError("cannot read \(path): \(String(cString: strerror(errno)))") }
            if count == 0 { break }
            contents += chunk[0..<count]
        }
        guard contents.count <= maxFileBytes else { throw CurveError("\(path) is too large to be a certificate") }
        return try parse(String(decoding: contents, as: UTF8.self), path: path, secret: secret)
    }

    /// The keys of a certificate's text; `path` names it in errors.
    public static func parse(_ text: String, path: String, secret: Bool) throws -> CurveCertificate {
        var publicKey: CurveKey?
        var secretKey: CurveKey?
        for rawLine in text.split(omittingEmptySubsequences: true, whereSeparator: \.isNewline) {
            let line = rawLine.trimmingBlanks()
            if line.hasPrefix("#") { continue }
            let name: String
            if line.hasPrefix("public-key") { name = "public-key" } else if line.hasPrefix("secret-key") { name = "secret-key" } else { continue }
            guard let equals = line.firstIndex(of: "=") else { throw CurveError("\(path): \(name) has no value (`\(name) = \"<40 Z85 characters>\"`)") }
            var value = line[line.index(after: equals)...].trimmingBlanks()
            if value.count >= 2, let first = value.first, first == "\"" || first == "'", value.last == first {
                value = value.dropFirst().dropLast()
            }
            guard let key = CurveKey(z85: String(value)) else {
                throw CurveError("\(path): \(name) is not a CurveZMQ key (40 Z85 characters)")
            }
            if name == "public-key" {
                guard publicKey == nil else { throw CurveError("\(path) has two public-key lines") }
                publicKey = key
            } else {
                guard secretKey == nil else { throw CurveError("\(path) has two secret-key lines") }
                secretKey = key
            }
        }
        guard let publicKey else { throw CurveError("\(path) holds no public-key: not a ZeroMQ certificate") }
        if secret {
            guard let secretKey else {
                throw CurveError("\(path) holds no secret-key: it is a public certificate; give the secret one (NAME.key_secret)")
            }
            guard try Self.publicKey(of: secretKey) == publicKey else {
                throw CurveError("\(path): its public-key does not belong to its secret-key")
            }
        }
        return CurveCertificate(publicKey: publicKey, secretKey: secret ? secretKey : nil)
    }

    /// The certificate's text: the public one without the secret key.
    public func text(secret: Bool, generator: String) -> String {
        let stamp = Self.timestamp()
        var lines = ["#   ****  Generated on \(stamp) by \(generator)  ****"]
        if secret {
            lines += ["#   ZeroMQ CURVE **Secret** Certificate",
                      "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions."]
        } else {
            lines += ["#   ZeroMQ CURVE Public Certificate",
                      "#   Exchange securely, or use a secure mechanism to verify the contents",
                      "#   of this file after exchange. Store public certificates in your home",
                      "#   directory, in the .curve subdirectory."]
        }
        lines += ["", "metadata", "curve", "    public-key = \"\(publicKey.z85)\""]
        if secret, let secretKey { lines.append("    secret-key = \"\(secretKey.z85)\"") }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Writes `base`.key (mode 0644) and `base`.key_secret (0600), refusing to replace
    /// either file; returns their paths.
    public func write(base: String, generator: String) throws -> (publicPath: String, secretPath: String) {
        let publicPath = base + ".key", secretPath = base + ".key_secret"
        try Self.create(secretPath, text(secret: true, generator: generator), mode: 0o600)
        do {
            try Self.create(publicPath, text(secret: false, generator: generator), mode: 0o644)
        } catch {
            unlink(secretPath)
            throw error
        }
        return (publicPath, secretPath)
    }

    private static func create(_ path: String, _ text: String, mode: mode_t) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else {
            throw CurveError(errno == EEXIST ? "\(path) exists; not replacing it (remove it first)"
                                : "cannot create \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        // The umask may have taken bits from `mode`; a public certificate is meant to be read.
        fchmod(fd, mode)
        let bytes = Array(text.utf8)
        var written = 0
        while written < bytes.count {
            let count = bytes[written...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                let reason = String(cString: strerror(errno))
                unlink(path)
                throw CurveError("cannot write \(path): \(reason)")
            }
            written += count
        }
    }

    private static func timestamp() -> String {
        var now = time(nil)
        var parts = tm()
        gmtime_r(&now, &parts)
        var buffer = [CChar](repeating: 0, count: 64)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%d %H:%M:%S UTC", &parts)
        return count > 0 ? String(cString: buffer) : "\(now)"
    }
}

extension StringProtocol {
    func trimmingBlanks() -> SubSequence {
        var slice = self[...]
        while let first = slice.first, first == " " || first == "\t" { slice = slice.dropFirst() }
        while let last = slice.last, last == " " || last == "\t" { slice = slice.dropLast() }
        return slice
    }
}
