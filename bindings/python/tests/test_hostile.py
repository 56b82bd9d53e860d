"""Hostile input and other users (issue 13): the one-message crashes as regression tests,
another uid trying to reach this user's shared memory over ipc and tcp, a squatted default
directory, and a short run of the hostile client."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import tidepool
from conftest import REPO, TIDEPOOLD, Daemon
from rawproto import POOL, STATUS, RawClient, header, make_object, pool_body, register_request

NOBODY = 65534
HERE = Path(__file__).resolve().parent
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a second uid (setpriv) or a private mount (unshare -m)")


# ---- the reproducers of issue 13, in process -------------------------------------------------


def test_huge_kernel_and_stride_are_an_error_not_a_crash():
    # Ended Python with SIGILL (an overflow trap in the output length).
    with pytest.raises(ValueError, match="negative"):
        tidepool.avg_pool1d(np.zeros((1, 0, 1), np.float32), kernel_size=2**62 + 1, stride=2**62)
    assert tidepool.avg_pool1d(np.zeros((1, 1, 1), np.float32), kernel_size=2**62 + 1, stride=2**62).shape == (1, 0, 1)


def test_stride_far_past_the_input_is_one_window():
    # Trapped on stride x channels; a stride past the input gives the first window only.
    x = np.random.default_rng(13).standard_normal((2, 5, 3)).astype(np.float32)
    for function in (tidepool.avg_pool1d, tidepool.max_pool1d):
        np.testing.assert_array_equal(function(x, 2, stride=2**62, padding=1), function(x, 2, stride=7, padding=1))


def test_python_integers_beyond_int64_are_refused_not_wrapped():
    # ctypes would silently take 2**64 + 2 as 2.
    x = np.ones((1, 8, 1), np.float32)
    for arguments in (dict(kernel_size=2**64 + 2), dict(kernel_size=2, stride=2**63), dict(kernel_size=2, padding=2**70)):
        with pytest.raises(ValueError, match="below 2\\*\\*63"):
            tidepool.max_pool1d(x, **arguments)
    with pytest.raises(ValueError):
        tidepool.set_num_threads(2**32 + 2)
    assert tidepool.get_num_threads() >= 1
    with pytest.raises(ValueError, match="timeout"):
        tidepool.connect("ipc:///nonexistent/x.sock", timeout=1e12)


def test_absurd_padding_is_refused_before_allocating():
    # One element with windows of 2^30: gigabytes of scratch per thread, refused by name.
    with pytest.raises(tidepool.OutOfMemoryError, match="scratch"):
        tidepool.max_pool1d(np.ones((1, 1, 1), np.float32), kernel_size=2**30, stride=2**31, padding=2**30)


@pytest.mark.parametrize("ties", ["split", "first"])
def test_gradient_scratch_is_bounded_by_the_tensors(ties):
    # The max's gradient keeps each row's window maxima (H rows x outW columns): one window of
    # 2^20 rows over a 4 MB column, widened to 2048 columns by padding, would take 8 GB per
    # thread for tensors of 8 MB. Refused by name, before allocating; a sane call still runs.
    x = np.ones((1, 2**20, 1, 1), np.float32)
    g = np.ones((1, 1, 2048, 1), np.float32)
    with pytest.raises(tidepool.OutOfMemoryError, match="scratch per thread"):
        tidepool.max_pool2d_vjp(x, g, (2**20, 2), 1, (0, 2**10), ties=ties)
    small = tidepool.max_pool2d_vjp(x[:, :4], g[:, :, :2], (4, 2), 1, (0, 1), ties=ties)
    assert small.shape == (1, 4, 1, 1) and np.isfinite(small).all()


# ---- the daemon ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tcp_and_ipc_daemon():
    running = Daemon("--endpoint", "tcp://127.0.0.1:0", "--max-job-bytes", str(1 << 20))
    yield running
    assert running.stop() == 0, running.logs()


def tcp_endpoint(running):
    return next(e for e in running.endpoints if e.startswith("tcp://"))


def test_the_four_wire_reproducers_are_answered(tcp_and_ipc_daemon):
    client = RawClient(tcp_and_ipc_daemon.endpoint)
    region, memory, status, _ = client.register(1 << 16)
    assert status == 0
    x = np.zeros((1, 1, 1), np.float32)
    shape3 = (1, 4, 3)
    messages = [
        # kernel 2^62 + 1, stride 2^62, shape (1, 1, 1): an empty output.
        ([header(POOL, 1) + struct.pack("<iiii8q3q3q3qII6Q", 1, 1, 1, 3, 1, 1, 1, 0, 0, 0, 0, 0, 2**62 + 1, 0, 0,
                                        2**62, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0), x.tobytes()], (0,)),
        # stride 2^62 with 3 channels: one window.
        ([header(POOL, 2) + struct.pack("<iiii8q3q3q3qII6Q", 1, 1, 1, 3, *shape3, 0, 0, 0, 0, 0, 2, 0, 0, 2**62, 0, 0,
                                        0, 0, 0, 0, 0, 0, 0, 48, 0, 0, 12), np.zeros(shape3, np.float32).tobytes()], (0,)),
        # input and output in one region, output offset 2^63 - 4 (the region need not exist).
        ([header(POOL, 3) + pool_body((1, 4, 1), 1, 1, 2, 2, 0, in_loc=1, out_loc=1, in_region=region,
                                      out_region=region, out_offset=2**63 - 4)], (STATUS["OVERFLOW"],)),
        # input offset 2^63 - 4, the done word in the same region.
        ([header(POOL, 4, flags=1) + pool_body((1, 4, 1), 1, 1, 2, 2, 0, in_loc=1, out_loc=1, in_region=region,
                                               in_offset=2**63 - 4, out_region=region, out_offset=64)
          + struct.pack("<QQ", region, 128)], (STATUS["OVERFLOW"],)),
    ]
    for frames, expected in messages:
        _, _, status, reply = client.call(frames)
        assert status in expected, reply
        assert client.ping_ok()
    memory.unlink()
    memory.close()
    client.close()


def test_tcp_gets_no_pid_and_no_shared_memory(tcp_and_ipc_daemon):
    running = tcp_and_ipc_daemon
    ipc, tcp = RawClient(running.endpoint), RawClient(tcp_endpoint(running))
    assert ipc.ping()[1] == running.process.pid
    assert tcp.ping()[1] == 0, "a tcp peer was told the daemon's pid"
    memory = make_object(4096)
    _, _, status, reply = tcp.call(register_request(5, 4096, memory._name))
    assert status == STATUS["PERMISSION"] and b"only over ipc" in reply[1]
    memory.unlink()
    memory.close()
    ipc.close()
    tcp.close()


ATTACKER = r"""
import json, os, struct, sys
sys.path.insert(0, sys.argv[1])
from rawproto import RawClient, make_object, register_request
ipc_endpoint, tcp_endpoint, victim_name, victim_pid = sys.argv[2:6]
results = {"uid": os.getuid()}
for transport, endpoint in (("ipc", ipc_endpoint), ("tcp", tcp_endpoint)):
    client = RawClient(endpoint)
    # The victim's object, under the attacker's own pid and under the victim's.
    for label, pid in (("own_pid", os.getpid()), ("victim_pid", int(victim_pid))):
        _, _, status, frames = client.call(register_request(1, 4096, victim_name, pid=pid))
        results[f"{transport}_{label}"] = [status, frames[1].decode() if len(frames) > 1 else ""]
    results[f"{transport}_ping_pid"] = client.ping()[1]
    client.close()
# The attacker's own object over ipc: a root daemon maps it, for the attacker only.
mine = make_object(4096)
client = RawClient(ipc_endpoint)
_, _, status, frames = client.call(register_request(2, 4096, mine._name))
results["ipc_own_object"] = status
client.close()
mine.unlink()
print(json.dumps(results))
"""


@needs_root
def test_another_uid_cannot_reach_this_users_shared_memory(tmp_path):
    """uid 65534 names a root-owned 0600 object in REGISTER over ipc and over tcp: refused
    both ways; the owner's data is untouched and the owner still registers it."""
    directory = tempfile.mkdtemp(prefix="tidepool-uid-test-")
    os.chmod(directory, 0o755)  # so that the other uid can reach the socket at all
    running = Daemon("--endpoint", "tcp://127.0.0.1:0", directory=directory)
    try:
        os.chmod(running.endpoint[len("ipc://"):], 0o777)
        victim = make_object(4096)
        victim.buf[:8] = b"secret!!"
        probe = subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
                                sys.executable, "-c", "import zmq, numpy"], capture_output=True)
        if probe.returncode != 0:
            pytest.skip(f"uid {NOBODY} cannot run {sys.executable}: {probe.stderr.decode()[-200:]}")
        attack = subprocess.run(
            ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", sys.executable, "-c", ATTACKER,
             str(HERE), running.endpoint, tcp_endpoint(running), victim._name, str(os.getpid())],
            capture_output=True, text=True, timeout=60, env=dict(os.environ, HOME="/"))
        assert attack.returncode == 0, attack.stderr
        results = json.loads(attack.stdout)
        assert results["uid"] == NOBODY
        for transport in ("ipc", "tcp"):
            for label in ("own_pid", "victim_pid"):
                status, message = results[f"{transport}_{label}"]
                assert status == STATUS["PERMISSION"], (transport, label, message)
        assert "belongs to uid 0, but the process registering it runs as uid 65534" in results["ipc_own_pid"][1]
        assert "says pid" in results["ipc_victim_pid"][1]
        assert "only over ipc" in results["tcp_own_pid"][1]
        assert results["ipc_ping_pid"] == running.process.pid and results["tcp_ping_pid"] == 0
        assert results["ipc_own_object"] == 0
        # Untouched, still named, and the owner's own registration works.
        assert bytes(victim.buf[:8]) == b"secret!!"
        assert os.path.exists(f"/dev/shm/{victim._name[1:]}")
        owner = RawClient(running.endpoint)
        _, _, status, frames = owner.call(register_request(3, 4096, victim._name))
        assert status == 0, frames
        owner.close()
        victim.unlink()
        victim.close()
    finally:
        assert running.stop() == 0, running.logs()
        shutil.rmtree(directory, ignore_errors=True)


SQUAT = r"""
set -u
mount --bind /tmp {old_tmp}
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir /tmp/tidepool-0 && chown {nobody}:{nobody} /tmp/tidepool-0 && chmod 0777 /tmp/tidepool-0
timeout 10 env -u XDG_RUNTIME_DIR -u TIDEPOOL_ENDPOINT {tidepoold} --log-level info; echo "daemon exit $?"
env -u XDG_RUNTIME_DIR -u TIDEPOOL_ENDPOINT PYTHONPATH={python_path} {python} -c '
import tidepool
try:
    tidepool.connect(timeout=2)
    print("client connected")
except tidepool.PermissionError as error:
    print("client refused:", error)
'
"""


@needs_root
def test_squatted_default_directory_is_refused_by_daemon_and_client():
    """In a private /tmp, another uid creates /tmp/tidepool-0 (0777) first: the daemon
    refuses to start there, saying why, and a client refuses to connect through it."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    # The private /tmp hides the host's; a checkout, a venv or a build under /tmp stays
    # reachable through a bind mount of the host's /tmp made first (outside /tmp).
    old_tmp = tempfile.mkdtemp(prefix="tidepool-host-tmp-", dir="/var/tmp")

    def reachable(path):
        path = str(path)
        return old_tmp + path[len("/tmp"):] if path == "/tmp" or path.startswith("/tmp/") else path

    script = SQUAT.format(nobody=NOBODY, old_tmp=old_tmp, tidepoold=reachable(TIDEPOOLD), python=reachable(sys.executable),
                          python_path=reachable(REPO / "bindings" / "python"))
    try:
        result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    finally:
        os.rmdir(old_tmp)
    output = result.stdout + result.stderr
    assert "daemon exit 1" in output, output
    assert "/tmp/tidepool-0" in output and "belongs to uid 65534" in output, output
    assert "client refused:" in output and "client connected" not in output, output


# ---- the hostile client ------------------------------------------------------------------------


def test_hostile_client_short_run():
    """A few thousand random and mutated messages from several connections, checked jobs
    in between: every message answered, every job exact, memory and descriptors bounded.
    (`make fuzz` runs 10^5.)"""
    from hostile import Hostile

    running = Daemon("--max-job-bytes", str(1 << 20))
    try:
        hostile = Hostile(running.endpoint, running.process.pid, seed=int.from_bytes(os.urandom(4), "little"))
        try:
            stats = hostile.run(int(os.environ.get("TIDEPOOL_HOSTILE_MESSAGES", "3000")))
        finally:
            hostile.close()
        print(json.dumps(stats))
        assert stats["replies"] == stats["messages"]
        assert stats["checked_jobs"] > 0
        assert stats["rss_end"] - stats["rss_warm"] < 32 << 20, stats
        assert stats["fds_end"] <= stats["fds_warm"] + 8, stats
    finally:
        assert running.stop() == 0, running.logs()


# ---- the Python boundary, at random ------------------------------------------------------------

PYTHON_EDGES = [0, 1, 2, 3, 5, 2**31 - 1, 2**31, 2**40, 2**62 + 1, 2**63 - 1, 2**63, 2**64 + 2, -1, -(2**63), -(2**64)]


def test_random_python_arguments_are_an_error_or_exact():
    """Kernel, stride and padding from small values and values where arithmetic breaks (ints
    past 64 bits, negatives), strided and reversed views, dtypes, and `out=` arrays of the
    wrong shape or layout: every call raises ValueError or tidepool.Error, or returns exactly
    what the float64 reference (within the dtype's tolerance) and a contiguous copy give."""
    from numpy.lib.stride_tricks import as_strided

    from conftest import assert_pool_close, reference_pool

    rng = np.random.default_rng(1313)
    storage = rng.standard_normal(4096).astype(np.float64)
    outcomes = {"ok": 0, "refused": 0}
    for trial in range(3000):
        d = int(rng.integers(1, 4))
        kind = "Avg" if rng.random() < 0.5 else "Max"

        def pick(small):
            return int(rng.choice(PYTHON_EDGES)) if rng.random() < 0.15 else int(rng.integers(*small))

        kernel = tuple(pick((1, 4)) for _ in range(d)) if rng.random() < 0.5 else pick((1, 4))
        stride = None if rng.random() < 0.2 else (tuple(pick((1, 4)) for _ in range(d)) if rng.random() < 0.5 else pick((1, 4)))
        padding = tuple(pick((0, 2)) for _ in range(d)) if rng.random() < 0.5 else pick((0, 2))
        shape = tuple(int(rng.integers(0, 5)) for _ in range(d + 2))
        dtype = np.dtype(rng.choice([np.float32, np.float64, np.int16, np.uint8]))
        base = storage.astype(dtype) if dtype.kind == "f" else (storage * 50).astype(dtype)
        strides = tuple(int(rng.integers(-3, 4)) * dtype.itemsize for _ in range(d + 2))
        reach = sum(abs(s) * max(n - 1, 0) for s, n in zip(strides, shape))
        if reach >= 2048 * dtype.itemsize:
            continue
        # A view around the middle of the buffer, reaching less than half of it either way.
        x = as_strided(base[2048:], shape=shape, strides=strides)
        function = getattr(tidepool, f"{kind.lower()}_pool{d}d")
        # Huge paddings ask for outputs of gigabytes, which the library would rightly make:
        # only calls whose output (if valid) stays small are run.
        as_d = lambda v: v if isinstance(v, tuple) else (v,) * d
        try:
            lengths = [(n + 2 * q - w) // st + 1 for n, w, st, q in
                       zip(shape[1:-1], as_d(kernel), as_d(kernel if stride is None else stride), as_d(padding))]
            if shape[0] * shape[-1] * np.prod([max(n, 1) for n in lengths], dtype=object) > 1 << 20:
                continue
        except (ZeroDivisionError, TypeError):
            pass
        try:
            got = function(x, kernel, stride, padding)
        except (ValueError, tidepool.Error):
            outcomes["refused"] += 1
            continue
        outcomes["ok"] += 1
        assert got.tobytes() == function(np.ascontiguousarray(x), kernel, stride, padding).tobytes(), trial
        k = kernel if isinstance(kernel, tuple) else (kernel,) * d
        p = padding if isinstance(padding, tuple) else (padding,) * d
        if max(k) <= 8 and max(p) <= 4 and got.size:
            s = stride if stride is not None else kernel
            assert_pool_close(kind, got, reference_pool(kind, d, np.ascontiguousarray(x), kernel, s, padding), dtype)
        # A wrong `out=` is refused before anything is written.
        if got.size:
            wrong = np.full(got.shape[:-1] + (got.shape[-1] + 1,), 7, got.dtype)
            with pytest.raises(ValueError):
                function(x, kernel, stride, padding, out=wrong)
            assert (wrong == 7).all()
    assert outcomes["ok"] > 500 and outcomes["refused"] > 100, outcomes
