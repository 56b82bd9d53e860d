"""The remote path: a Client of a running tidepoold, with the module's pooling functions as
methods and numpy arrays in shared memory (`empty`) that jobs use without copying."""

from __future__ import annotations

import ctypes
import json
import math
import os
import threading
import weakref
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from . import _lib
from ._native import check, error, lib
from .errors import InvalidArgumentError
from .functional import IntOrTuple, pool, pool_flags
from .gradients import pool_vjp


# The C ABI takes timeouts in int32 milliseconds and sizes in size_t.
_MAX_TIMEOUT = ((1 << 31) - 1) // 1000
_MAX_BYTES = (1 << 63) - 1


def _path_or_text(name, value):
    """A key or path argument as the C string the library takes (None stays NULL)."""
    if value is None:
        return None
    if not isinstance(value, (str, bytes, os.PathLike)):
        raise InvalidArgumentError(f"{name} must be a str or a path, not {type(value).__name__}")
    text = os.fsencode(value)
    if b"\0" in text:
        raise InvalidArgumentError(f"{name} contains a NUL character")
    return text


def default_endpoint() -> str:
    """$TIDEPOOL_ENDPOINT, else ipc://$XDG_RUNTIME_DIR/tidepool.sock, else
    ipc:///tmp/tidepool-$UID/tidepool.sock (the daemon's default too)."""
    return lib.tp_default_endpoint().decode()


def connect(endpoint: Optional[str] = None, timeout: Optional[float] = 10.0, *,
            curve_server_key: Optional[Union[str, "os.PathLike[str]"]] = None,
            curve_client_cert: Optional[Union[str, "os.PathLike[str]"]] = None) -> "Client":
    """Connect to tidepoold at `endpoint` (default: default_endpoint()) and ping it.

    `timeout` (seconds, None for no limit) bounds the connection and every later call.
    For a tcp endpoint served with CurveZMQ (docs/protocol.md), `curve_server_key` is the
    daemon's public key (40 Z85 characters, or the path of its public certificate NAME.key)
    and `curve_client_cert` the path of this client's secret certificate (NAME.key_secret, mode
    0600); None takes $TIDEPOOL_CURVE_SERVER_KEY / $TIDEPOOL_CURVE_CLIENT_CERT, "" means none.
    Raises tidepool.ConnectionError when no daemon answers there or it refuses this client,
    InvalidArgumentError for keys that cannot be used."""
    return Client(endpoint, timeout, curve_server_key=curve_server_key, curve_client_cert=curve_client_cert)


class Client:
    """A connection to tidepoold; use it as a context manager or call close().

    Its avg_pool1d ... max_pool3d methods take the module functions' arguments. An input
    made by empty() travels by reference, and the output is then made in shared memory
    too, so the job copies nothing; other inputs are sent inline. Thread-safe (calls on one
    client are serialised). The arguments are connect()'s."""

    def __init__(self, endpoint: Optional[str] = None, timeout: Optional[float] = 10.0, *,
                 curve_server_key: Optional[Union[str, "os.PathLike[str]"]] = None,
                 curve_client_cert: Optional[Union[str, "os.PathLike[str]"]] = None) -> None:
        if timeout is not None and not 0 <= timeout <= _MAX_TIMEOUT:
            raise InvalidArgumentError(f"timeout must be between 0 and {_MAX_TIMEOUT} seconds, or None, but is {timeout}")
        self.endpoint = endpoint or default_endpoint()
        self.timeout = timeout
        options = _lib.tp_client_options()
        options.struct_size = ctypes.sizeof(options)
        options.timeout_ms = -1 if timeout is None else int(round(timeout * 1000))
        options.curve_server_key = _path_or_text("curve_server_key", curve_server_key)
        options.curve_client_cert = _path_or_text("curve_client_cert", curve_client_cert)
        handle = ctypes.c_void_p()
        check(lib.tp_client_connect_v2(self.endpoint.encode(), ctypes.byref(options), ctypes.byref(handle)))
        self._handle = handle
        self._buffers = {}  # address -> size of live shared buffers
        self._lock = threading.Lock()
        self._closer = weakref.finalize(self, lib.tp_client_close, handle)

    def __repr__(self):
        state = "closed" if self.closed else "open"
        return f"<tidepool.Client {self.endpoint} ({state})>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self) -> bool:
        return not self._closer.alive

    def close(self) -> None:
        """Drop this client's regions on the daemon and close the connection. Arrays from
        empty() stay valid: their memory is released when they are garbage collected."""
        self._closer()

    def _live_handle(self):
        if self.closed:
            raise error(_lib.TP_ERR_CLOSED, "the client is closed")
        return self._handle

    def ping(self) -> float:
        """Round-trip time of a ping, in seconds."""
        seconds = ctypes.c_double()
        check(lib.tp_client_ping(self._live_handle(), ctypes.byref(seconds)))
        return seconds.value

    def stats(self) -> Dict[str, Any]:
        """The daemon's counters, as a dict."""
        length = ctypes.c_size_t()
        handle = self._live_handle()
        check(lib.tp_client_stats(handle, None, 0, ctypes.byref(length)))
        text = ctypes.create_string_buffer(length.value + 256)
        check(lib.tp_client_stats(handle, text, len(text), ctypes.byref(length)))
        return json.loads(text.value.decode())

    def empty(self, shape: Union[int, Sequence[int]], dtype: Any = np.float32) -> np.ndarray:
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
        check(lib.tp_client_alloc(self._live_handle(), nbytes, ctypes.byref(buffer)))
        address = lib.tp_buffer_data(buffer)
        memory = (ctypes.c_char * nbytes).from_address(address)
        with self._lock:
            self._buffers[address] = nbytes
        weakref.finalize(memory, self._release, buffer, address)
        return np.frombuffer(memory, dtype=dtype, count=math.prod(shape)).reshape(shape)

    def _release(self, buffer, address):
        with self._lock:
            self._buffers.pop(address, None)
        lib.tp_buffer_free(buffer)

    def _in_shared_memory(self, array):
        start = array.ctypes.data
        with self._lock:
            return any(base <= start < base + size for base, size in self._buffers.items())

    # The backend protocol of functional.pool:

    def _empty_output(self, shape, dtype, source):
        return self.empty(shape, dtype) if self._in_shared_memory(source) else np.empty(shape, dtype=dtype)

    def _run(self, desc, input_tensor, output_tensor, owner):
        check(lib.tp_client_pool(self._live_handle(), ctypes.byref(desc), ctypes.byref(input_tensor),
                                 ctypes.byref(output_tensor)), f"[{owner}]")

    def _run_backward(self, desc, input_tensor, grad_output, grad_input, options, owner):
        check(lib.tp_client_pool_backward(self._live_handle(), ctypes.byref(desc), ctypes.byref(input_tensor),
                                          ctypes.byref(grad_output), ctypes.byref(grad_input), ctypes.byref(options)),
              f"[{owner}]")

    def avg_pool1d(self, x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
                   padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """tidepool.avg_pool1d on the daemon: 1-d average pooling of channels-last x (N, L, C).
        An input from empty() is read in place and the output made in shared memory too;
        other inputs travel inline. Raises as tidepool.avg_pool1d does, and
        tidepool.ConnectionError, TimeoutError or BusyError when the daemon cannot serve it."""
        return pool(_lib.TP_POOL_AVG, 1, "avg_pool1d", x, kernel_size, stride, padding, out, backend=_Backend(self),
                    flags=pool_flags("avg_pool1d", _lib.TP_POOL_AVG, ceil_mode, count_include_pad))

    def avg_pool2d(self, x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
                   padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """tidepool.avg_pool2d on the daemon: 2-d average pooling of channels-last x (N, H, W, C).
        An input from empty() is read in place and the output made in shared memory too;
        other inputs travel inline. Raises as tidepool.avg_pool2d does, and
        tidepool.ConnectionError, TimeoutError or BusyError when the daemon cannot serve it."""
        return pool(_lib.TP_POOL_AVG, 2, "avg_pool2d", x, kernel_size, stride, padding, out, backend=_Backend(self),
                    flags=pool_flags("avg_pool2d", _lib.TP_POOL_AVG, ceil_mode, count_include_pad))

    def avg_pool3d(self, x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
                   padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """tidepool.avg_pool3d on the daemon: 3-d average pooling of channels-last x (N, D, H, W, C).
        An input from empty() is read in place and the output made in shared memory too;
        other inputs travel inline. Raises as tidepool.avg_pool3d does, and
        tidepool.ConnectionError, TimeoutError or BusyError when the daemon cannot serve it."""
        return pool(_lib.TP_POOL_AVG, 3, "avg_pool3d", x, kernel_size, stride, padding, out, backend=_Backend(self),
                    flags=pool_flags("avg_pool3d", _lib.TP_POOL_AVG, ceil_mode, count_include_pad))

    def max_pool1d(self, x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
                   padding: IntOrTuple = 0, ceil_mode: bool = False, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """tidepool.max_pool1d on the daemon: 1-d max pooling of channels-last x (N, L, C).
        An input from empty() is read in place and the output made in shared memory too;
        other inputs travel inline. Raises as tidepool.max_pool1d does, and
        tidepool.ConnectionError, TimeoutError or BusyError when the daemon cannot serve it."""
        return pool(_lib.TP_POOL_MAX, 1, "max_pool1d", x, kernel_size, stride, padding, out, backend=_Backend(self),
                    flags=pool_flags("max_pool1d", _lib.TP_POOL_MAX, ceil_mode))

    def max_pool2d(self, x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
                   padding: IntOrTuple = 0, ceil_mode: bool = False, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """tidepool.max_pool2d on the daemon: 2-d max pooling of channels-last x (N, H, W, C).
        An input from empty() is read in place and the output made in shared memory too;
        other inputs travel inline. Raises as tidepool.max_pool2d does, and
        tidepool.ConnectionError, TimeoutError or BusyError when the daemon cannot serve it."""
        return pool(_lib.TP_POOL_MAX, 2, "max_pool2d", x, kernel_size, stride, padding, out, backend=_Backend(self),
                    flags=pool_flags("max_pool2d", _lib.TP_POOL_MAX, ceil_mode))

    def max_pool3d(self, x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
                   padding: IntOrTuple = 0, ceil_mode: bool = False, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """tidepool.max_pool3d on the daemon: 3-d max pooling of channels-last x (N, D, H, W, C).
        An input from empty() is read in place and the output made in shared memory too;
        other inputs travel inline. Raises as tidepool.max_pool3d does, and
        tidepool.ConnectionError, TimeoutError or BusyError when the daemon cannot serve it."""
        return pool(_lib.TP_POOL_MAX, 3, "max_pool3d", x, kernel_size, stride, padding, out, backend=_Backend(self),
                    flags=pool_flags("max_pool3d", _lib.TP_POOL_MAX, ceil_mode))

    def avg_pool1d_vjp(self, x: Any, cotangent: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: IntOrTuple = 0, *, ties: str = "split", out: Optional[np.ndarray] = None,
               ceil_mode: bool = False, count_include_pad: bool = True) -> np.ndarray:
        """tidepool.avg_pool1d_vjp on the daemon. x and cotangent from empty() are read in place and the
        gradient made in shared memory when x is; other tensors travel inline. Raises as
        tidepool.avg_pool1d_vjp does, and tidepool.ConnectionError, TimeoutError or BusyError when the
        daemon cannot serve it."""
        return pool_vjp(_lib.TP_POOL_AVG, 1, "avg_pool1d_vjp", x, cotangent, kernel_size, stride, padding, ties, out,
                        backend=_Backend(self), ceil_mode=ceil_mode, count_include_pad=count_include_pad)

    def avg_pool2d_vjp(self, x: Any, cotangent: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: IntOrTuple = 0, *, ties: str = "split", out: Optional[np.ndarray] = None,
               ceil_mode: bool = False, count_include_pad: bool = True) -> np.ndarray:
        """tidepool.avg_pool2d_vjp on the daemon. x and cotangent from empty() are read in place and the
        gradient made in shared memory when x is; other tensors travel inline. Raises as
        tidepool.avg_pool2d_vjp does, and tidepool.ConnectionError, TimeoutError or BusyError when the
        daemon cannot serve it."""
        return pool_vjp(_lib.TP_POOL_AVG, 2, "avg_pool2d_vjp", x, cotangent, kernel_size, stride, padding, ties, out,
                        backend=_Backend(self), ceil_mode=ceil_mode, count_include_pad=count_include_pad)

    def avg_pool3d_vjp(self, x: Any, cotangent: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: IntOrTuple = 0, *, ties: str = "split", out: Optional[np.ndarray] = None,
               ceil_mode: bool = False, count_include_pad: bool = True) -> np.ndarray:
        """tidepool.avg_pool3d_vjp on the daemon. x and cotangent from empty() are read in place and the
        gradient made in shared memory when x is; other tensors travel inline. Raises as
        tidepool.avg_pool3d_vjp does, and tidepool.ConnectionError, TimeoutError or BusyError when the
        daemon cannot serve it."""
        return pool_vjp(_lib.TP_POOL_AVG, 3, "avg_pool3d_vjp", x, cotangent, kernel_size, stride, padding, ties, out,
                        backend=_Backend(self), ceil_mode=ceil_mode, count_include_pad=count_include_pad)

    def max_pool1d_vjp(self, x: Any, cotangent: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: IntOrTuple = 0, *, ties: str = "split", out: Optional[np.ndarray] = None,
               ceil_mode: bool = False) -> np.ndarray:
        """tidepool.max_pool1d_vjp on the daemon. x and cotangent from empty() are read in place and the
        gradient made in shared memory when x is; other tensors travel inline. Raises as
        tidepool.max_pool1d_vjp does, and tidepool.ConnectionError, TimeoutError or BusyError when the
        daemon cannot serve it."""
        return pool_vjp(_lib.TP_POOL_MAX, 1, "max_pool1d_vjp", x, cotangent, kernel_size, stride, padding, ties, out,
                        backend=_Backend(self), ceil_mode=ceil_mode)

    def max_pool2d_vjp(self, x: Any, cotangent: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: IntOrTuple = 0, *, ties: str = "split", out: Optional[np.ndarray] = None,
               ceil_mode: bool = False) -> np.ndarray:
        """tidepool.max_pool2d_vjp on the daemon. x and cotangent from empty() are read in place and the
        gradient made in shared memory when x is; other tensors travel inline. Raises as
        tidepool.max_pool2d_vjp does, and tidepool.ConnectionError, TimeoutError or BusyError when the
        daemon cannot serve it."""
        return pool_vjp(_lib.TP_POOL_MAX, 2, "max_pool2d_vjp", x, cotangent, kernel_size, stride, padding, ties, out,
                        backend=_Backend(self), ceil_mode=ceil_mode)

    def max_pool3d_vjp(self, x: Any, cotangent: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: IntOrTuple = 0, *, ties: str = "split", out: Optional[np.ndarray] = None,
               ceil_mode: bool = False) -> np.ndarray:
        """tidepool.max_pool3d_vjp on the daemon. x and cotangent from empty() are read in place and the
        gradient made in shared memory when x is; other tensors travel inline. Raises as
        tidepool.max_pool3d_vjp does, and tidepool.ConnectionError, TimeoutError or BusyError when the
        daemon cannot serve it."""
        return pool_vjp(_lib.TP_POOL_MAX, 3, "max_pool3d_vjp", x, cotangent, kernel_size, stride, padding, ties, out,
                        backend=_Backend(self), ceil_mode=ceil_mode)

class _Backend:
    """Adapts a Client to functional.pool's backend interface."""

    def __init__(self, client: Client) -> None:
        self.empty = client._empty_output
        self.run = client._run
        self.run_backward = client._run_backward
