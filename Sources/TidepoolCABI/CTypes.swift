import CTidepool
import TidepoolCore

/// Reading and writing the C descriptors of include/tidepool.h, checking every field a
/// foreign caller sets before the engine sees it.

/// The first `count` entries of a fixed-size C array of int64_t (imported as a tuple).
func int64Array<Tuple>(_ tuple: Tuple, count: Int) -> [Int] {
    withUnsafeBytes(of: tuple) { $0.bindMemory(to: Int64.self).prefix(count).map { Int($0) } }
}

func setInt64Array<Tuple>(_ tuple: inout Tuple, _ values: [Int]) {
    withUnsafeMutableBytes(of: &tuple) { raw in
        let slots = raw.bindMemory(to: Int64.self)
        for index in slots.indices { slots[index] = index < values.count ? Int64(values[index]) : 0 }
    }
}

func requireNonNull<T>(_ pointer: UnsafePointer<T>?, _ name: String) throws -> UnsafePointer<T> {
    guard let pointer else { throw PoolError(TP_ERR_NULL_POINTER, "\(name) is NULL") }
    return pointer
}

/// Checks the struct_size/flags header every input struct starts with: `defined` are the
/// flag bits this struct has (none but tp_pool_desc's).
func checkHeader(structSize: UInt32, flags: UInt32, expectedSize: Int, name: String, defined: UInt32 = 0) throws {
    guard Int(structSize) >= expectedSize else {
        throw PoolError(TP_ERR_VERSION,
            "\(name).struct_size is \(structSize) but this library needs at least \(expectedSize) (sizeof(\(name))); "
                + "set it to sizeof(\(name)) (the init functions do)")
    }
    guard flags & ~defined == 0 else {
        let allowed = defined == 0 ? "reserved flags must be 0"
            : "only the bits 0x\(String(defined, radix: 16)) (tp_pool_flags: TP_POOL_CEIL_MODE, TP_POOL_EXCLUDE_PADDING) are "
                + "defined; other bits are reserved and must be 0"
        throw PoolError(TP_ERR_FLAGS, "\(name).flags is 0x\(String(flags, radix: 16)) but \(allowed)")
    }
}

/// `name` is built only for the error: a tensor's "input.dtype" was formatted on every call.
func dtype(fromCode code: Int32, _ name: @autoclosure () -> String) throws -> DType {
    guard let dtype = DType(code: code) else {
        throw PoolError(TP_ERR_DTYPE, "\(name()) is \(code), which is not a tp_dtype (1 to 12)")
    }
    return dtype
}

extension PoolDescriptor {
    init(_ c: tp_pool_desc) throws {
        let defined = UInt32(TP_POOL_CEIL_MODE.rawValue | TP_POOL_EXCLUDE_PADDING.rawValue)
        try checkHeader(structSize: c.struct_size, flags: c.flags, expectedSize: MemoryLayout<tp_pool_desc>.size, name: "tp_pool_desc",
                        defined: defined)
        guard let kind = PoolKind(code: c.kind) else {
            throw PoolError(TP_ERR_INVALID_ARGUMENT, "tp_pool_desc.kind is \(c.kind), which is not a tp_pool_kind (TP_POOL_AVG or TP_POOL_MAX)")
        }
        guard (1...Int32(TP_MAX_SPATIAL_DIMS)).contains(c.spatial_dims) else {
            throw PoolError(TP_ERR_INVALID_ARGUMENT, "tp_pool_desc.spatial_dims must be 1, 2 or 3 but is \(c.spatial_dims)")
        }
        let n = Int(c.spatial_dims)
        self.init(kind: kind, kernelSize: int64Array(c.kernel_size, count: n), stride: int64Array(c.stride, count: n),
                  padding: int64Array(c.padding, count: n), ceilMode: c.flags & UInt32(TP_POOL_CEIL_MODE.rawValue) != 0,
                  countIncludePad: c.flags & UInt32(TP_POOL_EXCLUDE_PADDING.rawValue) == 0)
        try validate()
    }
}

struct CTensor {
    let data: UnsafeMutableRawPointer?
    let dtype: DType
    let shape: [Int]
    let strides: [Int]

    init(_ c: tp_tensor, _ name: String) throws {
        try checkHeader(structSize: c.struct_size, flags: c.flags, expectedSize: MemoryLayout<tp_tensor>.size, name: "tp_tensor")
        dtype = try TidepoolCABI.dtype(fromCode: c.dtype, "\(name).dtype")
        guard (0...Int32(TP_MAX_RANK)).contains(c.rank) else {
            throw PoolError(TP_ERR_SHAPE, "\(name).rank must be between 0 and \(TP_MAX_RANK) but is \(c.rank)")
        }
        data = c.data
        shape = int64Array(c.shape, count: Int(c.rank))
        strides = int64Array(c.strides, count: Int(c.rank))
    }

    var inputView: TensorView { TensorView(data: data.map(UnsafeRawPointer.init), dtype: dtype, shape: shape, strides: strides) }

    var outputView: OutputView { OutputView(data: data, dtype: dtype, shape: shape, strides: strides) }
}
