"""Tidepool's exceptions. Every one derives from tidepool.Error, and also from the
built-in exception a Python programmer would catch for that kind of failure."""

import builtins


class Error(Exception):
    """Base of every Tidepool exception. `status` is the tp_status code, when one applies."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class InvalidArgumentError(Error, ValueError):
    """An invalid pooling argument, input or output (bad kernel, shape, dtype, layout...)."""


class LibraryNotFoundError(Error, OSError):
    """libtidepool.so could not be loaded."""


class OutOfMemoryError(Error, MemoryError):
    """The library could not allocate memory."""


class TimeoutError(Error, builtins.TimeoutError):
    """No reply from the daemon within the timeout."""


class ConnectionError(Error, builtins.ConnectionError):
    """The daemon cannot be reached at the endpoint."""


class BusyError(Error):
    """The daemon already runs its --max-inflight jobs, or holds its --max-queued-bytes of
    unread outputs; retry later."""


class PermissionError(Error, builtins.PermissionError):
    """Not allowed for this caller: another user's shared memory, shared memory over tcp,
    or an endpoint whose socket or directory another user controls."""
