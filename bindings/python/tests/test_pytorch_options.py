"""PyTorch's pooling options beyond MLX, ceil_mode and count_include_pad: output shapes, values
and gradients against PyTorch itself and a float64 window-by-window reference, in process,
through the nn classes, tidepool.torch's autograd, and on the daemon."""

import itertools

import numpy as np
import pytest

import tidepool
from conftest import BFLOAT16, INT_DTYPES, random_array

torch = pytest.importorskip("torch")
F = torch.nn.functional


def reference_pool(kind, x, k, s, p, ceil_mode=False, count_include_pad=True):
    """Float64, window by window, from PyTorch's definitions (ATen's pooling_output_shape and
    its average kernels): ceil_mode keeps a last window that starts before n + p; positions
    past the padding count as padding; an average divides by the window clipped to the padded
    input (count_include_pad=True) or to the input (False), an empty window giving 0."""
    d = x.ndim - 2
    lengths = []
    for n, kk, ss, pp in zip(x.shape[1:-1], k, s, p):
        length = (-(-(n + 2 * pp - kk) // ss) if ceil_mode else (n + 2 * pp - kk) // ss) + 1
        if ceil_mode and (length - 1) * ss >= n + pp:
            length -= 1
        lengths.append(length)
    x64 = x.astype(np.float64)
    out = np.zeros((x.shape[0], *lengths, x.shape[-1]))
    for index in itertools.product(*(range(n) for n in lengths)):
        starts = [o * ss - pp for o, ss, pp in zip(index, s, p)]
        lows = [max(a, 0) for a in starts]
        highs = [max(lo, min(a + kk, n)) for lo, a, kk, n in zip(lows, starts, k, x.shape[1:-1])]
        window = x64[(slice(None), *(slice(lo, hi) for lo, hi in zip(lows, highs)), slice(None))]
        axes = tuple(range(1, d + 1))
        if kind == "max":
            # A window wholly in padding (MLX's wide padding) holds only the padding value.
            lowest = -np.inf if np.issubdtype(x.dtype, np.floating) or x.dtype == BFLOAT16 else np.iinfo(x.dtype).min
            empty = any(hi <= lo for lo, hi in zip(lows, highs))
            out[(slice(None), *index, slice(None))] = lowest if empty else window.max(axis=axes)
            continue
        if count_include_pad:
            divisor = np.prod([min(a + kk, n + pp) - a for a, kk, n, pp in zip(starts, k, x.shape[1:-1], p)])
        else:
            divisor = np.prod([hi - lo for lo, hi in zip(lows, highs)])
        total = window.sum(axis=axes)
        out[(slice(None), *index, slice(None))] = total / divisor if divisor > 0 else 0
    return out


def torch_pool(kind, x, k, s, p, **options):
    """PyTorch's functional pooling of a channels-last numpy array, channels-last back."""
    d = x.ndim - 2
    t = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    y = getattr(F, f"{kind}_pool{d}d")(t, k, s, p, **options)
    return np.moveaxis(y.numpy(), 1, -1)


def random_case(rng, d, wide_padding=False):
    k = tuple(int(v) for v in rng.integers(1, 6, size=d))
    s = tuple(int(rng.integers(1, kk + 2)) for kk in k)
    p = tuple(int(rng.integers(0, (kk + 2 if wide_padding else kk // 2) + 1)) for kk in k)
    # At least the kernel: PyTorch's avg_pool3d refuses smaller inputs, padding or not (the
    # reference test below takes smaller ones).
    spatial = tuple(int(rng.integers(kk if not wide_padding else max(1, kk - 2 * pp), kk + 9)) for kk, pp in zip(k, p))
    return (2,) + spatial + (int(rng.integers(1, 6)),), k, s, p


OPTIONS = [(c, i) for c in (False, True) for i in (True, False)]


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("ceil_mode, count_include_pad", OPTIONS)
def test_float64_equals_pytorch_and_the_reference(d, ceil_mode, count_include_pad, rng):
    for _ in range(12):
        shape, k, s, p = random_case(rng, d)
        x = rng.standard_normal(shape)
        for kind in ("avg", "max"):
            options = {"ceil_mode": ceil_mode}
            if kind == "avg":
                options["count_include_pad"] = count_include_pad
            ours = getattr(tidepool, f"{kind}_pool{d}d")(x, k, s, p, **options)
            theirs = torch_pool(kind, x, k, s, p, **options)
            assert ours.shape == theirs.shape, (kind, shape, k, s, p, options)
            np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12, err_msg=f"{kind} {shape} {k} {s} {p} {options}")
            np.testing.assert_allclose(ours, reference_pool(kind, x, k, s, p, **options), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BFLOAT16] + INT_DTYPES)
def test_every_dtype_against_the_reference(dtype, rng):
    for _ in range(10):
        d = int(rng.integers(1, 4))
        shape, k, s, p = random_case(rng, d, wide_padding=bool(rng.integers(0, 3) == 0))
        x = random_array(rng, shape, np.dtype(dtype))
        ceil_mode, count_include_pad = OPTIONS[int(rng.integers(0, 4))]
        avg = getattr(tidepool, f"avg_pool{d}d")(x, k, s, p, ceil_mode, count_include_pad)
        expected = reference_pool("avg", x, k, s, p, ceil_mode, count_include_pad)
        rtol = {np.dtype(np.float16): 1e-3, BFLOAT16: 8e-3}.get(np.dtype(dtype), 1e-5)
        np.testing.assert_allclose(avg.astype(np.float64), expected, rtol=rtol, atol=1e-6,
                                   err_msg=f"{shape} {k} {s} {p} ceil_mode={ceil_mode} count_include_pad={count_include_pad}")
        biggest = getattr(tidepool, f"max_pool{d}d")(x, k, s, p, ceil_mode)
        assert biggest.dtype == x.dtype
        np.testing.assert_array_equal(biggest.astype(np.float64), reference_pool("max", x, k, s, p, ceil_mode))


def test_pytorch_values_by_hand():
    x = np.arange(1, 6, dtype=np.float32).reshape(1, 5, 1)
    assert tidepool.avg_pool1d(x, 2, 2, ceil_mode=True).ravel().tolist() == [1.5, 3.5, 5.0]
    assert tidepool.max_pool1d(x, 2, 2, ceil_mode=True).ravel().tolist() == [2, 4, 5]
    assert tidepool.avg_pool1d(x, 3, 1, 1, count_include_pad=False).ravel().tolist() == [1.5, 2, 3, 4, 4.5]
    # A pyramid level of an odd axis: 2x2 means, the last row and column of one element each.
    image = np.arange(9, dtype=np.float64).reshape(1, 3, 3, 1)
    level = tidepool.avg_pool2d(image, 2, ceil_mode=True, count_include_pad=False)
    assert level[0, :, :, 0].tolist() == [[2.0, 3.5], [6.5, 8.0]]


def test_layers_take_the_options_and_say_so():
    layer = tidepool.nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
    assert layer.ceil_mode and not layer.count_include_pad
    assert repr(layer) == "AvgPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True, count_include_pad=False)"
    assert repr(tidepool.nn.MaxPool1d(2)) == "MaxPool1d(kernel_size=(2,), stride=(2,), padding=(0,))"
    x = np.random.default_rng(3).standard_normal((2, 9, 10, 4)).astype(np.float32)
    np.testing.assert_allclose(layer(x), torch_pool("avg", x, 3, 2, 1, ceil_mode=True, count_include_pad=False),
                               rtol=1e-6, atol=1e-6)
    maximum = tidepool.nn.MaxPool3d(2, ceil_mode=True)
    y = np.random.default_rng(4).standard_normal((1, 3, 5, 7, 2)).astype(np.float32)
    np.testing.assert_array_equal(maximum(y), torch_pool("max", y, 2, 2, 0, ceil_mode=True))
    # The kept plan serves the second call of the same array kind: same answer.
    np.testing.assert_array_equal(maximum(y), maximum(y.copy()))


def test_bad_options_are_refused_by_name():
    x = np.zeros((1, 4, 1), np.float32)
    with pytest.raises(tidepool.InvalidArgumentError, match=r"\[avg_pool1d\] 'ceil_mode' must be True or False but got 'yes'"):
        tidepool.avg_pool1d(x, 2, ceil_mode="yes")
    with pytest.raises(tidepool.InvalidArgumentError, match=r"'count_include_pad' must be True or False but got 2"):
        tidepool.avg_pool1d(x, 2, count_include_pad=2)
    with pytest.raises(TypeError, match="count_include_pad"):
        tidepool.max_pool1d(x, 2, count_include_pad=False)
    with pytest.raises(tidepool.InvalidArgumentError, match="count_include_pad=False applies to average pooling only"):
        tidepool.functional.pool_flags("MaxPool1d", tidepool._lib.TP_POOL_MAX, False, False)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_torch_autograd_with_the_options_equals_torchs_own(d, rng):
    import tidepool.torch as ttorch

    for ceil_mode, count_include_pad in OPTIONS:
        shape, k, s, p = random_case(rng, d)
        x = np.round(rng.standard_normal(shape), 1)  # ties: PyTorch's gradient gives them to the first
        for kind in ("avg", "max"):
            options = {"ceil_mode": ceil_mode}
            if kind == "avg":
                options["count_include_pad"] = count_include_pad
            ours_x = torch.tensor(x, requires_grad=True)
            theirs_x = torch.tensor(np.moveaxis(x, -1, 1).copy(), requires_grad=True)
            extra = {"ties": "first"} if kind == "max" else {}
            ours = getattr(ttorch, f"{kind}_pool{d}d")(ours_x, k, s, p, **options, **extra)
            theirs = getattr(F, f"{kind}_pool{d}d")(theirs_x, k, s, p, **options)
            weights = torch.tensor(rng.standard_normal(ours.shape))
            (ours * weights).sum().backward()
            (theirs * weights.movedim(-1, 1)).sum().backward()
            message = f"{kind} {shape} {k} {s} {p} {options}"
            np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().movedim(1, -1).numpy(), rtol=1e-12,
                                       atol=1e-12, err_msg=message)
            np.testing.assert_allclose(ours_x.grad.numpy(), theirs_x.grad.movedim(1, -1).numpy(), rtol=1e-12,
                                       atol=1e-12, err_msg=message)


def test_the_daemon_runs_the_options(daemon, rng):
    with tidepool.connect(daemon.endpoint) as client:
        for d in (1, 2, 3):
            for ceil_mode, count_include_pad in OPTIONS:
                shape, k, s, p = random_case(rng, d)
                x = rng.standard_normal(shape).astype(np.float32)
                shared = client.empty(x.shape, x.dtype)
                shared[...] = x
                for source in (x, shared):
                    got = getattr(client, f"avg_pool{d}d")(source, k, s, p, ceil_mode, count_include_pad)
                    np.testing.assert_array_equal(got, getattr(tidepool, f"avg_pool{d}d")(x, k, s, p, ceil_mode,
                                                                                            count_include_pad))
                    got = getattr(client, f"max_pool{d}d")(source, k, s, p, ceil_mode)
                    np.testing.assert_array_equal(got, getattr(tidepool, f"max_pool{d}d")(x, k, s, p, ceil_mode))
                g = rng.standard_normal(got.shape).astype(np.float32)
                remote = getattr(client, f"avg_pool{d}d_vjp")(x, g, k, s, p, ceil_mode=ceil_mode,
                                                              count_include_pad=count_include_pad)
                local = getattr(tidepool, f"avg_pool{d}d_vjp")(x, g, k, s, p, ceil_mode=ceil_mode,
                                                               count_include_pad=count_include_pad)
                np.testing.assert_array_equal(remote, local)
        with pytest.raises(TypeError):
            client.max_pool1d(np.zeros((1, 4, 1), np.float32), 2, count_include_pad=False)
