import CTidepool
import TidepoolCore

#if canImport(Glibc)
import Glibc
#endif

/// The per-thread message behind tp_last_error(): a malloc'd C string owned by the
/// thread's key slot and freed when replaced or when the thread exits.
enum LastError {
    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { free($0) }
        return key
    }()

    private static let empty: UnsafePointer<CChar> = UnsafePointer(strdup("")!)

    static func set(_ message: String) {
        let previous = pthread_getspecific(key)
        pthread_setspecific(key, strdup(message))
        free(previous)
    }

    static var current: UnsafePointer<CChar> {
        guard let message = pthread_getspecific(key) else { return empty }
        return UnsafePointer(message.assumingMemoryBound(to: CChar.self))
    }
}

/// Runs a C entry point's body: a thrown PoolError becomes its status and message, so no
/// error crosses the C boundary as anything but a code.
@inline(__always)
func withStatus(_ body: () throws -> Void) -> tp_status {
    do {
        try body()
        return TP_OK
    } catch let error as PoolError {
        LastError.set(error.message)
        return error.status
    } catch {
        LastError.set("internal error: \(error)")
        return TP_ERR_INTERNAL
    }
}

/// Strings handed to C that must outlive every call: allocated once, never freed.
enum StaticCString {
    static func make(_ text: String) -> UnsafePointer<CChar> { UnsafePointer(strdup(text)!) }
}
