import CTidepool
import Testing
import TidepoolCore

/// Runs `body`, expecting a PoolError with `status` whose message contains every fragment.
func expectPoolError(_ status: tp_status, _ fragments: [String], sourceLocation: SourceLocation = #_sourceLocation,
                     _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected \(status) but the call succeeded", sourceLocation: sourceLocation)
    } catch let error as PoolError {
        #expect(error.status == status, "message: \(error.message)", sourceLocation: sourceLocation)
        for fragment in fragments {
            #expect(error.message.contains(fragment), "'\(error.message)' lacks '\(fragment)'", sourceLocation: sourceLocation)
        }
    } catch {
        Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
    }
}

@Suite struct OutputShapeTests {
    @Test func mlxDocumentedExample() throws {
        let desc = PoolDescriptor(kind: .average, kernelSize: [2, 2, 2])
        #expect(try desc.outputShape(inputShape: [8, 16, 32, 32, 4]) == [8, 8, 16, 16, 4])
    }

    @Test func floorDivisionAsPython() throws {
        // (2 - 5) // 5 + 1 == 0: an empty output, not an error.
        #expect(try PoolDescriptor(kind: .average, kernelSize: [5]).outputShape(inputShape: [1, 2, 1]) == [1, 0, 1])
        // (7 + 2 - 3) // 2 + 1 == 4
        #expect(try PoolDescriptor(kind: .max, kernelSize: [3], stride: [2], padding: [1]).outputShape(inputShape: [2, 7, 3]) == [2, 4, 3])
        // Padding wider than the kernel: (2 + 10 - 3) // 1 + 1 == 10
        #expect(try PoolDescriptor(kind: .average, kernelSize: [3], stride: [1], padding: [5]).outputShape(inputShape: [1, 2, 1]) == [1, 10, 1])
        // Zero batch and channels are kept.
        #expect(try PoolDescriptor(kind: .max, kernelSize: [2, 2]).outputShape(inputShape: [0, 4, 4, 0]) == [0, 2, 2, 0])
    }

    @Test func negativeLengthIsAnError() {
        // (2 - 5) // 1 + 1 == -2
        expectPoolError(TP_ERR_SHAPE, ["length", "negative", "-2"]) {
            _ = try PoolDescriptor(kind: .average, kernelSize: [5], stride: [1]).outputShape(inputShape: [1, 2, 1])
        }
    }

    @Test func defaultsFollowMLX() {
        let desc = PoolDescriptor(kind: .max, kernelSize: [3, 2])
        #expect(desc.stride == [3, 2])
        #expect(desc.padding == [0, 0])
        #expect(desc.description == "MaxPool2d(kernel_size=(3, 2), stride=(3, 2), padding=(0, 0))")
        #expect(PoolDescriptor(kind: .max, kernelSize: [3], padding: [2]).description
            == "MaxPool1d(kernel_size=(3,), stride=(3,), padding=(2,))")
    }
}

@Suite struct ValidationTests {
    let engine = PoolEngine(threads: 1)

    @Test func descriptorArguments() {
        expectPoolError(TP_ERR_INVALID_ARGUMENT, ["kernel_size", "positive", "(0, 2, 2)"]) {
            try PoolDescriptor(kind: .average, kernelSize: [0, 2, 2]).validate()
        }
        expectPoolError(TP_ERR_INVALID_ARGUMENT, ["stride", "positive", "(1, -1)"]) {
            try PoolDescriptor(kind: .average, kernelSize: [2, 2], stride: [1, -1]).validate()
        }
        expectPoolError(TP_ERR_INVALID_ARGUMENT, ["padding", "non-negative", "(-1, 0, 0)"]) {
            try PoolDescriptor(kind: .max, kernelSize: [2, 2, 2], padding: [-1, 0, 0]).validate()
        }
        expectPoolError(TP_ERR_INVALID_ARGUMENT, ["stride", "one entry per spatial axis", "(1, 1)"]) {
            try PoolDescriptor(kind: .max, kernelSize: [2, 2, 2], stride: [1, 1]).validate()
        }
        expectPoolError(TP_ERR_INVALID_ARGUMENT, ["padding", "(0,)"]) {
            try PoolDescriptor(kind: .max, kernelSize: [2, 2], padding: [0]).validate()
        }
        expectPoolError(TP_ERR_INVALID_ARGUMENT, ["1, 2 or 3 spatial axes", "4"]) {
            try PoolDescriptor(kind: .max, kernelSize: [2, 2, 2, 2]).validate()
        }
        expectPoolError(TP_ERR_INVALID_ARGUMENT, ["1, 2 or 3 spatial axes", "0"]) {
            try PoolDescriptor(kind: .max, kernelSize: []).validate()
        }
        expectPoolError(TP_ERR_OVERFLOW, ["window size", "overflows"]) {
            try PoolDescriptor(kind: .average, kernelSize: [1 << 40, 1 << 40]).validate()
        }
    }

    @Test func rankMismatch() {
        expectPoolError(TP_ERR_SHAPE, ["rank 5", "(N, D, H, W, C)", "rank 4", "(2, 4, 4, 4)"]) {
            _ = try PoolDescriptor(kind: .average, kernelSize: [2, 2, 2]).outputShape(inputShape: [2, 4, 4, 4])
        }
        expectPoolError(TP_ERR_SHAPE, ["rank 3", "(N, L, C)"]) {
            _ = try PoolDescriptor(kind: .average, kernelSize: [2]).outputShape(inputShape: [4, 4])
        }
    }

    @Test func negativeShape() {
        expectPoolError(TP_ERR_INVALID_ARGUMENT, ["shape[1]", "-3"]) {
            _ = try PoolDescriptor(kind: .average, kernelSize: [2]).outputShape(inputShape: [1, -3, 1])
        }
    }

    @Test func paddingOverflow() {
        expectPoolError(TP_ERR_OVERFLOW, ["padding", "overflows"]) {
            _ = try PoolDescriptor(kind: .average, kernelSize: [1], padding: [Int.max / 2 + 1]).outputShape(inputShape: [1, 1, 1])
        }
    }

    @Test func shapeProductOverflow() {
        let desc = PoolDescriptor(kind: .max, kernelSize: [1, 1])
        var byte: UInt8 = 0
        expectPoolError(TP_ERR_OVERFLOW, ["input element count", "overflows"]) {
            let shape = [1 << 20, 1 << 20, 1 << 20, 1 << 10]
            let outShape = try desc.outputShape(inputShape: shape)
            try engine.pool(desc, input: TensorView(data: &byte, dtype: .uint8, shape: shape, strides: [0, 0, 0, 0]),
                            output: OutputView(data: &byte, dtype: .uint8, shape: outShape))
        }
        expectPoolError(TP_ERR_OVERFLOW, ["input byte size", "float64"]) {
            let shape = [1 << 30, 1 << 30, 4, 1]
            try engine.pool(desc, input: TensorView(data: &byte, dtype: .float64, shape: shape, strides: [0, 0, 0, 0]),
                            output: OutputView(data: &byte, dtype: .float64, shape: shape))
        }
        expectPoolError(TP_ERR_OVERFLOW, ["input stride", "overflows"]) {
            let shape = [3, 2, 2, 1]
            try engine.pool(desc, input: TensorView(data: &byte, dtype: .uint8, shape: shape, strides: [Int.max / 2 + 1, 1, 1, 1]),
                            output: OutputView(data: &byte, dtype: .uint8, shape: shape))
        }
    }

    @Test func outputMismatch() throws {
        let desc = PoolDescriptor(kind: .average, kernelSize: [2, 2])
        let input = Buffer(.int8, count: 16), output = Buffer(.float32, count: 4), wrongType = Buffer(.int8, count: 4)
        let view = TensorView(data: input.raw, dtype: .int8, shape: [1, 4, 4, 1])
        expectPoolError(TP_ERR_DTYPE, ["output dtype", "float32", "int8"]) {
            try engine.pool(desc, input: view, output: OutputView(data: wrongType.raw, dtype: .int8, shape: [1, 2, 2, 1]))
        }
        expectPoolError(TP_ERR_SHAPE, ["output shape", "(1, 2, 2, 1)", "(1, 2, 1, 2)"]) {
            try engine.pool(desc, input: view, output: OutputView(data: output.raw, dtype: .float32, shape: [1, 2, 1, 2]))
        }
        expectPoolError(TP_ERR_LAYOUT, ["overlaps"]) {
            let shared = Buffer(.float32, count: 16)
            try engine.pool(desc, input: TensorView(data: shared.raw, dtype: .float32, shape: [1, 4, 4, 1]),
                            output: OutputView(data: shared.raw + 8, dtype: .float32, shape: [1, 2, 2, 1]))
        }
        expectPoolError(TP_ERR_LAYOUT, ["contiguous", "strides[2] is 2 but must be 1"]) {
            try engine.pool(desc, input: view, output: OutputView(data: output.raw, dtype: .float32, shape: [1, 2, 2, 1],
                                                                  strides: [4, 2, 2, 1]))
        }
        // Axes of length 1 may have any stride, as in numpy.
        try engine.pool(desc, input: view, output: OutputView(data: output.raw, dtype: .float32, shape: [1, 2, 2, 1],
                                                               strides: [99, 2, 1, 99]))
        expectPoolError(TP_ERR_SHAPE, ["4 shape entries", "3 strides"]) {
            try engine.pool(desc, input: TensorView(data: input.raw, dtype: .int8, shape: [1, 4, 4, 1], strides: [16, 4, 1]),
                            output: OutputView(data: output.raw, dtype: .float32, shape: [1, 2, 2, 1]))
        }
    }

    @Test func nullData() throws {
        let desc = PoolDescriptor(kind: .max, kernelSize: [2])
        let output = Buffer(.float32, count: 2)
        expectPoolError(TP_ERR_NULL_POINTER, ["input data is null", "(1, 4, 1)"]) {
            try engine.pool(desc, input: TensorView(data: nil, dtype: .float32, shape: [1, 4, 1]),
                            output: OutputView(data: output.raw, dtype: .float32, shape: [1, 2, 1]))
        }
        let input = Buffer(.float32, count: 4)
        expectPoolError(TP_ERR_NULL_POINTER, ["output data is null"]) {
            try engine.pool(desc, input: TensorView(data: input.raw, dtype: .float32, shape: [1, 4, 1]),
                            output: OutputView(data: nil, dtype: .float32, shape: [1, 2, 1]))
        }
        // Empty tensors may have null data.
        try engine.pool(desc, input: TensorView(data: nil, dtype: .float32, shape: [0, 4, 1]),
                        output: OutputView(data: nil, dtype: .float32, shape: [0, 2, 1]))
    }

    @Test func threadCount() throws {
        let engine = PoolEngine()
        #expect(engine.threadCount == PoolEngine.onlineCPUs)
        try engine.setThreadCount(3)
        #expect(engine.threadCount == 3)
        try engine.setThreadCount(0)
        #expect(engine.threadCount == PoolEngine.onlineCPUs)
        expectPoolError(TP_ERR_INVALID_ARGUMENT, ["thread count", "-1"]) { try engine.setThreadCount(-1) }
        expectPoolError(TP_ERR_INVALID_ARGUMENT, ["thread count", "5000"]) { try engine.setThreadCount(5000) }
    }

    /// A call's own thread count, for the forward and the gradient alike: 1 to maxThreads;
    /// refused before anything is written.
    @Test func callThreadCount() throws {
        let desc = PoolDescriptor(kind: .max, kernelSize: [2])
        let input = Buffer(.float32, count: 4), output = Buffer(.float32, count: 2), grad = Buffer(.float32, count: 4)
        let x = TensorView(data: input.raw, dtype: .float32, shape: [1, 4, 1])
        let y = OutputView(data: output.raw, dtype: .float32, shape: [1, 2, 1])
        let dy = TensorView(data: output.raw, dtype: .float32, shape: [1, 2, 1])
        let dx = OutputView(data: grad.raw, dtype: .float32, shape: [1, 4, 1])
        for bad in [0, -3, PoolEngine.maxThreads + 1] {
            output.raw.storeBytes(of: Float(7), as: Float.self)
            expectPoolError(TP_ERR_INVALID_ARGUMENT, ["thread count", "between 1 and \(PoolEngine.maxThreads)", "\(bad)"]) {
                try engine.pool(desc, input: x, output: y, threads: bad)
            }
            #expect(output.raw.load(as: Float.self) == 7)
            grad.raw.storeBytes(of: Float(7), as: Float.self)
            expectPoolError(TP_ERR_INVALID_ARGUMENT, ["thread count", "between 1 and \(PoolEngine.maxThreads)", "\(bad)"]) {
                try engine.backward(desc, input: x, gradOutput: dy, gradInput: dx, threads: bad)
            }
            #expect(grad.raw.load(as: Float.self) == 7)
        }
        for good in [1, PoolEngine.maxThreads] {
            try engine.pool(desc, input: x, output: y, threads: good)
            try engine.backward(desc, input: x, gradOutput: dy, gradInput: dx, threads: good)
        }
    }

    @Test func dtypeCodesMatchHeader() {
        #expect(DType.allCases.count == 12)
        for dtype in DType.allCases { #expect(DType(code: dtype.code) == dtype) }
        #expect(DType(code: 0) == nil)
        #expect(DType(code: 13) == nil)
        #expect(DType.float32.code == Int32(TP_DTYPE_FLOAT32.rawValue))
        #expect(PoolKind(code: Int32(TP_POOL_MAX.rawValue)) == .max)
        #expect(PoolKind(code: 0) == nil)
    }
}

@Suite struct BFloat16Tests {
    @Test func roundsToNearestEven() {
        // 1 + 2^-8 lies halfway between bfloat16 neighbours 1 and 1 + 2^-7: ties go to even (1).
        #expect(BFloat16(1 + 0x1p-8).float == 1)
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
        #expect(BFloat16(1 + 3 * 0x1p-8).float == 1 + 0x1p-6)
        #expect(BFloat16(1 + 0x1p-8 + 0x1p-20).float == 1 + 0x1p-7)
        #expect(BFloat16(-2.5).float == -2.5)
        #expect(BFloat16(Float.infinity).float == .infinity)
        #expect(BFloat16(Float.greatestFiniteMagnitude).float == .infinity)
        #expect(BFloat16(Float.nan).float.isNaN)
        #expect(BFloat16(-Float.nan).float.isNaN)
        // NaN payloads that rounding would carry into infinity or into the sign stay NaN: the
        // upper half, quieted.
        for bits: UInt32 in [0x7F80_0001, 0x7FFF_FFFF, 0xFF80_8000, 0xFFFF_FFFF, 0x7FBF_FFFF, 0x7F80_8000] {
            #expect(BFloat16(Float(bitPattern: bits)).bitPattern == UInt16(bits >> 16) | 0x40, "\(String(bits, radix: 16))")
        }
    }

    /// Against the two bfloat16 neighbours of random floats, nearer one (ties to even) chosen
    /// in float64.
    @Test func randomFloatsRoundToTheNearerNeighbour() {
        var rng = SplitMix64(seed: 16)
        for _ in 0..<200_000 {
            let bits = UInt32(truncatingIfNeeded: rng.next())
            let value = Float(bitPattern: bits)
            guard value.isFinite else { continue }
            let below = Float(bitPattern: bits & 0xFFFF_0000), above = Float(bitPattern: (bits & 0xFFFF_0000) &+ 0x1_0000)
            // Above the largest finite bfloat16 lies infinity, at 2^128 for the rounding.
            let aboveValue = above.isInfinite ? (value < 0 ? -0x1p128 : 0x1p128) : Double(above)
            let toBelow = abs(Double(value) - Double(below)), toAbove = abs(Double(value) - aboveValue)
            let expected = toBelow < toAbove || (toBelow == toAbove && (bits >> 16) & 1 == 0) ? below : above
            #expect(BFloat16(value).float.bitPattern == expected.bitPattern, "\(String(bits, radix: 16))")
        }
    }

    @Test func everyBFloat16RoundTrips() {
        for bits in 0...UInt16.max {
            let value = BFloat16(bitPattern: bits)
            if value.float.isNaN { continue }
            #expect(BFloat16(value.float).bitPattern == bits)
        }
    }
}
