import TidepoolTypes

/// The kernels built for every x86-64 CPU (and for any other architecture, as it is).
public enum BaselineKernels: PoolKernels {
    package static let level = CPULevel.baseline
    package static func run(_ call: KernelCall) throws -> Int { try runKernels(call) }
    package static func runBackward(_ call: BackwardCall) throws { try runBackwardKernels(call) }
}
