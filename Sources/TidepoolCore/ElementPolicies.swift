/// How each (pool kind, dtype) pair reads, folds and writes elements. The kernels are
/// generic over these static policies, so each pair compiles to its own specialised loop
/// with no per-element dynamic dispatch.
public protocol WindowReduction {
    associatedtype Input
    associatedtype Accumulator
    associatedtype Output
    /// The fold's start, which is also what a padded position contributes: 0 for average
    /// (zero padding), -inf or the integer type's lowest value for max.
    static var identity: Accumulator { get }
    static func combine(_ accumulator: Accumulator, _ x: Input) -> Accumulator
    /// Average divides by the full window, padded positions included (MLX's rule).
    static func finish(_ accumulator: Accumulator, windowSize: Int) -> Output
}

// MARK: average

public enum AverageFloat32: WindowReduction {
    @inlinable public static var identity: Float { 0 }
    @inlinable public static func combine(_ sum: Float, _ x: Float) -> Float { sum + x }
    @inlinable public static func finish(_ sum: Float, windowSize: Int) -> Float { sum / Float(windowSize) }
}

public enum AverageFloat64: WindowReduction {
    @inlinable public static var identity: Double { 0 }
    @inlinable public static func combine(_ sum: Double, _ x: Double) -> Double { sum + x }
    @inlinable public static func finish(_ sum: Double, windowSize: Int) -> Double { sum / Double(windowSize) }
}

public enum AverageFloat16: WindowReduction {
    @inlinable public static var identity: Float { 0 }
    @inlinable public static func combine(_ sum: Float, _ x: Float16) -> Float { sum + Float(x) }
    @inlinable public static func finish(_ sum: Float, windowSize: Int) -> Float16 { Float16(sum / Float(windowSize)) }
}

public enum AverageBFloat16: WindowReduction {
    @inlinable public static var identity: Float { 0 }
    @inlinable public static func combine(_ sum: Float, _ x: BFloat16) -> Float { sum + x.float }
    @inlinable public static func finish(_ sum: Float, windowSize: Int) -> BFloat16 { BFloat16(sum / Float(windowSize)) }
}

/// Integers of up to 32 bits sum exactly in Int64 (a window would need 2^31 elements to
/// overflow it), then round once to float32.
public enum AverageNarrowInteger<I: FixedWidthInteger>: WindowReduction {
    @inlinable public static var identity: Int64 { 0 }
    @inlinable public static func combine(_ sum: Int64, _ x: I) -> Int64 { sum &+ Int64(truncatingIfNeeded: x) }
    @inlinable public static func finish(_ sum: Int64, windowSize: Int) -> Float {
        Float(Double(sum) / Double(windowSize))
    }
}

/// 64-bit integers sum in Double (exact below 2^53), then round to float32.
public enum AverageWideInteger<I: FixedWidthInteger>: WindowReduction {
    @inlinable public static var identity: Double { 0 }
    @inlinable public static func combine(_ sum: Double, _ x: I) -> Double { sum + Double(x) }
    @inlinable public static func finish(_ sum: Double, windowSize: Int) -> Float { Float(sum / Double(windowSize)) }
}

// MARK: max

/// MLX's max propagates NaN: once a NaN is seen it wins.
@inlinable func nanPropagatingMax<F: FloatingPoint>(_ a: F, _ b: F) -> F {
    (b > a || b.isNaN) ? b : a
}

public enum MaxFloat<F: BinaryFloatingPoint>: WindowReduction {
    @inlinable public static var identity: F { -F.infinity }
    @inlinable public static func combine(_ best: F, _ x: F) -> F { nanPropagatingMax(best, x) }
    @inlinable public static func finish(_ best: F, windowSize: Int) -> F { best }
}

public enum MaxBFloat16: WindowReduction {
    @inlinable public static var identity: Float { -Float.infinity }
    @inlinable public static func combine(_ best: Float, _ x: BFloat16) -> Float { nanPropagatingMax(best, x.float) }
    // Exact: the value came from a bfloat16 or is -inf.
    @inlinable public static func finish(_ best: Float, windowSize: Int) -> BFloat16 { BFloat16(best) }
}

public enum MaxInteger<I: FixedWidthInteger>: WindowReduction {
    @inlinable public static var identity: I { I.min }
    @inlinable public static func combine(_ best: I, _ x: I) -> I { x > best ? x : best }
    @inlinable public static func finish(_ best: I, windowSize: Int) -> I { best }
}
