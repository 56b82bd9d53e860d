"""tidepool.dask: the six poolings on dask arrays, bit-identical to the in-memory result for any
chunking, on the threaded scheduler and a dask.distributed cluster of worker processes; the
halos it exchanges; the multiscale pyramid, its edges and its Zarr/NGFF output."""

import warnings

import numpy as np
import pytest

import tidepool
from conftest import BFLOAT16, LAYERS, random_array

da = pytest.importorskip("dask.array")
import dask  # noqa: E402

import tidepool.dask as tdask  # noqa: E402
from dask.array.core import PerformanceWarning  # noqa: E402

# Float averages over split channel axes rechunk them, saying so (tested below); elsewhere the
# warning is expected and not the point.
pytestmark = pytest.mark.filterwarnings("ignore::dask.array.core.PerformanceWarning")


def random_chunks(rng, n):
    """An awkward chunking of an axis of n: sizes from 1 up, not multiples of anything."""
    if n == 0:
        return (0,)
    sizes, left = [], n
    while left:
        size = int(min(left, rng.integers(1, max(2, n // 2) + 1)))
        sizes.append(size)
        left -= size
    return tuple(sizes)


def random_case(rng, d):
    k = tuple(int(v) for v in rng.integers(1, 6, size=d))
    s = tuple(int(rng.integers(1, kk + 2)) for kk in k)
    wide = rng.integers(0, 6) == 0  # MLX's padding wider than half the kernel, now and then
    p = tuple(int(rng.integers(0, (kk + 1 if wide else kk // 2) + 1)) for kk in k)
    spatial = tuple(int(rng.integers(max(1, kk - 2 * pp), kk + 14)) for kk, pp in zip(k, p))
    shape = (int(rng.integers(1, 3)),) + spatial + (int(rng.integers(1, 5)),)
    return shape, k, s, p


def in_memory(kind, d, x, k, s, p, **options):
    return getattr(tidepool, f"{kind.lower()}_pool{d}d")(x, k, s, p, **options)


def lazily(kind, d, x, k, s, p, **options):
    return getattr(tdask, f"{kind.lower()}_pool{d}d")(x, k, s, p, **options)


@pytest.mark.parametrize("kind, d", LAYERS)
def test_any_chunking_gives_the_in_memory_bits(kind, d, rng):
    for trial in range(14):
        shape, k, s, p = random_case(rng, d)
        dtype = [np.float32, np.float64, np.int16, np.uint8, np.float16, BFLOAT16][trial % 6]
        x = random_array(rng, shape, np.dtype(dtype))
        options = {"ceil_mode": bool(trial % 2)}
        if kind == "Avg":
            options["count_include_pad"] = trial % 4 < 2
        chunks = tuple(random_chunks(rng, n) for n in shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PerformanceWarning)  # split channels of float averages
            lazy = lazily(kind, d, da.from_array(x, chunks=chunks), k, s, p, **options)
        expected = in_memory(kind, d, x, k, s, p, **options)
        assert lazy.shape == expected.shape and lazy.dtype == expected.dtype
        got = lazy.compute(scheduler="threads")
        message = f"{kind} {shape} chunks {chunks} k {k} s {s} p {p} {options} {np.dtype(dtype)}"
        assert got.tobytes() == expected.tobytes(), message


def float_average_cases(rng, count):
    """Float averages of overlapping windows, whose bits depend on the engine's order of
    additions: kernels up to 9 (block scans from 6 taps, pairs of outputs from 2 to 5 at stride
    1), channel counts on both sides of 8, values spread over many binades so that the order
    shows in the last bit, awkward chunkings (channels and widths split too)."""
    for trial in range(count):
        d = 1 + trial % 3
        k = tuple(int(v) for v in rng.integers(2, 10, size=d))
        s = tuple(int(rng.integers(1, max(2, kk // 2 + 1))) for kk in k)
        p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        spatial = tuple(int(rng.integers(kk, kk + 24)) for kk in k)
        shape = (int(rng.integers(1, 3)),) + spatial + (int(rng.choice([1, 3, 7, 8, 9, 16])),)
        dtype = np.dtype([np.float32, np.float64, np.float16, BFLOAT16][trial % 4])
        scale = np.float32(2.0) ** rng.integers(-10, 10, size=shape)
        x = (random_array(rng, shape, dtype).astype(np.float32) * scale).astype(dtype)
        options = {"ceil_mode": bool(rng.integers(2)), "count_include_pad": bool(rng.integers(2))}
        yield x, k, s, p, options, tuple(random_chunks(rng, n) for n in shape)


def test_float_averages_of_overlapping_windows_are_bit_identical(rng):
    for x, k, s, p, options, chunks in float_average_cases(rng, 60):
        d = x.ndim - 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PerformanceWarning)
            lazy = lazily("Avg", d, da.from_array(x, chunks=chunks), k, s, p, **options)
        got = lazy.compute(scheduler="threads")
        expected = in_memory("Avg", d, x, k, s, p, **options)
        assert got.tobytes() == expected.tobytes(), f"{x.shape} {x.dtype} chunks {chunks} k {k} s {s} p {p} {options}"


def test_a_last_task_never_starts_a_kept_window_at_its_first_input(rng):
    # Depth 20 in chunks of 5, 10, 5; k 8, s 2, p 4, ceil_mode: 11 outputs, the last task keeps
    # output 10, window [16, 24) clipped to [16, 20), inside the block [12, 20) of block scans
    # along D: the whole array folds it as that block's suffix, right to left. Had that task
    # begun at input 16 (output 8,
    # a multiple of the period 4, with padding 4 before it), its engine would clip its first
    # block to [16, 20) and fold the window as that block's prefix: another order, another
    # last bit. It begins at 8 (output 4) instead.
    for _ in range(6):
        x = rng.standard_normal((2, 20, 3, 2, 1)) * 2.0 ** rng.integers(-20, 20, size=(2, 20, 3, 2, 1))
        lazy = tdask.avg_pool3d(da.from_array(x, chunks=(1, (5, 10, 5), 3, 2, 1)), (8, 1, 1), (2, 1, 1), (4, 0, 0),
                                ceil_mode=True)
        expected = tidepool.avg_pool3d(x, (8, 1, 1), (2, 1, 1), (4, 0, 0), ceil_mode=True)
        assert lazy.compute().tobytes() == expected.tobytes()


def test_rows_as_planes_or_not_give_the_same_bits(rng):
    """A 2-d float average over a plane past 512 KB runs its rows as planes; tasks' blocks
    (32 rows and their halo: about 330 KB) scan along H. Both fold every window in one
    order, the clipped bottom windows too (254 rows: the last block of 7 rows holds 5, and
    the last window starts inside it)."""
    x = (rng.standard_normal((1, 254, 254, 8)) * 2.0 ** rng.integers(-20, 20, size=(1, 254, 254, 8))).astype(np.float32)
    for k, p in ((7, 3), (9, 4), (6, 2)):
        expected = tidepool.avg_pool2d(x, k, 1, p)
        lazy = tdask.avg_pool2d(da.from_array(x, chunks=(1, (32,) * 7 + (30,), 254, 8)), k, 1, p)
        assert lazy.compute(scheduler="threads").tobytes() == expected.tobytes(), f"k {k} p {p}"


def test_depth_first_shapes_keep_whole_rows(rng):
    # 3-d float16/bfloat16 averages at stride 1 with 2 to 5 planes, few channels and centred
    # windows are what the engine may fold depth first, chosen from the row's length: a task
    # with a part of each row would fold in another order. The width is rechunked, with a
    # warning; the bits then match on every trial (without the rechunk, about one in eight
    # differed).
    for trial in range(24):
        k = (int(rng.integers(2, 6)), int(rng.choice([3, 5])), int(rng.choice([1, 3, 5])))
        p = tuple(kk // 2 for kk in k)
        shape = (1, int(rng.integers(4, 12)), int(rng.integers(4, 14)), int(rng.integers(8, 40)), int(rng.integers(1, 8)))
        dtype = np.dtype([np.float16, BFLOAT16][trial % 2])
        scale = np.float32(2.0) ** rng.integers(-12, 12, size=shape)
        x = (random_array(rng, shape, dtype).astype(np.float32) * scale).astype(dtype)
        with pytest.warns(PerformanceWarning, match="rechunking the width axis"):
            lazy = tdask.avg_pool3d(da.from_array(x, chunks=(1, 3, 5, 7, shape[-1])), k, 1, p)
        assert lazy.chunks[3] == (lazy.shape[3],)
        assert lazy.compute().tobytes() == tidepool.avg_pool3d(x, k, 1, p).tobytes(), (shape, k, p, dtype)


def test_rechunks_only_where_the_order_depends_on_it(rng):
    x = da.from_array(rng.standard_normal((1, 10, 12, 14, 4)).astype(np.float32), chunks=(1, 5, 6, 7, 2))
    with pytest.warns(PerformanceWarning, match=r"\[avg_pool3d\] rechunking the channels axis to one chunk"):
        tdask.avg_pool3d(x, 3, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no rechunk: max, integers, windows that do not overlap, float32 widths
        assert tdask.max_pool3d(x, 3, 1, 1).chunks[-1] == (2, 2)
        assert tdask.avg_pool3d(x.astype(np.int16), 3, 1, 1).chunks[-1] == (2, 2)
        assert tdask.avg_pool3d(x, 2).chunks[-1] == (2, 2)
        assert len(tdask.avg_pool3d(x.rechunk({4: -1}), 3, 1, 1).chunks[3]) == 2


def test_float_average_tasks_start_where_the_order_repeats(rng):
    # k 3 at stride 1, padding 1: the engine's order repeats every 6 outputs (blocks of 3
    # positions, pairs of outputs). Input chunks start at 0, 12 and 20. Max's output chunks
    # hold the windows starting in them, outputs [0, 13), [13, 21), [21, 40), and read their
    # span: [0, 14), [12, 22), [20, 40), 2 positions of the next chunk. The float average's
    # start at the next multiple of 6 instead, [0, 18), [18, 24), [24, 40), reading [0, 19),
    # [17, 25) and, for the last (whose first window must not start at its first input: 24 - 2
    # rounded down to 18), [18, 40).
    x = rng.standard_normal((1, 40, 2)).astype(np.float32)
    chunked = da.from_array(x, chunks=(1, (12, 8, 20), 2))
    reads = {}
    for pooling in (tdask.avg_pool1d, tdask.max_pool1d):
        lazy = pooling(chunked, 3, 1, 1)
        layer = dict(lazy.dask.layers[lazy.name])
        # (input chunk, start, stop) of each slice of a chunk a task reads.
        reads[pooling.__name__] = sorted((task[1][2], task[2][1].start, task[2][1].stop)
                                         for key, task in layer.items() if key[0].endswith("-halo"))
        expected = getattr(tidepool, pooling.__name__)(x, 3, 1, 1)
        assert lazy.compute().tobytes() == expected.tobytes()
        assert lazy.chunks[1] == {"max_pool1d": (13, 8, 19), "avg_pool1d": (18, 6, 16)}[pooling.__name__]
    assert reads["max_pool1d"] == [(1, 0, 2), (2, 0, 2)]
    assert reads["avg_pool1d"] == [(1, 0, 7), (1, 5, 8), (1, 6, 8), (2, 0, 5)]


def test_one_task_per_chunk_where_windows_do_not_overlap(rng):
    x = rng.standard_normal((2, 16, 12, 20, 3)).astype(np.float32)
    lazy = tdask.avg_pool3d(da.from_array(x, chunks=(1, 4, 6, 10, 3)), 2)
    layer = dict(lazy.dask.layers[lazy.name])
    assert len(layer) == lazy.npartitions == 2 * 4 * 2 * 2  # no task but the pooling of each chunk
    assert lazy.compute().tobytes() == tidepool.avg_pool3d(x, 2).tobytes()


def test_overlapping_windows_move_only_their_halo(rng):
    x = rng.standard_normal((1, 40, 2)).astype(np.float32)
    for k, s, p in ((3, 1, 1), (5, 2, 2), (4, 4, 0), (7, 3, 0), (2, 3, 0)):
        # Chunks of 12, a multiple of every stride here: each output chunk's windows start in
        # its own input chunk, and those that cross into the next reach k - s into it.
        lazy = tdask.max_pool1d(da.from_array(x, chunks=(1, 12, 2)), k, s, p)
        layer = dict(lazy.dask.layers[lazy.name])
        # The halo tasks: (getitem, the next chunk, the slice the windows reach).
        reads = [task[2][1] for key, task in layer.items() if key[0].endswith("-halo")]
        assert (len(reads) > 0) == (k > s), (k, s, p, reads)
        assert all(read.start == 0 and 0 < read.stop <= k - s for read in reads), (k, s, p, reads)
        assert lazy.compute().tobytes() == tidepool.max_pool1d(x, k, s, p).tobytes()


def test_on_a_distributed_cluster_of_processes(rng):
    distributed = pytest.importorskip("distributed")
    shapes = [((2, 17, 9, 23, 3), (1, 5, 4, 7, 2)), ((1, 31, 33, 4), (1, 8, 11, 3))]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        for shape, chunks in shapes:
            d = len(shape) - 2
            x = rng.standard_normal(shape).astype(np.float32)
            lazy = da.from_array(x, chunks=chunks)
            for kind, options in (("avg", {"ceil_mode": True, "count_include_pad": False}), ("max", {"ceil_mode": True}),
                                  ("avg", {})):
                got = client.compute(getattr(tdask, f"{kind}_pool{d}d")(lazy, 3, 2, 1, **options)).result()
                assert got.tobytes() == getattr(tidepool, f"{kind}_pool{d}d")(x, 3, 2, 1, **options).tobytes()
                if not options:
                    continue
                # The gradient on the cluster too (avg with both options, max).
                cotangent = rng.standard_normal(got.shape).astype(np.float32)
                grad = getattr(tdask, f"{kind}_pool{d}d_vjp")(lazy, da.from_array(cotangent, chunks=3), 3, 2, 1, **options)
                expected = getattr(tidepool, f"{kind}_pool{d}d_vjp")(x, cotangent, 3, 2, 1, **options)
                assert client.compute(grad).result().tobytes() == expected.tobytes()
        levels = tdask.pyramid(da.from_array(np.arange(2 * 9 * 10 * 11 * 2, dtype=np.float32).reshape(2, 9, 10, 11, 2),
                                             chunks=(1, 4, 4, 4, 2)), 3)
        computed = client.gather(client.compute(levels))
        assert [level.shape for level in computed] == [(2, 9, 10, 11, 2), (2, 5, 5, 6, 2), (2, 3, 3, 3, 2), (2, 2, 2, 2, 2)]


def block_means(x, factor):
    """Float64 means over factor^3 blocks, the last block of an odd axis holding what is left."""
    out_shape = [x.shape[0]] + [-(-n // factor) for n in x.shape[1:-1]] + [x.shape[-1]]
    out = np.zeros(out_shape)
    for index in np.ndindex(*out_shape[1:-1]):
        region = x[(slice(None),) + tuple(slice(i * factor, (i + 1) * factor) for i in index) + (slice(None),)]
        out[(slice(None),) + index + (slice(None),)] = region.astype(np.float64).mean(axis=(1, 2, 3))
    return out


def test_pyramid_keeps_odd_edges_and_equals_repeated_pooling(rng):
    x = rng.standard_normal((1, 13, 10, 7, 2)).astype(np.float32)
    levels = tdask.pyramid(da.from_array(x, chunks=(1, 5, 4, 3, 1)), 3)
    assert [level.shape for level in levels] == [(1, 13, 10, 7, 2), (1, 7, 5, 4, 2), (1, 4, 3, 2, 2), (1, 2, 2, 1, 2)]
    expected = x
    for level in levels[1:]:
        ours = level.compute()
        np.testing.assert_allclose(ours, block_means(expected, 2), rtol=1e-6, atol=1e-6)
        expected = tidepool.avg_pool3d(expected, 2, ceil_mode=True, count_include_pad=False)
        assert ours.tobytes() == expected.tobytes()
    # dask's coarsen drops the odd edge the pyramid keeps.
    assert da.coarsen(np.mean, da.from_array(x), {1: 2, 2: 2, 3: 2}, trim_excess=True).shape == (1, 6, 5, 3, 2)


def test_pyramid_writes_zarr_with_ngff_metadata(tmp_path, rng):
    zarr = pytest.importorskip("zarr")
    x = rng.standard_normal((1, 9, 8, 7, 3)).astype(np.float32)
    levels = tdask.pyramid(da.from_array(x, chunks=(1, 4, 4, 4, 3)), 2, store=str(tmp_path / "pyramid.zarr"), name="volume")
    group = zarr.open_group(str(tmp_path / "pyramid.zarr"), mode="r")
    multiscales = group.attrs["multiscales"][0]
    assert multiscales["name"] == "volume" and multiscales["version"] == "0.4"
    assert [a["name"] for a in multiscales["axes"]] == ["t", "c", "z", "y", "x"]
    assert [d["path"] for d in multiscales["datasets"]] == ["0", "1", "2"]
    assert multiscales["datasets"][2]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 4.0, 4.0, 4.0]
    assert group["1"].shape == (1, 3, 5, 4, 4)  # channels before space on disk
    np.testing.assert_array_equal(levels[0].compute(), x)
    assert levels[1].compute().tobytes() == tidepool.avg_pool3d(x, 2, ceil_mode=True, count_include_pad=False).tobytes()


def test_pyramid_of_odd_chunks_is_written_on_zarrs_regular_grid(tmp_path, rng):
    pytest.importorskip("zarr")
    x = rng.standard_normal((1, 23, 21, 19, 1)).astype(np.float32)
    # Chunks of 5 halve into 3, 2, 3, 2, ...: rechunked to Zarr's grid before writing, so no two
    # tasks write one Zarr chunk.
    levels = tdask.pyramid(da.from_array(x, chunks=5), 2, store=str(tmp_path / "odd.zarr"), rechunk=False)
    expected = x
    for level in levels[1:]:
        expected = tidepool.avg_pool3d(expected, 2, ceil_mode=True, count_include_pad=False)
        assert level.compute().tobytes() == expected.tobytes()


def gradient_case(rng, d, trial):
    """A random pooling for gradients: kernels 1-7, strides up to kernel + 2 (gaps no window
    holds), padding now and then wider than half the kernel, ties in the inputs for max."""
    k = tuple(int(v) for v in rng.integers(1, 8, size=d))
    s = tuple(int(rng.integers(1, kk + 3)) for kk in k)
    wide = rng.integers(0, 5) == 0
    p = tuple(int(rng.integers(0, (kk + 1 if wide else kk // 2) + 1)) for kk in k)
    shape = (int(rng.integers(1, 3)),) + tuple(int(rng.integers(max(1, kk - 2 * pp), kk + 16)) for kk, pp in zip(k, p)) + \
        (int(rng.choice([1, 3, 8, 9])),)
    dtype = np.dtype([np.float32, np.float64, np.float16, BFLOAT16][trial % 4])
    scale = np.float32(2.0) ** rng.integers(-8, 8, size=shape)
    x = (random_array(rng, shape, dtype).astype(np.float32) * scale).astype(dtype)
    if trial % 3 == 0:
        x = np.round(x.astype(np.float32)).astype(dtype)  # tied maxima
    return x, k, s, p


@pytest.mark.parametrize("kind, d", LAYERS)
def test_gradients_of_any_chunking_give_the_in_memory_bits(kind, d, rng):
    done = 0
    for trial in range(12):
        x, k, s, p = gradient_case(rng, d, trial)
        options = {"ceil_mode": bool(trial % 2)}
        if kind == "Avg":
            options["count_include_pad"] = trial % 4 < 2
        ties = ["split", "first"][trial // 2 % 2]
        try:
            y = in_memory(kind, d, x, k, s, p, **options)
        except tidepool.InvalidArgumentError:
            continue  # no output (a window wider than the padded input)
        cotangent = random_array(rng, y.shape, x.dtype)
        vjp = f"{kind.lower()}_pool{d}d_vjp"
        expected = getattr(tidepool, vjp)(x, cotangent, k, s, p, ties=ties, **options)
        chunked = da.from_array(x, chunks=tuple(random_chunks(rng, n) for n in x.shape))
        lazy = getattr(tdask, vjp)(chunked, da.from_array(cotangent, chunks=tuple(random_chunks(rng, n) for n in y.shape)),
                                   k, s, p, ties=ties, **options)
        assert lazy.chunks == chunked.chunks and lazy.dtype == x.dtype
        got = lazy.compute(scheduler="threads")
        assert got.tobytes() == expected.tobytes(), f"{vjp} {x.shape} {x.dtype} chunks {chunked.chunks} k {k} s {s} p {p} " \
            f"{options} {ties}"
        done += 1
    assert done >= 8


def test_gradient_chunks_no_window_holds_are_zero_without_a_backward_pass(rng):
    # Stride 5 over windows of 2: inputs 2-4 of every 5 are in no window. The chunk (2, 3) of
    # the chunking below holds only such inputs: a task of zeros, not a pooling.
    x = rng.standard_normal((1, 20, 2)).astype(np.float32)
    cotangent = rng.standard_normal((1, 4, 2)).astype(np.float32)
    lazy = tdask.max_pool1d_vjp(da.from_array(x, chunks=(1, (2, 3, 15), 2)), cotangent, 2, 5)
    tasks = dict(lazy.dask.layers[lazy.name])
    assert tasks[(lazy.name, 0, 1, 0)][0] is np.zeros
    assert lazy.compute().tobytes() == tidepool.max_pool1d_vjp(x, cotangent, 2, 5).tobytes()


def test_gradient_arguments_are_checked_when_the_graph_is_built():
    x = da.zeros((1, 8, 2), dtype=np.float32, chunks=4)
    cotangent = da.zeros((1, 4, 2), dtype=np.float32, chunks=2)
    assert tdask.avg_pool1d_vjp(x, cotangent, 2).shape == (1, 8, 2)
    with pytest.raises(tidepool.InvalidArgumentError, match=r"cotangent must have the output's shape \(1, 4, 2\)"):
        tdask.avg_pool1d_vjp(x, cotangent[:, :3], 2)
    with pytest.raises(tidepool.InvalidArgumentError, match="x's dtype float32 but has .* float64"):
        tdask.avg_pool1d_vjp(x, cotangent.astype(np.float64), 2)
    with pytest.raises(tidepool.InvalidArgumentError, match="floating-point inputs"):
        tdask.avg_pool1d_vjp(x.astype(np.int16), cotangent.astype(np.int16), 2)
    with pytest.raises(tidepool.InvalidArgumentError, match="ties must be 'split'"):
        tdask.max_pool1d_vjp(x, cotangent, 2, ties="last")
    with pytest.raises(tidepool.InvalidArgumentError, match="average pooling only"):
        tdask.max_pool1d_vjp(x, cotangent, 2, count_include_pad=False)
    empty = da.zeros((0, 8, 2), dtype=np.float32, chunks=4)
    assert tdask.avg_pool1d_vjp(empty, da.zeros((0, 4, 2), dtype=np.float32), 2).compute().shape == (0, 8, 2)


def test_arguments_are_checked_when_the_graph_is_built():
    x = da.zeros((1, 8, 2), chunks=4)
    with pytest.raises(tidepool.InvalidArgumentError, match="kernel_size"):
        tdask.avg_pool1d(x, 0)
    with pytest.raises(tidepool.InvalidArgumentError, match="negative"):
        tdask.avg_pool1d(x, 20, 1)
    with pytest.raises(tidepool.InvalidArgumentError, match=r"levels must be a non-negative int"):
        tdask.pyramid(x, -1)
    with pytest.raises(TypeError):
        tdask.max_pool1d(x, 2, count_include_pad=False)
    unknown = da.from_array(np.zeros((1, 8, 2)), chunks=4)[:, da.from_array(np.arange(8)) > 3]
    with pytest.raises(tidepool.InvalidArgumentError, match="chunk sizes must be known"):
        tdask.avg_pool1d(unknown, 2)


def test_empty_outputs_and_the_threaded_default(rng):
    x = da.zeros((0, 8, 8, 2), chunks=(1, 3, 3, 2))
    assert tdask.max_pool2d(x, 2).compute().shape == (0, 4, 4, 2)
    y = rng.standard_normal((2, 12, 2))
    with dask.config.set(scheduler="threads"):
        assert tdask.avg_pool1d(da.from_array(y, chunks=(1, 5, 1)), 3, 2).compute().tobytes() == \
            tidepool.avg_pool1d(y, 3, 2).tobytes()
