"""Virtual detectors as mask stacks ``(mask, k_y, k_x)`` in calibrated units.

Every builder takes the dataset (or anything with its ``k_y``/``k_x``
coordinates, e.g. a PACBED) and returns an :class:`xarray.DataArray` of
weights with dims ``("mask", "k_y", "k_x")``, ready for
:func:`stemdask.imaging.project`. Angles are in mrad, measured from the
dataset's beam centre (the origin of its ``k`` coordinates); for an
uncalibrated dataset, whose ``k`` coordinates are detector pixels, the same
numbers are read as pixels.

Geometry conventions (the same for every builder):

* a pixel belongs to a shape when its centre does;
* radial ranges are ``inner < r <= outer`` (a disk is ``r <= radius``), so a
  disk of radius R and an annulus (R, R2) tile the disk of radius R2, and
  :func:`rings` tile their whole range without overlap;
* the azimuth ``phi = atan2(k_y, k_x)`` counts from +k_x towards +k_y;
  segment ``i`` of :func:`segments` spans
  ``[rotation + i 2pi/n, rotation + (i+1) 2pi/n)``.

Builders record their recipe in ``attrs["detector"]`` so that
:func:`shifted` can redraw them exactly at another centre (descan
correction); arbitrary masks from :func:`custom` are shifted by linear
interpolation instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from ..checks import integer
from ..dataset import DETECTOR_DIMS
from ..errors import bad_type, bad_value

_EPS = 1e-9


def _axes(data: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """The k_y, k_x coordinate values and their units from a dataset-like object."""
    if not isinstance(data, (xr.DataArray, xr.Dataset)):
        raise bad_type("data", data, "a stemdask dataset or DataArray with k_y, k_x coordinates")
    for dim in DETECTOR_DIMS:
        if dim not in data.coords:
            raise bad_value(
                "data",
                f"<object without coordinate {dim!r}>",
                "an object with k_y and k_x coordinates (a stemdask dataset or PACBED)",
            )
    ky = np.asarray(data.coords["k_y"].values, dtype=np.float64)
    kx = np.asarray(data.coords["k_x"].values, dtype=np.float64)
    units = data.coords["k_x"].attrs.get("units", "mrad")
    return ky, kx, units


def _center(center_mrad: Any) -> tuple[float, float]:
    if center_mrad is None:
        return 0.0, 0.0
    if isinstance(center_mrad, xr.DataArray):
        center_mrad = center_mrad.values
    arr = np.asarray(center_mrad, dtype=np.float64).ravel() if not isinstance(center_mrad, str) else None
    if arr is None or arr.size != 2 or not np.all(np.isfinite(arr)):
        raise bad_value("center_mrad", center_mrad, "a finite (y, x) pair in mrad")
    return float(arr[0]), float(arr[1])


def _radius(name: str, value: Any, *, allow_zero: bool = False, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise bad_type(name, value, "a real number of mrad")
    v = float(value)
    if math.isnan(v) or v < 0 or (v == 0 and not allow_zero) or (math.isinf(v) and not allow_inf):
        raise bad_value(
            name, value, "a positive finite angle in mrad" if not allow_zero else "a non-negative angle in mrad"
        )
    return v


def _grid(ky: np.ndarray, kx: np.ndarray, center: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    return (ky - center[0])[:, None], (kx - center[1])[None, :]


def _render(
    spec: dict[str, Any], ky: np.ndarray, kx: np.ndarray, offset: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """Draw the masks of a recipe, centred at its centre plus ``offset`` (mrad)."""
    center = (spec["center_mrad"][0] + offset[0], spec["center_mrad"][1] + offset[1])
    y, x = _grid(ky, kx, center)
    kind = spec["kind"]
    if kind == "rings":
        r = np.hypot(y, x)
        edges = spec["edges_mrad"]
        out = [
            (r > lo * (1 + _EPS)) & (r <= hi * (1 + _EPS)) if lo > 0 else (r <= hi * (1 + _EPS))
            for lo, hi in zip(edges[:-1], edges[1:])
        ]
        return np.stack(out)
    if kind == "segments":
        r = np.hypot(y, x)
        inner, outer, n = spec["inner_mrad"], spec["outer_mrad"], spec["n"]
        radial = (r <= outer * (1 + _EPS)) & ((r > inner * (1 + _EPS)) if inner > 0 else True)
        phi = np.mod(np.arctan2(y, x) - math.radians(spec["rotation_deg"]), 2 * math.pi)
        index = np.minimum((phi / (2 * math.pi / n)).astype(np.int64), n - 1)
        return np.stack([radial & (index == i) for i in range(n)])
    if kind == "rectangle":
        (y0, y1), (x0, x1) = spec["y_mrad"], spec["x_mrad"]
        yy = np.broadcast_to(y, (ky.size, kx.size))
        xx = np.broadcast_to(x, (ky.size, kx.size))
        return ((yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1))[None]
    raise bad_value("detector kind", kind, "one of 'rings', 'segments', 'rectangle'")


def _masks(data: Any, spec: dict[str, Any], names: Sequence[str], name: str) -> xr.DataArray:
    ky, kx, units = _axes(data)
    values = _render(spec, ky, kx)
    out = xr.DataArray(
        values,
        dims=("mask", *DETECTOR_DIMS),
        coords={"mask": list(names), "k_y": data.coords["k_y"], "k_x": data.coords["k_x"]},
        attrs={"detector": spec, "units": units, "long_name": f"{name} detector"},
        name=name,
    )
    empty = [n for n, m in zip(names, values) if not m.any()]
    if empty:
        raise bad_value(
            name,
            f"<{spec}>",
            f"masks that cover at least one pixel; {empty} cover none (detector spans "
            f"k_y {ky.min():.4g}..{ky.max():.4g}, k_x {kx.min():.4g}..{kx.max():.4g} {units})",
        )
    return out


def disk(data: Any, radius_mrad: float, *, center_mrad: Any = None, name: str = "BF") -> xr.DataArray:
    """A bright-field disk ``r <= radius_mrad`` around the beam centre.

    Parameters
    ----------
    data : xarray.DataArray
        The dataset (or anything with its k_y, k_x coordinates).
    radius_mrad : float
        Radius in mrad.
    center_mrad : (float, float), optional
        Centre (y, x) relative to the coordinate origin, e.g. a measured
        :func:`~stemdask.imaging.beam_center`; default the origin.
    name : str
        The mask's label.

    Returns
    -------
    xarray.DataArray
        Boolean masks ``(mask, k_y, k_x)`` with one mask.
    """
    r = _radius("radius_mrad", radius_mrad)
    spec = {"kind": "rings", "edges_mrad": [0.0, r], "center_mrad": list(_center(center_mrad))}
    return _masks(data, spec, [name], name)


def annulus(
    data: Any, inner_mrad: float, outer_mrad: float, *, center_mrad: Any = None, name: str = "ADF"
) -> xr.DataArray:
    """An annular detector ``inner_mrad < r <= outer_mrad`` (ABF, ADF, HAADF).

    ``outer_mrad`` may be ``inf`` (everything beyond ``inner_mrad``).
    """
    inner = _radius("inner_mrad", inner_mrad, allow_zero=True)
    outer = _radius("outer_mrad", outer_mrad, allow_inf=True)
    if not outer > inner:
        raise bad_value("outer_mrad", outer_mrad, f"an angle larger than inner_mrad={inner_mrad}")
    spec = {"kind": "rings", "edges_mrad": [inner, outer], "center_mrad": list(_center(center_mrad))}
    return _masks(data, spec, [name], name)


def rings(data: Any, edges_mrad: Sequence[float], *, center_mrad: Any = None, name: str = "rings") -> xr.DataArray:
    """``n`` concentric rings between ``n + 1`` increasing edges (mrad).

    Ring ``i`` is ``edges[i] < r <= edges[i+1]`` (the first includes r = 0
    when ``edges[0] == 0``). Mask labels are ``"lo-hi"`` in mrad; the
    coordinate ``r_mrad`` holds the ring centres.
    """
    edges = np.asarray(edges_mrad, dtype=np.float64).ravel()
    if (
        edges.size < 2
        or not np.all(np.isfinite(edges[:-1]))
        or np.isnan(edges[-1])
        or edges[0] < 0
        or not np.all(np.diff(edges) > 0)
    ):
        raise bad_value("edges_mrad", edges_mrad, "at least two increasing non-negative angles in mrad")
    spec = {"kind": "rings", "edges_mrad": [float(e) for e in edges], "center_mrad": list(_center(center_mrad))}
    labels = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]
    out = _masks(data, spec, labels, name)
    centres = 0.5 * (edges[:-1] + np.where(np.isinf(edges[1:]), edges[:-1], edges[1:]))
    return out.assign_coords(r_mrad=("mask", centres, {"units": "mrad", "long_name": "ring centre"}))


def segments(
    data: Any,
    n: int,
    *,
    inner_mrad: float = 0.0,
    outer_mrad: float = math.inf,
    rotation_deg: float = 0.0,
    center_mrad: Any = None,
    name: str = "segments",
) -> xr.DataArray:
    """``n`` equal azimuthal segments of an annulus (``n=4``: DPC quadrants).

    Segment ``i`` spans azimuths ``[rotation + i 360/n, rotation + (i+1) 360/n)``
    degrees, counted from +k_x towards +k_y; its centre direction is in the
    coordinate ``phi_deg``.
    """
    n = integer("n", n, minimum=2, expected="an integer number of segments >= 2")
    inner = _radius("inner_mrad", inner_mrad, allow_zero=True)
    outer = _radius("outer_mrad", outer_mrad, allow_inf=True)
    if not outer > inner:
        raise bad_value("outer_mrad", outer_mrad, f"an angle larger than inner_mrad={inner_mrad}")
    rot = float(rotation_deg)
    if not math.isfinite(rot):
        raise bad_value("rotation_deg", rotation_deg, "a finite angle in degrees")
    spec = {
        "kind": "segments",
        "n": int(n),
        "inner_mrad": inner,
        "outer_mrad": outer,
        "rotation_deg": rot,
        "center_mrad": list(_center(center_mrad)),
    }
    out = _masks(data, spec, [f"{name}{i}" for i in range(n)], name)
    phi = rot + (np.arange(n) + 0.5) * 360.0 / n
    return out.assign_coords(phi_deg=("mask", phi, {"units": "deg", "long_name": "segment centre azimuth"}))


def rectangle(
    data: Any, y_mrad: Sequence[float], x_mrad: Sequence[float], *, center_mrad: Any = None, name: str = "rectangle"
) -> xr.DataArray:
    """A rectangle ``y0 <= k_y < y1``, ``x0 <= k_x < x1`` (mrad, relative to the centre)."""
    pairs = []
    for label, pair in (("y_mrad", y_mrad), ("x_mrad", x_mrad)):
        arr = np.asarray(pair, dtype=np.float64).ravel()
        if arr.size != 2 or np.any(np.isnan(arr)) or not arr[1] > arr[0]:
            raise bad_value(label, pair, "an increasing (low, high) pair in mrad")
        pairs.append([float(arr[0]), float(arr[1])])
    spec = {"kind": "rectangle", "y_mrad": pairs[0], "x_mrad": pairs[1], "center_mrad": list(_center(center_mrad))}
    return _masks(data, spec, [name], name)


def custom(data: Any, weights: Any, *, names: Sequence[str] | None = None, name: str = "custom") -> xr.DataArray:
    """Arbitrary boolean or weighted masks ``(k_y, k_x)`` or ``(mask, k_y, k_x)``.

    Raises for a wrong shape, non-finite weights or a mask that is zero
    everywhere.
    """
    _, _, units = _axes(data)
    if isinstance(weights, xr.DataArray):
        weights = weights.values
    arr = np.asarray(weights)
    if arr.dtype.kind not in "biuf":
        raise bad_value("weights", f"<array of dtype {arr.dtype}>", "boolean or real-valued weights")
    if arr.ndim == 2:
        arr = arr[None]
    shape = (data.sizes["k_y"], data.sizes["k_x"])
    if arr.ndim != 3 or arr.shape[1:] != shape:
        raise bad_value(
            "weights",
            f"<array of shape {np.shape(weights)}>",
            f"shape {shape} or (n_masks, *{shape}) matching the detector",
        )
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise bad_value("weights", "<array with NaN/inf>", "finite weights")
    labels = (
        list(names) if names is not None else [f"{name}{i}" if arr.shape[0] > 1 else name for i in range(arr.shape[0])]
    )
    if len(labels) != arr.shape[0]:
        raise bad_value("names", names, f"{arr.shape[0]} labels, one per mask")
    empty = [lab for lab, m in zip(labels, arr) if not np.any(m)]
    if empty:
        raise bad_value("weights", f"<masks {empty} zero everywhere>", "every mask to cover at least one pixel")
    return xr.DataArray(
        arr,
        dims=("mask", *DETECTOR_DIMS),
        coords={"mask": labels, "k_y": data.coords["k_y"], "k_x": data.coords["k_x"]},
        attrs={"units": units, "long_name": f"{name} detector"},
        name=name,
    )


def stack(*masks: xr.DataArray, name: str = "detectors") -> xr.DataArray:
    """Concatenate mask stacks along ``mask`` (labels must be unique)."""
    if not masks:
        raise bad_value("masks", masks, "at least one mask stack")
    for i, m in enumerate(masks):
        if not isinstance(m, xr.DataArray) or "mask" not in m.dims:
            raise bad_type(f"masks[{i}]", m, "a (mask, k_y, k_x) DataArray from stemdask.imaging.detectors")
    labels = [str(v) for m in masks for v in m.coords["mask"].values]
    if len(set(labels)) != len(labels):
        raise bad_value("masks", labels, "unique mask labels (pass name=... to the builders)")
    plain = [m.drop_vars([c for c in m.coords if c not in ("mask", *DETECTOR_DIMS)]).astype(np.float64) for m in masks]
    out = xr.concat(plain, dim="mask", combine_attrs="drop")
    out.attrs = {
        "units": masks[0].attrs.get("units"),
        "long_name": "stacked detectors",
        "parts": [m.attrs.get("detector") for m in masks],
    }
    return out.rename(name)


def shifted(masks: xr.DataArray, offset_mrad: Sequence[float]) -> np.ndarray:
    """The masks' weights ``(mask, k_y, k_x)`` with the centre moved by ``offset_mrad`` (y, x).

    Masks from the builders are redrawn exactly; stacked or custom masks are
    shifted by linear interpolation (pixels shifted in from outside are 0).
    """
    dy, dx = _center(offset_mrad)
    ky = np.asarray(masks.coords["k_y"].values, dtype=np.float64)
    kx = np.asarray(masks.coords["k_x"].values, dtype=np.float64)
    spec = masks.attrs.get("detector")
    parts = masks.attrs.get("parts")
    if spec is not None:
        return _render(spec, ky, kx, (dy, dx)).astype(np.float64)
    if parts and all(p is not None for p in parts):
        return np.concatenate([_render(p, ky, kx, (dy, dx)).astype(np.float64) for p in parts])
    from scipy import ndimage

    step_y = float(ky[1] - ky[0]) if ky.size > 1 else 1.0
    step_x = float(kx[1] - kx[0]) if kx.size > 1 else 1.0
    values = np.asarray(masks.values, dtype=np.float64)
    return np.stack([ndimage.shift(m, (dy / step_y, dx / step_x), order=1, mode="constant", cval=0.0) for m in values])


__all__ = ["annulus", "custom", "disk", "rectangle", "rings", "segments", "shifted", "stack"]
