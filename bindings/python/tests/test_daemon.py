"""tidepoold end to end: remote results equal in-process ones (shared memory and inline),
many clients at once, a client killed mid-job, SIGTERM with jobs in flight."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import tidepool
from conftest import ALL_DTYPES, LAYERS, TIDEPOOLD, Daemon, random_array, tidepool_segments
from test_mlx_parity import random_configuration


def in_process(kind, d, x, k, s, p):
    return getattr(tidepool, f"{kind.lower()}_pool{d}d")(x, k, s, p)


def remote(client, kind, d, x, k, s, p):
    return getattr(client, f"{kind.lower()}_pool{d}d")(x, k, s, p)


def test_remote_equals_in_process_over_random_jobs(daemon):
    rng = np.random.default_rng(2026)
    with tidepool.connect(daemon.endpoint) as client:
        jobs = 0
        while jobs < 120:
            kind, d = LAYERS[jobs % len(LAYERS)]
            shape, kernel, stride, padding, valid = random_configuration(rng, d)
            if not valid:
                continue
            dtype = ALL_DTYPES[int(rng.integers(len(ALL_DTYPES)))]
            x = random_array(rng, shape, dtype)
            expected = in_process(kind, d, x, kernel, stride, padding)
            # Inline: the tensors travel in the messages.
            inline = remote(client, kind, d, x, kernel, stride, padding)
            # Shared memory: input and output in registered regions.
            shared_input = client.empty(x.shape, x.dtype)
            shared_input[...] = x
            shared = remote(client, kind, d, shared_input, kernel, stride, padding)
            assert client._in_shared_memory(shared) or shared.size == 0
            for result in (inline, shared):
                assert result.dtype == expected.dtype
                assert result.tobytes() == expected.tobytes(), (kind, d, shape, kernel, stride, padding, dtype)
            jobs += 1
        stats = client.stats()
        assert stats["jobs_completed"] == 2 * jobs
        assert stats["jobs_failed"] == 0
        assert stats["cpu_level"] in ("x86-64", "x86-64-v3")


def test_remote_gradients_equal_in_process(daemon):
    # Every layer, float dtype and tie rule, with tensors inline and in shared memory.
    from conftest import FLOAT_DTYPES
    rng = np.random.default_rng(17)
    with tidepool.connect(daemon.endpoint) as client:
        jobs = 0
        while jobs < 48:
            kind, d = LAYERS[jobs % len(LAYERS)]
            shape, kernel, stride, padding, valid = random_configuration(rng, d)
            if not valid:
                continue
            dtype = FLOAT_DTYPES[jobs % len(FLOAT_DTYPES)]
            ties = ("split", "first")[jobs // len(LAYERS) % 2]
            # Small integers as floats: max windows tie.
            x = rng.integers(-3, 3, shape).astype(dtype)
            y = in_process(kind, d, x, kernel, stride, padding)
            g = random_array(rng, y.shape, dtype)
            name = f"{kind.lower()}_pool{d}d_vjp"
            expected = getattr(tidepool, name)(x, g, kernel, stride, padding, ties=ties)
            inline = getattr(client, name)(x, g, kernel, stride, padding, ties=ties)
            shared_x, shared_g = client.empty(x.shape, dtype), client.empty(g.shape, dtype)
            shared_x[...], shared_g[...] = x, g
            shared = getattr(client, name)(shared_x, shared_g, kernel, stride, padding, ties=ties)
            assert client._in_shared_memory(shared) or shared.size == 0
            # A strided cotangent is packed into the request.
            strided = getattr(client, name)(x, np.flip(np.flip(g, 1).copy(), 1), kernel, stride, padding, ties=ties)
            for result in (inline, shared, strided):
                assert result.dtype == expected.dtype and result.shape == x.shape
                assert result.tobytes() == expected.tobytes(), (kind, d, shape, kernel, stride, padding, dtype, ties)
            jobs += 1
        with pytest.raises(ValueError, match="floating-point"):
            client.max_pool1d_vjp(np.ones((1, 4, 1), np.int32), np.ones((1, 2, 1), np.int32), 2)
        with pytest.raises(ValueError, match="grad_output shape|cotangent"):
            client.avg_pool1d_vjp(np.ones((1, 4, 1), np.float32), np.ones((1, 3, 1), np.float32), 2)
        stats = client.stats()
        assert stats["jobs_completed"] == 3 * jobs and stats["jobs_failed"] == 0


def test_strided_input_on_the_daemon_equals_in_process(daemon):
    x = np.random.default_rng(1).standard_normal((2, 10, 12, 3)).astype(np.float32)
    view = x.transpose(0, 2, 1, 3)[:, ::2]
    with tidepool.connect(daemon.endpoint) as client:
        np.testing.assert_array_equal(client.max_pool2d(view, 3, 1, 1), tidepool.max_pool2d(view, 3, 1, 1))


def test_client_errors(daemon, tmp_path):
    with tidepool.connect(daemon.endpoint) as client:
        with pytest.raises(ValueError, match="negative"):
            client.avg_pool1d(np.zeros((1, 2, 1), np.float32), 5, 1)
        with pytest.raises(ValueError, match=r"\[AvgPool3d\]|kernel_size"):
            client.avg_pool3d(np.zeros((1, 2, 2, 2, 1), np.float32), 0)
        assert client.ping() > 0
    with pytest.raises(tidepool.Error, match="closed"):
        client.ping()
    with pytest.raises(tidepool.ConnectionError, match="no daemon"):
        tidepool.connect(f"ipc://{tmp_path}/nothing.sock", timeout=0.2)
    assert issubclass(tidepool.ConnectionError, ConnectionError)
    assert issubclass(tidepool.TimeoutError, TimeoutError)


def test_job_over_max_job_bytes_is_refused():
    running = Daemon("--max-job-bytes", "4096")
    try:
        with tidepool.connect(running.endpoint) as client:
            with pytest.raises(ValueError, match="--max-job-bytes 4096"):
                client.max_pool1d(np.zeros((1, 2048, 1), np.float32), 2)
            assert client.max_pool1d(np.ones((1, 8, 1), np.float32), 2).shape == (1, 4, 1)
    finally:
        assert running.stop() == 0


def test_timeout_raises_timeout_error(daemon):
    # A daemon stopped with SIGSTOP cannot answer: the call times out instead of hanging.
    client = tidepool.connect(daemon.endpoint, timeout=0.3)
    try:
        daemon.process.send_signal(signal.SIGSTOP)
        with pytest.raises(tidepool.TimeoutError, match="no reply"):
            client.ping()
    finally:
        daemon.process.send_signal(signal.SIGCONT)
        client.close()


def test_eight_clients_at_once(daemon):
    rng = np.random.default_rng(8)
    inputs = [rng.standard_normal((2, 6, 10, 10, 3)).astype(np.float32) for _ in range(8)]
    errors = []
    start = threading.Barrier(8)

    def work(i):
        try:
            with tidepool.connect(daemon.endpoint) as client:
                start.wait()
                shared = client.empty(inputs[i].shape, np.float32)
                shared[...] = inputs[i]
                for j in range(10):
                    k = 1 + (i + j) % 3
                    got = client.avg_pool3d(shared if j % 2 else inputs[i], k, 1, k // 2)
                    assert got.tobytes() == tidepool.avg_pool3d(inputs[i], k, 1, k // 2).tobytes()
        except Exception as error:  # reported below with the client's index
            errors.append((i, repr(error)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


CRASHING_CLIENT = """
import sys, numpy as np, tidepool
client = tidepool.connect(sys.argv[1])
x = client.empty((4, 64, 64, 64, 8), np.float32)
x[...] = 1
print("ready", flush=True)
while True:
    client.avg_pool3d(x, 3, 1, 1)
"""


def test_client_killed_mid_job_leaves_nothing(daemon):
    env = dict(os.environ, PYTHONPATH=str(os.path.dirname(tidepool.__path__[0])))
    child = subprocess.Popen([sys.executable, "-c", CRASHING_CLIENT, daemon.endpoint], stdout=subprocess.PIPE,
                             env=env, text=True)
    assert child.stdout.readline().strip() == "ready"
    with tidepool.connect(daemon.endpoint) as observer:
        assert observer.stats()["regions"] >= 1
        child.send_signal(signal.SIGKILL)
        child.wait()
        # The daemon learns of the exit through the process's pidfd; wait for that event.
        deadline = time.monotonic() + 20
        while observer.stats()["regions"] != 0:
            assert time.monotonic() < deadline, "the killed client's regions were never released"
        assert observer.ping() > 0
    assert [name for name in tidepool_segments() if name.startswith(f"tidepool-{child.pid}-")] == []


def test_sigterm_answers_jobs_in_flight():
    import zmq
    from rawproto import pool_request

    running = Daemon()
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.connect(running.endpoint)
    # Jobs of several milliseconds each, so some are usually still running at the signal
    # (TidepoolServerTests holds one deterministically).
    x = np.random.default_rng(3).standard_normal((2, 64, 64, 64, 8)).astype(np.float32)
    for job in range(6):
        socket.send_multipart(pool_request(job, x, kind=1, kernel=3, stride=1, padding=1))
    # Jobs are queued before the signal; every one must still be answered.
    stats_probe = tidepool.connect(running.endpoint)
    deadline = time.monotonic() + 20
    while True:
        stats = stats_probe.stats()
        if stats["jobs_inflight"] + stats["jobs_completed"] + stats["jobs_failed"] >= 6:
            break
        assert time.monotonic() < deadline
    stats_probe.close()
    running.process.send_signal(signal.SIGTERM)
    replies = {}
    for _ in range(6):
        assert socket.poll(30000), "a job in flight was not answered"
        frames = socket.recv_multipart()
        replies[int.from_bytes(frames[0][8:16], "little")] = int.from_bytes(frames[0][16:20], "little", signed=True)
    assert replies == {job: 0 for job in range(6)}
    assert running.stop() == 0
    assert "tidepoold stopped" in running.logs()
    assert not os.path.exists(running.endpoint[len("ipc://"):]), "the ipc socket file was left behind"
    socket.close(0)


def test_tcp_binds_loopback_and_carries_inline_jobs():
    # "tcp://:0" names no host: the daemon must bind loopback only (port 0: any free port).
    process = subprocess.Popen([str(TIDEPOOLD), "--endpoint", "tcp://:0", "--log-level", "warning"],
                               stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        endpoint = line.split("listening on ")[1].strip()
        assert endpoint.startswith("tcp://127.0.0.1:"), line
        x = np.random.default_rng(5).standard_normal((2, 9, 9, 4)).astype(np.float32)
        with tidepool.connect(endpoint) as client:
            np.testing.assert_array_equal(client.avg_pool2d(x, 3, 2, 1), tidepool.avg_pool2d(x, 3, 2, 1))
            np.testing.assert_array_equal(client.max_pool2d(x, 2), tidepool.max_pool2d(x, 2))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        process.stdout.close()


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def orphan_segment(pid):
    """A Tidepool shared-memory object as a client `pid` killed before registering leaves it."""
    from rawproto import SharedObject

    SharedObject(f"tidepool-{pid}-orphan", 4096, 0o600).close()
    return f"tidepool-{pid}-orphan"


def test_objects_of_dead_clients_are_removed_at_start():
    name = orphan_segment(dead_pid())
    running = Daemon()  # sweeps before it reports listening
    try:
        assert name not in tidepool_segments()
        assert "removed shared-memory objects of exited clients" in running.logs()
    finally:
        assert running.stop() == 0


def test_register_naming_another_process_is_refused(daemon):
    # The kernel says which process sent a REGISTER: one naming another pid (here a dead
    # one, whose leftovers the start-up sweep removes) is refused, and touches nothing.
    from rawproto import RawClient, register_request

    pid = dead_pid()
    name = orphan_segment(pid)
    client = RawClient(daemon.endpoint)
    _, _, status, frames = client.call(register_request(1, 4096, f"/{name}", pid=pid))
    assert status == 19  # TP_ERR_PERMISSION
    assert f"says pid {pid} but the connection belongs to process {os.getpid()}".encode() in frames[1]
    assert name in tidepool_segments()
    os.unlink(f"/dev/shm/{name}")
    client.close()


@pytest.mark.parametrize("abstract", [False, True])
def test_readiness_and_stopping_are_told_to_systemd(tmp_path, abstract):
    # sd_notify's protocol (Type=notify units): a datagram socket named by $NOTIFY_SOCKET, a
    # path or an abstract name written with '@'.
    import socket

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"\0tidepool-notify-{os.getpid()}" if abstract else str(tmp_path / "notify.sock")
    listener.bind(name)
    listener.settimeout(30)
    endpoint = f"ipc://{tmp_path}/tidepool.sock"
    env = dict(os.environ, NOTIFY_SOCKET="@" + name[1:] if abstract else name)
    process = subprocess.Popen([str(TIDEPOOLD), "--endpoint", endpoint, "--log-level", "warning"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ready = listener.recv(4096).decode()
        assert ready.splitlines()[0] == "READY=1"
        assert f"STATUS=listening on {endpoint}" in ready.splitlines()
        # Ready means served: a client connects at once.
        with tidepool.connect(endpoint, timeout=10) as client:
            client.ping()
        process.send_signal(signal.SIGTERM)
        assert listener.recv(4096).decode() == "STOPPING=1"
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
        listener.close()


def test_debug_log_tells_connections_registrations_and_jobs():
    running = Daemon("--log-level", "debug")
    try:
        with tidepool.connect(running.endpoint) as client:
            x = client.empty((1, 4, 4, 2), np.float32)
            x[...] = 1
            client.avg_pool2d(x, 2)
            client.max_pool1d(np.zeros((1, 4, 1), np.int8), 2)
        # BYE is sent without waiting: another connection (STATS makes no client state) watches
        # the first client go.
        with tidepool.connect(running.endpoint) as watcher:
            deadline = time.monotonic() + 10
            while watcher.stats()["clients"] > 0 and time.monotonic() < deadline:
                pass
    finally:
        assert running.stop() == 0
    logs = running.logs()
    for line in ("new client", "registered a region", "job done", "tensors=shared memory", "tensors=inline",
                 "client gone", "it said BYE"):
        assert line in logs, (line, logs)
    assert "layer=" in logs and "ms=" in logs
