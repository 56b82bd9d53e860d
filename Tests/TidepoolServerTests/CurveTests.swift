import CTidepool
import Logging
import Testing
import TidepoolClient
import TidepoolCore
import TidepoolEndpoint
import TidepoolServer
import TidepoolSync
import TidepoolZMQ

#if canImport(Glibc)
import Glibc
#endif

/// Log lines kept for a test to read (the refusals the daemon must log).
struct CapturedLog: LogHandler {
    let lines: Locked<[String]>
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String,
             function: String, line: UInt) {
        let fields = (metadata ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        lines.withLock { $0.append("\(level) \(message) \(fields)") }
    }
}

/// CurveZMQ: certificates, the daemon's key directory, and who is admitted over tcp.
extension ServerTests {
    /// A certificate pair written into `directory` as `tidepoold keygen` writes it.
    func keyPair(_ directory: String, _ name: String) throws -> CurveCertificate {
        let certificate = try CurveCertificate.generate()
        _ = try certificate.write(base: "\(directory)/\(name)", generator: "test")
        return certificate
    }

    @Test func certificatesRoundTripAndRefuseWhatIsNotOne() throws {
        let scratch = ScratchDirectory()
        let pair = try keyPair(scratch.path, "alice")
        var info = stat()
        #expect(stat("\(scratch.path)/alice.key_secret", &info) == 0 && info.st_mode & 0o777 == 0o600)
        #expect(stat("\(scratch.path)/alice.key", &info) == 0 && info.st_mode & 0o777 == 0o644)
        let secret = try CurveCertificate.load(path: "\(scratch.path)/alice.key_secret", secret: true)
        #expect(secret.publicKey == pair.publicKey && secret.secretKey == pair.secretKey)
        let public_ = try CurveCertificate.load(path: "\(scratch.path)/alice.key", secret: false)
        #expect(public_.publicKey == pair.publicKey && public_.secretKey == nil)
        // Never replaces a file.
        #expect(throws: CurveError.self) { _ = try pair.write(base: "\(scratch.path)/alice", generator: "test") }

        // The forms ZPL allows, as other tools write them: single quotes, no quotes, tabs, CRLF.
        let z85 = pair.publicKey.z85, secretZ85 = pair.secretKey!.z85
        for text in ["curve\n    public-key = '\(z85)'\n", "curve\r\n\tpublic-key=\(z85)\r\n", "#c\n\npublic-key = \"\(z85)\""] {
            #expect(try CurveCertificate.parse(text, path: "t", secret: false).publicKey == pair.publicKey)
        }
        // The ZeroMQ reference keys (zmq_curve(7)): the secret key gives the public one.
        let reference = "curve\n public-key = \"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7\"\n secret-key = \"JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6\"\n"
        #expect(try CurveCertificate.parse(reference, path: "t", secret: true).publicKey.z85 == "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7")

        func refused(_ text: String, secret: Bool, _ fragment: String) {
            do {
                _ = try CurveCertificate.parse(text, path: "cert", secret: secret)
                Issue.record("accepted \(text.debugDescription)")
            } catch {
                #expect("\(error)".contains(fragment), "\(error)")
            }
        }
        refused("curve\n", secret: false, "no public-key")
        refused("public-key = \"\(z85.dropLast())\"", secret: false, "not a CurveZMQ key")
        refused("public-key = \"\(z85.dropLast())~\"", secret: false, "not a CurveZMQ key")  // ~ is not Z85
        refused("public-key", secret: false, "has no value")
        refused("public-key = \"\(z85)\"\npublic-key = \"\(z85)\"", secret: false, "two public-key")
        refused("public-key = \"\(z85)\"", secret: true, "no secret-key")
        let other = try CurveCertificate.generate()
        refused("public-key = \"\(other.publicKey.z85)\"\nsecret-key = \"\(secretZ85)\"", secret: true, "does not belong")

        // A secret certificate others can read is refused, saying how to mend it.
        chmod("\(scratch.path)/alice.key_secret", 0o640)
        do {
            _ = try CurveCertificate.load(path: "\(scratch.path)/alice.key_secret", secret: true)
            Issue.record("a secret certificate of mode 0640 was accepted")
        } catch {
            #expect("\(error)".contains("chmod 600"))
        }
        #expect(throws: CurveError.self) { _ = try CurveCertificate.load(path: scratch.path, secret: false) }  // a directory
    }

    /// Random mutations of a certificate's text (bytes flipped, cut, repeated, inserted)
    /// either parse to 32-byte keys or are refused with a CurveError; none crashes.
    @Test func mutatedCertificatesAreRefusedCleanly() throws {
        let pair = try CurveCertificate.generate()
        let original = Array(pair.text(secret: true, generator: "test").utf8)
        var generator = SystemRandomNumberGenerator()
        var parsed = 0, refusedCount = 0
        for _ in 0..<3000 {
            var bytes = original
            for _ in 0..<Int.random(in: 1...6, using: &generator) {
                let at = Int.random(in: 0..<max(bytes.count, 1), using: &generator)
                switch Int.random(in: 0..<4, using: &generator) {
                case 0 where !bytes.isEmpty: bytes[at] = UInt8.random(in: 0...255, using: &generator)
                case 1 where !bytes.isEmpty: bytes.removeSubrange(at..<min(bytes.count, at + Int.random(in: 1...40, using: &generator)))
                case 2: bytes.insert(contentsOf: bytes[at..<min(bytes.count, at + 20)], at: at)
                default: bytes.insert([UInt8(ascii: "="), UInt8(ascii: "\""), 0, 0xFF][Int.random(in: 0..<4, using: &generator)], at: at)
                }
            }
            do {
                let certificate = try CurveCertificate.parse(String(decoding: bytes, as: UTF8.self), path: "m", secret: true)
                #expect(certificate.publicKey.bytes.count == 32 && certificate.secretKey?.bytes.count == 32)
                parsed += 1
            } catch is CurveError {
                refusedCount += 1
            }
        }
        #expect(parsed > 0 && refusedCount > 0)
    }

    @Test func onlyLoopbackTCPServesWithoutCurve() throws {
        for address in ["tcp://127.0.0.1:5555", "tcp://127.1.2.3:0", "tcp://localhost:1", "tcp://[::1]:5555", "tcp://lo:5555"] {
            #expect(Endpoint.isLoopbackTCP(address), "\(address)")
        }
        for address in ["tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://10.0.0.1:5555", "tcp://[::]:5555", "tcp://eth0:5555",
                        "tcp://example.org:5555", "tcp://127.0.0.1.evil:5555", "tcp://1270.0.0.1:5555", "tcp://127.0.0:5555",
                        "tcp://127.0.0.256:5555", "ipc:///tmp/x.sock"] {
            #expect(!Endpoint.isLoopbackTCP(address), "\(address)")
        }
        var configuration = ServerConfiguration(endpoints: ["tcp://0.0.0.0:5555"])
        do {
            try configuration.validate()
            Issue.record("tcp on 0.0.0.0 without CURVE was accepted")
        } catch {
            #expect("\(error)".contains("--insecure"))
        }
        configuration.insecure = true
        try configuration.validate()
        configuration.insecure = false
        configuration.curveSecretKey = "/server.key_secret"
        #expect(throws: ServerError.self) { try configuration.validate() }  // without the directory
        configuration.curveAuthorizedKeys = "/keys"
        try configuration.validate()
        try ServerConfiguration(endpoints: ["tcp://:5555", "ipc:///tmp/x.sock"]).validate()
    }

    /// The whole path: a daemon serving ipc and CURVE tcp; the authorized client is served over
    /// tcp, unknown keys and plain clients are refused (and logged with the key), ipc is
    /// served, a reload admits a new key and drops a removed one, and a directory that turns
    /// unsafe keeps the keys loaded before.
    @Test func curveAdmitsOnlyAuthorizedKeys() throws {
        let scratch = ScratchDirectory()
        let keys = "\(scratch.path)/authorized"
        mkdir(keys, 0o700)
        let server = try keyPair(scratch.path, "server")
        let alice = try keyPair(scratch.path, "alice")
        let mallory = try keyPair(scratch.path, "mallory")
        #expect(system("cp '\(scratch.path)/alice.key' '\(keys)/'") == 0)
        let lines = Locked<[String]>([])
        let logger = Logger(label: "curve") { _ in CapturedLog(lines: lines) }
        let running = try RunningServer(logger: logger) { configuration in
            configuration.endpoints.append("tcp://127.0.0.1:0")
            configuration.curveSecretKey = "\(scratch.path)/server.key_secret"
            configuration.curveAuthorizedKeys = keys
        }
        defer { running.stop() }
        let tcp = running.server.boundEndpoints.first { $0.hasPrefix("tcp://") }!

        func curve(_ certificate: CurveCertificate) -> CurveClientKeys {
            CurveClientKeys(serverKey: server.publicKey, client: certificate)
        }
        func pooled(_ client: PoolClient) throws -> [Float] {
            let input: [Float] = [1, 2, 3, 4], desc = PoolDescriptor(kind: .average, kernelSize: [2])
            var output = [Float](repeating: 0, count: 2)
            try input.withUnsafeBytes { input in
                try output.withUnsafeMutableBytes { output in
                    try client.pool(desc, input: TensorView(data: input.baseAddress, dtype: .float32, shape: [1, 4, 1]),
                                    output: OutputView(data: output.baseAddress, dtype: .float32, shape: [1, 2, 1]))
                }
            }
            return output
        }
        func refusal(_ curve: CurveClientKeys?) -> PoolError? {
            do {
                // Refusals are seen at once; a handshake that cannot complete times out.
                let client = try PoolClient(endpoint: tcp, timeoutMs: 2_000, curve: curve)
                client.close()
                return nil
            } catch let error as PoolError {
                return error
            } catch {
                return PoolError(TP_ERR_INTERNAL, "\(error)")
            }
        }

        let served = try PoolClient(endpoint: tcp, timeoutMs: 30_000, curve: curve(alice))
        defer { served.close() }
        #expect(try pooled(served) == [1.5, 3.5])

        let unknown = refusal(curve(mallory))
        #expect(unknown?.status == TP_ERR_CONNECTION)
        #expect(unknown?.message.contains("not among the daemon's authorized keys") == true, "\(String(describing: unknown))")
        #expect(lines.withLock { $0 }.contains { $0.contains("not authorized") && $0.contains(mallory.publicKey.z85) })
        let plain = refusal(nil)
        #expect(plain?.status == TP_ERR_CONNECTION || plain?.status == TP_ERR_TIMEOUT, "\(String(describing: plain))")
        // libzmq refuses it before asking ZAP; the handshake monitor logs it (from its own
        // thread, maybe after the client gave up: waited for, within a bound).
        var waited = 0
        while !lines.withLock({ $0 }).contains(where: { $0.contains("the handshake") && $0.contains(tcp) }) && waited < 10_000 {
            usleep(1000)
            waited += 1
        }
        #expect(waited < 10_000, "\(lines.withLock { $0 })")
        // A client with the wrong server key cannot complete the handshake.
        let wrongServer = CurveClientKeys(serverKey: mallory.publicKey, client: alice)
        let impostor = refusal(wrongServer)
        #expect(impostor?.status == TP_ERR_CONNECTION || impostor?.status == TP_ERR_TIMEOUT)

        // Served throughout: the admitted client, and ipc (where CURVE is not spoken).
        #expect(try pooled(served) == [1.5, 3.5])
        let local = try PoolClient(endpoint: running.endpoint, timeoutMs: 30_000)
        #expect(try pooled(local) == [1.5, 3.5])
        let stats = try local.stats()
        #expect(stats.contains("\"curve\": true") && stats.contains("\"curve_authorized_keys\": 1"), "\(stats)")
        #expect(!stats.contains("\"curve_refusals\": 0"), "\(stats)")
        local.close()

        // A reload admits a key added and refuses a key removed.
        #expect(system("cp '\(scratch.path)/mallory.key' '\(keys)/' && rm '\(keys)/alice.key'") == 0)
        running.server.reloadAuthorizedKeys()
        #expect(refusal(curve(mallory)) == nil)
        #expect(refusal(curve(alice))?.status == TP_ERR_CONNECTION)
        #expect(try pooled(served) == [1.5, 3.5])  // admitted before: its connection stays

        // A directory others can write into is refused; the keys loaded before stay.
        chmod(keys, 0o777)
        running.server.reloadAuthorizedKeys()
        #expect(lines.withLock { $0 }.contains { $0.contains("cannot reload") && $0.contains("chmod go-w") })
        #expect(refusal(curve(mallory)) == nil)
        chmod(keys, 0o700)
    }

    @Test func curveDaemonRefusesUnsafeKeysAtStart() throws {
        let scratch = ScratchDirectory()
        let keys = "\(scratch.path)/authorized"
        mkdir(keys, 0o700)
        _ = try keyPair(scratch.path, "server")
        func startError(_ secret: String) -> String {
            do {
                let running = try RunningServer { configuration in
                    configuration.endpoints.append("tcp://127.0.0.1:0")
                    configuration.curveSecretKey = secret
                    configuration.curveAuthorizedKeys = keys
                }
                running.stop()
                return ""
            } catch {
                return "\(error)"
            }
        }
        chmod("\(scratch.path)/server.key_secret", 0o644)
        #expect(startError("\(scratch.path)/server.key_secret").contains("chmod 600"))
        chmod("\(scratch.path)/server.key_secret", 0o600)
        chmod("\(scratch.path)/server.key", 0o600)
        #expect(startError("\(scratch.path)/server.key").contains("no secret-key"))
        chmod(keys, 0o775)
        #expect(startError("\(scratch.path)/server.key_secret").contains("lets other users write"))
        chmod(keys, 0o700)
        #expect(startError("\(scratch.path)/server.key_secret") == "")
    }
}
