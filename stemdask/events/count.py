"""Electron counting: dense detector frames to electron events.

Each frame is corrected as ``(raw - dark) * gain`` (values in electrons when
``gain`` converts detector units to electrons). Then either

* ``centroid=False``: a pixel with corrected value ``v >= threshold`` holds
  ``max(1, round(v))`` electrons, kept as repeated indices, so a counting
  detector's integer frames (``threshold=1``) are kept exactly; or
* ``centroid=True``: the charge of one electron spreads over neighbouring
  pixels; every local maximum of its 3x3 neighbourhood at or above
  ``threshold`` is one electron at that pixel (ties go to the first pixel in
  raster order), as the 4D Camera counting does.

The CPU kernels are numba-compiled (two passes: count, then write); a CuPy
frame stack takes the vectorised path, which the CPU tests compare against.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numba
import numpy as np
import xarray as xr

from ..backend import array_module, is_cupy
from ..checks import number
from ..dataset import DETECTOR_DIMS, dask_data, require_whole_frames, validate
from ..errors import bad_type, bad_value
from .array import event_meta, wrap_events
from .block import EventBlock, index_dtype


@numba.njit(cache=True, nogil=True)
def _value(frames, f, y, x, dark, gain, kx):  # pragma: no cover - compiled
    p = y * kx + x
    return (np.float64(frames[f, y, x]) - dark[p]) * gain[p]


@numba.njit(cache=True, nogil=True)
def _is_peak(frames, f, y, x, v, dark, gain, ky, kx):  # pragma: no cover - compiled
    for dy in range(-1, 2):
        yy = y + dy
        if yy < 0 or yy >= ky:
            continue
        for dx in range(-1, 2):
            xx = x + dx
            if (dy == 0 and dx == 0) or xx < 0 or xx >= kx:
                continue
            w = _value(frames, f, yy, xx, dark, gain, kx)
            earlier = dy < 0 or (dy == 0 and dx < 0)
            if (earlier and w >= v) or (not earlier and w > v):
                return False
    return True


@numba.njit(cache=True, nogil=True)
def _count_kernel(frames, dark, gain, threshold, centroid, out, offsets, write):  # pragma: no cover
    n_frames, ky, kx = frames.shape
    pos = 0
    for f in range(n_frames):
        if not write:
            offsets[f] = pos
        for y in range(ky):
            for x in range(kx):
                v = _value(frames, f, y, x, dark, gain, kx)
                if not v >= threshold:
                    continue
                if centroid:
                    if not _is_peak(frames, f, y, x, v, dark, gain, ky, kx):
                        continue
                    n = 1
                else:
                    n = max(1, int(np.rint(v)))
                if write:
                    for _ in range(n):
                        out[pos] = y * kx + x
                        pos += 1
                else:
                    pos += n
    if not write:
        offsets[n_frames] = pos


def _count_numba(
    frames: np.ndarray, dark: np.ndarray, gain: np.ndarray, threshold: float, centroid: bool, count_dtype: np.dtype
) -> EventBlock:
    ny, nx, ky, kx = frames.shape
    stack = np.ascontiguousarray(frames).reshape(ny * nx, ky, kx)
    offsets = np.zeros(ny * nx + 1, np.int64)
    dummy = np.zeros(0, np.int64)
    _count_kernel(stack, dark, gain, threshold, centroid, dummy, offsets, False)
    out = np.empty(int(offsets[-1]), np.int64)
    _count_kernel(stack, dark, gain, threshold, centroid, out, offsets, True)
    return EventBlock(out.astype(index_dtype(ky * kx)), offsets, (ny, nx), (ky, kx), count_dtype, check=False)


def count_block_vectorised(
    frames: Any, dark: Any, gain: Any, threshold: float, centroid: bool, count_dtype: Any = np.uint16
) -> EventBlock:
    """The counting rule with array operations (numpy or cupy)."""
    xp = array_module(frames)
    ny, nx, ky, kx = frames.shape
    v = (frames.reshape(ny * nx, ky, kx).astype(np.float64) - xp.asarray(dark).reshape(ky, kx)) * xp.asarray(
        gain
    ).reshape(ky, kx)
    hit = v >= threshold
    if centroid:
        padded = xp.pad(v, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy == 0 and dx == 0:
                    continue
                w = padded[:, 1 + dy : 1 + dy + ky, 1 + dx : 1 + dx + kx]
                earlier = dy < 0 or (dy == 0 and dx < 0)
                hit &= (v > w) if earlier else (v >= w)
        n = hit.astype(np.int64)
    else:
        n = xp.where(hit, xp.maximum(xp.rint(v), 1), 0).astype(np.int64)
    return EventBlock.from_dense(n.reshape(ny, nx, ky, kx), count_dtype)


def _count_block(
    frames: Any, dark: np.ndarray, gain: np.ndarray, threshold: float, centroid: bool, count_dtype: Any
) -> EventBlock:
    if is_cupy(frames):
        return count_block_vectorised(frames, dark, gain, threshold, centroid, count_dtype)
    return _count_numba(np.asarray(frames), dark, gain, threshold, centroid, np.dtype(count_dtype))


def _per_pixel(name: str, value: Any, shape: tuple[int, int], default: float) -> np.ndarray:
    """A dark/gain reference as a float64 vector of the frame's pixels."""
    if value is None:
        return np.full(shape[0] * shape[1], default, np.float64)
    if isinstance(value, xr.DataArray):
        if value.ndim != 0 and tuple(value.dims) != DETECTOR_DIMS:
            raise bad_value(name, f"<DataArray with dims {value.dims}>", f"dims {DETECTOR_DIMS} or a scalar")
        value = value.values
    if isinstance(value, (bool, np.bool_)):
        raise bad_type(name, value, "a number or a (k_y, k_x) array")
    arr = np.asarray(value, dtype=np.float64) if not isinstance(value, da.Array) else value.compute()
    arr = np.asarray(arr, np.float64)
    if arr.ndim == 0:
        arr = np.full(shape, float(arr))
    if arr.shape != shape:
        raise bad_value(name, f"<array of shape {arr.shape}>", f"a scalar or a {shape} (k_y, k_x) array")
    if not np.all(np.isfinite(arr)):
        raise bad_value(name, "<array with non-finite values>", "finite values")
    return np.ascontiguousarray(arr.ravel())


def count_electrons(
    data: xr.DataArray,
    *,
    threshold: float,
    dark: Any = None,
    gain: Any = None,
    centroid: bool = False,
    dtype: Any = np.uint16,
) -> xr.DataArray:
    """Count electrons in dense frames and return a lazy counted dataset.

    Parameters
    ----------
    data : xarray.DataArray
        Dense stemdask dataset of raw detector frames (any numeric dtype).
    threshold : float
        Smallest corrected value ``(raw - dark) * gain`` that is an electron
        (in electrons when ``gain`` converts to electrons; ``1`` keeps the
        integer frames of a counting detector exactly).
    dark : float or array (k_y, k_x), optional
        Dark reference subtracted from every frame (detector units).
    gain : float or array (k_y, k_x), optional
        Per-pixel factor applied after the dark subtraction (electrons per
        detector unit).
    centroid : bool
        Count one electron per local 3x3 maximum (charge clusters) instead of
        ``round(value)`` electrons per pixel.
    dtype : integer dtype
        dtype of the dense counts the result stands for.

    Returns
    -------
    xarray.DataArray
        Counted dataset (chunks are :class:`EventBlock` s) with the dims,
        coords and attrs of ``data`` plus ``counting_threshold``,
        ``counting_centroid`` and ``units="electrons"``.
    """
    validate(data)
    require_whole_frames(data, "electron counting")
    threshold = number("threshold", threshold)  # in corrected detector units
    if not isinstance(centroid, (bool, np.bool_)):
        raise bad_type("centroid", centroid, "True or False")
    count_dtype = np.dtype(dtype)
    if count_dtype.kind not in "ui":
        raise bad_value("dtype", dtype, "an integer dtype for electron counts")
    if data.dtype.kind not in "uif":
        raise bad_value("data", f"<dataset of dtype {data.dtype}>", "real-valued detector frames")
    arr = dask_data(data)
    ky, kx = arr.shape[2:]
    dark_v = _per_pixel("dark", dark, (ky, kx), 0.0)
    gain_v = _per_pixel("gain", gain, (ky, kx), 1.0)
    events = da.map_blocks(
        _count_block,
        arr,
        dark=dark_v,
        gain=gain_v,
        threshold=float(threshold),
        centroid=bool(centroid),
        count_dtype=count_dtype,
        dtype=count_dtype,
        meta=event_meta((ky, kx), count_dtype),
    )
    attrs = dict(data.attrs)
    attrs.update(units="electrons", counting_threshold=float(threshold), counting_centroid=bool(centroid))
    return wrap_events(events, data, attrs=attrs)
