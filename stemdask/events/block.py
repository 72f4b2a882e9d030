"""The event block: electron events of a tile of scan positions.

An :class:`EventBlock` is what one dask chunk of a counted dataset holds. It
stores the electrons of ``F = scan_shape[0] * scan_shape[1]`` frames (scan
positions in C order) in linear-index encoding (Pelz et al. 2022, Fig. 1b):

* ``indices``: a flat array of linear detector indices ``k_y * n_kx + k_x``,
  one entry per electron; several electrons in one pixel of one frame are
  repeated entries, so nothing is lost. ``uint16`` when the detector has at
  most 65536 pixels, else ``uint32``.
* ``offsets``: ``F + 1`` non-decreasing ``int64`` values (CSR row pointers);
  frame ``f`` holds ``indices[offsets[f]:offsets[f + 1]]``.

The block behaves as a read-only 4-D duck array of shape
``scan_shape + frame_shape`` whose dense values are the electron counts per
pixel (``dtype``), so dask and xarray accept it like a pydata/sparse array:
``np.asarray(block)`` densifies, ``np.concatenate`` joins blocks along the
scan axes, ``np.sum`` reduces in O(counts), and slicing (scan tiles, detector
crops) costs O(counts + pixels). Everything works unchanged on CuPy arrays.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
from dask.array.dispatch import concatenate_lookup
from dask.sizeof import sizeof

from ..backend import array_module, to_numpy
from ..errors import InvalidTypeError, bad_type, bad_value

#: detectors with at most this many pixels store indices as uint16
UINT16_PIXELS = 2**16


def index_dtype(n_pixels: int) -> np.dtype:
    """Smallest unsigned dtype that holds a linear index of ``n_pixels`` pixels."""
    if n_pixels <= UINT16_PIXELS:
        return np.dtype(np.uint16)
    if n_pixels <= 2**32:
        return np.dtype(np.uint32)
    raise bad_value("frame_shape", n_pixels, "a detector of at most 2**32 pixels")


def _shape2(name: str, value: Any, *, positive: bool) -> tuple[int, int]:
    try:
        items = tuple(value)
    except TypeError:
        raise bad_type(name, value, "a (y, x) pair of integers") from None
    if len(items) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in items):
        raise bad_value(name, value, "a (y, x) pair of integers")
    low = 1 if positive else 0
    if any(int(v) < low for v in items):
        raise bad_value(name, value, f"a (y, x) pair of integers >= {low}")
    return int(items[0]), int(items[1])


def _count_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind not in "ui":
        raise bad_value("dtype", dt, "an integer dtype for electron counts (e.g. uint16)")
    return dt


class EventBlock:
    """Electron events of a tile of scan positions (linear-index encoding).

    Parameters
    ----------
    indices : array of int
        Linear detector index of every electron, frame after frame.
    offsets : array of int
        ``F + 1`` non-decreasing positions into ``indices``, starting at 0 and
        ending at ``len(indices)``.
    scan_shape : (int, int)
        Scan positions of the block (scan_y, scan_x); ``F`` is their product.
    frame_shape : (int, int)
        Detector shape (k_y, k_x) in pixels.
    dtype : dtype
        Integer dtype of the dense counts (what :meth:`to_dense` returns).
    check : bool
        Validate the events (O(counts)); only internal callers that built
        them correctly pass False.

    Raises
    ------
    InvalidArgumentError
        For an index beyond the frame, decreasing offsets, offsets that do not
        span ``indices`` or a wrong number of frames.
    """

    __slots__ = ("indices", "offsets", "scan_shape", "frame_shape", "dtype")
    __array_priority__ = 30

    def __init__(
        self,
        indices: Any,
        offsets: Any,
        scan_shape: Sequence[int],
        frame_shape: Sequence[int],
        dtype: Any = np.uint16,
        *,
        check: bool = True,
    ):
        self.scan_shape = _shape2("scan_shape", scan_shape, positive=False)
        self.frame_shape = _shape2("frame_shape", frame_shape, positive=False)
        self.dtype = _count_dtype(dtype)
        n_pixels = self.frame_shape[0] * self.frame_shape[1]
        idx_dtype = index_dtype(n_pixels)
        if check:
            indices, offsets = _validated(indices, offsets, self.n_frames, n_pixels)
        xp = array_module(indices)
        self.indices = indices.astype(idx_dtype, copy=False)
        self.offsets = xp.asarray(offsets).astype(np.int64, copy=False)

    # -- description ---------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (*self.scan_shape, *self.frame_shape)

    @property
    def ndim(self) -> int:
        return 4

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def n_frames(self) -> int:
        return self.scan_shape[0] * self.scan_shape[1]

    @property
    def n_pixels(self) -> int:
        return self.frame_shape[0] * self.frame_shape[1]

    @property
    def n_events(self) -> int:
        return int(self.indices.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the events (indices and offsets), not the dense size."""
        return int(self.indices.nbytes + self.offsets.nbytes)

    @property
    def xp(self):
        """The array namespace of the events (numpy or cupy)."""
        return array_module(self.indices)

    def __repr__(self) -> str:
        backend = "cupy" if self.xp is not np else "numpy"
        return (
            f"EventBlock(shape={self.shape}, dtype={self.dtype}, events={self.n_events}, "
            f"index_dtype={self.indices.dtype}, backend={backend})"
        )

    def __reduce__(self):
        return (_rebuild, (self.indices, self.offsets, self.scan_shape, self.frame_shape, self.dtype))

    # -- construction ----------------------------------------------------------
    @classmethod
    def empty(
        cls, frame_shape: Sequence[int], dtype: Any = np.uint16, scan_shape: Sequence[int] = (0, 0), xp: Any = np
    ) -> EventBlock:
        """A block without electrons (all frames zero)."""
        fy, fx = _shape2("frame_shape", frame_shape, positive=False)
        sy, sx = _shape2("scan_shape", scan_shape, positive=False)
        return cls(
            xp.zeros(0, index_dtype(fy * fx)), xp.zeros(sy * sx + 1, np.int64), (sy, sx), (fy, fx), dtype, check=False
        )

    @classmethod
    def from_dense(cls, frames: Any, dtype: Any = None) -> EventBlock:
        """Events of dense integer counts ``(scan_y, scan_x, k_y, k_x)``.

        A pixel holding ``n`` counts becomes ``n`` repeated indices. Costs
        O(pixels) once; numpy or cupy input gives the same backend.
        """
        xp = array_module(frames)
        frames = xp.asarray(frames)
        if frames.ndim != 4:
            raise bad_value("frames", f"<{frames.ndim}-D array>", "a 4-D array (scan_y, scan_x, k_y, k_x)")
        if frames.dtype.kind not in "ui":
            raise bad_value(
                "frames",
                f"<array of dtype {frames.dtype}>",
                "integer electron counts (count raw frames with count_electrons first)",
            )
        ny, nx, ky, kx = (int(s) for s in frames.shape)
        flat = frames.reshape(ny * nx, ky * kx)
        if frames.dtype.kind == "i" and flat.size and bool((flat < 0).any()):
            raise bad_value("frames", "<array with negative values>", "non-negative electron counts")
        per_frame = flat.sum(axis=1, dtype=np.int64)
        offsets = xp.concatenate([xp.zeros(1, np.int64), xp.cumsum(per_frame)])
        if xp is np:
            indices = np.empty(int(offsets[-1]), index_dtype(ky * kx))
            native = flat if flat.dtype.isnative else flat.astype(flat.dtype.newbyteorder("="))
            _dense_to_events(np.ascontiguousarray(native), offsets, indices)
        else:
            frame_idx, pixel = xp.nonzero(flat)
            counts = flat[frame_idx, pixel].astype(np.int64)
            indices = xp.repeat(pixel.astype(index_dtype(ky * kx)), counts)
        return cls(indices, offsets, (ny, nx), (ky, kx), dtype or frames.dtype, check=False)

    # -- conversion -----------------------------------------------------------
    def counts_per_frame(self):
        """Number of electrons in each frame, shape ``(F,)`` int64."""
        return self.offsets[1:] - self.offsets[:-1]

    def frame_ids(self):
        """Frame number of every electron (O(counts))."""
        xp = self.xp
        return xp.repeat(xp.arange(self.n_frames, dtype=np.int64), self.counts_per_frame())

    def to_dense(self):
        """Dense counts ``(scan_y, scan_x, k_y, k_x)`` of ``dtype`` (numpy or cupy).

        Raises
        ------
        InvalidArgumentError
            When a pixel holds more electrons than ``dtype`` can count.
        """
        xp = self.xp
        m = self.n_pixels
        flat = xp.bincount(self.frame_ids() * m + self.indices, minlength=self.n_frames * m)
        if flat.size and self.dtype.itemsize < 8:
            top = int(flat.max())
            if top > np.iinfo(self.dtype).max:
                raise bad_value("dtype", self.dtype, f"an integer dtype that holds {top} electrons in one pixel")
        return flat.astype(self.dtype, copy=False).reshape(self.shape)

    def astype(self, dtype: Any, copy: bool = True) -> EventBlock:
        """The same events with another integer dtype for the dense counts."""
        return EventBlock(
            self.indices, self.offsets, self.scan_shape, self.frame_shape, _count_dtype(dtype), check=False
        )

    def to_backend(self, xp: Any) -> EventBlock:
        """The same events on another backend (``numpy`` or ``cupy``)."""
        if xp is np:
            ind, off = to_numpy(self.indices), to_numpy(self.offsets)
        else:
            ind, off = xp.asarray(self.indices), xp.asarray(self.offsets)
        return EventBlock(ind, off, self.scan_shape, self.frame_shape, self.dtype, check=False)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("an EventBlock cannot be viewed as a dense array without a copy")
        dense = to_numpy(self.to_dense())
        return dense if dtype is None else dense.astype(dtype)

    # -- selection -------------------------------------------------------------
    def take_frames(self, ids: Any, scan_shape: Sequence[int]) -> EventBlock:
        """A block of the frames ``ids`` (flat frame numbers), O(selected counts)."""
        xp = self.xp
        ids = xp.asarray(ids, dtype=np.int64).ravel()
        starts = self.offsets[ids]
        lengths = self.offsets[ids + 1] - starts
        new_offsets = xp.concatenate([xp.zeros(1, np.int64), xp.cumsum(lengths)])
        total = int(new_offsets[-1])
        src = xp.repeat(starts - new_offsets[:-1], lengths) + xp.arange(total, dtype=np.int64)
        return EventBlock(self.indices[src], new_offsets, scan_shape, self.frame_shape, self.dtype, check=False)

    def remap_pixels(self, lut: Any, frame_shape: Sequence[int]) -> EventBlock:
        """Events moved through ``lut`` (old pixel -> new pixel, -1 drops it), O(counts)."""
        xp = self.xp
        new = xp.asarray(lut)[self.indices]
        keep = new >= 0
        kept = xp.concatenate([xp.zeros(1, np.int64), xp.cumsum(keep, dtype=np.int64)])
        offsets = kept[self.offsets]
        fy, fx = frame_shape
        return EventBlock(
            new[keep].astype(index_dtype(fy * fx)), offsets, self.scan_shape, frame_shape, self.dtype, check=False
        )

    def __getitem__(self, key: Any) -> EventBlock:
        sel = _normalise_key(key, self.shape)
        out = self
        sy, sx, ky, kx = sel
        if not (_is_full(sy, self.scan_shape[0]) and _is_full(sx, self.scan_shape[1])):
            grid = np.arange(self.n_frames, dtype=np.int64).reshape(self.scan_shape)
            picked = grid[sy][:, sx]
            out = out.take_frames(picked.ravel(), picked.shape)
        if not (_is_full(ky, self.frame_shape[0]) and _is_full(kx, self.frame_shape[1])):
            rows = np.arange(self.frame_shape[0])[ky]
            cols = np.arange(self.frame_shape[1])[kx]
            if len(np.unique(rows)) != len(rows) or len(np.unique(cols)) != len(cols):
                raise bad_value("key", key, "detector selections without repeated pixels")
            lut = np.full(self.n_pixels, -1, np.int64)
            lut[(rows[:, None] * self.frame_shape[1] + cols[None, :]).ravel()] = np.arange(rows.size * cols.size)
            out = out.remap_pixels(out.xp.asarray(lut), (rows.size, cols.size))
        return out

    # -- numpy protocols ---------------------------------------------------------
    def __array_function__(self, func, types, args, kwargs):
        if func is np.concatenate:
            return concatenate_blocks(*args, **kwargs)
        if func is np.sum:
            return _sum(*args, **kwargs)
        if func in (np.max, np.amax):
            return _max(*args, **kwargs)
        if func is np.take:
            return _take(*args, **kwargs)
        raise InvalidTypeError(
            f"numpy.{func.__name__} is not defined on electron events (EventBlock); "
            f"convert with stemdask.events.to_dense(data) or use stemdask.events operations"
        )

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raise InvalidTypeError(
            f"ufunc {ufunc.__name__}.{method} is not defined on electron events (EventBlock); "
            f"convert with stemdask.events.to_dense(data) first"
        )

    def sum(self, axis: Any = None, dtype: Any = None, keepdims: bool = False, **kwargs: Any):
        """Sum of counts over ``axis`` in O(counts) (see :func:`numpy.sum`)."""
        return _sum(self, axis=axis, dtype=dtype, keepdims=keepdims, **kwargs)

    def max(self, axis: Any = None, keepdims: bool = False, **kwargs: Any):
        """Largest count over ``axis`` in O(counts log counts) (see :func:`numpy.max`)."""
        return _max(self, axis=axis, keepdims=keepdims, **kwargs)


def _rebuild(indices, offsets, scan_shape, frame_shape, dtype):
    return EventBlock(indices, offsets, scan_shape, frame_shape, dtype, check=False)


def _validated(indices: Any, offsets: Any, n_frames: int, n_pixels: int):
    xp = array_module(indices)
    if not hasattr(indices, "dtype") or not hasattr(indices, "ndim"):
        indices = np.asarray(indices)
        xp = np
    offsets = xp.asarray(offsets)
    if indices.ndim != 1 or indices.dtype.kind not in "ui":
        raise bad_value(
            "indices", f"<{indices.ndim}-D array of {indices.dtype}>", "a 1-D integer array of linear detector indices"
        )
    if offsets.ndim != 1 or offsets.dtype.kind not in "ui":
        raise bad_value(
            "offsets", f"<{offsets.ndim}-D array of {offsets.dtype}>", "a 1-D integer array of frame offsets"
        )
    if offsets.shape[0] != n_frames + 1:
        raise bad_value(
            "offsets", f"<{offsets.shape[0]} offsets>", f"{n_frames + 1} offsets (one more than the {n_frames} frames)"
        )
    if int(offsets[0]) != 0:
        raise bad_value("offsets", f"<offsets[0]={int(offsets[0])}>", "offsets starting at 0")
    steps = offsets[1:].astype(np.int64) - offsets[:-1].astype(np.int64)
    if steps.size and bool((steps < 0).any()):
        frame = int(xp.argmax(steps < 0))
        raise bad_value(
            "offsets",
            f"<offsets[{frame}]={int(offsets[frame])} > offsets[{frame + 1}]={int(offsets[frame + 1])}>",
            "non-decreasing frame offsets",
        )
    if int(offsets[-1]) != indices.shape[0]:
        raise bad_value(
            "offsets",
            f"<offsets[-1]={int(offsets[-1])}>",
            f"the last offset equal to the number of events {indices.shape[0]}",
        )
    if indices.size:
        if indices.dtype.kind == "i" and int(indices.min()) < 0:
            pos = int(xp.argmin(indices))
            raise bad_value("indices", f"<indices[{pos}]={int(indices[pos])}>", "non-negative linear detector indices")
        top = int(indices.max())
        if top >= n_pixels:
            pos = int(xp.argmax(indices))
            raise bad_value(
                "indices",
                f"<indices[{pos}]={top}>",
                f"linear detector indices below the {n_pixels} pixels of the frame",
            )
    return indices, offsets


def _normalise_key(key: Any, shape: tuple[int, ...]) -> list[Any]:
    """A key as four orthogonal selections (slices or 1-D integer arrays)."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (4 - len(key) + 1) + key[i + 1 :]
    if len(key) > 4:
        raise bad_value("key", key, "at most 4 selections (scan_y, scan_x, k_y, k_x)")
    key = key + (slice(None),) * (4 - len(key))
    out: list[Any] = []
    arrays = 0
    for k, n in zip(key, shape):
        if isinstance(k, slice):
            out.append(k)
            continue
        if k is None or isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            raise InvalidTypeError(
                f"key {key!r} would drop or add a dimension: electron events stay 4-D "
                f"(select with slices or lists, e.g. isel(scan_y=[i]), or convert with to_dense)"
            )
        arr = to_numpy(k) if hasattr(k, "dtype") else np.asarray(k)
        if arr.dtype == bool and arr.ndim == 1 and arr.size == n:
            arr = np.flatnonzero(arr)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "ui"):
            raise bad_value("key", key, "slices or 1-D integer arrays per dimension")
        arr = arr.astype(np.int64)
        if arr.size and (arr.min() < -n or arr.max() >= n):
            raise bad_value("key", key, f"indices within the dimension of size {n}")
        out.append(np.where(arr < 0, arr + n, arr))
        arrays += 1
    if arrays > 1:
        raise bad_value("key", key, "at most one integer-array selection (orthogonal indexing)")
    return out


def _is_full(sel: Any, n: int) -> bool:
    return isinstance(sel, slice) and sel.indices(n) == (0, n, 1)


def concatenate_blocks(blocks: Sequence[EventBlock], axis: int = 0, **kwargs: Any) -> EventBlock:
    """Join event blocks along a scan axis (what dask uses to assemble a result)."""
    if kwargs.get("out") is not None:
        raise bad_value("out", kwargs["out"], "None (electron events are immutable)")
    blocks = list(blocks)
    if not blocks:
        raise bad_value("blocks", blocks, "at least one EventBlock")
    if not all(isinstance(b, EventBlock) for b in blocks):
        kinds = sorted({type(b).__name__ for b in blocks})
        raise bad_type("blocks", kinds, "EventBlocks only (convert dense parts with EventBlock.from_dense)")
    axis = operator.index(axis)
    axis = axis + 4 if axis < 0 else axis
    if len(blocks) == 1:
        return blocks[0]
    first = blocks[0]
    if axis not in (0, 1):
        raise bad_value("axis", axis, "0 or 1: event blocks join along the scan axes, frames stay whole")
    other = 1 - axis
    for b in blocks[1:]:
        if b.frame_shape != first.frame_shape or b.scan_shape[other] != first.scan_shape[other]:
            raise bad_value(
                "blocks",
                b,
                f"blocks of frame shape {first.frame_shape} and scan size {first.scan_shape[other]} along axis {other}",
            )
    dtype = np.result_type(*[b.dtype for b in blocks])
    xp = first.xp
    shifts = np.cumsum([0] + [b.n_events for b in blocks[:-1]])
    indices = xp.concatenate([b.indices for b in blocks])
    offsets = xp.concatenate([xp.zeros(1, np.int64)] + [b.offsets[1:] + int(s) for b, s in zip(blocks, shifts)])
    sizes = [b.scan_shape[axis] for b in blocks]
    if axis == 0:
        return EventBlock(indices, offsets, (sum(sizes), first.scan_shape[1]), first.frame_shape, dtype, check=False)
    # along scan_x frames interleave row by row: reorder the stacked frames
    ny = first.scan_shape[0]
    starts = np.cumsum([0] + [ny * s for s in sizes[:-1]])
    order = np.concatenate(
        [(start + np.arange(ny)[:, None] * s + np.arange(s)[None, :]) for start, s in zip(starts, sizes)], axis=1
    )
    stacked = EventBlock(indices, offsets, (1, int(offsets.shape[0]) - 1), first.frame_shape, dtype, check=False)
    return stacked.take_frames(xp.asarray(order.ravel()), (ny, sum(sizes)))


def _take(block: EventBlock, indices: Any, axis: Any = None, out: Any = None, mode: str = "raise") -> EventBlock:
    """np.take along one axis (dask's fancy indexing) as an orthogonal selection."""
    if axis is None or out is not None or mode != "raise":
        raise bad_value("take", {"axis": axis, "mode": mode}, "np.take along one axis of electron events")
    key = [slice(None)] * 4
    key[operator.index(axis) % 4] = indices
    return block[tuple(key)]


def _axes(axis: Any) -> set[int]:
    if axis is None:
        return {0, 1, 2, 3}
    items = axis if isinstance(axis, tuple) else (axis,)
    return {operator.index(a) % 4 for a in items}


def _output_keys(block: EventBlock, axes: set[int], fid: Any, ind: Any) -> tuple[Any, tuple[int, ...]]:
    """Flat output index of every (frame, pixel) pair for a reduction over ``axes``."""
    xp = block.xp
    (ny, nx), (ky, kx) = block.scan_shape, block.frame_shape
    oy, ox, oky, okx = (1 if 0 in axes else ny, 1 if 1 in axes else nx, 1 if 2 in axes else ky, 1 if 3 in axes else kx)
    zero = xp.zeros_like(fid)
    fy, fx = (fid // nx, fid % nx) if nx else (zero, zero)
    py, px = (ind // kx, ind % kx) if kx else (zero, zero)
    g = (zero if 0 in axes else fy) * ox + (zero if 1 in axes else fx)
    h = (zero if 2 in axes else py) * okx + (zero if 3 in axes else px)
    return g * (oky * okx) + h, (oy, ox, oky, okx)


def _max(block: EventBlock, axis: Any = None, out: Any = None, keepdims: bool = False, **kwargs: Any):
    """np.max of the dense counts: counts per (frame, pixel) from the events, then a scatter-max."""
    kwargs.pop("computing_meta", None)
    if out is not None or kwargs.get("where", True) is not True or kwargs.get("initial") is not None:
        raise bad_value("max", kwargs, "a plain maximum (no out=, where= or initial=) on electron events")
    axes = _axes(axis)
    xp = block.xp
    n_pixels = block.frame_shape[0] * block.frame_shape[1]
    pairs = block.frame_ids().astype(np.int64) * n_pixels + block.indices.astype(np.int64)
    unique, counts = xp.unique(pairs, return_counts=True)
    keys, shape = _output_keys(block, axes, unique // n_pixels, unique % n_pixels)
    result = xp.zeros(int(np.prod(shape)), dtype=np.int64)  # pixels without electrons count 0
    if counts.size:
        if xp is np:
            np.maximum.at(result, keys, counts.astype(np.int64))
        else:  # cupy has no ufunc.at for maximum
            import cupyx

            cupyx.scatter_max(result, keys, counts.astype(np.int64))
    result = result.astype(block.dtype).reshape(shape)
    if not keepdims:
        result = result.reshape([n for i, n in enumerate(shape) if i not in axes])
    return result


def _sum(
    block: EventBlock, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False, **kwargs: Any
):
    """np.sum of the dense counts computed from the events in O(counts + output)."""
    kwargs.pop("computing_meta", None)
    if out is not None or kwargs.get("where", True) is not True or kwargs.get("initial", 0) != 0:
        raise bad_value("sum", kwargs, "a plain sum (no out=, where= or initial=) on electron events")
    axes = _axes(axis)
    dtype = np.dtype(dtype) if dtype is not None else np.zeros(0, block.dtype).sum().dtype
    xp = block.xp
    (ny, nx), (ky, kx) = block.scan_shape, block.frame_shape
    oy, ox, oky, okx = (1 if 0 in axes else ny, 1 if 1 in axes else nx, 1 if 2 in axes else ky, 1 if 3 in axes else kx)
    if axes == {0, 1, 2, 3} or axes == {2, 3} or axes == {0, 1}:
        # the common reductions without per-electron frame numbers
        if axes == {2, 3}:
            flat = block.counts_per_frame()
        elif axes == {0, 1}:
            flat = _pixel_histogram(block)
        else:
            flat = xp.asarray([block.n_events])
        shape = [1 if i in axes else n for i, n in enumerate(block.shape)]
        result = flat.astype(dtype).reshape(shape)
        return result if keepdims else result.reshape([n for i, n in enumerate(block.shape) if i not in axes])
    keys, _ = _output_keys(block, axes, block.frame_ids(), block.indices.astype(np.int64))
    n_out = oy * ox * oky * okx
    flat = xp.bincount(keys, minlength=n_out) if block.n_events else xp.zeros(n_out, np.int64)
    result = flat.astype(dtype).reshape(oy, ox, oky, okx)
    if not keepdims:
        result = result.reshape([n for i, n in enumerate((oy, ox, oky, okx)) if i not in axes])
    return result


@numba.njit(cache=True, nogil=True)
def _dense_to_events(flat, offsets, out):  # pragma: no cover - compiled
    for f in range(flat.shape[0]):
        pos = offsets[f]
        for p in range(flat.shape[1]):
            for _ in range(flat[f, p]):
                out[pos] = p
                pos += 1


@numba.njit(cache=True, nogil=True)
def _histogram_kernel(indices, out):  # pragma: no cover - compiled
    for i in range(indices.shape[0]):
        out[indices[i]] += 1


def _pixel_histogram(block: EventBlock):
    """Electrons per detector pixel over all frames of the block (int64)."""
    if block.xp is not np:
        return block.xp.bincount(block.indices, minlength=block.n_pixels)
    out = np.zeros(block.n_pixels, np.int64)
    _histogram_kernel(block.indices, out)  # no int64 copy of the indices, unlike np.bincount
    return out


concatenate_lookup.register(EventBlock)(concatenate_blocks)


@sizeof.register(EventBlock)
def _sizeof_block(block: EventBlock) -> int:
    return block.nbytes + 200
