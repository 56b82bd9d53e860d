import CZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// A thin Swift layer over libzmq's C API (loaded on first use: CZeroMQ's tidepool_zmq.h):
/// contexts, sockets, message frames, polling.
/// Sockets are not thread-safe (as in libzmq): each belongs to one thread at a time.

public struct ZMQError: Error, CustomStringConvertible {
    public let code: Int32
    public let operation: String

    public init(_ operation: String, code: Int32 = tpzmq_errno()) {
        self.operation = operation
        self.code = code
    }

    public var description: String {
        code == ELIBACC ? operation : "\(operation): \(String(cString: tpzmq_strerror(code)))"
    }
    public var isAgain: Bool { code == EAGAIN }
    public var isInterrupted: Bool { code == EINTR }
}

public final class ZMQContext: @unchecked Sendable {
    public let handle: UnsafeMutableRawPointer
    private var terminated = false

    /// Throws when libzmq cannot be loaded (it is loaded on first use, see tidepool_zmq.h),
    /// saying so.
    public init() throws {
        guard tpzmq_load() == 0 else { throw ZMQError(String(cString: tpzmq_load_error()), code: ELIBACC) }
        guard let handle = tpzmq_ctx_new() else { throw ZMQError("zmq_ctx_new") }
        self.handle = handle
    }

    deinit { terminate() }

    /// Blocks until every socket is closed and their queued messages are sent (within each
    /// socket's linger). Call it from the thread that closed the sockets.
    public func terminate() {
        guard !terminated else { return }
        terminated = true
        while tpzmq_ctx_term(handle) != 0 && tpzmq_errno() == EINTR {}
    }

    /// libzmq's version, e.g. "4.3.4".
    public static var version: String {
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        tpzmq_version(&major, &minor, &patch)
        return "\(major).\(minor).\(patch)"
    }
}

/// One message frame (a zmq_msg_t). Large frames are used in place: a job reads its input
/// from, and writes its output into, the frame's own memory.
public final class ZMQFrame: @unchecked Sendable {
    let message: UnsafeMutablePointer<zmq_msg_t>

    public init() {
        message = .allocate(capacity: 1)
        tpzmq_msg_init(message)
    }

    /// An uninitialised frame of `size` bytes to fill in place; nil when memory runs out.
    public init?(size: Int) {
        message = .allocate(capacity: 1)
        guard tpzmq_msg_init_size(message, size) == 0 else {
            message.deallocate()
            return nil
        }
    }

    /// A frame of `size` bytes (uninitialised, to fill in place) whose memory is freed by a
    /// callback: `release` runs once libzmq no longer needs the bytes (sent, or dropped with
    /// the connection), on whichever thread lets go of them. The daemon counts the bytes of
    /// replies it has handed to libzmq with it. Nil when memory runs out.
    public init?(size: Int, release: FrameRelease) {
        message = .allocate(capacity: 1)
        guard let data = malloc(Swift.max(size, 1)) else {
            message.deallocate()
            return nil
        }
        let hint = Unmanaged.passRetained(release).toOpaque()
        let code = tpzmq_msg_init_data(message, data, size, { data, hint in
            free(data)
            Unmanaged<FrameRelease>.fromOpaque(hint!).takeRetainedValue().released()
        }, hint)
        guard code == 0 else {
            Unmanaged<FrameRelease>.fromOpaque(hint).release()
            free(data)
            message.deallocate()
            return nil
        }
    }

    public convenience init(_ bytes: [UInt8]) {
        self.init(size: bytes.count)!
        bytes.withUnsafeBytes { raw in
            if raw.count > 0 { data.copyMemory(from: raw.baseAddress!, byteCount: raw.count) }
        }
    }

    deinit {
        tpzmq_msg_close(message)
        message.deallocate()
    }

    public var size: Int { tpzmq_msg_size(message) }
    /// The frame's memory. Valid only while the frame lives: an optimised build may free a
    /// frame right after its last use, so keep the frame (or the array holding it) alive for
    /// as long as the pointer is used (a parameter is; a temporary is not: withExtendedLifetime).
    public var data: UnsafeMutableRawPointer { tpzmq_msg_data(message) }
    /// The frame's bytes; the same lifetime rule as `data`.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: data, count: size) }
    public var array: [UInt8] { Array(bytes) }
    var hasMore: Bool { tpzmq_msg_more(message) != 0 }

    /// A metadata property libzmq attached to a received frame ("User-Id", "Peer-Address",
    /// "Socket-Type"...), nil when absent.
    public func metadata(_ property: String) -> String? {
        tpzmq_msg_gets(message, property).map { String(cString: $0) }
    }
}

/// Called once when the bytes of a frame made with `ZMQFrame(size:release:)` are freed.
open class FrameRelease: @unchecked Sendable {
    public init() {}
    open func released() {}
}

/// The socket types Tidepool uses, so nobody above this wrapper needs libzmq's constants.
public struct ZMQSocketType: Sendable {
    let raw: Int32
    public static let router = ZMQSocketType(raw: ZMQ_ROUTER)
    public static let dealer = ZMQSocketType(raw: ZMQ_DEALER)
    public static let rep = ZMQSocketType(raw: ZMQ_REP)
    public static let pair = ZMQSocketType(raw: ZMQ_PAIR)
}

/// The socket options Tidepool sets (zmq_setsockopt), named as in zmq.h.
public struct ZMQOption: Sendable, CustomStringConvertible {
    let raw: Int32
    public let description: String
    public static let linger = ZMQOption(raw: ZMQ_LINGER, description: "ZMQ_LINGER")
    public static let receiveHighWaterMark = ZMQOption(raw: ZMQ_RCVHWM, description: "ZMQ_RCVHWM")
    public static let routingID = ZMQOption(raw: ZMQ_ROUTING_ID, description: "ZMQ_ROUTING_ID")
    public static let heartbeatInterval = ZMQOption(raw: ZMQ_HEARTBEAT_IVL, description: "ZMQ_HEARTBEAT_IVL")
    public static let heartbeatTimeout = ZMQOption(raw: ZMQ_HEARTBEAT_TIMEOUT, description: "ZMQ_HEARTBEAT_TIMEOUT")
    public static let reconnectInterval = ZMQOption(raw: ZMQ_RECONNECT_IVL, description: "ZMQ_RECONNECT_IVL")
    public static let reconnectIntervalMax = ZMQOption(raw: ZMQ_RECONNECT_IVL_MAX, description: "ZMQ_RECONNECT_IVL_MAX")
    public static let maxMessageSize = ZMQOption(raw: ZMQ_MAXMSGSIZE, description: "ZMQ_MAXMSGSIZE")
    public static let routerMandatory = ZMQOption(raw: ZMQ_ROUTER_MANDATORY, description: "ZMQ_ROUTER_MANDATORY")
    public static let routerHandover = ZMQOption(raw: ZMQ_ROUTER_HANDOVER, description: "ZMQ_ROUTER_HANDOVER")
    public static let zapDomain = ZMQOption(raw: ZMQ_ZAP_DOMAIN, description: "ZMQ_ZAP_DOMAIN")
    /// 1: the endpoints bound from now on speak CURVE as its server; 0: NULL (no security).
    public static let curveServer = ZMQOption(raw: ZMQ_CURVE_SERVER, description: "ZMQ_CURVE_SERVER")
    public static let curvePublicKey = ZMQOption(raw: ZMQ_CURVE_PUBLICKEY, description: "ZMQ_CURVE_PUBLICKEY")
    public static let curveSecretKey = ZMQOption(raw: ZMQ_CURVE_SECRETKEY, description: "ZMQ_CURVE_SECRETKEY")
    public static let curveServerKey = ZMQOption(raw: ZMQ_CURVE_SERVERKEY, description: "ZMQ_CURVE_SERVERKEY")
}

/// Socket monitor events (ZMQ_EVENT_*), a set of them for `ZMQSocket.monitor`.
public struct ZMQEvent: OptionSet, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let disconnected = ZMQEvent(rawValue: ZMQ_EVENT_DISCONNECTED)
    public static let handshakeSucceeded = ZMQEvent(rawValue: ZMQ_EVENT_HANDSHAKE_SUCCEEDED)
    /// The security handshake failed: the peer speaks another mechanism, or its keys are wrong
    /// (the value is a ZMQ_PROTOCOL_ERROR_* code).
    public static let handshakeFailedProtocol = ZMQEvent(rawValue: ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)
    /// The connection ended during the security handshake (the value is the errno).
    public static let handshakeFailedNoDetail = ZMQEvent(rawValue: ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    /// The peer's authenticator refused this side (the value is the ZAP status code, e.g. 400).
    public static let handshakeFailedAuth = ZMQEvent(rawValue: ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)
}

public final class ZMQSocket {
    public private(set) var handle: UnsafeMutableRawPointer?

    public init(_ context: ZMQContext, type: ZMQSocketType) throws {
        guard let handle = tpzmq_socket(context.handle, type.raw) else { throw ZMQError("zmq_socket") }
        self.handle = handle
    }

    deinit { close() }

    public func close() {
        if let handle { tpzmq_close(handle) }
        handle = nil
    }

    private var live: UnsafeMutableRawPointer {
        get throws {
            guard let handle else { throw ZMQError("socket", code: ENOTSOCK) }
            return handle
        }
    }

    public func bind(_ endpoint: String) throws {
        guard tpzmq_bind(try live, endpoint) == 0 else { throw ZMQError("bind \(endpoint)") }
    }

    public func connect(_ endpoint: String) throws {
        guard tpzmq_connect(try live, endpoint) == 0 else { throw ZMQError("connect \(endpoint)") }
    }

    public func set(_ option: ZMQOption, _ value: Int32) throws {
        var value = value
        guard tpzmq_setsockopt(try live, option.raw, &value, MemoryLayout<Int32>.size) == 0 else {
            throw ZMQError("tpzmq_setsockopt(\(option))")
        }
    }

    public func set(_ option: ZMQOption, _ value: Int64) throws {
        var value = value
        guard tpzmq_setsockopt(try live, option.raw, &value, MemoryLayout<Int64>.size) == 0 else {
            throw ZMQError("tpzmq_setsockopt(\(option))")
        }
    }

    public func set(_ option: ZMQOption, _ value: [UInt8]) throws {
        let socket = try live
        guard value.withUnsafeBytes({ tpzmq_setsockopt(socket, option.raw, $0.baseAddress, $0.count) }) == 0 else {
            throw ZMQError("tpzmq_setsockopt(\(option))")
        }
    }

    public func set(_ option: ZMQOption, _ value: String) throws { try set(option, Array(value.utf8)) }

    /// Publishes this socket's `events` on an inproc PAIR endpoint
    /// that a `ZMQMonitor` reads.
    public func monitor(_ endpoint: String, events: ZMQEvent) throws {
        guard tpzmq_socket_monitor(try live, endpoint, events.rawValue) == 0 else { throw ZMQError("zmq_socket_monitor") }
    }

    /// Stops publishing events. Call it before closing a monitored socket: libzmq sends events
    /// from its I/O thread with a blocking send, so an event sent while the reader is gone
    /// would hang that thread, and with it every socket of the context.
    public func stopMonitor() {
        if let handle { tpzmq_socket_monitor(handle, nil, 0) }
    }

    /// The endpoint actually bound (tcp port 0 becomes a real port), via ZMQ_LAST_ENDPOINT.
    public var lastEndpoint: String {
        var buffer = [CChar](repeating: 0, count: 1024)
        var size = buffer.count
        guard let handle, tpzmq_getsockopt(handle, ZMQ_LAST_ENDPOINT, &buffer, &size) == 0 else { return "" }
        return String(cString: buffer)
    }

    /// ZMQ_FD: readable when the socket's state may have changed, for a plain poll(). It
    /// signals edges only: receive until EAGAIN before sleeping on it.
    public var fileDescriptor: Int32 {
        var fd: Int32 = -1
        var size = MemoryLayout<Int32>.size
        guard let handle, tpzmq_getsockopt(handle, ZMQ_FD, &fd, &size) == 0 else { return -1 }
        return fd
    }

    /// Whether a message can be received now (ZMQ_EVENTS); also re-arms `fileDescriptor`.
    public var hasInput: Bool {
        var events: Int32 = 0
        var size = MemoryLayout<Int32>.size
        guard let handle, tpzmq_getsockopt(handle, ZMQ_EVENTS, &events, &size) == 0 else { return false }
        return events & Int32(ZMQ_POLLIN) != 0
    }

    /// Sends every frame as one multipart message. Frames are consumed (emptied) by libzmq.
    public func send(_ frames: [ZMQFrame], dontWait: Bool = false) throws {
        let socket = try live
        for (index, frame) in frames.enumerated() {
            var flags: Int32 = index < frames.count - 1 ? ZMQ_SNDMORE : 0
            if dontWait { flags |= ZMQ_DONTWAIT }
            while tpzmq_msg_send(frame.message, socket, flags) < 0 {
                let error = ZMQError("zmq_msg_send")
                if error.isInterrupted { continue }
                throw error
            }
        }
    }

    /// Receives one whole multipart message; nil when none is waiting and `dontWait` is set
    /// (or the receive timeout expired).
    public func receive(dontWait: Bool = false) throws -> [ZMQFrame]? {
        let socket = try live
        var frames: [ZMQFrame] = []
        repeat {
            let frame = ZMQFrame()
            while tpzmq_msg_recv(frame.message, socket, dontWait && frames.isEmpty ? ZMQ_DONTWAIT : 0) < 0 {
                let error = ZMQError("zmq_msg_recv")
                if error.isInterrupted { continue }
                if error.isAgain && frames.isEmpty { return nil }
                throw error
            }
            frames.append(frame)
        } while frames.last!.hasMore
        return frames
    }
}

/// The reading end of `ZMQSocket.monitor`: each event is a two-frame message, a 6-byte
/// (u16 event, u32 value) frame and the endpoint.
public final class ZMQMonitor {
    public let socket: ZMQSocket

    public init(_ context: ZMQContext, watching target: ZMQSocket, name: String, events: ZMQEvent) throws {
        try target.monitor(name, events: events)
        socket = try ZMQSocket(context, type: .pair)
        try socket.set(.linger, Int32(0))
        // No high-water mark on the event pipe: libzmq's I/O thread blocks on a full one (and
        // every socket of the context with it). Events are a few bytes; the reader drains
        // them on every call, so an idle one holds little.
        try socket.set(.receiveHighWaterMark, Int32(0))
        try socket.connect(name)
    }

    /// The next event waiting, its value and the endpoint it names (for a bound socket's
    /// connection, the local endpoint), nil when none is.
    public func next() -> (event: ZMQEvent, value: UInt32, endpoint: String)? {
        while true {
            guard let frames = try? socket.receive(dontWait: true) else { return nil }
            guard let first = frames.first, first.size >= 6 else { continue }
            // `array`, not `bytes`: the frame must live while its bytes are read (see `data`).
            let endpoint = frames.count > 1 ? String(decoding: frames[1].array, as: UTF8.self) : ""
            return withExtendedLifetime(first) {
                (ZMQEvent(rawValue: Int32(UInt16(littleEndian: first.bytes.loadUnaligned(as: UInt16.self)))),
                 UInt32(littleEndian: first.bytes.loadUnaligned(fromByteOffset: 2, as: UInt32.self)), endpoint)
            }
        }
    }

    deinit { socket.close() }
}

/// One entry of a zmq_poll set: a socket or a plain file descriptor.
public enum PollTarget {
    /// A socket with a message to receive.
    case socket(ZMQSocket)
    /// A socket that can take a message to send.
    case writable(ZMQSocket)
    /// A readable file descriptor.
    case fd(Int32)
}

/// Waits until one of `targets` is readable or `timeoutMs` passes (-1: no limit); returns
/// the readable flags in the same order. EINTR returns all-false.
public func poll(_ targets: [PollTarget], timeoutMs: Int) throws -> [Bool] {
    var items = targets.map { target -> zmq_pollitem_t in
        switch target {
        case .socket(let socket): return zmq_pollitem_t(socket: socket.handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
        case .writable(let socket): return zmq_pollitem_t(socket: socket.handle, fd: 0, events: Int16(ZMQ_POLLOUT), revents: 0)
        case .fd(let fd): return zmq_pollitem_t(socket: nil, fd: fd, events: Int16(ZMQ_POLLIN), revents: 0)
        }
    }
    if tpzmq_poll(&items, Int32(items.count), timeoutMs) < 0 {
        let error = ZMQError("zmq_poll")
        if error.isInterrupted { return Array(repeating: false, count: items.count) }
        throw error
    }
    return items.map { $0.revents & $0.events != 0 }
}
