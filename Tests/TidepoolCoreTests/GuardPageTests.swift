import Testing
import TidepoolCore
import TidepoolKernels

#if canImport(Glibc)
import Glibc
#endif

/// `byteCount` bytes that end where a page the process may not touch begins (`atEnd`), or
/// begin where one ends: a load or store one byte past them faults.
final class GuardedBytes {
    let data: UnsafeMutableRawPointer
    private let base: UnsafeMutableRawPointer, length: Int

    init(byteCount: Int, atEnd: Bool) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE))), usable = Swift.max(1, (byteCount + page - 1) / page) * page
        length = usable + page
        let mapped = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        precondition(mapped != MAP_FAILED, "mmap of \(length) bytes failed")
        base = mapped!
        let guardPage = atEnd ? base + usable : base
        precondition(mprotect(guardPage, page, PROT_NONE) == 0, "mprotect failed")
        data = atEnd ? base + usable - byteCount : base + page
    }

    deinit { munmap(base, length) }
}

/// The kernels' vector loads and stores (8 lanes from a column's first channel, whole vectors
/// over a row, overlapping last vectors) stay inside the caller's tensors: inputs and outputs
/// placed against an inaccessible page, after their last byte and before their first, pool to
/// the same bits as in ordinary memory, for every dtype, 1-d and 2-d windows shorter than,
/// equal to and longer than the stride, 1 to 33 channels, on the vector and baseline kernels
/// and on tiny tiles. Views too: every other column (the last column the storage's last), and
/// the last channels of wider columns. A byte read or written past either end ends the test
/// process with SIGSEGV.
struct GuardPageTests {
    static let engines = [PoolEngine(threads: 1), PoolEngine(threads: 2, tileBudgetBytes: 200, serialWorkBelow: 0)]
        + CPULevel.allCases.filter { $0 != KernelSelection.processLevel && KernelSelection.supports($0) }
            .map { PoolEngine(threads: 1, cpuLevel: $0) }

    /// Pools `view` of `storage` from guarded copies against the run from `storage` itself.
    func checkGuarded(_ desc: PoolDescriptor, storage: Buffer, offset: Int, shape: [Int], strides: [Int]) throws {
        let dtype = storage.dtype, bytes = storage.count * dtype.size
        let outShape = try desc.outputShape(inputShape: shape), outDType = dtype.result(of: desc.kind)
        let outBytes = outShape.reduce(1, *) * outDType.size
        for engine in Self.engines {
            let expected = try runEngine(desc, storage: storage, offset: offset, shape: shape, strides: strides, engine: engine)
            for atEnd in [true, false] {
                let input = GuardedBytes(byteCount: bytes, atEnd: atEnd), output = GuardedBytes(byteCount: outBytes, atEnd: atEnd)
                input.data.copyMemory(from: storage.raw, byteCount: bytes)
                let view = TensorView(data: UnsafeRawPointer(input.data + offset * dtype.size), dtype: dtype, shape: shape, strides: strides)
                try engine.pool(desc, input: view, output: OutputView(data: output.data, dtype: outDType, shape: outShape))
                #expect(memcmp(output.data, expected.output.raw, outBytes) == 0,
                        "\(desc) \(dtype) \(shape) strides \(strides) guard \(atEnd ? "after" : "before")")
            }
        }
    }

    @Test(arguments: DType.allCases)
    func loadsAndStoresStayInTheTensors(dtype: DType) throws {
        var checked = 0
        for kind in PoolKind.allCases {
            for (index, channels) in [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 21, 33].enumerated() {
                for (kernel, stride) in [(2, 2), (3, 1), (3, 3), (5, 3), (6, 4), (7, 4), (9, 5), (2, 5), (11, 8), (17, 16)] {
                    let padding = (index + kernel) % 2 == 0 ? kernel / 2 : 0, width = 4 * stride + kernel + index % 3
                    for dims in [1, 2] {
                        let desc = dims == 1
                            ? PoolDescriptor(kind: kind, kernelSize: [kernel], stride: [stride], padding: [padding])
                            : PoolDescriptor(kind: kind, kernelSize: [2, kernel], stride: [1, stride], padding: [0, padding])
                        let shape = dims == 1 ? [2, width, channels] : [2, 3, width, channels]
                        let seed = UInt64(channels * 1000 + kernel * 10 + dims)
                        let contiguous = TensorView.contiguousStrides(shape)
                        try checkGuarded(desc, storage: randomInput(dtype, shape: shape, seed: seed), offset: 0,
                                         shape: shape, strides: contiguous)
                        // Every other column of 2 * width - 1: the view's last column is the
                        // storage's last.
                        var wide = shape
                        wide[dims] = 2 * width - 1
                        var everyOther = TensorView.contiguousStrides(wide)
                        everyOther[dims] *= 2
                        try checkGuarded(desc, storage: randomInput(dtype, shape: wide, seed: seed + 1), offset: 0,
                                         shape: shape, strides: everyOther)
                        // The last `channels` of `channels + 3`: the view ends with the storage.
                        var wider = shape
                        wider[dims + 1] = channels + 3
                        try checkGuarded(desc, storage: randomInput(dtype, shape: wider, seed: seed + 2), offset: 3,
                                         shape: shape, strides: TensorView.contiguousStrides(wider))
                        checked += 1
                    }
                }
            }
        }
        // Every configuration reached its checks (none skipped by a loop's edit).
        #expect(checked == 2 * 12 * 10 * 2)
    }
}
