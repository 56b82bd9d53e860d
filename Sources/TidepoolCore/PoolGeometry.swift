/// The pooling problem with 1-d and 2-d layers lifted to 3-d by leading unit axes
/// (kernel 1, stride 1, no padding), so one kernel serves all six layers.
struct PoolGeometry {
    var batch = 0, channels = 0
    var inD = 1, inH = 1, inW = 1
    var outD = 1, outH = 1, outW = 1
    var kernelD = 1, kernelH = 1, kernelW = 1
    var strideD = 1, strideH = 1, strideW = 1
    var padD = 0, padH = 0, padW = 0
    /// Input element strides of (N, D, H, W, C).
    var stepN = 0, stepD = 0, stepH = 0, stepW = 0, stepC = 1

    /// `desc` must be validated and `outputShape` computed from it and `input`.
    init(_ desc: PoolDescriptor, input: TensorView, outputShape: [Int]) {
        let lift = PoolDescriptor.maxSpatialDims - desc.spatialDims
        func lifted(_ values: [Int], _ fill: Int) -> [Int] { Array(repeating: fill, count: lift) + values }
        let spatialIn = lifted(Array(input.shape[1...desc.spatialDims]), 1)
        let spatialOut = lifted(Array(outputShape[1...desc.spatialDims]), 1)
        let kernel = lifted(desc.kernelSize, 1), stride = lifted(desc.stride, 1), padding = lifted(desc.padding, 0)
        let steps = lifted(Array(input.strides[1...desc.spatialDims]), 0)
        batch = input.shape[0]
        channels = input.shape[desc.spatialDims + 1]
        (inD, inH, inW) = (spatialIn[0], spatialIn[1], spatialIn[2])
        (outD, outH, outW) = (spatialOut[0], spatialOut[1], spatialOut[2])
        (kernelD, kernelH, kernelW) = (kernel[0], kernel[1], kernel[2])
        (strideD, strideH, strideW) = (stride[0], stride[1], stride[2])
        (padD, padH, padW) = (padding[0], padding[1], padding[2])
        (stepN, stepD, stepH, stepW) = (input.strides[0], steps[0], steps[1], steps[2])
        stepC = input.strides[desc.spatialDims + 1]
    }

    var windowSize: Int { kernelD * kernelH * kernelW }
    /// Output positions (n, od, oh, ow); each holds `channels` values.
    var pixels: Int { batch * outD * outH * outW }
}

/// The in-bounds part [lower, upper) of the window at output index `o` on one axis;
/// empty when the window lies entirely in padding.
@inline(__always)
func windowBounds(_ o: Int, stride: Int, padding: Int, kernel: Int, length: Int) -> (Int, Int) {
    let start = o * stride - padding
    return (max(start, 0), min(start + kernel, length))
}
