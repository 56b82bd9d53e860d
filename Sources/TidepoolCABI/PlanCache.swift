import CTidepool
import TidepoolCore
import TidepoolTypes

#if canImport(Glibc)
import Glibc
#endif

/// The last tp_pool and the last tp_pool_backward of a thread: the bytes of their
/// descriptor, tensors (the tensors' data addresses aside) and options, and what checking
/// them gave (`PoolEngine.Prepared`, `PoolEngine.PreparedBackward`), so that a caller pooling
/// many tensors of one description pays for reading and checking its structs once: for a tiny
/// pooling that was most of its cost, and a large share of a tiny gradient's. Bytes equal
/// means every field equal (the structs have no padding), so a hit runs exactly what a full
/// check would have; anything else is a miss and checks in full.
final class PoolPlanCache {
    private var desc = tp_pool_desc(), input = tp_tensor(), output = tp_tensor()
    private var prepared: PoolEngine.Prepared?
    private var backwardDesc = tp_pool_desc(), backwardInput = tp_tensor(), gradOutput = tp_tensor(), gradInput = tp_tensor()
    /// The options as passed; nil for a NULL pointer (the defaults), a case of its own.
    private var options: tp_backward_options?
    private var preparedBackward: PoolEngine.PreparedBackward?

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

    /// What was prepared for gradient structs equal to these, or nil.
    func lookupBackward(_ desc: UnsafePointer<tp_pool_desc>, _ input: UnsafePointer<tp_tensor>,
                        _ gradOutput: UnsafePointer<tp_tensor>, _ gradInput: UnsafePointer<tp_tensor>,
                        _ options: UnsafePointer<tp_backward_options>?) -> PoolEngine.PreparedBackward? {
        guard let preparedBackward, (options == nil) == (self.options == nil), Self.same(&backwardDesc, desc),
              Self.sameDescription(&backwardInput, input), Self.sameDescription(&self.gradOutput, gradOutput),
              Self.sameDescription(&self.gradInput, gradInput) else { return nil }
        if let options, var kept = self.options, !Self.same(&kept, options) { return nil }
        return preparedBackward
    }

    func storeBackward(_ prepared: PoolEngine.PreparedBackward, _ desc: UnsafePointer<tp_pool_desc>, _ input: UnsafePointer<tp_tensor>,
                       _ gradOutput: UnsafePointer<tp_tensor>, _ gradInput: UnsafePointer<tp_tensor>,
                       _ options: UnsafePointer<tp_backward_options>?) {
        backwardDesc = desc.pointee
        backwardInput = input.pointee
        self.gradOutput = gradOutput.pointee
        self.gradInput = gradInput.pointee
        backwardInput.data = nil
        self.gradOutput.data = nil
        self.gradInput.data = nil
        self.options = options?.pointee
        preparedBackward = prepared
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
