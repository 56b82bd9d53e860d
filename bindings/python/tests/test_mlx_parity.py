"""Tidepool against real MLX: its documented examples, edge cases, and a few hundred random
configurations of all six layers over every dtype."""

import numpy as np
import pytest

import tidepool
from conftest import (
    ALL_DTYPES, BFLOAT16, FLOAT_DTYPES, LAYERS, assert_pool_close, mlx_pool, random_array,
    reference_pool, tidepool_pool, tolerance,
)


@pytest.mark.parametrize(
    "kind, d, shape, expected_shape",
    [
        # The examples of MLX's docstrings.
        ("Max", 1, (4, 16, 5), (4, 8, 5)),
        ("Avg", 1, (4, 16, 5), (4, 8, 5)),
        ("Max", 2, (8, 32, 32, 4), (8, 16, 16, 4)),
        ("Avg", 2, (8, 32, 32, 4), (8, 16, 16, 4)),
        ("Max", 3, (8, 16, 32, 32, 4), (8, 8, 16, 16, 4)),
        ("Avg", 3, (8, 16, 32, 32, 4), (8, 8, 16, 16, 4)),
    ],
)
def test_documented_examples(kind, d, shape, expected_shape, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    ours = tidepool_pool(kind, d, x, kernel_size=2, stride=2)
    theirs = mlx_pool(kind, d, x, kernel_size=2, stride=2)
    assert ours.shape == expected_shape
    assert ours.dtype == theirs.dtype == np.float32
    assert_pool_close(kind, ours, theirs, np.float32)


def test_documented_corner_of_padded_average(rng):
    x = rng.standard_normal((1, 4, 4, 4, 3)).astype(np.float32)
    y = tidepool.nn.AvgPool3d(2, 2, padding=1)(x)
    np.testing.assert_array_equal(y[0, 0, 0, 0], x[0, 0, 0, 0] / 8)


EDGE_CASES = [
    # (d, shape, kernel_size, stride, padding)
    (1, (2, 7, 3), 3, 1, 2),            # padding wider than half the kernel
    (1, (1, 2, 1), 3, 1, 5),            # windows entirely in padding
    (1, (2, 5, 2), 5, 5, 0),            # one window
    (1, (2, 2, 2), 5, 5, 0),            # empty output: (2 - 5) // 5 + 1 == 0
    (2, (2, 5, 6, 3), 1, 1, 0),         # kernel 1
    (2, (2, 9, 11, 2), (2, 1), (4, 5), 0),  # stride larger than kernel
    (2, (1, 4, 4, 1), (3, 2), (1, 3), (2, 1)),
    (3, (2, 5, 4, 6, 2), (3, 2, 2), (2, 1, 2), (1, 1, 0)),
    (3, (1, 3, 3, 3, 2), 2, 1, 3),
    (3, (0, 4, 4, 4, 2), 2, 2, 0),      # empty batch
    (3, (2, 4, 4, 4, 0), 2, 2, 0),      # no channels
    (2, (2, 0, 3, 2), 1, 1, (1, 0)),    # empty spatial axis, padded
]


@pytest.mark.parametrize("kind", ["Avg", "Max"])
@pytest.mark.parametrize("d, shape, kernel_size, stride, padding", EDGE_CASES)
def test_edge_cases_match_mlx(kind, d, shape, kernel_size, stride, padding, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    ours = tidepool_pool(kind, d, x, kernel_size, stride, padding)
    theirs = mlx_pool(kind, d, x, kernel_size, stride, padding)
    assert_pool_close(kind, ours, theirs, np.float32)
    assert_pool_close(kind, ours, reference_pool(kind, d, x, kernel_size, stride, padding), np.float32)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("kind, d", LAYERS)
def test_every_dtype_matches_mlx(kind, d, dtype, rng):
    shape = (2,) + (5, 6, 7)[:d] + (3,)
    x = random_array(rng, shape, dtype)
    ours = tidepool_pool(kind, d, x, 3, 2, 0)
    theirs = mlx_pool(kind, d, x, 3, 2, 0)
    assert ours.dtype == theirs.dtype
    assert ours.dtype == (dtype if kind == "Max" or dtype in FLOAT_DTYPES else np.float32)
    if kind == "Avg" and dtype in (np.dtype(np.float16), BFLOAT16):
        # MLX rounds its half-precision sums differently; both sit within a rounding of the
        # exact mean, so each is checked against float64 and the two against each other.
        assert_pool_close(kind, ours, reference_pool(kind, d, x, 3, 2, 0), dtype)
        rtol, atol = tolerance(dtype)
        np.testing.assert_allclose(ours.astype(np.float64), theirs.astype(np.float64), rtol=2 * rtol, atol=2 * atol)
    else:
        assert_pool_close(kind, ours, theirs, dtype)


def random_configuration(rng, d):
    kernel = tuple(int(v) for v in rng.integers(1, 5, d))
    stride = tuple(int(v) for v in rng.integers(1, 5, d))
    padding = tuple(int(v) for v in rng.integers(0, 4, d))
    spatial = tuple(int(v) for v in rng.integers(1, 9, d))
    shape = (int(rng.integers(1, 4)),) + spatial + (int(rng.integers(1, 6)),)
    # MLX's rule; configurations with a negative output length are error cases, tested apart.
    valid = all(n + 2 * p - k >= -s for n, k, s, p in zip(spatial, kernel, stride, padding))
    return shape, kernel, stride, padding, valid


@pytest.mark.parametrize("seed", range(30))
def test_random_configurations_match_mlx(seed):
    """30 seeds x 6 layers x 2 draws = 360 random configurations, dtypes drawn too."""
    rng = np.random.default_rng(seed)
    checked = 0
    for kind, d in LAYERS:
        for _ in range(2):
            shape, kernel, stride, padding, valid = random_configuration(rng, d)
            dtype = ALL_DTYPES[int(rng.integers(len(ALL_DTYPES)))]
            x = random_array(rng, shape, dtype)
            if not valid:
                with pytest.raises(ValueError, match="negative"):
                    tidepool_pool(kind, d, x, kernel, stride, padding)
                continue
            ours = tidepool_pool(kind, d, x, kernel, stride, padding)
            expected = reference_pool(kind, d, x, kernel, stride, padding)
            assert_pool_close(kind, ours, expected, dtype)
            mlx_quirk = kind == "Max" and any(padding) and dtype in MLX_MAX_PADDING_QUIRK
            if not mlx_quirk and not (kind == "Avg" and dtype in (np.float16, BFLOAT16)):
                assert_pool_close(kind, ours, mlx_pool(kind, d, x, kernel, stride, padding), dtype)
            checked += 1
    assert checked >= 6


# MLX casts its -inf padding to the integer type: 0 for 8/16-bit types, 2^63 for uint64.
# Tidepool pads with the type's lowest value (docs/semantics.md).
MLX_MAX_PADDING_QUIRK = (np.int8, np.int16, np.uint64)


@pytest.mark.parametrize("dtype", MLX_MAX_PADDING_QUIRK)
def test_integer_max_padding_differs_from_mlx_as_documented(dtype):
    low = np.iinfo(dtype).min
    x = np.array([[[5], [3], [7]]], dtype=dtype) - (0 if low == 0 else 10)
    ours = tidepool.nn.MaxPool1d(1, 1, padding=1)(x)
    theirs = mlx_pool("Max", 1, x, 1, 1, 1)
    np.testing.assert_array_equal(ours[0, :, 0], [low, *x[0, :, 0], low])
    assert theirs[0, 0, 0] != low


@pytest.mark.parametrize("dtype", [np.float16, BFLOAT16])
def test_half_float_max_of_signed_zeros_differs_from_mlx_as_documented(dtype):
    # Tidepool compares 16-bit floats in a total order where -0 < +0; MLX keeps the first of
    # equal values. Every other value, NaN and the infinities included, matches (tests above).
    x = np.array([[[-0.0], [0.0], [0.0], [-0.0]]], dtype=dtype)
    ours = tidepool.nn.MaxPool1d(2)(x)
    theirs = mlx_pool("Max", 1, x, 2, 2, 0)
    assert not np.signbit(ours.astype(np.float32)).any()
    assert np.signbit(theirs.astype(np.float32)).ravel().tolist() == [True, False]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_average_of_negative_zeros_has_mlx_sign(dtype, d):
    # MLX sums a window from +0, so a window of -0s alone averages to +0, padded or not; a
    # window of one element it passes through, -0 included. Inputs mostly -0 (a few normals),
    # windows at and between the stride, many channels and few, so that rows run subsampled and
    # at the stride, by block scans and tap by tap.
    rng = np.random.default_rng(d)
    side = {1: 40, 2: 11, 3: 7}[d]
    for channels in (1, 3, 8, 33):
        x = np.full((2,) + (side,) * d + (channels,), -0.0, dtype=np.float32)
        x[rng.integers(0, 12, size=x.shape) == 0] = 1.5
        x = x.astype(dtype)
        for kernel, stride, padding in [(1, 1, 0), (2, 2, 1), (3, 1, 1), (3, 2, 0), (7, 1, 3), (5, 3, 2), (6, 6, 0)]:
            ours = tidepool_pool("Avg", d, x, kernel, stride, padding).astype(np.float32)
            theirs = mlx_pool("Avg", d, x, kernel, stride, padding).astype(np.float32)
            zeros = theirs == 0
            assert np.signbit(theirs[zeros]).any() == (kernel == 1)
            np.testing.assert_array_equal(np.signbit(ours[zeros]), np.signbit(theirs[zeros]),
                                          err_msg=f"k{kernel} s{stride} p{padding} C={channels}")


@pytest.mark.parametrize("kind", ["Avg", "Max"])
@pytest.mark.parametrize("d", [1, 2])
def test_gradient_of_negative_zero_where_windows_tile_differs_from_mlx_as_documented(kind, d):
    # Where windows tile the input exactly MLX's gradient passes a -0 cotangent through (its
    # vjp scatters nothing there); everywhere else it sums shares from +0, as Tidepool does.
    import mlx.core as mx
    import mlx.nn as mnn

    import tidepool.gradients as grads

    rng = np.random.default_rng(5)
    layer = getattr(mnn, f"{kind}Pool{d}d")
    vjp = getattr(grads, f"{kind.lower()}_pool{d}d_vjp")
    for size, kernel, stride, tiles in [(12, 3, 3, True), (12, 2, 2, True), (12, 5, 5, False), (12, 3, 2, False)]:
        x = rng.random((1,) + (size,) * d + (2,)).astype(np.float32)
        out = (size - kernel) // stride + 1
        cotangent = np.full((1,) + (out,) * d + (2,), -0.0, np.float32)
        pool = layer(kernel, stride)
        _, (theirs,) = mx.vjp(lambda a: pool(a), [mx.array(x)], [mx.array(cotangent)])
        theirs = np.array(theirs)
        ours = vjp(x, cotangent, kernel, stride)
        assert (theirs == 0).all() and (ours == 0).all()
        assert np.signbit(theirs).all() if tiles else not np.signbit(theirs).any()
        assert not np.signbit(ours).any()


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64, np.uint64])
def test_wide_integer_average_is_exact_where_mlx_wraps(dtype):
    # MLX sums 32/64-bit integers in their own type, so a large window sum wraps around;
    # Tidepool's mean is exact, rounded once to float32.
    big = np.iinfo(dtype).max
    x = np.array([[[big], [big]]], dtype=dtype)
    ours = tidepool.nn.AvgPool1d(2)(x)
    theirs = mlx_pool("Avg", 1, x, 2)
    assert ours[0, 0, 0] == np.float32(big)
    assert theirs[0, 0, 0] != np.float32(big)


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 1, 1), (4, 4, 0), (5, 2, 2), (7, 3, 3), (8, 1, 0), (9, 4, 4)])
def test_float32_average_1d_is_bit_identical_to_mlx(k, s, p, rng):
    # Along one axis Tidepool adds a window left to right and multiplies by 1/n, as MLX does;
    # over 2 or 3 axes it adds axis by axis (a different order), so only 1-d is bit-exact.
    x = rng.standard_normal((3, 64, 5)).astype(np.float32)
    assert tidepool.avg_pool1d(x, k, s, p).tobytes() == mlx_pool("Avg", 1, x, k, s, p).tobytes()


@pytest.mark.parametrize("kind", ["Avg", "Max"])
def test_large_outputs_match_mlx(kind, rng):
    # 4 MB of output with 32 channels: the engine streams it to memory (non-temporal stores).
    x = rng.standard_normal((2, 16, 32, 32, 32)).astype(np.float32)
    assert_pool_close(kind, tidepool_pool(kind, 3, x, 3, 1, 1), mlx_pool(kind, 3, x, 3, 1, 1), np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BFLOAT16, np.float64])
def test_nan_and_infinities_match_mlx(dtype):
    x = np.array([[[1.0], [np.nan], [3.0], [-np.inf], [np.inf], [-1.0], [-np.nan], [-np.inf], [-5.0], [-7.0]]],
                 dtype=np.float32).astype(dtype)
    for kind in ("Avg", "Max"):
        for padding in (0, 1):
            ours = tidepool_pool(kind, 1, x, 2, padding=padding)
            theirs = mlx_pool(kind, 1, x, 2, padding=padding)
            assert ours.dtype == theirs.dtype
            # (numpy's NaN-aware comparison does not know ml_dtypes' bfloat16)
            np.testing.assert_array_equal(ours.astype(np.float64), theirs.astype(np.float64))


def test_mlx_arrays_as_input(rng):
    import mlx.core as mx

    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    for dtype in (mx.float32, mx.bfloat16, mx.int32):
        arr = mx.array(x).astype(dtype)
        ours = tidepool.max_pool2d(arr, 2)
        theirs = mlx_pool("Max", 2, arr, 2)
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours.astype(np.float64), theirs.astype(np.float64))


def test_lists_as_input():
    y = tidepool.avg_pool1d([[[1.0], [2.0], [3.0], [4.0]]], 2)
    np.testing.assert_array_equal(y, [[[1.5], [3.5]]])
    assert y.dtype == np.float64  # numpy's default float


def test_booleans_pool_like_mlx():
    x = np.array([[[True], [False], [False], [False]]])
    np.testing.assert_array_equal(tidepool.max_pool1d(x, 2), mlx_pool("Max", 1, x, 2))
    np.testing.assert_array_equal(tidepool.avg_pool1d(x, 2), mlx_pool("Avg", 1, x, 2))


def left_fold_max(x, kernel, padding):
    """Max over each stride-1 window of a channels-last array, folded over the window's
    positions in (d, h, w) order from -inf: a NaN always wins (the last one seen), a value
    only when greater (the first of equal values stays, so the first of -0 and +0), as MLX's
    max reduces. np.where copies the chosen bits, payloads and signs included."""
    d = len(kernel)
    padded = np.pad(x, [(0, 0)] + [(p, p) for p in padding] + [(0, 0)], constant_values=-np.inf)
    out_shape = [padded.shape[1 + i] - kernel[i] + 1 for i in range(d)]
    state = np.full((x.shape[0], *out_shape, x.shape[-1]), -np.inf, dtype=x.dtype)
    for offset in np.ndindex(*kernel):
        b = padded[(slice(None),) + tuple(slice(o, o + n) for o, n in zip(offset, out_shape))]
        state = np.where(np.isnan(b) | (b > state), b, state)
    return state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d, kernel", [(1, 7), (1, 11), (2, 7), (3, 5)])
def test_float_max_keeps_first_zero_and_last_nan_bit_for_bit(dtype, d, kernel):
    # Windows of these sizes reduce by doubling along W and block scans along H and D, which
    # give the left fold's bits (the smaller windows' pairs merge in another order). Rows of 16
    # channels run through the vectorised merges of the release build; an exact merge keeps
    # the first of -0 and +0 and the last NaN's payload and sign, where x86's maxps alone
    # would keep the second operand of equal or unordered values.
    rng = np.random.default_rng(kernel * 10 + d)
    side = {1: 300, 2: 40, 3: 12}[d]
    shape = (2,) + (side,) * d + (16,)
    bits = np.uint32 if dtype == np.float32 else np.uint64
    choice = rng.integers(0, 8, size=shape)
    x = (rng.integers(0, 5, size=shape) - 4).astype(dtype)  # many ties, all <= 0
    x[choice == 0] = 0.0
    x[choice == 1] = -0.0
    x[choice == 2] = -np.inf
    nans = choice == 3
    quiet = bits(0x7FC00000) if dtype == np.float32 else bits(0x7FF8000000000000)
    sign = bits(1) << bits(8 * np.dtype(dtype).itemsize - 1)
    payloads = rng.integers(1, 61, size=int(nans.sum())).astype(bits) | quiet
    payloads[rng.integers(0, 2, size=payloads.size) == 1] |= sign
    x.view(bits)[nans] = payloads
    layer = getattr(tidepool.nn, f"MaxPool{d}d")(kernel, 1, kernel // 2)
    ours = layer(x)
    expected = left_fold_max(x, (kernel,) * d, (kernel // 2,) * d)
    differ = ours.view(bits) != expected.view(bits)
    assert not differ.any(), f"{int(differ.sum())} of {differ.size} outputs differ in their bits"
    assert np.isnan(ours).any() and (np.signbit(ours) & (ours == 0)).any()
