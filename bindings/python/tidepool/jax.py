"""JAX functions whose forward and backward passes run in Tidepool: avg_pool1d ... max_pool3d
on channels-last arrays ((N, L, C), (N, H, W, C), (N, D, H, W, C)), differentiable through
`jax.custom_vjp` and usable under `jax.jit`, `jax.grad`, `jax.vjp` and `jax.vmap`. Both passes
are host callbacks (`jax.pure_callback`), so they run on CPU arrays; JAX hands the callback
numpy views of its buffers (no copy in) and copies the result into its own buffer.
MLX's semantics (padding counted in averages, -inf padding for max, tied maxima share the
gradient); `ties="first"` gives PyTorch's max gradient. Requires `jax`."""

from __future__ import annotations

from functools import partial
from typing import Any, Optional, Tuple

import jax
import numpy as np

from . import functional, gradients
from .errors import InvalidArgumentError
from .functional import IntOrTuple

_SPATIAL = {"avg_pool1d": 1, "avg_pool2d": 2, "avg_pool3d": 3, "max_pool1d": 1, "max_pool2d": 2, "max_pool3d": 3}


def _folded(function, spatial_dims: int, *arrays: np.ndarray) -> np.ndarray:
    """Runs `function` on arrays whose leading axes beyond N (added by jax.vmap) are folded
    into N: pooling treats every batch element alike, so one call serves the whole vmap."""
    rank = spatial_dims + 2
    lead = arrays[0].shape[:arrays[0].ndim - rank + 1]
    result = function(*(np.reshape(a, (-1,) + a.shape[a.ndim - rank + 1:]) for a in arrays))
    return result.reshape(lead + result.shape[1:])


def _output_spec(name: str, x: Any, arguments: Tuple) -> jax.ShapeDtypeStruct:
    """The output's shape and dtype, found (and every argument checked, with the engine's own
    messages) by pooling an empty batch of x's shape at trace time."""
    d = _SPATIAL[name]
    shape = tuple(x.shape)
    if len(shape) != d + 2:
        functional.layer_input(np.broadcast_to(np.empty((), x.dtype), shape), d, name)  # raises the usual rank error
    probe = getattr(functional, name)(np.empty((0,) + shape[-(d + 1):], x.dtype), *arguments)
    return jax.ShapeDtypeStruct(shape[:len(shape) - d - 1] + probe.shape[1:], probe.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _pool(x: Any, name: str, arguments: Tuple, ties: str) -> Any:
    forward = getattr(functional, name)
    return jax.pure_callback(lambda a: _folded(lambda v: forward(v, *arguments), _SPATIAL[name], a),
                             _output_spec(name, x, arguments), x, vmap_method="broadcast_all")


def _pool_forward(x, name, arguments, ties):
    return _pool(x, name, arguments, ties), x


def _pool_backward(name, arguments, ties, x, cotangent):
    backward = getattr(gradients, f"{name}_vjp")
    grad = jax.pure_callback(
        lambda a, g: _folded(lambda v, c: backward(v, c, *arguments, ties=ties), _SPATIAL[name], a, g),
        jax.ShapeDtypeStruct(x.shape, x.dtype), x, cotangent, vmap_method="broadcast_all")
    return (grad,)


_pool.defvjp(_pool_forward, _pool_backward)


def _apply(name: str, x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple], padding: IntOrTuple,
           ties: str) -> Any:
    if ties not in gradients.TIES:
        raise InvalidArgumentError(f"[{name}] ties must be 'split' (MLX) or 'first' (PyTorch) but got {ties!r}")
    # Static, hashable arguments (tuples), checked once here with MLX's messages.
    arguments = functional.normalize_arguments(name, _SPATIAL[name], kernel_size, stride, padding)
    return _pool(x, name, arguments, ties)


def avg_pool1d(x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0) -> Any:
    """tidepool.avg_pool1d on an (N, L, C) JAX array, differentiable."""
    return _apply("avg_pool1d", x, kernel_size, stride, padding, "split")


def avg_pool2d(x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0) -> Any:
    """tidepool.avg_pool2d on an (N, H, W, C) JAX array, differentiable."""
    return _apply("avg_pool2d", x, kernel_size, stride, padding, "split")


def avg_pool3d(x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0) -> Any:
    """tidepool.avg_pool3d on an (N, D, H, W, C) JAX array, differentiable."""
    return _apply("avg_pool3d", x, kernel_size, stride, padding, "split")


def max_pool1d(x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
               *, ties: str = "split") -> Any:
    """tidepool.max_pool1d on an (N, L, C) JAX array, differentiable; ties="first" is PyTorch's gradient."""
    return _apply("max_pool1d", x, kernel_size, stride, padding, ties)


def max_pool2d(x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
               *, ties: str = "split") -> Any:
    """tidepool.max_pool2d on an (N, H, W, C) JAX array, differentiable; ties="first" is PyTorch's gradient."""
    return _apply("max_pool2d", x, kernel_size, stride, padding, ties)


def max_pool3d(x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
               *, ties: str = "split") -> Any:
    """tidepool.max_pool3d on an (N, D, H, W, C) JAX array, differentiable; ties="first" is PyTorch's gradient."""
    return _apply("max_pool3d", x, kernel_size, stride, padding, ties)


__all__ = ["avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d"]
