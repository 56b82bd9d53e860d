"""Two builds of libtidepool side by side: each case timed with one library and then the other
in fresh processes (the binding loads one library per process), alternating which goes first,
for --rounds rounds; the table gives the median of the rounds' medians. The machine is shared
and noisy: a change is measured against its parent this way, in one run, not against figures
from another day.

    python ab_bench.py BEFORE.so AFTER.so "Max 3 7 1 8 float32 2" "Avg 1 3 1 8 float32 2 nan"

A case is: layer (Avg or Max), spatial dims (1-3), kernel, stride, channels, dtype, threads and,
optionally, `nan` (1% of the input NaN). Padding is kernel // 2; the input is about 64 MB, batch
4, equal spatial axes (as in grid_bench.py). Each process times --calls calls after one: wall
time, or with --cpu the process's CPU time per call (user + system, all threads), which a busy
machine disturbs less where the work is the CPU's. With --reuse-output every call writes one
output array (`out=`): the kernel's time without the page faults of a fresh 64 MB output, which
otherwise add several milliseconds that vary from process to process.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time


def child(case, calls, cpu, reuse):
    import numpy as np

    import tidepool

    kind, dims, kernel, stride, channels, dtype_name, threads = case[:7]
    dims, kernel, stride, channels, threads = int(dims), int(kernel), int(stride), int(channels), int(threads)
    if dtype_name == "bfloat16":
        import ml_dtypes

        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(dtype_name)
    side = round(((64 << 20) / (4 * channels * dtype.itemsize)) ** (1 / dims))
    x = (np.random.default_rng(0).standard_normal((4,) + (side,) * dims + (channels,)) * 10).astype(dtype)
    if len(case) > 7 and case[7] == "nan":
        flat = x.reshape(-1)
        flat[np.random.default_rng(2).integers(0, flat.size, flat.size // 100)] = np.nan
    layer = getattr(tidepool.nn, f"{kind}Pool{dims}d")(kernel, stride, kernel // 2)
    tidepool.set_num_threads(threads)
    out = layer(x)
    kwargs = {"out": out} if reuse else {}
    clock = time.process_time if cpu else time.perf_counter
    times = []
    for _ in range(calls):
        start = clock()
        layer(x, **kwargs)
        times.append(clock() - start)
    print(statistics.median(times) * 1e3, tidepool.library_path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--cpu", action="store_true", help="CPU time per call instead of wall time")
    parser.add_argument("--reuse-output", action="store_true", help="every call writes the same output array (out=)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.cases[0].split(), args.calls, args.cpu, args.reuse_output)
        return
    libraries = [("before", os.path.abspath(args.before)), ("after", os.path.abspath(args.after))]
    binding = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bindings", "python")
    times = {(case, name): [] for case in args.cases for name, _ in libraries}
    for round_index in range(args.rounds):
        for case in args.cases:
            for name, library in libraries if round_index % 2 == 0 else libraries[::-1]:
                env = dict(os.environ, TIDEPOOL_LIBRARY=library, PYTHONPATH=binding)
                command = [sys.executable, __file__, "--child", "--calls", str(args.calls)] + (["--cpu"] if args.cpu else []) \
                    + (["--reuse-output"] if args.reuse_output else [])
                run = subprocess.run(command + [args.before, args.after, case],
                                     env=env, capture_output=True, text=True)
                if run.returncode != 0:
                    sys.exit(f"{case!r} with {library} failed (exit {run.returncode}):\n{run.stderr}")
                median, loaded = run.stdout.split(maxsplit=1)
                # The binding loads TIDEPOOL_LIBRARY or fails; older bindings fell back to another.
                if os.path.realpath(loaded.strip()) != os.path.realpath(library):
                    sys.exit(f"asked for {library}, the binding loaded {loaded.strip()}")
                times[(case, name)].append(float(median))
    unit = "CPU ms" if args.cpu else "ms"
    print(f"| case | threads | before {unit} | after {unit} | after / before |")
    print("|---|---|---|---|---|")
    for case in args.cases:
        before, after = (statistics.median(times[(case, name)]) for name, _ in libraries)
        fields = case.split()
        kind, dims, kernel, stride, channels, dtype_name, threads = fields[:7]
        extra = ", 1% NaN" if len(fields) > 7 else ""
        print(f"| {kind}Pool{dims}d k{kernel} s{stride} p{int(kernel) // 2} C={channels} {dtype_name}{extra} | {threads} "
              f"| {before:.2f} | {after:.2f} | {after / before:.2f} |")


if __name__ == "__main__":
    main()
