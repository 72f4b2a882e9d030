"""O(counts) operations on counted datasets (Pelz et al. 2022, Table I).

Every operation touches each electron once (plus, at most, one pass over the
detector pixels to build a lookup table), never the empty pixels of every
frame:

* the gather kernel ``weights[index]`` summed per frame, which the imaging
  engine uses for every mask projection of event blocks (virtual detectors,
  CoM, PACBED and radial profiles go through :mod:`stemdask.imaging`, which
  takes dense and counted data alike; see ``events/project.py``);
* radial sums: a pixel -> radius-bin lookup table and a histogram per frame;
* frame sums: a histogram of all indices;
* detector binning and cropping: a pixel -> pixel lookup table;
* scan binning: a reordering of whole frames.

Results equal the dense path exactly for integer counts (integer outputs are
int64; projections accumulate in float64, exact up to 2**53). Blocks whose
events live on a GPU (CuPy arrays) run the same operations with CuPy.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import xarray as xr

from ..checks import integer, number
from ..dataset import DETECTOR_DIMS, SCAN_DIMS
from ..errors import bad_type, bad_value
from .array import require_counted, wrap_events
from .block import EventBlock


# ----------------------------------------------------------------------------
# per-block kernels
# ----------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _gather_sum(indices, offsets, weights, out):  # pragma: no cover - compiled
    n = weights.shape[1]
    for f in range(offsets.shape[0] - 1):
        for i in range(offsets[f], offsets[f + 1]):
            p = indices[i]
            for m in range(n):
                out[f, m] += weights[p, m]


@numba.njit(cache=True, nogil=True)
def _gather_sum1(indices, offsets, weights, out):  # pragma: no cover - compiled
    for f in range(offsets.shape[0] - 1):
        acc = out[f]
        for i in range(offsets[f], offsets[f + 1]):
            acc += weights[indices[i]]
        out[f] = acc


@numba.njit(cache=True, nogil=True)
def _moments(indices, offsets, rows, cols, out):  # pragma: no cover - compiled
    for f in range(offsets.shape[0] - 1):
        sy = 0
        sx = 0
        for i in range(offsets[f], offsets[f + 1]):
            p = indices[i]
            sy += rows[p]
            sx += cols[p]
        out[f, 0] = offsets[f + 1] - offsets[f]
        out[f, 1] = sy
        out[f, 2] = sx


def moments_block(block: EventBlock) -> Any:
    """Exact first moments per frame: electrons, sum of rows, sum of columns (int64).

    The engine's kernel for affine masks (centre of mass) on events.
    """
    ky, kx = block.frame_shape
    if block.xp is not np:
        rows, cols = np.divmod(np.arange(ky * kx, dtype=np.int64), kx)
        return gather_block_vectorised(block, np.stack([np.ones(ky * kx, np.int64), rows, cols], 1), np.int64)
    rows, cols = np.divmod(np.arange(ky * kx, dtype=np.int32), np.int32(max(kx, 1)))
    out = np.zeros((block.n_frames, 3), np.int64)
    _moments(block.indices, block.offsets, rows, cols, out)
    return out.reshape(*block.scan_shape, 3)


def gather_block(block: EventBlock, weights: Any, dtype: Any = np.float64) -> Any:
    """``out[f, m] = sum of weights[index, m]`` over the electrons of frame ``f``.

    ``weights`` is a ``(pixels, n_masks)`` matrix; returns
    ``(scan_y, scan_x, n_masks)`` of ``dtype`` on the block's backend.
    """
    dtype = np.dtype(dtype)
    n = weights.shape[1]
    if block.xp is not np:  # CuPy: the array-operation gather (no numba)
        return gather_block_vectorised(block, weights, dtype)
    w = np.ascontiguousarray(weights, dtype=dtype)
    out = np.zeros((block.n_frames, n), dtype)
    if block.n_events:
        if n == 1:  # a virtual detector: a contiguous weight vector, no inner loop
            flat = np.zeros(block.n_frames, dtype)
            _gather_sum1(block.indices, block.offsets, np.ascontiguousarray(w[:, 0]), flat)
            out[:, 0] = flat
        else:
            _gather_sum(block.indices, block.offsets, w, out)
    return out.reshape(*block.scan_shape, n)


def gather_block_vectorised(block: EventBlock, weights: Any, dtype: Any = np.float64) -> Any:
    """The gather with array operations (numpy or cupy), no atomics.

    Events are grouped by frame (CSR), so a frame's sum is a difference of a
    running sum of ``weights[index]`` at its offsets: exact for integer (and
    integer-valued float) weights; for real weights the rounding error is of
    order ``eps x`` the block's total.
    """
    xp = block.xp
    dtype = np.dtype(dtype)
    w = xp.asarray(weights, dtype=dtype)
    n = w.shape[1]
    running = xp.zeros((block.n_events + 1, n), dtype)
    if block.n_events:
        xp.cumsum(w[block.indices.astype(np.int64)], axis=0, out=running[1:])
    out = running[block.offsets[1:]] - running[block.offsets[:-1]]
    return out.reshape(*block.scan_shape, n)


@numba.njit(cache=True, nogil=True)
def _histogram_kernel(indices, offsets, lut, out):  # pragma: no cover - compiled
    for f in range(offsets.shape[0] - 1):
        for i in range(offsets[f], offsets[f + 1]):
            b = lut[indices[i]]
            if b >= 0:
                out[f, b] += 1


def _histogram_block(block: EventBlock, lut: Any, n_bins: int) -> Any:
    """Electrons per (frame, bin) through a pixel -> bin table (-1: not counted)."""
    xp = block.xp
    if xp is np:
        out = np.zeros((block.n_frames, n_bins), np.int64)
        _histogram_kernel(block.indices, block.offsets, np.asarray(lut, np.int64), out)
        return out.reshape(*block.scan_shape, n_bins)
    bins = xp.asarray(lut)[block.indices.astype(np.int64)]
    keep = bins >= 0
    flat = block.frame_ids()[keep] * n_bins + bins[keep]
    out = (
        xp.bincount(flat, minlength=block.n_frames * n_bins)
        if flat.size
        else xp.zeros(block.n_frames * n_bins, np.int64)
    )
    return out.astype(np.int64).reshape(*block.scan_shape, n_bins)


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def _scan_coords(data: xr.DataArray) -> dict[str, Any]:
    return {d: data.coords[d] for d in SCAN_DIMS}


# ----------------------------------------------------------------------------
# public operations
# ----------------------------------------------------------------------------
def frame_sum(counted: xr.DataArray) -> xr.DataArray:
    """Sum of all frames (PACBED) ``(k_y, k_x)`` in electrons (int64), O(counts)."""
    counted = require_counted(counted, "counted")
    total = counted.data.sum(axis=(0, 1), dtype=np.int64)
    attrs = {k: v for k, v in counted.attrs.items() if k != "representation"}
    attrs["long_name"] = "sum of all frames"
    return xr.DataArray(
        total, dims=DETECTOR_DIMS, coords={d: counted.coords[d] for d in DETECTOR_DIMS}, attrs=attrs, name="frame_sum"
    )


def total_counts(counted: xr.DataArray) -> xr.DataArray:
    """Electrons per frame ``(scan_y, scan_x)`` (int64): the all-pixel detector, O(frames)."""
    counted = require_counted(counted, "counted")
    total = counted.data.sum(axis=(2, 3), dtype=np.int64)
    attrs = {k: v for k, v in counted.attrs.items() if k != "representation"}
    return xr.DataArray(total, dims=SCAN_DIMS, coords=_scan_coords(counted), attrs=attrs, name="total_counts")


def radial_sum(counted: xr.DataArray, *, bin_width: float | None = None, n_bins: int | None = None) -> xr.DataArray:
    """Electrons per radial bin of every frame, ``(scan_y, scan_x, radius)`` int64.

    The radius of a pixel is ``hypot(k_y, k_x)`` of its centre (mrad when
    calibrated, else pixels); bin ``i`` holds ``i*w <= r < (i+1)*w``.

    Parameters
    ----------
    bin_width : float, optional
        Width ``w`` of a bin in the units of the ``k`` coordinates; default
        one detector pixel (the smaller of the y/x steps).
    n_bins : int, optional
        Number of bins; default enough to hold every pixel. Pixels beyond the
        last bin are not counted (a ranged radial sum).
    """
    counted = require_counted(counted, "counted")
    ky = np.asarray(counted.coords["k_y"].values, np.float64)
    kx = np.asarray(counted.coords["k_x"].values, np.float64)
    r = np.hypot(ky[:, None], kx[None, :]).ravel()
    if bin_width is None:
        steps = [abs(c[1] - c[0]) for c in (ky, kx) if c.size > 1]
        bin_width = min(steps) if steps else 1.0
    bin_width = number("bin_width", bin_width, expected="a positive finite width in the units of k")
    bins = np.floor(r / float(bin_width)).astype(np.int64)
    if n_bins is None:
        n_bins = int(bins.max()) + 1
    n_bins = integer("n_bins", n_bins)
    lut = np.where(bins < n_bins, bins, -1)
    arr = counted.data
    out = arr.map_blocks(
        _radial_block,
        lut=lut,
        n_bins=n_bins,
        drop_axis=(2, 3),
        new_axis=2,
        chunks=(arr.chunks[0], arr.chunks[1], (n_bins,)),
        dtype=np.int64,
        meta=np.empty((0, 0, 0), np.int64),
    )
    units = counted.coords["k_x"].attrs.get("units", "px")
    coords = _scan_coords(counted)
    coords["radius"] = xr.Variable(
        "radius",
        (np.arange(n_bins) + 0.5) * float(bin_width),
        {"units": units, "long_name": "radius (bin centre)", "bin_width": float(bin_width)},
    )
    attrs = {k: v for k, v in counted.attrs.items() if k != "representation"}
    attrs["units"] = "electrons"
    return xr.DataArray(out, dims=(*SCAN_DIMS, "radius"), coords=coords, attrs=attrs, name="radial_sum")


def _radial_block(block: EventBlock, lut: np.ndarray, n_bins: int) -> Any:
    return _histogram_block(block, lut, n_bins)


def _factor(name: str, factor: Any, sizes: dict[str, int]) -> int:
    factor = integer(name, factor)
    for dim, n in sizes.items():
        if n % factor:
            raise bad_value(name, factor, f"a divisor of {dim}={n} (crop first: nothing is dropped silently)")
    return int(factor)


def _binned_coord(coord: xr.DataArray, factor: int) -> xr.Variable:
    values = np.asarray(coord.values, np.float64).reshape(-1, factor).mean(axis=1)
    return xr.Variable(coord.dims, values, dict(coord.attrs))


def _remap_block(block: EventBlock, lut: np.ndarray, frame_shape: tuple[int, int]) -> EventBlock:
    return block.remap_pixels(block.xp.asarray(lut), frame_shape)


def bin_detector(counted: xr.DataArray, factor: int) -> xr.DataArray:
    """Sum ``factor x factor`` detector pixels, O(counts); returns a counted dataset.

    ``k_y``/``k_x`` must be multiples of ``factor``. Coordinates become the
    bin centres; ``detector_pixel_mrad`` and ``beam_center_px`` follow.
    """
    counted = require_counted(counted, "counted")
    ky, kx = (int(counted.sizes[d]) for d in DETECTOR_DIMS)
    f = _factor("factor", factor, {"k_y": ky, "k_x": kx})
    ny, nx = ky // f, kx // f
    rows, cols = np.meshgrid(np.arange(ky), np.arange(kx), indexing="ij")
    lut = ((rows // f) * nx + cols // f).ravel().astype(np.int64)
    arr = counted.data
    out_dtype = np.dtype(counted.dtype)
    events = arr.map_blocks(
        _remap_block,
        lut=lut,
        frame_shape=(ny, nx),
        chunks=(arr.chunks[0], arr.chunks[1], (ny,), (nx,)),
        dtype=out_dtype,
        meta=EventBlock.empty((ny, nx), out_dtype),
    )
    coords = _scan_coords(counted)
    for d in DETECTOR_DIMS:
        coords[d] = _binned_coord(counted.coords[d], f)
    attrs = dict(counted.attrs)
    if "detector_pixel_mrad" in attrs:
        attrs["detector_pixel_mrad"] = [float(p) * f for p in attrs["detector_pixel_mrad"]]
    if "beam_center_px" in attrs:
        attrs["beam_center_px"] = [(float(c) - (f - 1) / 2) / f for c in attrs["beam_center_px"]]
    return wrap_events(events, coords=coords, attrs=attrs, name=counted.name)


def _bin_scan_block(block: EventBlock, factor: int) -> EventBlock:
    ny, nx = block.scan_shape
    oy, ox = ny // factor, nx // factor
    grid = np.arange(block.n_frames, dtype=np.int64).reshape(oy, factor, ox, factor)
    ids = grid.transpose(0, 2, 1, 3).ravel()  # frames of one output position together
    taken = block.take_frames(block.xp.asarray(ids), (1, ids.size))
    offsets = taken.offsets[:: factor * factor]
    return EventBlock(taken.indices, offsets, (oy, ox), block.frame_shape, block.dtype, check=False)


def bin_scan(counted: xr.DataArray, factor: int) -> xr.DataArray:
    """Sum the frames of ``factor x factor`` scan positions, O(counts).

    ``scan_y``/``scan_x`` must be multiples of ``factor``; chunks are
    rechunked to multiples of ``factor`` where needed (event blocks join
    without densifying). ``scan_step_A`` and the coordinates follow.
    """
    counted = require_counted(counted, "counted")
    sizes = {d: int(counted.sizes[d]) for d in SCAN_DIMS}
    f = _factor("factor", factor, sizes)
    arr = counted.data
    if any(c % f for axis in (0, 1) for c in arr.chunks[axis]):
        target = tuple(max(f, (arr.chunks[a][0] // f) * f) for a in (0, 1))
        arr = arr.rechunk((target[0], target[1], -1, -1))
    events = arr.map_blocks(
        _bin_scan_block,
        factor=f,
        chunks=(
            tuple(c // f for c in arr.chunks[0]),
            tuple(c // f for c in arr.chunks[1]),
            arr.chunks[2],
            arr.chunks[3],
        ),
        dtype=arr.dtype,
        meta=arr._meta,
    )
    coords = {d: _binned_coord(counted.coords[d], f) for d in SCAN_DIMS}
    for d in DETECTOR_DIMS:
        coords[d] = counted.coords[d]
    attrs = dict(counted.attrs)
    if "scan_step_A" in attrs:
        attrs["scan_step_A"] = [float(s) * f for s in attrs["scan_step_A"]]
    if "scan_origin_A" in attrs:  # the first binned position is the mean of its f x f positions
        attrs["scan_origin_A"] = [
            float(coords[d].values[0]) if counted.coords[d].attrs.get("units") == "Å" else float(o)
            for d, o in zip(SCAN_DIMS, attrs["scan_origin_A"])
        ]
    if "dose_e_per_pattern" in attrs:
        attrs["dose_e_per_pattern"] = float(attrs["dose_e_per_pattern"]) * f * f
    return wrap_events(events, coords=coords, attrs=attrs, name=counted.name)


def crop(counted: xr.DataArray, *, k_y: slice = slice(None), k_x: slice = slice(None)) -> xr.DataArray:
    """Keep a rectangle of detector pixels (pixel index slices, step 1), O(counts).

    Electrons outside are dropped by request; ``beam_center_px`` follows the
    new origin so the ``k`` coordinates stay centred on the beam.
    """
    counted = require_counted(counted, "counted")
    starts = []
    for name, sel, dim in (("k_y", k_y, "k_y"), ("k_x", k_x, "k_x")):
        if not isinstance(sel, slice):
            raise bad_type(name, sel, "a slice of detector pixel indices")
        start, stop, step = sel.indices(int(counted.sizes[dim]))
        if step != 1 or stop <= start:
            raise bad_value(name, sel, "a non-empty slice with step 1 (bin with bin_detector)")
        starts.append(start)
    out = counted.isel(k_y=k_y, k_x=k_x)
    if "beam_center_px" in out.attrs:
        # a new attrs dict: never touch the input's
        centre = [float(c) - s for c, s in zip(out.attrs["beam_center_px"], starts)]
        out.attrs = {**out.attrs, "beam_center_px": centre}
    return out


def scan_crop(counted: xr.DataArray, *, scan_y: slice = slice(None), scan_x: slice = slice(None)) -> xr.DataArray:
    """Keep a rectangle of scan positions (O(selected counts)); lazy.

    ``scan_origin_A`` follows the first kept position.
    """
    counted = require_counted(counted, "counted")
    out = counted.isel(scan_y=scan_y, scan_x=scan_x)
    if (
        "scan_origin_A" in out.attrs
        and out.sizes["scan_y"]
        and out.sizes["scan_x"]
        and out.coords["scan_y"].attrs.get("units") == "Å"
    ):
        out.attrs = {**out.attrs, "scan_origin_A": [float(out.coords[d].values[0]) for d in SCAN_DIMS]}
    return out


__all__ = [
    "bin_detector",
    "bin_scan",
    "crop",
    "frame_sum",
    "gather_block",
    "gather_block_vectorised",
    "moments_block",
    "radial_sum",
    "scan_crop",
    "total_counts",
]
