import CTidepool
import Testing
import TidepoolCore

/// Integers from callers reach the engine unbounded (C structs, the wire, Python): every one
/// of them, and every size derived from them, must come back as a status, never a trap. A
/// trap here ends the test process, which is how these tests fail.
@Suite struct OverflowTests {
    let engine = PoolEngine(threads: 1)

    /// Issue 13's first reproducer: kernel 2^62 + 1, stride 2^62 used to overflow the output
    /// length's floor division.
    @Test func outputLengthWithHugeKernelAndStride() throws {
        let desc = PoolDescriptor(kind: .average, kernelSize: [(1 << 62) + 1], stride: [1 << 62])
        // (1 - 2^62 - 1) // 2^62 + 1 = 0: empty, not an error.
        #expect(try desc.outputShape(inputShape: [1, 1, 1]) == [1, 0, 1])
        // (0 - 2^62 - 1) // 2^62 + 1 = -1: negative, named.
        expectPoolError(TP_ERR_SHAPE, ["length", "negative", "= -1"]) { _ = try desc.outputShape(inputShape: [1, 0, 1]) }
        let input = [Float](repeating: 0, count: 1)
        try input.withUnsafeBytes { raw in
            try engine.pool(desc, input: TensorView(data: raw.baseAddress, dtype: .float32, shape: [1, 1, 1]),
                            output: OutputView(data: nil, dtype: .float32, shape: [1, 0, 1]))
        }
        // The most negative span of all: kernel Int.max over nothing. With stride Int.max it is
        // one stride short, an empty output; with stride 1, negative.
        #expect(try PoolDescriptor(kind: .max, kernelSize: [Int.max], stride: [Int.max]).outputShape(inputShape: [1, 0, 1]) == [1, 0, 1])
        expectPoolError(TP_ERR_SHAPE, ["negative", "= -9223372036854775806"]) {
            _ = try PoolDescriptor(kind: .max, kernelSize: [Int.max], stride: [1]).outputShape(inputShape: [1, 0, 1])
        }
    }

    /// Issue 13's second reproducer: a stride of 2^62 with 3 channels overflowed stride x
    /// channels in the tile plan. A stride past the padded length gives the same single
    /// window as the padded length itself, bit for bit.
    @Test func strideFarPastTheInput() throws {
        for kind in [PoolKind.average, .max] {
            for dtype in [DType.float32, .int8, .bfloat16] {
                let input = randomInput(dtype, shape: [2, 5, 3], seed: 13)
                let huge = PoolDescriptor(kind: kind, kernelSize: [2], stride: [1 << 62], padding: [1])
                let padded = PoolDescriptor(kind: kind, kernelSize: [2], stride: [7], padding: [1])
                let a = try runEngine(huge, storage: input, offset: 0, shape: [2, 5, 3], strides: [15, 3, 1], engine: engine)
                let b = try runEngine(padded, storage: input, offset: 0, shape: [2, 5, 3], strides: [15, 3, 1], engine: engine)
                #expect(a.shape == [2, 1, 3] && b.shape == a.shape)
                #expect((0..<a.output.count).allSatisfy { a.output[$0] == b.output[$0] || (a.output[$0].isNaN && b.output[$0].isNaN) })
            }
        }
    }

    /// Found by `extremeValuesNeverTrap`: an input with no elements is never read, so its
    /// strides are not checked; they used to reach the row address arithmetic anyway and trap
    /// (W of length 0, padding making the output non-empty, strides near 2^62).
    @Test func anEmptyInputsStridesAreNeverUsed() throws {
        let desc = PoolDescriptor(kind: .max, kernelSize: [1, 2], stride: [1, 1], padding: [0, 1])
        var output = [Float](repeating: 7, count: 3 * 1 * 2)
        try output.withUnsafeMutableBytes { out in
            try engine.pool(desc, input: TensorView(data: nil, dtype: .float32, shape: [1, 3, 0, 2],
                                                    strides: [1 << 62, 1 << 62, 1 << 62, 1]),
                            output: OutputView(data: out.baseAddress, dtype: .float32, shape: [1, 3, 1, 2]))
        }
        #expect(output.allSatisfy { $0 == -.infinity })
    }

    /// Windows so wide that one element would need gigabytes of scratch: refused, naming the
    /// kernel and padding, before anything is allocated.
    @Test func scratchIsBoundedByTheTensors() {
        let desc = PoolDescriptor(kind: .max, kernelSize: [1 << 30], stride: [1 << 31], padding: [1 << 30])
        let input: [Float] = [1]
        var output: [Float] = [0]
        expectPoolError(TP_ERR_NO_MEMORY, ["kernel_size (1, 1, 1073741824)", "scratch"]) {
            try input.withUnsafeBytes { raw in
                try output.withUnsafeMutableBytes { out in
                    try engine.pool(desc, input: TensorView(data: raw.baseAddress, dtype: .float32, shape: [1, 1, 1]),
                                    output: OutputView(data: out.baseAddress, dtype: .float32, shape: [1, 1, 1]))
                }
            }
        }
        #expect(engine.largestScratchBytes < 64 << 20)
    }

    /// Padding so wide that the padded volume passes 2^55 elements: refused by name before
    /// any size is derived from it.
    @Test func paddedVolumeIsBounded() {
        let desc = PoolDescriptor(kind: .average, kernelSize: [1, 1, 1], stride: [1 << 40, 1 << 40, 1 << 40],
                                  padding: [1 << 19, 1 << 19, 1 << 19])
        let input = [Float](repeating: 1, count: 8)
        expectPoolError(TP_ERR_OVERFLOW, ["padded input", "2^55"]) {
            try input.withUnsafeBytes { raw in
                var output = [Float](repeating: 0, count: 8)
                try output.withUnsafeMutableBytes { out in
                    try engine.pool(desc, input: TensorView(data: raw.baseAddress, dtype: .float32, shape: [1, 2, 2, 2, 1]),
                                    output: OutputView(data: out.baseAddress, dtype: .float32, shape: [1, 1, 1, 1, 1]))
                }
            }
        }
    }

    /// Random descriptors and shapes drawn from the values where arithmetic breaks (0, 1,
    /// powers of two near 2^31, 2^40, 2^62, 2^63 - 1, negatives, Int.min), over a small buffer:
    /// every call returns or throws a status of the header, and a success is checked against
    /// the reference. (The fuzz target tidepool-fuzz-cabi does this coverage-guided, through
    /// the C ABI; this is its deterministic sibling in every `swift test`.)
    @Test func extremeValuesNeverTrap() throws {
        let edges = [0, 1, 2, 3, 7, 1 << 31, (1 << 31) - 1, 1 << 32, 1 << 40, (1 << 40) + 1, 1 << 55, 1 << 62, (1 << 62) + 1,
                     Int.max - 1, Int.max, -1, -2, Int.min, Int.min + 1]
        let small = [0, 1, 2, 3, 4, 5]
        var rng = SplitMix64(seed: 0x13)
        let storage = Buffer(.float64, count: 4096)
        for i in 0..<storage.count { storage[i] = Double(i % 17) - 8 }
        let known: Set<UInt32> = [TP_ERR_INVALID_ARGUMENT, TP_ERR_SHAPE, TP_ERR_OVERFLOW, TP_ERR_LAYOUT, TP_ERR_NO_MEMORY,
                                  TP_ERR_NULL_POINTER].reduce(into: []) { $0.insert($1.rawValue) }
        var succeeded = 0
        for trial in 0..<20_000 {
            func pick() -> Int { Int(rng.next() % 3) == 0 ? edges.randomElement(using: &rng)! : small.randomElement(using: &rng)! }
            let dims = Int(rng.next() % 3) + 1
            let desc = PoolDescriptor(kind: rng.next() % 2 == 0 ? .average : .max, kernelSize: (0..<dims).map { _ in pick() },
                                      stride: (0..<dims).map { _ in pick() }, padding: (0..<dims).map { _ in pick() })
            let shape = (0..<(dims + 2)).map { _ in rng.next() % 4 == 0 ? pick() : small.randomElement(using: &rng)! }
            let strides = shape.map { _ in rng.next() % 4 == 0 ? pick() : Int(rng.next() % 9) - 4 }
            // The base sits in the middle of the buffer; byteSpan must refuse any view
            // reaching out of the address space, and the views that stay in range are read
            // through strides small enough to stay inside the buffer... unless they are not:
            // only views whose reach fits the buffer are run, the rest only checked.
            let input = TensorView(data: UnsafeRawPointer(storage.raw + 2048 * 8), dtype: .float64, shape: shape, strides: strides)
            let outputShape = (try? desc.outputShape(inputShape: shape)) ?? shape
            let outputCount = outputShape.allSatisfy({ $0 >= 0 && $0 <= 64 }) ? outputShape.reduce(1, *) : 0
            let output = Buffer(.float64, count: Swift.max(outputCount, 1))
            let outputView = OutputView(data: output.raw, dtype: .float64, shape: outputShape)
            do {
                try engine.check(desc, input: input, output: outputView)
                // check() accepted the view, so each stride x extent fits; their sum may not.
                var reach = 0, fits = true
                for (n, step) in zip(shape, strides) where fits {
                    let (term, overflow) = step.magnitude.multipliedReportingOverflow(by: UInt(Swift.max(n - 1, 0)))
                    fits = !overflow && term < 2048 && reach + Int(term) < 2048
                    if fits { reach += Int(term) }
                }
                guard outputCount > 0 || outputShape.contains(0), fits || shape.contains(0), outputShape.allSatisfy({ $0 <= 64 }) else { continue }
                try engine.pool(desc, input: input, output: outputView)
                succeeded += 1
                // The reference walks every window position, padded ones too: small windows only.
                let smallWindows = desc.kernelSize.allSatisfy { $0 <= 16 } && desc.padding.allSatisfy { $0 <= 16 }
                if outputCount > 0, smallWindows, fits,
                   let expected = referencePool(desc, storage: storage, offset: 2048, shape: shape, strides: strides) {
                    #expect(firstMismatch(desc, dtype: .float64, actual: output, expected: expected.values) == nil,
                            "trial \(trial): \(desc) on \(shape) strides \(strides)")
                }
            } catch let error as PoolError {
                #expect(known.contains(error.status.rawValue), "trial \(trial): \(error.status) \(error.message)")
                #expect(!error.message.isEmpty)
            }
        }
        #expect(succeeded > 100, "too few configurations ran to mean anything: \(succeeded)")
    }
}
