"""Comparison of a reconstructed phase with a ground truth: registration and correlation.

The reconstruction's frame (the scan coordinates) and the truth's (the
sample cell) differ by a translation and the phase by a constant (the
global phase is not measured): :func:`phase_correlation` band-limits the
reconstruction to the object grid's 2/3-Nyquist disc (where the simulator's
truth lives), cuts the illuminated region, finds the sub-pixel shift that
best aligns the truth (cross-correlation peak, then a Nelder-Mead refinement
of the correlation with cubic-spline interpolation of the truth) and returns
the Pearson correlation, which removes the mean, i.e. the global phase.
:func:`registered_fsc` gives the Fourier shell correlation of the same
registered pair (:func:`stemdask.metrics.fourier_shell_correlation`, the one
FSC of the package).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.fft
import scipy.ndimage
import scipy.optimize
import xarray as xr

from ..errors import bad_value
from ..optics import bandlimit


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def band_limited(image: np.ndarray, fraction: float = 2.0 / 3.0) -> np.ndarray:
    """``image`` (real, 2-D) with its spectrum cut to ``fraction`` of Nyquist (the anti-aliasing disc)."""
    spectrum = scipy.fft.fft2(image - image.mean()) * bandlimit(image.shape, fraction)
    return np.real(scipy.fft.ifft2(spectrum)) + image.mean()


def phase_correlation(
    phase: xr.DataArray,
    truth: xr.DataArray,
    *,
    region_A: tuple[float, float, float, float] | None = None,
    margin_A: float = 1.0,
    search_A: float | None = None,
) -> dict[str, Any]:
    """Correlation of a reconstructed phase with the truth after sub-pixel registration.

    Parameters
    ----------
    phase : DataArray (y, x)
        Reconstructed phase (rad), coordinates in Å (e.g. ``result.phase_total``).
    truth : DataArray (y, x)
        True phase on the same sampling (e.g. the angle of the simulator's
        ``transmission`` summed over slices), coordinates in Å.
    region_A : (y0, y1, x0, x1), optional
        The region of ``phase`` to compare (Å); default the whole array less ``margin_A``.
    margin_A : float
        Border left out of the default region.
    search_A : float, optional
        Largest shift searched (Å); default: any.

    Returns
    -------
    dict
        ``r`` (the correlation), ``shift_A`` (y, x): where the region's origin
        lies in the truth's frame minus where it lies in the reconstruction's,
        ``aligned_truth`` (the truth resampled on the region), ``region`` (the
        band-limited reconstruction on the region).
    """
    dy = float(phase.y[1] - phase.y[0])
    dx = float(phase.x[1] - phase.x[0])
    ty = float(truth.y[1] - truth.y[0])
    tx = float(truth.x[1] - truth.x[0])
    if not (np.isclose(dy, ty, rtol=1e-6) and np.isclose(dx, tx, rtol=1e-6)):
        raise bad_value(
            "truth", f"sampling ({ty:.4g}, {tx:.4g}) Å", f"the reconstruction's sampling ({dy:.4g}, {dx:.4g}) Å"
        )
    image = band_limited(np.asarray(phase.values, dtype=np.float64))
    y, x = phase.y.values, phase.x.values
    if region_A is None:
        region_A = (y[0] + margin_A, y[-1] - margin_A, x[0] + margin_A, x[-1] - margin_A)
    iy = np.nonzero((y >= region_A[0]) & (y <= region_A[1]))[0]
    ix = np.nonzero((x >= region_A[2]) & (x <= region_A[3]))[0]
    if iy.size < 4 or ix.size < 4:
        raise bad_value("region_A", region_A, "a region of at least 4 x 4 pixels inside the reconstruction")
    roi = image[iy[0] : iy[-1] + 1, ix[0] : ix[-1] + 1]
    ref = np.asarray(truth.values, dtype=np.float64)
    if roi.shape[0] > ref.shape[0] or roi.shape[1] > ref.shape[1]:
        raise bad_value("truth", f"<{ref.shape} pixels>", f"a truth at least as large as the region {roi.shape}")
    # integer shift: the cross-correlation peak of the zero-mean images (roi zero-padded to the truth)
    pad = np.zeros_like(ref)
    pad[: roi.shape[0], : roi.shape[1]] = roi - roi.mean()
    xc = np.real(scipy.fft.ifft2(scipy.fft.fft2(ref - ref.mean()) * np.conj(scipy.fft.fft2(pad))))
    valid = np.zeros_like(xc, dtype=bool)
    valid[: ref.shape[0] - roi.shape[0] + 1, : ref.shape[1] - roi.shape[1] + 1] = True
    if search_A is not None:
        gy = truth.y.values[: xc.shape[0]] - y[iy[0]]
        gx = truth.x.values[: xc.shape[1]] - x[ix[0]]
        valid &= (np.abs(gy)[:, None] <= search_A) & (np.abs(gx)[None, :] <= search_A)
    xc[~valid] = -np.inf
    py, px = np.unravel_index(int(np.argmax(xc)), xc.shape)
    grid_y, grid_x = np.mgrid[0 : roi.shape[0], 0 : roi.shape[1]].astype(np.float64)

    def aligned(s: np.ndarray) -> np.ndarray:
        return scipy.ndimage.map_coordinates(ref, [grid_y + s[0], grid_x + s[1]], order=3, mode="nearest")

    best = scipy.optimize.minimize(
        lambda s: -_pearson(roi, aligned(s)),
        np.array([py, px], dtype=np.float64),
        method="Nelder-Mead",
        options={"xatol": 1e-3, "fatol": 1e-7, "initial_simplex": [[py, px], [py + 0.5, px], [py, px + 0.5]]},
    )
    s = best.x
    shift = (float(truth.y[0]) + s[0] * dy - float(y[iy[0]]), float(truth.x[0]) + s[1] * dx - float(x[ix[0]]))
    return {"r": -float(best.fun), "shift_A": shift, "aligned_truth": aligned(s), "region": roi}


def registered_fsc(
    phase: xr.DataArray,
    truth: xr.DataArray,
    *,
    region_A: tuple[float, float, float, float] | None = None,
    margin_A: float = 1.0,
    n_shells: int | None = None,
) -> xr.Dataset:
    """Fourier shell correlation of a reconstructed phase with the truth, registered as in :func:`phase_correlation`.

    The band-limited reconstruction on the region and the truth resampled on
    it (the sub-pixel shift of :func:`phase_correlation`), each less its mean
    (the global phase is not measured), go to
    :func:`stemdask.metrics.fourier_shell_correlation` (rings in 1/Å).

    Parameters
    ----------
    phase, truth, region_A, margin_A
        As for :func:`phase_correlation`.
    n_shells : int, optional
        Rings up to Nyquist (default half the region's smaller size).

    Returns
    -------
    xarray.Dataset
        ``fsc``, ``half_bit`` and ``n_pixels`` per ring ``q`` (1/Å); attrs
        ``r`` (the phase correlation) and ``shift_A``.
    """
    from ..metrics import fourier_shell_correlation

    match = phase_correlation(phase, truth, region_A=region_A, margin_A=margin_A)
    dy = float(phase.y[1] - phase.y[0])
    dx = float(phase.x[1] - phase.x[0])
    images = []
    for image in (match["region"], match["aligned_truth"]):
        ny, nx = image.shape
        coords = {
            "y": xr.Variable("y", np.arange(ny) * dy, {"units": "Å"}),
            "x": xr.Variable("x", np.arange(nx) * dx, {"units": "Å"}),
        }
        images.append(xr.DataArray(image - image.mean(), coords=coords, dims=("y", "x")))
    out = fourier_shell_correlation(images[0], images[1], n_shells=n_shells)
    out.attrs.update({"r": match["r"], "shift_A": list(match["shift_A"])})
    return out
