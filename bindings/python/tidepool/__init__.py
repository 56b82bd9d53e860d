"""Tidepool: channels-last average and max pooling with MLX's exact semantics, in-process
through ctypes over libtidepool.so (no compiled extension).

    >>> import numpy as np, tidepool
    >>> x = np.random.randn(8, 16, 32, 32, 4).astype(np.float32)
    >>> tidepool.nn.AvgPool3d(kernel_size=2, stride=2)(x).shape
    (8, 8, 16, 16, 4)
"""

from . import nn
from ._lib import library_path, lib as _c
from .errors import Error, InvalidArgumentError, LibraryNotFoundError, OutOfMemoryError
from .functional import (
    SUPPORTED_DTYPES,
    avg_pool1d,
    avg_pool2d,
    avg_pool3d,
    get_num_threads,
    max_pool1d,
    max_pool2d,
    max_pool3d,
    set_num_threads,
)

__version__ = "0.1.0"


def library_version():
    """The loaded libtidepool.so's version string, e.g. "0.1.0"."""
    return _c.tp_version_string().decode()


__all__ = [
    "nn", "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
    "set_num_threads", "get_num_threads", "library_version", "library_path", "SUPPORTED_DTYPES",
    "Error", "InvalidArgumentError", "LibraryNotFoundError", "OutOfMemoryError",
]
