"""Tidepool: channels-last average and max pooling with MLX's exact semantics, in-process
through ctypes over libtidepool.so (no compiled extension).

    >>> import numpy as np, tidepool
    >>> x = np.random.randn(8, 16, 32, 32, 4).astype(np.float32)
    >>> tidepool.nn.AvgPool3d(kernel_size=2, stride=2)(x).shape
    (8, 8, 16, 16, 4)

Or remotely, on a running tidepoold, with tensors in shared memory:

    >>> with tidepool.connect() as client:
    ...     x = client.empty((8, 16, 32, 32, 4), np.float32)
    ...     x[...] = np.random.randn(*x.shape)
    ...     y = client.avg_pool3d(x, kernel_size=2, stride=2)
"""

from . import nn
from ._native import library_path, lib as _c
from .client import Client, connect, default_endpoint
from .errors import (
    BusyError,
    ConnectionError,
    Error,
    InvalidArgumentError,
    LibraryNotFoundError,
    OutOfMemoryError,
    PermissionError,
    TimeoutError,
)
from .gradients import (
    avg_pool1d_vjp,
    avg_pool2d_vjp,
    avg_pool3d_vjp,
    max_pool1d_vjp,
    max_pool2d_vjp,
    max_pool3d_vjp,
)
from . import functional as _functional
from .functional import (
    avg_pool1d,
    avg_pool2d,
    avg_pool3d,
    get_num_threads,
    max_pool1d,
    max_pool2d,
    max_pool3d,
    set_num_threads,
)


def __getattr__(name):
    # SUPPORTED_DTYPES is computed when first asked for: it imports ml_dtypes (for bfloat16),
    # which `import tidepool` does not.
    if name == "SUPPORTED_DTYPES":
        return _functional.supported_dtypes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def library_version() -> str:
    """The loaded libtidepool.so's version string, e.g. "0.3.0"."""
    return _c.tp_version_string().decode()


def cpu_level() -> str:
    """The CPU level whose kernels run in this process: "x86-64" or "x86-64-v3" (AVX2).

    The best this CPU runs unless the environment variable TIDEPOOL_CPU named another before
    the library was loaded ("baseline", "avx2" or "auto"); both give the same bits."""
    return _c.tp_cpu_level().decode()


#: The header's version, which the library reports (a wheel carries its own library).
__version__ = library_version()


__all__ = [
    "nn", "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
    "avg_pool1d_vjp", "avg_pool2d_vjp", "avg_pool3d_vjp", "max_pool1d_vjp", "max_pool2d_vjp", "max_pool3d_vjp",
    "set_num_threads", "get_num_threads", "library_version", "cpu_level", "library_path", "SUPPORTED_DTYPES",
    "connect", "Client", "default_endpoint",
    "Error", "InvalidArgumentError", "LibraryNotFoundError", "OutOfMemoryError", "TimeoutError", "ConnectionError",
    "BusyError", "PermissionError",
]
