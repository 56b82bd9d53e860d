import CTidepool
import TidepoolClient
import TidepoolCore
import TidepoolEndpoint
import TidepoolSync

/// The client half of the C ABI: opaque tp_client / tp_buffer handles over TidepoolClient.

/// Objects handed to C as opaque pointers. Only registered pointers are accepted back, so
/// a closed, freed or foreign handle is refused with an error instead of crashing.
final class HandleRegistry<Object: AnyObject>: Sendable {
    private let live = Locked<Set<UnsafeMutableRawPointer>>([])
    private let kind: String

    init(kind: String) { self.kind = kind }

    func register(_ object: Object) -> OpaquePointer {
        let pointer = Unmanaged.passRetained(object).toOpaque()
        live.withLock { _ = $0.insert(pointer) }
        return OpaquePointer(pointer)
    }

    /// A strong reference, taken under the lock, so a concurrent close cannot free it.
    func object(_ handle: OpaquePointer?) throws -> Object {
        try live.withLock { set in
            guard let handle, set.contains(UnsafeMutableRawPointer(handle)) else {
                throw PoolError(TP_ERR_INVALID_ARGUMENT, "\(kind) is not an open \(kind) handle")
            }
            return Unmanaged<Object>.fromOpaque(UnsafeRawPointer(handle)).takeUnretainedValue()
        }
    }

    func unregister(_ handle: OpaquePointer) throws -> Object {
        try live.withLock { set in
            guard set.remove(UnsafeMutableRawPointer(handle)) != nil else {
                throw PoolError(TP_ERR_INVALID_ARGUMENT, "\(kind) is not an open \(kind) handle")
            }
            return Unmanaged<Object>.fromOpaque(UnsafeRawPointer(handle)).takeRetainedValue()
        }
    }
}

let clients = HandleRegistry<PoolClient>(kind: "tp_client")
let buffers = HandleRegistry<SharedBuffer>(kind: "tp_buffer")
let defaultEndpointText = ThreadLocalCString()

func checkedTimeout(_ timeoutMs: Int32) throws -> Int {
    guard timeoutMs >= -1 else {
        throw PoolError(TP_ERR_INVALID_ARGUMENT, "timeout_ms must be -1 (no limit) or at least 0 but is \(timeoutMs)")
    }
    return Int(timeoutMs)
}

/// The three arguments of a pooling call, checked as tp_pool checks them.
func poolArguments(_ desc: UnsafePointer<tp_pool_desc>?, _ input: UnsafePointer<tp_tensor>?, _ output: UnsafePointer<tp_tensor>?)
    throws -> (PoolDescriptor, TensorView, OutputView)
{
    let pool = try PoolDescriptor(try requireNonNull(desc, "desc").pointee)
    let source = try CTensor(try requireNonNull(input, "input").pointee, "input")
    let destination = try CTensor(try requireNonNull(output, "output").pointee, "output")
    return (pool, source.inputView, destination.outputView)
}

@_cdecl("tp_default_endpoint")
public func tpDefaultEndpoint() -> UnsafePointer<CChar>? {
    defaultEndpointText.set(Endpoint.defaultEndpoint())
    return defaultEndpointText.current
}

@_cdecl("tp_client_connect")
public func tpClientConnect(_ endpoint: UnsafePointer<CChar>?, _ timeoutMs: Int32, _ client: UnsafeMutablePointer<OpaquePointer?>?) -> tp_status {
    withStatus {
        guard let client else { throw PoolError(TP_ERR_NULL_POINTER, "client is NULL") }
        let address = endpoint.map { String(cString: $0) } ?? Endpoint.defaultEndpoint()
        let timeout = try checkedTimeout(timeoutMs)
        let curve = try CurveClientKeys.resolve(endpoint: address, serverKey: nil, clientCert: nil)
        client.pointee = clients.register(try PoolClient(endpoint: address, timeoutMs: timeout, curve: curve))
    }
}

@_cdecl("tp_client_connect_v2")
public func tpClientConnectV2(_ endpoint: UnsafePointer<CChar>?, _ options: UnsafePointer<tp_client_options>?,
                              _ client: UnsafeMutablePointer<OpaquePointer?>?) -> tp_status {
    withStatus {
        guard let client else { throw PoolError(TP_ERR_NULL_POINTER, "client is NULL") }
        let address = endpoint.map { String(cString: $0) } ?? Endpoint.defaultEndpoint()
        var timeout = -1
        var serverKey: String?, clientCert: String?
        if let options = options?.pointee {
            try checkHeader(structSize: options.struct_size, flags: options.flags,
                            expectedSize: MemoryLayout<tp_client_options>.size, name: "tp_client_options")
            guard options.reserved == 0 else {
                throw PoolError.invalid("tp_client_options.reserved is \(options.reserved) but must be 0")
            }
            timeout = try checkedTimeout(options.timeout_ms)
            serverKey = options.curve_server_key.map { String(cString: $0) }
            clientCert = options.curve_client_cert.map { String(cString: $0) }
        }
        let curve = try CurveClientKeys.resolve(endpoint: address, serverKey: serverKey, clientCert: clientCert)
        client.pointee = clients.register(try PoolClient(endpoint: address, timeoutMs: timeout, curve: curve))
    }
}

@_cdecl("tp_client_close")
public func tpClientClose(_ client: OpaquePointer?) -> tp_status {
    withStatus {
        guard let client else { return }
        try clients.unregister(client).close()
    }
}

@_cdecl("tp_client_ping")
public func tpClientPing(_ client: OpaquePointer?, _ seconds: UnsafeMutablePointer<Double>?) -> tp_status {
    withStatus {
        let roundTrip = try clients.object(client).ping()
        seconds?.pointee = roundTrip
    }
}

@_cdecl("tp_client_stats")
public func tpClientStats(_ client: OpaquePointer?, _ json: UnsafeMutablePointer<CChar>?, _ capacity: Int,
                          _ length: UnsafeMutablePointer<Int>?) -> tp_status {
    withStatus {
        let text = Array(try clients.object(client).stats().utf8)
        length?.pointee = text.count
        guard capacity > 0 else { return }
        guard let json else { throw PoolError(TP_ERR_NULL_POINTER, "json is NULL but capacity is \(capacity)") }
        let count = min(text.count, capacity - 1)
        text.withUnsafeBufferPointer { UnsafeMutableRawPointer(json).copyMemory(from: $0.baseAddress!, byteCount: count) }
        json[count] = 0
    }
}

@_cdecl("tp_client_alloc")
public func tpClientAlloc(_ client: OpaquePointer?, _ nbytes: Int, _ buffer: UnsafeMutablePointer<OpaquePointer?>?) -> tp_status {
    withStatus {
        let connection = try clients.object(client)
        guard let buffer else { throw PoolError(TP_ERR_NULL_POINTER, "buffer is NULL") }
        // size_t arrives as Int: a value past Int.max reads negative, so say it as the caller wrote it.
        guard nbytes > 0 else { throw PoolError(TP_ERR_INVALID_ARGUMENT, "nbytes must be positive but is \(UInt(bitPattern: nbytes))") }
        buffer.pointee = buffers.register(try connection.allocate(bytes: nbytes))
    }
}

@_cdecl("tp_buffer_data")
public func tpBufferData(_ buffer: OpaquePointer?) -> UnsafeMutableRawPointer? { (try? buffers.object(buffer))?.data }

@_cdecl("tp_buffer_size")
public func tpBufferSize(_ buffer: OpaquePointer?) -> Int { (try? buffers.object(buffer))?.size ?? 0 }

@_cdecl("tp_buffer_free")
public func tpBufferFree(_ buffer: OpaquePointer?) -> tp_status {
    withStatus {
        guard let buffer else { return }
        try buffers.unregister(buffer).free()
    }
}

@_cdecl("tp_client_pool")
public func tpClientPool(_ client: OpaquePointer?, _ desc: UnsafePointer<tp_pool_desc>?, _ input: UnsafePointer<tp_tensor>?,
                         _ output: UnsafePointer<tp_tensor>?) -> tp_status {
    withStatus {
        let connection = try clients.object(client)
        let (pool, source, destination) = try poolArguments(desc, input, output)
        try connection.pool(pool, input: source, output: destination)
    }
}

@_cdecl("tp_client_submit")
public func tpClientSubmit(_ client: OpaquePointer?, _ desc: UnsafePointer<tp_pool_desc>?, _ input: UnsafePointer<tp_tensor>?,
                           _ output: UnsafePointer<tp_tensor>?, _ job: UnsafeMutablePointer<UInt64>?) -> tp_status {
    withStatus {
        let connection = try clients.object(client)
        guard let job else { throw PoolError(TP_ERR_NULL_POINTER, "job is NULL") }
        let (pool, source, destination) = try poolArguments(desc, input, output)
        job.pointee = try connection.submit(pool, input: source, output: destination)
    }
}

@_cdecl("tp_client_pool_backward")
public func tpClientPoolBackward(_ client: OpaquePointer?, _ desc: UnsafePointer<tp_pool_desc>?, _ input: UnsafePointer<tp_tensor>?,
                                 _ gradOutput: UnsafePointer<tp_tensor>?, _ gradInput: UnsafePointer<tp_tensor>?,
                                 _ options: UnsafePointer<tp_backward_options>?) -> tp_status {
    withStatus {
        let connection = try clients.object(client)
        let job = try BackwardArguments(desc, input, gradOutput, gradInput, options)
        try connection.backward(job.desc, input: job.input, gradOutput: job.gradOutput, gradInput: job.gradInput, ties: job.ties)
    }
}

@_cdecl("tp_client_submit_backward")
public func tpClientSubmitBackward(_ client: OpaquePointer?, _ desc: UnsafePointer<tp_pool_desc>?, _ input: UnsafePointer<tp_tensor>?,
                                   _ gradOutput: UnsafePointer<tp_tensor>?, _ gradInput: UnsafePointer<tp_tensor>?,
                                   _ options: UnsafePointer<tp_backward_options>?, _ job: UnsafeMutablePointer<UInt64>?) -> tp_status {
    withStatus {
        let connection = try clients.object(client)
        guard let job else { throw PoolError(TP_ERR_NULL_POINTER, "job is NULL") }
        let arguments = try BackwardArguments(desc, input, gradOutput, gradInput, options)
        job.pointee = try connection.submitBackward(arguments.desc, input: arguments.input, gradOutput: arguments.gradOutput,
                                                    gradInput: arguments.gradInput, ties: arguments.ties)
    }
}

@_cdecl("tp_client_wait")
public func tpClientWait(_ client: OpaquePointer?, _ job: UInt64, _ timeoutMs: Int32) -> tp_status {
    withStatus { try clients.object(client).wait(job, timeoutMs: try checkedTimeout(timeoutMs)) }
}

@_cdecl("tp_client_cancel")
public func tpClientCancel(_ client: OpaquePointer?, _ job: UInt64) -> tp_status {
    withStatus { try clients.object(client).cancel(job) }
}
