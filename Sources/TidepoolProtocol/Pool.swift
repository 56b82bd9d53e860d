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

/// What a BACKWARD job adds to a POOL job: the rule for tied maxima and the cotangent (the
/// gradient of the pooled output, with the output's shape and the input's dtype).
public struct BackwardFields: Equatable, Sendable {
    public static let bodySize = 32

    public var ties: MaxTies
    public var gradOutput: TensorReference

    public init(ties: MaxTies, gradOutput: TensorReference) {
        self.ties = ties
        self.gradOutput = gradOutput
    }
}

/// A decoded, validated job request, POOL or BACKWARD: everything but the regions (which
/// belong to the server's state) has been checked. A BACKWARD job reads `input` (x) and the
/// cotangent, and writes `output`: the gradient with respect to x, with x's shape and dtype.
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
    /// Set for a BACKWARD job.
    public var backward: BackwardFields?

    public init(id: UInt64, descriptor: PoolDescriptor, dtype: DType, inputShape: [Int], input: TensorReference,
                output: TensorReference, doneWord: DoneWord? = nil, resubmitted: Bool = false, backward: BackwardFields? = nil) {
        self.id = id
        self.descriptor = descriptor
        self.dtype = dtype
        self.inputShape = inputShape
        self.input = input
        self.output = output
        self.doneWord = doneWord
        self.resubmitted = resubmitted
        self.backward = backward
    }

    public var type: MessageType { backward == nil ? .pool : .backward }

    /// The pooled output's shape (a BACKWARD job's cotangent has it); valid for a decoded
    /// request (the decoder computed it once).
    public var pooledShape: [Int] { (try? descriptor.outputShape(inputShape: inputShape)) ?? [] }

    /// The written tensor's dtype and shape: the pooled output's, or for BACKWARD the input's.
    public var outputDType: DType { backward == nil ? dtype.result(of: descriptor.kind) : dtype }
    public var outputShape: [Int] { backward == nil ? pooledShape : inputShape }

    /// The tensors read, in the order their inline frames follow frame 0.
    public var reads: [(name: String, reference: TensorReference)] {
        [("input", input)] + (backward.map { [("grad_output", $0.gradOutput)] } ?? [])
    }

    /// Frame 0; inline tensors follow in `reads` order, added by the caller.
    public func encode() -> [UInt8] {
        var writer = ByteWriter(capacity: type.requestSize + Wire.doneWordFieldsSize)
        let flags = (doneWord == nil ? 0 : Wire.doneWordFlag) | (resubmitted ? Wire.resubmittedFlag : 0)
            | (descriptor.ceilMode ? Wire.ceilModeFlag : 0) | (descriptor.countIncludePad ? 0 : Wire.excludePaddingFlag)
        Header(type: type.rawValue, id: id, flags: flags).write(to: &writer)
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
        func put(_ reference: TensorReference) {
            if case .region(let id, let offset) = reference.placement {
                writer.put(id)
                writer.put(UInt64(offset))
            } else {
                writer.put(UInt64(0))
                writer.put(UInt64(0))
            }
            writer.put(UInt64(reference.bytes))
        }
        put(input)
        put(output)
        if let backward {
            writer.put(backward.ties.code)
            writer.put(backward.gradOutput.placement.code)
            put(backward.gradOutput)
        }
        if let doneWord {
            writer.put(doneWord.region)
            writer.put(UInt64(doneWord.offset))
        }
        return writer.bytes
    }

    /// Decodes frame 0 of a POOL or BACKWARD request (`type`) and checks every field: enums,
    /// rank and shape limits, the pooling arguments, exact byte counts, alignment, ranges that
    /// fit in 64 bits, overlap, and the job size limit. `payloadFrames` is the number of
    /// frames after frame 0.
    public static func decode(_ frame: UnsafeRawBufferPointer, type: MessageType = .pool, payloadFrames: Int,
                              maxJobBytes: Int) throws -> PoolRequest {
        precondition(type == .pool || type == .backward)
        let header = try Header.read(frame)
        func violation(_ status: tp_status, _ message: String) -> ProtocolViolation {
            ProtocolViolation(status, message, type: type, id: header.id)
        }
        guard header.flags & ~Wire.jobFlags == 0 else {
            throw violation(TP_ERR_FLAGS, "flags is 0x\(String(header.flags, radix: 16)); only bit 0 (done word), bit 1 "
                + "(resubmitted), bit 2 (ceil_mode) and bit 3 (count_include_pad=False) are defined")
        }
        let withDoneWord = header.flags & Wire.doneWordFlag != 0
        let size = type.requestSize + (withDoneWord ? Wire.doneWordFieldsSize : 0)
        guard frame.count == size else {
            throw violation(TP_ERR_PROTOCOL, "a \(type.name) request's frame 0 is \(size) bytes "
                + "\(withDoneWord ? "with" : "without") a done word but this one is \(frame.count)")
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
        let isBackward = type == .backward
        let tiesCode = isBackward ? reader.get(Int32.self) : 0, gradCode = isBackward ? reader.get(UInt32.self) : 0
        let gradRegion = isBackward ? reader.get(UInt64.self) : 0, gradOffset = isBackward ? reader.get(UInt64.self) : 0
        let gradBytes = isBackward ? reader.get(UInt64.self) : 0
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
        let ties = MaxTies(code: tiesCode)
        guard let ties else {
            throw violation(TP_ERR_INVALID_ARGUMENT, "max_ties is \(tiesCode), not TP_TIES_SPLIT (0) or TP_TIES_FIRST (1)")
        }
        if isBackward && !dtype.isFloatingPoint {
            throw violation(TP_ERR_DTYPE, "gradients are defined for floating-point inputs (float32, float64, float16, "
                + "bfloat16) but the input is \(dtype)")
        }
        let shape = Array(shapeField.prefix(rank))
        if let axis = shape.firstIndex(where: { $0 < 0 || $0 > Wire.maxAxisLength }) {
            throw violation(TP_ERR_SHAPE, "shape[\(axis)] is \(shape[axis]); each entry must be between 0 and 2^40")
        }
        let descriptor = PoolDescriptor(kind: kind, kernelSize: Array(kernel.prefix(spatialDims)),
                                        stride: Array(stride.prefix(spatialDims)), padding: Array(padding.prefix(spatialDims)),
                                        ceilMode: header.flags & Wire.ceilModeFlag != 0,
                                        countIncludePad: header.flags & Wire.excludePaddingFlag == 0)
        let pooledShape: [Int]
        do {
            pooledShape = try descriptor.outputShape(inputShape: shape)
        } catch let error as PoolError {
            throw violation(error.status, error.message)
        }
        let pooledDType = isBackward ? dtype : dtype.result(of: kind)
        let expectedInput: Int, expectedPooled: Int
        do {
            expectedInput = try TensorView.elementCount(shape, dtype: dtype, what: "input") * dtype.size
            expectedPooled = try TensorView.elementCount(pooledShape, dtype: pooledDType, what: "output") * pooledDType.size
        } catch let error as PoolError {
            throw violation(error.status, error.message)
        }
        // POOL writes the pooled tensor; BACKWARD reads it (the cotangent) and writes one like the input.
        let expectedOutput = isBackward ? expectedInput : expectedPooled
        guard inputBytes == UInt64(expectedInput) else {
            throw violation(TP_ERR_SHAPE, "input_bytes is \(inputBytes) but shape \(pythonTuple(shape)) of \(dtype) needs \(expectedInput)")
        }
        guard outputBytes == UInt64(expectedOutput) else {
            let what = isBackward ? "the gradient \(pythonTuple(shape)) of \(dtype)" : "the output \(pythonTuple(pooledShape)) of \(pooledDType)"
            throw violation(TP_ERR_SHAPE, "output_bytes is \(outputBytes) but \(what) needs \(expectedOutput)")
        }
        if isBackward && gradBytes != UInt64(expectedPooled) {
            throw violation(TP_ERR_SHAPE, "grad_output_bytes is \(gradBytes) but the cotangent \(pythonTuple(pooledShape)) of \(dtype) "
                + "needs \(expectedPooled)")
        }
        let readBytes = expectedInput + (isBackward ? expectedPooled : 0)
        guard expectedInput <= maxJobBytes, expectedOutput <= maxJobBytes - expectedInput,
              !isBackward || expectedPooled <= maxJobBytes - expectedInput - expectedOutput else {
            throw violation(TP_ERR_TOO_LARGE, "job moves \(readBytes) input + \(expectedOutput) output bytes, "
                + "more than the daemon's --max-job-bytes \(maxJobBytes)")
        }

        /// A region offset is accepted only when offset + bytes fits in 64 bits, so every
        /// range derived from it below is plain arithmetic.
        func reference(_ name: String, code: UInt32, region: UInt64, offset: UInt64, bytes: Int, itemSize: Int) throws -> TensorReference {
            switch code {
            case 0:
                guard region == 0, offset == 0 else {
                    throw violation(TP_ERR_PROTOCOL, "\(name)_region and \(name)_offset must be 0 for an inline \(name)")
                }
                return TensorReference(placement: .inline, bytes: bytes)
            case 1:
                guard offset <= UInt64(Int.max - bytes) else {
                    throw violation(TP_ERR_OVERFLOW, "\(name)_offset \(offset) + \(name)_bytes \(bytes) overflows 63 bits")
                }
                guard offset % UInt64(itemSize) == 0 else {
                    throw violation(TP_ERR_LAYOUT, "\(name)_offset \(offset) is not a multiple of the \(itemSize)-byte element size")
                }
                return TensorReference(placement: .region(id: region, offset: Int(offset)), bytes: bytes)
            default:
                throw violation(TP_ERR_PROTOCOL, "\(name)_location is \(code), not 0 (inline) or 1 (region)")
            }
        }
        let input = try reference("input", code: inputCode, region: inputRegion, offset: inputOffset, bytes: expectedInput,
                                  itemSize: dtype.size)
        let output = try reference("output", code: outputCode, region: outputRegion, offset: outputOffset, bytes: expectedOutput,
                                   itemSize: isBackward ? dtype.size : pooledDType.size)
        let backward = try isBackward ? BackwardFields(ties: ties, gradOutput: reference(
            "grad_output", code: gradCode, region: gradRegion, offset: gradOffset, bytes: expectedPooled, itemSize: dtype.size)) : nil
        var request = PoolRequest(id: header.id, descriptor: descriptor, dtype: dtype, inputShape: shape, input: input, output: output,
                                  resubmitted: header.flags & Wire.resubmittedFlag != 0, backward: backward)
        // Tensors read may share bytes; the one written may not overlap any of them.
        if let b = output.regionRange {
            for (name, read) in request.reads {
                if let a = read.regionRange, a.region == b.region, a.range.overlaps(b.range) {
                    throw violation(TP_ERR_LAYOUT, "output [\(b.range.lowerBound), \(b.range.upperBound)) overlaps \(name) "
                        + "[\(a.range.lowerBound), \(a.range.upperBound)) in region \(a.region)")
                }
            }
        }
        if withDoneWord {
            guard doneOffset <= UInt64(Int.max - 4) else {
                throw violation(TP_ERR_OVERFLOW, "done_offset \(doneOffset) + 4 overflows 63 bits")
            }
            guard doneOffset % 4 == 0 else { throw violation(TP_ERR_LAYOUT, "done_offset \(doneOffset) is not a multiple of 4") }
            let word = DoneWord(region: doneRegion, offset: Int(doneOffset))
            let wordRange = word.offset..<(word.offset + 4)
            for (name, reference) in request.reads + [("output", output)] {
                if let tensor = reference.regionRange, tensor.region == word.region, tensor.range.overlaps(wordRange) {
                    throw violation(TP_ERR_LAYOUT, "the done word at \(word.offset) overlaps the \(name) in region \(tensor.region)")
                }
            }
            request.doneWord = word
        }
        let inline = request.reads.filter { $0.reference.placement == .inline }.map(\.name)
        guard payloadFrames == inline.count else {
            let carried = inline.isEmpty ? "no tensor inline" : "inline " + inline.joined(separator: " and ")
            throw violation(TP_ERR_PROTOCOL, "a \(type.name) request with \(carried) has \(inline.count + 1) frame(s) "
                + "but this one has \(payloadFrames + 1)")
        }
        return request
    }
}

/// POOL's and BACKWARD's reply body: the written tensor's dtype and shape.
public enum PoolReply {
    static let bodySize = 72

    public static func encode(_ type: MessageType, id: UInt64, dtype: DType, shape: [Int]) -> [UInt8] {
        precondition(type == .pool || type == .backward)
        return Reply.success(type, id: id) { writer in
            writer.put(dtype.code)
            writer.put(Int32(shape.count))
            writer.put(shape, count: Int(TP_MAX_RANK))
        }
    }
}
