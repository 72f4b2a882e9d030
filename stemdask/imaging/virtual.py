"""Virtual images, PACBED, radial profiles and the beam centre.

All lazy: they return dask-backed DataArrays; call ``.compute()`` (or
``.values``) to run them on the active dask scheduler or cluster.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..dataset import DETECTOR_DIMS, SCAN_DIMS, dask_data, require_whole_frames, validate
from ..errors import bad_type, bad_value
from . import detectors
from .project import (
    BATCH_BYTES,
    MaskWeights,
    check_masks,
    project_block,
    project_checked,
    resolve_dtype,
    whole_frames,
)


def _shifted_block(
    block: Any, shift: Any, masks: xr.DataArray, quantum: tuple[float, float], dtype: Any, batch_bytes: int
) -> Any:
    """Project a block with masks re-centred per pattern (shifts quantised to ``quantum``).

    Dense blocks (numpy, cupy) and electron-event blocks alike: the frames of
    one shift are selected (events by ``take_frames``, O(their electrons),
    never densified) and projected by the engine's kernel.
    """
    from ..backend import array_module, to_numpy

    block, shift = whole_frames(block), whole_frames(shift)  # blockwise(concatenate=False): no copy
    events = hasattr(block, "take_frames")  # an EventBlock (imaging does not import events)
    xp = block.xp if events else array_module(block)
    ny, nx = block.shape[:2]
    frames = None if events else block.reshape(ny * nx, 1, *block.shape[2:])
    steps = np.rint(to_numpy(shift).reshape(-1, 2) / np.asarray(quantum)).astype(np.int64)
    keys, inverse = np.unique(steps, axis=0, return_inverse=True)
    out = xp.empty((ny * nx, masks.sizes["mask"]), dtype=dtype)
    for i, key in enumerate(keys):
        rows = np.flatnonzero(inverse.ravel() == i)
        values = detectors.shifted(masks, (key[0] * quantum[0], key[1] * quantum[1]))
        w = MaskWeights(
            np.ascontiguousarray(values.reshape(values.shape[0], -1).T),
            n_masks=values.shape[0],
            n_pixels=values[0].size,
        )
        if frames is None:  # events
            sel = block.take_frames(xp.asarray(rows), (1, rows.size))
        else:
            sel = frames[xp.asarray(rows)] if xp is not np else frames[rows]
        out[xp.asarray(rows) if xp is not np else rows] = project_block(
            sel, w, dtype=dtype, batch_bytes=batch_bytes
        ).reshape(rows.size, -1)
    return out.reshape(ny, nx, -1)


def virtual_image(
    data: xr.DataArray,
    detector: xr.DataArray,
    *,
    shifts: xr.DataArray | None = None,
    shift_step_px: float = 0.25,
    dtype: Any = "float64",
    batch_bytes: int = BATCH_BYTES,
) -> xr.DataArray:
    """Virtual detector image(s): the weighted sum of every pattern over each mask.

    Parameters
    ----------
    data : xarray.DataArray
        A stemdask dataset ``(scan_y, scan_x, k_y, k_x)``.
    detector : xarray.DataArray
        Masks ``(mask, k_y, k_x)`` from :mod:`stemdask.imaging.detectors`
        (or any weights of that shape).
    shifts : xarray.DataArray, optional
        Per-pattern beam position ``(scan_y, scan_x, component=["y", "x"])`` in
        mrad relative to the coordinate origin (descan), e.g. from
        :func:`stemdask.imaging.fit_descan`. The masks follow the beam: each
        chunk's patterns are grouped by their shift rounded to
        ``shift_step_px`` pixels and each group is projected onto masks
        redrawn at that centre.
    shift_step_px : float
        Rounding step of ``shifts`` in detector pixels.
    dtype : {"float64", "float32"}
        Accumulation dtype (float64 is exact for integer counts).
    batch_bytes : int
        Bytes of frames converted to floating point at a time.

    Returns
    -------
    xarray.DataArray
        Lazy image ``(scan_y, scan_x)`` for a single mask, else
        ``(scan_y, scan_x, mask)``; in the data's units (e.g. counts).
    """
    validate(data)
    masks = check_masks(detector, data)
    resolve_dtype(dtype)
    name = str(masks.name or "virtual_image")
    if shifts is None:
        out = project_checked(
            data, masks, dtype=dtype, batch_bytes=batch_bytes, squeeze=True, long_name="virtual image", name=name
        )
    else:
        out = _project_shifted(data, masks, shifts, shift_step_px, resolve_dtype(dtype), batch_bytes)
        out.attrs["long_name"] = "virtual image"
        out = out.rename(name)
        out = out.isel(mask=0) if out.sizes["mask"] == 1 else out
    out.attrs["detector"] = masks.attrs.get("detector", masks.attrs.get("parts"))
    return out


def _project_shifted(
    data: xr.DataArray, masks: xr.DataArray, shifts: xr.DataArray, step_px: float, dtype: Any, batch_bytes: int
) -> xr.DataArray:
    if not isinstance(shifts, xr.DataArray):
        raise bad_type("shifts", shifts, "a (scan_y, scan_x, component) DataArray of beam shifts in mrad")
    if (
        tuple(shifts.dims) != (*SCAN_DIMS, "component")
        or shifts.sizes["component"] != 2
        or tuple(shifts.shape[:2]) != tuple(data.shape[:2])
    ):
        raise bad_value(
            "shifts",
            f"<DataArray dims {shifts.dims} shape {shifts.shape}>",
            f"dims (scan_y, scan_x, component) with shape {(*data.shape[:2], 2)}",
        )
    if not (isinstance(step_px, (int, float)) and 0 < step_px <= 1):
        raise bad_value("shift_step_px", step_px, "a rounding step in (0, 1] detector pixels")
    ky = data.coords["k_y"].values
    kx = data.coords["k_x"].values
    quantum = (abs(float(ky[1] - ky[0])) * step_px, abs(float(kx[1] - kx[0])) * step_px)
    arr = dask_data(data)
    require_whole_frames(arr, "a virtual image with shifts")
    shift_arr = shifts.data if isinstance(shifts.data, da.Array) else da.from_array(np.asarray(shifts.data))
    shift_arr = shift_arr.astype(np.float64).rechunk((arr.chunks[0], arr.chunks[1], 2))
    if not isinstance(shifts.data, da.Array) and not np.all(np.isfinite(shifts.values)):
        raise bad_value("shifts", "<shifts with NaN/inf>", "finite shifts in mrad")
    plain = masks.copy(deep=False)
    plain_d = dask.delayed(plain, pure=True, traverse=False)
    out = da.blockwise(
        _shifted_block,
        "yxm",
        arr,
        "yxab",
        shift_arr,
        "yxc",
        plain_d,
        None,
        quantum,
        None,
        dtype,
        None,
        int(batch_bytes),
        None,
        new_axes={"m": masks.sizes["mask"]},
        concatenate=False,
        dtype=dtype,
        meta=np.empty((0, 0, 0), dtype=dtype),
    )
    coords = {d: data.coords[d] for d in SCAN_DIMS}
    coords["mask"] = masks.coords["mask"]
    attrs = dict(data.attrs)
    attrs["shift_step_px"] = float(step_px)
    return xr.DataArray(out, dims=(*SCAN_DIMS, "mask"), coords=coords, attrs=attrs)


def pacbed(data: xr.DataArray, reduce: str = "mean") -> xr.DataArray:
    """Position-averaged CBED: the patterns reduced over all probe positions.

    Parameters
    ----------
    data : xarray.DataArray
        A stemdask dataset, dense or counted (for electron events the sums
        and the maximum are O(counts) histograms of the events).
    reduce : {"mean", "sum", "max"}
        ``"mean"`` and ``"sum"`` accumulate in float64 (no overflow);
        ``"max"`` keeps the data's dtype.

    Returns
    -------
    xarray.DataArray
        Lazy ``(k_y, k_x)`` pattern with the dataset's detector coordinates.
    """
    validate(data)
    arr = dask_data(data)
    if reduce == "mean":
        out = arr.sum(axis=(0, 1), dtype=np.float64) / float(data.shape[0] * data.shape[1])
    elif reduce == "sum":
        out = arr.sum(axis=(0, 1), dtype=np.float64)
    elif reduce == "max":
        out = arr.max(axis=(0, 1))
    else:
        raise bad_value("reduce", reduce, "'mean', 'sum' or 'max'")
    attrs = {k: v for k, v in data.attrs.items() if k != "representation"}
    attrs["long_name"] = f"PACBED ({reduce} over probe positions)"
    return xr.DataArray(
        out, dims=DETECTOR_DIMS, coords={d: data.coords[d] for d in DETECTOR_DIMS}, attrs=attrs, name="pacbed"
    )


def radial_profile(
    data: xr.DataArray, bins_mrad: Any, *, center_mrad: Any = None, statistic: str = "mean", dtype: Any = "float64"
) -> xr.DataArray:
    """Azimuthally averaged (or summed) intensity in rings.

    Parameters
    ----------
    data : xarray.DataArray
        A dataset ``(scan_y, scan_x, k_y, k_x)`` (one profile per pattern,
        through the projection engine) or a single pattern ``(k_y, k_x)``
        such as a :func:`pacbed`.
    bins_mrad : sequence of float or int
        Ring edges in mrad (``n + 1`` increasing values), or a number of
        equal rings from 0 to the largest radius inside the detector.
    center_mrad : (float, float), optional
        Ring centre relative to the coordinate origin.
    statistic : {"mean", "sum"}
        Mean intensity per pixel in each ring, or the ring's sum.

    Returns
    -------
    xarray.DataArray
        Lazy profile with a trailing dim ``k_r`` whose coordinate is the ring
        centre in mrad (``k_r_lo``/``k_r_hi`` hold the edges).
    """
    if statistic not in ("mean", "sum"):
        raise bad_value("statistic", statistic, "'mean' or 'sum'")
    if not isinstance(data, xr.DataArray):
        raise bad_type("data", data, "a stemdask dataset or a (k_y, k_x) pattern")
    if isinstance(bins_mrad, (int, np.integer)) and not isinstance(bins_mrad, bool):
        if bins_mrad < 1:
            raise bad_value("bins_mrad", bins_mrad, "a positive number of rings or increasing edges")
        cy, cx = detectors._center(center_mrad)
        ky, kx = data.coords["k_y"].values, data.coords["k_x"].values
        rmax = min(cy - ky.min(), ky.max() - cy, cx - kx.min(), kx.max() - cx)
        if not rmax > 0:
            raise bad_value("center_mrad", center_mrad, "a centre inside the detector")
        bins_mrad = np.linspace(0.0, rmax, int(bins_mrad) + 1)
    masks = detectors.rings(data, bins_mrad, center_mrad=center_mrad)
    edges = np.asarray(masks.attrs["detector"]["edges_mrad"])
    counts = masks.sum(dim=DETECTOR_DIMS).values.astype(np.float64)
    if tuple(data.dims) == DETECTOR_DIMS:
        w = masks.values.reshape(masks.sizes["mask"], -1).astype(np.float64)
        arr = data.data
        flat = arr.reshape(-1) if isinstance(arr, da.Array) else np.asarray(arr).reshape(-1)
        sums = flat.astype(np.float64) @ w.T
        prof = xr.DataArray(sums, dims=("mask",), coords={"mask": masks.coords["mask"]}, attrs=dict(data.attrs))
    else:
        validate(data)
        prof = project_checked(data, check_masks(masks, data), dtype=dtype)
    if statistic == "mean":
        prof = prof / xr.DataArray(counts, dims=("mask",))
    prof = prof.rename({"mask": "k_r"}).drop_vars(["k_r", "r_mrad"], errors="ignore")
    prof = prof.assign_coords(
        k_r=("k_r", masks.coords["r_mrad"].values, {"units": "mrad", "long_name": "ring centre"}),
        k_r_lo=("k_r", edges[:-1], {"units": "mrad"}),
        k_r_hi=("k_r", edges[1:], {"units": "mrad"}),
        pixels=("k_r", counts),
    )
    prof.attrs = dict(data.attrs)
    prof.attrs["long_name"] = f"radial profile ({statistic} per ring)"
    return prof.rename("radial_profile")


def beam_center(data: xr.DataArray, *, threshold: float = 0.5) -> xr.DataArray:
    """The position of the unscattered beam, from the PACBED's bright-field disk.

    The centre of mass of the mean pattern over the pixels brighter than
    ``threshold`` times its maximum (the BF disk), so that dark-field
    intensity does not pull it.

    Returns
    -------
    xarray.DataArray
        Lazy ``(component,)`` = ``["y", "x"]`` in the units of the detector
        coordinates (mrad) relative to their origin. Pass it as
        ``center_mrad`` to the detector builders; ``data.coords`` origin +
        this value is the measured beam position.
    """
    if not (isinstance(threshold, (int, float)) and 0 <= threshold < 1):
        raise bad_value("threshold", threshold, "a fraction of the maximum in [0, 1)")
    mean = pacbed(data, "mean").data
    weights = da.where(mean > threshold * mean.max(), mean, 0.0)
    total = weights.sum()
    ky = da.from_array(np.asarray(data.coords["k_y"].values, dtype=np.float64))
    kx = da.from_array(np.asarray(data.coords["k_x"].values, dtype=np.float64))
    cy = (weights.sum(axis=1) * ky).sum() / total
    cx = (weights.sum(axis=0) * kx).sum() / total
    units = data.coords["k_x"].attrs.get("units", "mrad")
    return xr.DataArray(
        da.stack([cy, cx]),
        dims=("component",),
        coords={"component": ["y", "x"]},
        attrs={"units": units, "long_name": "beam centre"},
        name="beam_center",
    )


__all__ = ["beam_center", "pacbed", "radial_profile", "virtual_image"]
