import CTidepool
import Testing
import TidepoolCore
import TidepoolProtocol

func decode(_ bytes: [UInt8], payloadFrames: Int = 1, maxJobBytes: Int = 1 << 30) throws -> PoolRequest {
    try bytes.withUnsafeBytes { try PoolRequest.decode($0, payloadFrames: payloadFrames, maxJobBytes: maxJobBytes) }
}

func expectViolation(_ status: tp_status, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation,
                     _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected \(status)", sourceLocation: sourceLocation)
    } catch let violation as ProtocolViolation {
        #expect(violation.status == status, "\(violation.message)", sourceLocation: sourceLocation)
        #expect(violation.message.contains(fragment), "'\(violation.message)' lacks '\(fragment)'", sourceLocation: sourceLocation)
    } catch {
        Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
    }
}

/// Overwrites the little-endian field at `offset`.
func patched<T: FixedWidthInteger>(_ bytes: [UInt8], at offset: Int, _ value: T) -> [UInt8] {
    var copy = bytes
    withUnsafeBytes(of: value.littleEndian) { for (i, b) in $0.enumerated() { copy[offset + i] = b } }
    return copy
}

@Suite struct WireTests {
    let request = PoolRequest(
        id: 77, descriptor: PoolDescriptor(kind: .average, kernelSize: [3, 2], stride: [1, 2], padding: [1, 0]),
        dtype: .int16, inputShape: [2, 5, 6, 3],
        input: TensorReference(placement: .inline, bytes: 2 * 5 * 6 * 3 * 2),
        output: TensorReference(placement: .region(id: 4, offset: 64), bytes: 2 * 5 * 3 * 3 * 4))

    @Test func poolRequestRoundTrips() throws {
        let bytes = request.encode()
        #expect(bytes.count == MessageType.pool.requestSize)
        #expect(bytes.count == 232)
        #expect(Array(bytes.prefix(4)) == Array("TPOL".utf8))
        let decoded = try decode(bytes)
        #expect(decoded == request)
        #expect(decoded.outputShape == [2, 5, 3, 3])
        #expect(decoded.outputDType == .float32)
    }

    @Test func headerChecks() {
        let bytes = request.encode()
        expectViolation(TP_ERR_PROTOCOL, "shorter than the 24-byte header") { _ = try decode(Array(bytes.prefix(10))) }
        expectViolation(TP_ERR_PROTOCOL, "magic is 0x1") { _ = try decode(patched(bytes, at: 0, UInt32(1))) }
        expectViolation(TP_ERR_VERSION, "protocol version is 1") { _ = try decode(patched(bytes, at: 4, UInt16(1))) }
        expectViolation(TP_ERR_FLAGS, "flags is 0x10") { _ = try decode(patched(bytes, at: 20, UInt32(16))) }
        expectViolation(TP_ERR_PROTOCOL, "frame 0 is 232 bytes without a done word but this one is 231") {
            _ = try decode(Array(bytes.dropLast()))
        }
        expectViolation(TP_ERR_PROTOCOL, "frame 0 is 248 bytes with a done word but this one is 232") {
            _ = try decode(patched(bytes, at: 20, UInt32(1)))
        }
    }

    @Test func doneWordRoundTripsAndIsChecked() throws {
        var withWord = request
        withWord.input = TensorReference(placement: .region(id: 3, offset: 0), bytes: request.input.bytes)
        withWord.output = TensorReference(placement: .region(id: 3, offset: 4096), bytes: request.output.bytes)
        withWord.doneWord = DoneWord(region: 3, offset: 8192)
        let bytes = withWord.encode()
        #expect(bytes.count == 248)
        #expect(try decode(bytes, payloadFrames: 0) == withWord)
        expectViolation(TP_ERR_LAYOUT, "done_offset 8194 is not a multiple of 4") {
            _ = try decode(patched(bytes, at: 240, UInt64(8194)), payloadFrames: 0)
        }
        expectViolation(TP_ERR_LAYOUT, "the done word at 4096 overlaps the output in region 3") {
            _ = try decode(patched(bytes, at: 240, UInt64(4096)), payloadFrames: 0)
        }
        expectViolation(TP_ERR_LAYOUT, "overlaps the input in region 3") {
            _ = try decode(patched(bytes, at: 240, UInt64(0)), payloadFrames: 0)
        }
        expectViolation(TP_ERR_OVERFLOW, "done_offset") { _ = try decode(patched(bytes, at: 240, UInt64.max - 3), payloadFrames: 0) }
        // Another region: no overlap to check there.
        #expect(try decode(patched(bytes, at: 232, UInt64(4)), payloadFrames: 0).doneWord == DoneWord(region: 4, offset: 8192))
    }

    @Test func fieldChecks() {
        let bytes = request.encode()
        expectViolation(TP_ERR_INVALID_ARGUMENT, "kind is 3") { _ = try decode(patched(bytes, at: 24, Int32(3))) }
        expectViolation(TP_ERR_DTYPE, "dtype is 0") { _ = try decode(patched(bytes, at: 28, Int32(0))) }
        expectViolation(TP_ERR_INVALID_ARGUMENT, "spatial_dims must be 1, 2 or 3 but is 0") { _ = try decode(patched(bytes, at: 32, Int32(0))) }
        expectViolation(TP_ERR_SHAPE, "rank must be spatial_dims + 2 = 4 but is 3") { _ = try decode(patched(bytes, at: 36, Int32(3))) }
        expectViolation(TP_ERR_SHAPE, "shape[1] is -5") { _ = try decode(patched(bytes, at: 48, Int64(-5))) }
        expectViolation(TP_ERR_INVALID_ARGUMENT, "kernel_size must be positive") { _ = try decode(patched(bytes, at: 104, Int64(0))) }
        expectViolation(TP_ERR_SHAPE, "input_bytes is 1") { _ = try decode(patched(bytes, at: 200, UInt64(1))) }
        expectViolation(TP_ERR_SHAPE, "output_bytes is 1") { _ = try decode(patched(bytes, at: 224, UInt64(1))) }
        expectViolation(TP_ERR_PROTOCOL, "input_location is 9") { _ = try decode(patched(bytes, at: 176, UInt32(9))) }
        expectViolation(TP_ERR_LAYOUT, "output_offset 66 is not a multiple of the 4-byte") { _ = try decode(patched(bytes, at: 216, UInt64(66))) }
        expectViolation(TP_ERR_PROTOCOL, "has 2 frame(s) but this one has 1") { _ = try decode(bytes, payloadFrames: 0) }
        expectViolation(TP_ERR_TOO_LARGE, "--max-job-bytes 100") { _ = try decode(bytes, maxJobBytes: 100) }
    }

    @Test func overlapInOneRegion() {
        var overlapping = request
        overlapping.input = TensorReference(placement: .region(id: 4, offset: 0), bytes: request.input.bytes)
        expectViolation(TP_ERR_LAYOUT, "overlaps input") { _ = try decode(overlapping.encode(), payloadFrames: 0) }
        overlapping.output = TensorReference(placement: .region(id: 4, offset: 512), bytes: request.output.bytes)
        #expect((try? decode(overlapping.encode(), payloadFrames: 0)) != nil)
    }

    /// Issue 13's wire reproducers: offsets near 2^63 used to overflow the overlap checks.
    /// Each is now refused naming the field, whether or not the region exists.
    @Test func offsetsNearTheTopOfTheRange() {
        var sameRegion = request
        sameRegion.input = TensorReference(placement: .region(id: 4, offset: 0), bytes: request.input.bytes)
        sameRegion.output = TensorReference(placement: .region(id: 4, offset: 512), bytes: request.output.bytes)
        let bytes = sameRegion.encode()
        // Output offset 2^63 - 4 in the input's region.
        expectViolation(TP_ERR_OVERFLOW, "output_offset 9223372036854775804 + output_bytes") {
            _ = try decode(patched(bytes, at: 216, UInt64(Int.max - 3)), payloadFrames: 0)
        }
        // Input offset 2^63 - 4 (a multiple of 2), the done word in the same region.
        var withWord = sameRegion
        withWord.doneWord = DoneWord(region: 4, offset: 8192)
        expectViolation(TP_ERR_OVERFLOW, "input_offset 9223372036854775804 + input_bytes") {
            _ = try decode(patched(withWord.encode(), at: 192, UInt64(Int.max - 3)), payloadFrames: 0)
        }
        expectViolation(TP_ERR_OVERFLOW, "done_offset") {
            _ = try decode(patched(withWord.encode(), at: 240, UInt64(Int.max - 3)), payloadFrames: 0)
        }
        // Every offset at the edge of 63 bits, for both tensors and the word: refused or
        // accepted, never a trap; an accepted one has its end inside 63 bits.
        for inputOffset in [UInt64(0), UInt64(Int.max) - 359, UInt64(Int.max), UInt64.max - 7] {
            for outputOffset in [UInt64(512), UInt64(Int.max) - 239, UInt64(Int.max) + 1] {
                for wordOffset in [UInt64(8192), UInt64(Int.max) - 3, UInt64(Int.max) - 7] {
                    var frame = patched(withWord.encode(), at: 192, inputOffset)
                    frame = patched(frame, at: 216, outputOffset)
                    frame = patched(frame, at: 240, wordOffset)
                    if let decoded = try? decode(frame, payloadFrames: 0), case .region(_, let offset) = decoded.input.placement {
                        #expect(offset <= Int.max - decoded.input.bytes)
                    }
                }
            }
        }
    }

    @Test func everyShortFrameIsRefused() {
        // No prefix of a valid request decodes, and none crashes.
        let bytes = request.encode()
        for length in 0..<bytes.count {
            #expect(throws: ProtocolViolation.self) { _ = try decode(Array(bytes.prefix(length))) }
        }
    }

    @Test func randomBytesAreRefused() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            var bytes = (0..<232).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if Bool.random(using: &rng) { bytes = patched(bytes, at: 0, Wire.magic) }
            if Bool.random(using: &rng) { bytes = patched(bytes, at: 4, Wire.version) }
            #expect(throws: ProtocolViolation.self) { _ = try decode(bytes) }
        }
    }

    @Test func errorReplies() throws {
        let frames = Reply.error(ProtocolViolation(TP_ERR_SHAPE, "bad shape", type: .pool, id: 9))
        #expect(frames.count == 2)
        let reply = try frames[0].withUnsafeBytes { f0 in
            try frames[1].withUnsafeBytes { f1 in try DecodedReply.decode(f0, frame1: f1) }
        }
        #expect(reply.type == .pool)
        #expect(reply.id == 9)
        #expect(reply.status == TP_ERR_SHAPE)
        #expect(reply.message == "bad shape")
        let pool = PoolReply.encode(.pool, id: 3, dtype: .float32, shape: [1, 2, 3])
        #expect(pool.count == MessageType.pool.replySize)
        let backward = PoolReply.encode(.backward, id: 4, dtype: .float32, shape: [1, 2, 3])
        let decoded = try backward.withUnsafeBytes { try DecodedReply.decode($0, frame1: nil) }
        #expect(decoded.type == .backward && decoded.id == 4 && decoded.status == TP_OK)
    }
}

/// BACKWARD: POOL's fields plus the tie rule and the cotangent; x and the cotangent inline
/// frames in that order.
@Suite struct BackwardWireTests {
    /// MaxPool2d(3, 2, 1) of (2, 9, 7, 3) float16: the cotangent is (2, 5, 4, 3).
    let request = PoolRequest(
        id: 78, descriptor: PoolDescriptor(kind: .max, kernelSize: [3, 3], stride: [2, 2], padding: [1, 1]),
        dtype: .float16, inputShape: [2, 9, 7, 3],
        input: TensorReference(placement: .region(id: 5, offset: 0), bytes: 2 * 9 * 7 * 3 * 2),
        output: TensorReference(placement: .inline, bytes: 2 * 9 * 7 * 3 * 2),
        backward: BackwardFields(ties: .first, gradOutput: TensorReference(placement: .inline, bytes: 2 * 5 * 4 * 3 * 2)))

    func decodeBackward(_ bytes: [UInt8], payloadFrames: Int = 1, maxJobBytes: Int = 1 << 30) throws -> PoolRequest {
        try bytes.withUnsafeBytes { try PoolRequest.decode($0, type: .backward, payloadFrames: payloadFrames, maxJobBytes: maxJobBytes) }
    }

    @Test func roundTrips() throws {
        let bytes = request.encode()
        #expect(bytes.count == 264 && bytes.count == MessageType.backward.requestSize)
        #expect(bytes[6] == 7)
        let decoded = try decodeBackward(bytes)
        #expect(decoded == request)
        #expect(decoded.type == .backward)
        #expect(decoded.outputShape == [2, 9, 7, 3] && decoded.pooledShape == [2, 5, 4, 3])
        #expect(decoded.outputDType == .float16)
        #expect(decoded.reads.map(\.name) == ["input", "grad_output"])
        var withWord = request
        withWord.doneWord = DoneWord(region: 5, offset: 4096)
        #expect(try decodeBackward(withWord.encode()) == withWord)
        // Through Request.decode, frames counted: one inline tensor (the cotangent).
        let frames: [[UInt8]] = [bytes, []]
        let viaRequest = try frames[0].withUnsafeBytes { f0 in
            try frames[1].withUnsafeBytes { f1 in try Request.decode([f0, f1], maxJobBytes: 1 << 30) }
        }
        #expect(viaRequest.type == .backward && viaRequest.id == 78)
    }

    @Test func everyFieldIsChecked() {
        let bytes = request.encode()
        expectViolation(TP_ERR_PROTOCOL, "a BACKWARD request's frame 0 is 264 bytes without a done word but this one is 232") {
            _ = try decodeBackward(Array(bytes.prefix(232)))
        }
        expectViolation(TP_ERR_DTYPE, "floating-point") { _ = try decodeBackward(patched(bytes, at: 28, Int32(DType.int32.code))) }
        expectViolation(TP_ERR_INVALID_ARGUMENT, "max_ties is -1") { _ = try decodeBackward(patched(bytes, at: 232, Int32(-1))) }
        expectViolation(TP_ERR_PROTOCOL, "grad_output_location is 2") { _ = try decodeBackward(patched(bytes, at: 236, UInt32(2))) }
        expectViolation(TP_ERR_PROTOCOL, "grad_output_region and grad_output_offset must be 0") {
            _ = try decodeBackward(patched(bytes, at: 240, UInt64(1)))
        }
        expectViolation(TP_ERR_SHAPE, "grad_output_bytes is 0 but the cotangent (2, 5, 4, 3) of float16 needs 240") {
            _ = try decodeBackward(patched(bytes, at: 256, UInt64(0)))
        }
        expectViolation(TP_ERR_SHAPE, "output_bytes is 240 but the gradient (2, 9, 7, 3) of float16 needs 756") {
            _ = try decodeBackward(patched(bytes, at: 224, UInt64(240)))
        }
        let region = patched(patched(bytes, at: 236, UInt32(1)), at: 240, UInt64(5))
        expectViolation(TP_ERR_OVERFLOW, "grad_output_offset") { _ = try decodeBackward(patched(region, at: 248, UInt64.max - 8)) }
        expectViolation(TP_ERR_LAYOUT, "not a multiple of the 2-byte element size") {
            _ = try decodeBackward(patched(region, at: 248, UInt64(3)))
        }
        // The gradient may not overlap the cotangent; x and the cotangent may share bytes.
        let overlapping = patched(patched(patched(patched(region, at: 180, UInt32(1)), at: 208, UInt64(5)), at: 216, UInt64(1000)),
                                  at: 248, UInt64(1100))
        expectViolation(TP_ERR_LAYOUT, "overlaps grad_output") { _ = try decodeBackward(overlapping, payloadFrames: 0) }
        #expect((try? decodeBackward(region, payloadFrames: 0)) != nil)
        expectViolation(TP_ERR_PROTOCOL, "with inline grad_output has 2 frame(s) but this one has 1") {
            _ = try decodeBackward(bytes, payloadFrames: 0)
        }
        expectViolation(TP_ERR_TOO_LARGE, "--max-job-bytes 1700") { _ = try decodeBackward(bytes, maxJobBytes: 1700) }
        #expect((try? decodeBackward(bytes, maxJobBytes: 756 * 2 + 240)) != nil)
    }
}
