"""Counted datasets: dask arrays of event blocks wrapped as stemdask DataArrays.

A counted dataset has exactly the dims, coordinates and attrs of a dense one
(see :mod:`stemdask.dataset`); only its dask chunks differ: each is an
:class:`~stemdask.events.block.EventBlock` holding a tile of scan positions
with whole frames. ``data.dtype`` is the dtype of the dense counts, so
``to_dense`` gives exactly the array that was counted.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..dataset import DIMS, dask_data, require_whole_frames, validate
from ..errors import bad_type, bad_value
from .block import EventBlock

#: attr set on counted datasets (kept through xarray operations that keep attrs)
REPRESENTATION_ATTR = "representation"


def is_counted(data: Any) -> bool:
    """True when ``data`` (DataArray or dask array) holds electron events."""
    arr = data.data if isinstance(data, xr.DataArray) else data
    return isinstance(arr, da.Array) and isinstance(arr._meta, EventBlock) or isinstance(arr, EventBlock)


def require_counted(data: Any, name: str = "data") -> xr.DataArray:
    """Check that ``data`` is a counted stemdask dataset backed by dask; return it."""
    if not isinstance(data, xr.DataArray):
        raise bad_type(name, data, "a counted xarray.DataArray (from stemdask.events.from_dense or count_electrons)")
    if not is_counted(data):
        raise bad_value(
            name,
            f"<DataArray with {type(data.data).__name__} data>",
            "a counted dataset of electron events (convert with stemdask.events.from_dense)",
        )
    if not isinstance(data.data, da.Array):
        return data.copy(data=da.from_array(data.data, chunks=-1, asarray=False))
    if tuple(data.dims) != DIMS:
        raise bad_value(name, f"<DataArray with dims {tuple(data.dims)}>", f"dims {DIMS}")
    return data


def event_meta(frame_shape: tuple[int, int], dtype: Any) -> EventBlock:
    """The zero-size block dask keeps as ``_meta`` of a counted array."""
    return EventBlock.empty(frame_shape, dtype)


def wrap_events(
    events: da.Array,
    like: xr.DataArray | None = None,
    *,
    coords: Any = None,
    attrs: dict | None = None,
    name: Hashable | None = None,
) -> xr.DataArray:
    """A counted DataArray with the coords and attrs of ``like`` (or those given)."""
    if like is not None:
        coords = like.coords if coords is None else coords
        attrs = dict(like.attrs) if attrs is None else attrs
        name = like.name if name is None else name
    attrs = dict(attrs or {})
    attrs[REPRESENTATION_ATTR] = "events"
    return xr.DataArray(events, dims=DIMS, coords=coords, attrs=attrs, name=name or "intensity")


def from_dense(data: xr.DataArray, *, dtype: Any = None) -> xr.DataArray:
    """Electron events of a dense dataset of integer counts (lossless).

    Parameters
    ----------
    data : xarray.DataArray
        A stemdask dataset of non-negative integer counts (e.g. from a
        counting detector); chunks are kept (whole frames, scan tiles).
    dtype : dtype, optional
        Integer dtype of the dense counts the result stands for; default the
        dtype of ``data``.

    Returns
    -------
    xarray.DataArray
        Lazy counted dataset, same dims, coords and attrs, whose chunks are
        :class:`EventBlock` s; ``to_dense(from_dense(x))`` equals ``x``.

    Raises
    ------
    InvalidArgumentError
        For float data (count it with :func:`count_electrons`) or negative
        counts (when computed).
    """
    validate(data)
    require_whole_frames(data, "conversion to electron events")
    if data.dtype.kind not in "ui":
        raise bad_value(
            "data",
            f"<dataset of dtype {data.dtype}>",
            "integer electron counts (use stemdask.events.count_electrons for raw frames)",
        )
    out_dtype = np.dtype(dtype) if dtype is not None else data.dtype
    arr = dask_data(data)
    ky, kx = arr.shape[2:]
    events = da.map_blocks(
        _from_dense_block, arr, count_dtype=out_dtype, dtype=out_dtype, meta=event_meta((ky, kx), out_dtype)
    )
    return wrap_events(events, data)


def _from_dense_block(frames: Any, count_dtype: Any) -> EventBlock:
    return EventBlock.from_dense(frames, count_dtype)


def _to_dense_block(block: EventBlock) -> Any:
    return block.to_dense()


def to_dense(data: xr.DataArray) -> xr.DataArray:
    """The dense dataset of a counted one (lazy; same dims, coords and attrs).

    Returns ``data`` unchanged when it is already dense.
    """
    if not isinstance(data, xr.DataArray):
        raise bad_type("data", data, "a stemdask DataArray")
    if not is_counted(data):
        return data
    data = require_counted(data)
    arr = data.data
    dense = arr.map_blocks(_to_dense_block, dtype=arr.dtype, meta=np.empty((0, 0, 0, 0), arr.dtype))
    attrs = {k: v for k, v in data.attrs.items() if k != REPRESENTATION_ATTR}
    return xr.DataArray(dense, dims=DIMS, coords=data.coords, attrs=attrs, name=data.name)


def _frame_counts(block: EventBlock) -> Any:
    return block.counts_per_frame().reshape(block.scan_shape)


def events_per_frame(data: xr.DataArray) -> xr.DataArray:
    """Electrons per scan position, ``(scan_y, scan_x)`` int64, in O(frames)."""
    data = require_counted(data)
    arr = data.data
    counts = arr.map_blocks(_frame_counts, drop_axis=(2, 3), dtype=np.int64, meta=np.empty((0, 0), np.int64))
    return xr.DataArray(
        counts,
        dims=DIMS[:2],
        coords={d: data.coords[d] for d in DIMS[:2]},
        attrs={"units": "electrons"},
        name="electrons",
    )
