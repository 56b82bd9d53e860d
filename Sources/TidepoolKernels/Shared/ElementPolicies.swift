import CTidepoolVector
import TidepoolTypes

/// How each (pool kind, dtype) pair reads, folds and writes elements. The kernels are
/// generic over these static policies, so each pair compiles to its own specialised,
/// vectorisable loops with no per-element dynamic dispatch. Both folds (sum, NaN-propagating
/// max) are associative and commutative, which is what lets the kernel reduce one axis at a
/// time.
public protocol WindowReduction {
    associatedtype Input
    /// A SIMD scalar, so that kernels may fold a few channels as one small vector.
    associatedtype Accumulator: SIMDScalar
    associatedtype Output
    /// The fold's start, which is also what a padded position contributes: 0 for average
    /// (zero padding), -inf or the integer type's lowest value for max.
    static var identity: Accumulator { get }
    static func widen(_ x: Input) -> Accumulator
    static func merge(_ a: Accumulator, _ b: Accumulator) -> Accumulator
    /// Average divides by the full window, padded positions included (MLX's rule). Floats
    /// do it as MLX does (`mean`); integer means are exact, rounded once.
    static func finish(_ accumulator: Accumulator, windowSize: Int) -> Output
    /// Whether `finish` costs more than moving its result (a rounding conversion, a
    /// division): then subsampled rows are not finished one kept position at a time. Whole
    /// rows finish as vector runs over every position and the kept ones are copied out; the
    /// rows of tiles cut along W gather their kept sums into one run and finish that.
    static var finishOutweighsACopy: Bool { get }
    /// Whether `finish` returns its accumulator as it is (`Output` is `Accumulator`): kept
    /// positions are then copied out whole (`positionsCopied`).
    static var finishKeepsBits: Bool { get }
    /// Whether `widen` costs more than a pass over a row of accumulators: then each input
    /// row is widened once, not once per tap.
    static var widenOutweighsAPass: Bool { get }
    /// The vector kernels that fold and finish this type's outputs on this CPU, if any.
    static var vectorFinish: VectorFinish? { get }
    /// Whether `merge(a, a)` is `a`, so that a window may merge the results of two parts that
    /// overlap (max; never sums).
    static var mergesOverlaps: Bool { get }
    /// Whether a position's 2 to 8 channels fold as one vector (`foldPositions`), not as
    /// scalars: the maxima, whose scalar merges LLVM compiled to branches for some types and
    /// channel counts (random data mispredicts them). Sums' scalar folds have no branches.
    static var foldsChannelsAsVector: Bool { get }
    /// Windows of this many taps and more fold by block scans (`KernelPlan.scans`), unless the
    /// engine's settings say otherwise.
    static var blockScanTaps: Int { get }
    /// Whether `unmerge(merge(a, b), a)` is `b` for any values, so that a window's sum is the
    /// difference of two running sums: integer sums, wrapping, whose every window the engine
    /// keeps within the accumulator (a difference of wrapped running sums is then the exact
    /// sum). Never floats, whose bits depend on the order of the adds.
    static var unmergesExactly: Bool { get }
    /// `total` less `part`, the inverse of `merge`; only where `unmergesExactly`.
    static func unmerge(_ total: Accumulator, _ part: Accumulator) -> Accumulator
    /// Whether a window of one element must give its element's bits, -0 included (float
    /// averages: MLX passes such a window through, where a fold from the identity, +0, gives
    /// +0). Such windows then run whole (`KernelPlan`), whose fold starts from the tap.
    static var passesSingleTapsThrough: Bool { get }
}

extension WindowReduction {
    @inlinable public static var finishOutweighsACopy: Bool { false }
    @inlinable public static var finishKeepsBits: Bool { false }
    @inlinable public static var widenOutweighsAPass: Bool { false }
    public static var vectorFinish: VectorFinish? { nil }
    @inlinable public static var mergesOverlaps: Bool { false }
    @inlinable public static var foldsChannelsAsVector: Bool { false }
    @inlinable public static var blockScanTaps: Int { KernelSettings.defaultBlockScanTaps }
    @inlinable public static var unmergesExactly: Bool { false }
    @inlinable public static var passesSingleTapsThrough: Bool { false }
    @inlinable public static func unmerge(_ total: Accumulator, _ part: Accumulator) -> Accumulator {
        preconditionFailure("unmerge of a reduction that does not unmerge exactly")
    }
    /// Whether strided rows alone of 1 or 2 channels, windows of `kernel` columns at `stride`,
    /// are split into the stride's phases (`WidthPlan`, `widenedInChunks`): sums of 16-bit
    /// inputs that widen, which their positions' folds would convert once per tap (float16 and
    /// bfloat16 averages), and 8-bit integer averages at strides 2 to 4 whose windows overlap,
    /// which reduced every position and subsampled (spans of at most 8; AvgPool1d k9 s4 of 1
    /// int8 channel took 1.5 times as long, k6 s4 1.37; k2 s2 of 2 channels was 1.13 times as
    /// fast unsplit, and at stride 7 the byte split, which does not vectorise there, 1.2). Not
    /// the maxima's vector folds, nor inputs that do not widen (float32 and float64 read their
    /// taps straight from the row: float32 split took 1.2x as long). Rows of `channels` of 16-
    /// and 32-bit integer sums split where the AVX2 transposes take the stride and the row's
    /// unit (`tpvector_splits_into_phases`): their running sums, one add per column carried
    /// from the last, took 1.15 to 1.8 times as long. (The baseline build splits them too, with
    /// LLVM's loops: one plan, and so one set of tests, for both builds.)
    static func splitsRowsIntoPhases(stride: Int, kernel: Int, channels: Int) -> Bool {
        guard Input.self != Accumulator.self && !foldsChannelsAsVector else { return false }
        let size = MemoryLayout<Input>.size
        // Not at stride 3, whose split of 4-byte units came later, for `KernelPlan.foldsPhasesW`:
        // rows alone of 16-bit pairs and 32-bit integers kept their running sums there
        // (AvgPool1d k5 s3 of 2 int16 channels took 1.2x as long split, k4 s3 of 1 int32 1.2x,
        // k3 s3 of 2 uint16 1.24x; k9 s3 of 1 int32 gained, 0.84x).
        if !mergesOverlaps && (size == 2 || size == 4) && stride != 3 && tpvector_splits_into_phases(channels * size, stride) != 0 {
            return true
        }
        switch size {
        case 2: return !unmergesExactly
        case 1: return (2...4).contains(stride) && kernel > stride
        default: return false
        }
    }
}

// MARK: average

/// A float window's mean as MLX takes it: the sum times 1/n, the sum taken from +0 (so a window
/// of -0s alone averages to +0), but a window of one element passed through (-0 stays -0: MLX
/// reduces nothing there). Adding +0 changes no sum but a -0, to +0, whatever the order of the
/// taps before it; adding -0 changes nothing.
@usableFromInline @inline(__always)
func mean<F: BinaryFloatingPoint>(_ sum: F, _ windowSize: Int) -> F {
    (sum + (windowSize == 1 ? -0.0 : 0.0)) * (1 / F(windowSize))
}

/// `sum / n` rounded once, as the division rounds it: where the build has FMA, in a multiply
/// and two fused multiply-adds. Markstein's theorem (Muller et al., Handbook of Floating-Point
/// Arithmetic, "Markstein's iteration"): with y = 1/n rounded to nearest and q = sum * y within
/// an ulp of the quotient, the remainder r = sum - q * n is exact and q + r * y rounds to the
/// quotient rounded once; nothing here under- or overflows (integer sums, n >= 1). Why: a
/// vector division delivers a few lanes every several cycles, and it bounded the finish of
/// integer averages (their loops hoist 1/n). Without FMA, a fused multiply-add is a libm call:
/// the division stays.
@usableFromInline @inline(__always)
func quotient<F: BinaryFloatingPoint>(_ sum: F, _ n: Int) -> F {
    let divisor = F(n)
    guard kernelLevel == .avx2 else { return sum / divisor }
    let y = 1 / divisor, q = sum * y
    return q.addingProduct(sum.addingProduct(-q, divisor), y)
}

public enum AverageFloat32: WindowReduction {
    @inlinable public static var identity: Float { 0 }
    @inlinable public static func widen(_ x: Float) -> Float { x }
    @inlinable public static func merge(_ a: Float, _ b: Float) -> Float { a + b }
    @inlinable public static func finish(_ sum: Float, windowSize: Int) -> Float { mean(sum, windowSize) }
    @inlinable public static var passesSingleTapsThrough: Bool { true }
}

public enum AverageFloat64: WindowReduction {
    @inlinable public static var identity: Double { 0 }
    @inlinable public static func widen(_ x: Double) -> Double { x }
    @inlinable public static func merge(_ a: Double, _ b: Double) -> Double { a + b }
    @inlinable public static func finish(_ sum: Double, windowSize: Int) -> Double { mean(sum, windowSize) }
    @inlinable public static var passesSingleTapsThrough: Bool { true }
}

public enum AverageFloat16: WindowReduction {
    @inlinable public static var identity: Float { 0 }
    @inlinable public static func widen(_ x: Float16) -> Float { Float(x) }
    @inlinable public static func merge(_ a: Float, _ b: Float) -> Float { a + b }
    @inlinable public static func finish(_ sum: Float, windowSize: Int) -> Float16 { Float16(mean(sum, windowSize)) }
    @inlinable public static var passesSingleTapsThrough: Bool { true }
    @inlinable public static var finishOutweighsACopy: Bool { true }
    public static let vectorFinish = VectorFinish(TPVECTOR_FLOAT16)
}

public enum AverageBFloat16: WindowReduction {
    @inlinable public static var identity: Float { 0 }
    @inlinable public static func widen(_ x: BFloat16) -> Float { x.float }
    @inlinable public static func merge(_ a: Float, _ b: Float) -> Float { a + b }
    @inlinable public static func finish(_ sum: Float, windowSize: Int) -> BFloat16 { BFloat16(mean(sum, windowSize)) }
    @inlinable public static var passesSingleTapsThrough: Bool { true }
    @inlinable public static var finishOutweighsACopy: Bool { true }
    public static let vectorFinish = VectorFinish(TPVECTOR_BFLOAT16)
}

/// 8-bit integers over windows whose sums fit in 16 bits (the engine checks: up to 255 int8
/// elements, whose sums fit in Int16, or 257 uint8, whose sums fit in UInt16): 16-bit sums,
/// sixteen per AVX2 vector where Int32 sums take eight, and scratch half the size. The adds
/// wrap, so they are the same bits whether read as Int16 or UInt16; uint8 sums are read as
/// UInt16 when finished. The same integer sums as `AverageSmallInteger`'s, finished by the
/// same float32 division, so the same bits.
public enum AverageInt16Sum<I: FixedWidthInteger>: WindowReduction {
    @inlinable public static var identity: Int16 { 0 }
    @inlinable public static func widen(_ x: I) -> Int16 { Int16(truncatingIfNeeded: x) }
    @inlinable public static func merge(_ a: Int16, _ b: Int16) -> Int16 { a &+ b }
    @inlinable public static var unmergesExactly: Bool { true }
    @inlinable public static func unmerge(_ total: Int16, _ part: Int16) -> Int16 { total &- part }
    @inlinable public static func finish(_ sum: Int16, windowSize: Int) -> Float {
        quotient(I.isSigned ? Float(sum) : Float(UInt16(bitPattern: sum)), windowSize)
    }
    @inlinable public static var finishOutweighsACopy: Bool { true }

    /// Whether every window sum fits in the 16 bits (8-bit inputs only): Int16 for signed
    /// inputs, UInt16 for unsigned ones.
    static func fits(windowSize: Int) -> Bool {
        let limit = I.isSigned ? Int(Int16.max) : Int(UInt16.max)
        return I.bitWidth == 8 && windowSize <= limit / Swift.max(Int(I.max), -Int(I.min), 1)
    }
}

/// 8- and 16-bit integers over windows whose sums stay below 2^24 in magnitude (the engine
/// checks): Int32 sums, and a float32 division, which gives exactly the float32 nearest the
/// true mean, as `AverageInt32Sum`'s float64 division does, with twice as many per vector. (Why: the
/// quotient of two integers below 2^24 either is exact in float64, or lies at least 2^-45 of its
/// size away from every float32 rounding midpoint, far beyond float64's rounding error, so
/// rounding twice cannot differ from rounding once.)
public enum AverageSmallInteger<I: FixedWidthInteger>: WindowReduction {
    @inlinable public static var identity: Int32 { 0 }
    @inlinable public static func widen(_ x: I) -> Int32 { Int32(truncatingIfNeeded: x) }
    @inlinable public static func merge(_ a: Int32, _ b: Int32) -> Int32 { a &+ b }
    @inlinable public static var unmergesExactly: Bool { true }
    @inlinable public static func unmerge(_ total: Int32, _ part: Int32) -> Int32 { total &- part }
    @inlinable public static func finish(_ sum: Int32, windowSize: Int) -> Float { quotient(Float(sum), windowSize) }
    @inlinable public static var finishOutweighsACopy: Bool { true }

    /// Whether every window sum (and so the window size) is below 2^24.
    static func fits(windowSize: Int) -> Bool {
        windowSize < (1 << 24) / Swift.max(Int(I.max), -Int(I.min), 1)
    }
}

/// 8- and 16-bit integers sum exactly in Int32 when the window is small enough that no sum
/// can overflow it (the engine checks), twice as many per vector as Int64.
public enum AverageInt32Sum<I: FixedWidthInteger>: WindowReduction {
    @inlinable public static var identity: Int32 { 0 }
    @inlinable public static func widen(_ x: I) -> Int32 { Int32(truncatingIfNeeded: x) }
    @inlinable public static func merge(_ a: Int32, _ b: Int32) -> Int32 { a &+ b }
    @inlinable public static var unmergesExactly: Bool { true }
    @inlinable public static func unmerge(_ total: Int32, _ part: Int32) -> Int32 { total &- part }
    @inlinable public static func finish(_ sum: Int32, windowSize: Int) -> Float { Float(quotient(Double(sum), windowSize)) }

    /// Whether every window sum fits in Int32.
    static func fits(windowSize: Int) -> Bool {
        let largest = Swift.max(Int(I.max), -Int(I.min))
        return windowSize <= Int(Int32.max) / Swift.max(largest, 1)
    }
}

/// Integers of up to 32 bits sum exactly in Int64 (a window would need 2^31 elements to
/// overflow it), then round once to float32.
public enum AverageNarrowInteger<I: FixedWidthInteger>: WindowReduction {
    @inlinable public static var identity: Int64 { 0 }
    @inlinable public static func widen(_ x: I) -> Int64 { Int64(truncatingIfNeeded: x) }
    @inlinable public static func merge(_ a: Int64, _ b: Int64) -> Int64 { a &+ b }
    @inlinable public static var unmergesExactly: Bool { true }
    @inlinable public static func unmerge(_ total: Int64, _ part: Int64) -> Int64 { total &- part }
    @inlinable public static func finish(_ sum: Int64, windowSize: Int) -> Float { Float(quotient(Double(sum), windowSize)) }
}

/// Integers sum in Double, then round to float32. Exact while every sum stays within 2^53:
/// the engine checks that for integers of up to 32 bits (`fits`), which then sum as fast as
/// float64 (Int64 sums convert to Double one element at a time without AVX-512); 64-bit
/// integers always sum here and round once a sum passes 2^53.
public enum AverageWideInteger<I: FixedWidthInteger>: WindowReduction {
    @inlinable public static var identity: Double { 0 }
    @inlinable public static func widen(_ x: I) -> Double {
        I.bitWidth == 64 ? vectorizableDouble(UInt64(truncatingIfNeeded: x), signed: I.isSigned) : Double(x)
    }
    @inlinable public static func merge(_ a: Double, _ b: Double) -> Double { a + b }
    @inlinable public static func finish(_ sum: Double, windowSize: Int) -> Float { Float(quotient(sum, windowSize)) }
    @inlinable public static var widenOutweighsAPass: Bool { I.bitWidth == 64 }

    /// Double(x) of a 64-bit integer (its bits in `bits`), in operations AVX2 has: it has no
    /// 64-bit integer conversion, so Double(x) would go one element at a time. The two 32-bit
    /// halves become exact doubles by their bits (2^84 + high * 2^32 and 2^52 + low), and one
    /// addition rounds their sum once, as Double(x) does. Signed values are biased by 2^63 first.
    @inlinable public static func vectorizableDouble(_ bits: UInt64, signed: Bool) -> Double {
        let u = signed ? bits ^ (1 << 63) : bits
        let high = Double(bitPattern: (u >> 32) | 0x4530_0000_0000_0000) - (signed ? 0x1.000008p84 : 0x1p84)
        let low = Double(bitPattern: (u & 0xFFFF_FFFF) | 0x4330_0000_0000_0000) - 0x1p52
        return high + low
    }

    /// Whether every window sum is exact in Double (below 2^53 in magnitude).
    static func fits(windowSize: Int) -> Bool {
        guard I.bitWidth <= 32 else { return false }
        return windowSize <= (1 << 53) / Swift.max(Int(I.max), -Int(I.min), 1)
    }
}

// MARK: max

/// MLX's max propagates NaN: once a NaN is seen it wins; of equal values the first stays.
/// `a < b ? b : a` is exactly x86's `maxps b, a` (the second operand where unordered or
/// equal), and the NaN test then picks b where b is NaN: three vector instructions per merge
/// (max, ordered compare, blend). Spelt `b != b`, not `b.isNaN`, and as two steps: the
/// optimiser folded `b.isNaN ? b : (b > a ? b : a)` into one select on an OR of two compares
/// (four instructions: unordered and ordered compares, OR, blend), and `isNaN` beside the max
/// compiled to a test on the bits as integers, with integer compares and more blends.
@inlinable func nanPropagatingMax<F: FloatingPoint>(_ a: F, _ b: F) -> F {
    let larger = a < b ? b : a
    return b != b ? b : larger
}

public enum MaxFloat<F: BinaryFloatingPoint & SIMDScalar>: WindowReduction {
    @inlinable public static var identity: F { -F.infinity }
    @inlinable public static func widen(_ x: F) -> F { x }
    @inlinable public static func merge(_ a: F, _ b: F) -> F { nanPropagatingMax(a, b) }
    @inlinable public static func finish(_ best: F, windowSize: Int) -> F { best }
    @inlinable public static var finishKeepsBits: Bool { true }
    @inlinable public static var mergesOverlaps: Bool { true }
    @inlinable public static var foldsChannelsAsVector: Bool { true }
    @inlinable public static var blockScanTaps: Int { KernelSettings.defaultFloatMaxBlockScanTaps }
}

/// A 16-bit float by its bit pattern: float16 and bfloat16 differ only in where infinity is.
public protocol HalfFloatBits {
    init(bitPattern: UInt16)
    var bitPattern: UInt16 { get }
    /// The magnitude bits of infinity; larger magnitudes are NaN.
    static var infinityMagnitude: UInt16 { get }
}

extension Float16: HalfFloatBits {
    public static var infinityMagnitude: UInt16 { 0x7C00 }
}

extension BFloat16: HalfFloatBits {
    public static var infinityMagnitude: UInt16 { 0x7F80 }
}

/// float16 and bfloat16 compare as Int16 keys of their bit patterns, ordered as the floats
/// are (negatives flipped below zero, -0 just below +0, NaNs above +inf so that they win, as in
/// MLX's max): twice as many per vector as Float, no conversions, exact. Branch-free, so that
/// it vectorises. A NaN comes out with its payload, positive.
public enum MaxHalfFloat<H: HalfFloatBits>: WindowReduction {
    @inlinable static func key(_ bits: UInt16) -> Int16 {
        let magnitude = Int16(bitPattern: bits & 0x7FFF)
        let negative = Int16(bitPattern: bits) >> 15                            // all ones if negative
        let notNaN = ~((Int16(bitPattern: H.infinityMagnitude) &- magnitude) >> 15)  // all ones unless NaN
        return magnitude ^ (negative & notNaN)
    }

    @inlinable public static var identity: Int16 { key(0x8000 | H.infinityMagnitude) }
    @inlinable public static func widen(_ x: H) -> Int16 { key(x.bitPattern) }
    @inlinable public static func merge(_ a: Int16, _ b: Int16) -> Int16 { Swift.max(a, b) }
    @inlinable public static func finish(_ best: Int16, windowSize: Int) -> H {
        H(bitPattern: UInt16(bitPattern: best ^ ((best >> 15) & 0x7FFF)))
    }
    // The key's conversion back to bits, element by element at each kept position, cost
    // more than gathering the kept keys and converting them as one run (MaxPool1d k5 s3 of 4
    // bfloat16 channels took 1.45 times as long).
    @inlinable public static var finishOutweighsACopy: Bool { true }
    // A key costs seven integer operations: folded from the input, each tap converted its
    // inputs again (MaxPool3d k4 s1 p2 of 5 float16 channels took 1.2 times as long as with
    // each row widened once, MaxPool2d k11 p5 of 6 channels 1.4 times).
    @inlinable public static var widenOutweighsAPass: Bool { true }
    @inlinable public static var mergesOverlaps: Bool { true }
    @inlinable public static var foldsChannelsAsVector: Bool { true }
}

public enum MaxInteger<I: FixedWidthInteger & SIMDScalar>: WindowReduction {
    @inlinable public static var identity: I { I.min }
    @inlinable public static func widen(_ x: I) -> I { x }
    @inlinable public static func merge(_ a: I, _ b: I) -> I { b > a ? b : a }
    @inlinable public static func finish(_ best: I, windowSize: Int) -> I { best }
    @inlinable public static var finishKeepsBits: Bool { true }
    @inlinable public static var mergesOverlaps: Bool { true }
    @inlinable public static var foldsChannelsAsVector: Bool { true }
}
