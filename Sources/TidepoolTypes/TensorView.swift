import CTidepool

/// A read-only view of caller memory: element strides (not bytes), which may be zero or
/// negative, so transposed, sliced, reversed and channels-first tensors are read in place.
public struct TensorView {
    public var data: UnsafeRawPointer?
    public var dtype: DType
    public var shape: [Int]
    public var strides: [Int]

    /// `strides == nil` means contiguous row-major.
    public init(data: UnsafeRawPointer?, dtype: DType, shape: [Int], strides: [Int]? = nil) {
        self.data = data
        self.dtype = dtype
        self.shape = shape
        self.strides = strides ?? TensorView.contiguousStrides(shape)
    }

    /// Row-major strides; wraps silently on overflow, so call `validate` on the result.
    public static func contiguousStrides(_ shape: [Int]) -> [Int] {
        var strides = Array(repeating: 1, count: shape.count)
        var step = 1
        for axis in shape.indices.reversed() {
            strides[axis] = step
            step = step.multipliedReportingOverflow(by: max(shape[axis], 1)).partialValue
        }
        return strides
    }

    /// Element count, checked for overflow and for negative entries.
    public static func elementCount(_ shape: [Int], dtype: DType, what: String) throws -> Int {
        if let axis = shape.firstIndex(where: { $0 < 0 }) {
            throw PoolError.invalid("\(what) shape must be non-negative but shape[\(axis)] is \(shape[axis])")
        }
        let count = try Checked.product(shape, "\(what) element count of shape \(pythonTuple(shape))")
        _ = try Checked.multiply(count, dtype.size, "\(what) byte size of shape \(pythonTuple(shape)) in \(dtype)")
        return count
    }

    /// The bytes the view can touch as offsets from its data address, or nil when it has no
    /// elements. Validates shape and strides on the way (not the data address: `place`).
    package func reach(what: String) throws -> Range<Int>? {
        guard strides.count == shape.count else {
            throw PoolError.shape("\(what) has \(shape.count) shape entries but \(strides.count) strides")
        }
        let count = try TensorView.elementCount(shape, dtype: dtype, what: what)
        guard count > 0 else { return nil }
        var low = 0, high = 0
        for axis in shape.indices {
            let reach = try Checked.multiply(strides[axis], shape[axis] - 1, "\(what) stride \(strides[axis]) of axis \(axis)")
            if reach < 0 { low = try Checked.add(low, reach, "\(what) extent") } else { high = try Checked.add(high, reach, "\(what) extent") }
        }
        let lowBytes = try Checked.multiply(low, dtype.size, "\(what) extent")
        let highBytes = try Checked.multiply(try Checked.add(high, 1, "\(what) extent"), dtype.size, "\(what) extent")
        return lowBytes..<highBytes
    }

    /// The byte range `reach` (of a view of `shape`) covers at address `data`, which must not
    /// be null.
    package static func place(_ reach: Range<Int>, at data: UnsafeRawPointer?, shape: [Int], what: String) throws -> Range<Int> {
        guard let data else {
            throw PoolError(TP_ERR_NULL_POINTER, "\(what) data is null but its shape \(pythonTuple(shape)) is not empty")
        }
        let base = Int(bitPattern: data)
        return (try Checked.add(base, reach.lowerBound, "\(what) address"))..<(try Checked.add(base, reach.upperBound, "\(what) address"))
    }

    /// The byte range the view can touch, or nil when it has no elements.
    /// Validates shape, strides and the null-data rule on the way.
    package func byteSpan(what: String) throws -> Range<Int>? {
        try reach(what: what).map { try TensorView.place($0, at: data, shape: shape, what: what) }
    }
}

/// A caller-provided output, which must be contiguous channels-last.
public struct OutputView {
    public var data: UnsafeMutableRawPointer?
    public var dtype: DType
    public var shape: [Int]
    /// Element strides as the caller described them, checked for contiguity; nil means contiguous.
    public var strides: [Int]?

    public init(data: UnsafeMutableRawPointer?, dtype: DType, shape: [Int], strides: [Int]? = nil) {
        self.data = data
        self.dtype = dtype
        self.shape = shape
        self.strides = strides
    }

    package var asInput: TensorView { TensorView(data: data.map(UnsafeRawPointer.init), dtype: dtype, shape: shape) }

    /// As numpy's C-contiguity: axes of length 1 may have any stride, an empty tensor any strides.
    package func checkContiguous(what: String = "output") throws {
        guard let strides, !shape.contains(0) else { return }
        let contiguous = TensorView.contiguousStrides(shape)
        guard strides.count == shape.count else {
            throw PoolError.shape("\(what) has \(shape.count) shape entries but \(strides.count) strides")
        }
        for axis in shape.indices where shape[axis] != 1 && strides[axis] != contiguous[axis] {
            throw PoolError(TP_ERR_LAYOUT,
                "\(what) must be contiguous channels-last: strides[\(axis)] is \(strides[axis]) but must be "
                    + "\(contiguous[axis]) for shape \(pythonTuple(shape))")
        }
    }
}
