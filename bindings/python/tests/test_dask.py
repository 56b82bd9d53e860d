"""tidepool.dask: the six poolings on dask arrays, bit-identical to the in-memory result for any
chunking, on the threaded scheduler and a dask.distributed cluster of worker processes; the
halos it exchanges; the multiscale pyramid, its edges and its Zarr/NGFF output."""

import numpy as np
import pytest

import tidepool
from conftest import BFLOAT16, LAYERS, random_array

da = pytest.importorskip("dask.array")
import dask  # noqa: E402

import tidepool.dask as tdask  # noqa: E402


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
        lazy = lazily(kind, d, da.from_array(x, chunks=chunks), k, s, p, **options)
        expected = in_memory(kind, d, x, k, s, p, **options)
        assert lazy.shape == expected.shape and lazy.dtype == expected.dtype
        got = lazy.compute(scheduler="threads")
        message = f"{kind} {shape} chunks {chunks} k {k} s {s} p {p} {options} {np.dtype(dtype)}"
        # Bit for bit where the engine's order of summation cannot depend on the block: max,
        # exact integer sums, windows that do not overlap (each folded tap by tap). Float sums
        # of overlapping windows are folded in an order the engine picks from the tensor's
        # sizes, so a block may round differently: within one rounding of the same exact sum.
        overlapping = any(kk > ss for kk, ss in zip(k, s))
        if kind == "Max" or np.dtype(dtype).kind in "iu" or not overlapping:
            assert got.tobytes() == expected.tobytes(), message
        else:
            rtol = {np.dtype(np.float64): 1e-13, np.dtype(np.float32): 2e-6, np.dtype(np.float16): 2e-3}.get(np.dtype(dtype), 1.6e-2)
            np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=1e-6, err_msg=message)


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
