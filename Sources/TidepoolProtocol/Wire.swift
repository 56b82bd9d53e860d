import CTidepool
import TidepoolCore

#if canImport(Glibc)
import Glibc
#endif

/// Tidepool's wire protocol, version 1 (docs/protocol.md is the language-neutral spec).
/// Requests and replies are multipart ZeroMQ messages whose first frame starts with a
/// fixed 24-byte little-endian header. This file only turns bytes into checked values and
/// back: no sockets, no shared memory.

public enum Wire {
    public static let magic: UInt32 = 0x4C4F_5054  // bytes "TPOL"
    public static let version: UInt16 = 1
    public static let headerSize = 24
    /// Set in a reply's type; alone (0x8000), it answers a request whose type was unreadable.
    public static let replyBit: UInt16 = 0x8000
    /// Most frames a request may have (header plus one payload).
    public static let maxFrames = 2
    /// Largest extent accepted for one axis; keeps every product well inside 64 bits.
    public static let maxAxisLength = 1 << 40
    /// POOL flag: frame 0 ends with a done word's region and offset (`doneWordFieldsSize`
    /// more bytes); the daemon sets the word when the job ends, before its reply.
    public static let doneWordFlag: UInt32 = 1
    public static let doneWordFieldsSize = 16
    /// A done word's values: 0 while the job runs (the client's), 1 done, 2 failed (see the reply).
    public static let doneWordSucceeded: UInt32 = 1
    public static let doneWordFailed: UInt32 = 2

    /// $TIDEPOOL_ENDPOINT, else ipc://$XDG_RUNTIME_DIR/tidepool.sock, else
    /// ipc:///tmp/tidepool-$UID/tidepool.sock. Shared by the daemon and every client.
    public static func defaultEndpoint() -> String {
        func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
        if let value = environment("TIDEPOOL_ENDPOINT"), !value.isEmpty { return value }
        if let runtime = environment("XDG_RUNTIME_DIR"), !runtime.isEmpty { return "ipc://\(runtime)/tidepool.sock" }
        return "ipc:///tmp/tidepool-\(getuid())/tidepool.sock"
    }
}

public enum MessageType: UInt16, CaseIterable, Sendable {
    case ping = 1, pool = 2, register = 3, unregister = 4, stats = 5, bye = 6

    /// Size of frame 0 of a request of this type: the header plus the type's fixed body.
    public var requestSize: Int {
        switch self {
        case .ping, .stats, .bye: return Wire.headerSize
        case .pool: return Wire.headerSize + PoolRequest.bodySize
        case .register: return Wire.headerSize + 16
        case .unregister: return Wire.headerSize + 8
        }
    }

    /// Size of frame 0 of a successful reply.
    public var replySize: Int {
        switch self {
        case .ping: return Wire.headerSize + 8
        case .pool: return Wire.headerSize + 72
        case .register: return Wire.headerSize + 8
        case .unregister, .stats, .bye: return Wire.headerSize
        }
    }

    public var name: String {
        switch self {
        case .ping: return "PING"
        case .pool: return "POOL"
        case .register: return "REGISTER"
        case .unregister: return "UNREGISTER"
        case .stats: return "STATS"
        case .bye: return "BYE"
        }
    }
}

/// A request that cannot be served, with what a reply needs to say so.
public struct ProtocolViolation: Error, CustomStringConvertible {
    public let status: tp_status
    public let message: String
    /// Known when the header could be read, so the error reply can echo them.
    public let type: MessageType?
    public let id: UInt64

    public init(_ status: tp_status, _ message: String, type: MessageType? = nil, id: UInt64 = 0) {
        self.status = status
        self.message = message
        self.type = type
        self.id = id
    }

    public var description: String { message }
}

public struct Header: Equatable, Sendable {
    public var type: UInt16
    public var id: UInt64
    public var status: Int32
    public var flags: UInt32

    public init(type: UInt16, id: UInt64, status: Int32 = 0, flags: UInt32 = 0) {
        self.type = type
        self.id = id
        self.status = status
        self.flags = flags
    }

    public func write(to writer: inout ByteWriter) {
        writer.put(Wire.magic)
        writer.put(Wire.version)
        writer.put(type)
        writer.put(id)
        writer.put(status)
        writer.put(flags)
    }

    /// Reads and checks magic and version; the caller checks type and flags.
    public static func read(_ frame: UnsafeRawBufferPointer) throws -> Header {
        guard frame.count >= Wire.headerSize else {
            throw ProtocolViolation(TP_ERR_PROTOCOL, "frame 0 is \(frame.count) bytes, shorter than the \(Wire.headerSize)-byte header")
        }
        var reader = ByteReader(frame)
        let magic = reader.get(UInt32.self)
        guard magic == Wire.magic else {
            throw ProtocolViolation(TP_ERR_PROTOCOL, "magic is 0x\(String(magic, radix: 16)), not 0x\(String(Wire.magic, radix: 16)) (\"TPOL\")")
        }
        let version = reader.get(UInt16.self)
        let type = reader.get(UInt16.self), id = reader.get(UInt64.self)
        guard version == Wire.version else {
            throw ProtocolViolation(TP_ERR_VERSION, "protocol version is \(version) but this daemon speaks version \(Wire.version)", id: id)
        }
        return Header(type: type, id: id, status: reader.get(Int32.self), flags: reader.get(UInt32.self))
    }
}

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

    public init(id: UInt64, descriptor: PoolDescriptor, dtype: DType, inputShape: [Int], input: TensorReference,
                output: TensorReference, doneWord: DoneWord? = nil) {
        self.id = id
        self.descriptor = descriptor
        self.dtype = dtype
        self.inputShape = inputShape
        self.input = input
        self.output = output
        self.doneWord = doneWord
    }

    public var outputDType: DType { dtype.result(of: descriptor.kind) }

    /// The output shape; valid for a decoded request (the decoder computed it once).
    public var outputShape: [Int] { (try? descriptor.outputShape(inputShape: inputShape)) ?? [] }

    public func encode() -> [UInt8] {
        var writer = ByteWriter(capacity: MessageType.pool.requestSize + Wire.doneWordFieldsSize)
        Header(type: MessageType.pool.rawValue, id: id, flags: doneWord == nil ? 0 : Wire.doneWordFlag).write(to: &writer)
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
    /// limits, the pooling arguments, exact byte counts, alignment, overlap, and the job
    /// size limit. `payloadFrames` is the number of frames after frame 0.
    public static func decode(_ frame: UnsafeRawBufferPointer, payloadFrames: Int, maxJobBytes: Int) throws -> PoolRequest {
        let header = try Header.read(frame)
        func violation(_ status: tp_status, _ message: String) -> ProtocolViolation {
            ProtocolViolation(status, message, type: .pool, id: header.id)
        }
        guard header.flags & ~Wire.doneWordFlag == 0 else {
            throw violation(TP_ERR_FLAGS, "flags is 0x\(String(header.flags, radix: 16)); only bit 0 (done word) is defined")
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

        func placement(_ name: String, code: UInt32, region: UInt64, offset: UInt64, itemSize: Int) throws -> TensorPlacement {
            switch code {
            case 0:
                guard region == 0, offset == 0 else {
                    throw violation(TP_ERR_PROTOCOL, "\(name)_region and \(name)_offset must be 0 for an inline \(name)")
                }
                return .inline
            case 1:
                guard offset <= UInt64(Int.max) else { throw violation(TP_ERR_OVERFLOW, "\(name)_offset \(offset) overflows") }
                guard offset % UInt64(itemSize) == 0 else {
                    throw violation(TP_ERR_LAYOUT, "\(name)_offset \(offset) is not a multiple of the \(itemSize)-byte element size")
                }
                return .region(id: region, offset: Int(offset))
            default:
                throw violation(TP_ERR_PROTOCOL, "\(name)_location is \(code), not 0 (inline) or 1 (region)")
            }
        }
        let input = TensorReference(placement: try placement("input", code: inputCode, region: inputRegion, offset: inputOffset,
                                                             itemSize: dtype.size), bytes: expectedInput)
        let output = TensorReference(placement: try placement("output", code: outputCode, region: outputRegion,
                                                              offset: outputOffset, itemSize: outputDType.size), bytes: expectedOutput)
        if case .region(let a, let aOffset) = input.placement, case .region(let b, let bOffset) = output.placement, a == b,
           expectedInput > 0, expectedOutput > 0, aOffset < bOffset + expectedOutput, bOffset < aOffset + expectedInput {
            throw violation(TP_ERR_LAYOUT, "output [\(bOffset), \(bOffset + expectedOutput)) overlaps input "
                + "[\(aOffset), \(aOffset + expectedInput)) in region \(a)")
        }
        var doneWord: DoneWord?
        if withDoneWord {
            guard doneOffset <= UInt64(Int.max) else { throw violation(TP_ERR_OVERFLOW, "done_offset \(doneOffset) overflows") }
            guard doneOffset % 4 == 0 else { throw violation(TP_ERR_LAYOUT, "done_offset \(doneOffset) is not a multiple of 4") }
            let word = DoneWord(region: doneRegion, offset: Int(doneOffset))
            for (name, reference) in [("input", input), ("output", output)] {
                if case .region(let region, let offset) = reference.placement, region == word.region,
                   word.offset < offset + reference.bytes, offset < word.offset + 4 {
                    throw violation(TP_ERR_LAYOUT, "the done word at \(word.offset) overlaps the \(name) in region \(region)")
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
                           doneWord: doneWord)
    }
}

/// Replies: frame 0 is the header (status 0 on success) plus the type's body; a failed
/// request's reply is the bare header with its status, and frame 1 a UTF-8 message.
public enum Reply {
    public static func error(_ violation: ProtocolViolation) -> [[UInt8]] {
        error(type: violation.type, id: violation.id, status: violation.status, message: violation.message)
    }

    public static func error(type: MessageType?, id: UInt64, status: tp_status, message: String) -> [[UInt8]] {
        var writer = ByteWriter(capacity: Wire.headerSize)
        Header(type: (type?.rawValue ?? 0) | Wire.replyBit, id: id, status: Int32(status.rawValue)).write(to: &writer)
        return [writer.bytes, Array(message.utf8)]
    }

    /// Frame 0 of a successful reply: the header and the type's body, written by `body`.
    public static func success(_ type: MessageType, id: UInt64, body: (inout ByteWriter) -> Void = { _ in }) -> [UInt8] {
        var writer = ByteWriter(capacity: type.replySize)
        Header(type: type.rawValue | Wire.replyBit, id: id).write(to: &writer)
        body(&writer)
        precondition(writer.bytes.count == type.replySize, "\(type.name) reply body has the wrong size")
        return writer.bytes
    }

    public static func pool(id: UInt64, dtype: DType, shape: [Int]) -> [UInt8] {
        success(.pool, id: id) { writer in
            writer.put(dtype.code)
            writer.put(Int32(shape.count))
            writer.put(shape, count: Int(TP_MAX_RANK))
        }
    }
}

/// A reply as a client reads it.
public struct DecodedReply: Sendable {
    public var type: MessageType
    public var id: UInt64
    public var status: tp_status
    /// The error message of a failed request.
    public var message: String
    /// Frame 0 after the header.
    public var body: [UInt8]

    public static func decode(_ frame0: UnsafeRawBufferPointer, frame1: UnsafeRawBufferPointer?) throws -> DecodedReply {
        let header = try Header.read(frame0)
        guard header.type & Wire.replyBit != 0 else {
            throw ProtocolViolation(TP_ERR_PROTOCOL, "message type 0x\(String(header.type, radix: 16)) is not a reply")
        }
        let status = tp_status(rawValue: UInt32(bitPattern: header.status))
        guard let type = MessageType(rawValue: header.type & ~Wire.replyBit) else {
            // The daemon could not read our request's type: a protocol bug on our side.
            let text = frame1.map { String(decoding: $0, as: UTF8.self) } ?? ""
            throw ProtocolViolation(status == TP_OK ? TP_ERR_PROTOCOL : status, text, id: header.id)
        }
        if status != TP_OK {
            return DecodedReply(type: type, id: header.id, status: status,
                                message: frame1.map { String(decoding: $0, as: UTF8.self) } ?? "", body: [])
        }
        guard frame0.count == type.replySize else {
            throw ProtocolViolation(TP_ERR_PROTOCOL, "\(type.name) reply frame 0 is \(frame0.count) bytes, not \(type.replySize)", id: header.id)
        }
        return DecodedReply(type: type, id: header.id, status: status, message: "",
                            body: Array(frame0[Wire.headerSize...]))
    }
}
