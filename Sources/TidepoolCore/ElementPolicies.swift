/// How each (pool kind, dtype) pair reads, folds and writes elements. The kernels are
/// generic over these static policies, so each pair compiles to its own specialised,
/// vectorisable loops with no per-element dynamic dispatch. Both folds (sum, NaN-propagating
/// max) are associative and commutative, which is what lets the kernel reduce one axis at a
/// time.
public protocol WindowReduction {
    associatedtype Input
    associatedtype Accumulator
    associatedtype Output
    /// The fold's start, which is also what a padded position contributes: 0 for average
    /// (zero padding), -inf or the integer type's lowest value for max.
    static var identity: Accumulator { get }
    static func widen(_ x: Input) -> Accumulator
    static func merge(_ a: Accumulator, _ b: Accumulator) -> Accumulator
    /// Average divides by the full window, padded positions included (MLX's rule). Floats
    /// do it as MLX does, the sum times 1/n; integer means are exact, rounded once.
    static func finish(_ accumulator: Accumulator, windowSize: Int) -> Output
}

// MARK: average

public enum AverageFloat32: WindowReduction {
    @inlinable public static var identity: Float { 0 }
    @inlinable public static func widen(_ x: Float) -> Float { x }
    @inlinable public static func merge(_ a: Float, _ b: Float) -> Float { a + b }
    @inlinable public static func finish(_ sum: Float, windowSize: Int) -> Float { sum * (1 / Float(windowSize)) }
}

public enum AverageFloat64: WindowReduction {
    @inlinable public static var identity: Double { 0 }
    @inlinable public static func widen(_ x: Double) -> Double { x }
    @inlinable public static func merge(_ a: Double, _ b: Double) -> Double { a + b }
    @inlinable public static func finish(_ sum: Double, windowSize: Int) -> Double { sum * (1 / Double(windowSize)) }
}

public enum AverageFloat16: WindowReduction {
    @inlinable public static var identity: Float { 0 }
    @inlinable public static func widen(_ x: Float16) -> Float { Float(x) }
    @inlinable public static func merge(_ a: Float, _ b: Float) -> Float { a + b }
    @inlinable public static func finish(_ sum: Float, windowSize: Int) -> Float16 { Float16(sum * (1 / Float(windowSize))) }
}

public enum AverageBFloat16: WindowReduction {
    @inlinable public static var identity: Float { 0 }
    @inlinable public static func widen(_ x: BFloat16) -> Float { x.float }
    @inlinable public static func merge(_ a: Float, _ b: Float) -> Float { a + b }
    @inlinable public static func finish(_ sum: Float, windowSize: Int) -> BFloat16 { BFloat16(sum * (1 / Float(windowSize))) }
}

/// 8- and 16-bit integers sum exactly in Int32 when the window is small enough that no sum
/// can overflow it (the engine checks), twice as many per vector as Int64.
public enum AverageSmallInteger<I: FixedWidthInteger>: WindowReduction {
    @inlinable public static var identity: Int32 { 0 }
    @inlinable public static func widen(_ x: I) -> Int32 { Int32(truncatingIfNeeded: x) }
    @inlinable public static func merge(_ a: Int32, _ b: Int32) -> Int32 { a &+ b }
    @inlinable public static func finish(_ sum: Int32, windowSize: Int) -> Float { Float(Double(sum) / Double(windowSize)) }

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
    @inlinable public static func finish(_ sum: Int64, windowSize: Int) -> Float { Float(Double(sum) / Double(windowSize)) }
}

/// 64-bit integers sum in Double (exact below 2^53), then round to float32.
public enum AverageWideInteger<I: FixedWidthInteger>: WindowReduction {
    @inlinable public static var identity: Double { 0 }
    @inlinable public static func widen(_ x: I) -> Double { Double(x) }
    @inlinable public static func merge(_ a: Double, _ b: Double) -> Double { a + b }
    @inlinable public static func finish(_ sum: Double, windowSize: Int) -> Float { Float(sum / Double(windowSize)) }
}

// MARK: max

/// MLX's max propagates NaN: once a NaN is seen it wins.
@inlinable func nanPropagatingMax<F: FloatingPoint>(_ a: F, _ b: F) -> F {
    (b > a || b.isNaN) ? b : a
}

public enum MaxFloat<F: BinaryFloatingPoint>: WindowReduction {
    @inlinable public static var identity: F { -F.infinity }
    @inlinable public static func widen(_ x: F) -> F { x }
    @inlinable public static func merge(_ a: F, _ b: F) -> F { nanPropagatingMax(a, b) }
    @inlinable public static func finish(_ best: F, windowSize: Int) -> F { best }
}

/// float16 is compared as Float: x86 has no float16 arithmetic, so keeping Float
/// accumulators converts each element once instead of at every comparison.
public enum MaxFloat16: WindowReduction {
    @inlinable public static var identity: Float { -Float.infinity }
    @inlinable public static func widen(_ x: Float16) -> Float { Float(x) }
    @inlinable public static func merge(_ a: Float, _ b: Float) -> Float { nanPropagatingMax(a, b) }
    // Exact: the value came from a float16 or is -inf.
    @inlinable public static func finish(_ best: Float, windowSize: Int) -> Float16 { Float16(best) }
}

public enum MaxBFloat16: WindowReduction {
    @inlinable public static var identity: Float { -Float.infinity }
    @inlinable public static func widen(_ x: BFloat16) -> Float { x.float }
    @inlinable public static func merge(_ a: Float, _ b: Float) -> Float { nanPropagatingMax(a, b) }
    // Exact: the value came from a bfloat16 or is -inf.
    @inlinable public static func finish(_ best: Float, windowSize: Int) -> BFloat16 { BFloat16(best) }
}

public enum MaxInteger<I: FixedWidthInteger>: WindowReduction {
    @inlinable public static var identity: I { I.min }
    @inlinable public static func widen(_ x: I) -> I { x }
    @inlinable public static func merge(_ a: I, _ b: I) -> I { b > a ? b : a }
    @inlinable public static func finish(_ best: I, windowSize: Int) -> I { best }
}
