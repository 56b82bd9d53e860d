import CTidepool
import Logging
import Testing
import TidepoolClient
import TidepoolSync
import TidepoolCore
import TidepoolEndpoint
import TidepoolProtocol
import TidepoolServer

#if canImport(Glibc)
import Glibc
#endif

/// Where the daemon agrees to serve and clients agree to connect. In ServerTests (serialized),
/// since they set XDG_RUNTIME_DIR, which makes a directory a default one.
extension ServerTests {
    /// A fresh directory under /tmp, removed with everything in it at the end.
    final class ScratchDirectory {
        let path: String
        init() {
            var template = Array("/tmp/tidepool-endpoint-test-XXXXXX".utf8CString)
            path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        }
        deinit {
            _ = system("rm -rf '\(path)'")
        }
    }

    func withRuntimeDirectory(_ directory: String, _ body: () throws -> Void) rethrows {
        let saved = getenv("XDG_RUNTIME_DIR").map { String(cString: $0) }
        setenv("XDG_RUNTIME_DIR", directory, 1)
        defer { if let saved { setenv("XDG_RUNTIME_DIR", saved, 1) } else { unsetenv("XDG_RUNTIME_DIR") } }
        try body()
    }

    func expectRefusal(_ fragment: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("expected a refusal mentioning '\(fragment)'", sourceLocation: sourceLocation)
        } catch {
            #expect("\(error)".contains(fragment), "\(error)", sourceLocation: sourceLocation)
        }
    }

    /// A default directory (here $XDG_RUNTIME_DIR) squatted by another user, opened to others,
    /// or replaced by a link: neither the daemon nor a client uses it.
    @Test(.enabled(if: geteuid() == 0, "needs root to hand a directory to another uid"))
    func squattedDefaultDirectoryIsRefused() throws {
        let scratch = ScratchDirectory()
        let squatted = scratch.path + "/runtime"
        mkdir(squatted, 0o777)
        chmod(squatted, 0o777)
        chown(squatted, 65534, 65534)
        try withRuntimeDirectory(squatted) {
            let endpoint = Endpoint.defaultEndpoint()
            #expect(endpoint == "ipc://\(squatted)/tidepool.sock")
            expectRefusal("belongs to uid 65534, not to this user") { try Endpoint.prepareToServe(endpoint) }
            expectRefusal("belongs to uid 65534") { try Endpoint.checkBeforeConnecting(endpoint) }
            do {
                _ = try PoolClient(endpoint: endpoint, timeoutMs: 1000)
                Issue.record("a client connected through a squatted directory")
            } catch let error as PoolError {
                #expect(error.status == TP_ERR_PERMISSION, "\(error.message)")
            }
        }
        // Ours, but open to others.
        let open = scratch.path + "/open"
        mkdir(open, 0o755)
        chmod(open, 0o755)
        try withRuntimeDirectory(open) {
            expectRefusal("open to other users") { try Endpoint.prepareToServe(Endpoint.defaultEndpoint()) }
        }
        // A link to a directory of ours: refused too (the link's target can change under us).
        let target = scratch.path + "/target", link = scratch.path + "/link"
        mkdir(target, 0o700)
        symlink(target, link)
        try withRuntimeDirectory(link) {
            expectRefusal("a symbolic link") { try Endpoint.prepareToServe(Endpoint.defaultEndpoint()) }
        }
        // A private directory of ours serves.
        let good = scratch.path + "/good"
        mkdir(good, 0o700)
        try withRuntimeDirectory(good) { try Endpoint.prepareToServe(Endpoint.defaultEndpoint()) }
    }

    /// An explicit endpoint may live in a shared sticky directory (as /tmp), not in one
    /// another user owns or can write into freely, and not on another user's socket.
    @Test(.enabled(if: geteuid() == 0, "needs root to hand files to another uid"))
    func explicitEndpointsNeedATrustedDirectory() throws {
        let scratch = ScratchDirectory()
        let foreign = scratch.path + "/foreign"
        mkdir(foreign, 0o755)
        chown(foreign, 65534, 65534)
        expectRefusal("belongs to uid 65534") { try Endpoint.prepareToServe("ipc://\(foreign)/d.sock") }
        let writable = scratch.path + "/writable"
        mkdir(writable, 0o777)
        chmod(writable, 0o777)
        expectRefusal("not sticky") { try Endpoint.prepareToServe("ipc://\(writable)/d.sock") }
        chmod(writable, 0o1777)
        try Endpoint.prepareToServe("ipc://\(writable)/d.sock")
        // Another user's socket (here a file standing for one) on the path: refused both ways.
        let planted = writable + "/planted.sock"
        close(open(planted, O_CREAT | O_WRONLY, 0o600))
        chown(planted, 65534, 65534)
        expectRefusal("not a socket of this user") { try Endpoint.prepareToServe("ipc://\(planted)") }
        expectRefusal("not a socket of this user") { try Endpoint.checkBeforeConnecting("ipc://\(planted)") }
    }

    /// A daemon that cannot bind says why and leaves nothing behind, quickly: a port in use,
    /// an endpoint already served, a directory it may not use, an unknown transport.
    @Test func startUpFailuresAreImmediateAndClean() throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let running = try RunningServer()
        defer { running.stop() }
        let tcp = try PoolServer(configuration: ServerConfiguration(endpoints: ["tcp://127.0.0.1:0"]), logger: logger)
        let port = tcp.boundEndpoints[0]
        defer { tcp.requestShutdown(); try? tcp.run() }
        for (endpoint, fragment) in [(port, "Address already in use"), (running.endpoint, "already serving"),
                                     ("ipc:///proc/nonexistent/x.sock", "cannot create"), ("udp://127.0.0.1:5", "only ipc")] {
            let started = monotonicSeconds()
            do {
                _ = try PoolServer(configuration: ServerConfiguration(endpoints: [endpoint]), logger: logger)
                Issue.record("a daemon started on \(endpoint)")
            } catch {
                #expect("\(error)".contains(fragment), "\(endpoint): \(error)")
            }
            #expect(monotonicSeconds() - started < 2, "\(endpoint) took \(monotonicSeconds() - started) s to fail")
        }
        // The first daemon still serves.
        let client = try PoolClient(endpoint: running.endpoint, timeoutMs: 30_000)
        #expect(try client.ping() > 0)
        client.close()
    }
}
