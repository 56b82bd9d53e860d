"""The raw layer: a ctypes mirror of include/tidepool.h (constants, structs, prototypes) and
the library lookup. One Python name per C name. It only translates: it raises nothing and
checks no status; _native.py turns statuses into exceptions, in one place, and the Pythonic
layer (functional.py, nn.py, client.py) sits on that. tests/test_header.py checks every
constant, struct and prototype here against the header."""

import ctypes
import ctypes.util
import os
from pathlib import Path


# ---- Constants (include/tidepool.h) ---------------------------------------------------

TP_API_VERSION = 6
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

TP_POOL_CEIL_MODE = 1
TP_POOL_EXCLUDE_PADDING = 2

TP_TIES_SPLIT = 0
TP_TIES_FIRST = 1

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


class tp_backward_options(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("max_ties", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
    ]


class tp_client_options(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("timeout_ms", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
        ("curve_server_key", ctypes.c_char_p),
        ("curve_client_cert", ctypes.c_char_p),
    ]


_STATUS = ctypes.c_int  # tp_status is a C enum: int-sized
_I64P = ctypes.POINTER(ctypes.c_int64)
_TENSOR_P = ctypes.POINTER(tp_tensor)
_DESC_P = ctypes.POINTER(tp_pool_desc)

# name: (restype, argtypes), exactly as the header declares them.
PROTOTYPES = {
    "tp_version": (ctypes.c_uint32, []),
    "tp_version_string": (ctypes.c_char_p, []),
    "tp_cpu_level": (ctypes.c_char_p, []),
    "tp_status_string": (ctypes.c_char_p, [_STATUS]),
    "tp_last_error": (ctypes.c_char_p, []),
    "tp_dtype_size": (ctypes.c_size_t, [ctypes.c_int32]),
    "tp_tensor_init": (_STATUS, [_TENSOR_P, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, _I64P, _I64P]),
    "tp_pool_desc_init": (_STATUS, [_DESC_P, ctypes.c_int32, ctypes.c_int32, _I64P, _I64P, _I64P]),
    "tp_pool_output": (_STATUS, [_DESC_P, _TENSOR_P, _TENSOR_P]),
    "tp_tensor_nbytes": (_STATUS, [_TENSOR_P, ctypes.POINTER(ctypes.c_size_t)]),
    "tp_pool": (_STATUS, [_DESC_P, _TENSOR_P, _TENSOR_P]),
    "tp_pool_backward": (_STATUS, [_DESC_P, _TENSOR_P, _TENSOR_P, _TENSOR_P, ctypes.POINTER(tp_backward_options)]),
    "tp_set_num_threads": (_STATUS, [ctypes.c_int32]),
    "tp_get_num_threads": (ctypes.c_int32, []),
    "tp_default_endpoint": (ctypes.c_char_p, []),
    "tp_client_connect": (_STATUS, [ctypes.c_char_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_void_p)]),
    "tp_client_connect_v2": (_STATUS, [ctypes.c_char_p, ctypes.POINTER(tp_client_options), ctypes.POINTER(ctypes.c_void_p)]),
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
    "tp_client_pool_backward": (_STATUS, [ctypes.c_void_p, _DESC_P, _TENSOR_P, _TENSOR_P, _TENSOR_P,
                                          ctypes.POINTER(tp_backward_options)]),
    "tp_client_submit_backward": (_STATUS, [ctypes.c_void_p, _DESC_P, _TENSOR_P, _TENSOR_P, _TENSOR_P,
                                            ctypes.POINTER(tp_backward_options), ctypes.POINTER(ctypes.c_uint64)]),
}

# ---- Library lookup -------------------------------------------------------------------

LIBRARY_NAME = "libtidepool.so"


def override_path():
    """$TIDEPOOL_LIBRARY, or None when it is unset or empty."""
    return os.environ.get("TIDEPOOL_LIBRARY") or None


def candidate_paths():
    """Where the library is looked for: $TIDEPOOL_LIBRARY alone when it is set (a path that
    does not load is an error, not a reason to load another library the user did not ask
    for); otherwise next to this package (a wheel carries it there), the repository's
    .build/release when running from a checkout, then the system's (libtidepool.so.0, as
    `make install` leaves it), in that order."""
    if override_path():
        return [override_path()]
    here = Path(__file__).resolve().parent
    candidates = [str(here / LIBRARY_NAME)]
    repository = here.parent.parent.parent
    if (repository / "Package.swift").exists():  # running from a checkout, not an installed package
        candidates.append(str(repository / ".build" / "release" / LIBRARY_NAME))
    # An installed library (make install), by its SONAME through the linker's cache.
    system = ctypes.util.find_library("tidepool")
    candidates.append(system or "find_library('tidepool')")
    return candidates


def load_library():
    """Loads libtidepool.so (ctypes.CDLL: every call releases the GIL) and sets the
    prototypes. Returns (library, path, tried): library and path are None when no candidate
    loads, and `tried` says why each failed."""
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
        # A library older than this package (a system one, or TIDEPOOL_LIBRARY) lacks some
        # functions: said, and the next candidate tried (if any), rather than an
        # AttributeError later.
        missing = [name for name in PROTOTYPES if not hasattr(lib, name)]
        if missing:
            version = b"?"
            if hasattr(lib, "tp_version_string"):
                lib.tp_version_string.restype = ctypes.c_char_p
                version = lib.tp_version_string()
            tried.append(f"{path}: version {version.decode()} lacks {', '.join(missing)} "
                         f"(this package needs API version {TP_API_VERSION})")
            continue
        for name, (restype, argtypes) in PROTOTYPES.items():
            function = getattr(lib, name)
            function.restype = restype
            function.argtypes = argtypes
        return lib, path, tried
    return None, None, tried
