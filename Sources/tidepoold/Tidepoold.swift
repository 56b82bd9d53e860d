import ArgumentParser
import Logging
import TidepoolCore
import TidepoolServer

#if canImport(Glibc)
import Glibc
#endif

extension Logger.Level: @retroactive ExpressibleByArgument {}

@main
struct Tidepoold: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tidepoold",
        abstract: "Tidepool's pooling daemon: MLX-exact pooling jobs over ZeroMQ, tensors in shared memory.",
        discussion: """
            Default endpoint: $TIDEPOOL_ENDPOINT, else ipc://$XDG_RUNTIME_DIR/tidepool.sock, else \
            ipc:///tmp/tidepool-$UID/tidepool.sock. A tcp endpoint without a host (tcp://:5555) binds to \
            loopback only. SIGINT or SIGTERM stops taking jobs, answers those in flight, and exits 0.
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

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: Logger.Level = .info

    func validate() throws {
        guard (0...PoolEngine.maxThreads).contains(threads) else {
            throw ValidationError("--threads must be between 0 and \(PoolEngine.maxThreads)")
        }
        guard maxInflight > 0 else { throw ValidationError("--max-inflight must be positive") }
        guard maxJobBytes > 0 else { throw ValidationError("--max-job-bytes must be positive") }
    }

    func run() throws {
        // Block SIGINT/SIGTERM before any thread exists, so every thread (libzmq's, Dispatch's)
        // inherits the mask and the signals wait for the one thread that takes them with
        // sigwait. Otherwise one can be delivered to a thread that does not handle it.
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        sigaddset(&stopSignals, SIGINT)
        sigaddset(&stopSignals, SIGTERM)
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
        let configuration = ServerConfiguration(
            endpoints: endpoints.isEmpty ? [Endpoint.defaultEndpoint()] : endpoints, threads: threads,
            maxInflight: maxInflight, maxJobBytes: maxJobBytes)
        let server: PoolServer
        do {
            server = try PoolServer(configuration: configuration, logger: logger)
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            throw ExitCode.failure
        }
        // The signal thread only asks the loop to drain and stop.
        SignalWaiter.start(signals: stopSignals) { signalNumber in
            logger.info("signal received", metadata: ["signal": "\(signalNumber == SIGINT ? "SIGINT" : "SIGTERM")"])
            server.requestShutdown()
        }
        print("tidepoold \(TidepoolVersion.string) listening on \(server.boundEndpoints.joined(separator: " "))")
        fflush(stdout)
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
