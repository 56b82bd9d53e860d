/// The pooling problem with 1-d and 2-d layers lifted to 3-d by leading unit axes
/// (kernel 1, stride 1, no padding), so one kernel serves all six layers.
package struct PoolGeometry: Sendable {
    package var batch = 0, channels = 0
    package var inD = 1, inH = 1, inW = 1
    package var outD = 1, outH = 1, outW = 1
    package var kernelD = 1, kernelH = 1, kernelW = 1
    package var strideD = 1, strideH = 1, strideW = 1
    package var padD = 0, padH = 0, padW = 0
    /// Input element strides of (N, D, H, W, C).
    package var stepN = 0, stepD = 0, stepH = 0, stepW = 0, stepC = 1
    /// What an average divides a window's sum by (`AverageDivisor`); the kernels divide by
    /// `windowSize` and the windows for which that is wrong are redone (`divisorDiffers`).
    package var divisor = AverageDivisor.window

    /// What an average's window sum is divided by, per axis (the divisor is the product).
    package enum AverageDivisor: Sendable, Equatable {
        /// The kernel: MLX's rule, and PyTorch's count_include_pad=True without ceil_mode.
        case window
        /// The window's positions inside the padded input: count_include_pad=True with
        /// ceil_mode, whose last window may reach past the padding.
        case paddedInput
        /// The window's positions inside the input: count_include_pad=False.
        case input
    }

    /// The largest padded volume (batch x padded D x H x W x channels) the engine takes.
    /// Every size the kernels derive (row pitches, tile and scratch sizes, window sizes times
    /// channels, bytes of accumulators) is a product of some of these factors times a small
    /// constant (at most 64, see TidepoolKernels' `TilePlan`); bounding their product once keeps every such
    /// computation inside 64 bits without checking each one. 2^55 elements is 32 PiB of
    /// float32: no real tensor comes near it, only absurd padding.
    package static let maximumPaddedVolume = 1 << 55

    /// `desc` must be validated and `outputShape` computed from it and `input`, and the output
    /// must not be empty (an empty output is never computed, so its geometry is not needed).
    /// Throws TP_ERR_OVERFLOW when the padded volume exceeds `maximumPaddedVolume`.
    package init(_ desc: PoolDescriptor, input: TensorView, outputShape: [Int]) throws {
        let s = desc.spatialDims
        // Tuples, not arrays: every gradient and every pooling the plan cache has not seen
        // builds a geometry, and the arrays this took (a dozen allocated and freed) were a
        // seventh of a tiny gradient's instructions.
        func lifted(_ values: [Int], from first: Int, _ fill: Int) -> (Int, Int, Int) {
            Self.lifted(values, from: first, spatialDims: s, fill: fill)
        }
        let stride = lifted(desc.stride, from: 0, 1)
        batch = input.shape[0]
        channels = input.shape[s + 1]
        (inD, inH, inW) = lifted(input.shape, from: 1, 1)
        (outD, outH, outW) = lifted(outputShape, from: 1, 1)
        (kernelD, kernelH, kernelW) = lifted(desc.kernelSize, from: 0, 1)
        (padD, padH, padW) = lifted(desc.padding, from: 0, 0)
        // The padded lengths fit (outputShape checked n + 2p), and a non-empty output has its
        // windows inside the extents below, so the window size is at most their volume.
        // With ceil_mode the last window may reach past the padding (by less than its stride):
        // bound the extent the windows cover, not only the padded length.
        func extent(_ length: Int, _ outputs: Int, _ kernel: Int, _ stride: Int, _ padding: Int) throws -> Int {
            let reach = try Checked.add(try Checked.multiply(outputs - 1, stride, "window start"), kernel, "window end")
            return Swift.max(length + 2 * padding, reach)
        }
        let padded = (try extent(inD, outD, kernelD, stride.0, padD), try extent(inH, outH, kernelH, stride.1, padH),
                      try extent(inW, outW, kernelW, stride.2, padW))
        func volumeName() -> String { "padded volume of input \(pythonTuple(input.shape)) with padding \(pythonTuple(desc.padding))" }
        func times(_ a: Int, _ b: Int) throws -> Int { try Checked.multiply(a, b, volumeName()) }
        let volume = try times(times(times(times(batch, channels), padded.0), padded.1), padded.2)
        guard volume <= Self.maximumPaddedVolume else {
            throw PoolError.overflow("the padded input \(pythonTuple([batch] + [padded.0, padded.1, padded.2].suffix(s) + [channels])) "
                + "has \(volume) elements, more than the 2^55 this engine takes")
        }
        // A stride past the padded length gives the same windows as the padded length (only
        // window 0 exists), and keeps stride x channels inside the bound above.
        (strideD, strideH, strideW) = (Swift.min(stride.0, padded.0), Swift.min(stride.1, padded.1), Swift.min(stride.2, padded.2))
        if desc.kind == .average {
            divisor = !desc.countIncludePad ? .input : desc.ceilMode ? .paddedInput : .window
            // Where every window is whole (no padding reached), the kernel size it is.
            if !divisorDiffers { divisor = .window }
        }
        if input.shape.contains(0) {
            // Nothing is read (every window lies in padding), so strides were not checked
            // (TensorView.byteSpan) and must not reach the address arithmetic: zero them.
            (stepN, stepD, stepH, stepW, stepC) = (0, 0, 0, 0, 0)
        } else {
            stepN = input.strides[0]
            (stepD, stepH, stepW) = lifted(input.strides, from: 1, 0)
            stepC = input.strides[s + 1]
            denseStepsOfUnitAxes()
        }
    }

    /// (D, H, W) from a call's `spatialDims` spatial axes, `values[first...]`, with `fill` for
    /// the axes a 1-d or 2-d pooling lacks (the leading ones).
    package static func lifted(_ values: [Int], from first: Int, spatialDims: Int, fill: Int) -> (Int, Int, Int) {
        let lift = PoolDescriptor.maxSpatialDims - spatialDims
        func axis(_ a: Int) -> Int { a < lift ? fill : values[first + a - lift] }
        return (axis(0), axis(1), axis(2))
    }

    @inlinable package var windowSize: Int { kernelD * kernelH * kernelW }

    /// Gives an axis of one element the step a dense layout would have where the axes inside it
    /// are dense. Such a step is never used to address an element, but the plan reads steps to
    /// tell a dense plane (`hasDenseRows`): with the lifted axes' step of 0, every 1-d input and
    /// every view with a unit axis of another step counted as strided, and float averages of
    /// them were packed (a copy of the whole input) before pooling. Fits: the products are
    /// element counts of the (checked, non-empty) input.
    private mutating func denseStepsOfUnitAxes() {
        if channels == 1 { stepC = 1 }
        if inW == 1 && stepC == 1 { stepW = channels }
        if inH == 1 && stepC == 1 && stepW == channels { stepH = inW * channels }
        if inD == 1 && hasDenseRows { stepD = inH * stepH }
    }

    /// Whether each input plane is one dense run (channels, then W, then H), the layout the
    /// kernels' plan prefers (KernelPlan).
    package var hasDenseRows: Bool { stepC == 1 && stepW == channels && stepH == inW * channels }

    /// Whether the memory the input spans holds at least as many elements as the input has
    /// and no axis is broadcast (zero step): a dense copy is then no larger than what the
    /// caller already holds. Axes of one element may have any step (it is never used), so
    /// only the others count, in saturating arithmetic.
    package var spansItsElements: Bool {
        var span: UInt = 1
        for (step, extent) in [(stepN, batch), (stepD, inD), (stepH, inH), (stepW, inW), (stepC, channels)] where extent > 1 {
            if step == 0 { return false }
            let (reach, overflow) = step.magnitude.multipliedReportingOverflow(by: UInt(extent - 1))
            let (sum, more) = span.addingReportingOverflow(reach)
            span = overflow || more ? UInt.max : sum
        }
        return span >= UInt(inputElements)
    }

    /// An average's divisor along one axis for output index `o` (see `AverageDivisor`).
    @inlinable package func divisor(_ o: Int, stride: Int, padding: Int, kernel: Int, length: Int) -> Int {
        let start = o * stride - padding
        switch divisor {
        case .window: return kernel
        case .paddedInput: return Swift.min(start + kernel, length + padding) - start
        case .input: return Swift.max(0, Swift.min(start + kernel, length) - Swift.max(start, 0))
        }
    }

    /// The output indices along one axis whose divisor is the whole kernel; outside them an
    /// average's outputs must be divided by another count. Windows o of `kernel` taps starting
    /// at o * stride - padding, `outputs` of them over `length` input positions.
    @inlinable package func fullDivisors(stride: Int, padding: Int, kernel: Int, length: Int, outputs: Int) -> Range<Int> {
        switch divisor {
        case .window: return 0..<outputs
        case .paddedInput:
            // o * stride - padding + kernel <= length + padding.
            let room = length + 2 * padding - kernel
            return 0..<(room < 0 ? 0 : Swift.min(outputs, room / stride + 1))
        case .input: return windowsInside(stride: stride, padding: padding, kernel: kernel, length: length, outputs: outputs)
        }
    }

    /// Per axis (D, H, W), the outputs whose divisor is the whole kernel.
    package var fullDivisorOutputs: (d: Range<Int>, h: Range<Int>, w: Range<Int>) {
        (fullDivisors(stride: strideD, padding: padD, kernel: kernelD, length: inD, outputs: outD),
         fullDivisors(stride: strideH, padding: padH, kernel: kernelH, length: inH, outputs: outH),
         fullDivisors(stride: strideW, padding: padW, kernel: kernelW, length: inW, outputs: outW))
    }

    /// Whether some output's divisor is not `windowSize`.
    package var divisorDiffers: Bool {
        let full = fullDivisorOutputs
        return full.d.count != outD || full.h.count != outH || full.w.count != outW
    }
    /// Input elements, as the shape says (a broadcast view may hold fewer in memory).
    @inlinable package var inputElements: Int { batch * inD * inH * inW * channels }
    package var kernelDescription: String { "(\(kernelD), \(kernelH), \(kernelW))" }
    package var paddingDescription: String { "(\(padD), \(padH), \(padW))" }
    /// Output positions (n, od, oh, ow); each holds `channels` values.
    @inlinable package var pixels: Int { batch * outD * outH * outW }
}

extension PoolGeometry {
    /// A 2-d pooling (one input and output plane, no D window) relabelled so that its rows
    /// are planes of one row: D takes H's extents, window, stride, padding and step, H is one
    /// row. The outputs keep their order in memory (row oh of entry n is plane oh of entry n).
    /// H's step is never used (one row), but says whether a plane is dense (`hasDenseRows`):
    /// a row's length where its positions are. (Here, not in the kernels: code in the kernel
    /// modules is built for the CPU level that runs it, and a type's extension there would be
    /// outside the run-time-chosen symbols `make test` checks.)
    package var rowsAsPlanes: PoolGeometry {
        var g = self
        (g.inD, g.inH) = (inH, 1)
        (g.outD, g.outH) = (outH, 1)
        (g.kernelD, g.kernelH) = (kernelH, 1)
        (g.strideD, g.strideH) = (strideH, 1)
        (g.padD, g.padH) = (padH, 0)
        // Fits: the input's element count was checked.
        (g.stepD, g.stepH) = (stepH, stepC == 1 && stepW == channels ? inW * channels : 0)
        return g
    }
}

/// The output indices along one axis whose windows lie wholly in the input: windows o of
/// `kernel` taps starting at o * stride - padding, `outputs` of them over `length` positions.
@inlinable
package func windowsInside(stride: Int, padding: Int, kernel: Int, length: Int, outputs: Int) -> Range<Int> {
    // o * stride >= padding and o * stride - padding + kernel <= length.
    let lower = Swift.min(outputs, (padding + stride - 1) / stride)
    let room = length + padding - kernel
    let upper = room < 0 ? 0 : Swift.min(outputs, room / stride + 1)
    return lower..<Swift.max(lower, upper)
}

/// The in-bounds part [lower, upper) of the window at output index `o` on one axis;
/// empty when the window lies entirely in padding.
@inlinable @inline(__always)
package func windowBounds(_ o: Int, stride: Int, padding: Int, kernel: Int, length: Int) -> (Int, Int) {
    let start = o * stride - padding
    return (max(start, 0), min(start + kernel, length))
}

/// The positions along one axis that windows o + 1 ... o + count read and windows up to o do
/// not, within `within` (and the input): those a pass fetches ahead while it reduces window o
/// (or a pair ending at o). Exactly that set where consecutive windows touch or overlap, or
/// count is 1; with gaps between windows, the gaps between the `count` windows too.
@inlinable
package func positionsAhead(after o: Int, count: Int, stride: Int, padding: Int, kernel: Int, length: Int,
                            within: Range<Int>) -> Range<Int> {
    let lower = max(o * stride - padding + kernel, (o + 1) * stride - padding, within.lowerBound, 0)
    let upper = min((o + count) * stride - padding + kernel, length, within.upperBound)
    return lower..<max(lower, upper)
}
