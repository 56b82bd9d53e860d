import CTidepool
import TidepoolCore
import TidepoolTypes

#if canImport(Glibc)
import Glibc
#endif

/// The last tp_pool of a thread: the bytes of its descriptor and tensors (the tensors'
/// data addresses aside) and what checking them gave (`PoolEngine.Prepared`), so that a
/// caller pooling many tensors of one description pays for reading and checking its structs
/// once: a tiny pooling's cost was mostly that. Bytes equal means every field equal (the
/// structs have no padding), so a hit runs exactly what a full check would have; anything
/// else is a miss and checks in full.
final class PoolPlanCache {
    private var desc = tp_pool_desc(), input = tp_tensor(), output = tp_tensor()
    private var prepared: PoolEngine.Prepared?

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { Unmanaged<PoolPlanCache>.fromOpaque($0!).release() }
        return key
    }()

    /// This thread's cache (made on first use, released when the thread exits).
    static var current: PoolPlanCache {
        if let slot = pthread_getspecific(key) { return Unmanaged<PoolPlanCache>.fromOpaque(slot).takeUnretainedValue() }
        let cache = PoolPlanCache()
        pthread_setspecific(key, Unmanaged.passRetained(cache).toOpaque())
        return cache
    }

    /// What was prepared for structs equal to these, or nil.
    func lookup(_ desc: UnsafePointer<tp_pool_desc>, _ input: UnsafePointer<tp_tensor>,
                _ output: UnsafePointer<tp_tensor>) -> PoolEngine.Prepared? {
        guard let prepared, Self.same(&self.desc, desc), Self.sameDescription(&self.input, input),
              Self.sameDescription(&self.output, output) else { return nil }
        return prepared
    }

    func store(_ prepared: PoolEngine.Prepared, _ desc: UnsafePointer<tp_pool_desc>, _ input: UnsafePointer<tp_tensor>,
               _ output: UnsafePointer<tp_tensor>) {
        self.desc = desc.pointee
        self.input = input.pointee
        self.output = output.pointee
        self.input.data = nil
        self.output.data = nil
        self.prepared = prepared
    }

    private static func same<T>(_ kept: UnsafePointer<T>, _ other: UnsafePointer<T>) -> Bool {
        memcmp(kept, other, MemoryLayout<T>.size) == 0
    }

    /// Equal but for the data address (kept as null).
    private static func sameDescription(_ kept: UnsafePointer<tp_tensor>, _ other: UnsafePointer<tp_tensor>) -> Bool {
        var copy = other.pointee
        copy.data = nil
        return withUnsafePointer(to: &copy) { same(kept, $0) }
    }
}
