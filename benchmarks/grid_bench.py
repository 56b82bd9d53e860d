"""make bench-grid: Tidepool's pooling over a grid of cells, each against its byte floor and,
with --peers, against the best of MLX, JAX and PyTorch (each when importable), side by side in
one run (the peers as engine_bench.py runs them).

The grid varies one thing at a time around a base cell per layer (k3 s1 p1, 8 channels,
float32, an input of about 64 MB, past this machine kind's 32 MB L3): the kernel (2 to 11 at
stride 1, padding k // 2), the stride (1, 2, k at k3), the channels (1 to 64) and the dtype,
for 1-d, 2-d and 3-d average and max pooling. Each cell: Tidepool at 1 and 2 threads (a layer
object, so the call's own cost is a few microseconds), the floor (numpy's x.copy() scaled to
the bytes the pooling moves: input read, output written) measured beside it, run for run, and
the ratios. Medians of --runs runs. `--only TEXT` keeps the cells whose name contains TEXT;
`--random N --seed S` measures N cells that vary everything at once instead.
"""

import argparse
import random
import statistics
import time

import numpy as np

import tidepool
from engine_bench import peers

try:
    import ml_dtypes

    DTYPES = ["float32", "float16", "bfloat16", "float64", "int8", "uint8", "int16", "int32", "int64"]
except ImportError:  # bfloat16 needs ml_dtypes
    ml_dtypes = None
    DTYPES = ["float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64"]

INPUT_BYTES = 64 << 20


def dtype_of(name):
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def shape_for(d, channels, itemsize):
    """Channels-last, batch 4, equal spatial axes, about INPUT_BYTES."""
    side = round((INPUT_BYTES / (4 * channels * itemsize)) ** (1 / d))
    return (4,) + (side,) * d + (channels,)


def cells():
    """(name, kind, d, k, s, p, channels, dtype name)."""
    grid = []
    for d in (1, 2, 3):
        for kind in ("avg", "max"):
            seen = set()

            def add(k, s, p, c, t):
                if (k, s, p, c, t) in seen:
                    return
                seen.add((k, s, p, c, t))
                layer = f"{kind.capitalize()}Pool{d}d"
                grid.append((f"{layer} k{k} s{s} p{p} C={c} {t}", kind, d, k, s, p, c, t))

            for k in (2, 3, 5, 7, 9, 11):
                add(k, 1, k // 2, 8, "float32")
            for s in (2, 3):
                add(3, s, 1, 8, "float32")
            for c in (1, 2, 3, 4, 8, 32, 64):
                add(3, 1, 1, c, "float32")
            for t in DTYPES:
                add(3, 1, 1, 8, t)
    return grid


def random_cells(count, seed):
    """`count` cells that vary everything at once (layer, d, k 2-11, s 1-k, padding 0-k/2, C
    1-64, dtype), drawn with `seed`: the combinations the one-at-a-time grid never meets."""
    rng = random.Random(seed)
    channels = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 64]
    grid = []
    for _ in range(count):
        d, kind = rng.choice((1, 2, 3)), rng.choice(("avg", "max"))
        k = rng.randint(2, 11)
        s, p, c, t = rng.randint(1, k), rng.randint(0, k // 2), rng.choice(channels), rng.choice(DTYPES)
        grid.append((f"{kind.capitalize()}Pool{d}d k{k} s{s} p{p} C={c} {t}", kind, d, k, s, p, c, t))
    return grid


def measure(functions, runs):
    """Medians (ms) of each of `functions`, called in turn run after run."""
    for function in functions:
        function()
    times = [[] for _ in functions]
    for _ in range(runs):
        for function, kept in zip(functions, times):
            start = time.perf_counter()
            function()
            kept.append(time.perf_counter() - start)
    return [statistics.median(kept) * 1e3 for kept in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="cells whose name contains this text")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--peers", action="store_true", help="measure MLX, JAX and PyTorch on float32 cells")
    parser.add_argument("--random", type=int, default=0, metavar="N", help="N random cells instead of the grid")
    parser.add_argument("--seed", type=int, default=1, help="the random cells' seed")
    args = parser.parse_args()
    available = peers() if args.peers else {}
    header = ["cell", "MB moved", "floor ms", "1 thr ms", "2 thr ms", "1 thr / floor", "2 thr / floor"]
    if available:
        header += list(available) + ["best peer / Tidepool"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    chosen = [cell for cell in (random_cells(args.random, args.seed) if args.random else cells()) if args.only in cell[0]]
    # Every Tidepool cell runs before any peer: JAX's and PyTorch's worker threads keep
    # spinning after a call and took a CPU from the next cells' Tidepool runs (3-d cells at 2
    # threads measured as slow as at 1). With peers, rows are printed once all are measured.
    rows = []
    for index, (name, kind, d, k, s, p, c, t) in enumerate(chosen):
        x = cell_input(index, d, c, t)
        layer = getattr(tidepool.nn, f"{kind.capitalize()}Pool{d}d")(k, s, p)
        out = layer(x)
        moved = x.nbytes + out.nbytes

        def threads(n):
            def run():
                tidepool.set_num_threads(n)
                layer(x, out=out)
            return run

        one, two, copy = measure([threads(1), threads(2), lambda: x.copy()], args.runs)
        tidepool.set_num_threads(0)
        floor = copy * moved / (2 * x.nbytes)
        row = [name, f"{moved / 2**20:.0f}", f"{floor:.2f}", f"{one:.2f}", f"{two:.2f}", f"{one / floor:.2f}x", f"{two / floor:.2f}x"]
        if available:
            rows.append((row, two))
        else:
            print("| " + " | ".join(row) + " |", flush=True)
    for index, ((row, two), (name, kind, d, k, s, p, c, t)) in enumerate(zip(rows, chosen)):
        if t == "float32":
            x = cell_input(index, d, c, t)
            peer_ms = [measure([make(kind, x, k, s, p)], 3)[0] for make in available.values()]
            row += [f"{ms:.2f}" for ms in peer_ms] + [f"{min(peer_ms) / two:.1f}x"]
        else:
            row += ["-"] * (len(available) + 1)
        print("| " + " | ".join(row) + " |", flush=True)


def cell_input(index, d, channels, dtype_name):
    """The input of the index-th chosen cell, the same each time it is made."""
    dtype = dtype_of(dtype_name)
    rng = np.random.default_rng(index)
    return (rng.standard_normal(shape_for(d, channels, dtype.itemsize)) * 20).astype(dtype)


if __name__ == "__main__":
    main()
