"""Many Python threads calling at once; the GIL is released during compute; results are
identical for any engine thread count."""

import ctypes
import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest

import tidepool
from tidepool import _native
from conftest import reference_pool


def test_foreign_calls_release_the_gil():
    # ctypes.CDLL (not PyDLL) drops the GIL around every call.
    assert isinstance(_native.lib, ctypes.CDLL) and not isinstance(_native.lib, ctypes.PyDLL)
    assert _native.lib.tp_pool._flags_ & ctypes._FUNCFLAG_PYTHONAPI == 0


def test_many_threads_at_once(rng):
    inputs = [rng.standard_normal((2, 6, 9, 9, 3)).astype(np.float32) for _ in range(16)]
    expected = [reference_pool("Max", 3, x, 3, 1, 1) for x in inputs]
    results = [None] * len(inputs)
    errors = []
    start = threading.Barrier(len(inputs))

    def work(i):
        try:
            start.wait()
            for _ in range(5):
                results[i] = tidepool.max_pool3d(inputs[i], 3, 1, 1)
                np.testing.assert_array_equal(results[i], expected[i])
        except Exception as error:  # reported below with its thread
            errors.append((i, error))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_errors_stay_with_their_thread():
    # tp_last_error is thread-local: concurrent failures each get their own message.
    messages = {}

    def fail(kernel):
        try:
            tidepool.avg_pool1d(np.zeros((1, 2, 1), np.float32), kernel, 1)
        except ValueError as error:
            messages[kernel] = str(error)

    threads = [threading.Thread(target=fail, args=(k,)) for k in range(5, 25)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for kernel, message in messages.items():
        assert f"kernel_size {kernel} is larger" in message
    assert len(messages) == 20


def test_thread_count_does_not_change_results(rng):
    x = rng.standard_normal((4, 12, 20, 20, 5)).astype(np.float32)
    default = tidepool.get_num_threads()
    try:
        tidepool.set_num_threads(1)
        assert tidepool.get_num_threads() == 1
        single = tidepool.avg_pool3d(x, 3, 1, 1)
        tidepool.set_num_threads(3)
        many = tidepool.avg_pool3d(x, 3, 1, 1)
    finally:
        tidepool.set_num_threads(0)
    assert tidepool.get_num_threads() == default
    assert single.tobytes() == many.tobytes()


def _wait_or_kill(pid, seconds=60):
    """The child's exit status, or a failure if it has not exited in `seconds` (a hang)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"forked child {pid} hung (killed after {seconds} s)")


def test_forked_children_pool(rng):
    # The engine's helper threads do not survive fork(): a child (multiprocessing's default
    # start method on Linux) starts its own, also when the fork came while another thread of
    # the parent was inside a threaded call.
    x = rng.standard_normal((4, 12, 40, 40, 8)).astype(np.float32)
    tidepool.set_num_threads(2)
    try:
        expected = tidepool.avg_pool3d(x, 3, 1, 1).tobytes()
        stop = threading.Event()

        def busy():
            while not stop.is_set():
                tidepool.avg_pool3d(x, 3, 1, 1)

        worker = threading.Thread(target=busy)
        worker.start()
        try:
            for _ in range(10):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
                    pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        same = all(tidepool.avg_pool3d(x, 3, 1, 1).tobytes() == expected for _ in range(3))
                        code = 0 if same else 2
                    finally:
                        os._exit(code)
                assert _wait_or_kill(pid) == 0
        finally:
            stop.set()
            worker.join()
    finally:
        tidepool.set_num_threads(0)


def _helper_threads():
    tasks = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                if comm.read().strip() != "tidepool-help":
                    continue
            with open(f"/proc/self/task/{task}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except FileNotFoundError:
            continue
        tasks.append(int(fields["SigBlk"].strip(), 16))
    return tasks


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the engine starts helper threads only with 2+ CPUs")
def test_helper_threads_leave_signals_to_the_host(rng):
    # A host's SIGINT or SIGTERM must reach a thread that handles it (Python's main thread
    # handles them; a helper that took one would delay KeyboardInterrupt), while faults
    # (SIGBUS on a truncated shared-memory mapping) stay with the thread that made them.
    x = rng.standard_normal((4, 12, 40, 40, 8)).astype(np.float32)
    tidepool.set_num_threads(2)
    try:
        tidepool.avg_pool3d(x, 3, 1, 1)
    finally:
        tidepool.set_num_threads(0)
    masks = _helper_threads()
    assert masks, "no tidepool-help thread after a threaded call"
    for mask in masks:
        for blocked in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1):
            assert mask & (1 << (blocked - 1)), f"helper takes {blocked.name}"
        for fault in (signal.SIGBUS, signal.SIGSEGV, signal.SIGFPE, signal.SIGILL):
            assert not mask & (1 << (fault - 1)), f"helper blocks {fault.name}"
