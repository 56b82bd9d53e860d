"""Low-level ctypes mirror of include/tidepool.h: constants, structs, prototypes, and the
library lookup. One Python name per C name; the Pythonic layer lives in functional.py/nn.py."""

import ctypes
import ctypes.util
import os
from pathlib import Path

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

# ---- Constants (include/tidepool.h) ---------------------------------------------------

TP_API_VERSION = 3
TP_MAX_SPATIAL_DIMS = 3
TP_MAX_RANK = 8

TP_OK = 0
TP_ERR_INVALID_ARGUMENT = 1
TP_ERR_NULL_POINTER = 2
TP_ERR_DTYPE = 3
TP_ERR_SHAPE = 4
TP_ERR_OVERFLOW = 5
TP_ERR_FLAGS = 6
TP_ERR_VERSION = 7
TP_ERR_LAYOUT = 8
TP_ERR_NO_MEMORY = 9
TP_ERR_INTERNAL = 10
TP_ERR_PROTOCOL = 11
TP_ERR_TOO_LARGE = 12
TP_ERR_BUSY = 13
TP_ERR_TIMEOUT = 14
TP_ERR_CONNECTION = 15
TP_ERR_NOT_FOUND = 16
TP_ERR_CLOSED = 17
TP_ERR_SYSTEM = 18
TP_ERR_PERMISSION = 19

TP_DTYPE_FLOAT32 = 1
TP_DTYPE_FLOAT64 = 2
TP_DTYPE_FLOAT16 = 3
TP_DTYPE_BFLOAT16 = 4
TP_DTYPE_INT8 = 5
TP_DTYPE_INT16 = 6
TP_DTYPE_INT32 = 7
TP_DTYPE_INT64 = 8
TP_DTYPE_UINT8 = 9
TP_DTYPE_UINT16 = 10
TP_DTYPE_UINT32 = 11
TP_DTYPE_UINT64 = 12

TP_POOL_AVG = 1
TP_POOL_MAX = 2

# ---- Structs ------------------------------------------------------------------------


class tp_tensor(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int32),
        ("rank", ctypes.c_int32),
        ("shape", ctypes.c_int64 * TP_MAX_RANK),
        ("strides", ctypes.c_int64 * TP_MAX_RANK),
    ]


class tp_pool_desc(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("kind", ctypes.c_int32),
        ("spatial_dims", ctypes.c_int32),
        ("kernel_size", ctypes.c_int64 * TP_MAX_SPATIAL_DIMS),
        ("stride", ctypes.c_int64 * TP_MAX_SPATIAL_DIMS),
        ("padding", ctypes.c_int64 * TP_MAX_SPATIAL_DIMS),
    ]


_STATUS = ctypes.c_int  # tp_status is a C enum: int-sized
_I64P = ctypes.POINTER(ctypes.c_int64)
_TENSOR_P = ctypes.POINTER(tp_tensor)
_DESC_P = ctypes.POINTER(tp_pool_desc)

# name: (restype, argtypes), exactly as the header declares them.
_PROTOTYPES = {
    "tp_version": (ctypes.c_uint32, []),
    "tp_version_string": (ctypes.c_char_p, []),
    "tp_status_string": (ctypes.c_char_p, [_STATUS]),
    "tp_last_error": (ctypes.c_char_p, []),
    "tp_dtype_size": (ctypes.c_size_t, [ctypes.c_int32]),
    "tp_tensor_init": (_STATUS, [_TENSOR_P, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, _I64P, _I64P]),
    "tp_pool_desc_init": (_STATUS, [_DESC_P, ctypes.c_int32, ctypes.c_int32, _I64P, _I64P, _I64P]),
    "tp_pool_output": (_STATUS, [_DESC_P, _TENSOR_P, _TENSOR_P]),
    "tp_tensor_nbytes": (_STATUS, [_TENSOR_P, ctypes.POINTER(ctypes.c_size_t)]),
    "tp_pool": (_STATUS, [_DESC_P, _TENSOR_P, _TENSOR_P]),
    "tp_set_num_threads": (_STATUS, [ctypes.c_int32]),
    "tp_get_num_threads": (ctypes.c_int32, []),
    "tp_default_endpoint": (ctypes.c_char_p, []),
    "tp_client_connect": (_STATUS, [ctypes.c_char_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_void_p)]),
    "tp_client_close": (_STATUS, [ctypes.c_void_p]),
    "tp_client_ping": (_STATUS, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_double)]),
    "tp_client_stats": (_STATUS, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]),
    "tp_client_alloc": (_STATUS, [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)]),
    "tp_buffer_data": (ctypes.c_void_p, [ctypes.c_void_p]),
    "tp_buffer_size": (ctypes.c_size_t, [ctypes.c_void_p]),
    "tp_buffer_free": (_STATUS, [ctypes.c_void_p]),
    "tp_client_pool": (_STATUS, [ctypes.c_void_p, _DESC_P, _TENSOR_P, _TENSOR_P]),
    "tp_client_submit": (_STATUS, [ctypes.c_void_p, _DESC_P, _TENSOR_P, _TENSOR_P, ctypes.POINTER(ctypes.c_uint64)]),
    "tp_client_wait": (_STATUS, [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int32]),
    "tp_client_cancel": (_STATUS, [ctypes.c_void_p, ctypes.c_uint64]),
}

# ---- Library lookup -------------------------------------------------------------------

LIBRARY_NAME = "libtidepool.so"


def candidate_paths():
    """Where the library is looked for, in order: $TIDEPOOL_LIBRARY, next to this package,
    the repository's .build/release, then the system's search path."""
    here = Path(__file__).resolve().parent
    candidates = []
    if os.environ.get("TIDEPOOL_LIBRARY"):
        candidates.append(os.environ["TIDEPOOL_LIBRARY"])
    candidates.append(str(here / LIBRARY_NAME))
    candidates.append(str(here.parent.parent.parent / ".build" / "release" / LIBRARY_NAME))
    system = ctypes.util.find_library("tidepool")
    candidates.append(system or "find_library('tidepool')")
    return candidates


def load_library():
    """Load libtidepool.so (ctypes.CDLL: every call releases the GIL) and set prototypes."""
    tried = []
    for path in candidate_paths():
        if path.startswith("find_library("):
            tried.append(f"{path}: not found")
            continue
        if os.sep in path and not os.path.exists(path):
            tried.append(f"{path}: no such file")
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as error:
            tried.append(f"{path}: {error}")
            continue
        for name, (restype, argtypes) in _PROTOTYPES.items():
            function = getattr(lib, name)
            function.restype = restype
            function.argtypes = argtypes
        return lib, path
    raise LibraryNotFoundError(
        "cannot load libtidepool.so (build it with `make build`, or set TIDEPOOL_LIBRARY); tried:\n  "
        + "\n  ".join(tried)
    )


lib, library_path = load_library()

# Statuses that mean the caller passed something invalid: raised as ValueError too.
_INVALID = {
    TP_ERR_INVALID_ARGUMENT,
    TP_ERR_NULL_POINTER,
    TP_ERR_DTYPE,
    TP_ERR_SHAPE,
    TP_ERR_OVERFLOW,
    TP_ERR_FLAGS,
    TP_ERR_LAYOUT,
    TP_ERR_TOO_LARGE,
}
_BY_STATUS = {
    TP_ERR_NO_MEMORY: OutOfMemoryError,
    TP_ERR_TIMEOUT: TimeoutError,
    TP_ERR_CONNECTION: ConnectionError,
    TP_ERR_BUSY: BusyError,
    TP_ERR_PERMISSION: PermissionError,
}


def check(status, context=""):
    """Raise the exception for a failed call, with tp_last_error()'s text (read on this
    thread, right after the call, so it is the message of that call)."""
    if status == TP_OK:
        return
    message = lib.tp_last_error().decode("utf-8", "replace")
    if context:
        message = f"{context} {message}"
    if status in _INVALID:
        raise InvalidArgumentError(message, status)
    if status in _BY_STATUS:
        raise _BY_STATUS[status](message, status)
    name = lib.tp_status_string(status).decode()
    raise Error(f"{message} ({name})", status)
