/// Little-endian field access on raw message bytes.

public struct ByteWriter {
    public private(set) var bytes: [UInt8] = []

    public init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    public mutating func put<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    public mutating func put(_ values: [Int], count: Int) {
        for index in 0..<count { put(Int64(index < values.count ? values[index] : 0)) }
    }
}

public struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    public private(set) var offset: Int

    public init(_ bytes: UnsafeRawBufferPointer, offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    /// Callers check the frame's length first, so reads never run past it.
    public mutating func get<T: FixedWidthInteger>(_: T.Type = T.self) -> T {
        precondition(offset + MemoryLayout<T>.size <= bytes.count, "read past a checked frame")
        var value = T.zero
        withUnsafeMutableBytes(of: &value) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + MemoryLayout<T>.size)])) }
        offset += MemoryLayout<T>.size
        return T(littleEndian: value)
    }

    /// One value at `offset`, for single-field reads.
    public static func value<T: FixedWidthInteger>(_: T.Type, in bytes: UnsafeRawBufferPointer, at offset: Int) -> T {
        var reader = ByteReader(bytes, offset: offset)
        return reader.get(T.self)
    }

    public mutating func getInt64s(_ count: Int) -> [Int64] { (0..<count).map { _ in get(Int64.self) } }
}
