"""PyTorch functions whose forward and backward passes run in Tidepool: avg_pool1d ...
max_pool3d as `torch.autograd.Function`s on channels-last CPU tensors ((N, L, C), (N, H, W, C),
(N, D, H, W, C); from PyTorch's (N, C, ...) take `x.movedim(1, -1)`, a view). Tensors and numpy
arrays share memory both ways: inputs are read in place, outputs are wrapped without a copy.
MLX's semantics (padding counted in averages, -inf padding for max); `ties="first"` gives
PyTorch's max gradient. Requires `torch`."""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
import torch

from . import functional, gradients
from .errors import InvalidArgumentError
from .functional import IntOrTuple


def _numpy(tensor: torch.Tensor, owner: str) -> np.ndarray:
    if tensor.device.type != "cpu":
        raise InvalidArgumentError(f"[{owner}] tensors must be on the CPU but one is on {tensor.device}")
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        bfloat16 = functional.bfloat16_dtype()
        if bfloat16 is None:
            raise InvalidArgumentError(f"[{owner}] bfloat16 tensors need the ml_dtypes package")
        return tensor.view(torch.int16).numpy().view(bfloat16)
    return tensor.numpy()


def _tensor(array: np.ndarray) -> torch.Tensor:
    bfloat16 = functional.bfloat16_dtype(load=False)  # an array of it means ml_dtypes is loaded
    if bfloat16 is not None and array.dtype == bfloat16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


class _Pool(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, name: str, kernel_size: Any, stride: Any, padding: Any, ties: str,
                options: Dict[str, bool]) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.arguments = (name, kernel_size, stride, padding, ties, options)
        return _tensor(getattr(functional, name)(_numpy(x, name), kernel_size, stride, padding, **options))

    @staticmethod
    def backward(ctx: Any, cotangent: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        name, kernel_size, stride, padding, ties, options = ctx.arguments
        backward = getattr(gradients, f"{name}_vjp")
        grad = backward(_numpy(x, name), _numpy(cotangent, name), kernel_size, stride, padding, ties=ties, **options)
        return _tensor(grad), None, None, None, None, None, None


def _apply(name: str, x: torch.Tensor, kernel_size: IntOrTuple, stride: Optional[IntOrTuple], padding: IntOrTuple,
           ties: str, **options: bool) -> torch.Tensor:
    if ties not in gradients.TIES:
        raise InvalidArgumentError(f"[{name}] ties must be 'split' (MLX) or 'first' (PyTorch) but got {ties!r}")
    return _Pool.apply(x, name, kernel_size, stride, padding, ties, options)


def avg_pool1d(x: torch.Tensor, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True) -> torch.Tensor:
    """tidepool.avg_pool1d on an (N, L, C) tensor, differentiable; ceil_mode and
    count_include_pad as torch.nn.functional.avg_pool1d's."""
    return _apply("avg_pool1d", x, kernel_size, stride, padding, "split", ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad)


def avg_pool2d(x: torch.Tensor, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True) -> torch.Tensor:
    """tidepool.avg_pool2d on an (N, H, W, C) tensor, differentiable; ceil_mode and
    count_include_pad as torch.nn.functional.avg_pool2d's."""
    return _apply("avg_pool2d", x, kernel_size, stride, padding, "split", ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad)


def avg_pool3d(x: torch.Tensor, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True) -> torch.Tensor:
    """tidepool.avg_pool3d on an (N, D, H, W, C) tensor, differentiable; ceil_mode and
    count_include_pad as torch.nn.functional.avg_pool3d's."""
    return _apply("avg_pool3d", x, kernel_size, stride, padding, "split", ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad)


def max_pool1d(x: torch.Tensor, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
               ceil_mode: bool = False, *, ties: str = "split") -> torch.Tensor:
    """tidepool.max_pool1d on an (N, L, C) tensor, differentiable; ties="first" is PyTorch's gradient."""
    return _apply("max_pool1d", x, kernel_size, stride, padding, ties, ceil_mode=ceil_mode)


def max_pool2d(x: torch.Tensor, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
               ceil_mode: bool = False, *, ties: str = "split") -> torch.Tensor:
    """tidepool.max_pool2d on an (N, H, W, C) tensor, differentiable; ties="first" is PyTorch's gradient."""
    return _apply("max_pool2d", x, kernel_size, stride, padding, ties, ceil_mode=ceil_mode)


def max_pool3d(x: torch.Tensor, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
               ceil_mode: bool = False, *, ties: str = "split") -> torch.Tensor:
    """tidepool.max_pool3d on an (N, D, H, W, C) tensor, differentiable; ties="first" is PyTorch's gradient."""
    return _apply("max_pool3d", x, kernel_size, stride, padding, ties, ceil_mode=ceil_mode)


__all__ = ["avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d"]
