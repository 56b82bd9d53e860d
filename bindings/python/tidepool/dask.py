"""The six poolings on dask arrays, and multiscale pyramids of them.

`tidepool.dask.avg_pool3d(x, kernel_size, stride, padding, ceil_mode=False,
count_include_pad=True)` (and the other five) return a dask array of the values
`tidepool.avg_pool3d` gives for the whole (contiguous) array in memory, bit for bit, for any
chunking.

- The output is cut where the input is: output chunk i holds the windows that start in input
  chunk i (the window of output o starts at o * stride - padding; float averages of
  overlapping windows: from the next multiple of a period on, below). Its task reads that chunk and,
  where windows cross into the next chunks, only the slices of them the windows reach (the halo,
  kernel - stride wide along an axis where windows overlap), so neighbouring chunks exchange
  exactly what is needed and nothing moves twice.
- Where windows do not overlap (kernel <= stride), there is no padding and every chunk boundary
  is a multiple of the stride (a multiscale pyramid's 2 x 2 x 2 means of even chunks), each
  output chunk is made from its input chunk alone: one task per chunk, no halo.
- Chunk boundaries that are not multiples of the stride only make some tasks read a slice of a
  neighbour. Batch chunks are kept as they are.
- Float averages of overlapping windows: the engine adds a window's taps in an order set by
  where the window lies (its blocks of `kernel` positions and its pairs of outputs, counted from
  the padded start) and by its plan, chosen from the channel count (and, for 3-d 16-bit floats,
  the row length). So output chunks start at multiples of that order's period along each axis
  (`_alignment`; the halo reaches up to period - 1 strides further), and the channels (and
  there the width) are rechunked to one chunk, with a dask PerformanceWarning, when they were
  split. Max and integer sums give the same bits in any order: no change there.

Each task pools its block in this process's (or the dask worker's) libtidepool, so the compute
goes to where the chunk is; it works on the threaded scheduler and on dask.distributed.

`avg_pool3d_vjp(x, cotangent, kernel_size, ...)` (and the other five) give the gradient with
respect to `x`, chunked as `x`, bit-identical to `tidepool.avg_pool3d_vjp` in memory: each input
chunk's task reads the cotangents of the windows that hold its elements and the input those
windows cover (`_gradient_blocks`).

`pyramid(x, levels, factor=2)` returns the levels of a multiscale pyramid: each the mean over
`factor` along every spatial axis with ceil_mode=True and count_include_pad=False (an odd axis
keeps its last, partial window: no data is dropped), optionally written to Zarr with OME-NGFF
`multiscales` metadata.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import math
import operator
import warnings
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from . import _lib, functional, gradients
from .errors import InvalidArgumentError
from .functional import IntOrTuple, normalize_arguments, pool_flags

try:
    import dask.array as da
    from dask.array.core import PerformanceWarning
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("tidepool.dask needs dask: pip install 'dask[array]'") from error

_KINDS = {"avg": _lib.TP_POOL_AVG, "max": _lib.TP_POOL_MAX}


def _cumulative(chunks: Sequence[int]) -> List[int]:
    bounds = [0]
    for size in chunks:
        bounds.append(bounds[-1] + size)
    return bounds


class _AxisBlock:
    """One output chunk along one spatial axis: outputs [o0, o1), computed from input
    [begin, end) pooled with `padding` on this axis, keeping local outputs from `skip`."""

    __slots__ = ("o0", "o1", "begin", "end", "padding", "skip")

    def __init__(self, o0, o1, begin, end, padding, skip):
        self.o0, self.o1, self.begin, self.end, self.padding, self.skip = o0, o1, begin, end, padding, skip


def _axis_blocks(n: int, chunks: Sequence[int], k: int, s: int, p: int, length: int, period: int = 1) -> List[_AxisBlock]:
    """The output chunks of one spatial axis of `n` inputs chunked as `chunks`, windows of `k`
    taps at stride `s` with padding `p`, `length` outputs (the library's count, ceil_mode's
    included), and the input each needs.

    A window of output o covers [o * s - p, o * s - p + k). Pooling [begin, end) with padding q
    gives local window j at begin + j * s - q, counts positions outside [begin, end) as padding
    (zero, or never the max) and divides as for padding; so a block is exact when every window
    it keeps lies inside [begin, end) except where that boundary is the input's own edge. Three
    cases meet that: windows that start before the input's start read from 0 with the padding p
    (local j = global o); the last chunk reads to the input's end with the padding p, from
    begin = a * s with a <= o0 - ceil(p / s) (its first kept window then starts at or after
    begin: it never reaches the padding on the left); other chunks read their windows' span
    with no padding, from begin = a * s - p.

    Local output 0 is global output a, a multiple of `period` (`_alignment`), so the engine sees
    every kept window at the same place in its blocks and pairs as in the whole array (1: no
    alignment): output chunks start at multiples of the period (the first window starting in
    each input chunk, rounded up), so a block starts at its aligned output; only the last,
    which must not start a window at its input's start, moves back to one."""
    if length == 0:
        return []
    starts = _cumulative(chunks)[:-1]
    bounds = [0]
    for c in starts[1:]:
        o = max(0, -(-(c + p) // s))  # the first output whose window starts at or after c
        # (rounded up to the period: a block then starts at its aligned output and reads no
        # halo from the chunk before)
        o = min(length, -(-o // period) * period)
        if o > bounds[-1]:
            bounds.append(o)
    if bounds[-1] < length:
        bounds.append(length)
    blocks = []
    for o0, o1 in zip(bounds[:-1], bounds[1:]):
        a = o0 // period * period
        reach = (o1 - 1) * s - p + k
        if a * s - p <= 0:
            blocks.append(_AxisBlock(o0, o1, 0, min(n, reach), p, o0))
        elif reach > n or o1 == length:
            # Windows reaching the input's end: read to it, with the padding p on the right.
            # Aligned, no kept window starts at begin either: the engine clips its first block
            # of k positions there, and would fold a window starting at that clipped block's
            # start as a block's prefix where the whole array folds it tap by tap.
            a = (o0 - (p // s + 1 if period > 1 else -(-p // s))) // period * period
            begin = a * s
            whole = begin < 0 or begin >= n  # (windows wholly in wide padding: the whole axis)
            blocks.append(_AxisBlock(o0, o1, 0, n, p, o0) if whole else _AxisBlock(o0, o1, begin, n, p, o0 - a))
        else:
            blocks.append(_AxisBlock(o0, o1, a * s - p, reach, 0, o0 - a))
    # A block inside one chunk reads to that chunk's end: the chunk itself, not a slice of it,
    # goes to the task (positions past the kept windows are only read, never used).
    ends = _cumulative(chunks)[1:]
    for block in blocks:
        after = bisect.bisect_right(ends, block.begin)  # the chunk holding block.begin
        home = ends[after] if after < len(ends) else n
        if block.end <= home:
            block.end = home
    return blocks


def _alignment(k: int, s: int) -> int:
    """The period of the engine's fold order along an axis where windows of `k` taps at stride
    `s` overlap: block scans cut the axis into blocks of k positions aligned to the padded
    start (output o's window meets them alike for every o with o * s a multiple of k, every
    k / gcd(k, s) outputs), and full windows of stride 1 fold in pairs of outputs (even o
    first). A float average's bits depend on that order, so a block whose first computed
    output is a multiple of both periods folds every window as the whole array does."""
    if k <= s:
        return 1
    per_block = k // math.gcd(k, s)
    return per_block * 2 // math.gcd(per_block, 2)


def _pool_block(pieces, *, kind, spatial_dims, owner, kernel_size, stride, padding, flags, keep):
    """One output chunk: the input pieces (a nested list, one level per axis) joined, pooled
    and the kept outputs cut out."""
    result = functional.pool(kind, spatial_dims, owner, _joined(pieces, spatial_dims), kernel_size, stride, padding,
                             flags=flags)
    return result[keep]


def _joined(pieces, spatial_dims: int) -> np.ndarray:
    """The pieces of a block (a nested list, one level per axis) as one contiguous array:
    contiguous, as the whole array in memory is, since the engine's plan (and so a float sum's
    order) depends on whether rows are dense."""
    block = pieces
    for _ in range(spatial_dims + 2):
        if isinstance(block, list) and len(block) == 1:
            block = block[0]
        else:
            break
    if isinstance(block, list):
        block = np.block(pieces)
    return np.ascontiguousarray(block)


def _chunk_pieces(bounds: List[int], begin: int, end: int) -> List[Tuple[int, slice]]:
    """The input chunks (index, slice within the chunk) that [begin, end) covers, in order."""
    pieces = []
    for index in range(max(bisect.bisect_right(bounds, begin) - 1, 0), len(bounds) - 1):
        lo, hi = bounds[index], bounds[index + 1]
        if lo >= end:
            break
        a, b = max(lo, begin), min(hi, end)
        if a < b:
            pieces.append((index, slice(a - lo, b - lo)))
    if not pieces:
        # An empty span (an input axis of length 0): an empty slice of a chunk.
        pieces.append((0, slice(0, 0)))
    return pieces


def pool(kind: str, spatial_dims: int, x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
         padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True) -> "da.Array":
    """The pooling `kind` ("avg" or "max") of the dask array `x` over `spatial_dims` axes."""
    owner = f"{kind}_pool{spatial_dims}d"
    code = _KINDS[kind]
    flags = pool_flags(owner, code, ceil_mode, count_include_pad)
    if not isinstance(x, da.Array):
        x = da.asarray(x)
    k, s, p = normalize_arguments(owner, spatial_dims, kernel_size, stride, padding)
    if any(np.isnan(c) for chunks in x.chunks for c in chunks):
        raise InvalidArgumentError(f"[{owner}] the input's chunk sizes must be known (call x.compute_chunk_sizes())")
    shape, dtype = functional.output_description(code, spatial_dims, owner, x.shape, x.dtype, k, s, p, flags)
    # Float averages of overlapping windows: the engine's order of additions must be the whole
    # array's (see the module's doc); max and integer sums give the same bits in any order.
    ordered = kind == "avg" and np.dtype(x.dtype).kind not in "iu" and any(kk > ss for kk, ss in zip(k, s))
    if ordered:
        x = _whole_where_the_plan_needs_it(x, spatial_dims, owner)
    periods = [_alignment(k[a], s[a]) if ordered else 1 for a in range(spatial_dims)]
    axes = [_axis_blocks(x.shape[a + 1], x.chunks[a + 1], k[a], s[a], p[a], shape[a + 1], periods[a])
            for a in range(spatial_dims)]
    name = f"{owner}-tidepool-{tokenize(x, k, s, p, flags)}"
    out_chunks = (x.chunks[0],) + tuple(tuple(b.o1 - b.o0 for b in blocks) for blocks in axes) + (x.chunks[-1],)
    if any(len(c) == 0 for c in out_chunks) or 0 in shape:
        empty = np.empty(shape, dtype)
        return da.from_array(empty, chunks=tuple(c if len(c) else (0,) for c in out_chunks))
    bounds = [_cumulative(c) for c in x.chunks]
    # Each block's input chunks, found once per axis (not once per block of the other axes).
    axis_pieces = [[_chunk_pieces(bounds[a + 1], b.begin, b.end) for b in blocks] for a, blocks in enumerate(axes)]
    piece_name = f"{name}-halo"
    graph = {}
    for n_index, c_index in itertools.product(range(len(x.chunks[0])), range(len(x.chunks[-1]))):
        for out_index in itertools.product(*(range(len(blocks)) for blocks in axes)):
            chosen = [axes[a][i] for a, i in enumerate(out_index)]
            per_axis = [axis_pieces[a][i] for a, i in enumerate(out_index)]
            nested = _nested_pieces(graph, piece_name, x, bounds, n_index, c_index, out_index, per_axis)
            keep = (slice(None),) + tuple(slice(b.skip, b.skip + b.o1 - b.o0) for b in chosen) + (slice(None),)
            task = functools.partial(_pool_block, kind=code, spatial_dims=spatial_dims, owner=owner, kernel_size=k,
                                     stride=s, padding=tuple(b.padding for b in chosen), flags=flags, keep=keep)
            graph[(name, n_index, *out_index, c_index)] = (task, nested)
    layers = HighLevelGraph.from_collections(name, graph, dependencies=[x])
    return da.Array(layers, name, chunks=out_chunks, dtype=dtype, meta=np.empty((0,) * x.ndim, dtype))


def _whole_where_the_plan_needs_it(x: "da.Array", spatial_dims: int, owner: str) -> "da.Array":
    """`x` with one chunk along the axes whose length the engine's plan reads: the channels
    (their count picks how rows are reduced, and with it the order of additions) and, for
    3-d inputs of 16-bit floats, the width (such poolings may fold depth first, chosen from
    the length of a row). Says so with a dask PerformanceWarning where it rechunks."""
    whole = [x.ndim - 1] + ([x.ndim - 2] if spatial_dims == 3 and np.dtype(x.dtype).itemsize == 2 else [])
    split = [axis for axis in whole if len(x.chunks[axis]) > 1]
    if not split:
        return x
    names = " and ".join("channels" if axis == x.ndim - 1 else "width" for axis in split)
    warnings.warn(f"[{owner}] rechunking the {names} {'axes' if len(split) > 1 else 'axis'} to one chunk: a float average of overlapping windows is "
                  "bit-identical to the in-memory result only with the whole axis in each task", PerformanceWarning,
                  stacklevel=4)
    return x.rechunk({axis: -1 for axis in split})


def _nested_pieces(graph: dict, piece_name: str, x: "da.Array", bounds: List[List[int]], n_index: int, c_index: int,
                   task_index: Tuple[int, ...], per_axis: List[List[Tuple[int, slice]]]) -> list:
    """The keys of the pieces of `x` one task reads (a nested list, one level per axis, for
    np.block): for each spatial axis, the chunks and slices `_chunk_pieces` gave; batch and
    channel chunk `n_index`, `c_index`. A whole chunk is its own key; a slice of one (a halo)
    becomes a getitem task in `graph`, named after the reading task (`task_index`)."""
    keys = np.empty([len(pieces) for pieces in per_axis], dtype=object)
    for combo in itertools.product(*(range(len(pieces)) for pieces in per_axis)):
        in_index = tuple(per_axis[a][j][0] for a, j in enumerate(combo))
        local = tuple(per_axis[a][j][1] for a, j in enumerate(combo))
        chunk_key = (x.name, n_index, *in_index, c_index)
        whole = all(sl.start == 0 and sl.stop == bounds[a + 1][in_index[a] + 1] - bounds[a + 1][in_index[a]]
                    for a, sl in enumerate(local))
        if whole:
            keys[combo] = chunk_key
        else:
            # Only the slice a window reaches travels to the task (the halo).
            piece_key = (piece_name, n_index, *task_index, c_index, *combo)
            graph[piece_key] = (operator.getitem, chunk_key, (slice(None), *local, slice(None)))
            keys[combo] = piece_key
    # Batch and channel axes: one piece each (the chunk's own).
    return [_wrap_channels(keys.tolist(), len(per_axis))]


def _wrap_channels(nested, depth):
    """Nests each innermost key once more: the channel axis, last, has one piece."""
    if depth == 0:
        return [nested]
    return [_wrap_channels(item, depth - 1) for item in nested]


def _function(kind: str, spatial_dims: int, options: str):
    def pooling(x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
                ceil_mode: bool = False, count_include_pad: bool = True) -> "da.Array":
        return pool(kind, spatial_dims, x, kernel_size, stride, padding, ceil_mode, count_include_pad)

    def max_pooling(x: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0,
                    ceil_mode: bool = False) -> "da.Array":
        return pool(kind, spatial_dims, x, kernel_size, stride, padding, ceil_mode)

    chosen = pooling if kind == "avg" else max_pooling
    chosen.__name__ = chosen.__qualname__ = f"{kind}_pool{spatial_dims}d"
    chosen.__doc__ = (f"tidepool.{kind}_pool{spatial_dims}d of a dask array {functional.LAYOUTS[spatial_dims]}, lazily: "
                      f"a dask array of the same values for any chunking ({options}; see the module's doc).")
    return chosen


avg_pool1d = _function("avg", 1, "ceil_mode, count_include_pad as tidepool.avg_pool1d")
avg_pool2d = _function("avg", 2, "ceil_mode, count_include_pad as tidepool.avg_pool2d")
avg_pool3d = _function("avg", 3, "ceil_mode, count_include_pad as tidepool.avg_pool3d")
max_pool1d = _function("max", 1, "ceil_mode as tidepool.max_pool1d")
max_pool2d = _function("max", 2, "ceil_mode as tidepool.max_pool2d")
max_pool3d = _function("max", 3, "ceil_mode as tidepool.max_pool3d")


class _GradientBlock:
    """The gradient of one input chunk [i0, i1) along one spatial axis: computed by pooling
    input [begin, end) with `padding` on this axis, whose local output 0 is global output
    `first` and which has `count` outputs; None where no window holds [i0, i1)."""

    __slots__ = ("i0", "i1", "begin", "end", "padding", "first", "count")

    def __init__(self, i0, i1, begin, end, padding, first, count):
        self.i0, self.i1, self.begin, self.end = i0, i1, begin, end
        self.padding, self.first, self.count = padding, first, count


def _gradient_blocks(n: int, chunks: Sequence[int], k: int, s: int, p: int, length: int, outputs) -> list:
    """For each input chunk of an axis of `n` chunked as `chunks` (windows of `k` at stride `s`,
    padding `p`, `length` outputs), the local pooling whose backward pass gives that chunk's
    gradient as the whole array's does. `outputs(n, padding)` is the library's output count.

    The engine gives each input element the shares of the windows that hold it, in ascending
    order of the windows, so an element's gradient is the whole array's when the local pooling
    has exactly those windows, with the same extent (clipped only where the input's own edges
    clip them) at the same place among its outputs. The chunk's windows are outputs [lo, hi);
    the local pooling, as for the forward tasks (`_axis_blocks`): from the input's start with
    the padding p; to the input's end with the padding p from begin = a * s (a <= lo - ceil(p /
    s), so no window of [lo, hi) reaches the padding on the left); or from a * s - p without
    padding. Its other outputs hold no element of the chunk; their cotangents are read (or
    zero past the output's end) and their shares fall outside the chunk."""
    blocks = []
    bounds = _cumulative(chunks)
    for i0, i1 in zip(bounds[:-1], bounds[1:]):
        lo = max(0, -(-(i0 + p - k + 1) // s))
        hi = min(length, (i1 - 1 + p) // s + 1)
        if i0 == i1 or lo >= hi:
            blocks.append(None)  # no window holds an element of this chunk: its gradient is zero
            continue
        reach = (hi - 1) * s - p + k
        a = min(lo, (i0 + p) // s)  # the local input starts at or before i0
        if a * s - p <= 0:
            begin, end, padding, a = 0, min(n, max(i1, reach)), p, 0
        elif reach > n:
            a = min(lo - -(-p // s), i0 // s)
            begin, end, padding = (0, n, p) if a <= 0 else (a * s, n, p)
            a = max(a, 0)
        else:
            begin, end, padding = a * s - p, max(i1, reach), 0
        blocks.append(_GradientBlock(i0, i1, begin, end, padding, a, outputs(end - begin, padding)))
    return blocks


def _vjp_block(x_pieces, cotangent_pieces, *, kind, spatial_dims, owner, kernel_size, stride, padding, ties, options,
               local_outputs, keep):
    """One input chunk's gradient: the input and cotangent pieces joined (the cotangent padded
    with zeros to the local pooling's outputs where they pass the array's end), the backward
    pass of the local pooling, and the chunk's elements cut out."""
    x = _joined(x_pieces, spatial_dims)
    cotangent = _joined(cotangent_pieces, spatial_dims)
    missing = [(0, want - have) for want, have in zip(local_outputs, cotangent.shape[1:-1])]
    if any(after for _, after in missing):
        cotangent = np.pad(cotangent, [(0, 0)] + missing + [(0, 0)])
    grad = gradients.pool_vjp(kind, spatial_dims, owner, x, cotangent, kernel_size, stride, padding, ties, None,
                              **options)
    return grad[keep]


def pool_vjp(kind: str, spatial_dims: int, x: Any, cotangent: Any, kernel_size: IntOrTuple,
             stride: Optional[IntOrTuple] = None, padding: IntOrTuple = 0, *, ties: str = "split",
             ceil_mode: bool = False, count_include_pad: bool = True) -> "da.Array":
    """The gradient of the pooling `kind` of the dask array `x` with respect to `x` for
    `cotangent` (a dask array, or anything dask.array.asarray takes, of the output's shape),
    chunked as `x`, bit-identical to tidepool's in-memory *_vjp for any chunking."""
    owner = f"{kind}_pool{spatial_dims}d_vjp"
    code = _KINDS[kind]
    flags = pool_flags(owner, code, ceil_mode, count_include_pad)
    options = {"ceil_mode": ceil_mode, "count_include_pad": count_include_pad}
    if not isinstance(x, da.Array):
        x = da.asarray(x)
    if not isinstance(cotangent, da.Array):
        cotangent = da.asarray(cotangent)
    k, s, p = normalize_arguments(owner, spatial_dims, kernel_size, stride, padding)
    if any(np.isnan(c) for array in (x, cotangent) for chunks in array.chunks for c in chunks):
        raise InvalidArgumentError(f"[{owner}] the chunk sizes of x and cotangent must be known (call compute_chunk_sizes())")
    shape, _ = functional.output_description(code, spatial_dims, owner, x.shape, x.dtype, k, s, p, flags)
    if tuple(cotangent.shape) != shape or cotangent.dtype != x.dtype:
        raise InvalidArgumentError(f"[{owner}] cotangent must have the output's shape {shape} and x's dtype {x.dtype} "
                                   f"but has {tuple(cotangent.shape)} and {cotangent.dtype}")
    # The library's checks of dtype and ties, on empty stand-ins.
    gradients.pool_vjp(code, spatial_dims, owner, np.zeros((0,) + x.shape[1:], x.dtype),
                       np.zeros((0,) + shape[1:], x.dtype), k, s, p, ties, None, **options)
    # Batch and channel chunks of the cotangent as x's: a task takes one of each.
    cotangent = cotangent.rechunk({0: x.chunks[0], x.ndim - 1: x.chunks[-1]})
    name = f"{owner}-tidepool-{tokenize(x, cotangent, k, s, p, flags, ties)}"
    if 0 in x.shape:
        return da.zeros(x.shape, dtype=x.dtype, chunks=x.chunks)

    def outputs(a):
        def count(n, q):
            lengths = [1] * spatial_dims
            lengths[a] = n
            kernel = [1] * spatial_dims
            kernel[a] = k[a]
            strides = [1] * spatial_dims
            strides[a] = s[a]
            paddings = [0] * spatial_dims
            paddings[a] = q
            local, _ = functional.output_description(code, spatial_dims, owner, (1, *lengths, 1), x.dtype, tuple(kernel),
                                                     tuple(strides), tuple(paddings), flags)
            return local[a + 1]
        return count

    axes = [_gradient_blocks(x.shape[a + 1], x.chunks[a + 1], k[a], s[a], p[a], shape[a + 1], outputs(a))
            for a in range(spatial_dims)]
    x_bounds = [_cumulative(c) for c in x.chunks]
    cotangent_bounds = [_cumulative(c) for c in cotangent.chunks]
    x_pieces = [[None if b is None else _chunk_pieces(x_bounds[a + 1], b.begin, b.end) for b in blocks]
                for a, blocks in enumerate(axes)]
    cotangent_pieces = [[None if b is None else
                         _chunk_pieces(cotangent_bounds[a + 1], b.first, min(shape[a + 1], b.first + b.count))
                         for b in blocks] for a, blocks in enumerate(axes)]
    graph = {}
    for n_index, c_index in itertools.product(range(len(x.chunks[0])), range(len(x.chunks[-1]))):
        for index in itertools.product(*(range(len(blocks)) for blocks in axes)):
            key = (name, n_index, *index, c_index)
            chosen = [axes[a][i] for a, i in enumerate(index)]
            if any(b is None for b in chosen):
                chunk_shape = (x.chunks[0][n_index],) + tuple(x.chunks[a + 1][i] for a, i in enumerate(index)) + \
                    (x.chunks[-1][c_index],)
                graph[key] = (np.zeros, chunk_shape, x.dtype)
                continue
            inputs = _nested_pieces(graph, f"{name}-input", x, x_bounds, n_index, c_index, index,
                                    [x_pieces[a][i] for a, i in enumerate(index)])
            cotangents = _nested_pieces(graph, f"{name}-cotangent", cotangent, cotangent_bounds, n_index, c_index, index,
                                        [cotangent_pieces[a][i] for a, i in enumerate(index)])
            keep = (slice(None),) + tuple(slice(b.i0 - b.begin, b.i1 - b.begin) for b in chosen) + (slice(None),)
            task = functools.partial(_vjp_block, kind=code, spatial_dims=spatial_dims, owner=owner, kernel_size=k,
                                     stride=s, padding=tuple(b.padding for b in chosen), ties=ties, options=options,
                                     local_outputs=tuple(b.count for b in chosen), keep=keep)
            graph[key] = (task, inputs, cotangents)
    layers = HighLevelGraph.from_collections(name, graph, dependencies=[x, cotangent])
    return da.Array(layers, name, chunks=x.chunks, dtype=x.dtype, meta=np.empty((0,) * x.ndim, x.dtype))


def _vjp_function(kind: str, spatial_dims: int):
    def vjp(x: Any, cotangent: Any, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
            padding: IntOrTuple = 0, *, ties: str = "split", ceil_mode: bool = False,
            count_include_pad: bool = True) -> "da.Array":
        return pool_vjp(kind, spatial_dims, x, cotangent, kernel_size, stride, padding, ties=ties, ceil_mode=ceil_mode,
                        count_include_pad=count_include_pad)

    vjp.__name__ = vjp.__qualname__ = f"{kind}_pool{spatial_dims}d_vjp"
    vjp.__doc__ = (f"tidepool.{kind}_pool{spatial_dims}d_vjp of dask arrays x {functional.LAYOUTS[spatial_dims]} and "
                   "cotangent (of the pooling's output shape), lazily: the gradient with respect to x, chunked as x, "
                   "bit-identical to the in-memory result for any chunking (ties, ceil_mode, count_include_pad as "
                   "there; see the module's doc).")
    return vjp


avg_pool1d_vjp = _vjp_function("avg", 1)
avg_pool2d_vjp = _vjp_function("avg", 2)
avg_pool3d_vjp = _vjp_function("avg", 3)
max_pool1d_vjp = _vjp_function("max", 1)
max_pool2d_vjp = _vjp_function("max", 2)
max_pool3d_vjp = _vjp_function("max", 3)


def pyramid(x: Any, levels: int, factor: int = 2, *, store: Any = None, rechunk: bool = True,
            name: Optional[str] = None, zarr_options: Optional[dict] = None) -> List["da.Array"]:
    """The levels of a multiscale pyramid of `x` (N, D, H, W, C) (or (N, H, W, C), (N, L, C)):
    level 0 is `x`, level l + 1 the mean of level l over `factor` along every spatial axis, with
    ceil_mode=True and count_include_pad=False, so an odd axis keeps its last, partial window
    (the mean of the positions it holds) and no data is dropped.

    Args:
        x: a dask array (or anything dask.array.asarray takes), channels last, batch first.
        levels: the number of levels past `x` (>= 0).
        factor: the downsampling factor per spatial axis (>= 1).
        store: optional Zarr store or path: the levels are written there as arrays "0", "1", ...
            (axes t, c, z, y, x: channels moved before space, as OME-NGFF requires) with OME-NGFF
            0.4 `multiscales` metadata, and the returned levels read back from it. Needs `zarr`.
        rechunk: where a level's chunks fall under half of `x`'s along an axis, rechunk that
            level back to `x`'s chunk sizes (merging neighbours), so high levels do not become
            millions of tiny tasks. With `store`, a level whose chunks are not regular (odd chunk
            sizes halved) is also rechunked to Zarr's regular grid before it is written. These
            are the only rechunks tidepool.dask does.
        name: the multiscales' name in the metadata.
        zarr_options: keywords for zarr's create_array of each level (compressors=None, ...).

    Returns:
        The levels as dask arrays, `x` first; computing them (or writing them) runs the work.
    """
    if not isinstance(levels, int) or levels < 0:
        raise InvalidArgumentError(f"[pyramid] levels must be a non-negative int but got {levels!r}")
    if not isinstance(factor, int) or factor < 1:
        raise InvalidArgumentError(f"[pyramid] factor must be a positive int but got {factor!r}")
    if not isinstance(x, da.Array):
        x = da.asarray(x)
    spatial_dims = x.ndim - 2
    if spatial_dims not in (1, 2, 3):
        raise InvalidArgumentError(f"[pyramid] x must have 3, 4 or 5 dimensions (batch, spatial axes, channels) but has {x.ndim}")
    target = x.chunksize

    def next_level(level):
        level = pool("avg", spatial_dims, level, factor, factor, 0, ceil_mode=True, count_include_pad=False)
        if rechunk and any(2 * max(c) < t for c, t in zip(level.chunks[1:-1], target[1:-1])):
            level = level.rechunk((level.chunksize[0],) + tuple(target[1:-1]) + (level.chunksize[-1],))
        return level

    if store is None:
        result = [x]
        for _ in range(levels):
            result.append(next_level(result[-1]))
        return result
    return _write_ngff(x, levels, next_level, store, factor, name, zarr_options or {})


def _write_ngff(x: "da.Array", levels: int, next_level, store: Any, factor: int, name: Optional[str],
                zarr_options: dict) -> List["da.Array"]:
    """Writes `x` and its `levels` levels to a Zarr group with OME-NGFF 0.4 multiscales
    metadata, one level at a time: each is computed from the previous one as read back from
    the store, so no level is computed twice and memory holds a few chunks per worker,
    whatever the volume. Returns the levels as read back (channels last again, as views)."""
    try:
        import zarr
    except ImportError as error:
        raise ImportError("writing a pyramid needs zarr: pip install zarr") from error
    spatial_dims = x.ndim - 2
    space = ["z", "y", "x"][3 - spatial_dims:]
    order = (0, x.ndim - 1) + tuple(range(1, spatial_dims + 1))  # (N, C, spatial...) on disk
    inverse = tuple(int(i) for i in np.argsort(order))
    group = zarr.open_group(store, mode="w")
    datasets, result = [], []
    level = x
    for index in range(levels + 1):
        if index:
            level = next_level(result[-1])
        # Zarr chunks are regular; dask's must each fill one of them (writes without a lock), so
        # irregular ones (odd chunk sizes halved) are rechunked to the regular grid first.
        if any(len(set(c[:-1])) > 1 or (len(c) > 1 and c[-1] > c[0]) for c in level.chunks):
            level = level.rechunk(level.chunksize)
        moved = level.transpose(order)
        array = group.create_array(str(index), shape=moved.shape, chunks=moved.chunksize, dtype=moved.dtype,
                                   overwrite=True, **zarr_options)
        da.store(moved, array, lock=False)
        result.append(da.from_zarr(array).transpose(inverse))
        scale = [1.0, 1.0] + [float(factor ** index)] * spatial_dims
        datasets.append({"path": str(index), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space"} for a in space]
    group.attrs["multiscales"] = [{"version": "0.4", "name": name or "tidepool-pyramid", "axes": axes,
                                   "datasets": datasets, "type": "mean",
                                   "metadata": {"method": "tidepool.dask.pyramid", "factor": factor,
                                                "ceil_mode": True, "count_include_pad": False}}]
    return result


__all__ = ["avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d", "pool", "pyramid",
           "avg_pool1d_vjp", "avg_pool2d_vjp", "avg_pool3d_vjp", "max_pool1d_vjp", "max_pool2d_vjp", "max_pool3d_vjp",
           "pool_vjp"]
