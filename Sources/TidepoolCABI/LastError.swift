import CTidepool
import TidepoolCore

#if canImport(Glibc)
import Glibc
#endif

/// A per-thread C string handed to callers: a malloc'd copy owned by the thread's key
/// slot, freed when replaced or when the thread exits.
final class ThreadLocalCString: Sendable {
    private let key: pthread_key_t
    private static let empty: UnsafePointer<CChar> = UnsafePointer(strdup("")!)

    init() {
        var key = pthread_key_t()
        pthread_key_create(&key) { free($0) }
        self.key = key
    }

    func set(_ text: String) {
        let previous = pthread_getspecific(key)
        pthread_setspecific(key, strdup(text))
        free(previous)
    }

    var current: UnsafePointer<CChar> {
        guard let text = pthread_getspecific(key) else { return Self.empty }
        return UnsafePointer(text.assumingMemoryBound(to: CChar.self))
    }
}

/// The message behind tp_last_error().
let LastError = ThreadLocalCString()

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
