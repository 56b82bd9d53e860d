"""Many Python threads calling at once; the GIL is released during compute; results are
identical for any engine thread count."""

import ctypes
import threading

import numpy as np

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
