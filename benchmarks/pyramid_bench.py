"""Multiscale pyramids of a volume on disk (Zarr), built three ways side by side in one run:
tidepool.dask.pyramid, and the same levels with the tools people use now, dask.array.coarsen
(np.mean) and skimage.transform.downscale_local_mean through map_blocks. Each method runs in
its own process (peak memory is that process's maximum resident set), reads the source
volume from Zarr and writes every level to its own Zarr group, one level at a time, each level
made from the previous one as read back (the same I/O for all three; level 0 is the source
itself, not copied). A fourth method, floor, runs the same pipeline with no pooling (each block
subsampled): the time of dask and Zarr alone, under every method's. A fifth, read, only reads
the source once through dask and Zarr (nothing pooled, nothing written): the least any pyramid
over that store pays, however its levels are fused. Medians of --runs runs,
methods interleaved run by run (the machine is shared and noisy).

The peers are what their users run, with their edges: coarsen drops an odd axis's last plane
(trim_excess=True; without it, it refuses such axes), and downscale_local_mean pads every
block on its own (zeros, counted in the mean), so with chunks that are not multiples of the
factor its means are wrong along every chunk edge. Tidepool keeps the last partial window and
divides it by what it holds (ceil_mode=True, count_include_pad=False).

    python benchmarks/pyramid_bench.py --shape 1024 1024 1024 --chunk 128 --levels 4 --dir /var/tmp/pyr

The default volume is larger than this machine's memory when --shape is not given: sized from
/proc/meminfo (MemTotal x 1.25, uint16, one channel)."""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np


def default_shape():
    with open("/proc/meminfo") as meminfo:
        total = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal"))
    side = int(round((total * 1.25 / 2) ** (1 / 3) / 128)) * 128
    return [side, side, side]


def _volume(shape):
    """The same pattern as make_source's, as one numpy array (for --in-memory)."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij", sparse=True)
    values = (1000 + 500 * np.sin(z / 37.0) * np.cos(y / 23.0) + x % 97).astype(np.uint16)
    return values.reshape((1, *shape, 1))


def make_source(path, shape, chunk):
    """A uint16 volume (1, D, H, W, 1) written chunk by chunk: a smooth pattern plus noise,
    made per chunk so that memory stays small."""
    import dask.array as da
    import zarr

    if os.path.exists(os.path.join(path, "zarr.json")):
        array = zarr.open_array(path, mode="r")
        if list(array.shape) == [1, *shape, 1]:
            return
        shutil.rmtree(path)

    def block(block_info=None):
        info = block_info[None]
        lo = [a for a, _ in info["array-location"]]
        sizes = info["chunk-shape"]
        rng = np.random.default_rng(hash(tuple(lo)) & 0xFFFFFFFF)
        z, y, x = np.meshgrid(*(np.arange(a, a + n) for a, n in zip(lo[1:4], sizes[1:4])), indexing="ij", sparse=True)
        values = (1000 + 500 * np.sin(z / 37.0) * np.cos(y / 23.0) + x % 97).astype(np.uint16)
        return (values + rng.integers(0, 64, size=values.shape, dtype=np.uint16)).reshape(sizes)

    volume = da.map_blocks(block, dtype=np.uint16, chunks=((1,),) + tuple(_chunks(n, chunk) for n in shape) + ((1,),))
    target = zarr.create_array(path, shape=volume.shape, chunks=(1, chunk, chunk, chunk, 1), dtype=np.uint16,
                               compressors=None, overwrite=True)
    start = time.perf_counter()
    da.store(volume, target, lock=False)
    print(f"source {path}: {volume.nbytes / 2**30:.1f} GiB written in {time.perf_counter() - start:.0f} s", flush=True)


def _chunks(n, chunk):
    return (chunk,) * (n // chunk) + ((n % chunk,) if n % chunk else ())


def build(method, source, out, levels, threads):
    """One method's pyramid, in this process; prints a JSON line with its time and peak RSS."""
    import dask
    import dask.array as da
    import zarr

    dask.config.set(scheduler="threads", num_workers=threads)
    shutil.rmtree(out, ignore_errors=True)
    # Imports (and loading libtidepool) before the clock starts.
    if method == "tidepool":
        import tidepool.dask as tdask
    elif method == "skimage":
        from skimage.transform import downscale_local_mean
    if source.startswith("memory:"):
        # The volume in memory and the levels kept in memory: what the pooling and dask's
        # scheduling cost, without the disk.
        side, chunk = (int(v) for v in source.split(":")[1:])
        x = da.from_array(_volume((side,) * 3), chunks=(1, chunk, chunk, chunk, 1))
        group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    else:
        x = da.from_zarr(source)
        group = zarr.open_group(out, mode="w")
    start = time.perf_counter()
    if method == "read":
        # One element kept per block: the source's chunks read and dropped.
        x.map_blocks(lambda b: b[:1, :1, :1, :1, :1], chunks=tuple((1,) * len(c) for c in x.chunks)).compute()
        levels = 0
    level = x
    for index in range(1, levels + 1):
        if method == "tidepool":
            # What tidepool.dask.pyramid does per level (its store= also writes level 0, a copy
            # of the source that costs every method the same and is left out here).
            level = tdask.avg_pool3d(level, 2, ceil_mode=True, count_include_pad=False)
        elif method == "coarsen":
            level = da.coarsen(np.mean, level, {1: 2, 2: 2, 3: 2}, trim_excess=True).astype(np.float32)
        else:
            # skimage, or the floor: every second sample of each block, the least work a block
            # can do to give a level of the right shape, so its time is the pipeline's own (dask's
            # scheduling, Zarr's chunk reads and writes), which no pooling kernel can go below.
            chunks = tuple(tuple(-(-c // 2) for c in axis) if i in (1, 2, 3) else axis for i, axis in enumerate(level.chunks))
            if method == "floor":
                reduce = lambda b: b[:, ::2, ::2, ::2, :].astype(np.float32)  # noqa: E731
            else:
                reduce = lambda b: downscale_local_mean(b, (1, 2, 2, 2, 1)).astype(np.float32)  # noqa: E731
            level = level.map_blocks(reduce, chunks=chunks, dtype=np.float32)
        if any(len(set(c[:-1])) > 1 or (len(c) > 1 and c[-1] > c[0]) for c in level.chunks):
            level = level.rechunk(level.chunksize)
        target = group.create_array(str(index), shape=level.shape, chunks=level.chunksize, dtype=level.dtype,
                                    compressors=None, overwrite=True)
        da.store(level, target, lock=False)
        level = da.from_zarr(target)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"method": method, "seconds": seconds, "peak_bytes": peak}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, help="D H W of the volume (default: 1.25x this machine's memory)")
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--dir", default="/var/tmp/tidepool-pyramid-bench")
    parser.add_argument("--methods", nargs="+", default=["tidepool", "coarsen", "skimage", "floor"],
                        help="tidepool, coarsen, skimage, floor (no pooling: every 2nd sample, the pipeline's own time) "
                             "and read (the source read once, nothing written)")
    parser.add_argument("--keep", action="store_true", help="keep the source volume and the pyramids")
    parser.add_argument("--in-memory", type=int, metavar="SIDE",
                        help="instead: a SIDE^3 volume in memory, levels written to memory (no disk)")
    parser.add_argument("--build", nargs=3, metavar=("METHOD", "SOURCE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build(args.build[0], args.build[1], args.build[2], args.levels, args.threads)
        return
    if args.in_memory:
        shape = [args.in_memory] * 3
        source = f"memory:{args.in_memory}:{args.chunk}"
        where = "in memory (no disk)"
    else:
        shape = args.shape or default_shape()
        os.makedirs(args.dir, exist_ok=True)
        source = os.path.join(args.dir, "source.zarr")
        make_source(source, shape, args.chunk)
        where = "on disk (uncompressed Zarr)"
    nbytes = int(np.prod(shape)) * 2
    print(f"pyramid benchmark: (1, {shape[0]}, {shape[1]}, {shape[2]}, 1) uint16, {nbytes / 2**30:.1f} GiB {where}, "
          f"chunks {args.chunk}^3, {args.levels} levels of 2x2x2 means, {args.threads} threads, {args.runs} run(s)", flush=True)
    results = {m: [] for m in args.methods}
    for run in range(args.runs):
        for method in args.methods:
            out = os.path.join(args.dir, f"{method}.zarr")
            # Drop the source's pages from the cache where we may (root), so every method reads
            # it from disk alike; otherwise whatever the last method left cached.
            if os.geteuid() == 0 and not args.in_memory:
                subprocess.run(["sync"], check=False)
                with open("/proc/sys/vm/drop_caches", "w") as caches:
                    caches.write("1\n")
            done = subprocess.run([sys.executable, __file__, "--levels", str(args.levels), "--threads", str(args.threads),
                                   "--build", method, source, out], capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{method} failed:\n{done.stderr}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results[method].append(result)
            print(f"  run {run + 1} {method:9s} {result['seconds']:8.1f} s  peak {result['peak_bytes'] / 2**20:8.0f} MiB",
                  flush=True)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
    base = statistics.median(r["seconds"] for r in results[args.methods[0]])
    print(f"\n| method | median s | peak MiB | time / {args.methods[0]} |")
    print("|---|---|---|---|")
    for method, rows in results.items():
        seconds = statistics.median(r["seconds"] for r in rows)
        peak = max(r["peak_bytes"] for r in rows) / 2**20
        print(f"| {method} | {seconds:.1f} | {peak:.0f} | {seconds / base:.2f}x |")
    if not args.keep and not args.in_memory:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
