"""make bench, engine part: Tidepool's pooling against the bytes-moved floor and against
MLX, PyTorch and JAX (each when importable), measured side by side in one run.

The floor of a case is the median time of numpy's x.copy() scaled to the bytes a pass moves
(input read + output written), as the issue defines it; the warm floor is the same with a
memcpy into memory already faulted in (stricter). Tidepool's times come from
benchmarks/build/engine_bench (in-process from C, 1 and 2 threads); peers run with their
default thread pools (this machine's cores).
"""

import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES_FILE = os.path.join(ROOT, "benchmarks", "cases.txt")


def read_cases(path=CASES_FILE):
    """The case list shared with engine_bench.c: (name, kind, shape, kernel, stride, padding)."""
    cases = []
    with open(path) as file:
        for line in file:
            if not line.strip() or line.startswith("#"):
                continue
            layer, shape, k, s, p = line.split()
            shape = tuple(int(n) for n in shape.split(","))
            k, s, p = int(k), int(s), int(p)
            name = f"{layer} k{k} s{s}{f' p{p}' if p else ''}, ({','.join(str(n) for n in shape)})"
            cases.append((name, "max" if layer.startswith("Max") else "avg", shape, k, s, p))
    return cases


CASE_FILTER = os.environ.get("CASE", "")
CASES = [case for case in read_cases() if CASE_FILTER in case[0]]


def median_ms(function, runs):
    function()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1e3)
    return float(np.median(samples))


def runs_for(nbytes):
    return 41 if nbytes < (8 << 20) else 11


def peers():
    """name -> function(kind, x, k, s, p) returning a callable that runs the pooling once, for
    channels-last x of 1, 2 or 3 spatial axes (its rank says which)."""
    found = {}
    try:
        import mlx.core as mx
        import mlx.nn as mnn

        def mlx_case(kind, x, k, s, p):
            layer = getattr(mnn, f"{kind.capitalize()}Pool{x.ndim - 2}d")(k, s, p)
            xm = mx.array(x)
            mx.eval(xm)
            return lambda: mx.eval(layer(xm))

        found[f"MLX {mx.__version__}"] = mlx_case
    except ImportError:
        pass
    try:
        import torch

        def torch_case(kind, x, k, s, p):
            d = x.ndim - 2
            xt = torch.from_numpy(x).movedim(-1, 1)  # (N, C, spatial) view of channels-last memory
            if d > 1:
                xt = xt.contiguous(memory_format=torch.channels_last_3d if d == 3 else torch.channels_last)
            pool = getattr(torch.nn.functional, f"{kind}_pool{d}d")
            if kind == "avg":
                return lambda: pool(xt, k, s, p, count_include_pad=True)
            return lambda: pool(xt, k, s, p)

        found[f"PyTorch {torch.__version__.split('+')[0]}"] = torch_case
    except ImportError:
        pass
    try:
        import jax
        import jax.numpy as jnp
        from jax import lax

        def jax_case(kind, x, k, s, p):
            d = x.ndim - 2
            window, strides = (1,) + (k,) * d + (1,), (1,) + (s,) * d + (1,)
            padding = ((0, 0),) + ((p, p),) * d + ((0, 0),)
            if kind == "avg":
                f = jax.jit(lambda v: lax.reduce_window(v, 0.0, lax.add, window, strides, padding) / (k ** d))
            else:
                f = jax.jit(lambda v: lax.reduce_window(v, -jnp.inf, lax.max, window, strides, padding))
            xj = jnp.asarray(x)
            return lambda: f(xj).block_until_ready()

        found[f"JAX {jax.__version__}"] = jax_case
    except ImportError:
        pass
    return found


def main():
    engine = {}
    if not CASES:
        sys.exit(f"no case of {CASES_FILE} contains {CASE_FILTER!r}")
    output = subprocess.run([os.path.join(ROOT, "benchmarks", "build", "engine_bench"), CASES_FILE, "all", CASE_FILTER], check=True,
                            capture_output=True, text=True).stdout
    for line in output.splitlines():
        row = json.loads(line)
        engine[(row["case"], row["dtype"])] = row
    available = peers()
    rng = np.random.default_rng(0)

    header = ["case", "bytes moved", "floor (x.copy)", "warm floor", "Tidepool 1 thr", "Tidepool 2 thr",
              "2 thr / floor"] + list(available) + ["best peer / Tidepool"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, kind, shape, k, s, p in CASES:
        x = rng.standard_normal(shape).astype(np.float32)
        row = engine[(name, "float32")]
        runs = runs_for(x.nbytes)
        copy_ms = median_ms(lambda: x.copy(), runs)
        floor = copy_ms * row["bytes"] / (2 * x.nbytes)
        peer_ms = [median_ms(make(kind, x, k, s, p), runs) for make in available.values()]
        best = min(peer_ms) if peer_ms else float("nan")
        cells = [name, f"{row['bytes'] / 2**20:.1f} MB", f"{floor:.2f}", f"{row['floor_ms']:.2f}",
                 f"{row['threads1_ms']:.2f}", f"{row['threads2_ms']:.2f}", f"{row['threads2_ms'] / floor:.2f}x"]
        cells += [f"{t:.2f}" for t in peer_ms]
        cells.append(f"{best / row['threads2_ms']:.1f}x" if peer_ms else "-")
        print("| " + " | ".join(cells) + " |")
        engine[(name, "float32")]["copy_floor"] = floor
        sys.stdout.flush()

    print("\nEvery dtype (Tidepool, 2 threads, ms; in brackets: time / the float32 x.copy floor scaled to the dtype's bytes)\n")
    dtypes = sorted({d for (_, d) in engine}, key=["float32", "float16", "bfloat16", "float64", "int8", "uint8", "int16",
                                                  "int32", "int64"].index)
    print("| case | " + " | ".join(dtypes) + " |")
    print("|" + "---|" * (len(dtypes) + 1))
    for name, *_ in CASES:
        base = engine[(name, "float32")]
        cells = []
        for d in dtypes:
            row = engine[(name, d)]
            floor = base["copy_floor"] * row["bytes"] / base["bytes"]
            cells.append(f"{row['threads2_ms']:.2f} ({row['threads2_ms'] / floor:.2f}x)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nMilliseconds, medians. Tidepool allocates only per-thread scratch, tiles of 512 to 896 KB"
          " (the core's L2) plus a few rows, reused across calls (at most 2 MiB for these cases:"
          " Tests/TidepoolCoreTests/PoolingTests.swift, MemoryTests).")


if __name__ == "__main__":
    main()
