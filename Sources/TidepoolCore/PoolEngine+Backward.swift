import CTidepool

extension PoolEngine {
    /// The gradient of pooling `input` by `desc` with respect to `input`, for the cotangent
    /// `gradOutput` (the vector-Jacobian product), written to `gradInput`: contiguous
    /// channels-last with the input's shape and dtype. Floating-point inputs only (see
    /// `prepareBackward`). Everything is validated first; on error nothing is written.
    /// `isCancelled` is asked before each plane; once it says yes, no further plane starts and
    /// the call throws TP_ERR_CLOSED (the gradient is then partly written).
    public func backward(_ desc: PoolDescriptor, input: TensorView, gradOutput: TensorView, gradInput: OutputView,
                         ties: MaxTies = .split, threads: Int? = nil, isCancelled: (@Sendable () -> Bool)? = nil) throws {
        try backward(prepareBackward(desc, input: input, gradOutput: gradOutput, gradInput: gradInput, ties: ties),
                     input: input.data, gradOutput: gradOutput.data, gradInput: gradInput.data, threads: threads,
                     isCancelled: isCancelled)
    }

    /// The gradient of tensors at `input`, `gradOutput` and `gradInput`, described as when
    /// `prepared`, as the other `backward` computes it: the addresses are checked first; on
    /// error nothing is written.
    public func backward(_ prepared: PreparedBackward, input: UnsafeRawPointer?, gradOutput: UnsafeRawPointer?,
                         gradInput: UnsafeMutableRawPointer?, threads: Int? = nil,
                         isCancelled: (@Sendable () -> Bool)? = nil) throws {
        try prepared.place(input: input, gradOutput: gradOutput, gradInput: gradInput)
        guard let geometry = prepared.geometry, let gradData = gradInput else { return }
        let threads = try threadCount(for: threads)
        // An input with no elements is never read; neither is an empty cotangent.
        let call = BackwardCall(geometry: geometry, gradSteps: prepared.gradSteps, kind: prepared.kind, dtype: prepared.dtype,
                                ties: prepared.ties, input: input ?? UnsafeRawPointer(gradData),
                                gradOutput: gradOutput ?? UnsafeRawPointer(gradData), gradInput: gradData,
                                threads: threads, settings: settings, isCancelled: isCancelled)
        try kernels.runBackward(call)
        if isCancelled?() == true { throw PoolError(TP_ERR_CLOSED, "the job was cancelled") }
    }

    /// A gradient checked for everything but its data addresses (`prepareBackward`), as
    /// `Prepared` is a pooling: `backward(_:input:gradOutput:gradInput:)` runs it on tensors
    /// of the same description at any addresses, checking only those.
    public struct PreparedBackward: @unchecked Sendable {
        let kind: PoolKind
        let dtype: DType
        let ties: MaxTies
        let inputShape: [Int], gradOutputShape: [Int]
        /// The bytes each tensor touches from its address (nil: no elements).
        let inputReach: Range<Int>?, gradOutputReach: Range<Int>?, gradInputReach: Range<Int>?
        /// nil when the gradient is empty.
        let geometry: PoolGeometry?
        /// The cotangent's element steps lifted to (N, D, H, W, C) as the geometry's are.
        let gradSteps: (n: Int, d: Int, h: Int, w: Int, c: Int)

        /// The checks of the data addresses: not null where there are elements, no address
        /// range past 64 bits, a gradient overlapping neither the input nor the cotangent.
        func place(input: UnsafeRawPointer?, gradOutput: UnsafeRawPointer?, gradInput: UnsafeRawPointer?) throws {
            let inputSpan = try inputReach.map { try TensorView.place($0, at: input, shape: inputShape, what: "input") }
            let gradOutputSpan = try gradOutputReach.map {
                try TensorView.place($0, at: gradOutput, shape: gradOutputShape, what: "grad_output")
            }
            guard let gradInputSpan = try gradInputReach.map({
                try TensorView.place($0, at: gradInput, shape: inputShape, what: "grad_input")
            }) else { return }
            // Two tests, not a loop over an array of them: this runs on every call.
            if let inputSpan, inputSpan.overlaps(gradInputSpan) {
                throw PoolError(TP_ERR_LAYOUT, "grad_input memory overlaps input; the gradient cannot be written in place")
            }
            if let gradOutputSpan, gradOutputSpan.overlaps(gradInputSpan) {
                throw PoolError(TP_ERR_LAYOUT, "grad_input memory overlaps grad_output; the gradient cannot be written in place")
            }
        }
    }

    /// Checks everything `backward` would check, without touching memory.
    public func checkBackward(_ desc: PoolDescriptor, input: TensorView, gradOutput: TensorView, gradInput: OutputView) throws {
        try prepareBackward(desc, input: input, gradOutput: gradOutput, gradInput: gradInput, ties: .split)
            .place(input: input.data, gradOutput: gradOutput.data, gradInput: gradInput.data)
    }

    /// Checks everything about a gradient but its data addresses (see `PreparedBackward`).
    ///
    /// Integer inputs are refused (TP_ERR_DTYPE), as JAX and PyTorch refuse them: MLX returns
    /// something for them, but it is an artefact of casts (each window's share truncated to
    /// the integer type, and a gradient dtype of float32, int32 or uint32 instead of the
    /// input's where windows do not overlap), not a gradient.
    public func prepareBackward(_ desc: PoolDescriptor, input: TensorView, gradOutput: TensorView, gradInput: OutputView,
                                ties: MaxTies) throws -> PreparedBackward {
        let outputShape = try desc.outputShape(inputShape: input.shape)
        guard input.dtype.isFloatingPoint else {
            throw PoolError(TP_ERR_DTYPE, "gradients are defined for floating-point inputs (float32, float64, float16, "
                + "bfloat16) but the input is \(input.dtype)")
        }
        guard gradOutput.dtype == input.dtype else {
            throw PoolError(TP_ERR_DTYPE, "grad_output dtype must be \(input.dtype) (the output's) but is \(gradOutput.dtype)")
        }
        guard gradOutput.shape == outputShape else {
            throw PoolError.shape("grad_output shape must be \(pythonTuple(outputShape)) (the output's for input "
                + "\(pythonTuple(input.shape)) and \(desc)) but is \(pythonTuple(gradOutput.shape))")
        }
        guard gradInput.dtype == input.dtype else {
            throw PoolError(TP_ERR_DTYPE, "grad_input dtype must be \(input.dtype) (the input's) but is \(gradInput.dtype)")
        }
        guard gradInput.shape == input.shape else {
            throw PoolError.shape("grad_input shape must be \(pythonTuple(input.shape)) (the input's) but is "
                + "\(pythonTuple(gradInput.shape))")
        }
        try gradInput.checkContiguous(what: "grad_input")
        let inputReach = try input.reach(what: "input")
        let gradOutputReach = try gradOutput.reach(what: "grad_output")
        let gradInputReach = try gradInput.asInput.reach(what: "grad_input")
        // The cotangent's steps lifted to (N, D, H, W, C) as the geometry's are.
        let s = desc.spatialDims
        let lifted = PoolGeometry.lifted(gradOutput.strides, from: 1, spatialDims: s, fill: 0)
        let steps = outputShape.contains(0) ? (0, 0, 0, 0, 0)
            : (gradOutput.strides[0], lifted.0, lifted.1, lifted.2, gradOutput.strides[s + 1])
        // The gradient is empty only with the input; an empty output leaves a gradient of zeros.
        let geometry = input.shape.contains(0) ? nil : try PoolGeometry(desc, input: input, outputShape: outputShape)
        return PreparedBackward(kind: desc.kind, dtype: input.dtype, ties: ties, inputShape: input.shape,
                                gradOutputShape: gradOutput.shape, inputReach: inputReach, gradOutputReach: gradOutputReach,
                                gradInputReach: gradInputReach, geometry: geometry, gradSteps: steps)
    }
}
