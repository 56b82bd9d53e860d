import TidepoolTypes

/// The kernels of Shared/ (a link to TidepoolKernels' sources) built for x86-64-v3: AVX2 and
/// FMA vectors, F16C half-float conversions. Called only where the CPU has them.
/// The level this build of Shared/ runs at, where the shared code calls a C kernel built for
/// one (`splitIntoPhases`).
@usableFromInline let kernelLevel = CPULevel.avx2

public enum AVX2Kernels: PoolKernels {
    package static let level = kernelLevel
    package static func run(_ call: KernelCall) throws -> Int { try runKernels(call) }
    package static func runBackward(_ call: BackwardCall) throws { try runBackwardKernels(call) }
}
