"""tidepool.mlx, tidepool.torch and tidepool.jax: layers and functions whose forward and
backward run in Tidepool, differentiated by the frameworks' own machinery, against the
frameworks' own layers."""

import numpy as np
import pytest

from conftest import LAYERS


def random_case(rng, d):
    k = tuple(int(v) for v in rng.integers(1, 4, size=d))
    s = tuple(int(rng.integers(1, kk + 1)) for kk in k)
    p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
    spatial = tuple(int(rng.integers(kk + 1, kk + 8)) for kk in k)
    return (2,) + spatial + (3,), k, s, p


@pytest.mark.parametrize("kind, d", LAYERS)
def test_mlx_grad_through_tidepool_equals_mlx_nn(kind, d, rng):
    mx = pytest.importorskip("mlx.core")
    mnn = pytest.importorskip("mlx.nn")
    import tidepool.mlx as tmlx

    for _ in range(4):
        shape, k, s, p = random_case(rng, d)
        x = mx.array(np.round(rng.standard_normal(shape), 1).astype(np.float32))  # some ties
        ours, theirs = getattr(tmlx, f"{kind}Pool{d}d")(k, s, p), getattr(mnn, f"{kind}Pool{d}d")(k, s, p)
        weights = mx.array(rng.standard_normal(theirs(x).shape).astype(np.float32))
        np.testing.assert_allclose(np.array(ours(x)), np.array(theirs(x)), rtol=1e-6, atol=1e-6)
        grad_ours = mx.grad(lambda a: (ours(a) * weights).sum())(x)
        grad_theirs = mx.grad(lambda a: (theirs(a) * weights).sum())(x)
        np.testing.assert_allclose(np.array(grad_ours), np.array(grad_theirs), rtol=1e-5, atol=1e-5)


def test_mlx_value_and_grad_trains_through_tidepool(rng):
    mx = pytest.importorskip("mlx.core")
    mnn = pytest.importorskip("mlx.nn")
    import tidepool.mlx as tmlx

    x = mx.array(rng.standard_normal((4, 8, 8, 3)).astype(np.float32))
    target = mx.array(rng.standard_normal((4, 4, 4, 5)).astype(np.float32))
    weight = mx.array(rng.standard_normal((5, 3)).astype(np.float32))
    grads = []
    for pool in (tmlx.MaxPool2d(3, 2, 1), mnn.MaxPool2d(3, 2, 1)):
        linear = mnn.Linear(3, 5)
        linear.weight, linear.bias = weight, mx.zeros((5,))
        model = mnn.Sequential(linear, pool)
        loss, grad = mnn.value_and_grad(model, lambda m, a, t: ((m(a) - t) ** 2).mean())(model, x, target)
        grads.append((float(loss), np.array(grad["layers"][0]["weight"])))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    np.testing.assert_allclose(grads[0][1], grads[1][1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_torch_autograd_matches_torchs_own_layers(d, rng):
    torch = pytest.importorskip("torch")
    import tidepool.torch as ttorch

    functional = torch.nn.functional
    for _ in range(4):
        shape, k, s, p = random_case(rng, d)
        x = np.round(rng.standard_normal(shape), 1)  # ties: PyTorch's rule is "first"
        for kind in ("avg", "max"):
            ours_x = torch.tensor(x, requires_grad=True)
            theirs_x = torch.tensor(np.moveaxis(x, -1, 1).copy(), requires_grad=True)
            options = {"ties": "first"} if kind == "max" else {}
            ours = getattr(ttorch, f"{kind}_pool{d}d")(ours_x, k, s, p, **options)
            theirs = getattr(functional, f"{kind}_pool{d}d")(theirs_x, k, s, p)  # count_include_pad=True: MLX's divisor
            weights = torch.tensor(rng.standard_normal(ours.shape))
            (ours * weights).sum().backward()
            (theirs * weights.movedim(-1, 1)).sum().backward()
            np.testing.assert_allclose(ours.detach().numpy(), theirs.detach().movedim(1, -1).numpy(), rtol=1e-12,
                                       atol=1e-12)
            np.testing.assert_allclose(ours_x.grad.numpy(), theirs_x.grad.movedim(1, -1).numpy(), rtol=1e-12, atol=1e-12)


def test_torch_gradcheck_and_shared_memory(rng):
    torch = pytest.importorskip("torch")
    import tidepool.torch as ttorch

    x = torch.tensor(rng.standard_normal((2, 6, 5, 3)), requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: ttorch.avg_pool2d(a, 3, 2, 1), (x,))
    assert torch.autograd.gradcheck(lambda a: ttorch.max_pool2d(a, 2, 1, 0), (x,))  # distinct values: no ties
    # A channels-first tensor moved to channels-last is a view, read in place.
    nchw = torch.tensor(rng.standard_normal((2, 3, 6, 5)).astype(np.float32))
    y = ttorch.max_pool2d(nchw.movedim(1, -1), 2)
    assert y.shape == (2, 3, 2, 3)
    with pytest.raises(ValueError, match="ties must be 'split'"):
        ttorch.max_pool2d(x, 2, ties="any")


def test_bfloat16_through_torch_and_mlx(rng):
    """bfloat16 tensors and arrays go through their 16 bits (ml_dtypes' bfloat16 on the numpy
    side) both ways: results and gradients are bfloat16, equal to pooling the float32 values
    and rounding (max exactly; a bfloat16 average is the float32 one rounded once)."""
    torch = pytest.importorskip("torch")
    mx = pytest.importorskip("mlx.core")
    import tidepool.mlx as tmlx
    import tidepool.torch as ttorch

    values = np.round(rng.standard_normal((2, 6, 6, 3)), 2).astype(np.float32)
    values = torch.tensor(values).to(torch.bfloat16).to(torch.float32).numpy()  # exactly representable
    for kind in ("avg", "max"):
        x = torch.tensor(values).to(torch.bfloat16).requires_grad_()
        y = getattr(ttorch, f"{kind}_pool2d")(x, 2, 1, 0)
        assert y.dtype == torch.bfloat16
        expected = getattr(ttorch, f"{kind}_pool2d")(torch.tensor(values), 2, 1, 0).to(torch.bfloat16)
        assert torch.equal(y, expected)
        y.float().sum().backward()
        assert x.grad.dtype == torch.bfloat16 and float(x.grad.float().sum()) == y.numel()

        layer = getattr(tmlx, f"{kind.capitalize()}Pool2d")(2, 1, 0)
        a = mx.array(values).astype(mx.bfloat16)
        out = layer(a)
        assert out.dtype == mx.bfloat16
        assert np.array_equal(np.array(out.astype(mx.float32)), y.detach().float().numpy())
        grad = mx.grad(lambda v: layer(v).astype(mx.float32).sum())(a)
        assert grad.dtype == mx.bfloat16 and float(grad.astype(mx.float32).sum()) == y.numel()


# ---- JAX ---------------------------------------------------------------------------------


def jax_reference(kind, d, k, s, p):
    """JAX's own pooling (lax.reduce_window), as engine_bench and flax define it: averages
    divide by the full window, max pads with -inf."""
    jax = pytest.importorskip("jax")
    window, strides = (1,) + k + (1,), (1,) + s + (1,)
    padding = ((0, 0),) + tuple((pp, pp) for pp in p) + ((0, 0),)
    if kind == "Avg":
        return lambda a: jax.lax.reduce_window(a, 0.0, jax.lax.add, window, strides, padding) / np.prod(k)
    return lambda a: jax.lax.reduce_window(a, -np.inf, jax.lax.max, window, strides, padding)


@pytest.mark.parametrize("kind, d", LAYERS)
def test_jax_grad_through_tidepool_equals_mlx_and_jax(kind, d, rng):
    jax = pytest.importorskip("jax")
    mx = pytest.importorskip("mlx.core")
    mnn = pytest.importorskip("mlx.nn")
    import tidepool.jax as tjax

    name = f"{kind.lower()}_pool{d}d"
    for case in range(4):
        shape, k, s, p = random_case(rng, d)
        # Rounded values tie: the split of tied maxima is MLX's, which JAX's own max does not do.
        x = np.round(rng.standard_normal(shape), 1).astype(np.float32)
        layer = getattr(mnn, f"{kind}Pool{d}d")(k, s, p)
        weights = rng.standard_normal(layer(mx.array(x)).shape).astype(np.float32)
        loss = jax.jit(lambda a: (getattr(tjax, name)(a, k, s, p) * weights).sum())
        grad = np.asarray(jax.grad(loss)(jax.numpy.asarray(x)))
        expected = np.array(mx.grad(lambda a: (layer(a) * mx.array(weights)).sum())(mx.array(x)))
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)
        # Without ties (distinct values) JAX's own pooling has the same gradient.
        distinct = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float32) / np.prod(shape)
        reference = jax_reference(kind, d, k, s, p)
        ours_value, ours_vjp = jax.vjp(lambda a: getattr(tjax, name)(a, k, s, p), distinct)
        theirs_value, theirs_vjp = jax.vjp(reference, distinct)
        np.testing.assert_allclose(np.asarray(ours_value), np.asarray(theirs_value), rtol=1e-6, atol=1e-7)
        cotangent = rng.standard_normal(theirs_value.shape).astype(np.float32)
        np.testing.assert_allclose(np.asarray(ours_vjp(cotangent)[0]), np.asarray(theirs_vjp(cotangent)[0]),
                                   rtol=1e-5, atol=1e-6)


def test_jax_vmap_dtypes_ties_and_errors(rng):
    jax = pytest.importorskip("jax")
    import tidepool
    import tidepool.jax as tjax
    from conftest import BFLOAT16

    x = np.round(rng.standard_normal((2, 9, 7, 3)), 0).astype(np.float32)
    batch = np.stack([x, 2 * x, -x])
    # vmap folds the mapped axis into N: one call for the batch, each slice as alone.
    mapped = jax.vmap(lambda a: tjax.max_pool2d(a, 3, 2, 1))(batch)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(mapped[i]), tidepool.max_pool2d(batch[i], 3, 2, 1))
    grads = jax.vmap(jax.grad(lambda a: tjax.avg_pool2d(a, 2, 1, 1).sum()))(batch)
    for i in range(3):
        g = np.ones(tidepool.avg_pool2d(batch[i], 2, 1, 1).shape, np.float32)
        np.testing.assert_array_equal(np.asarray(grads[i]), tidepool.avg_pool2d_vjp(batch[i], g, 2, 1, 1))
    # ties="first" gives the whole cotangent to one maximum: PyTorch's rule.
    g = rng.standard_normal(tidepool.max_pool2d(x, 3, 1, 1).shape).astype(np.float32)
    for ties in ("split", "first"):
        _, vjp = jax.vjp(lambda a: tjax.max_pool2d(a, 3, 1, 1, ties=ties), x)
        np.testing.assert_array_equal(np.asarray(vjp(g)[0]), tidepool.max_pool2d_vjp(x, g, 3, 1, 1, ties=ties))
    # Half precision in, half precision out, both ways.
    for dtype in (np.float16, BFLOAT16):
        h = x.astype(dtype)
        y = tjax.avg_pool2d(h, 2)
        assert y.dtype == dtype
        np.testing.assert_array_equal(np.asarray(y), tidepool.avg_pool2d(h, 2))
        grad = jax.grad(lambda a: tjax.max_pool2d(a, 2).astype(np.float32).sum())(jax.numpy.asarray(h))
        assert grad.dtype == dtype
    # Integers pool (averages give float32) as in-process.
    assert tjax.avg_pool1d(np.arange(8, dtype=np.int32).reshape(1, 8, 1), 2).dtype == np.float32
    # Bad arguments fail when traced, with the engine's messages.
    with pytest.raises(ValueError, match="kernel_size"):
        tjax.avg_pool2d(x, 0)
    with pytest.raises(ValueError, match=r"input must have 4 dimensions .* shape \(9, 7, 3\)"):
        tjax.max_pool2d(x[0], 2)
    with pytest.raises(ValueError, match="ties must be"):
        tjax.max_pool1d(x[0], 2, ties="last")
    with pytest.raises(ValueError, match="negative"):
        jax.jit(lambda a: tjax.avg_pool2d(a, 12, 1))(x)
