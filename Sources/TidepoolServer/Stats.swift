import TidepoolCore
import TidepoolProtocol

/// Counters the daemon reports in a STATS reply, as JSON.
struct ServerStats {
    var jobsCompleted = 0
    var jobsFailed = 0
    var busyRejections = 0
    var protocolErrors = 0
    var bytesProcessed = 0
    var regionsRegistered = 0
    var repliesDropped = 0
    var permissionDenials = 0

    func json(inflight: Int, clients: Int, regions: Int, queuedBytes: Int, uptimeSeconds: Double,
              configuration: ServerConfiguration, threads: Int, cpuLevel: CPULevel,
              curve: (authorizedKeys: Int, refusals: Int)? = nil) -> String {
        var fields: [(String, String)] = [
            ("version", "\"\(TidepoolVersion.string)\""),
            ("protocol_version", "\(Wire.version)"),
            ("uptime_seconds", String(format3(uptimeSeconds))),
            ("jobs_completed", "\(jobsCompleted)"),
            ("jobs_failed", "\(jobsFailed)"),
            ("busy_rejections", "\(busyRejections)"),
            ("protocol_errors", "\(protocolErrors)"),
            ("replies_dropped", "\(repliesDropped)"),
            ("permission_denials", "\(permissionDenials)"),
            ("bytes_processed", "\(bytesProcessed)"),
            ("jobs_inflight", "\(inflight)"),
            ("clients", "\(clients)"),
            ("regions", "\(regions)"),
            ("regions_registered", "\(regionsRegistered)"),
            ("queued_bytes", "\(queuedBytes)"),
            ("threads", "\(threads)"),
            ("cpu_level", "\"\(cpuLevel)\""),
            ("max_inflight", "\(configuration.maxInflight)"),
            ("max_job_bytes", "\(configuration.maxJobBytes)"),
            ("max_queued_bytes", "\(configuration.maxQueuedBytes)"),
            ("curve", curve == nil ? "false" : "true"),
        ]
        if let curve {
            fields += [("curve_authorized_keys", "\(curve.authorizedKeys)"), ("curve_refusals", "\(curve.refusals)")]
        }
        return "{" + fields.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}"
    }

}

/// `value` with three decimals (non-negative values; no Foundation formatting in the daemon).
func format3(_ value: Double) -> String {
    let millis = Int((value * 1000).rounded())
    return "\(millis / 1000).\(String(millis % 1000 + 1000).dropFirst())"
}
