"""The loaded library and the one place where its statuses become exceptions: every call
whose tp_status can fail goes through `check`, right after the call, on the same thread."""

from __future__ import annotations

from . import _lib
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

lib, library_path, _tried = _lib.load_library()
if lib is None and _lib.override_path():
    raise LibraryNotFoundError(
        f"TIDEPOOL_LIBRARY names a library that cannot be used ({_tried[0]}); "
        "fix the path, or unset TIDEPOOL_LIBRARY to load the package's own library"
    )
if lib is None:
    raise LibraryNotFoundError(
        "cannot load libtidepool.so (build it with `make build`, or set TIDEPOOL_LIBRARY); tried:\n  "
        + "\n  ".join(_tried)
    )

# Statuses that mean the caller passed something invalid: raised as ValueError too.
_INVALID = {
    _lib.TP_ERR_INVALID_ARGUMENT,
    _lib.TP_ERR_NULL_POINTER,
    _lib.TP_ERR_DTYPE,
    _lib.TP_ERR_SHAPE,
    _lib.TP_ERR_OVERFLOW,
    _lib.TP_ERR_FLAGS,
    _lib.TP_ERR_LAYOUT,
    _lib.TP_ERR_TOO_LARGE,
}
_BY_STATUS = {
    _lib.TP_ERR_NO_MEMORY: OutOfMemoryError,
    _lib.TP_ERR_TIMEOUT: TimeoutError,
    _lib.TP_ERR_CONNECTION: ConnectionError,
    _lib.TP_ERR_BUSY: BusyError,
    _lib.TP_ERR_PERMISSION: PermissionError,
}


def error(status: int, message: str) -> Error:
    """The exception for `status` with `message`."""
    if status in _INVALID:
        return InvalidArgumentError(message, status)
    if status in _BY_STATUS:
        return _BY_STATUS[status](message, status)
    name = lib.tp_status_string(status).decode()
    return Error(f"{message} ({name})", status)


def check(status: int, context: str = "") -> None:
    """Raises the exception for a failed call, with tp_last_error()'s text (read on this
    thread, right after the call, so it is the message of that call)."""
    if status == _lib.TP_OK:
        return
    message = lib.tp_last_error().decode("utf-8", "replace")
    raise error(status, f"{context} {message}" if context else message)
