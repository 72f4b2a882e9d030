"""Pre-processing for direct ptychography: checks, beam centre, bright-field crop and detector binning.

SSB uses only the bright-field (BF) disk: sampling it with more than about
32 x 32 pixels does not improve the reconstruction (Pelz et al., IEEE Signal
Processing Magazine 39(1), 2022), so the detector is cropped to the disk
plus a margin and binned to at most ``max_pixels`` per side before the
Fourier transform over the scan. Counted data are cropped and binned in
O(counts) (:func:`stemdask.events.crop`, :func:`stemdask.events.bin_detector`)
and made dense only at the binned size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from ..checks import integer, number
from ..dataset import DETECTOR_DIMS, SCAN_DIMS, validate
from ..errors import InvalidArgumentError, MissingCalibrationError, bad_value

#: calibration SSB cannot do without, and where it comes from
_NEEDED = {
    "energy_ev": "the beam energy in eV",
    "semiangle_mrad": "the probe convergence semi-angle in mrad",
    "scan_step_A": "the scan step in Å",
    "detector_pixel_mrad": "the detector pixel size in mrad",
}


def check_input(data: xr.DataArray, operation: str = "SSB") -> xr.DataArray:
    """Check that ``data`` is a calibrated dataset whose detector holds the bright-field disk.

    Raises
    ------
    MissingCalibrationError
        Naming every missing calibration among ``energy_ev``,
        ``semiangle_mrad``, ``scan_step_A`` and ``detector_pixel_mrad``.
    InvalidArgumentError
        When the detector does not contain the bright-field disk (the
        semi-angle reaches beyond the detector's extent in mrad), or the scan
        has fewer than 2 x 2 positions.
    """
    validate(data)
    missing = [k for k in _NEEDED if k not in data.attrs]
    if missing:
        what = "; ".join(f"{k} ({_NEEDED[k]})" for k in missing)
        raise MissingCalibrationError(
            f"{operation} needs the calibration {missing} which the dataset does not carry: {what}; "
            f"set it with stemdask.calibrate(data, {missing[0]}=...)"
        )
    if min(int(data.sizes[d]) for d in SCAN_DIMS) < 2:
        raise bad_value("data", f"<scan of shape {tuple(int(data.sizes[d]) for d in SCAN_DIMS)}>", "a 2-D scan")
    alpha = float(data.attrs["semiangle_mrad"])
    for dim, pixel in zip(DETECTOR_DIMS, data.attrs["detector_pixel_mrad"]):
        k = np.asarray(data.coords[dim].values, np.float64)
        # the disk edge must lie on the detector (within half a pixel)
        if k.min() > -alpha + 0.5 * float(pixel) or k.max() < alpha - 0.5 * float(pixel):
            raise InvalidArgumentError(
                f"data={dim} spans {k.min():.4g}..{k.max():.4g} mrad around the beam centre, which does not "
                f"contain the bright-field disk of semiangle_mrad={alpha:g}: {operation} needs the whole disk "
                "on the detector (check beam_center_px, detector_pixel_mrad and semiangle_mrad)"
            )
    return data


def measured_center_mrad(data: xr.DataArray) -> tuple[float, float]:
    """The bright-field disk's centre (mrad, relative to the ``k`` origin), from the PACBED (computes)."""
    from ..imaging import beam_center

    centre = np.asarray(beam_center(data).values, np.float64)
    return float(centre[0]), float(centre[1])


def recenter(data: xr.DataArray, center_mrad: tuple[float, float]) -> xr.DataArray:
    """The same data with the ``k`` origin moved to ``center_mrad`` (coords and ``beam_center_px`` follow)."""
    out = data.assign_coords(
        {
            d: xr.Variable(d, np.asarray(data.coords[d].values, np.float64) - c, dict(data.coords[d].attrs))
            for d, c in zip(DETECTOR_DIMS, center_mrad)
        }
    )
    pixel = data.attrs["detector_pixel_mrad"]
    old = data.attrs.get("beam_center_px", [data.sizes[d] // 2 for d in DETECTOR_DIMS])
    out.attrs = {**data.attrs, "beam_center_px": [float(o) + c / float(p) for o, c, p in zip(old, center_mrad, pixel)]}
    return out


def _crop_size(coord: np.ndarray, half_mrad: float, pixel_mrad: float) -> int:
    """Pixels along one detector axis that cover ``±half_mrad`` around ``k = 0`` (at most the detector)."""
    return min(2 * int(math.ceil(half_mrad / pixel_mrad)) + 1, coord.size)


def _window(coord: np.ndarray, size: int, factor: int) -> tuple[int, int]:
    """Crop ``[start, stop)`` of ``size`` pixels rounded up to a multiple of ``factor``, centred on ``k = 0``."""
    n = coord.size
    size = min(int(math.ceil(size / factor)) * factor, (n // factor) * factor)
    centre = int(np.argmin(np.abs(coord)))
    start = min(max(centre - size // 2, 0), n - size)
    return start, start + size


def bright_field(
    data: xr.DataArray,
    *,
    margin: float = 0.25,
    max_pixels: int = 32,
    center: str = "calibrated",
) -> xr.DataArray:
    """Crop the detector to the bright-field disk plus a margin and bin it to at most ``max_pixels`` a side.

    Parameters
    ----------
    data : xarray.DataArray
        A calibrated stemdask dataset, dense or counted (see
        :func:`check_input`).
    margin : float
        Extra radius beyond the semi-angle, as a fraction of it (0.25: the
        crop spans ``±1.25 α``).
    max_pixels : int
        Largest number of binned pixels along each detector axis; the bin
        factor is the smallest that reaches it (one factor for both axes).
    center : {"calibrated", "measure"}
        Use the beam centre of the calibration (``k = 0``), or measure it
        from the PACBED's bright-field disk first (computes the PACBED).

    Returns
    -------
    xarray.DataArray
        A lazy dense dataset (float32) of the cropped, binned patterns with
        calibrated ``k`` coordinates (bin centres, mrad) and updated
        ``detector_pixel_mrad`` and ``beam_center_px``. Counted input is
        cropped and binned as events and densified only at this size.
    """
    from ..events import bin_detector, crop, is_counted, to_dense

    check_input(data)
    margin = number("margin", margin, allow_zero=True, expected="a non-negative fraction of the semi-angle")
    max_pixels = integer("max_pixels", max_pixels, minimum=4, expected="an integer >= 4 (pixels per detector axis)")
    if center == "measure":
        data = recenter(data, measured_center_mrad(data))
    elif center != "calibrated":
        raise bad_value("center", center, "'calibrated' or 'measure'")
    alpha = float(data.attrs["semiangle_mrad"])
    pixel = [float(p) for p in data.attrs["detector_pixel_mrad"]]
    coords = [np.asarray(data.coords[d].values, np.float64) for d in DETECTOR_DIMS]
    sizes = [_crop_size(c, alpha * (1 + margin), p) for c, p in zip(coords, pixel)]
    factor = max(1, *(int(math.ceil(n / max_pixels)) for n in sizes))
    (y0, y1), (x0, x1) = (_window(c, n, factor) for c, n in zip(coords, sizes))
    if is_counted(data):
        cropped = crop(data, k_y=slice(y0, y1), k_x=slice(x0, x1))
        binned = to_dense(bin_detector(cropped, factor) if factor > 1 else cropped)
        return binned.astype(np.float32, keep_attrs=True)
    cropped = data.isel(k_y=slice(y0, y1), k_x=slice(x0, x1))
    if factor > 1:
        binned = cropped.astype(np.float32).coarsen(k_y=factor, k_x=factor).sum()
        binned = binned.assign_coords(
            {
                d: xr.Variable(
                    d,
                    np.asarray(cropped.coords[d].values, np.float64).reshape(-1, factor).mean(axis=1),
                    dict(cropped.coords[d].attrs),
                )
                for d in DETECTOR_DIMS
            }
        )
    else:
        binned = cropped.astype(np.float32)
    attrs: dict[str, Any] = dict(data.attrs)
    attrs["detector_pixel_mrad"] = [p * factor for p in pixel]
    if "beam_center_px" in attrs:
        attrs["beam_center_px"] = [
            (float(c) - s - (factor - 1) / 2) / factor for c, s in zip(attrs["beam_center_px"], (y0, x0))
        ]
    binned.attrs = attrs
    return binned


__all__ = ["bright_field", "check_input", "measured_center_mrad", "recenter"]
