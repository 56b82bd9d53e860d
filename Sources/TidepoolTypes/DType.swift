import CTidepool

/// An element type. The numeric codes live only in `include/tidepool.h`; this enum maps
/// to and from them by name, so the Swift and C definitions cannot drift.
public enum DType: CaseIterable, Sendable, CustomStringConvertible {
    case float32, float64, float16, bfloat16
    case int8, int16, int32, int64
    case uint8, uint16, uint32, uint64

    public init?(code: Int32) {
        guard let match = DType.allCases.first(where: { Int64($0.code) == Int64(code) }) else { return nil }
        self = match
    }

    public var code: Int32 { Int32(cValue.rawValue) }

    public var cValue: tp_dtype {
        switch self {
        case .float32: return TP_DTYPE_FLOAT32
        case .float64: return TP_DTYPE_FLOAT64
        case .float16: return TP_DTYPE_FLOAT16
        case .bfloat16: return TP_DTYPE_BFLOAT16
        case .int8: return TP_DTYPE_INT8
        case .int16: return TP_DTYPE_INT16
        case .int32: return TP_DTYPE_INT32
        case .int64: return TP_DTYPE_INT64
        case .uint8: return TP_DTYPE_UINT8
        case .uint16: return TP_DTYPE_UINT16
        case .uint32: return TP_DTYPE_UINT32
        case .uint64: return TP_DTYPE_UINT64
        }
    }

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .int8, .uint8: return 1
        case .float16, .bfloat16, .int16, .uint16: return 2
        case .float32, .int32, .uint32: return 4
        case .float64, .int64, .uint64: return 8
        }
    }

    /// numpy's name for the type.
    public var description: String {
        switch self {
        case .float32: return "float32"
        case .float64: return "float64"
        case .float16: return "float16"
        case .bfloat16: return "bfloat16"
        case .int8: return "int8"
        case .int16: return "int16"
        case .int32: return "int32"
        case .int64: return "int64"
        case .uint8: return "uint8"
        case .uint16: return "uint16"
        case .uint32: return "uint32"
        case .uint64: return "uint64"
        }
    }

    public var isFloatingPoint: Bool {
        switch self {
        case .float32, .float64, .float16, .bfloat16: return true
        default: return false
        }
    }

    /// The dtype a pooling of this input produces: MLX's average keeps floating types and
    /// turns integers into float32; max keeps every type.
    public func result(of kind: PoolKind) -> DType {
        switch kind {
        case .max: return self
        case .average: return isFloatingPoint ? self : .float32
        }
    }
}

public enum PoolKind: CaseIterable, Sendable, CustomStringConvertible {
    case average, max

    public init?(code: Int32) {
        guard let match = PoolKind.allCases.first(where: { Int64($0.code) == Int64(code) }) else { return nil }
        self = match
    }

    public var code: Int32 {
        switch self {
        case .average: return Int32(TP_POOL_AVG.rawValue)
        case .max: return Int32(TP_POOL_MAX.rawValue)
        }
    }

    public var description: String { self == .average ? "average" : "max" }
}

/// The library's version, from the header's macros.
public enum TidepoolVersion {
    public static let major = Int(TP_VERSION_MAJOR), minor = Int(TP_VERSION_MINOR), patch = Int(TP_VERSION_PATCH)
    public static let string = "\(major).\(minor).\(patch)"
    /// MAJOR * 10000 + MINOR * 100 + PATCH, as TP_VERSION.
    public static let number = UInt32(major * 10000 + minor * 100 + patch)
}
