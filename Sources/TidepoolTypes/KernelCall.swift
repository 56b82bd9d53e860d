import CTidepool
#if canImport(Glibc)
import Glibc
#endif

/// What passes between TidepoolCore (validation, threads, the public engine) and a build of
/// the kernels (TidepoolKernels, compiled once per CPU level from the same sources): plain
/// values, so the kernels' generic code never crosses a module boundary unspecialised.

/// The instruction sets the kernels are built for. Every level but `baseline` runs only where
/// the CPU has it (checked at run time, never assumed from the build machine).
public enum CPULevel: String, CaseIterable, Sendable, CustomStringConvertible {
    /// x86-64 as every 64-bit x86 CPU runs it (SSE2).
    case baseline = "x86-64"
    /// x86-64-v3: AVX2, FMA, F16C, BMI1/2, LZCNT, MOVBE (Intel Haswell and AMD Zen onwards).
    case avx2 = "x86-64-v3"

    public var description: String { rawValue }

    /// The level named by `name` as TIDEPOOL_CPU takes it: "baseline" or "x86-64", "avx2" or
    /// "x86-64-v3"; nil for anything else.
    public init?(name: String) {
        switch name.lowercased() {
        case "baseline", "x86-64": self = .baseline
        case "avx2", "x86-64-v3": self = .avx2
        default: return nil
        }
    }
}

/// An engine's settings that the kernels follow; tests change them to reach every path.
public struct KernelSettings: Sendable, Equatable {
    /// Scratch per thread for a tile: most of a core's L2, where a tile's rows and planes stay
    /// between their passes (`tileBudget(level2CacheBytes:)`).
    public static let defaultTileBudgetBytes = tileBudget(level2CacheBytes: sysconf(Int32(_SC_LEVEL2_CACHE_SIZE)))
    /// Outputs at least this large (with 8+ channels) are written with streaming stores.
    public static let defaultStreamingOutputBytes = 4 << 20
    /// State per thread of the max's gradient (its planes of row, plane and window maxima),
    /// before its planes are cut into bands of rows.
    public static let defaultGradientStateBytes = 2 << 20
    /// Windows of at least this many taps along an axis (and at least twice its stride) fold by
    /// block scans, and the max along W by doubling, whose cost does not grow with the window,
    /// instead of tap by tap: from 6 taps, and for the max of float32 and float64 from 4. Their
    /// merge (two compares and a blend, so that NaNs win) costs more than an add or an integer
    /// max (16-bit floats compare as integers), so the scans' fixed passes pay off sooner
    /// (docs/performance.md has the measurements).
    public static let defaultBlockScanTaps = 6
    public static let defaultFloatMaxBlockScanTaps = 4

    /// Seven eighths of an L2 of `level2CacheBytes` per core, from 512 KB (also where the size
    /// is unknown: sysconf gives 0 or -1) to 896 KB (the largest measured). The budget changes
    /// tiles, never results (the plan does not depend on it), so machines may differ in it.
    public static func tileBudget(level2CacheBytes: Int) -> Int {
        Swift.min(Swift.max(level2CacheBytes / 8 * 7, 512 << 10), 896 << 10)
    }

    /// Scratch per thread for a tile of windows one row and one plane tall (1-d pooling), whose
    /// tiles share no rows: the L1 data cache, from 32 KB (also where sysconf does not know)
    /// to 64 KB, so that a tile's rows stay in L1 between their passes (`TilePlan`). Never
    /// above `tileBudgetBytes`; like it, it changes tiles, never results.
    public static let rowTileBudgetBytes = Swift.min(Swift.max(sysconf(Int32(_SC_LEVEL1_DCACHE_SIZE)), 32 << 10), 64 << 10)

    public var tileBudgetBytes: Int
    public var streamingOutputBytes: Int
    public var gradientStateBytes: Int
    /// Where set, both scan thresholds (`defaultBlockScanTaps`, `defaultFloatMaxBlockScanTaps`) at
    /// once: tests lower it to take the block scans on small windows too, or raise it to keep the
    /// folds.
    public var blockScanTaps: Int?
    /// Whether the C vector kernels (`VectorFinish`) run where the CPU has them; tests turn
    /// them off to compare with the Swift loops.
    public var usesVectorKernels: Bool
    /// 2-d poolings whose H windows scan run with their rows as planes (`KernelPlan.forCall`)
    /// where a plane holds more than this many bytes of accumulators: by default the smallest
    /// tile budget (a plane that fits one tile redoes no rows). Tests set 0 to take that path
    /// on small planes, or Int.max to keep the H scans.
    public var rowsAsPlanesAbove: Int
    /// Calls and gradients whose windows read fewer elements than this run on the calling
    /// thread alone: waking a worker would cost more than it saves. Tests set 0 to split
    /// small calls among threads too.
    public static let defaultSerialWorkBelow = 1 << 16
    public var serialWorkBelow: Int
    /// Whether strided rows alone of 1 or 2 channels of float16 and bfloat16 averages are split
    /// into the stride's phases (`WidthPlan`); tests turn it off to compare with rows reduced
    /// at every position and subsampled.
    public var splitsRows: Bool

    public init(tileBudgetBytes: Int = defaultTileBudgetBytes, streamingOutputBytes: Int = defaultStreamingOutputBytes,
                usesVectorKernels: Bool = true, gradientStateBytes: Int = defaultGradientStateBytes,
                blockScanTaps: Int? = nil, rowsAsPlanesAbove: Int = tileBudget(level2CacheBytes: 0),
                serialWorkBelow: Int = defaultSerialWorkBelow, splitsRows: Bool = true) {
        self.tileBudgetBytes = tileBudgetBytes
        self.splitsRows = splitsRows
        self.serialWorkBelow = serialWorkBelow
        self.rowsAsPlanesAbove = rowsAsPlanesAbove
        self.blockScanTaps = blockScanTaps
        self.streamingOutputBytes = streamingOutputBytes
        self.gradientStateBytes = gradientStateBytes
        self.usesVectorKernels = usesVectorKernels
    }
}

/// One validated pooling: the geometry checked by `PoolEngine.plan`, a non-empty output, and
/// memory the caller guarantees for the call's duration.
package struct KernelCall: @unchecked Sendable {
    package let geometry: PoolGeometry
    package let kind: PoolKind
    package let dtype: DType
    package let input: UnsafeRawPointer
    package let output: UnsafeMutableRawPointer
    package let threads: Int
    package let settings: KernelSettings
    package let progress: (@Sendable () -> Void)?
    package let isCancelled: (@Sendable () -> Bool)?

    package init(geometry: PoolGeometry, kind: PoolKind, dtype: DType, input: UnsafeRawPointer,
                 output: UnsafeMutableRawPointer, threads: Int, settings: KernelSettings,
                 progress: (@Sendable () -> Void)?, isCancelled: (@Sendable () -> Bool)?) {
        self.geometry = geometry
        self.kind = kind
        self.dtype = dtype
        self.input = input
        self.output = output
        self.threads = threads
        self.settings = settings
        self.progress = progress
        self.isCancelled = isCancelled
    }
}

/// How max pooling's gradient treats a window with several positions equal to its maximum.
public enum MaxTies: String, CaseIterable, Sendable {
    /// MLX's rule (it differentiates `max` through `x == max(x)`): the window's cotangent is
    /// split evenly among all of them, padding positions included, whose shares are dropped;
    /// a window whose maximum is NaN gives NaN to every element in it.
    case split
    /// PyTorch's rule: the whole cotangent goes to the first maximum in (d, h, w) scan order of
    /// the in-bounds positions, or to the last NaN where the window holds one (its CPU kernel
    /// takes a value that is greater or NaN).
    case first
}

extension MaxTies {
    /// The `tp_max_ties` value, in the C ABI and on the wire.
    public var code: Int32 { Int32(self == .split ? TP_TIES_SPLIT.rawValue : TP_TIES_FIRST.rawValue) }

    public init?(code: Int32) {
        switch code {
        case Int32(TP_TIES_SPLIT.rawValue): self = .split
        case Int32(TP_TIES_FIRST.rawValue): self = .first
        default: return nil
        }
    }
}

/// One validated backward pass (vector-Jacobian product): `gradInput`, contiguous with the
/// input's shape, receives the gradient of the pooling with respect to `input` for the
/// cotangent `gradOutput` (the output's shape, read through `gradSteps`).
package struct BackwardCall: @unchecked Sendable {
    package let geometry: PoolGeometry
    /// Element strides of the cotangent's (N, D, H, W, C), lifted to 3-d like the input's.
    package let gradSteps: (n: Int, d: Int, h: Int, w: Int, c: Int)
    package let kind: PoolKind
    package let dtype: DType
    package let ties: MaxTies
    package let input: UnsafeRawPointer
    package let gradOutput: UnsafeRawPointer
    package let gradInput: UnsafeMutableRawPointer
    package let threads: Int
    /// The engine's settings (of them, the gradient uses `streamingOutputBytes` and
    /// `gradientStateBytes`).
    package let settings: KernelSettings
    /// Asked before each plane; once it says yes, no further plane starts.
    package let isCancelled: (@Sendable () -> Bool)?

    package init(geometry: PoolGeometry, gradSteps: (n: Int, d: Int, h: Int, w: Int, c: Int), kind: PoolKind, dtype: DType,
                 ties: MaxTies, input: UnsafeRawPointer, gradOutput: UnsafeRawPointer, gradInput: UnsafeMutableRawPointer,
                 threads: Int, settings: KernelSettings = KernelSettings(), isCancelled: (@Sendable () -> Bool)? = nil) {
        self.geometry = geometry
        self.gradSteps = gradSteps
        self.kind = kind
        self.dtype = dtype
        self.ties = ties
        self.input = input
        self.gradOutput = gradOutput
        self.gradInput = gradInput
        self.threads = threads
        self.settings = settings
        self.isCancelled = isCancelled
    }
}

/// One build of the kernels: the same sources compiled for `level`.
package protocol PoolKernels: Sendable {
    static var level: CPULevel { get }
    /// Computes `call`'s gradient. Throws TP_ERR_NO_MEMORY when its scratch cannot be had;
    /// returns early, leaving the gradient partly written, once `call.isCancelled` says yes.
    static func runBackward(_ call: BackwardCall) throws
    /// Pools `call`, returning the scratch bytes it used (for all its threads). Throws
    /// TP_ERR_NO_MEMORY when the windows need more scratch than the tensors justify; returns
    /// early, leaving the output partly written, once `call.isCancelled` says yes.
    static func run(_ call: KernelCall) throws -> Int
}
