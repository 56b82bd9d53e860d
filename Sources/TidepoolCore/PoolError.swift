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
