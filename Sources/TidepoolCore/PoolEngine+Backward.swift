import CTidepool

extension PoolEngine {
    /// The gradient of pooling `input` by `desc` with respect to `input`, for the cotangent
    /// `gradOutput` (the vector-Jacobian product), written to `gradInput`: contiguous
    /// channels-last with the input's shape and dtype. Floating-point inputs only (see
    /// `checkBackward`). Everything is validated first; on error nothing is written.
    /// `isCancelled` is asked before each plane; once it says yes, no further plane starts and
    /// the call throws TP_ERR_CLOSED (the gradient is then partly written).
    public func backward(_ desc: PoolDescriptor, input: TensorView, gradOutput: TensorView, gradInput: OutputView,
                         ties: MaxTies = .split, threads: Int? = nil, isCancelled: (@Sendable () -> Bool)? = nil) throws {
        let (geometry, gradSteps) = try checkBackward(desc, input: input, gradOutput: gradOutput, gradInput: gradInput)
        guard let geometry, let gradData = gradInput.data else { return }
        let threads = try threads.map { t -> Int in
            guard (1...Self.maxThreads).contains(t) else {
                throw PoolError.invalid("thread count must be between 1 and \(Self.maxThreads) but got \(t)")
            }
            return t
        } ?? threadCount
        // An input with no elements is never read; neither is an empty cotangent.
        let call = BackwardCall(geometry: geometry, gradSteps: gradSteps, kind: desc.kind, dtype: input.dtype, ties: ties,
                                input: input.data ?? UnsafeRawPointer(gradData),
                                gradOutput: gradOutput.data ?? UnsafeRawPointer(gradData), gradInput: gradData,
                                threads: threads, settings: settings, isCancelled: isCancelled)
        try kernels.runBackward(call)
        if isCancelled?() == true { throw PoolError(TP_ERR_CLOSED, "the job was cancelled") }
    }

    /// Checks everything `backward` would check, without touching memory; returns the
    /// geometry (nil when the gradient is empty) and the cotangent's lifted strides.
    ///
    /// Integer inputs are refused (TP_ERR_DTYPE), as JAX and PyTorch refuse them: MLX returns
    /// something for them, but it is an artefact of casts (each window's share truncated to
    /// the integer type, and a gradient dtype of float32, int32 or uint32 instead of the
    /// input's where windows do not overlap), not a gradient.
    package func checkBackward(_ desc: PoolDescriptor, input: TensorView, gradOutput: TensorView, gradInput: OutputView) throws
        -> (PoolGeometry?, (n: Int, d: Int, h: Int, w: Int, c: Int)) {
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
        let inputSpan = try input.byteSpan(what: "input")
        let gradOutputSpan = try gradOutput.byteSpan(what: "grad_output")
        let gradInputSpan = try gradInput.asInput.byteSpan(what: "grad_input")
        if let gradInputSpan {
            for (name, span) in [("input", inputSpan), ("grad_output", gradOutputSpan)] {
                if let span, span.overlaps(gradInputSpan) {
                    throw PoolError(TP_ERR_LAYOUT, "grad_input memory overlaps \(name); the gradient cannot be written in place")
                }
            }
        }
        // The cotangent's steps lifted to (N, D, H, W, C) as the geometry's are.
        let s = desc.spatialDims
        let lifted = PoolGeometry.lifted(gradOutput.strides, from: 1, spatialDims: s, fill: 0)
        let steps = outputShape.contains(0) ? (0, 0, 0, 0, 0)
            : (gradOutput.strides[0], lifted.0, lifted.1, lifted.2, gradOutput.strides[s + 1])
        // The gradient is empty only with the input; an empty output leaves a gradient of zeros.
        guard !input.shape.contains(0) else { return (nil, steps) }
        return (try PoolGeometry(desc, input: input, outputShape: outputShape), steps)
    }
}
