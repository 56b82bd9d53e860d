import CTidepool
import TidepoolCore

/// The C ABI: every `tp_` symbol is declared in include/tidepool.h and defined here.
/// Each function checks its pointers and fields, then calls TidepoolCore.

let versionString = StaticCString.make(TidepoolVersion.string)

@_cdecl("tp_version")
public func tpVersion() -> UInt32 { TidepoolVersion.number }

@_cdecl("tp_version_string")
public func tpVersionString() -> UnsafePointer<CChar>? { versionString }

private let cpuLevelStrings = Dictionary(uniqueKeysWithValues: CPULevel.allCases.map { ($0, StaticCString.make($0.rawValue)) })

@_cdecl("tp_cpu_level")
public func tpCPULevel() -> UnsafePointer<CChar>? { cpuLevelStrings[PoolEngine.shared.cpuLevel] }

/// C strings of every status name, built once.
private let statusNames: [UInt32: UnsafePointer<CChar>] = Dictionary(uniqueKeysWithValues: (0...64).compactMap { code in
    statusName(tp_status(rawValue: UInt32(code))).map { (UInt32(code), StaticCString.make($0)) }
})
private let unknownStatus = StaticCString.make("TP_ERR_UNKNOWN")

@_cdecl("tp_status_string")
public func tpStatusString(_ status: tp_status) -> UnsafePointer<CChar>? { statusNames[status.rawValue] ?? unknownStatus }

@_cdecl("tp_last_error")
public func tpLastError() -> UnsafePointer<CChar>? { LastError.current }

@_cdecl("tp_dtype_size")
public func tpDTypeSize(_ code: Int32) -> Int { DType(code: code)?.size ?? 0 }

@_cdecl("tp_tensor_init")
public func tpTensorInit(_ tensor: UnsafeMutablePointer<tp_tensor>?, _ data: UnsafeMutableRawPointer?, _ dtype: Int32,
                         _ rank: Int32, _ shape: UnsafePointer<Int64>?, _ strides: UnsafePointer<Int64>?) -> tp_status {
    withStatus {
        guard let tensor else { throw PoolError(TP_ERR_NULL_POINTER, "tensor is NULL") }
        guard (0...Int32(TP_MAX_RANK)).contains(rank) else {
            throw PoolError(TP_ERR_SHAPE, "rank must be between 0 and \(TP_MAX_RANK) but is \(rank)")
        }
        let count = Int(rank)
        let shapeValues = count == 0 ? [] : Array(UnsafeBufferPointer(start: try requireNonNull(shape, "shape"), count: count)).map { Int($0) }
        if let axis = shapeValues.firstIndex(where: { $0 < 0 }) {
            throw PoolError(TP_ERR_INVALID_ARGUMENT, "shape[\(axis)] must be non-negative but is \(shapeValues[axis])")
        }
        let strideValues: [Int]
        if let strides {
            strideValues = Array(UnsafeBufferPointer(start: strides, count: count)).map { Int($0) }
        } else {
            _ = try Checked.product(shapeValues, "element count of shape \(pythonTuple(shapeValues))")
            strideValues = TensorView.contiguousStrides(shapeValues)
        }
        var result = tp_tensor()
        result.struct_size = UInt32(MemoryLayout<tp_tensor>.size)
        result.data = data
        result.dtype = dtype
        result.rank = rank
        setInt64Array(&result.shape, shapeValues)
        setInt64Array(&result.strides, strideValues)
        tensor.pointee = result
    }
}

@_cdecl("tp_pool_desc_init")
public func tpPoolDescInit(_ desc: UnsafeMutablePointer<tp_pool_desc>?, _ kind: Int32, _ spatialDims: Int32,
                           _ kernelSize: UnsafePointer<Int64>?, _ stride: UnsafePointer<Int64>?,
                           _ padding: UnsafePointer<Int64>?) -> tp_status {
    withStatus {
        guard let desc else { throw PoolError(TP_ERR_NULL_POINTER, "desc is NULL") }
        guard (1...Int32(TP_MAX_SPATIAL_DIMS)).contains(spatialDims) else {
            throw PoolError(TP_ERR_INVALID_ARGUMENT, "spatial_dims must be 1, 2 or 3 but is \(spatialDims)")
        }
        let n = Int(spatialDims)
        func values(_ pointer: UnsafePointer<Int64>) -> [Int] { Array(UnsafeBufferPointer(start: pointer, count: n)).map { Int($0) } }
        let kernel = values(try requireNonNull(kernelSize, "kernel_size"))
        var result = tp_pool_desc()
        result.struct_size = UInt32(MemoryLayout<tp_pool_desc>.size)
        result.kind = kind
        result.spatial_dims = spatialDims
        setInt64Array(&result.kernel_size, kernel)
        setInt64Array(&result.stride, stride.map(values) ?? kernel)
        setInt64Array(&result.padding, padding.map(values) ?? [])
        _ = try PoolDescriptor(result)
        desc.pointee = result
    }
}

@_cdecl("tp_pool_output")
public func tpPoolOutput(_ desc: UnsafePointer<tp_pool_desc>?, _ input: UnsafePointer<tp_tensor>?,
                         _ output: UnsafeMutablePointer<tp_tensor>?) -> tp_status {
    withStatus {
        let pool = try PoolDescriptor(try requireNonNull(desc, "desc").pointee)
        let source = try CTensor(try requireNonNull(input, "input").pointee, "input")
        guard let output else { throw PoolError(TP_ERR_NULL_POINTER, "output is NULL") }
        let shape = try pool.outputShape(inputShape: source.shape)
        let dtype = source.dtype.result(of: pool.kind)
        _ = try TensorView.elementCount(shape, dtype: dtype, what: "output")
        var result = tp_tensor()
        result.struct_size = UInt32(MemoryLayout<tp_tensor>.size)
        result.dtype = dtype.code
        result.rank = Int32(shape.count)
        setInt64Array(&result.shape, shape)
        setInt64Array(&result.strides, TensorView.contiguousStrides(shape))
        output.pointee = result
    }
}

@_cdecl("tp_tensor_nbytes")
public func tpTensorNBytes(_ tensor: UnsafePointer<tp_tensor>?, _ nbytes: UnsafeMutablePointer<Int>?) -> tp_status {
    withStatus {
        let source = try CTensor(try requireNonNull(tensor, "tensor").pointee, "tensor")
        guard let nbytes else { throw PoolError(TP_ERR_NULL_POINTER, "nbytes is NULL") }
        nbytes.pointee = try TensorView.elementCount(source.shape, dtype: source.dtype, what: "tensor") * source.dtype.size
    }
}

@_cdecl("tp_pool")
public func tpPool(_ desc: UnsafePointer<tp_pool_desc>?, _ input: UnsafePointer<tp_tensor>?,
                   _ output: UnsafePointer<tp_tensor>?) -> tp_status {
    withStatus {
        let cache = PoolPlanCache.current
        if let desc, let input, let output, let prepared = cache.lookup(desc, input, output) {
            try PoolEngine.shared.pool(prepared, input: input.pointee.data, output: output.pointee.data)
            return
        }
        let (pool, source, destination) = try poolArguments(desc, input, output)
        let prepared = try PoolEngine.shared.prepare(pool, input: source, output: destination)
        if let desc, let input, let output { cache.store(prepared, desc, input, output) }
        try PoolEngine.shared.pool(prepared, input: source.data, output: destination.data)
    }
}

@_cdecl("tp_pool_backward")
public func tpPoolBackward(_ desc: UnsafePointer<tp_pool_desc>?, _ input: UnsafePointer<tp_tensor>?,
                           _ gradOutput: UnsafePointer<tp_tensor>?, _ gradInput: UnsafePointer<tp_tensor>?,
                           _ options: UnsafePointer<tp_backward_options>?) -> tp_status {
    withStatus {
        // As tp_pool: structs equal to the last call's on this thread skip reading and checking.
        let cache = PoolPlanCache.current
        if let desc, let input, let gradOutput, let gradInput,
           let prepared = cache.lookupBackward(desc, input, gradOutput, gradInput, options) {
            try PoolEngine.shared.backward(prepared, input: input.pointee.data, gradOutput: gradOutput.pointee.data,
                                           gradInput: gradInput.pointee.data)
            return
        }
        let job = try BackwardArguments(desc, input, gradOutput, gradInput, options)
        let prepared = try PoolEngine.shared.prepareBackward(job.desc, input: job.input, gradOutput: job.gradOutput,
                                                             gradInput: job.gradInput, ties: job.ties)
        if let desc, let input, let gradOutput, let gradInput { cache.storeBackward(prepared, desc, input, gradOutput, gradInput, options) }
        try PoolEngine.shared.backward(prepared, input: job.input.data, gradOutput: job.gradOutput.data, gradInput: job.gradInput.data)
    }
}

/// The arguments of tp_pool_backward and tp_client_*_backward, read and checked.
struct BackwardArguments {
    let desc: PoolDescriptor
    let input: TensorView
    let gradOutput: TensorView
    let gradInput: OutputView
    let ties: MaxTies

    init(_ desc: UnsafePointer<tp_pool_desc>?, _ input: UnsafePointer<tp_tensor>?, _ gradOutput: UnsafePointer<tp_tensor>?,
         _ gradInput: UnsafePointer<tp_tensor>?, _ options: UnsafePointer<tp_backward_options>?) throws {
        self.desc = try PoolDescriptor(try requireNonNull(desc, "desc").pointee)
        self.input = try CTensor(try requireNonNull(input, "input").pointee, "input").inputView
        self.gradOutput = try CTensor(try requireNonNull(gradOutput, "grad_output").pointee, "grad_output").inputView
        self.gradInput = try CTensor(try requireNonNull(gradInput, "grad_input").pointee, "grad_input").outputView
        guard let options = options?.pointee else {
            ties = .split
            return
        }
        try checkHeader(structSize: options.struct_size, flags: options.flags,
                        expectedSize: MemoryLayout<tp_backward_options>.size, name: "tp_backward_options")
        guard options.reserved == 0 else {
            throw PoolError.invalid("tp_backward_options.reserved is \(options.reserved) but must be 0")
        }
        guard let ties = MaxTies(code: options.max_ties) else {
            throw PoolError.invalid("tp_backward_options.max_ties is \(options.max_ties), which is not a tp_max_ties "
                + "(TP_TIES_SPLIT 0, TP_TIES_FIRST 1)")
        }
        self.ties = ties
    }
}

@_cdecl("tp_set_num_threads")
public func tpSetNumThreads(_ threads: Int32) -> tp_status {
    withStatus { try PoolEngine.shared.setThreadCount(Int(threads)) }
}

@_cdecl("tp_get_num_threads")
public func tpGetNumThreads() -> Int32 { Int32(PoolEngine.shared.threadCount) }
