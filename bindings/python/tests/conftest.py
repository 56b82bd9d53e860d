"""Shared oracles: real MLX, and a float64 numpy reference that pads and takes every window."""

import zlib

import ml_dtypes
import mlx.core as mx
import mlx.nn as mnn
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import tidepool

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT_DTYPES = [np.dtype(t) for t in (np.float32, np.float64, np.float16)] + [BFLOAT16]
INT_DTYPES = [np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)]
ALL_DTYPES = FLOAT_DTYPES + INT_DTYPES
LAYERS = [(kind, d) for kind in ("Avg", "Max") for d in (1, 2, 3)]


def to_mlx(x):
    if isinstance(x, mx.array):
        return x
    if x.dtype == BFLOAT16:
        return mx.array(x.view(np.uint16)).view(mx.bfloat16)
    if x.dtype == np.float64:
        return mx.array(x, dtype=mx.float64)  # MLX would make float32 of it
    return mx.array(x)


def from_mlx(y):
    if y.dtype == mx.bfloat16:
        return np.array(y.view(mx.uint16)).view(BFLOAT16)
    return np.array(y)


def mlx_pool(kind, d, x, kernel_size, stride=None, padding=0):
    layer = getattr(mnn, f"{kind}Pool{d}d")(kernel_size, stride, padding)
    return from_mlx(layer(to_mlx(x)))


def tidepool_pool(kind, d, x, kernel_size, stride=None, padding=0):
    return getattr(tidepool.nn, f"{kind}Pool{d}d")(kernel_size, stride, padding)(x)


def as_tuple(v, d):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * d


def reference_pool(kind, d, x, kernel_size, stride=None, padding=0):
    """Window-by-window float64 pooling: pad (zeros / lowest value), take every window, reduce."""
    k = as_tuple(kernel_size, d)
    s = k if stride is None else as_tuple(stride, d)
    p = as_tuple(padding, d)
    x64 = x.astype(np.float64)
    lengths = [(n + 2 * q - w) // step + 1 for n, w, step, q in zip(x.shape[1:-1], k, s, p)]
    if min(lengths) < 0:
        raise ValueError("negative output length")
    if min(lengths) == 0 or x.shape[0] == 0 or x.shape[-1] == 0:
        return np.zeros((x.shape[0], *lengths, x.shape[-1]))
    if kind == "Avg":
        pad_value = 0.0
    elif x.dtype in INT_DTYPES:
        pad_value = float(np.iinfo(x.dtype).min)
    else:
        pad_value = -np.inf
    padded = np.pad(x64, [(0, 0)] + [(q, q) for q in p] + [(0, 0)], constant_values=pad_value)
    windows = sliding_window_view(padded, k, axis=tuple(range(1, d + 1)))
    windows = windows[(slice(None),) + tuple(slice(None, None, step) for step in s)]
    axes = tuple(range(-d, 0))
    return windows.mean(axis=axes) if kind == "Avg" else windows.max(axis=axes)


def tolerance(dtype):
    """(rtol, atol) of an average in `dtype` against float64."""
    if dtype == np.float64:
        return 1e-12, 1e-14
    if dtype == np.float16:
        return 2e-3, 1e-4
    if dtype == BFLOAT16:
        return 1.6e-2, 1e-3
    return 1e-5, 1e-6


def random_array(rng, shape, dtype):
    """Standard normal floats; integers over the whole range of 8/16-bit types and within
    +-2^24 for wider ones, where MLX's average (which sums 32/64-bit integers in their own
    type) cannot wrap."""
    if dtype in INT_DTYPES:
        info = np.iinfo(dtype)
        low, high = max(info.min, -(1 << 24)), min(info.max, 1 << 24)
        return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def assert_pool_close(kind, actual, expected, dtype):
    """Max is exact (NaN matches NaN); average within the dtype's tolerance."""
    assert actual.shape == expected.shape
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    if kind == "Max":
        np.testing.assert_array_equal(a, e)
    else:
        rtol, atol = tolerance(dtype)
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


@pytest.fixture
def rng(request):
    # A seed per test, stable across runs (crc32, not hash(): str hashes are salted per
    # process), so a failure replays.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# ---- A real tidepoold on a private endpoint ------------------------------------------------

import os
import signal
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
TIDEPOOLD = REPO / ".build" / "release" / "tidepoold"


class Daemon:
    """tidepoold started on a private ipc endpoint (plus any `--endpoint` in `options`); ready
    once it printed its endpoints, which `endpoints` lists as bound (tcp port 0 resolved)."""

    def __init__(self, *options, directory=None, prefix=()):
        """`prefix` runs the daemon through a command, e.g. ("ip", "netns", "exec", NAME)."""
        self.directory = directory or tempfile.mkdtemp(prefix="tidepool-test-")
        self.endpoint = f"ipc://{self.directory}/tidepool.sock"
        self.log_path = Path(self.directory) / "daemon.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [*prefix, str(TIDEPOOLD), "--endpoint", self.endpoint, "--log-level", "info", *options],
                stdout=subprocess.PIPE, stderr=log, text=True)
        line = self.process.stdout.readline()  # blocks until the daemon has bound
        assert "listening on" in line, f"tidepoold did not start: {line!r} {self.logs()}"
        self.endpoints = line.split("listening on ")[1].split()

    def logs(self):
        return self.log_path.read_text()

    def stop(self):
        """SIGTERM and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.process.stdout.close()
        return code


@pytest.fixture
def daemon():
    running = Daemon()
    yield running
    assert running.stop() == 0, running.logs()


def tidepool_segments():
    """Tidepool objects currently in /dev/shm."""
    return sorted(name for name in os.listdir("/dev/shm") if name.startswith("tidepool-"))
