"""MLX's pooling layer classes (mlx.nn.AvgPool1d ... MaxPool3d) over numpy arrays."""

from __future__ import annotations

import ctypes
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _lib
from ._native import check, lib
from .functional import _DTYPE_CODES, IntOrTuple, _descriptor, _tensor, normalize_arguments, pool

# Plans kept per layer: one per (shape, strides, dtype) seen, up to this many.
_MAX_PLANS = 16

_char_at = ctypes.c_char.from_buffer


def _address(array: np.ndarray) -> int:
    """The address of a non-empty array's data: through ctypes' buffer view where numpy
    exports one writeable (C-contiguous, writeable), a third of `ndarray.ctypes.data`'s cost."""
    if array.flags.c_contiguous and array.flags.writeable:
        return ctypes.addressof(_char_at(array))
    return array.ctypes.data


class _Pool:
    """A pooling layer: the arguments are checked once, at construction; each call pools an
    array. Every layer writes out its own __init__, so that help() shows its signature and an
    unknown keyword (PyTorch's ceil_mode=...) raises a TypeError naming that layer."""

    _kind: int
    _spatial_dims: int

    def _configure(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple], padding: IntOrTuple) -> None:
        self._kernel_size, self._stride, self._padding = normalize_arguments(
            type(self).__name__, self._spatial_dims, kernel_size, stride, padding
        )
        self._desc = _descriptor(type(self).__name__, self._kind, self._kernel_size, self._stride, self._padding)
        self._plans: Dict[Tuple[Any, ...], Tuple[Tuple[int, ...], np.dtype, bytes, bytes]] = {}

    @property
    def kernel_size(self) -> Tuple[int, ...]:
        return self._kernel_size

    @property
    def stride(self) -> Tuple[int, ...]:
        return self._stride

    @property
    def padding(self) -> Tuple[int, ...]:
        return self._padding

    def __call__(self, x: Any, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Pool a channels-last array; returns a numpy array (or fills `out`)."""
        # A numpy array of a shape, strides and dtype this layer has pooled before (checked
        # then) goes straight to tp_pool with copies of the tensors it built; the library still
        # checks everything. Copies, not the kept structs: another thread may be in a call.
        if out is None and type(x) is np.ndarray:
            plan = self._plans.get((x.shape, x.strides, x.dtype))
            if plan is not None:
                address = _address(x)
                if address % x.itemsize == 0:
                    shape, dtype, input_bytes, output_bytes = plan
                    result = np.empty(shape, dtype)
                    source = _lib.tp_tensor.from_buffer_copy(input_bytes)
                    target = _lib.tp_tensor.from_buffer_copy(output_bytes)
                    source.data = address
                    target.data = ctypes.addressof(_char_at(result))
                    status = lib.tp_pool(self._desc, source, target)
                    if status:
                        check(status, f"[{type(self).__name__}]")
                    return result
        result = pool(self._kind, self._spatial_dims, type(self).__name__, x,
                      self._kernel_size, self._stride, self._padding, out)
        if out is None and type(x) is np.ndarray:
            self._plan(x, result)
        return result

    def _plan(self, x: np.ndarray, result: np.ndarray) -> None:
        """Keeps the tensors of a call that `pool` took as it is (a supported dtype in native
        order, whole-element strides: no copy, no change of dtype)."""
        dtype = x.dtype
        if dtype not in _DTYPE_CODES or not dtype.isnative or any(s % dtype.itemsize for s in x.strides):
            return
        if x.size == 0 or result.size == 0:  # no address to take (and nothing to gain)
            return
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        source, target = _tensor(x), _tensor(result)
        self._plans[(x.shape, x.strides, dtype)] = (result.shape, result.dtype, bytes(source), bytes(target))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(kernel_size={self._kernel_size}, stride={self._stride}, "
                f"padding={self._padding})")


class AvgPool1d(_Pool):
    """1-d average pooling of (N, L, C) input; zero padding counted in the average."""
    _kind, _spatial_dims = _lib.TP_POOL_AVG, 1

    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0) -> None:
        self._configure(kernel_size, stride, padding)


class AvgPool2d(_Pool):
    """2-d average pooling of (N, H, W, C) input; zero padding counted in the average."""
    _kind, _spatial_dims = _lib.TP_POOL_AVG, 2

    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0) -> None:
        self._configure(kernel_size, stride, padding)


class AvgPool3d(_Pool):
    """3-d average pooling of (N, D, H, W, C) input; zero padding counted in the average."""
    _kind, _spatial_dims = _lib.TP_POOL_AVG, 3

    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0) -> None:
        self._configure(kernel_size, stride, padding)


class MaxPool1d(_Pool):
    """1-d max pooling of (N, L, C) input; padding is -inf (integers: the lowest value)."""
    _kind, _spatial_dims = _lib.TP_POOL_MAX, 1

    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0) -> None:
        self._configure(kernel_size, stride, padding)


class MaxPool2d(_Pool):
    """2-d max pooling of (N, H, W, C) input; padding is -inf (integers: the lowest value)."""
    _kind, _spatial_dims = _lib.TP_POOL_MAX, 2

    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0) -> None:
        self._configure(kernel_size, stride, padding)


class MaxPool3d(_Pool):
    """3-d max pooling of (N, D, H, W, C) input; padding is -inf (integers: the lowest value)."""
    _kind, _spatial_dims = _lib.TP_POOL_MAX, 3

    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0) -> None:
        self._configure(kernel_size, stride, padding)


__all__ = ["AvgPool1d", "AvgPool2d", "AvgPool3d", "MaxPool1d", "MaxPool2d", "MaxPool3d"]
