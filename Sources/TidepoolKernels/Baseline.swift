import TidepoolTypes

/// The kernels built for every x86-64 CPU (and for any other architecture, as it is).
/// The level this build of Shared/ runs at (see TidepoolKernelsAVX2's).
@usableFromInline let kernelLevel = CPULevel.baseline

public enum BaselineKernels: PoolKernels {
    package static let level = kernelLevel
    package static func run(_ call: KernelCall) throws -> Int { try runKernels(call) }
    package static func runBackward(_ call: BackwardCall) throws { try runBackwardKernels(call) }
}
