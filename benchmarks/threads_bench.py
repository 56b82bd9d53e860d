"""Small and mid-sized poolings at 1 and 2 threads: what handing a call to the engine's helper
threads costs and saves. Each case is timed at 1 thread, then 2, for --rounds rounds (calls back
to back, as a loop over batches makes them); the table gives each round's median in
microseconds and the ratio of the best 2-thread median to the best 1-thread one (below 1: the
helpers pay). Float32 through the Python binding; stride 1, padding kernel // 2.

    PYTHONPATH=bindings/python .venv-bench/bin/python benchmarks/threads_bench.py [--calls 200]

TIDEPOOL_LIBRARY chooses the library (ab_bench.py compares two on large inputs).
"""

import argparse
import statistics
import time

import numpy as np

import tidepool

CASES = [
    ("Avg", 3, 7, (1, 16, 16, 16, 8)), ("Max", 3, 7, (1, 16, 16, 16, 8)),
    ("Avg", 3, 3, (1, 16, 16, 16, 8)), ("Max", 3, 3, (1, 16, 16, 16, 8)),
    ("Avg", 3, 7, (1, 32, 32, 32, 8)), ("Max", 3, 7, (1, 32, 32, 32, 8)), ("Avg", 3, 3, (1, 32, 32, 32, 8)),
    ("Avg", 2, 11, (2, 64, 64, 8)), ("Max", 2, 11, (2, 64, 64, 8)), ("Avg", 2, 7, (1, 32, 32, 8)),
    ("Avg", 2, 3, (2, 64, 64, 8)), ("Avg", 2, 3, (4, 128, 128, 16)), ("Max", 2, 7, (4, 128, 128, 16)),
    ("Avg", 2, 3, (1, 64, 64, 8)), ("Avg", 2, 7, (1, 64, 64, 8)), ("Max", 2, 7, (1, 64, 64, 8)),
    ("Avg", 1, 9, (4, 1024, 8)), ("Max", 1, 9, (4, 4096, 8)), ("Avg", 2, 3, (1, 256, 256, 1)),
    ("Avg", 3, 5, (1, 24, 24, 24, 1)),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"library {tidepool.library_path}")
    print("| case | 1 thread, us | 2 threads, us | 2 / 1 |")
    print("|---|---|---|---|")
    try:
        for kind, dims, kernel, shape in CASES:
            x = rng.standard_normal(shape).astype(np.float32)
            layer = getattr(tidepool.nn, f"{kind}Pool{dims}d")(kernel, 1, kernel // 2)
            medians = {1: [], 2: []}
            for _ in range(args.rounds):
                for threads in (1, 2):
                    tidepool.set_num_threads(threads)
                    for _ in range(10):
                        layer(x)
                    times = []
                    for _ in range(args.calls):
                        start = time.perf_counter()
                        layer(x)
                        times.append(time.perf_counter() - start)
                    medians[threads].append(statistics.median(times) * 1e6)
            one, two = (" / ".join(f"{m:.1f}" for m in medians[t]) for t in (1, 2))
            print(f"| {kind}Pool{dims}d k{kernel} {shape} | {one} | {two} | {min(medians[2]) / min(medians[1]):.2f} |",
                  flush=True)
    finally:
        tidepool.set_num_threads(0)


if __name__ == "__main__":
    main()
