"""Strided numpy views go to the library as they are: no copy, right results."""

import numpy as np
import pytest

import tidepool
from tidepool import functional
from conftest import BFLOAT16, assert_pool_close, reference_pool, tidepool_pool


def views(rng, dtype):
    base = rng.standard_normal((3, 8, 10, 12, 4)).astype(dtype)
    channels_first = np.ascontiguousarray(np.moveaxis(base, -1, 1))  # stored (N, C, D, H, W)
    yield "transposed H/W", base.transpose(0, 1, 3, 2, 4)
    yield "sliced", base[1:, ::2, 1:9, ::3, 1:3]
    yield "reversed", base[::-1, :, ::-1, :, ::-1]
    yield "channels-first storage", np.moveaxis(channels_first, 1, -1)
    yield "broadcast", np.broadcast_to(base[:1, :, :, :, :1], (2, 8, 10, 12, 5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, BFLOAT16], ids=str)
@pytest.mark.parametrize("kind", ["Avg", "Max"])
def test_strided_views_match_reference_without_copy(kind, dtype, rng):
    for name, view in views(rng, dtype):
        assert functional._engine_view(view, "test") is view, f"{name} was copied"
        ours = tidepool_pool(kind, 3, view, (2, 3, 2), (1, 2, 2), (1, 1, 0))
        expected = reference_pool(kind, 3, view, (2, 3, 2), (1, 2, 2), (1, 1, 0))
        assert_pool_close(kind, ours, expected, np.dtype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, BFLOAT16], ids=str)
def test_float_averages_and_gradients_of_views_have_the_contiguous_bits(dtype, rng):
    # The plan, and with it a float average's order of additions, reads whether rows are
    # dense; a view is packed first, so its bits are those of the same values made contiguous.
    # Windows up to 8 (block scans, pairs), 1-3 spatial axes, channels on both sides of 8.
    for trial in range(40):
        d = 1 + trial % 3
        k = tuple(int(v) for v in rng.integers(1, 9, size=d))
        s = tuple(int(rng.integers(1, kk + 1)) for kk in k)
        p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        channels = int(rng.choice([1, 3, 5, 8, 9]))
        shape = (2,) + tuple(int(rng.integers(kk, kk + 12)) for kk in k) + (2 * channels,)
        base = (rng.standard_normal(shape) * 2.0 ** rng.integers(-12, 12, size=shape)).astype(dtype)
        view = base[..., 1::2]
        dense = np.ascontiguousarray(view)
        pool = getattr(tidepool, f"avg_pool{d}d")
        options = {"ceil_mode": trial % 4 == 1, "count_include_pad": trial % 3 != 0}
        got = pool(view, k, s, p, **options)
        assert got.tobytes() == pool(dense, k, s, p, **options).tobytes(), (shape, k, s, p, options)
        cotangent = rng.standard_normal(got.shape).astype(dtype)
        vjp = getattr(tidepool, f"avg_pool{d}d_vjp")
        assert vjp(view, cotangent, k, s, p, **options).tobytes() == vjp(dense, cotangent, k, s, p, **options).tobytes()


def test_unaligned_and_byte_swapped_inputs_are_copied_and_correct(rng):
    raw = rng.integers(0, 64, 4 * 6 * 2 + 1, dtype=np.uint8)  # small exponents: finite floats
    unaligned = np.frombuffer(raw.data, dtype=np.float32, count=12, offset=1)
    assert unaligned.ctypes.data % 4 != 0
    x = unaligned.reshape(1, 6, 2)
    assert functional._engine_view(x, "test") is not x
    np.testing.assert_array_equal(tidepool.max_pool1d(x, 2), reference_pool("Max", 1, x, 2))

    swapped = rng.standard_normal((2, 6, 3)).astype(">f4")
    y = tidepool.avg_pool1d(swapped, 3, 1, 1)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, reference_pool("Avg", 1, swapped, 3, 1, 1), rtol=1e-5, atol=1e-6)


def test_out_parameter_is_filled_in_place(rng):
    x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    out = np.empty((2, 4, 4, 3), dtype=np.float32)
    result = tidepool.avg_pool2d(x, 2, out=out)
    assert result is out
    np.testing.assert_allclose(out, reference_pool("Avg", 2, x, 2), rtol=1e-5, atol=1e-6)
