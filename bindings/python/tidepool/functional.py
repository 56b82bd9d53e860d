"""The functional forms, avg_pool1d ... max_pool3d, and the array plumbing they share with
the nn classes and the Client: numpy in, numpy out, strided views passed to the library
without a copy."""

from __future__ import annotations

import ctypes
import numbers
import sys
from typing import Any, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from . import _lib
from ._native import check, lib
from .errors import Error, InvalidArgumentError

#: An int for every spatial axis, or a tuple with one int per axis.
IntOrTuple = Union[int, Sequence[int]]

_DTYPE_CODES = {
    np.dtype(np.float32): _lib.TP_DTYPE_FLOAT32,
    np.dtype(np.float64): _lib.TP_DTYPE_FLOAT64,
    np.dtype(np.float16): _lib.TP_DTYPE_FLOAT16,
    np.dtype(np.int8): _lib.TP_DTYPE_INT8,
    np.dtype(np.int16): _lib.TP_DTYPE_INT16,
    np.dtype(np.int32): _lib.TP_DTYPE_INT32,
    np.dtype(np.int64): _lib.TP_DTYPE_INT64,
    np.dtype(np.uint8): _lib.TP_DTYPE_UINT8,
    np.dtype(np.uint16): _lib.TP_DTYPE_UINT16,
    np.dtype(np.uint32): _lib.TP_DTYPE_UINT32,
    np.dtype(np.uint64): _lib.TP_DTYPE_UINT64,
}
_DTYPES_BY_CODE = {code: dtype for dtype, code in _DTYPE_CODES.items()}


def bfloat16_dtype(load: bool = True) -> Optional[np.dtype]:
    """ml_dtypes' bfloat16 (which joins the dtype tables the first time it is asked for), or
    None without the ml_dtypes package. ml_dtypes is imported here, when bfloat16 is first
    needed, not with tidepool: its import takes most of a second, and an array of its bfloat16
    cannot exist before it is imported. With `load=False` it is not imported: None unless
    something already did."""
    if not load and "ml_dtypes" not in sys.modules:
        return None
    try:
        import ml_dtypes
    except ImportError:  # bfloat16 support is optional
        return None
    dtype = np.dtype(ml_dtypes.bfloat16)
    if dtype not in _DTYPE_CODES:
        _DTYPE_CODES[dtype] = _lib.TP_DTYPE_BFLOAT16
        _DTYPES_BY_CODE[_lib.TP_DTYPE_BFLOAT16] = dtype
    return dtype


def supported_dtypes() -> Tuple[np.dtype, ...]:
    """Every dtype the engine takes: bfloat16 among them when ml_dtypes is installed."""
    bfloat16_dtype()
    return tuple(_DTYPE_CODES)


def __getattr__(name):
    if name == "SUPPORTED_DTYPES":  # computed when asked for: it may import ml_dtypes
        return supported_dtypes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

INT64_MAX = (1 << 63) - 1
INT32_MAX = (1 << 31) - 1


# ---- Arguments ------------------------------------------------------------------------


def _is_int(value):
    return isinstance(value, numbers.Integral)


def normalize_arguments(owner, spatial_dims, kernel_size, stride, padding):
    """MLX's constructor rules and messages: an int for every axis or a tuple with one int
    per axis; stride defaults to kernel_size; kernel and stride positive, padding >= 0."""
    plural = "integer" if spatial_dims == 1 else "integers"

    def as_tuple(name, value):
        if isinstance(value, (list, tuple)):
            if len(value) == spatial_dims and all(_is_int(v) for v in value):
                return tuple(int(v) for v in value)
        elif _is_int(value):
            return (int(value),) * spatial_dims
        raise InvalidArgumentError(
            f"[{owner}] '{name}' must be an integer or a tuple containing {spatial_dims} {plural}"
        )

    kernel_size = as_tuple("kernel_size", kernel_size)
    stride = kernel_size if stride is None else as_tuple("stride", stride)
    padding = as_tuple("padding", padding)
    for name, values in (("kernel_size", kernel_size), ("stride", stride)):
        if any(v <= 0 for v in values):
            raise InvalidArgumentError(f"[{owner}] '{name}' must be positive but got {values}.")
    if any(p < 0 for p in padding):
        raise InvalidArgumentError(f"[{owner}] 'padding' must be non-negative but got {padding}.")
    # ctypes would wrap a larger int silently into the C int64_t.
    for name, values in (("kernel_size", kernel_size), ("stride", stride), ("padding", padding)):
        if any(v > INT64_MAX for v in values):
            raise InvalidArgumentError(f"[{owner}] '{name}' must be below 2**63 but got {values}.")
    return kernel_size, stride, padding


def pool_flags(owner, kind, ceil_mode=False, count_include_pad=True):
    """PyTorch's options as tp_pool_desc flags (0: MLX's rules). Each must be a bool (or
    0/1); count_include_pad=False is for averages."""

    def as_bool(name, value):
        if isinstance(value, (bool, np.bool_)) or (_is_int(value) and value in (0, 1)):
            return bool(value)
        raise InvalidArgumentError(f"[{owner}] '{name}' must be True or False but got {value!r}")

    ceil_mode = as_bool("ceil_mode", ceil_mode)
    count_include_pad = as_bool("count_include_pad", count_include_pad)
    if kind == _lib.TP_POOL_MAX and not count_include_pad:
        raise InvalidArgumentError(f"[{owner}] count_include_pad=False applies to average pooling only")
    return (_lib.TP_POOL_CEIL_MODE if ceil_mode else 0) | (0 if count_include_pad else _lib.TP_POOL_EXCLUDE_PADDING)


def _descriptor(owner, kind, kernel_size, stride, padding, flags=0):
    n = len(kernel_size)
    arrays = [(ctypes.c_int64 * n)(*values) for values in (kernel_size, stride, padding)]
    desc = _lib.tp_pool_desc()
    check(lib.tp_pool_desc_init(ctypes.byref(desc), kind, n, *arrays), f"[{owner}]")
    desc.flags = flags
    return desc


# ---- Arrays ---------------------------------------------------------------------------


def _is_mlx_bfloat16(x):
    return type(x).__module__.startswith("mlx") and str(getattr(x, "dtype", "")).endswith("bfloat16")


def as_numpy(x, owner):
    """Anything numpy.asarray accepts, plus MLX bfloat16 arrays (which numpy cannot read
    directly: they go through their uint16 bits into ml_dtypes' bfloat16)."""
    if _is_mlx_bfloat16(x):
        bfloat16 = bfloat16_dtype()
        if bfloat16 is None:
            raise InvalidArgumentError(f"[{owner}] bfloat16 input needs the ml_dtypes package (pip install ml_dtypes)")
        import mlx.core as mx

        return np.asarray(x.view(mx.uint16)).view(bfloat16)
    try:
        return np.asarray(x)
    except Exception as error:  # numpy raises several types for unconvertible input
        raise InvalidArgumentError(f"[{owner}] input cannot be converted to an array: {error}") from error


def layer_input(x, spatial_dims, owner, name="input"):
    """`x` as numpy (`as_numpy`), checked to have the layer's rank (batch, spatial axes, channels)."""
    array = as_numpy(x, owner)
    if array.ndim != spatial_dims + 2:
        raise InvalidArgumentError(
            f"[{owner}] {name} must have {spatial_dims + 2} dimensions {LAYOUTS[spatial_dims]} but has {array.ndim} "
            f"with shape {array.shape}"
        )
    return array


def _engine_view(array, owner):
    """The array as the engine reads it: a supported dtype in native byte order, with
    element strides at aligned addresses. Views that already are (the usual case,
    transposed and sliced ones included) are passed as they are, without a copy."""
    dtype = array.dtype
    if dtype == np.bool_:
        return array.view(np.uint8)  # max of booleans is max of their 0/1 bytes
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
        dtype = array.dtype
    if dtype not in _DTYPE_CODES and dtype.name == "bfloat16":
        bfloat16_dtype(load=False)  # joins the tables if it is ml_dtypes' (then already imported)
    if dtype not in _DTYPE_CODES:
        supported = ", ".join(sorted(str(d) for d in supported_dtypes()))
        hint = "" if bfloat16_dtype() is not None else " (bfloat16 needs ml_dtypes)"
        raise InvalidArgumentError(f"[{owner}] dtype {dtype} is not supported; supported: {supported}{hint}")
    itemsize = dtype.itemsize
    if any(s % itemsize for s in array.strides) or array.ctypes.data % itemsize:
        array = array.copy(order="C")  # byte strides or an address the C ABI cannot express
    return array


def _tensor(array):
    tensor = _lib.tp_tensor()
    tensor.struct_size = ctypes.sizeof(_lib.tp_tensor)
    tensor.data = array.ctypes.data
    tensor.dtype = _DTYPE_CODES[array.dtype]
    tensor.rank = array.ndim
    if array.ndim > _lib.TP_MAX_RANK:
        raise InvalidArgumentError(f"input has {array.ndim} dimensions; at most {_lib.TP_MAX_RANK} are supported")
    for axis in range(array.ndim):
        tensor.shape[axis] = array.shape[axis]
        tensor.strides[axis] = array.strides[axis] // array.itemsize
    return tensor


class Backend(Protocol):
    """Where `pool` runs: in this process (`InProcess`) or on a daemon (a Client's)."""

    def empty(self, shape: Tuple[int, ...], dtype: np.dtype, source: np.ndarray) -> np.ndarray: ...

    def run(self, desc: _lib.tp_pool_desc, input_tensor: _lib.tp_tensor, output_tensor: _lib.tp_tensor,
            owner: str) -> None: ...

    def run_backward(self, desc: _lib.tp_pool_desc, input_tensor: _lib.tp_tensor, grad_output: _lib.tp_tensor,
                     grad_input: _lib.tp_tensor, options: _lib.tp_backward_options, owner: str) -> None: ...


class InProcess:
    """Runs pooling in this process through tp_pool. The remote Client is the other backend."""

    def empty(self, shape, dtype, source):
        return np.empty(shape, dtype=dtype)

    def run(self, desc, input_tensor, output_tensor, owner):
        # ctypes.CDLL releases the GIL for the duration of the call.
        check(lib.tp_pool(ctypes.byref(desc), ctypes.byref(input_tensor), ctypes.byref(output_tensor)), f"[{owner}]")

    def run_backward(self, desc, input_tensor, grad_output, grad_input, options, owner):
        check(lib.tp_pool_backward(ctypes.byref(desc), ctypes.byref(input_tensor), ctypes.byref(grad_output),
                                   ctypes.byref(grad_input), ctypes.byref(options)), f"[{owner}]")


IN_PROCESS = InProcess()

LAYOUTS = {1: "(N, L, C)", 2: "(N, H, W, C)", 3: "(N, D, H, W, C)"}


def pool(kind: int, spatial_dims: int, owner: str, x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
         padding: IntOrTuple = 0, out: Optional[np.ndarray] = None, backend: Backend = IN_PROCESS, flags: int = 0) -> np.ndarray:
    """Pool `x` (channels-last, batch first) and return a new numpy array, or fill `out`.
    `flags`: PyTorch's options (`pool_flags`)."""
    kernel_size, stride, padding = normalize_arguments(owner, spatial_dims, kernel_size, stride, padding)
    source = layer_input(x, spatial_dims, owner)
    is_bool = source.dtype == np.bool_
    array = _engine_view(source, owner)
    desc = _descriptor(owner, kind, kernel_size, stride, padding, flags)
    input_tensor = _tensor(array)
    output_tensor = _output_tensor(desc, input_tensor, owner)
    shape = tuple(output_tensor.shape[axis] for axis in range(output_tensor.rank))
    dtype = _DTYPES_BY_CODE[output_tensor.dtype]
    result_dtype = np.dtype(np.bool_) if is_bool and kind == _lib.TP_POOL_MAX else dtype
    result = backend.empty(shape, result_dtype, array) if out is None else _check_out(out, shape, result_dtype, owner)
    output_tensor.data = result.ctypes.data
    engine_output = result.view(np.uint8) if result.dtype == np.bool_ else result
    output_tensor.dtype = _DTYPE_CODES[engine_output.dtype]
    backend.run(desc, input_tensor, output_tensor, owner)
    return result


def _output_tensor(desc, input_tensor, owner):
    """The output's tensor (shape, dtype; no data) as tp_pool_output describes it."""
    output_tensor = _lib.tp_tensor()
    check(lib.tp_pool_output(ctypes.byref(desc), ctypes.byref(input_tensor), ctypes.byref(output_tensor)), f"[{owner}]")
    return output_tensor


def output_description(kind: int, spatial_dims: int, owner: str, shape: Tuple[int, ...], dtype: Any,
                       kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
                       flags: int = 0) -> Tuple[Tuple[int, ...], np.dtype]:
    """The shape and dtype of pooling an array of `shape` and `dtype`, as the library computes
    them, with the checks and errors of pooling one (a stand-in of zero strides is checked:
    nothing of that size is allocated)."""
    kernel_size, stride, padding = normalize_arguments(owner, spatial_dims, kernel_size, stride, padding)
    stand_in = np.broadcast_to(np.zeros((), dtype), tuple(shape))
    array = _engine_view(layer_input(stand_in, spatial_dims, owner), owner)
    output = _output_tensor(_descriptor(owner, kind, kernel_size, stride, padding, flags), _tensor(array), owner)
    result_dtype = _DTYPES_BY_CODE[output.dtype]
    if stand_in.dtype == np.bool_ and kind == _lib.TP_POOL_MAX:
        result_dtype = np.dtype(np.bool_)
    return tuple(output.shape[axis] for axis in range(output.rank)), result_dtype


_char_at = ctypes.c_char.from_buffer
# Unsigned integers of each item size: a view of one of them has the array's data and a
# buffer format, which ml_dtypes' bfloat16 lacks.
_SAME_SIZE_VIEWS = {size: np.dtype(f"u{size}") for size in (1, 2, 4, 8)}


def _address(array):
    """The address of a non-empty array's data: through ctypes' buffer view where numpy
    exports one (C-contiguous, writeable), a third of `ndarray.ctypes.data`'s cost. Dtypes
    that are not numpy's own (ml_dtypes' bfloat16) go through a same-size integer view:
    still under half of `ctypes.data`'s cost, which added about 1 us to a small bfloat16
    call (input and output)."""
    if array.flags.c_contiguous and array.flags.writeable:
        if array.dtype.isbuiltin != 1:
            view = _SAME_SIZE_VIEWS.get(array.itemsize)
            if view is None:
                return array.ctypes.data
            array = array.view(view)
        return ctypes.addressof(_char_at(array))
    return array.ctypes.data


class Plan:
    """One pooling (kind, rank, kernel_size, stride, padding, flags) checked and described once, and
    the tensors of each (shape, strides, dtype) of numpy array it has pooled (up to 16): such
    an array goes straight to tp_pool with copies of those tensors, into a new array or a
    writeable C-contiguous `out` of the output's shape and dtype (threads may share a plan;
    the library still checks every call). Anything else, and the first call of each, goes
    through `pool`. Used by the layer classes and the functional forms."""

    MAX_KEPT = 16

    def __init__(self, kind, spatial_dims, owner, kernel_size, stride, padding, flags=0):
        self.kind, self.spatial_dims, self.owner, self.flags = kind, spatial_dims, owner, flags
        self.kernel_size, self.stride, self.padding = normalize_arguments(owner, spatial_dims, kernel_size, stride, padding)
        self.desc = _descriptor(owner, kind, self.kernel_size, self.stride, self.padding, flags)
        self.kept = {}

    def __call__(self, x, out=None):
        if type(x) is np.ndarray:
            kept = self.kept.get((x.shape, x.strides, x.dtype))
            address = None if kept is None else _address(x)
            if address is not None and address % x.itemsize == 0:
                shape, dtype, input_bytes, output_bytes = kept
                if out is None:
                    result = np.empty(shape, dtype)
                elif (type(out) is np.ndarray and out.shape == shape and out.dtype == dtype and out.flags.c_contiguous
                        and out.flags.writeable):
                    # An `out` the checked path would take (the library refuses one that
                    # overlaps the input); anything else goes there for its error.
                    result = out
                else:
                    result = None
                if result is not None:
                    source = _lib.tp_tensor.from_buffer_copy(input_bytes)
                    target = _lib.tp_tensor.from_buffer_copy(output_bytes)
                    source.data = address
                    target.data = _address(result)
                    status = lib.tp_pool(self.desc, source, target)
                    if status:
                        check(status, f"[{self.owner}]")
                    return result
        result = pool(self.kind, self.spatial_dims, self.owner, x, self.kernel_size, self.stride, self.padding, out,
                      flags=self.flags)
        if type(x) is np.ndarray:
            # `out`, once checked, is described as a new result would be (C-contiguous, the
            # output's shape and dtype).
            self._keep(x, result)
        return result

    def _keep(self, x, result):
        """Keeps the tensors of a call that `pool` took as it is (a supported dtype in native
        order, whole-element strides: no copy, no change of dtype) and that has elements."""
        dtype = x.dtype
        if dtype not in _DTYPE_CODES or not dtype.isnative or any(s % dtype.itemsize for s in x.strides):
            return
        if x.size == 0 or result.size == 0:  # no address to take (and nothing to gain)
            return
        if len(self.kept) >= self.MAX_KEPT:
            self.kept.clear()
        self.kept[(x.shape, x.strides, dtype)] = (result.shape, result.dtype, bytes(_tensor(x)), bytes(_tensor(result)))


_FUNCTION_PLANS = {}


def _is_plain(value):
    """An int, or a tuple of ints, exactly: such arguments key a kept plan (2.0 == 2, and a
    float must still be refused by the checks)."""
    return type(value) is int or (type(value) is tuple and all(type(v) is int for v in value))


def _planned(kind, spatial_dims, owner, x, kernel_size, stride, padding, out, ceil_mode=False, count_include_pad=True):
    """A functional form's call through a kept `Plan` for its arguments where they are plain
    ints (up to 64 argument sets), through `pool` otherwise."""
    flags = pool_flags(owner, kind, ceil_mode, count_include_pad)
    if not (_is_plain(kernel_size) and (stride is None or _is_plain(stride)) and _is_plain(padding)):
        return pool(kind, spatial_dims, owner, x, kernel_size, stride, padding, out, flags=flags)
    key = (kind, spatial_dims, kernel_size, stride, padding, flags)
    plan = _FUNCTION_PLANS.get(key)
    if plan is None:
        plan = Plan(kind, spatial_dims, owner, kernel_size, stride, padding, flags)
        if len(_FUNCTION_PLANS) >= 64:
            _FUNCTION_PLANS.clear()
        _FUNCTION_PLANS[key] = plan
    return plan(x, out)


def _check_out(out, shape, dtype, owner):
    if not isinstance(out, np.ndarray):
        raise InvalidArgumentError(f"[{owner}] out must be a numpy array but is {type(out).__name__}")
    if out.shape != shape or out.dtype != dtype:
        raise InvalidArgumentError(f"[{owner}] out must have shape {shape} and dtype {dtype} but has {out.shape} {out.dtype}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise InvalidArgumentError(f"[{owner}] out must be a writeable C-contiguous array")
    return out


# ---- Public functions --------------------------------------------------------------------

def avg_pool1d(x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
               ceil_mode: bool = False, count_include_pad: bool = True, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """1-d average pooling of a channels-last array, exactly as mlx.nn.AvgPool1d.

    Args:
        x: array-like of shape (N, L, C): numpy and MLX arrays, lists; strided views are
            read in place.
        kernel_size: int or tuple of 1 ints, the window.
        stride: int or tuple of 1 ints; defaults to kernel_size.
        padding: int or tuple of 1 ints: zeros on both sides of each axis, counted in the average.
        ceil_mode: PyTorch's: output lengths rounded up, keeping a last window that reaches
            past the padding (it starts inside the input or its left padding). Default False
            (MLX's floor rule).
        count_include_pad: PyTorch's: True (the default, MLX's rule) divides by the window's
            positions inside the padded input; False by those inside the input.
        out: optional writeable C-contiguous numpy array of the output's shape and dtype
            to fill instead of allocating.

    Returns:
        A numpy array (`out` when given) of shape (N, L, C) pooled; floats keep their dtype; integers and bool give float32.

    Raises:
        tidepool.InvalidArgumentError (a ValueError): invalid arguments, input or out.
        tidepool.OutOfMemoryError (a MemoryError): the engine's scratch could not be allocated.
    """
    return _planned(_lib.TP_POOL_AVG, 1, "avg_pool1d", x, kernel_size, stride, padding, out, ceil_mode, count_include_pad)


def avg_pool2d(x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
               ceil_mode: bool = False, count_include_pad: bool = True, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """2-d average pooling of a channels-last array, exactly as mlx.nn.AvgPool2d.

    Args:
        x: array-like of shape (N, H, W, C): numpy and MLX arrays, lists; strided views are
            read in place.
        kernel_size: int or tuple of 2 ints, the window.
        stride: int or tuple of 2 ints; defaults to kernel_size.
        padding: int or tuple of 2 ints: zeros on both sides of each axis, counted in the average.
        ceil_mode: PyTorch's: output lengths rounded up, keeping a last window that reaches
            past the padding (it starts inside the input or its left padding). Default False
            (MLX's floor rule).
        count_include_pad: PyTorch's: True (the default, MLX's rule) divides by the window's
            positions inside the padded input; False by those inside the input.
        out: optional writeable C-contiguous numpy array of the output's shape and dtype
            to fill instead of allocating.

    Returns:
        A numpy array (`out` when given) of shape (N, H, W, C) pooled; floats keep their dtype; integers and bool give float32.

    Raises:
        tidepool.InvalidArgumentError (a ValueError): invalid arguments, input or out.
        tidepool.OutOfMemoryError (a MemoryError): the engine's scratch could not be allocated.
    """
    return _planned(_lib.TP_POOL_AVG, 2, "avg_pool2d", x, kernel_size, stride, padding, out, ceil_mode, count_include_pad)


def avg_pool3d(x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
               ceil_mode: bool = False, count_include_pad: bool = True, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """3-d average pooling of a channels-last array, exactly as mlx.nn.AvgPool3d.

    Args:
        x: array-like of shape (N, D, H, W, C): numpy and MLX arrays, lists; strided views are
            read in place.
        kernel_size: int or tuple of 3 ints, the window.
        stride: int or tuple of 3 ints; defaults to kernel_size.
        padding: int or tuple of 3 ints: zeros on both sides of each axis, counted in the average.
        ceil_mode: PyTorch's: output lengths rounded up, keeping a last window that reaches
            past the padding (it starts inside the input or its left padding). Default False
            (MLX's floor rule).
        count_include_pad: PyTorch's: True (the default, MLX's rule) divides by the window's
            positions inside the padded input; False by those inside the input.
        out: optional writeable C-contiguous numpy array of the output's shape and dtype
            to fill instead of allocating.

    Returns:
        A numpy array (`out` when given) of shape (N, D, H, W, C) pooled; floats keep their dtype; integers and bool give float32.

    Raises:
        tidepool.InvalidArgumentError (a ValueError): invalid arguments, input or out.
        tidepool.OutOfMemoryError (a MemoryError): the engine's scratch could not be allocated.
    """
    return _planned(_lib.TP_POOL_AVG, 3, "avg_pool3d", x, kernel_size, stride, padding, out, ceil_mode, count_include_pad)


def max_pool1d(x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
               ceil_mode: bool = False, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """1-d max pooling of a channels-last array, exactly as mlx.nn.MaxPool1d.

    Args:
        x: array-like of shape (N, L, C): numpy and MLX arrays, lists; strided views are
            read in place.
        kernel_size: int or tuple of 1 ints, the window.
        stride: int or tuple of 1 ints; defaults to kernel_size.
        padding: int or tuple of 1 ints: -inf (integers: their lowest value) on both sides of each axis.
        ceil_mode: PyTorch's: output lengths rounded up, keeping a last window that reaches
            past the padding (it starts inside the input or its left padding). Default False
            (MLX's floor rule).
        out: optional writeable C-contiguous numpy array of the output's shape and dtype
            to fill instead of allocating.

    Returns:
        A numpy array (`out` when given) of shape (N, L, C) pooled; the dtype of x.

    Raises:
        tidepool.InvalidArgumentError (a ValueError): invalid arguments, input or out.
        tidepool.OutOfMemoryError (a MemoryError): the engine's scratch could not be allocated.
    """
    return _planned(_lib.TP_POOL_MAX, 1, "max_pool1d", x, kernel_size, stride, padding, out, ceil_mode)


def max_pool2d(x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
               ceil_mode: bool = False, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """2-d max pooling of a channels-last array, exactly as mlx.nn.MaxPool2d.

    Args:
        x: array-like of shape (N, H, W, C): numpy and MLX arrays, lists; strided views are
            read in place.
        kernel_size: int or tuple of 2 ints, the window.
        stride: int or tuple of 2 ints; defaults to kernel_size.
        padding: int or tuple of 2 ints: -inf (integers: their lowest value) on both sides of each axis.
        ceil_mode: PyTorch's: output lengths rounded up, keeping a last window that reaches
            past the padding (it starts inside the input or its left padding). Default False
            (MLX's floor rule).
        out: optional writeable C-contiguous numpy array of the output's shape and dtype
            to fill instead of allocating.

    Returns:
        A numpy array (`out` when given) of shape (N, H, W, C) pooled; the dtype of x.

    Raises:
        tidepool.InvalidArgumentError (a ValueError): invalid arguments, input or out.
        tidepool.OutOfMemoryError (a MemoryError): the engine's scratch could not be allocated.
    """
    return _planned(_lib.TP_POOL_MAX, 2, "max_pool2d", x, kernel_size, stride, padding, out, ceil_mode)


def max_pool3d(x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
               ceil_mode: bool = False, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """3-d max pooling of a channels-last array, exactly as mlx.nn.MaxPool3d.

    Args:
        x: array-like of shape (N, D, H, W, C): numpy and MLX arrays, lists; strided views are
            read in place.
        kernel_size: int or tuple of 3 ints, the window.
        stride: int or tuple of 3 ints; defaults to kernel_size.
        padding: int or tuple of 3 ints: -inf (integers: their lowest value) on both sides of each axis.
        ceil_mode: PyTorch's: output lengths rounded up, keeping a last window that reaches
            past the padding (it starts inside the input or its left padding). Default False
            (MLX's floor rule).
        out: optional writeable C-contiguous numpy array of the output's shape and dtype
            to fill instead of allocating.

    Returns:
        A numpy array (`out` when given) of shape (N, D, H, W, C) pooled; the dtype of x.

    Raises:
        tidepool.InvalidArgumentError (a ValueError): invalid arguments, input or out.
        tidepool.OutOfMemoryError (a MemoryError): the engine's scratch could not be allocated.
    """
    return _planned(_lib.TP_POOL_MAX, 3, "max_pool3d", x, kernel_size, stride, padding, out, ceil_mode)


def set_num_threads(num_threads: int) -> None:
    """Threads used by later in-process calls, process-wide; 0 means one per CPU (the default)."""
    if not _is_int(num_threads):
        raise InvalidArgumentError(f"num_threads must be an integer but is {num_threads!r}")
    if not -INT32_MAX <= num_threads <= INT32_MAX:  # ctypes would wrap it into the C int32_t
        raise InvalidArgumentError(f"thread count must be between 0 (all CPUs) and 1024 but got {num_threads}")
    check(lib.tp_set_num_threads(int(num_threads)))


def get_num_threads() -> int:
    """Threads in-process calls use (one per CPU unless set_num_threads chose otherwise)."""
    return lib.tp_get_num_threads()


__all__ = [
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
    "set_num_threads", "get_num_threads", "Error", "IntOrTuple",
]
