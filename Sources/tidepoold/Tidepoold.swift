import CTidepoolSystem
import ArgumentParser
import Logging
import TidepoolCore
import TidepoolEndpoint
import TidepoolServer
import TidepoolSync
import TidepoolZMQ

#if canImport(Glibc)
import Glibc
#endif

extension Logger.Level: @retroactive ExpressibleByArgument {}

@main
enum Main {
    /// `tidepoold keygen NAME` is a command of its own; everything else serves, so that
    /// `tidepoold --help` still lists the daemon's options.
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.first == "keygen" {
            Keygen.main(Array(arguments.dropFirst()))
        } else {
            Tidepoold.main(arguments)
        }
    }
}

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tidepoold keygen",
        abstract: "Write a new CurveZMQ key pair: NAME.key (public, mode 0644) and NAME.key_secret (mode 0600).",
        discussion: """
            The files are ZeroMQ's text certificates, as CZMQ's zcert and pyzmq's \
            zmq.auth.create_certificates write them. The daemon's: pass NAME.key_secret to \
            --curve-secret-key and give clients NAME.key (or the public key printed here). A client's: \
            copy NAME.key into the daemon's --curve-authorized-keys directory (then SIGHUP the daemon) \
            and give the client NAME.key_secret. Existing files are never replaced.
            """)

    @Argument(help: "Path and name of the pair, without suffix.")
    var name: String

    func run() throws {
        do {
            let certificate = try CurveCertificate.generate()
            let paths = try certificate.write(base: name, generator: "tidepoold \(TidepoolVersion.string)")
            print("public key \(certificate.publicKey.z85)")
            print("wrote \(paths.publicPath) (public) and \(paths.secretPath) (secret, mode 0600)")
        } catch {
            fputs("tidepoold keygen: \(error)\n", stderr)
            throw ExitCode.failure
        }
    }
}

struct Tidepoold: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tidepoold",
        abstract: "Tidepool's pooling daemon: MLX-exact pooling jobs over ZeroMQ, tensors in shared memory.",
        discussion: """
            Default endpoint: $TIDEPOOL_ENDPOINT, else ipc://$XDG_RUNTIME_DIR/tidepool.sock, else \
            ipc:///tmp/tidepool-$UID/tidepool.sock; a default directory must be this user's, mode 0700, \
            or the daemon refuses to start. A tcp endpoint without a host (tcp://:5555) binds to \
            loopback only; a tcp endpoint on any other address needs CURVE (--curve-secret-key and \
            --curve-authorized-keys: every tcp endpoint is then encrypted and admits only the listed client \
            keys; make keys with `tidepoold keygen NAME`; SIGHUP re-reads the directory) or --insecure \
            (anyone who reaches the port runs jobs). tcp never carries shared memory. SIGINT or SIGTERM stops taking jobs, answers those in \
            flight, and exits 0; a failure to start exits 1 at once, saying why. The kernels are the best this CPU runs \
            (x86-64-v3 or baseline x86-64, logged at start and in STATS); TIDEPOOL_CPU=baseline forces the \
            baseline.
            """,
        version: TidepoolVersion.string)

    @Option(name: .customLong("endpoint"), help: "Endpoint to bind (ipc:// or tcp://); repeat for several.")
    var endpoints: [String] = []

    @Option(help: "Engine threads per job (0: one per CPU).")
    var threads: Int = 0

    @Option(name: .customLong("max-inflight"), help: "Jobs queued or running at once; more get a busy reply.")
    var maxInflight: Int = 64

    @Option(name: .customLong("max-job-bytes"), help: "Largest input plus output of one job, in bytes.")
    var maxJobBytes: Int = 1 << 30

    @Option(name: .customLong("max-queued-bytes"),
            help: "Inline output bytes held for all clients (computed, not yet read); one client may hold half. Default: twice --max-job-bytes.")
    var maxQueuedBytes: Int?

    @Option(name: .customLong("curve-secret-key"), help: ArgumentHelp(
        "The daemon's secret certificate (NAME.key_secret): every tcp endpoint speaks CurveZMQ.", valueName: "path"))
    var curveSecretKey: String?

    @Option(name: .customLong("curve-authorized-keys"), help: ArgumentHelp(
        "Directory of the public certificates (*.key) of the clients admitted over tcp; re-read on SIGHUP.", valueName: "dir"))
    var curveAuthorizedKeys: String?

    @Flag(help: "Allow tcp on a non-loopback address without CURVE: anyone who reaches the port runs jobs.")
    var insecure = false

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: Logger.Level = .info

    var serverConfiguration: ServerConfiguration {
        var configuration = ServerConfiguration(endpoints: endpoints.isEmpty ? [Endpoint.defaultEndpoint()] : endpoints,
                                                threads: threads, maxInflight: maxInflight, maxJobBytes: maxJobBytes,
                                                maxQueuedBytes: maxQueuedBytes)
        configuration.curveSecretKey = curveSecretKey
        configuration.curveAuthorizedKeys = curveAuthorizedKeys
        configuration.insecure = insecure
        return configuration
    }

    func validate() throws {
        guard (0...PoolEngine.maxThreads).contains(threads) else {
            throw ValidationError("--threads must be between 0 and \(PoolEngine.maxThreads)")
        }
        do {
            try serverConfiguration.validate()
        } catch {
            throw ValidationError("\(error)")
        }
    }

    func run() throws {
        // Block SIGINT/SIGTERM before any thread exists, so every thread (libzmq's, the engine's)
        // inherits the mask and the signals wait for the one thread that takes them with
        // sigwait. Otherwise one can be delivered to a thread that does not handle it.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        sigaddset(&stopSignals, SIGINT)
        sigaddset(&stopSignals, SIGTERM)
        // SIGHUP re-reads the CURVE authorized keys (and no longer ends the daemon).
        sigaddset(&stopSignals, SIGHUP)
        pthread_sigmask(SIG_BLOCK, &stopSignals, nil)
        signal(SIGPIPE, SIG_IGN)
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "tidepoold")
        // Each client holding regions costs a pidfd besides its socket: allow as many open
        // files as the hard limit does, so many clients cannot starve libzmq of descriptors.
        var files = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &files) == 0, files.rlim_cur < files.rlim_max {
            files.rlim_cur = files.rlim_max
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &files)
        }
        // The signal thread runs from the start, so a stop signal works even while the daemon
        // is still binding: then it exits at once; later it asks the loop to drain and stop.
        let running = Locked<PoolServer?>(nil)
        let reloadWhenStarted = Locked(false)
        SignalWaiter.start(signals: stopSignals) { signalNumber in
            if signalNumber == SIGHUP {
                // Before the server exists, the reload waits for it (the keys it is loading
                // may predate the change the signal announces).
                let server = running.withLock { server -> PoolServer? in
                    if server == nil { reloadWhenStarted.withLock { $0 = true } }
                    return server
                }
                server?.reloadAuthorizedKeys()
                return
            }
            let name = signalNumber == SIGINT ? "SIGINT" : "SIGTERM"
            logger.info("signal received", metadata: ["signal": "\(name)"])
            guard let server = running.withLock({ $0 }) else {
                logger.notice("stopped during start-up")
                Glibc.exit(1)
            }
            _ = tpsys_notify("STOPPING=1")
            server.requestShutdown()
        }
        let server: PoolServer
        do {
            server = try PoolServer(configuration: serverConfiguration, logger: logger)
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            throw ExitCode.failure
        }
        running.withLock { $0 = server }
        if reloadWhenStarted.withLock({ $0 }) { server.reloadAuthorizedKeys() }
        print("tidepoold \(TidepoolVersion.string) listening on \(server.boundEndpoints.joined(separator: " "))")
        fflush(stdout)
        // Readiness for systemd (Type=notify): every endpoint is bound and served from here on.
        if tpsys_notify("READY=1\nSTATUS=listening on \(server.boundEndpoints.joined(separator: " "))") < 0 {
            logger.warning("cannot notify the service manager", metadata: ["error": "\(String(cString: strerror(errno)))"])
        }
        try server.run()
    }
}

/// A detached thread that takes the blocked stop signals with sigwait, forever.
enum SignalWaiter {
    final class Context {
        let signals: sigset_t
        let handler: (Int32) -> Void
        init(signals: sigset_t, handler: @escaping (Int32) -> Void) {
            self.signals = signals
            self.handler = handler
        }
    }

    static func start(signals: sigset_t, handler: @escaping (Int32) -> Void) {
        let context = Unmanaged.passRetained(Context(signals: signals, handler: handler)).toOpaque()
        var thread = pthread_t()
        pthread_create(&thread, nil, { raw in
            let context = Unmanaged<Context>.fromOpaque(raw!).takeRetainedValue()
            var signals = context.signals
            while true {
                var received: Int32 = 0
                if sigwait(&signals, &received) == 0 { context.handler(received) }
            }
        }, context)
        pthread_detach(thread)
    }
}
