import Testing
import TidepoolCore

#if canImport(Glibc)
import Glibc
#endif

/// The kernels exist once per CPU level (KernelSelection.swift). The baseline build is tested
/// on every machine; the AVX2 build where the CPU has it, against the baseline bit for bit.
@Suite struct CPULevelTests {
    @Test func namesAndRequests() {
        #expect(CPULevel(name: "baseline") == .baseline)
        #expect(CPULevel(name: "X86-64") == .baseline)
        #expect(CPULevel(name: "avx2") == .avx2)
        #expect(CPULevel(name: "x86-64-v3") == .avx2)
        #expect(CPULevel(name: "avx512") == nil)
        #expect(CPULevel(name: "") == nil)
        let best = KernelSelection.best
        for unset in [nil, "", "auto", "AUTO"] {
            let chosen = KernelSelection.level(requested: unset)
            #expect(chosen.level == best && chosen.warning == nil, "\(unset ?? "nil")")
        }
        let baseline = KernelSelection.level(requested: "baseline")
        #expect(baseline.level == .baseline && baseline.warning == nil)
        let typo = KernelSelection.level(requested: "avx-2")
        #expect(typo.level == best)
        #expect(typo.warning?.contains("TIDEPOOL_CPU=avx-2 names no CPU level") == true, "\(typo.warning ?? "")")
        let avx2 = KernelSelection.level(requested: "avx2")
        if KernelSelection.supports(.avx2) {
            #expect(avx2.level == .avx2 && avx2.warning == nil)
        } else {
            #expect(avx2.level == .baseline)
            #expect(avx2.warning?.contains("this CPU cannot run x86-64-v3") == true)
        }
    }

    /// x86-64-v3 is chosen exactly where the kernel's CPU flags list all of its features.
    @Test func avx2WhereTheCPUHasIt() {
        let flags = cpuFlags()
        #if arch(x86_64)
        let v3 = ["avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe", "abm", "xsave"].allSatisfy { flags.contains($0[...]) }
        #expect(KernelSelection.supports(.avx2) == v3, "flags: \(flags.sorted().joined(separator: " "))")
        #else
        #expect(!KernelSelection.supports(.avx2))
        #endif
        #expect(KernelSelection.supports(.baseline))
        #expect(PoolEngine(threads: 1, cpuLevel: .baseline).cpuLevel == .baseline)
        #expect(PoolEngine.shared.cpuLevel == KernelSelection.processLevel)
    }

    /// One random configuration: any dims, kind, dtype, window, stride and padding, contiguous
    /// or a strided view (every other channel).
    struct Config: CustomStringConvertible {
        let desc: PoolDescriptor, dtype: DType, shape: [Int], strides: [Int], storage: Buffer
        var description: String { "\(desc) \(dtype) \(shape) strides \(strides)" }

        init(_ rng: inout SplitMix64) {
            let dims = Int.random(in: 1...3, using: &rng)
            let kernel = (0..<dims).map { _ in Int.random(in: 1...6, using: &rng) }
            let stride = kernel.map { Int.random(in: 1...($0 + 1), using: &rng) }
            let padding = kernel.map { Int.random(in: 0...($0 / 2), using: &rng) }
            desc = PoolDescriptor(kind: Bool.random(using: &rng) ? .average : .max, kernelSize: kernel, stride: stride,
                                  padding: padding)
            dtype = DType.allCases.randomElement(using: &rng)!
            let channels = [1, 2, 3, 4, 5, 8, 9, 16, 17, 33].randomElement(using: &rng)!
            let spatial = zip(kernel, padding).map { k, p in Int.random(in: Swift.max(1, k - 2 * p)...(k + 24 / dims + 4), using: &rng) }
            shape = [Int.random(in: 1...2, using: &rng)] + spatial + [channels]
            let every = Bool.random(using: &rng) ? 2 : 1
            var dense = TensorView.contiguousStrides(Array(shape.dropLast()) + [channels * every])
            dense[dense.count - 1] = every
            strides = dense
            storage = randomInput(dtype, shape: Array(shape.dropLast()) + [channels * every], seed: rng.next())
        }
    }

    static let configurations = 250

    /// Runs everywhere: the baseline build, with default and tiny tiles, against the float64
    /// reference on random configurations.
    @Test func baselineMatchesTheReference() throws {
        var rng = SplitMix64(seed: 77)
        let engines = [(KernelSettings.defaultTileBudgetBytes, PoolEngine(threads: 2, serialWorkBelow: 0, cpuLevel: .baseline)),
                       (300, PoolEngine(threads: 2, tileBudgetBytes: 300, serialWorkBelow: 0, cpuLevel: .baseline))]
        for _ in 0..<Self.configurations {
            let c = Config(&rng)
            try checkEngines(engines, c.desc, c.dtype, storage: c.storage, shape: c.shape, strides: c.strides)
        }
    }

    /// Runs only where the CPU has x86-64-v3 (its sibling above runs everywhere): the AVX2
    /// build gives the baseline's bits on random configurations, for 1 and 2 threads and with
    /// tiny tiles, so either build can serve any caller.
    @Test(.enabled(if: KernelSelection.supports(.avx2), "this CPU lacks x86-64-v3"))
    func avx2GivesTheBaselinesBits() throws {
        var rng = SplitMix64(seed: 78)
        let baseline = PoolEngine(threads: 1, cpuLevel: .baseline)
        let others = [PoolEngine(threads: 1, cpuLevel: .avx2), PoolEngine(threads: 2, tileBudgetBytes: 300, serialWorkBelow: 0, cpuLevel: .avx2)]
        for _ in 0..<Self.configurations {
            let c = Config(&rng)
            let expected = try runEngine(c.desc, storage: c.storage, offset: 0, shape: c.shape, strides: c.strides,
                                         engine: baseline)
            let bytes = expected.output.count * expected.output.dtype.size
            for engine in others {
                let run = try runEngine(c.desc, storage: c.storage, offset: 0, shape: c.shape, strides: c.strides, engine: engine)
                #expect(memcmp(expected.output.raw, run.output.raw, bytes) == 0, "\(c) budget \(engine.settings.tileBudgetBytes)")
            }
        }
    }
}
