import CTidepool
import TidepoolCore

/// Where a tensor's bytes are: in a payload frame of the message, or in a registered
/// shared-memory region of the sender.
public enum TensorPlacement: Equatable, Sendable {
    case inline
    case region(id: UInt64, offset: Int)

    var code: UInt32 {
        if case .region = self { return 1 }
        return 0
    }
}

/// Where the daemon signals a job's end: a 4-byte word in one of the sender's regions.
public struct DoneWord: Equatable, Sendable {
    public var region: UInt64
    public var offset: Int

    public init(region: UInt64, offset: Int) {
        self.region = region
        self.offset = offset
    }
}

public struct TensorReference: Equatable, Sendable {
    public var placement: TensorPlacement
    public var bytes: Int

    public init(placement: TensorPlacement, bytes: Int) {
        self.placement = placement
        self.bytes = bytes
    }

    /// The byte range in its region, nil when inline; `decode` checked that the end fits.
    var regionRange: (region: UInt64, range: Range<Int>)? {
        guard case .region(let id, let offset) = placement else { return nil }
        return (id, offset..<(offset + bytes))
    }
}

/// A decoded, validated POOL request: everything but the regions (which belong to the
/// server's state) has been checked.
public struct PoolRequest: Equatable, Sendable {
    public static let bodySize = 208

    public var id: UInt64
    public var descriptor: PoolDescriptor
    public var dtype: DType
    public var inputShape: [Int]
    public var input: TensorReference
    public var output: TensorReference
    public var doneWord: DoneWord?
    /// Sent again after a lost connection (`Wire.resubmittedFlag`).
    public var resubmitted: Bool

    public init(id: UInt64, descriptor: PoolDescriptor, dtype: DType, inputShape: [Int], input: TensorReference,
                output: TensorReference, doneWord: DoneWord? = nil, resubmitted: Bool = false) {
        self.id = id
        self.descriptor = descriptor
        self.dtype = dtype
        self.inputShape = inputShape
        self.input = input
        self.output = output
        self.doneWord = doneWord
        self.resubmitted = resubmitted
    }

    public var outputDType: DType { dtype.result(of: descriptor.kind) }

    /// The output shape; valid for a decoded request (the decoder computed it once).
    public var outputShape: [Int] { (try? descriptor.outputShape(inputShape: inputShape)) ?? [] }

    /// Frame 0; an inline input goes in frame 1, which the caller adds.
    public func encode() -> [UInt8] {
        var writer = ByteWriter(capacity: MessageType.pool.requestSize + Wire.doneWordFieldsSize)
        let flags = (doneWord == nil ? 0 : Wire.doneWordFlag) | (resubmitted ? Wire.resubmittedFlag : 0)
        Header(type: MessageType.pool.rawValue, id: id, flags: flags).write(to: &writer)
        writer.put(descriptor.kind.code)
        writer.put(dtype.code)
        writer.put(Int32(descriptor.spatialDims))
        writer.put(Int32(inputShape.count))
        writer.put(inputShape, count: Int(TP_MAX_RANK))
        writer.put(descriptor.kernelSize, count: 3)
        writer.put(descriptor.stride, count: 3)
        writer.put(descriptor.padding, count: 3)
        writer.put(input.placement.code)
        writer.put(output.placement.code)
        for reference in [input, output] {
            if case .region(let id, let offset) = reference.placement {
                writer.put(id)
                writer.put(UInt64(offset))
            } else {
                writer.put(UInt64(0))
                writer.put(UInt64(0))
            }
            writer.put(UInt64(reference.bytes))
        }
        if let doneWord {
            writer.put(doneWord.region)
            writer.put(UInt64(doneWord.offset))
        }
        return writer.bytes
    }

    /// Decodes frame 0 of a POOL request and checks every field: enums, rank and shape
    /// limits, the pooling arguments, exact byte counts, alignment, ranges that fit in 64
    /// bits, overlap, and the job size limit. `payloadFrames` is the number of frames after
    /// frame 0.
    public static func decode(_ frame: UnsafeRawBufferPointer, payloadFrames: Int, maxJobBytes: Int) throws -> PoolRequest {
        let header = try Header.read(frame)
        func violation(_ status: tp_status, _ message: String) -> ProtocolViolation {
            ProtocolViolation(status, message, type: .pool, id: header.id)
        }
        guard header.flags & ~(Wire.doneWordFlag | Wire.resubmittedFlag) == 0 else {
            throw violation(TP_ERR_FLAGS,
                "flags is 0x\(String(header.flags, radix: 16)); only bit 0 (done word) and bit 1 (resubmitted) are defined")
        }
        let withDoneWord = header.flags & Wire.doneWordFlag != 0
        let size = MessageType.pool.requestSize + (withDoneWord ? Wire.doneWordFieldsSize : 0)
        guard frame.count == size else {
            throw violation(TP_ERR_PROTOCOL,
                "a POOL request's frame 0 is \(size) bytes \(withDoneWord ? "with" : "without") a done word but this one is \(frame.count)")
        }
        var reader = ByteReader(frame, offset: Wire.headerSize)
        let kindCode = reader.get(Int32.self), dtypeCode = reader.get(Int32.self)
        let spatialDims = Int(reader.get(Int32.self)), rank = Int(reader.get(Int32.self))
        let shapeField = reader.getInt64s(Int(TP_MAX_RANK)).map { Int($0) }
        let kernel = reader.getInt64s(3).map { Int($0) }, stride = reader.getInt64s(3).map { Int($0) }
        let padding = reader.getInt64s(3).map { Int($0) }
        let inputCode = reader.get(UInt32.self), outputCode = reader.get(UInt32.self)
        let inputRegion = reader.get(UInt64.self), inputOffset = reader.get(UInt64.self), inputBytes = reader.get(UInt64.self)
        let outputRegion = reader.get(UInt64.self), outputOffset = reader.get(UInt64.self), outputBytes = reader.get(UInt64.self)
        let doneRegion = withDoneWord ? reader.get(UInt64.self) : 0, doneOffset = withDoneWord ? reader.get(UInt64.self) : 0

        guard let kind = PoolKind(code: kindCode) else {
            throw violation(TP_ERR_INVALID_ARGUMENT, "kind is \(kindCode), not TP_POOL_AVG (1) or TP_POOL_MAX (2)")
        }
        guard let dtype = DType(code: dtypeCode) else {
            throw violation(TP_ERR_DTYPE, "dtype is \(dtypeCode), which is not a tp_dtype (1 to 12)")
        }
        guard (1...3).contains(spatialDims) else {
            throw violation(TP_ERR_INVALID_ARGUMENT, "spatial_dims must be 1, 2 or 3 but is \(spatialDims)")
        }
        guard rank == spatialDims + 2 else {
            throw violation(TP_ERR_SHAPE, "rank must be spatial_dims + 2 = \(spatialDims + 2) but is \(rank)")
        }
        let shape = Array(shapeField.prefix(rank))
        if let axis = shape.firstIndex(where: { $0 < 0 || $0 > Wire.maxAxisLength }) {
            throw violation(TP_ERR_SHAPE, "shape[\(axis)] is \(shape[axis]); each entry must be between 0 and 2^40")
        }
        let descriptor = PoolDescriptor(kind: kind, kernelSize: Array(kernel.prefix(spatialDims)),
                                        stride: Array(stride.prefix(spatialDims)), padding: Array(padding.prefix(spatialDims)))
        let outputShape: [Int]
        do {
            outputShape = try descriptor.outputShape(inputShape: shape)
        } catch let error as PoolError {
            throw violation(error.status, error.message)
        }
        let outputDType = dtype.result(of: kind)
        let expectedInput: Int, expectedOutput: Int
        do {
            expectedInput = try TensorView.elementCount(shape, dtype: dtype, what: "input") * dtype.size
            expectedOutput = try TensorView.elementCount(outputShape, dtype: outputDType, what: "output") * outputDType.size
        } catch let error as PoolError {
            throw violation(error.status, error.message)
        }
        guard inputBytes == UInt64(expectedInput) else {
            throw violation(TP_ERR_SHAPE, "input_bytes is \(inputBytes) but shape \(pythonTuple(shape)) of \(dtype) needs \(expectedInput)")
        }
        guard outputBytes == UInt64(expectedOutput) else {
            throw violation(TP_ERR_SHAPE,
                "output_bytes is \(outputBytes) but the output \(pythonTuple(outputShape)) of \(outputDType) needs \(expectedOutput)")
        }
        guard expectedInput <= maxJobBytes, expectedOutput <= maxJobBytes - expectedInput else {
            throw violation(TP_ERR_TOO_LARGE,
                "job moves \(expectedInput) input + \(expectedOutput) output bytes, more than the daemon's --max-job-bytes \(maxJobBytes)")
        }

        /// A region offset is accepted only when offset + bytes fits in 64 bits, so every
        /// range derived from it below is plain arithmetic.
        func placement(_ name: String, code: UInt32, region: UInt64, offset: UInt64, bytes: Int, itemSize: Int) throws -> TensorPlacement {
            switch code {
            case 0:
                guard region == 0, offset == 0 else {
                    throw violation(TP_ERR_PROTOCOL, "\(name)_region and \(name)_offset must be 0 for an inline \(name)")
                }
                return .inline
            case 1:
                guard offset <= UInt64(Int.max - bytes) else {
                    throw violation(TP_ERR_OVERFLOW, "\(name)_offset \(offset) + \(name)_bytes \(bytes) overflows 63 bits")
                }
                guard offset % UInt64(itemSize) == 0 else {
                    throw violation(TP_ERR_LAYOUT, "\(name)_offset \(offset) is not a multiple of the \(itemSize)-byte element size")
                }
                return .region(id: region, offset: Int(offset))
            default:
                throw violation(TP_ERR_PROTOCOL, "\(name)_location is \(code), not 0 (inline) or 1 (region)")
            }
        }
        let input = TensorReference(placement: try placement("input", code: inputCode, region: inputRegion, offset: inputOffset,
                                                             bytes: expectedInput, itemSize: dtype.size), bytes: expectedInput)
        let output = TensorReference(placement: try placement("output", code: outputCode, region: outputRegion, offset: outputOffset,
                                                              bytes: expectedOutput, itemSize: outputDType.size), bytes: expectedOutput)
        if let a = input.regionRange, let b = output.regionRange, a.region == b.region, a.range.overlaps(b.range) {
            throw violation(TP_ERR_LAYOUT, "output [\(b.range.lowerBound), \(b.range.upperBound)) overlaps input "
                + "[\(a.range.lowerBound), \(a.range.upperBound)) in region \(a.region)")
        }
        var doneWord: DoneWord?
        if withDoneWord {
            guard doneOffset <= UInt64(Int.max - 4) else {
                throw violation(TP_ERR_OVERFLOW, "done_offset \(doneOffset) + 4 overflows 63 bits")
            }
            guard doneOffset % 4 == 0 else { throw violation(TP_ERR_LAYOUT, "done_offset \(doneOffset) is not a multiple of 4") }
            let word = DoneWord(region: doneRegion, offset: Int(doneOffset))
            let wordRange = word.offset..<(word.offset + 4)
            for (name, reference) in [("input", input), ("output", output)] {
                if let tensor = reference.regionRange, tensor.region == word.region, tensor.range.overlaps(wordRange) {
                    throw violation(TP_ERR_LAYOUT, "the done word at \(word.offset) overlaps the \(name) in region \(tensor.region)")
                }
            }
            doneWord = word
        }
        let expectedFrames = input.placement == .inline ? 1 : 0
        guard payloadFrames == expectedFrames else {
            throw violation(TP_ERR_PROTOCOL, "a POOL request with \(input.placement == .inline ? "an inline" : "a region") input "
                + "has \(expectedFrames + 1) frame(s) but this one has \(payloadFrames + 1)")
        }
        return PoolRequest(id: header.id, descriptor: descriptor, dtype: dtype, inputShape: shape, input: input, output: output,
                           doneWord: doneWord, resubmitted: header.flags & Wire.resubmittedFlag != 0)
    }
}

/// POOL's reply body: the output's dtype and shape.
public enum PoolReply {
    static let bodySize = 72

    public static func encode(id: UInt64, dtype: DType, shape: [Int]) -> [UInt8] {
        Reply.success(.pool, id: id) { writer in
            writer.put(dtype.code)
            writer.put(Int32(shape.count))
            writer.put(shape, count: Int(TP_MAX_RANK))
        }
    }
}
