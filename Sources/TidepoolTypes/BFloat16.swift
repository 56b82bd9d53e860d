/// bfloat16: the upper half of an IEEE float32. Swift has no built-in type for it, so it
/// is stored as its bit pattern and computed on as Float.
public struct BFloat16: Sendable, Hashable, CustomStringConvertible {
    public var bitPattern: UInt16

    @inlinable public init(bitPattern: UInt16) { self.bitPattern = bitPattern }

    /// Rounds to nearest, ties to even (as MLX, PyTorch and ml_dtypes do); NaN stays NaN,
    /// quieted. Both candidates are 32-bit, so a vector loop blends once and narrows once:
    /// fewer vector operations per value than masks or a select on 16-bit candidates.
    @inlinable public init(_ value: Float) {
        let bits = value.bitPattern
        let rounded = (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16
        // A NaN is not rounded (the bias could carry into its exponent or sign), only quieted:
        // an addition returns its NaN operand with the quiet bit set.
        bitPattern = UInt16(truncatingIfNeeded: value.isNaN ? (value + value).bitPattern >> 16 : rounded)
    }

    /// Exact: every bfloat16 is a float32.
    @inlinable public var float: Float { Float(bitPattern: UInt32(bitPattern) << 16) }

    public var description: String { float.description }
}
