import CTidepool

/// A failure with the C ABI's status code and a message naming what was wrong.
public struct PoolError: Error, Equatable, CustomStringConvertible {
    public let status: tp_status
    public let message: String

    public init(_ status: tp_status, _ message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { message }

    public static func invalid(_ message: String) -> PoolError { PoolError(TP_ERR_INVALID_ARGUMENT, message) }
    public static func shape(_ message: String) -> PoolError { PoolError(TP_ERR_SHAPE, message) }
    public static func overflow(_ message: String) -> PoolError { PoolError(TP_ERR_OVERFLOW, message) }
}

/// The C name of every status the header defines ("TP_ERR_SHAPE"); nil for other values.
public func statusName(_ status: tp_status) -> String? {
    let names: [(tp_status, String)] = [
        (TP_OK, "TP_OK"), (TP_ERR_INVALID_ARGUMENT, "TP_ERR_INVALID_ARGUMENT"), (TP_ERR_NULL_POINTER, "TP_ERR_NULL_POINTER"),
        (TP_ERR_DTYPE, "TP_ERR_DTYPE"), (TP_ERR_SHAPE, "TP_ERR_SHAPE"), (TP_ERR_OVERFLOW, "TP_ERR_OVERFLOW"),
        (TP_ERR_FLAGS, "TP_ERR_FLAGS"), (TP_ERR_VERSION, "TP_ERR_VERSION"), (TP_ERR_LAYOUT, "TP_ERR_LAYOUT"),
        (TP_ERR_NO_MEMORY, "TP_ERR_NO_MEMORY"), (TP_ERR_INTERNAL, "TP_ERR_INTERNAL"), (TP_ERR_PROTOCOL, "TP_ERR_PROTOCOL"),
        (TP_ERR_TOO_LARGE, "TP_ERR_TOO_LARGE"), (TP_ERR_BUSY, "TP_ERR_BUSY"), (TP_ERR_TIMEOUT, "TP_ERR_TIMEOUT"),
        (TP_ERR_CONNECTION, "TP_ERR_CONNECTION"), (TP_ERR_NOT_FOUND, "TP_ERR_NOT_FOUND"), (TP_ERR_CLOSED, "TP_ERR_CLOSED"),
        (TP_ERR_SYSTEM, "TP_ERR_SYSTEM"), (TP_ERR_PERMISSION, "TP_ERR_PERMISSION"),
    ]
    return names.first { $0.0 == status }?.1
}

/// Overflow-checked arithmetic for sizes that come from callers.
public enum Checked {
    public static func multiply(_ a: Int, _ b: Int, _ what: @autoclosure () -> String) throws -> Int {
        let (value, overflow) = a.multipliedReportingOverflow(by: b)
        if overflow { throw PoolError.overflow("\(what()) overflows 64 bits") }
        return value
    }

    public static func add(_ a: Int, _ b: Int, _ what: @autoclosure () -> String) throws -> Int {
        let (value, overflow) = a.addingReportingOverflow(b)
        if overflow { throw PoolError.overflow("\(what()) overflows 64 bits") }
        return value
    }

    public static func product(_ values: [Int], _ what: @autoclosure () -> String) throws -> Int {
        try values.reduce(1) { try multiply($0, $1, what()) }
    }
}
