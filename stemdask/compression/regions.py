"""Detector regions of a compressed dataset: bright field, dark field and the unmeasured rest.

Following Diederichs et al. (the compression paper, Sec. 2.2 and Fig. 1c), a
diffraction pattern is split into three non-overlapping regions, each in mrad
from the dataset's calibration and beam centre:

* bright field (BF): the disc ``r <= bf_radius_mrad`` (default: the probe's
  semi-angle ``semiangle_mrad``);
* dark field (DF): the annulus ``bf_radius_mrad < r <= df_outer_mrad``
  (default: the whole detector beyond the BF disc);
* unmeasured: everything else (pixels shadowed by a HAADF detector, say),
  which a compressed dataset does not store.

The discs and annuli are :mod:`stemdask.imaging.detectors` masks (a pixel
belongs to a shape when its centre does), so a region here is the same set of
pixels a virtual detector of the same radii integrates.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from ..checks import close, number
from ..dataset import DETECTOR_DIMS, require
from ..errors import MissingCalibrationError, bad_type, bad_value
from ..imaging import detectors

#: names of the regions, in the order ``basis_region`` uses them
REGIONS = ("bf", "df")


def require_calibrated_detector(data: Any, name: str = "data") -> None:
    """Raise unless ``data``'s detector coordinates are in mrad (a calibrated detector).

    Regions and bases are defined in scattering angle; on an uncalibrated
    detector (``k`` in pixels) a radius in mrad means nothing.
    """
    if not isinstance(data, (xr.DataArray, xr.Dataset)):
        raise bad_type(name, data, "a stemdask dataset (xarray.DataArray with k_y, k_x coordinates)")
    for dim in DETECTOR_DIMS:
        if dim not in data.coords:
            raise bad_value(name, f"<object without coordinate {dim!r}>", "a dataset with k_y and k_x coordinates")
        units = data.coords[dim].attrs.get("units")
        if units != "mrad":
            raise MissingCalibrationError(
                f"{name} has an uncalibrated detector ({dim} in {units!r}, not 'mrad'): compression regions "
                f"and bases are in mrad; set detector_pixel_mrad with stemdask.calibrate(data, detector_pixel_mrad=...)"
            )


def require_same_detector_as(
    name: str,
    other: xr.DataArray,
    data: xr.DataArray,
    *,
    kind: str,
    shape_expected: str,
    coords_expected: str,
    hint: str,
) -> None:
    """Raise unless ``other`` has ``data``'s detector: its shape, and ``k_y``/``k_x`` with their units.

    The error names ``name`` (a basis, a prior scan: ``kind``); ``shape_expected``
    and ``coords_expected`` begin the expected text for a wrong shape and
    wrong coordinates, ``hint`` ends the latter.
    """
    want = tuple(int(data.sizes[d]) for d in DETECTOR_DIMS)
    have = tuple(int(other.sizes[d]) for d in DETECTOR_DIMS)
    if want != have:
        raise bad_value(name, f"<{kind} of detector shape {have}>", f"{shape_expected} detector shape {want}")
    for dim in DETECTOR_DIMS:
        mine, theirs = other.coords[dim], data.coords[dim]
        if mine.attrs.get("units") != theirs.attrs.get("units") or not close(
            mine.values, theirs.values, rtol=1e-6, atol=1e-9
        ):
            raise bad_value(
                f"{name}.coords[{dim!r}]",
                f"<{mine.attrs.get('units')} {np.asarray(mine.values)[:3]}...>",
                f"{coords_expected} {dim} ({theirs.attrs.get('units')} {np.asarray(theirs.values)[:3]}...): {hint}",
            )


def detector_regions(
    data: Any,
    *,
    bf_radius_mrad: float | None = None,
    df_outer_mrad: float = math.inf,
    center_mrad: Any = None,
) -> xr.Dataset:
    """The bright-field, dark-field and unmeasured regions of a dataset's detector.

    Parameters
    ----------
    data : xarray.DataArray
        A calibrated stemdask dataset (``k_y``/``k_x`` in mrad), or anything
        with its detector coordinates.
    bf_radius_mrad : float, optional
        Radius of the BF disc; default the dataset's ``semiangle_mrad``.
    df_outer_mrad : float
        Outer radius of the DF annulus; default ``inf`` (the whole detector
        beyond the BF disc).
    center_mrad : (float, float), optional
        Beam centre (y, x) relative to the coordinate origin (default the
        origin, i.e. the dataset's ``beam_center_px``).

    Returns
    -------
    xarray.Dataset
        Boolean ``bf_region``, ``df_region`` and ``unmeasured_region``
        ``(k_y, k_x)`` with the dataset's detector coordinates; attrs
        ``bf_radius_mrad``, ``df_outer_mrad`` (``inf`` as the string
        ``"inf"``), ``center_mrad``.

    Raises
    ------
    MissingCalibrationError
        For an uncalibrated detector, or no ``bf_radius_mrad`` and no
        ``semiangle_mrad``.
    InvalidArgumentError
        For radii that leave a region without pixels.
    """
    require_calibrated_detector(data)
    if bf_radius_mrad is None:
        if "semiangle_mrad" not in data.attrs:
            require(data, "semiangle_mrad")  # raises, naming the calibration
        bf_radius_mrad = float(data.attrs["semiangle_mrad"])
    bf = number("bf_radius_mrad", bf_radius_mrad)
    if isinstance(df_outer_mrad, bool) or not isinstance(df_outer_mrad, (int, float, np.integer, np.floating)):
        raise bad_type("df_outer_mrad", df_outer_mrad, "a real number of mrad (or inf)")
    outer = float(df_outer_mrad)
    if not outer > bf:
        raise bad_value("df_outer_mrad", df_outer_mrad, f"an angle larger than bf_radius_mrad={bf}")
    try:
        bf_mask = detectors.disk(data, bf, center_mrad=center_mrad, name="bf").values[0]
    except ValueError as err:
        raise bad_value("bf_radius_mrad", bf_radius_mrad, f"a BF disc that covers detector pixels ({err})") from None
    try:
        df_mask = detectors.annulus(data, bf, outer, center_mrad=center_mrad, name="df").values[0]
    except ValueError as err:
        raise bad_value(
            "df_outer_mrad", df_outer_mrad, f"a DF annulus that covers detector pixels beyond the BF disc ({err})"
        ) from None
    coords = {d: data.coords[d] for d in DETECTOR_DIMS}
    centre = [0.0, 0.0] if center_mrad is None else [float(v) for v in np.asarray(center_mrad).ravel()]
    attrs = {"bf_radius_mrad": bf, "df_outer_mrad": outer if math.isfinite(outer) else "inf", "center_mrad": centre}
    return xr.Dataset(
        {
            "bf_region": (DETECTOR_DIMS, bf_mask, {"long_name": "bright field"}),
            "df_region": (DETECTOR_DIMS, df_mask, {"long_name": "dark field"}),
            "unmeasured_region": (DETECTOR_DIMS, ~(bf_mask | df_mask), {"long_name": "not stored"}),
        },
        coords=coords,
        attrs=attrs,
    )


def region_mask(regions: xr.Dataset, region: str) -> np.ndarray:
    """The boolean ``(k_y, k_x)`` mask of ``region`` ("bf" or "df") from :func:`detector_regions`."""
    if region not in REGIONS:
        raise bad_value("region", region, f"one of {REGIONS}")
    if not isinstance(regions, xr.Dataset) or f"{region}_region" not in regions:
        raise bad_type("regions", regions, "the xarray.Dataset of stemdask.compression.detector_regions")
    return np.asarray(regions[f"{region}_region"].values, dtype=bool)


def polar_mrad(regions: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Radius (mrad) and azimuth (rad, from +k_x towards +k_y) of every pixel about the regions' centre."""
    cy, cx = regions.attrs.get("center_mrad", [0.0, 0.0])
    ky = np.asarray(regions.coords["k_y"].values, dtype=np.float64)[:, None] - cy
    kx = np.asarray(regions.coords["k_x"].values, dtype=np.float64)[None, :] - cx
    ky, kx = np.broadcast_arrays(ky, kx)
    return np.hypot(ky, kx), np.arctan2(ky, kx)


__all__ = ["REGIONS", "detector_regions", "polar_mrad", "region_mask", "require_calibrated_detector"]
