import TidepoolEndpoint

/// What tidepoold is told on its command line.
public struct ServerConfiguration: Sendable {
    public var endpoints: [String]
    /// Engine threads per job; 0 means one per CPU.
    public var threads: Int
    /// Jobs queued or running at once; more get a TP_ERR_BUSY reply at once.
    public var maxInflight: Int
    /// Input plus output bytes of one job.
    public var maxJobBytes: Int
    /// Inline output bytes the daemon holds for all clients together: outputs of jobs
    /// admitted and replies not yet taken by their client. One client may hold half of it.
    /// At least twice `maxJobBytes`, so any one job can be admitted.
    public var maxQueuedBytes: Int
    /// How long shutdown waits for queued replies to leave the socket.
    public var shutdownLingerMs: Int32
    /// Called on the thread that runs each job, before it runs (the lead has then passed to
    /// another thread); tests block in it to hold jobs in flight deterministically.
    public var jobGate: (@Sendable () -> Void)?
    /// CurveZMQ on every tcp endpoint: the daemon's secret certificate (NAME.key_secret) and
    /// the directory of the public certificates (*.key) of the clients it admits. Both or
    /// neither.
    public var curveSecretKey: String?
    public var curveAuthorizedKeys: String?
    /// Serve tcp on an address other hosts may reach without CURVE (anyone reaching the port
    /// could run jobs).
    public var insecure = false

    public init(endpoints: [String] = [Endpoint.defaultEndpoint()], threads: Int = 0, maxInflight: Int = 64,
                maxJobBytes: Int = 1 << 30, maxQueuedBytes: Int? = nil, shutdownLingerMs: Int32 = 2000) {
        self.endpoints = endpoints
        self.threads = threads
        self.maxInflight = maxInflight
        self.maxJobBytes = maxJobBytes
        let (twice, overflow) = maxJobBytes.multipliedReportingOverflow(by: 2)
        self.maxQueuedBytes = maxQueuedBytes ?? (overflow ? Int.max : twice)
        self.shutdownLingerMs = shutdownLingerMs
    }

    /// The checks a configuration must pass, as messages naming the option.
    public func validate() throws {
        guard !endpoints.isEmpty else { throw ServerError("at least one endpoint is needed") }
        guard threads >= 0 else { throw ServerError("--threads must not be negative") }
        guard maxInflight > 0 else { throw ServerError("--max-inflight must be positive") }
        guard maxJobBytes > 0 else { throw ServerError("--max-job-bytes must be positive") }
        guard maxJobBytes <= Int.max - 4096 else { throw ServerError("--max-job-bytes must be below 2^63 - 4096") }
        guard (curveSecretKey == nil) == (curveAuthorizedKeys == nil) else {
            throw ServerError(curveSecretKey == nil
                ? "--curve-authorized-keys needs --curve-secret-key (the daemon's own secret certificate)"
                : "--curve-secret-key needs --curve-authorized-keys DIR (the public certificates of the clients to admit)")
        }
        if curveSecretKey == nil && !insecure {
            for endpoint in endpoints {
                let address = Endpoint.bindAddress(endpoint)
                if address.hasPrefix("tcp://") && !Endpoint.isLoopbackTCP(address) {
                    throw ServerError("refusing to serve \(address) without CURVE: other hosts may reach it, and anyone who "
                        + "can would run jobs unauthenticated and unencrypted; give --curve-secret-key and "
                        + "--curve-authorized-keys (see `tidepoold keygen`), bind a loopback address, or pass --insecure")
                }
            }
        }
        guard maxQueuedBytes / 2 >= maxJobBytes else {
            throw ServerError("--max-queued-bytes (\(maxQueuedBytes)) must be at least twice --max-job-bytes (\(maxJobBytes)), "
                + "so that one client's largest job fits in its half")
        }
    }
}

public struct ServerError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
