"""make soak: 8 client processes run mixed jobs (shared-memory and inline, every layer and
dtype) against one tidepoold, which is killed (SIGKILL) and restarted halfway through. Every
result is compared with the in-process engine. Prints jobs, wrong and lost results, the
daemons' memory and descriptors, and what is left in /dev/shm; exits non-zero unless wrong,
lost and leftovers are all 0.

    python soak.py [--seconds 120] [--clients 8]"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def worker(endpoint, seed, deadline):
    """One client process: jobs until `deadline`, each checked. Prints its counts as JSON."""
    import numpy as np

    import tidepool

    rng = np.random.default_rng(seed)
    dtypes = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.uint8, np.uint16]
    counts = dict(jobs=0, wrong=0, lost=0, errors=[])
    client = tidepool.connect(endpoint, timeout=60)
    while time.time() < deadline:
        d = int(rng.integers(1, 4))
        kind = "avg" if rng.random() < 0.5 else "max"
        shape = (int(rng.integers(1, 3)), *[int(rng.integers(4, 24)) for _ in range(d)], int(rng.integers(1, 9)))
        kernel = int(rng.integers(1, 4))
        stride = int(rng.integers(1, 3))
        padding = int(rng.integers(0, kernel // 2 + 1))
        dtype = np.dtype(dtypes[int(rng.integers(len(dtypes)))])
        x = (rng.standard_normal(shape) * 10).astype(dtype) if dtype.kind == "f" else \
            rng.integers(0, 100, size=shape).astype(dtype)
        function = f"{kind}_pool{d}d"
        expected = getattr(tidepool, function)(x, kernel, stride, padding)
        if rng.random() < 0.5:
            source = client.empty(x.shape, x.dtype)
            source[...] = x
        else:
            source = x
        try:
            got = getattr(client, function)(source, kernel, stride, padding)
        except tidepool.Error as error:
            counts["lost"] += 1
            counts["errors"].append(f"{type(error).__name__}: {error}"[:300])
            continue
        counts["jobs"] += 1
        if got.dtype != expected.dtype or got.tobytes() != expected.tobytes():
            counts["wrong"] += 1
    client.close()
    print(json.dumps(counts), flush=True)


def dev_shm_objects():
    return sorted(name for name in os.listdir("/dev/shm") if name.startswith("tidepool-"))


def process_figures(pid):
    # RssAnon: the daemon's own memory, not the clients' shared memory it maps.
    with open(f"/proc/{pid}/status") as status:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in status if line.startswith(("VmRSS:", "RssAnon:"))}
    return dict(rss_mib=round(fields["VmRSS"] / 2**20, 1), anon_mib=round(fields["RssAnon"] / 2**20, 1),
                fds=len(os.listdir(f"/proc/{pid}/fd")))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--worker", nargs=3, metavar=("ENDPOINT", "SEED", "DEADLINE"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        endpoint, seed, deadline = arguments.worker
        worker(endpoint, int(seed), float(deadline))
        return

    from conftest import Daemon

    before = set(dev_shm_objects())
    first = Daemon()
    directory = first.directory
    report = dict(clients=arguments.clients, seconds=arguments.seconds, first_daemon=dict(start=process_figures(first.process.pid)))
    deadline = time.time() + arguments.seconds
    env = dict(os.environ, PYTHONPATH=f"{HERE.parents[0]}:{HERE}")
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", first.endpoint, str(n), str(deadline)],
                                stdout=subprocess.PIPE, env=env, text=True) for n in range(arguments.clients)]
    time.sleep(arguments.seconds / 2)
    report["first_daemon"]["before_kill"] = process_figures(first.process.pid)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    killed = time.monotonic()
    second = Daemon(directory=directory)
    report["restart_seconds"] = round(time.monotonic() - killed, 3)
    report["second_daemon"] = dict(start=process_figures(second.process.pid))
    results = []
    for process in workers:
        output, _ = process.communicate(timeout=arguments.seconds + 120)
        results.append(json.loads(output.strip().splitlines()[-1]) if output.strip() else dict(jobs=0, wrong=0, lost=1,
                                                                                                 errors=["no report"]))
    report["second_daemon"]["end"] = process_figures(second.process.pid)
    report["second_daemon"]["exit"] = second.stop()
    report["jobs"] = sum(r["jobs"] for r in results)
    report["wrong"] = sum(r["wrong"] for r in results)
    report["lost"] = sum(r["lost"] for r in results)
    report["errors"] = [e for r in results for e in r["errors"]][:10]
    report["leftover_dev_shm"] = sorted(set(dev_shm_objects()) - before)
    print(json.dumps(report, indent=1))
    if report["wrong"] or report["lost"] or report["leftover_dev_shm"] or report["second_daemon"]["exit"] != 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
