"""The backward pass of the six layers: tidepool.avg_pool1d_vjp ... max_pool3d_vjp, the
gradient with respect to the input for a cotangent, as MLX differentiates its pooling layers
(or, for max with ties="first", as PyTorch does)."""

from __future__ import annotations

import ctypes
from typing import Any, Optional

import numpy as np

from . import _lib
from .errors import InvalidArgumentError
from .functional import (IN_PROCESS, Backend, IntOrTuple, _check_out, _descriptor, _engine_view, _tensor, layer_input,
                         normalize_arguments, pool_flags)

TIES = {"split": _lib.TP_TIES_SPLIT, "first": _lib.TP_TIES_FIRST}


def pool_vjp(kind: int, spatial_dims: int, owner: str, x: Any, cotangent: Any, kernel_size: IntOrTuple,
             stride: Optional[IntOrTuple], padding: IntOrTuple, ties: str, out: Optional[np.ndarray],
             backend: Backend = IN_PROCESS, ceil_mode: bool = False, count_include_pad: bool = True) -> np.ndarray:
    """The gradient of pooling `x` for `cotangent`, into a new array or `out`, computed by `backend`."""
    kernel_size, stride, padding = normalize_arguments(owner, spatial_dims, kernel_size, stride, padding)
    flags = pool_flags(owner, kind, ceil_mode, count_include_pad)
    if ties not in TIES:
        raise InvalidArgumentError(f"[{owner}] ties must be 'split' (MLX) or 'first' (PyTorch) but got {ties!r}")
    array = _engine_view(layer_input(x, spatial_dims, owner, "x"), owner)
    grad = _engine_view(layer_input(cotangent, spatial_dims, owner, "cotangent"), owner)
    desc = _descriptor(owner, kind, kernel_size, stride, padding, flags)
    result = backend.empty(array.shape, array.dtype, array) if out is None else _check_out(out, array.shape, array.dtype, owner)
    options = _lib.tp_backward_options(ctypes.sizeof(_lib.tp_backward_options), 0, TIES[ties], 0)
    backend.run_backward(desc, _tensor(array), _tensor(grad), _tensor(result), options, owner)
    return result


def avg_pool1d_vjp(x: Any, cotangent: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
                 padding: IntOrTuple = 0, *, ties: str = "split", out: Optional[np.ndarray] = None,
                 ceil_mode: bool = False, count_include_pad: bool = True) -> np.ndarray:
    """The gradient of avg_pool1d with respect to x for `cotangent` (the vector-Jacobian
    product), as mx.vjp of mlx.nn.AvgPool1d gives it.
    Each element receives, from every window holding it, the window's cotangent divided by
    the window's divisor (the full window size, padding counted, unless ceil_mode or
    count_include_pad=False say otherwise, as for the forward pass); `ties` is ignored.

    Args:
        x: the forward input, array-like of shape (N, L, C), floating point (float32, float64,
            float16, bfloat16); strided views are read in place.
        cotangent: array-like of the forward output's shape and x's dtype.
        kernel_size, stride, padding, ceil_mode, count_include_pad: as for avg_pool1d.
        ties: "split" (MLX, the default) or "first" (PyTorch); max only.
        out: optional writeable C-contiguous numpy array of x's shape and dtype to fill.

    Returns:
        A numpy array (`out` when given) of x's shape and dtype. Sums run in float32 (float64
        for float64) and are rounded once.

    Raises:
        tidepool.InvalidArgumentError (a ValueError): invalid arguments, an integer x, a
            cotangent of another shape or dtype, or out.
        tidepool.OutOfMemoryError (a MemoryError): the engine's scratch could not be allocated.
    """
    return pool_vjp(_lib.TP_POOL_AVG, 1, "avg_pool1d_vjp", x, cotangent, kernel_size, stride, padding, ties, out, ceil_mode=ceil_mode, count_include_pad=count_include_pad)


def avg_pool2d_vjp(x: Any, cotangent: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
                 padding: IntOrTuple = 0, *, ties: str = "split", out: Optional[np.ndarray] = None,
                 ceil_mode: bool = False, count_include_pad: bool = True) -> np.ndarray:
    """The gradient of avg_pool2d with respect to x for `cotangent` (the vector-Jacobian
    product), as mx.vjp of mlx.nn.AvgPool2d gives it.
    Each element receives, from every window holding it, the window's cotangent divided by
    the window's divisor (the full window size, padding counted, unless ceil_mode or
    count_include_pad=False say otherwise, as for the forward pass); `ties` is ignored.

    Args:
        x: the forward input, array-like of shape (N, H, W, C), floating point (float32, float64,
            float16, bfloat16); strided views are read in place.
        cotangent: array-like of the forward output's shape and x's dtype.
        kernel_size, stride, padding, ceil_mode, count_include_pad: as for avg_pool2d.
        ties: "split" (MLX, the default) or "first" (PyTorch); max only.
        out: optional writeable C-contiguous numpy array of x's shape and dtype to fill.

    Returns:
        A numpy array (`out` when given) of x's shape and dtype. Sums run in float32 (float64
        for float64) and are rounded once.

    Raises:
        tidepool.InvalidArgumentError (a ValueError): invalid arguments, an integer x, a
            cotangent of another shape or dtype, or out.
        tidepool.OutOfMemoryError (a MemoryError): the engine's scratch could not be allocated.
    """
    return pool_vjp(_lib.TP_POOL_AVG, 2, "avg_pool2d_vjp", x, cotangent, kernel_size, stride, padding, ties, out, ceil_mode=ceil_mode, count_include_pad=count_include_pad)


def avg_pool3d_vjp(x: Any, cotangent: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
                 padding: IntOrTuple = 0, *, ties: str = "split", out: Optional[np.ndarray] = None,
                 ceil_mode: bool = False, count_include_pad: bool = True) -> np.ndarray:
    """The gradient of avg_pool3d with respect to x for `cotangent` (the vector-Jacobian
    product), as mx.vjp of mlx.nn.AvgPool3d gives it.
    Each element receives, from every window holding it, the window's cotangent divided by
    the window's divisor (the full window size, padding counted, unless ceil_mode or
    count_include_pad=False say otherwise, as for the forward pass); `ties` is ignored.

    Args:
        x: the forward input, array-like of shape (N, D, H, W, C), floating point (float32, float64,
            float16, bfloat16); strided views are read in place.
        cotangent: array-like of the forward output's shape and x's dtype.
        kernel_size, stride, padding, ceil_mode, count_include_pad: as for avg_pool3d.
        ties: "split" (MLX, the default) or "first" (PyTorch); max only.
        out: optional writeable C-contiguous numpy array of x's shape and dtype to fill.

    Returns:
        A numpy array (`out` when given) of x's shape and dtype. Sums run in float32 (float64
        for float64) and are rounded once.

    Raises:
        tidepool.InvalidArgumentError (a ValueError): invalid arguments, an integer x, a
            cotangent of another shape or dtype, or out.
        tidepool.OutOfMemoryError (a MemoryError): the engine's scratch could not be allocated.
    """
    return pool_vjp(_lib.TP_POOL_AVG, 3, "avg_pool3d_vjp", x, cotangent, kernel_size, stride, padding, ties, out, ceil_mode=ceil_mode, count_include_pad=count_include_pad)


def max_pool1d_vjp(x: Any, cotangent: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
                 padding: IntOrTuple = 0, *, ties: str = "split", out: Optional[np.ndarray] = None,
                 ceil_mode: bool = False) -> np.ndarray:
    """The gradient of max_pool1d with respect to x for `cotangent` (the vector-Jacobian
    product), as mx.vjp of mlx.nn.MaxPool1d gives it.
    With `ties="split"` (MLX's rule): a window's cotangent is split evenly among the
    positions equal to its maximum (padding included, its shares dropped), a NaN maximum gives NaN
    to the whole window; `ties="first"` (PyTorch's): all of it to the first maximum in scan order.

    Args:
        x: the forward input, array-like of shape (N, L, C), floating point (float32, float64,
            float16, bfloat16); strided views are read in place.
        cotangent: array-like of the forward output's shape and x's dtype.
        kernel_size, stride, padding, ceil_mode: as for max_pool1d.
        ties: "split" (MLX, the default) or "first" (PyTorch); max only.
        out: optional writeable C-contiguous numpy array of x's shape and dtype to fill.

    Returns:
        A numpy array (`out` when given) of x's shape and dtype. Sums run in float32 (float64
        for float64) and are rounded once.

    Raises:
        tidepool.InvalidArgumentError (a ValueError): invalid arguments, an integer x, a
            cotangent of another shape or dtype, or out.
        tidepool.OutOfMemoryError (a MemoryError): the engine's scratch could not be allocated.
    """
    return pool_vjp(_lib.TP_POOL_MAX, 1, "max_pool1d_vjp", x, cotangent, kernel_size, stride, padding, ties, out, ceil_mode=ceil_mode)


def max_pool2d_vjp(x: Any, cotangent: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
                 padding: IntOrTuple = 0, *, ties: str = "split", out: Optional[np.ndarray] = None,
                 ceil_mode: bool = False) -> np.ndarray:
    """The gradient of max_pool2d with respect to x for `cotangent` (the vector-Jacobian
    product), as mx.vjp of mlx.nn.MaxPool2d gives it.
    With `ties="split"` (MLX's rule): a window's cotangent is split evenly among the
    positions equal to its maximum (padding included, its shares dropped), a NaN maximum gives NaN
    to the whole window; `ties="first"` (PyTorch's): all of it to the first maximum in scan order.

    Args:
        x: the forward input, array-like of shape (N, H, W, C), floating point (float32, float64,
            float16, bfloat16); strided views are read in place.
        cotangent: array-like of the forward output's shape and x's dtype.
        kernel_size, stride, padding, ceil_mode: as for max_pool2d.
        ties: "split" (MLX, the default) or "first" (PyTorch); max only.
        out: optional writeable C-contiguous numpy array of x's shape and dtype to fill.

    Returns:
        A numpy array (`out` when given) of x's shape and dtype. Sums run in float32 (float64
        for float64) and are rounded once.

    Raises:
        tidepool.InvalidArgumentError (a ValueError): invalid arguments, an integer x, a
            cotangent of another shape or dtype, or out.
        tidepool.OutOfMemoryError (a MemoryError): the engine's scratch could not be allocated.
    """
    return pool_vjp(_lib.TP_POOL_MAX, 2, "max_pool2d_vjp", x, cotangent, kernel_size, stride, padding, ties, out, ceil_mode=ceil_mode)


def max_pool3d_vjp(x: Any, cotangent: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
                 padding: IntOrTuple = 0, *, ties: str = "split", out: Optional[np.ndarray] = None,
                 ceil_mode: bool = False) -> np.ndarray:
    """The gradient of max_pool3d with respect to x for `cotangent` (the vector-Jacobian
    product), as mx.vjp of mlx.nn.MaxPool3d gives it.
    With `ties="split"` (MLX's rule): a window's cotangent is split evenly among the
    positions equal to its maximum (padding included, its shares dropped), a NaN maximum gives NaN
    to the whole window; `ties="first"` (PyTorch's): all of it to the first maximum in scan order.

    Args:
        x: the forward input, array-like of shape (N, D, H, W, C), floating point (float32, float64,
            float16, bfloat16); strided views are read in place.
        cotangent: array-like of the forward output's shape and x's dtype.
        kernel_size, stride, padding, ceil_mode: as for max_pool3d.
        ties: "split" (MLX, the default) or "first" (PyTorch); max only.
        out: optional writeable C-contiguous numpy array of x's shape and dtype to fill.

    Returns:
        A numpy array (`out` when given) of x's shape and dtype. Sums run in float32 (float64
        for float64) and are rounded once.

    Raises:
        tidepool.InvalidArgumentError (a ValueError): invalid arguments, an integer x, a
            cotangent of another shape or dtype, or out.
        tidepool.OutOfMemoryError (a MemoryError): the engine's scratch could not be allocated.
    """
    return pool_vjp(_lib.TP_POOL_MAX, 3, "max_pool3d_vjp", x, cotangent, kernel_size, stride, padding, ties, out, ceil_mode=ceil_mode)


__all__ = [
    "avg_pool1d_vjp", "avg_pool2d_vjp", "avg_pool3d_vjp", "max_pool1d_vjp", "max_pool2d_vjp", "max_pool3d_vjp",
]
