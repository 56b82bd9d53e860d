#if canImport(Glibc)
import Glibc
#endif

/// The one clock of both ends of the protocol (timeouts, sweeps, intervals): CLOCK_MONOTONIC,
/// which wall-clock changes do not move.
public func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}

public func monotonicSeconds() -> Double {
    Double(monotonicNanoseconds()) / 1e9
}
