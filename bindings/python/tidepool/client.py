"""The remote path: a Client of a running tidepoold, with the module's pooling functions as
methods and numpy arrays in shared memory (`empty`) that jobs use without copying."""

import ctypes
import json
import math
import threading
import weakref

import numpy as np

from . import _lib
from .errors import InvalidArgumentError
from .functional import FUNCTIONS, pool


# The C ABI takes timeouts in int32 milliseconds and sizes in size_t.
_MAX_TIMEOUT = ((1 << 31) - 1) // 1000
_MAX_BYTES = (1 << 63) - 1


def default_endpoint():
    """$TIDEPOOL_ENDPOINT, else ipc://$XDG_RUNTIME_DIR/tidepool.sock, else
    ipc:///tmp/tidepool-$UID/tidepool.sock (the daemon's default too)."""
    return _lib.lib.tp_default_endpoint().decode()


def connect(endpoint=None, timeout=10.0):
    """Connect to tidepoold at `endpoint` (default: default_endpoint()) and ping it.

    `timeout` (seconds, None for no limit) bounds the connection and every later call.
    Raises tidepool.ConnectionError when no daemon answers there."""
    return Client(endpoint, timeout)


class Client:
    """A connection to tidepoold; use it as a context manager or call close().

    Its avg_pool1d ... max_pool3d methods take the module functions' arguments. An input
    made by empty() travels by reference, and the output is then made in shared memory
    too, so the job copies nothing; other inputs are sent inline. Thread-safe (calls on one
    client are serialised)."""

    def __init__(self, endpoint=None, timeout=10.0):
        if timeout is not None and not 0 <= timeout <= _MAX_TIMEOUT:
            raise InvalidArgumentError(f"timeout must be between 0 and {_MAX_TIMEOUT} seconds, or None, but is {timeout}")
        self.endpoint = endpoint or default_endpoint()
        self.timeout = timeout
        timeout_ms = -1 if timeout is None else int(round(timeout * 1000))
        handle = ctypes.c_void_p()
        _lib.check(_lib.lib.tp_client_connect(self.endpoint.encode(), timeout_ms, ctypes.byref(handle)))
        self._handle = handle
        self._buffers = {}  # address -> size of live shared buffers
        self._lock = threading.Lock()
        self._closer = weakref.finalize(self, _lib.lib.tp_client_close, handle)

    def __repr__(self):
        state = "closed" if self.closed else "open"
        return f"<tidepool.Client {self.endpoint} ({state})>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self):
        return not self._closer.alive

    def close(self):
        """Drop this client's regions on the daemon and close the connection. Arrays from
        empty() stay valid: their memory is released when they are garbage collected."""
        self._closer()

    def _live_handle(self):
        if self.closed:
            raise _lib.Error("the client is closed", _lib.TP_ERR_CLOSED)
        return self._handle

    def ping(self):
        """Round-trip time of a ping, in seconds."""
        seconds = ctypes.c_double()
        _lib.check(_lib.lib.tp_client_ping(self._live_handle(), ctypes.byref(seconds)))
        return seconds.value

    def stats(self):
        """The daemon's counters, as a dict."""
        length = ctypes.c_size_t()
        handle = self._live_handle()
        _lib.check(_lib.lib.tp_client_stats(handle, None, 0, ctypes.byref(length)))
        text = ctypes.create_string_buffer(length.value + 256)
        _lib.check(_lib.lib.tp_client_stats(handle, text, len(text), ctypes.byref(length)))
        return json.loads(text.value.decode())

    def empty(self, shape, dtype=np.float32):
        """An uninitialised numpy array in shared memory registered with the daemon: a job
        on it reads (or writes) it in place. Freed when the array is garbage collected."""
        dtype = np.dtype(dtype)
        shape = tuple(int(n) for n in (shape if isinstance(shape, (tuple, list)) else (shape,)))
        if any(n < 0 for n in shape):
            raise InvalidArgumentError(f"shape must be non-negative but is {shape}")
        # Python's integers: numpy's int64 product would wrap silently.
        nbytes = max(math.prod(shape) * dtype.itemsize, 1)
        if nbytes > _MAX_BYTES:
            raise InvalidArgumentError(f"shape {shape} of {dtype} needs {nbytes} bytes, more than 2**63 - 1")
        buffer = ctypes.c_void_p()
        _lib.check(_lib.lib.tp_client_alloc(self._live_handle(), nbytes, ctypes.byref(buffer)))
        address = _lib.lib.tp_buffer_data(buffer)
        memory = (ctypes.c_char * nbytes).from_address(address)
        with self._lock:
            self._buffers[address] = nbytes
        weakref.finalize(memory, self._release, buffer, address)
        return np.frombuffer(memory, dtype=dtype, count=math.prod(shape)).reshape(shape)

    def _release(self, buffer, address):
        with self._lock:
            self._buffers.pop(address, None)
        _lib.lib.tp_buffer_free(buffer)

    def _in_shared_memory(self, array):
        start = array.ctypes.data
        with self._lock:
            return any(base <= start < base + size for base, size in self._buffers.items())

    # The backend protocol of functional.pool:

    def _empty_output(self, shape, dtype, source):
        return self.empty(shape, dtype) if self._in_shared_memory(source) else np.empty(shape, dtype=dtype)

    def _run(self, desc, input_tensor, output_tensor, owner):
        _lib.check(_lib.lib.tp_client_pool(self._live_handle(), ctypes.byref(desc), ctypes.byref(input_tensor),
                                           ctypes.byref(output_tensor)), f"[{owner}]")


class _Backend:
    """Adapts a Client to functional.pool's backend interface."""

    def __init__(self, client):
        self.empty = client._empty_output
        self.run = client._run


def _method(function):
    def method(self, x, kernel_size, stride=None, padding=0, *, out=None):
        return pool(function.kind, function.spatial_dims, function.__name__, x, kernel_size, stride, padding, out,
                    backend=_Backend(self))

    method.__name__ = method.__qualname__ = function.__name__
    method.__doc__ = function.__doc__.replace("pooling of a channels-last array",
                                              "pooling of a channels-last array on the daemon", 1)
    return method


for _function in FUNCTIONS:
    setattr(Client, _function.__name__, _method(_function))
