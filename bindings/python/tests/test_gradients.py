"""The backward pass (tidepool.*_vjp) against MLX's own gradients (mx.vjp of mlx.nn's layers),
PyTorch's for ties="first", and a float64 definition: documented examples, edges, every float
dtype and random configurations of the six layers."""

import numpy as np
import pytest

import tidepool
from conftest import BFLOAT16, FLOAT_DTYPES, LAYERS, from_mlx, to_mlx, tolerance
from test_mlx_parity import EDGE_CASES

mx = pytest.importorskip("mlx.core")
mnn = pytest.importorskip("mlx.nn")


def vjp_name(kind, d):
    return f"{kind.lower()}_pool{d}d_vjp"


def ours(kind, d, x, g, kernel_size, stride=None, padding=0, **options):
    return getattr(tidepool, vjp_name(kind, d))(x, g, kernel_size, stride, padding, **options)


def mlx_vjp(kind, d, x, g, kernel_size, stride=None, padding=0):
    layer = getattr(mnn, f"{kind}Pool{d}d")(kernel_size, stride, padding)
    _, (grad,) = mx.vjp(lambda a: layer(a), [to_mlx(x)], [to_mlx(g)])
    return from_mlx(grad)


def forward_shape(kind, d, x, kernel_size, stride, padding):
    return getattr(tidepool, f"{kind.lower()}_pool{d}d")(x, kernel_size, stride, padding).shape


def assert_gradient_close(actual, expected, dtype, terms=1.0):
    """NaN where the other has NaN; otherwise within the dtype's tolerance of a sum of
    `terms` shares (MLX sums in the input's dtype, Tidepool in float32)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    rtol, atol = tolerance(dtype)
    scale = max(1.0, float(np.nanmax(np.abs(e), initial=0)))
    np.testing.assert_allclose(a, e, rtol=rtol * 4 * terms, atol=atol + rtol * 4 * terms * scale, equal_nan=True)


@pytest.mark.parametrize("values, k, s, p, expected", [
    ([1, 3, 3, 2], 2, 1, 0, [0, 1.5, 1.5, 0]),
    ([np.nan, 3, 1, 2], 2, 1, 0, [np.nan, np.nan, 0, 1]),
    ([-np.inf, -np.inf, 1, 2], 2, 2, 1, [0.5, 0, 1, 1]),
])
def test_the_issues_examples(values, k, s, p, expected):
    x = np.array(values, np.float32).reshape(1, -1, 1)
    g = np.ones(forward_shape("Max", 1, x, k, s, p), np.float32)
    got = tidepool.max_pool1d_vjp(x, g, k, s, p).reshape(-1)
    np.testing.assert_array_equal(got, np.array(expected, np.float32))
    np.testing.assert_array_equal(got, mlx_vjp("Max", 1, x, g, k, s, p).reshape(-1))


@pytest.mark.parametrize("kind", ["Avg", "Max"])
@pytest.mark.parametrize("d, shape, kernel_size, stride, padding", EDGE_CASES)
def test_edge_cases_match_mlx(kind, d, shape, kernel_size, stride, padding, rng):
    x = rng.standard_normal(shape).astype(np.float32)
    if x.size:
        x.flat[rng.integers(0, x.size, size=max(1, x.size // 7))] = -np.inf
        x.flat[rng.integers(0, x.size, size=max(1, x.size // 11))] = 2.0  # ties
        if kind == "Max" and x.size > 4:
            x.flat[rng.integers(0, x.size)] = np.nan
    g = rng.standard_normal(forward_shape(kind, d, x, kernel_size, stride, padding)).astype(np.float32)
    assert_gradient_close(ours(kind, d, x, g, kernel_size, stride, padding),
                          mlx_vjp(kind, d, x, g, kernel_size, stride, padding), np.float32)


def random_configuration(rng, d):
    k = tuple(int(v) for v in rng.integers(1, 5, size=d))
    s = tuple(int(rng.integers(1, kk + 2)) for kk in k)
    p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
    spatial = tuple(int(rng.integers(max(1, kk - 2 * pp), kk + 12 // d + 3)) for kk, pp in zip(k, p))
    shape = (int(rng.integers(1, 3)),) + spatial + (int(rng.choice([1, 2, 3, 5, 8])),)
    return shape, k, s, p


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("kind, d", LAYERS)
def test_random_configurations_match_mlx(kind, d, dtype, rng):
    for _ in range(12):
        shape, k, s, p = random_configuration(rng, d)
        x = rng.standard_normal(shape)
        if rng.random() < 0.5:
            x = np.round(x)  # ties
        x = x.astype(dtype)
        g = rng.standard_normal(forward_shape(kind, d, x, k, s, p)).astype(dtype)
        windows = float(np.prod([-(-kk // ss) for kk, ss in zip(k, s)]))
        assert_gradient_close(ours(kind, d, x, g, k, s, p), mlx_vjp(kind, d, x, g, k, s, p), dtype, terms=windows)


def test_strided_views_are_read_in_place_and_threads_do_not_change_bits(rng):
    big = rng.standard_normal((2, 9, 10, 8)).astype(np.float32)
    x = big[:, ::-1, :, ::2]  # reversed rows, every other channel
    g_big = rng.standard_normal((2, 9, 10, 8)).astype(np.float32)
    g = g_big[:, :, :, 1::2]  # MaxPool2d(3, 1, 1) keeps the shape
    expected = mlx_vjp("Max", 2, np.ascontiguousarray(x), np.ascontiguousarray(g), 3, 1, 1)
    results = []
    for threads in (1, 2, 5):
        tidepool.set_num_threads(threads)
        results.append(tidepool.max_pool2d_vjp(x, g, 3, 1, 1))
    tidepool.set_num_threads(0)
    assert all(r.tobytes() == results[0].tobytes() for r in results)
    assert_gradient_close(results[0], expected, np.float32)
    out = np.empty_like(results[0])
    assert tidepool.max_pool2d_vjp(x, g, 3, 1, 1, out=out) is out


MEMORY_CHILD = """
import resource, sys, numpy as np, tidepool
x = np.random.default_rng(0).standard_normal((1, 1024, 1024, 16)).astype(np.float32)
g = np.random.default_rng(1).standard_normal((1, 1024, 1024, 16)).astype(np.float32)
out = np.zeros_like(x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tidepool.max_pool2d_vjp(x, g, 3, 1, 1, ties=sys.argv[1], out=out)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, int(np.count_nonzero(out)))
"""


@pytest.mark.parametrize("ties", ["split", "first"])
def test_max_gradient_state_does_not_grow_with_the_image(ties):
    """The max's state (row, plane and window maxima) is kept for a band of rows, not a
    whole plane: on a 64 MiB image, whose planes of state would be 3-4 times that, the peak
    resident memory of a fresh process grows by a few MiB at most."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, ties], capture_output=True, text=True, timeout=120, check=True)
    grown_kib, nonzero = map(int, done.stdout.split())
    assert grown_kib < 16 * 1024, f"peak memory grew by {grown_kib} KiB"
    # Every window's maximum receives its share: about one element in 3 of a random image.
    assert nonzero > 1024 * 1024 * 16 // 8


def test_refusals_name_what_is_wrong():
    x = np.zeros((1, 4, 1), np.float32)
    g = np.zeros((1, 2, 1), np.float32)
    with pytest.raises(tidepool.InvalidArgumentError, match="floating-point inputs"):
        tidepool.max_pool1d_vjp(x.astype(np.int8), g.astype(np.int8), 2)
    with pytest.raises(tidepool.InvalidArgumentError, match="ties must be 'split'"):
        tidepool.max_pool1d_vjp(x, g, 2, ties="last")
    with pytest.raises(tidepool.InvalidArgumentError, match=r"grad_output shape must be \(1, 2, 1\)"):
        tidepool.max_pool1d_vjp(x, np.zeros((1, 3, 1), np.float32), 2)
    with pytest.raises(tidepool.InvalidArgumentError, match="grad_output dtype must be float32"):
        tidepool.avg_pool1d_vjp(x, g.astype(np.float64), 2)
    with pytest.raises(tidepool.InvalidArgumentError, match="cotangent must have 3 dimensions"):
        tidepool.avg_pool1d_vjp(x, g[0], 2)
    with pytest.raises(TypeError, match=r"^max_pool1d_vjp\(\) got an unexpected keyword argument 'return_indices'"):
        tidepool.max_pool1d_vjp(x, g, 2, return_indices=True)


def test_integer_gradients_are_refused_because_mlxs_are_casts():
    # What MLX returns for integers, the reason Tidepool refuses them: each window's share is
    # truncated to the integer type, and the gradient's dtype depends on whether windows overlap.
    layer = mnn.MaxPool1d(2, 2)
    x = mx.array([3, 3], dtype=mx.int8).reshape(1, 2, 1)
    _, (grad,) = mx.vjp(lambda a: layer(a), [x], [mx.ones((1, 1, 1), dtype=mx.int8)])
    overlapping = mnn.MaxPool1d(2, 1)
    y = mx.array([3, 3, 3, 3], dtype=mx.int8).reshape(1, 4, 1)
    _, (grad2,) = mx.vjp(lambda a: overlapping(a), [y], [mx.ones((1, 3, 1), dtype=mx.int8)])
    assert grad.dtype == mx.float32 and grad2.dtype == mx.int8
    assert grad2.tolist() == [[[0], [0], [0], [0]]]
    with pytest.raises(tidepool.InvalidArgumentError, match="gradients are defined for floating-point inputs"):
        tidepool.max_pool1d_vjp(np.array(y), np.ones((1, 3, 1), np.int8), 2, 1)


def test_ties_first_matches_pytorch(rng):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    for d in (1, 2, 3):
        for _ in range(15):
            shape, k, s, p = random_configuration(rng, d)
            x = np.round(rng.standard_normal(shape)).astype(np.float32)  # many ties
            if rng.random() < 0.3:
                x.flat[rng.integers(0, x.size)] = np.nan
            g = rng.standard_normal(forward_shape("Max", d, x, k, s, p)).astype(np.float32)
            # PyTorch is channels-first: move C to axis 1 and back.
            xt = torch.tensor(np.moveaxis(x, -1, 1).copy(), requires_grad=True)
            out = getattr(functional, f"max_pool{d}d")(xt, k, s, p)
            out.backward(torch.tensor(np.moveaxis(g, -1, 1).copy()))
            theirs = np.moveaxis(xt.grad.numpy(), 1, -1)
            np.testing.assert_allclose(tidepool.__dict__[f"max_pool{d}d_vjp"](x, g, k, s, p, ties="first"), theirs,
                                       rtol=1e-6, atol=1e-6, err_msg=str((shape, k, s, p)))
