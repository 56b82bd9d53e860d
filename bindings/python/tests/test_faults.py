"""Faults and bounds (issue 14) with real processes: the daemon killed and restarted under
clients, a daemon that dies and stays dead, calls that time out, clients that never read
their replies or die mid-job, start-up failures, and a full /dev/shm."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

import tidepool
from conftest import REPO, TIDEPOOLD, Daemon
from rawproto import RawClient, pool_request

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private mount (unshare -m)")


def rss(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def wait_for(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def kill(daemon):
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait()
    daemon.process.stdout.close()


@pytest.fixture
def private_directory():
    directory = tempfile.mkdtemp(prefix="tidepool-faults-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


# A max pooling that takes about 1 s on this machine kind: windows of 61^3 over 128 MiB. (Over
# 16 MiB it took 1.2 s while each window's cost grew with its size; block scans made it 0.13 s,
# so the input is 8 times larger now. The jobs must outlast a 0.5 s timeout and a kill.)
LONG = dict(kernel_size=61, stride=1, padding=30)
LONG_SHAPE = (8, 64, 64, 64, 16)


def long_job_input(client):
    """A shared input for a LONG job."""
    x = client.empty(LONG_SHAPE, np.float32)
    x[...] = np.random.default_rng(14).standard_normal(x.shape).astype(np.float32)
    return x


def test_buffers_and_results_survive_a_killed_daemon(private_directory):
    """Issue 14.1: after kill -9 and a restart, a job on an old buffer pools that buffer (not
    a newer one), and no other buffer is written."""
    first = Daemon(directory=private_directory)
    with tidepool.connect(first.endpoint, timeout=20) as client:
        old = client.empty((2, 16, 16, 4), np.float32)
        old[...] = np.random.default_rng(1).standard_normal(old.shape)
        expected = tidepool.max_pool2d(old, 2)
        assert client.max_pool2d(old, 2).tobytes() == expected.tobytes()
        kill(first)
        second = Daemon(directory=private_directory)
        try:
            new = client.empty((2, 16, 16, 4), np.float32)
            new[...] = 7.0
            bystander = client.empty((4096,), np.uint32)
            bystander[...] = 0x55555555
            got = client.max_pool2d(old, 2)
            assert got.tobytes() == expected.tobytes(), "a job on an old buffer did not pool that buffer"
            assert (bystander == 0x55555555).all(), "a buffer nobody named was written"
            assert (client.max_pool2d(new, 2) == 7.0).all()
        finally:
            assert second.stop() == 0, second.logs()


def test_a_job_in_flight_when_the_daemon_is_killed_is_sent_again(private_directory):
    """A call waiting on a job when the daemon dies gets its result from the restarted one."""
    first = Daemon(directory=private_directory)
    results, errors = [], []
    with tidepool.connect(first.endpoint, timeout=60) as client:
        x = long_job_input(client)
        expected = tidepool.max_pool3d(x, **LONG)

        def call():
            try:
                results.append(client.max_pool3d(x, **LONG))
            except Exception as error:  # reported below
                errors.append(error)

        thread = threading.Thread(target=call)
        with tidepool.connect(first.endpoint) as observer:
            thread.start()
            wait_for(lambda: observer.stats()["jobs_inflight"] >= 1, 20, "the job to start")
        kill(first)
        second = Daemon(directory=private_directory)
        try:
            thread.join(60)
            assert not thread.is_alive() and errors == [], errors
            assert results[0].tobytes() == expected.tobytes()
        finally:
            assert second.stop() == 0, second.logs()


@pytest.mark.parametrize("timeout", [10.0, None])
def test_a_dead_daemon_is_noticed_within_seconds(private_directory, timeout):
    """Issue 14.3: a call waiting when the daemon is killed fails with ConnectionError within
    a few seconds (not its timeout, nor never with timeout=None); later calls fail at once."""
    daemon = Daemon(directory=private_directory)
    client = tidepool.connect(daemon.endpoint, timeout=timeout)
    x = long_job_input(client)
    outcome = {}

    def call():
        started = time.monotonic()
        try:
            client.max_pool3d(x, **LONG)
            outcome["result"] = "returned"
        except tidepool.Error as error:
            outcome["result"] = error
        outcome["seconds"] = time.monotonic() - started

    with tidepool.connect(daemon.endpoint) as observer:
        thread = threading.Thread(target=call)
        thread.start()
        wait_for(lambda: observer.stats()["jobs_inflight"] >= 1, 20, "the job to start")
    killed = time.monotonic()
    kill(daemon)
    thread.join(30)
    assert not thread.is_alive(), "the call never returned"
    assert isinstance(outcome["result"], tidepool.ConnectionError), outcome
    assert time.monotonic() - killed < 6
    started = time.monotonic()
    with pytest.raises(tidepool.ConnectionError):
        client.ping()
    assert time.monotonic() - started < 0.5, "a call after the death did not fail fast"
    client.close()


def test_a_timed_out_call_never_writes_its_output_later(private_directory):
    """Issue 14.2: the reply of a call that timed out is dropped, not copied into memory the
    caller may have reused."""
    daemon = Daemon(directory=private_directory)
    try:
        client = tidepool.connect(daemon.endpoint, timeout=0.5)
        x = np.random.default_rng(2).standard_normal(LONG_SHAPE).astype(np.float32)
        out = np.full(LONG_SHAPE, -3.0, np.float32)
        with pytest.raises(tidepool.TimeoutError):
            client.max_pool3d(x, **LONG, out=out)
        with tidepool.connect(daemon.endpoint) as observer:
            wait_for(lambda: observer.stats()["jobs_completed"] >= 1, 30, "the daemon to finish the job")
        # The late reply (the whole output, inline) arrives and is dropped before the ping's.
        # The client's timeout is short on purpose (0.5 s, to time the job out), and reading
        # that reply may take longer on a loaded machine: a ping that times out leaves its
        # reply to be dropped the same way, so ping again, within a bound.
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except tidepool.TimeoutError:
                assert time.monotonic() < deadline, "no ping answered within 30 s"
        assert (out == -3.0).all(), "a timed-out call wrote into the caller's memory"
        client.close()
    finally:
        assert daemon.stop() == 0, daemon.logs()


def test_clients_that_never_read_cannot_grow_the_daemon(private_directory):
    """Issue 14.4: four clients send 8 MiB inline jobs and never read a reply. The daemon
    answers BUSY past its bounds; its memory stays within them instead of growing."""
    job = 1 << 20  # float32 elements: 4 MiB in, 4 MiB out (kernel 1)
    daemon = Daemon("--max-inflight", "2", "--max-job-bytes", str(16 << 20), directory=private_directory)
    try:
        idle = rss(daemon.process.pid)
        x = np.ones((1, job, 1), np.float32)
        frames = pool_request(0, x, kind=1, kernel=1, stride=1)
        clients = [RawClient(daemon.endpoint) for _ in range(4)]
        peak = idle
        for round_ in range(40):
            for client in clients:
                frames[0] = frames[0][:8] + (round_ + 1).to_bytes(8, "little") + frames[0][16:]
                client.socket.send_multipart(frames, copy=False)
            peak = max(peak, rss(daemon.process.pid))
        time.sleep(0.5)
        peak = max(peak, rss(daemon.process.pid))
        # 640 MiB were sent in all. Bound: 2 running jobs (16 MiB each), --max-queued-bytes
        # (32 MiB) of unread outputs, 16 queued requests per connection (RCVHWM) of 4 MiB.
        bound = idle + 2 * (16 << 20) + (32 << 20) + 4 * 16 * (4 << 20) + (64 << 20)
        assert peak < bound, f"the daemon grew to {peak >> 20} MiB (idle {idle >> 20}, bound {bound >> 20})"
        stats = RawClient(daemon.endpoint)
        assert stats.ping_ok()
        stats.close()
        for client in clients:
            client.close()
    finally:
        assert daemon.stop() == 0, daemon.logs()


KILLED_CLIENT = """
import sys, numpy as np, tidepool
client = tidepool.connect(sys.argv[1], timeout=60)
x = np.ones((1, 32 << 20, 1), np.float32)  # 128 MiB in, 128 MiB out
print("sending", flush=True)
client.avg_pool1d(x, 31, 1, 15)
"""


def test_a_killed_clients_job_is_cancelled_and_its_memory_freed(private_directory):
    """Issue 14.5: a client killed mid-job (256 MiB inline) leaves nothing in the daemon."""
    daemon = Daemon("--max-job-bytes", str(512 << 20), directory=private_directory)
    try:
        idle = rss(daemon.process.pid)
        env = dict(os.environ, PYTHONPATH=str(REPO / "bindings" / "python"))
        child = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, daemon.endpoint], stdout=subprocess.PIPE,
                                 env=env, text=True)
        assert child.stdout.readline().strip() == "sending"
        with tidepool.connect(daemon.endpoint) as observer:
            wait_for(lambda: observer.stats()["jobs_inflight"] >= 1, 30, "the job to start")
            child.kill()
            child.wait()
            child.stdout.close()
            wait_for(lambda: observer.stats()["jobs_inflight"] == 0, 10, "the job to be cancelled")
            wait_for(lambda: rss(daemon.process.pid) < idle + (48 << 20), 10,
                     f"the daemon's memory to come back (idle {idle >> 20} MiB, now {rss(daemon.process.pid) >> 20} MiB, {observer.stats()})")
            assert observer.stats()["jobs_failed"] >= 1  # cancelled, not completed
    finally:
        assert daemon.stop() == 0, daemon.logs()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("case", ["port in use", "endpoint served", "unknown host", "unusable directory"])
def test_start_up_failures_are_loud_and_quick(case, private_directory):
    """Issue 14.6: a daemon that cannot bind says what and why, and exits non-zero at once."""
    holder = None
    options = []
    if case == "port in use":
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        endpoint, fragment = f"tcp://127.0.0.1:{holder.getsockname()[1]}", "Address already in use"
    elif case == "endpoint served":
        holder = Daemon(directory=private_directory)
        endpoint, fragment = holder.endpoint, "already serving"
    elif case == "unknown host":
        endpoint, fragment = f"tcp://nosuchhost.invalid:{free_port()}", "cannot bind"
        options = ["--insecure"]  # past the refusal of non-loopback tcp without CURVE, to the bind
    else:
        endpoint, fragment = "ipc:///proc/self/nonexistent/x.sock", "cannot create"
    started = time.monotonic()
    try:
        result = subprocess.run([str(TIDEPOOLD), "--endpoint", endpoint, *options], capture_output=True, text=True,
                                timeout=30)
    finally:
        if isinstance(holder, Daemon):
            assert holder.stop() == 0
        elif holder is not None:
            holder.close()
    assert result.returncode != 0
    assert fragment in result.stderr, result.stderr
    assert time.monotonic() - started < 3, f"{case}: took {time.monotonic() - started:.1f} s to fail"


def test_sigterm_during_start_up_stops_the_daemon(private_directory):
    # Before the daemon blocks the signal (its default action), while it binds (exit 1), or
    # once serving (a clean stop, 0): whenever it comes, SIGTERM ends the process at once.
    process = subprocess.Popen([str(TIDEPOOLD), "--endpoint", f"ipc://{private_directory}/d.sock"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=5) in (0, 1, -signal.SIGTERM)
    process.stdout.close()
    process.stderr.close()


FULL_SHM = r"""
set -eu
mount -t tmpfs -o size=64m tmpfs /dev/shm
{tidepoold} --endpoint ipc://{directory}/d.sock --log-level warning > {directory}/ready &
daemon=$!
while ! grep -q listening {directory}/ready 2>/dev/null; do sleep 0.05; done
PYTHONPATH={python_path} {python} -c '
import numpy as np, tidepool
client = tidepool.connect("ipc://{directory}/d.sock")
try:
    x = client.empty((80 << 20,), np.uint8)
    x[...] = 1
    print("wrote 80 MiB into a 64 MiB /dev/shm")
except tidepool.Error as error:
    print("refused:", error)
y = client.empty((4, 1024, 1024), np.float32)
y[...] = 1
print("then", client.avg_pool1d(y, 2).shape)
client.close()
'
kill -TERM $daemon; wait $daemon
"""


@needs_root
def test_a_full_dev_shm_is_an_error_not_a_crash(private_directory):
    """Issue 14.7: a buffer /dev/shm has no room for is refused when made, with a message;
    the client goes on (a buffer that fits works)."""
    script = FULL_SHM.format(tidepoold=TIDEPOOLD, directory=private_directory, python=sys.executable,
                             python_path=REPO / "bindings" / "python")
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "refused:" in output and "no room" in output, output
    assert "then (4, 512, 1024)" in output, output


def test_a_stopped_daemon_that_continues_in_time_loses_nothing(private_directory):
    """A daemon stopped (SIGSTOP) past the client's heartbeat timeout, then continued within
    the grace: the client dropped the link, reconnects with its own routing id, sends the job
    again flagged, and gets the one result (the daemon does not run it twice)."""
    daemon = Daemon(directory=private_directory)
    try:
        with tidepool.connect(daemon.endpoint, timeout=60) as client:
            x = long_job_input(client)
            expected = tidepool.max_pool3d(x, **LONG)
            outcome = {}

            def call():
                try:
                    outcome["result"] = client.max_pool3d(x, **LONG)
                except tidepool.Error as error:
                    outcome["error"] = error

            with tidepool.connect(daemon.endpoint) as observer:
                thread = threading.Thread(target=call)
                thread.start()
                wait_for(lambda: observer.stats()["jobs_inflight"] >= 1, 20, "the job to start")
            daemon.process.send_signal(signal.SIGSTOP)
            time.sleep(6.5)  # past the 5 s heartbeat timeout, within its 3 s grace
            daemon.process.send_signal(signal.SIGCONT)
            thread.join(60)
            assert not thread.is_alive() and "error" not in outcome, outcome
            assert outcome["result"].tobytes() == expected.tobytes()
            stats = client.stats()
            assert stats["jobs_completed"] + stats["jobs_failed"] == 1, stats
    finally:
        daemon.process.send_signal(signal.SIGCONT)
        assert daemon.stop() == 0, daemon.logs()
