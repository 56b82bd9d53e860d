"""MLX layers whose forward and backward passes run in Tidepool: AvgPool1d ... MaxPool3d as
`mlx.nn.Module`s, `mx.array` in and out, differentiated through `mx.custom_function` with a
VJP, so `mx.grad` and `nn.value_and_grad` give MLX's own gradients.

The arrays are read in place (numpy views of MLX's memory); results are copied into new MLX
arrays (MLX cannot adopt outside memory). Eager only: under `mx.compile` the inputs are
placeholders without data. Requires `mlx`."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import functional, gradients
from .errors import InvalidArgumentError
from .functional import IntOrTuple, as_numpy, normalize_arguments


def _to_mlx(array: np.ndarray) -> mx.array:
    bfloat16 = functional.bfloat16_dtype(load=False)  # an array of it means ml_dtypes is loaded
    if bfloat16 is not None and array.dtype == bfloat16:
        return mx.array(array.view(np.uint16)).view(mx.bfloat16)
    return mx.array(array)


class _Pool(nn.Module):
    _kind = ""
    _dims = 0

    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
                 ties: str = "split"):
        super().__init__()
        owner = type(self).__name__
        self.kernel_size, self.stride, self.padding = normalize_arguments(owner, self._dims, kernel_size, stride, padding)
        if ties not in gradients.TIES:
            raise InvalidArgumentError(f"[{owner}] ties must be 'split' (MLX) or 'first' (PyTorch) but got {ties!r}")
        self.ties = ties
        forward = getattr(functional, f"{self._kind}_pool{self._dims}d")
        backward = getattr(gradients, f"{self._kind}_pool{self._dims}d_vjp")
        arguments: Tuple[Any, ...] = (self.kernel_size, self.stride, self.padding)

        @mx.custom_function
        def pool(x):
            return _to_mlx(forward(as_numpy(x, owner), *arguments))

        @pool.vjp
        def pool_vjp(primals, cotangent, output):
            return (_to_mlx(backward(as_numpy(primals, owner), as_numpy(cotangent, owner), *arguments, ties=ties)),)

        self._pool = pool

    def __call__(self, x: mx.array) -> mx.array:
        return self._pool(x)

    def _extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool1d(_Pool):
    """mlx.nn.AvgPool1d on (N, L, C), forward and backward in Tidepool."""
    _kind, _dims = "avg", 1


class AvgPool2d(_Pool):
    """mlx.nn.AvgPool2d on (N, H, W, C), forward and backward in Tidepool."""
    _kind, _dims = "avg", 2


class AvgPool3d(_Pool):
    """mlx.nn.AvgPool3d on (N, D, H, W, C), forward and backward in Tidepool."""
    _kind, _dims = "avg", 3


class MaxPool1d(_Pool):
    """mlx.nn.MaxPool1d on (N, L, C), forward and backward in Tidepool (ties="first" for PyTorch's rule)."""
    _kind, _dims = "max", 1


class MaxPool2d(_Pool):
    """mlx.nn.MaxPool2d on (N, H, W, C), forward and backward in Tidepool (ties="first" for PyTorch's rule)."""
    _kind, _dims = "max", 2


class MaxPool3d(_Pool):
    """mlx.nn.MaxPool3d on (N, D, H, W, C), forward and backward in Tidepool (ties="first" for PyTorch's rule)."""
    _kind, _dims = "max", 3


__all__ = ["AvgPool1d", "AvgPool2d", "AvgPool3d", "MaxPool1d", "MaxPool2d", "MaxPool3d"]
