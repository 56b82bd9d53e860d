"""MLX's pooling layer classes (mlx.nn.AvgPool1d ... MaxPool3d) over numpy arrays."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from . import _lib
from .functional import IntOrTuple, Plan, pool_flags


class _Pool:
    """A pooling layer: the arguments are checked once, at construction, into a `Plan`
    (which also keeps what it checked for each kind of array it pools); each call pools an
    array. Every layer writes out its own __init__, so that help() shows its signature and an
    unknown keyword (PyTorch's return_indices=...) raises a TypeError naming that layer.
    PyTorch's ceil_mode (and count_include_pad for averages) are keywords beyond MLX's
    arguments; their defaults are MLX's rules."""

    _kind: int
    _spatial_dims: int

    def _configure(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple], padding: IntOrTuple,
                   ceil_mode: bool = False, count_include_pad: bool = True) -> None:
        owner = type(self).__name__
        flags = pool_flags(owner, self._kind, ceil_mode, count_include_pad)
        self._plan = Plan(self._kind, self._spatial_dims, owner, kernel_size, stride, padding, flags)

    @property
    def kernel_size(self) -> Tuple[int, ...]:
        return self._plan.kernel_size

    @property
    def stride(self) -> Tuple[int, ...]:
        return self._plan.stride

    @property
    def padding(self) -> Tuple[int, ...]:
        return self._plan.padding

    @property
    def ceil_mode(self) -> bool:
        return bool(self._plan.flags & _lib.TP_POOL_CEIL_MODE)

    def __call__(self, x: Any, *, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Pool a channels-last array; returns a numpy array (or fills `out`)."""
        return self._plan(x, out)

    def __repr__(self) -> str:
        options = ", ceil_mode=True" if self.ceil_mode else ""
        if self._plan.flags & _lib.TP_POOL_EXCLUDE_PADDING:
            options += ", count_include_pad=False"
        return (f"{type(self).__name__}(kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}{options})")


class _AvgPool(_Pool):
    """The average layers: PyTorch's count_include_pad beside ceil_mode."""

    @property
    def count_include_pad(self) -> bool:
        return not self._plan.flags & _lib.TP_POOL_EXCLUDE_PADDING


class AvgPool1d(_AvgPool):
    """1-d average pooling of (N, L, C) input; zero padding counted in the average (unless count_include_pad=False)."""
    _kind, _spatial_dims = _lib.TP_POOL_AVG, 1

    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True) -> None:
        self._configure(kernel_size, stride, padding, ceil_mode, count_include_pad)


class AvgPool2d(_AvgPool):
    """2-d average pooling of (N, H, W, C) input; zero padding counted in the average (unless count_include_pad=False)."""
    _kind, _spatial_dims = _lib.TP_POOL_AVG, 2

    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True) -> None:
        self._configure(kernel_size, stride, padding, ceil_mode, count_include_pad)


class AvgPool3d(_AvgPool):
    """3-d average pooling of (N, D, H, W, C) input; zero padding counted in the average (unless count_include_pad=False)."""
    _kind, _spatial_dims = _lib.TP_POOL_AVG, 3

    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True) -> None:
        self._configure(kernel_size, stride, padding, ceil_mode, count_include_pad)


class MaxPool1d(_Pool):
    """1-d max pooling of (N, L, C) input; padding is -inf (integers: the lowest value)."""
    _kind, _spatial_dims = _lib.TP_POOL_MAX, 1

    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
                 ceil_mode: bool = False) -> None:
        self._configure(kernel_size, stride, padding, ceil_mode)


class MaxPool2d(_Pool):
    """2-d max pooling of (N, H, W, C) input; padding is -inf (integers: the lowest value)."""
    _kind, _spatial_dims = _lib.TP_POOL_MAX, 2

    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
                 ceil_mode: bool = False) -> None:
        self._configure(kernel_size, stride, padding, ceil_mode)


class MaxPool3d(_Pool):
    """3-d max pooling of (N, D, H, W, C) input; padding is -inf (integers: the lowest value)."""
    _kind, _spatial_dims = _lib.TP_POOL_MAX, 3

    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
                 ceil_mode: bool = False) -> None:
        self._configure(kernel_size, stride, padding, ceil_mode)


__all__ = ["AvgPool1d", "AvgPool2d", "AvgPool3d", "MaxPool1d", "MaxPool2d", "MaxPool3d"]
