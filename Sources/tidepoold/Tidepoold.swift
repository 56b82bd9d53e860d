import ArgumentParser
import Dispatch
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
        // Signals arrive on a Dispatch queue and only ask the loop to drain and stop.
        signal(SIGPIPE, SIG_IGN)
        var sources: [DispatchSourceSignal] = []
        for signalNumber in [SIGINT, SIGTERM] {
            signal(signalNumber, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
            source.setEventHandler {
                logger.info("signal received", metadata: ["signal": "\(signalNumber == SIGINT ? "SIGINT" : "SIGTERM")"])
                server.requestShutdown()
            }
            source.resume()
            sources.append(source)
        }
        print("tidepoold \(TidepoolVersion.string) listening on \(server.boundEndpoints.joined(separator: " "))")
        fflush(stdout)
        try server.run()
        sources.forEach { $0.cancel() }
    }
}
