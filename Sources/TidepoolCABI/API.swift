import CTidepool
import TidepoolCore

/// The function table of tp_get_api(), built once and never freed. It names the header's
/// declarations (defined by the @_cdecl functions), so the table can only hold the ABI's
/// own signatures.
private let apiTable: UnsafeMutablePointer<tp_api> = {
    let table = UnsafeMutablePointer<tp_api>.allocate(capacity: 1)
    table.initialize(to: tp_api(
        struct_size: UInt32(MemoryLayout<tp_api>.size),
        api_version: UInt32(TP_API_VERSION),
        version: tp_version,
        version_string: tp_version_string,
        status_string: tp_status_string,
        last_error: tp_last_error,
        dtype_size: tp_dtype_size,
        tensor_init: tp_tensor_init,
        pool_desc_init: tp_pool_desc_init,
        pool_output: tp_pool_output,
        tensor_nbytes: tp_tensor_nbytes,
        pool: tp_pool,
        set_num_threads: tp_set_num_threads,
        get_num_threads: tp_get_num_threads,
        default_endpoint: tp_default_endpoint,
        client_connect: tp_client_connect,
        client_close: tp_client_close,
        client_ping: tp_client_ping,
        client_stats: tp_client_stats,
        client_alloc: tp_client_alloc,
        buffer_data: tp_buffer_data,
        buffer_size: tp_buffer_size,
        buffer_free: tp_buffer_free,
        client_pool: tp_client_pool,
        client_submit: tp_client_submit,
        client_wait: tp_client_wait,
        client_cancel: tp_client_cancel,
        cpu_level: tp_cpu_level,
        pool_backward: tp_pool_backward,
        client_pool_backward: tp_client_pool_backward,
        client_submit_backward: tp_client_submit_backward,
        client_connect_v2: tp_client_connect_v2))
    return table
}()

@_cdecl("tp_get_api")
public func tpGetAPI(_ version: UInt32) -> UnsafePointer<tp_api>? {
    // Every table starts with the fields of the versions before it, so one table serves
    // each version up to the library's own.
    guard (1...UInt32(TP_API_VERSION)).contains(version) else {
        LastError.set("tp_get_api: API version \(version) is not served; this library (\(TidepoolVersion.string)) serves versions 1 to \(TP_API_VERSION)")
        return nil
    }
    return UnsafePointer(apiTable)
}
