import CZeroMQ

#if canImport(Glibc)
import Glibc
#endif

/// A thin Swift layer over libzmq's C API: contexts, sockets, message frames, polling.
/// Sockets are not thread-safe (as in libzmq): each belongs to one thread at a time.

public struct ZMQError: Error, CustomStringConvertible {
    public let code: Int32
    public let operation: String

    public init(_ operation: String, code: Int32 = zmq_errno()) {
        self.operation = operation
        self.code = code
    }

    public var description: String { "\(operation): \(String(cString: zmq_strerror(code)))" }
    public var isAgain: Bool { code == EAGAIN }
    public var isInterrupted: Bool { code == EINTR }
}

public final class ZMQContext: @unchecked Sendable {
    public let handle: UnsafeMutableRawPointer
    private var terminated = false

    public init() throws {
        guard let handle = zmq_ctx_new() else { throw ZMQError("zmq_ctx_new") }
        self.handle = handle
    }

    deinit { terminate() }

    /// Blocks until every socket is closed and their queued messages are sent (within each
    /// socket's linger). Call it from the thread that closed the sockets.
    public func terminate() {
        guard !terminated else { return }
        terminated = true
        while zmq_ctx_term(handle) != 0 && zmq_errno() == EINTR {}
    }

    /// libzmq's version, e.g. "4.3.4".
    public static var version: String {
        var major: Int32 = 0, minor: Int32 = 0, patch: Int32 = 0
        zmq_version(&major, &minor, &patch)
        return "\(major).\(minor).\(patch)"
    }
}

/// One message frame (a zmq_msg_t). Large frames are used in place: a job reads its input
/// from, and writes its output into, the frame's own memory.
public final class ZMQFrame: @unchecked Sendable {
    let message: UnsafeMutablePointer<zmq_msg_t>

    public init() {
        message = .allocate(capacity: 1)
        zmq_msg_init(message)
    }

    /// An uninitialised frame of `size` bytes to fill in place; nil when memory runs out.
    public init?(size: Int) {
        message = .allocate(capacity: 1)
        guard zmq_msg_init_size(message, size) == 0 else {
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
        zmq_msg_close(message)
        message.deallocate()
    }

    public var size: Int { zmq_msg_size(message) }
    public var data: UnsafeMutableRawPointer { zmq_msg_data(message) }
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: data, count: size) }
    public var array: [UInt8] { Array(bytes) }
    var hasMore: Bool { zmq_msg_more(message) != 0 }
}

public final class ZMQSocket {
    public private(set) var handle: UnsafeMutableRawPointer?

    public init(_ context: ZMQContext, type: Int32) throws {
        guard let handle = zmq_socket(context.handle, type) else { throw ZMQError("zmq_socket") }
        self.handle = handle
    }

    deinit { close() }

    public func close() {
        if let handle { zmq_close(handle) }
        handle = nil
    }

    private var live: UnsafeMutableRawPointer {
        get throws {
            guard let handle else { throw ZMQError("socket", code: ENOTSOCK) }
            return handle
        }
    }

    public func bind(_ endpoint: String) throws {
        guard zmq_bind(try live, endpoint) == 0 else { throw ZMQError("bind \(endpoint)") }
    }

    public func connect(_ endpoint: String) throws {
        guard zmq_connect(try live, endpoint) == 0 else { throw ZMQError("connect \(endpoint)") }
    }

    public func set(_ option: Int32, _ value: Int32) throws {
        var value = value
        guard zmq_setsockopt(try live, option, &value, MemoryLayout<Int32>.size) == 0 else {
            throw ZMQError("zmq_setsockopt(\(option))")
        }
    }

    public func set(_ option: Int32, _ value: Int64) throws {
        var value = value
        guard zmq_setsockopt(try live, option, &value, MemoryLayout<Int64>.size) == 0 else {
            throw ZMQError("zmq_setsockopt(\(option))")
        }
    }

    /// The endpoint actually bound (tcp port 0 becomes a real port), via ZMQ_LAST_ENDPOINT.
    public var lastEndpoint: String {
        var buffer = [CChar](repeating: 0, count: 1024)
        var size = buffer.count
        guard let handle, zmq_getsockopt(handle, ZMQ_LAST_ENDPOINT, &buffer, &size) == 0 else { return "" }
        return String(cString: buffer)
    }

    /// ZMQ_FD: readable when the socket's state may have changed, for a plain poll(). It
    /// signals edges only: receive until EAGAIN before sleeping on it.
    public var fileDescriptor: Int32 {
        var fd: Int32 = -1
        var size = MemoryLayout<Int32>.size
        guard let handle, zmq_getsockopt(handle, ZMQ_FD, &fd, &size) == 0 else { return -1 }
        return fd
    }

    /// Whether a message can be received now (ZMQ_EVENTS); also re-arms `fileDescriptor`.
    public var hasInput: Bool {
        var events: Int32 = 0
        var size = MemoryLayout<Int32>.size
        guard let handle, zmq_getsockopt(handle, ZMQ_EVENTS, &events, &size) == 0 else { return false }
        return events & Int32(ZMQ_POLLIN) != 0
    }

    /// Sends every frame as one multipart message. Frames are consumed (emptied) by libzmq.
    public func send(_ frames: [ZMQFrame], dontWait: Bool = false) throws {
        let socket = try live
        for (index, frame) in frames.enumerated() {
            var flags: Int32 = index < frames.count - 1 ? ZMQ_SNDMORE : 0
            if dontWait { flags |= ZMQ_DONTWAIT }
            while zmq_msg_send(frame.message, socket, flags) < 0 {
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
            while zmq_msg_recv(frame.message, socket, dontWait && frames.isEmpty ? ZMQ_DONTWAIT : 0) < 0 {
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

/// One entry of a zmq_poll set: a socket or a plain file descriptor.
public enum PollTarget {
    case socket(ZMQSocket)
    case fd(Int32)
}

/// Waits until one of `targets` is readable or `timeoutMs` passes (-1: no limit); returns
/// the readable flags in the same order. EINTR returns all-false.
public func poll(_ targets: [PollTarget], timeoutMs: Int) throws -> [Bool] {
    var items = targets.map { target -> zmq_pollitem_t in
        switch target {
        case .socket(let socket): return zmq_pollitem_t(socket: socket.handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
        case .fd(let fd): return zmq_pollitem_t(socket: nil, fd: fd, events: Int16(ZMQ_POLLIN), revents: 0)
        }
    }
    if zmq_poll(&items, Int32(items.count), timeoutMs) < 0 {
        let error = ZMQError("zmq_poll")
        if error.isInterrupted { return Array(repeating: false, count: items.count) }
        throw error
    }
    return items.map { $0.revents & Int16(ZMQ_POLLIN) != 0 }
}
