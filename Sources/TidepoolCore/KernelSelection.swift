import CTidepoolVector
import enum TidepoolKernels.BaselineKernels
import enum TidepoolKernelsAVX2.AVX2Kernels

#if canImport(Glibc)
import Glibc
#endif

/// Which build of the kernels runs: one library serves every x86-64 CPU, so the hot loops
/// exist once per CPU level (TidepoolKernels, TidepoolKernelsAVX2: the same sources) and the
/// level is chosen here at run time, never assumed from the build machine.
public enum KernelSelection {
    /// Names a level for the process (`CPULevel(name:)`), e.g. TIDEPOOL_CPU=baseline to run
    /// and test the kernels every x86-64 runs on a CPU that has better ones.
    public static let environmentVariable = "TIDEPOOL_CPU"

    /// Whether this CPU runs the kernels built for `level`.
    public static func supports(_ level: CPULevel) -> Bool {
        switch level {
        case .baseline: return true
        case .avx2: return tpvector_supports_x86_64_v3() != 0
        }
    }

    /// The best level this CPU runs.
    public static var best: CPULevel { CPULevel.allCases.last(where: supports)! }

    /// The level for a process whose TIDEPOOL_CPU is `requested` (nil when unset), and why
    /// it is not the one asked for when it is not. Unset, empty or "auto" gives the best;
    /// a name of no level, or of one this CPU lacks, gives the best too (never an illegal
    /// instruction), with the reason.
    public static func level(requested: String?) -> (level: CPULevel, warning: String?) {
        guard let requested, !requested.isEmpty, requested.lowercased() != "auto" else { return (best, nil) }
        guard let level = CPULevel(name: requested) else {
            let names = CPULevel.allCases.map { "\"\($0)\"" }.joined(separator: ", ")
            return (best, "\(environmentVariable)=\(requested) names no CPU level (\"baseline\", \"avx2\", \(names) or "
                + "\"auto\"); using \(best)")
        }
        guard supports(level) else {
            return (best, "\(environmentVariable)=\(requested): this CPU cannot run \(level); using \(best)")
        }
        return (level, nil)
    }

    /// The process's level, decided once from TIDEPOOL_CPU and the CPU. A request that cannot
    /// be honoured is said once on standard error (as OpenMP does for its variables): the
    /// library has no other channel before its first call returns.
    public static let processLevel: CPULevel = {
        let (chosen, warning) = KernelSelection.level(requested: getenv(environmentVariable).map { String(cString: $0) })
        if let warning { fputs("tidepool: \(warning)\n", stderr) }
        return chosen
    }()

    static func kernels(_ level: CPULevel) -> any PoolKernels.Type {
        switch level {
        case .baseline: return BaselineKernels.self
        case .avx2: return AVX2Kernels.self
        }
    }
}
