/// A pooling layer, as MLX's constructors take it: one kernel/stride/padding entry per
/// spatial axis, in the order (depth, height, width) / (height, width) / (length), and
/// PyTorch's two options beyond MLX (both off by default, which is MLX's behaviour).
public struct PoolDescriptor: Sendable, Equatable, CustomStringConvertible {
    public static let maxSpatialDims = 3

    public var kind: PoolKind
    public var kernelSize: [Int]
    public var stride: [Int]
    public var padding: [Int]
    /// PyTorch's `ceil_mode`: output lengths rounded up, so that a last window reaching past
    /// the padded input is kept when it starts inside the input or its left padding
    /// (`outputShape`). Its positions past the padding count as padding.
    public var ceilMode: Bool
    /// PyTorch's `count_include_pad`, averages only. True (MLX's rule, the default): a window's
    /// sum is divided by its positions inside the padded input (the full window but for a
    /// ceil-mode window reaching past it, as PyTorch divides). False: by its positions inside
    /// the input; a window with none (padding wider than the kernel) averages to 0, as
    /// PyTorch's kernels give.
    public var countIncludePad: Bool

    /// `stride` defaults to `kernelSize` and `padding` to zero, as in MLX. Nothing is
    /// checked here; `validate()` (called by every operation) names what is wrong.
    public init(kind: PoolKind, kernelSize: [Int], stride: [Int]? = nil, padding: [Int]? = nil,
                ceilMode: Bool = false, countIncludePad: Bool = true) {
        self.kind = kind
        self.kernelSize = kernelSize
        self.stride = stride ?? kernelSize
        self.padding = padding ?? Array(repeating: 0, count: kernelSize.count)
        self.ceilMode = ceilMode
        self.countIncludePad = countIncludePad
    }

    public var spatialDims: Int { kernelSize.count }

    public var description: String {
        "\(kind == .average ? "AvgPool" : "MaxPool")\(spatialDims)d(kernel_size=\(pythonTuple(kernelSize)), "
            + "stride=\(pythonTuple(stride)), padding=\(pythonTuple(padding))"
            + (ceilMode ? ", ceil_mode=True" : "") + (countIncludePad ? "" : ", count_include_pad=False") + ")"
    }

    public func validate() throws {
        guard (1...Self.maxSpatialDims).contains(spatialDims) else {
            throw PoolError.invalid("pooling must have 1, 2 or 3 spatial axes but kernel_size has \(spatialDims) entries")
        }
        for (name, values) in [("stride", stride), ("padding", padding)] where values.count != spatialDims {
            throw PoolError.invalid(
                "\(name) must have one entry per spatial axis (\(spatialDims)) but got \(pythonTuple(values))")
        }
        if kernelSize.contains(where: { $0 <= 0 }) {
            throw PoolError.invalid("kernel_size must be positive but got \(pythonTuple(kernelSize))")
        }
        if stride.contains(where: { $0 <= 0 }) {
            throw PoolError.invalid("stride must be positive but got \(pythonTuple(stride))")
        }
        if padding.contains(where: { $0 < 0 }) {
            throw PoolError.invalid("padding must be non-negative but got \(pythonTuple(padding))")
        }
        _ = try Checked.product(kernelSize, "window size (product of kernel_size \(pythonTuple(kernelSize)))")
        if kind == .max && !countIncludePad {
            throw PoolError.invalid("count_include_pad=False applies to average pooling only; max pooling ignores padding already")
        }
    }

    /// Names of the spatial axes, for messages.
    public var axisNames: [String] {
        switch spatialDims {
        case 1: return ["length"]
        case 2: return ["height", "width"]
        default: return Array(["depth", "height", "width"].suffix(spatialDims))
        }
    }

    /// The layout an input must have, for messages: "(N, D, H, W, C)".
    public var inputLayout: String {
        let letters = spatialDims == 1 ? ["L"] : Array(["D", "H", "W"].suffix(spatialDims))
        return "(" + (["N"] + letters + ["C"]).joined(separator: ", ") + ")"
    }

    /// MLX's rule: per spatial axis floor((n + 2p - k) / s) + 1, batch and channels kept.
    /// With `ceilMode`, PyTorch's: ceil((n + 2p - k) / s) + 1, less one when that last window
    /// would start at or past n + p (in the right padding). Zero gives an empty output;
    /// negative is an error.
    public func outputShape(inputShape: [Int]) throws -> [Int] {
        try validate()
        guard inputShape.count == spatialDims + 2 else {
            throw PoolError.shape(
                "input must have rank \(spatialDims + 2) \(inputLayout) for \(spatialDims)-d pooling "
                    + "but has rank \(inputShape.count) with shape \(pythonTuple(inputShape))")
        }
        if let axis = inputShape.firstIndex(where: { $0 < 0 }) {
            throw PoolError.invalid("input shape must be non-negative but shape[\(axis)] is \(inputShape[axis])")
        }
        var result = [inputShape[0]]
        for axis in 0..<spatialDims {
            let n = inputShape[axis + 1], k = kernelSize[axis], s = stride[axis], p = padding[axis]
            let paddedLength = try Checked.add(n, try Checked.multiply(2, p, "padding"), "padded \(axisNames[axis])")
            // paddedLength >= 0 and k > 0, so span >= -Int.max and -span cannot overflow.
            // Floor division as Python's //, written so that no step can overflow (the usual
            // -span + s - 1 does for a stride near 2^63): for span < 0,
            // floor(span / s) + 1 = -((-span - 1) / s).
            let span = paddedLength - k
            var length: Int
            if ceilMode {
                // ceil(span / s) + 1 without overflow: ceil(a / s) = -floor(-a / s).
                length = (span >= 0 ? span / s + (span % s == 0 ? 0 : 1) : -((-span) / s)) + 1
                // PyTorch drops a last window that would start in the right padding:
                // (length - 1) * s >= n + p, written as length - 1 >= ceil((n + p) / s).
                let reach = n + p
                if length > 0 && length - 1 >= reach / s + (reach % s == 0 ? 0 : 1) { length -= 1 }
            } else {
                length = span >= 0 ? span / s + 1 : -((-span - 1) / s)
            }
            guard length >= 0 else {
                let rule = ceilMode ? "ceil" : "floor"
                throw PoolError.shape(
                    "output \(axisNames[axis]) would be negative: \(rule)((\(n) + 2*\(p) - \(k)) / \(s)) + 1 = \(length); "
                        + "kernel_size \(k) is larger than the padded input")
            }
            result.append(length)
        }
        result.append(inputShape[spatialDims + 1])
        return result
    }
}

/// "(3, 3, 3)", "(3,)": Python's tuple spelling, as MLX's messages and reprs use.
public func pythonTuple(_ values: [Int]) -> String {
    values.count == 1 ? "(\(values[0]),)" : "(" + values.map(String.init).joined(separator: ", ") + ")"
}
