import Logging
import TidepoolSync

/// Lets through at most `burst` log lines of one kind per `interval` seconds, and says how many
/// it held back on the next line of that kind it lets through (`held_back_before`).
///
/// Why: the daemon logs each refused request and each refused tcp connection, and a hostile
/// or broken client can send a hundred thousand of them a minute, which would fill the journal
/// (or the disk under it) and bury every other line. The daemon's stats (protocol_errors,
/// permission_denials, jobs_failed, curve_refusals) still count every one. Kinds are the
/// daemon's own fixed names, never text from a request, so the table stays small.
public final class LogLimiter: Sendable {
    private struct Window {
        var start: Double
        var logged: Int
        var held: Int
    }

    public let burst: Int
    public let interval: Double
    private let now: @Sendable () -> Double
    private let windows = Locked<[String: Window]>([:])

    public init(burst: Int = 20, interval: Double = 10, now: @escaping @Sendable () -> Double = { monotonicSeconds() }) {
        self.burst = burst
        self.interval = interval
        self.now = now
    }

    /// Whether a line of `kind` is logged now: nil if not (it is counted), else the number of
    /// lines of that kind held back since the last one logged.
    public func admit(_ kind: String) -> Int? {
        let time = now()
        return windows.withLock { windows in
            var window = windows[kind] ?? Window(start: time, logged: 0, held: 0)
            if time - window.start >= interval {
                window.start = time
                window.logged = 0
            }
            defer { windows[kind] = window }
            guard window.logged < burst else {
                window.held += 1
                return nil
            }
            window.logged += 1
            let held = window.held
            window.held = 0
            return held
        }
    }

    /// Logs `message` through `logger` if its kind (the message, one of the daemon's fixed
    /// texts) is admitted, noting how many were held back before it.
    public func log(_ logger: Logger, _ level: Logger.Level, _ message: Logger.Message,
                    metadata: @autoclosure () -> Logger.Metadata = [:]) {
        guard logger.logLevel <= level, let held = admit(message.description) else { return }
        var fields = metadata()
        if held > 0 { fields["held_back_before"] = "\(held)" }
        logger.log(level: level, message, metadata: fields)
    }
}
