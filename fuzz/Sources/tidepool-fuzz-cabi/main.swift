// libFuzzer target: the C ABI as a C caller would use it, with every field of every struct
// drawn from the input: struct sizes, flags (PyTorch's options among them), kinds, dtypes, ranks, shapes, strides, kernel,
// stride and padding (values where arithmetic breaks are favoured: 0, 2^31, 2^40, 2^62,
// 2^63 - 1, negatives), over a 64 KiB input buffer and a 64 KiB output buffer.
//
// Checked beyond "no crash, no sanitizer report": a failure has a known status and a message;
// a view is only pooled when it lies in the buffer or cannot be addressed at all (then the
// library must refuse it); output overlapping the input is refused; a success is
// bit-identical with 1 and 2 threads.

import CTidepool
import TidepoolCABI

#if canImport(Glibc)
import Glibc
#endif

let bufferBytes = 1 << 16
/// Every bit pattern shows up somewhere: NaNs with payloads, infinities, subnormals, extremes.
/// (The file is a library under -sanitize=fuzzer: no top-level code.)
let inputBuffer: UnsafeMutableRawPointer = {
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferBytes, alignment: 64)
    var seed: UInt64 = 0x7469_6465
    for i in 0..<bufferBytes {
        seed = seed &* 6364136223846793005 &+ 1442695040888963407
        buffer.storeBytes(of: UInt8(truncatingIfNeeded: seed >> 33), toByteOffset: i, as: UInt8.self)
    }
    return buffer
}()
let outputBuffer = UnsafeMutableRawPointer.allocate(byteCount: bufferBytes, alignment: 64)
let secondOutput = UnsafeMutableRawPointer.allocate(byteCount: bufferBytes, alignment: 64)
let gradients = UnsafeMutableRawPointer.allocate(byteCount: 2 * bufferBytes, alignment: 64)

let interesting: [Int64] = [0, 1, 2, 3, 4, 5, 7, 8, 16, 255, 256, 1 << 15, (1 << 31) - 1, 1 << 31, 1 << 32, 1 << 40, (1 << 40) + 1,
                            1 << 55, 1 << 62, (1 << 62) + 1, Int64.max - 1, Int64.max, -1, -2, -(1 << 31), -(1 << 62), Int64.min]
let knownStatuses: Set<UInt32> = Set([TP_ERR_INVALID_ARGUMENT, TP_ERR_NULL_POINTER, TP_ERR_DTYPE, TP_ERR_SHAPE, TP_ERR_OVERFLOW,
                                      TP_ERR_FLAGS, TP_ERR_VERSION, TP_ERR_LAYOUT, TP_ERR_NO_MEMORY].map(\.rawValue))

struct Reader {
    let bytes: UnsafeBufferPointer<UInt8>
    var offset = 0
    mutating func byte() -> UInt8 {
        defer { offset += 1 }
        return offset < bytes.count ? bytes[offset] : 0
    }
    mutating func raw64() -> Int64 { (0..<8).reduce(Int64(0)) { $0 | Int64(byte()) << (8 * Int64($1)) } }
    /// Mostly small, sometimes a value from `interesting`, rarely any 64 bits.
    mutating func value() -> Int64 {
        let selector = byte()
        if selector < 192 { return Int64(selector % 12) }
        if selector < 252 { return interesting[Int(selector - 192) % interesting.count] }
        return raw64()
    }
    mutating func signedSmall() -> Int64 {
        let selector = byte()
        if selector < 224 { return Int64(selector % 17) - 8 }
        return interesting[Int(selector - 224) % interesting.count]
    }
    mutating func structSize(_ real: Int) -> UInt32 {
        switch byte() % 16 {
        case 0: return 0
        case 1: return UInt32(real - 8)
        case 2: return UInt32(truncatingIfNeeded: raw64())
        case 3: return UInt32(real + 64)
        default: return UInt32(real)
        }
    }
    mutating func flags() -> UInt32 { byte() % 16 == 0 ? UInt32(truncatingIfNeeded: raw64()) : 0 }
}

func setArray<T>(_ tuple: inout T, _ values: [Int64]) {
    withUnsafeMutableBytes(of: &tuple) { raw in
        for (i, v) in values.enumerated() where i < raw.count / 8 { raw.storeBytes(of: v, toByteOffset: 8 * i, as: Int64.self) }
    }
}

func getArray<T>(_ tuple: T, _ count: Int) -> [Int64] {
    withUnsafeBytes(of: tuple) { raw in (0..<count).map { raw.load(fromByteOffset: 8 * $0, as: Int64.self) } }
}

func check(_ status: tp_status, _ call: String) {
    guard status != TP_OK else { return }
    precondition(knownStatuses.contains(status.rawValue), "\(call) returned \(status.rawValue)")
    precondition(tpLastError().map { strlen($0) > 0 } ?? false, "\(call) failed without a message")
}

/// The lowest and highest element offsets a view reaches, or nil when they do not fit in
/// 64 bits (such a view must be refused). Empty views reach nothing: (0, 0).
func reach(shape: [Int64], strides: [Int64]) -> (Int64, Int64)? {
    if shape.contains(where: { $0 <= 0 }) { return (0, 0) }
    var low: Int64 = 0, high: Int64 = 0
    for (n, s) in zip(shape, strides) {
        let (extent, overflow) = s.multipliedReportingOverflow(by: n - 1)
        if overflow { return nil }
        let (sum, sumOverflow) = extent < 0 ? low.addingReportingOverflow(extent) : high.addingReportingOverflow(extent)
        if sumOverflow { return nil }
        if extent < 0 { low = sum } else { high = sum }
    }
    return (low, high)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCABI(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var r = Reader(bytes: UnsafeBufferPointer(start: data, count: size))
    // The small functions: any value in, a valid answer out.
    _ = tpStatusString(tp_status(rawValue: UInt32(truncatingIfNeeded: r.raw64())))
    _ = tpDTypeSize(Int32(truncatingIfNeeded: r.value()))

    var desc = tp_pool_desc()
    if r.byte() % 4 == 0 {
        // Through the initialiser.
        let dims = Int32(truncatingIfNeeded: r.signedSmall())
        var kernel = [r.value(), r.value(), r.value()], stride = [r.value(), r.value(), r.value()]
        var padding = [r.value(), r.value(), r.value()]
        let useStride = r.byte() % 2 == 0, usePadding = r.byte() % 2 == 0
        let status = kernel.withUnsafeMutableBufferPointer { k in
            stride.withUnsafeMutableBufferPointer { s in
                padding.withUnsafeMutableBufferPointer { p in
                    tpPoolDescInit(&desc, Int32(r.byte() % 4), dims, k.baseAddress, useStride ? s.baseAddress : nil,
                                   usePadding ? p.baseAddress : nil)
                }
            }
        }
        check(status, "tp_pool_desc_init")
    } else {
        desc.struct_size = r.structSize(MemoryLayout<tp_pool_desc>.size)
        desc.flags = r.flags()
        desc.kind = Int32(truncatingIfNeeded: r.signedSmall())
        desc.spatial_dims = Int32(truncatingIfNeeded: r.signedSmall())
        setArray(&desc.kernel_size, [r.value(), r.value(), r.value()])
        setArray(&desc.stride, [r.value(), r.value(), r.value()])
        setArray(&desc.padding, [r.value(), r.value(), r.value()])
    }

    // PyTorch's options (tp_pool_flags, bits 0-1) when the input's last byte is 0xA0-0xA3:
    // read from the end, so that the inputs of the corpus and the regressions keep meaning
    // what they meant before the options existed.
    if size > 0, data[size - 1] & 0xFC == 0xA0 { desc.flags = UInt32(data[size - 1] & 3) }

    var input = tp_tensor()
    input.struct_size = r.structSize(MemoryLayout<tp_tensor>.size)
    input.flags = r.flags()
    input.dtype = Int32(truncatingIfNeeded: r.signedSmall()) &+ 4
    input.rank = Int32(truncatingIfNeeded: r.signedSmall()) &+ 3
    setArray(&input.shape, (0..<8).map { _ in r.value() })
    setArray(&input.strides, (0..<8).map { _ in r.signedSmall() })
    if r.byte() % 8 == 0 {
        // Contiguous strides through the initialiser.
        let rank = Int32(truncatingIfNeeded: r.signedSmall()) &+ 3
        var shape = getArray(input.shape, 8)
        check(shape.withUnsafeMutableBufferPointer { tpTensorInit(&input, nil, input.dtype, rank, $0.baseAddress, nil) },
              "tp_tensor_init")
    }
    let itemSize = Int64(tpDTypeSize(input.dtype))
    let baseOffset = Int64(r.byte()) << 8 | Int64(r.byte())
    input.data = itemSize > 0 ? inputBuffer + Int(baseOffset - baseOffset % itemSize) : inputBuffer + Int(baseOffset)
    var nbytes = 0
    check(tpTensorNBytes(&input, &nbytes), "tp_tensor_nbytes")

    var output = tp_tensor()
    let described = tpPoolOutput(&desc, &input, &output)
    check(described, "tp_pool_output")
    guard described == TP_OK else {
        // The same arguments must fail in tp_pool too, and write nothing.
        var fake = output
        fake.struct_size = UInt32(MemoryLayout<tp_tensor>.size)
        fake.data = outputBuffer
        check(tpPool(&desc, &input, &fake), "tp_pool")
        return 0
    }
    var outputBytes = 0
    check(tpTensorNBytes(&output, &outputBytes), "tp_tensor_nbytes(output)")
    // Where the input lies, as the caller knows it: pool only views inside the buffer, and
    // views the library must refuse because no address could hold them.
    let rank = Int(input.rank)
    let inputReach = reach(shape: getArray(input.shape, rank), strides: getArray(input.strides, rank))
    let inside: Bool
    if let (low, high) = inputReach, itemSize > 0 {
        // start is in [0, 2^16), so start + low cannot overflow; start + high can.
        let start = Int64(input.data! - inputBuffer) / itemSize
        inside = start + low >= 0 && high < Int64(bufferBytes) / itemSize - start
    } else {
        inside = inputReach == nil
    }
    guard inside, outputBytes <= bufferBytes else { return 0 }
    // Sometimes a wrong output, which must be refused before anything is written.
    var mutation = r.byte() % 16
    // Overlapping outputs only where the output would still lie in the input buffer.
    if mutation == 3 && (input.data! - inputBuffer) + outputBytes > bufferBytes { mutation = 15 }
    switch mutation {
    case 0: output.dtype = Int32(truncatingIfNeeded: r.signedSmall()) &+ 4
    case 1: setArray(&output.shape, [r.value()])
    case 2: setArray(&output.strides, [r.signedSmall(), r.signedSmall()])
    case 3: output.data = input.data  // overlapping the input
    default: break
    }
    if mutation != 3 { output.data = outputBuffer }
    _ = tpSetNumThreads(1)
    let status = tpPool(&desc, &input, &output)
    check(status, "tp_pool")
    if mutation == 3, status == TP_OK, outputBytes > 0, let (low, high) = inputReach, high >= low, nbytes > 0 {
        preconditionFailure("an output overlapping the input was accepted")
    }
    guard status == TP_OK, mutation > 3, outputBytes > 0 else { return 0 }
    // Bit-identical for every thread count.
    output.data = secondOutput
    _ = tpSetNumThreads(2)
    check(tpPool(&desc, &input, &output), "tp_pool (2 threads)")
    precondition(memcmp(outputBuffer, secondOutput, outputBytes) == 0, "results differ between 1 and 2 threads")
    // The same structs again (tp_pool keeps what it checked for them: the call above took
    // that path) with the output over the input: refused there too.
    if (input.data! - inputBuffer) + outputBytes <= bufferBytes, nbytes > 0 {
        output.data = input.data
        let overlapping = tpPool(&desc, &input, &output)
        check(overlapping, "tp_pool (same structs, output over the input)")
        precondition(overlapping != TP_OK, "an output overlapping the input was accepted for structs checked before")
        output.data = secondOutput
    }

    // The backward pass of the same layer: the output as the cotangent (sometimes a wrong
    // one), a gradient of the input's shape, options of any size and rule; refused for
    // integers; bit-identical for 1 and 2 threads.
    // Small gradients only: each element gathers from every window holding it, which in a
    // sanitised debug build would make large ones the whole run.
    guard nbytes <= bufferBytes / 8 else { return 0 }
    var cotangent = output
    cotangent.data = outputBuffer
    if r.byte() % 8 == 0 { setArray(&cotangent.shape, [r.value()]) }
    if r.byte() % 8 == 0 { setArray(&cotangent.strides, [r.signedSmall(), r.signedSmall()]) }
    // As for the input: the cotangent view must lie in its buffer (the library cannot know a
    // caller's allocation), or be one the library must refuse.
    let cotangentRank = Int(cotangent.rank)
    if let (low, high) = reach(shape: getArray(cotangent.shape, cotangentRank), strides: getArray(cotangent.strides, cotangentRank)),
       itemSize > 0, low < 0 || high >= Int64(bufferBytes) / itemSize {
        return 0
    }
    var gradient = tp_tensor()
    var shape = getArray(input.shape, rank)
    check(shape.withUnsafeMutableBufferPointer { tpTensorInit(&gradient, gradients, input.dtype, input.rank, $0.baseAddress, nil) },
          "tp_tensor_init(grad_input)")
    // Valid options mostly, so the kernels run; any value sometimes.
    var options = tp_backward_options()
    let wrongOptions = r.byte() % 8 == 0
    options.struct_size = wrongOptions ? r.structSize(MemoryLayout<tp_backward_options>.size)
        : UInt32(MemoryLayout<tp_backward_options>.size)
    options.flags = wrongOptions ? r.flags() : 0
    options.max_ties = wrongOptions ? Int32(truncatingIfNeeded: r.signedSmall()) : Int32(r.byte() % 2)
    options.reserved = wrongOptions && r.byte() % 2 == 0 ? 1 : 0
    let withOptions = r.byte() % 4 != 0
    func runBackward() -> tp_status {
        withOptions ? tpPoolBackward(&desc, &input, &cotangent, &gradient, &options)
            : tpPoolBackward(&desc, &input, &cotangent, &gradient, nil)
    }
    _ = tpSetNumThreads(1)
    let backward = runBackward()
    check(backward, "tp_pool_backward")
    let isFloat = [TP_DTYPE_FLOAT32, TP_DTYPE_FLOAT64, TP_DTYPE_FLOAT16, TP_DTYPE_BFLOAT16].contains { Int32($0.rawValue) == input.dtype }
    precondition(isFloat || backward != TP_OK, "the gradient of an integer input was computed")
    guard backward == TP_OK, nbytes > 0 else { return 0 }
    gradient.data = gradients + bufferBytes
    _ = tpSetNumThreads(2)
    check(runBackward(), "tp_pool_backward (2 threads)")
    precondition(memcmp(gradients, gradients + bufferBytes, nbytes) == 0, "gradients differ between 1 and 2 threads")
    // The same structs again (tp_pool_backward keeps what it checked for them: the call above
    // took that path) with the gradient over the input, then over the cotangent: refused.
    if (input.data! - inputBuffer) + nbytes <= bufferBytes {
        gradient.data = input.data
        let overInput = runBackward()
        check(overInput, "tp_pool_backward (same structs, gradient over the input)")
        precondition(overInput != TP_OK, "a gradient overlapping the input was accepted for structs checked before")
    }
    if outputBytes > 0 && nbytes <= bufferBytes {
        gradient.data = outputBuffer
        let overCotangent = runBackward()
        check(overCotangent, "tp_pool_backward (same structs, gradient over the cotangent)")
        precondition(overCotangent != TP_OK, "a gradient overlapping the cotangent was accepted for structs checked before")
    }
    return 0
}
