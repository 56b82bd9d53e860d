"""make bench, gradient part: the backward pass (tidepool.*_vjp, in-process, float32, all
threads) on the engine's cases (benchmarks/cases.txt), against its byte floor and against
mx.vjp and jax.vjp of the same layer (each when importable), side by side in one run, medians.

The floor is numpy's copy of the input and of the cotangent, which reads what the pass reads
and writes a bit more than the gradient."""

import statistics
import time

import numpy as np

import tidepool
from engine_bench import CASES

try:
    import mlx.core as mx
    import mlx.nn as mnn
except ImportError:
    mx = None
try:
    import jax
    import jax.numpy as jnp
except ImportError:
    jax = None


def median_ms(function, runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def median_pair_ms(functions, floor, runs):
    """Medians of each of `functions` and of `floor`, called in turn run after run, so that
    they share the machine's moments of load."""
    times = [[] for _ in functions]
    floors = []
    for _ in range(runs):
        for function, kept in zip(functions, times):
            start = time.perf_counter()
            function()
            kept.append(time.perf_counter() - start)
        start = time.perf_counter()
        floor()
        floors.append(time.perf_counter() - start)
    return [statistics.median(kept) * 1e3 for kept in times], statistics.median(floors) * 1e3


def jax_pool(kind, d, k, s, p):
    """MLX's semantics in JAX: pad with 0 / -inf, reduce_window, divide by the full window."""
    window, strides = (1,) + (k,) * d + (1,), (1,) + (s,) * d + (1,)
    padding = ((0, 0),) + ((p, p),) * d + ((0, 0),)
    if kind == "avg":
        return lambda a: jax.lax.reduce_window(a, 0.0, jax.lax.add, window, strides, padding) / k ** d
    return lambda a: jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, window, strides, padding)


def main():
    rng = np.random.default_rng(0)
    cases = []
    for name, kind, shape, k, s, p in CASES:
        d = len(shape) - 2
        x = rng.standard_normal(shape).astype(np.float32)
        y = getattr(tidepool, f"{kind}_pool{d}d")(x, k, s, p)
        g = rng.standard_normal(y.shape).astype(np.float32)
        cases.append((kind, shape, k, s, p, d, x, g))
    # Tidepool and the floor of every case first, run for run in turn (the machine is shared),
    # then the peers: JAX's threads keep spinning for a while after its calls and slowed the
    # next case's Tidepool cells when the peers ran case by case (k3 s2 p1: 66-72 ms against
    # 40-48 alone).
    ours = []
    for kind, shape, k, s, p, d, x, g in cases:
        out = np.empty_like(x)
        vjp = getattr(tidepool, f"{kind}_pool{d}d_vjp")
        rules = ("split", "first") if kind == "max" else ("split",)
        ours.append((rules, *median_pair_ms([lambda t=t: vjp(x, g, k, s, p, ties=t, out=out) for t in rules],
                                             lambda: (x.copy(), g.copy()), 9)))
    print("\nGradients (vector-Jacobian products), float32, milliseconds (medians):")
    print("| case | Tidepool | floor | Tidepool / floor | mx.vjp | jax.vjp | best peer / Tidepool |")
    print("|---|---|---|---|---|---|---|")
    for (kind, shape, k, s, p, d, x, g), (rules, times, floor) in zip(cases, ours):
        peers = {}
        if mx is not None:
            layer = getattr(mnn, f"{kind.capitalize()}Pool{d}d")(k, s, p)
            xm, gm = mx.array(x), mx.array(g)

            def mlx_vjp():
                _, (r,) = mx.vjp(lambda a: layer(a), [xm], [gm])
                mx.eval(r)
            peers["mlx"] = median_ms(mlx_vjp, 3)
        if jax is not None:
            function = jax.jit(lambda a, c, f=jax_pool(kind, d, k, s, p): jax.vjp(f, a)[1](c)[0])
            xj, gj = jnp.asarray(x), jnp.asarray(g)
            function(xj, gj).block_until_ready()
            peers["jax"] = median_ms(lambda: function(xj, gj).block_until_ready(), 3)
        best = min(peers.values()) if peers else float("nan")
        cells = [f"{peers[p]:.1f}" if p in peers else "-" for p in ("mlx", "jax")]
        # Max under both tie rules: MLX's split (mx.vjp's) and PyTorch's first.
        for ties, time_ms in zip(rules, times):
            label = f"{kind.capitalize()}Pool{d}d k{k} s{s} p{p}{', ties=first' if ties == 'first' else ''}, {shape}"
            print(f"| {label} | {time_ms:.1f} | {floor:.1f} | {time_ms / floor:.2f}x | "
                  f"{cells[0]} | {cells[1]} | {best / time_ms:.1f}x |")


if __name__ == "__main__":
    main()
