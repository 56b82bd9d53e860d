"""make bench, tiny calls: what one small pooling costs, AvgPool2d(2) on a (1, 8, 8, 4)
float32 array, from C (benchmarks/build/tiny_bench) and from Python: a Tidepool layer object,
the functional form, numpy's reshape-mean (the same average), and MLX's layer and a jitted
JAX reduce_window when importable. Medians of 5 runs of timeit, microseconds per call."""

import os
import statistics
import subprocess
import timeit

import numpy as np

import tidepool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def per_call_us(function, calls=20000, runs=5):
    function()
    return statistics.median(timeit.timeit(function, number=calls) / calls * 1e6 for _ in range(runs))


def main():
    x = np.arange(8 * 8 * 4, dtype=np.float32).reshape(1, 8, 8, 4)
    layer = tidepool.nn.AvgPool2d(2)
    rows = [
        ("Python, tidepool.nn.AvgPool2d(2)(x)", lambda: layer(x)),
        ("Python, tidepool.avg_pool2d(x, 2)", lambda: tidepool.avg_pool2d(x, 2)),
        ("Python, numpy x.reshape(1, 4, 2, 4, 2, 4).mean(axis=(2, 4))", lambda: x.reshape(1, 4, 2, 4, 2, 4).mean(axis=(2, 4))),
    ]
    try:
        import mlx.core as mx
        import mlx.nn as mnn

        xm, mlx_layer = mx.array(x), mnn.AvgPool2d(2)
        rows.append((f"Python, MLX {mx.__version__} nn.AvgPool2d(2), evaluated", lambda: mx.eval(mlx_layer(xm))))
    except ImportError:
        pass
    try:
        import jax

        xj = jax.numpy.asarray(x)
        pooled = jax.jit(lambda a: jax.lax.reduce_window(a, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4)
        rows.append((f"Python, JAX {jax.__version__} jit reduce_window", lambda: pooled(xj).block_until_ready()))
    except ImportError:
        pass
    print("\nTiny calls: AvgPool2d(2) on (1, 8, 8, 4) float32 (and gradients from C), per call (medians)")
    print("| call | time |")
    print("|---|---|")
    c = subprocess.run([os.path.join(ROOT, "benchmarks", "build", "tiny_bench")], check=True, capture_output=True, text=True)
    print(c.stdout, end="")
    for name, function in rows:
        print(f"| {name} | {per_call_us(function):.2f} us |")


if __name__ == "__main__":
    main()
