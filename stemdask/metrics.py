"""Quality and size measures shared by lossy compression and ptychography (Diederichs et al., Sec. 2.3).

* :func:`compression_ratio`: ``C = pixels / (n_bright + n_dark + 2)`` (Eq. 17),
  and :func:`storage_summary`, the same beside the bytes a store really takes;
* :func:`theta`: the angle between each pattern and its projection on the
  basis, per region (Eq. 18), as images; :func:`mean_theta_curve` its scan
  mean against the number of masks (Fig. 7) and :func:`plot_theta_curves`;
* :func:`fourier_shell_correlation`: the FSC of two images (Eq. 19, real part)
  with the half-bit threshold (van Heel & Schatz 2005).

Angles are in radians.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .checks import integer
from .dataset import SCAN_DIMS
from .errors import bad_type, bad_value

_REGIONS = ("bf", "df")


def _require_compressed(compressed: Any) -> xr.Dataset:
    from .compression.compress import require_compressed

    return require_compressed(compressed)


# ----------------------------------------------------------------------------
# storage
# ----------------------------------------------------------------------------
def compression_ratio(n_pixels: int, n_bright: int, n_dark: int, *, perpendicular: bool = True) -> float:
    """Eq. 17: detector pixels over the values stored per pattern.

    ``perpendicular`` counts the two c_perp values (``+ 2``); without them the
    ratio is ``pixels / (n_bright + n_dark)``.

    >>> round(compression_ratio(256 * 256, 15, 1), 1)
    3640.9
    >>> compression_ratio(256 * 256, 15, 1, perpendicular=False)
    4096.0
    """
    n_pixels = integer("n_pixels", n_pixels)
    n_bright = integer("n_bright", n_bright, minimum=0)
    n_dark = integer("n_dark", n_dark, minimum=0)
    stored = n_bright + n_dark + (2 if perpendicular else 0)
    if stored == 0:
        raise bad_value("n_bright + n_dark", 0, "at least one stored value per pattern")
    return n_pixels / stored


def storage_summary(compressed: xr.Dataset, store: str | os.PathLike | None = None) -> dict[str, Any]:
    """Eq. 17 for a compressed Dataset beside the real bytes (raw data, in memory, on disk).

    Returns a dict: ``n_bright``, ``n_dark``, ``n_pixels``, ``ratio_C``,
    ``ratio_C_without_perp``, ``raw_bytes`` (the source data at its dtype),
    ``coefficient_bytes`` (in memory) and, with ``store``, ``bytes_on_disk``
    and ``ratio_on_disk`` (raw bytes over them).
    """
    compressed = _require_compressed(compressed)
    labels = [str(v) for v in compressed.coords["basis_region"].values]
    ny, nx = (int(compressed.sizes[d]) for d in SCAN_DIMS)
    n_pixels = int(compressed.sizes["k_y"]) * int(compressed.sizes["k_x"])
    n_bf, n_df = labels.count("bf"), labels.count("df")
    itemsize = np.dtype(compressed.attrs.get("source_dtype", "uint16")).itemsize
    raw = ny * nx * n_pixels * itemsize
    per = int(compressed["coefficients"].dtype.itemsize) * (n_bf + n_df + 2)
    out: dict[str, Any] = {
        "n_bright": n_bf,
        "n_dark": n_df,
        "n_pixels": n_pixels,
        "ratio_C": compression_ratio(n_pixels, n_bf, n_df),
        "ratio_C_without_perp": compression_ratio(n_pixels, n_bf, n_df, perpendicular=False) if n_bf + n_df else None,
        "raw_bytes": raw,
        "coefficient_bytes": ny * nx * per,
    }
    if store is not None:
        from .io import store_nbytes

        on_disk = store_nbytes(store)
        out["bytes_on_disk"] = on_disk
        out["ratio_on_disk"] = raw / on_disk if on_disk else None
    return out


# ----------------------------------------------------------------------------
# Theta (Eq. 18)
# ----------------------------------------------------------------------------
def theta_from_norms(captured_sq: Any, total_sq: Any) -> Any:
    """``arccos(sqrt(captured / total))``: the angle between a vector and its projection.

    ``captured_sq`` is the squared norm of the projection (sum of c_i^2),
    ``total_sq`` the squared norm of the vector; 0 for a vector in the span,
    pi/2 for one orthogonal to it (and for a zero vector, which no basis
    describes). Works on numpy, dask and xarray objects.
    """
    total = np.maximum(total_sq, 0)
    ratio = np.where(total > 0, captured_sq / np.where(total > 0, total, 1), 0)
    return np.arccos(np.sqrt(np.clip(ratio, 0, 1)))


def _region_index(compressed: xr.Dataset, region: str) -> np.ndarray:
    if region not in _REGIONS:
        raise bad_value("region", region, f"one of {_REGIONS}")
    labels = np.asarray([str(v) for v in compressed.coords["basis_region"].values])
    return np.flatnonzero(labels == region)


def theta(compressed: xr.Dataset) -> xr.Dataset:
    """Θ_bright and Θ_dark of every pattern (Eq. 18) as lazy images ``(scan_y, scan_x)`` in rad.

    ``cos Θ = |c_region| / |d_region|`` with ``|d_region|^2 = |c_region|^2 + c_perp^2``
    (Eq. 11), so it comes from the compressed Dataset alone.
    """
    compressed = _require_compressed(compressed)
    out = {}
    for region in _REGIONS:
        index = _region_index(compressed, region)
        c = compressed["coefficients"].isel(basis=index)
        captured = (c**2).sum("basis")
        total = captured + compressed[f"c_perp_{region}"] ** 2
        angle = xr.apply_ufunc(theta_from_norms, captured, total, dask="allowed")
        name = "theta_bright" if region == "bf" else "theta_dark"
        out[name] = angle.assign_attrs(units="rad", long_name=f"angle to the {region.upper()} basis (Eq. 18)")
    return xr.Dataset(out, attrs={"compression_mode": compressed.attrs.get("compression_mode")})


def mean_theta_curve(compressed: xr.Dataset, region: str = "bf", *, where: Any = None) -> xr.DataArray:
    """Scan-mean Θ of ``region`` using the first 1, 2, ..., n masks of that region (Fig. 7).

    For nested bases (data, PCA, Zernike: the first k masks of a larger basis
    are the basis of k masks) one compression gives the whole curve: the
    captured norm with k masks is the cumulative sum of the first k squared
    coefficients. (Binning bases are not nested: give one point per tile size
    with :func:`mean_theta`.)

    ``where`` (bool ``(scan_y, scan_x)``, optional) averages over those
    positions only, e.g. to leave out the patterns a data basis was drawn
    from (for them Θ is 0 by construction).

    Returns
    -------
    xarray.DataArray
        ``(n_masks,)`` mean Θ in rad, coordinate ``n_masks`` = 1..n (computed).
    """
    compressed = _require_compressed(compressed)
    index = _region_index(compressed, region)
    if index.size == 0:
        raise bad_value("region", region, "a region with masks in this basis")
    c = compressed["coefficients"].isel(basis=index).data
    c = c if isinstance(c, da.Array) else da.from_array(np.asarray(c))
    captured = da.cumsum(c**2, axis=-1)
    perp = compressed[f"c_perp_{region}"].data
    total = captured[..., -1] + da.asarray(perp) ** 2
    angles = theta_from_norms(captured, total[..., None])
    if where is not None:
        keep = np.asarray(where.values if isinstance(where, xr.DataArray) else where, dtype=bool)
        if keep.shape != tuple(c.shape[:2]):
            raise bad_value("where", f"<mask of shape {keep.shape}>", f"a bool mask of the scan shape {c.shape[:2]}")
        angles = da.where(keep[..., None], angles, np.nan)
    mean = np.asarray(da.nanmean(angles, axis=(0, 1)).compute())
    return xr.DataArray(
        mean,
        dims=("n_masks",),
        coords={"n_masks": np.arange(1, index.size + 1)},
        attrs={
            "units": "rad",
            "long_name": f"mean Θ ({region.upper()})",
            "basis_kind": compressed.attrs.get("basis_kind"),
        },
        name=f"mean_theta_{region}",
    )


def mean_theta(compressed: xr.Dataset, region: str = "bf") -> float:
    """Scan-mean Θ of ``region`` with all the basis's masks of that region, in rad."""
    name = "theta_bright" if region == "bf" else "theta_dark"
    if region not in _REGIONS:
        raise bad_value("region", region, f"one of {_REGIONS}")
    return float(theta(compressed)[name].mean().compute())


def plot_theta_curves(curves: Mapping[str, Any], *, ax: Any = None, title: str | None = None) -> Any:
    """Mean Θ against the number of masks, one line per basis (Fig. 7); returns the axes.

    ``curves`` maps a label to a :func:`mean_theta_curve` result (or any 1-D
    DataArray with an ``n_masks`` coordinate, e.g. binning points). Angles
    are shown in degrees.
    """
    import matplotlib.pyplot as plt

    if not isinstance(curves, Mapping) or not curves:
        raise bad_type("curves", curves, "a non-empty mapping label -> mean-Θ curve")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    for label, curve in curves.items():
        if not isinstance(curve, xr.DataArray) or "n_masks" not in curve.coords:
            raise bad_type(f"curves[{label!r}]", curve, "a DataArray with an n_masks coordinate")
        ax.plot(curve.coords["n_masks"].values, np.degrees(curve.values), marker="o", ms=3, label=str(label))
    ax.set_xlabel("number of masks")
    ax.set_ylabel("mean Θ (degrees)")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


# ----------------------------------------------------------------------------
# Fourier shell (ring) correlation (Eq. 19)
# ----------------------------------------------------------------------------
def half_bit_threshold(n_pixels: Any) -> Any:
    """The half-bit threshold for a shell of ``n_pixels`` Fourier pixels (van Heel & Schatz 2005)."""
    n = np.sqrt(np.maximum(np.asarray(n_pixels, dtype=np.float64), 1.0))
    return (0.2071 + 1.9102 / n) / (1.2071 + 0.9102 / n)


def _image(name: str, image: Any) -> tuple[np.ndarray, tuple[float, float]]:
    if isinstance(image, xr.DataArray):
        values = np.asarray(image.values)
        steps = []
        for dim in image.dims:
            c = np.asarray(image.coords[dim].values, np.float64) if dim in image.coords else np.arange(2.0)
            steps.append(abs(float(c[1] - c[0])) if c.size > 1 else 1.0)
        spacing = (steps[0], steps[1]) if len(steps) == 2 else (1.0, 1.0)
    else:
        values = np.asarray(image)
        spacing = (1.0, 1.0)
    if values.ndim != 2 or min(values.shape) < 2:
        raise bad_value(name, f"<array of shape {values.shape}>", "a 2-D image")
    if not np.all(np.isfinite(values)):
        raise bad_value(name, "<image with NaN/inf>", "finite values")
    return values, spacing


def fourier_shell_correlation(
    image1: Any, image2: Any, *, n_shells: int | None = None, max_frequency: float | None = None
) -> xr.Dataset:
    """FSC of two images of one grid (Eq. 19, real part) with the half-bit threshold.

    ``FSC(q) = Re sum_{|k| in shell} F1* F2 / sqrt(sum |F1|^2 sum |F2|^2)``
    over rings of the 2-D Fourier transforms. Images may be complex (object
    transmission functions).

    Parameters
    ----------
    image1, image2 : array or xarray.DataArray
        2-D images of the same shape; a DataArray's coordinate spacing (Å,
        say) sets the frequency unit (1/Å), else 1/pixel.
    n_shells : int, optional
        Number of rings up to ``max_frequency`` (default half the smaller size).
    max_frequency : float, optional
        Largest frequency (default Nyquist of the coarser axis); the paper
        stops at 2 1/Å.

    Returns
    -------
    xarray.Dataset
        ``fsc``, ``half_bit`` and ``n_pixels`` per ring, coordinate ``q`` (ring
        centres).
    """
    a, spacing = _image("image1", image1)
    b, _ = _image("image2", image2)
    if a.shape != b.shape:
        raise bad_value("image2", f"<image of shape {b.shape}>", f"the shape of image1 {a.shape}")
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    qy = np.fft.fftfreq(a.shape[0], d=spacing[0])[:, None]
    qx = np.fft.fftfreq(a.shape[1], d=spacing[1])[None, :]
    q = np.hypot(qy, qx)
    nyquist = min(0.5 / spacing[0], 0.5 / spacing[1])
    q_max = nyquist if max_frequency is None else float(max_frequency)
    if not (math.isfinite(q_max) and q_max > 0):
        raise bad_value("max_frequency", max_frequency, "a positive frequency")
    shells = integer("n_shells", n_shells) if n_shells is not None else max(2, min(a.shape) // 2)
    edges = np.linspace(0.0, q_max, shells + 1)
    ring = np.digitize(q.ravel(), edges) - 1
    keep = (ring >= 0) & (ring < shells)
    ring = ring[keep]
    cross = np.bincount(ring, weights=(np.conj(fa) * fb).real.ravel()[keep], minlength=shells)
    pa = np.bincount(ring, weights=(np.abs(fa) ** 2).ravel()[keep], minlength=shells)
    pb = np.bincount(ring, weights=(np.abs(fb) ** 2).ravel()[keep], minlength=shells)
    counts = np.bincount(ring, minlength=shells)
    denom = np.sqrt(pa * pb)
    fsc = np.where(denom > 0, cross / np.where(denom > 0, denom, 1), np.nan)
    centres = 0.5 * (edges[:-1] + edges[1:])
    unit = "1/px"
    if isinstance(image1, xr.DataArray) and image1.dims and image1.dims[0] in image1.coords:
        units = image1.coords[image1.dims[0]].attrs.get("units")
        unit = f"1/{units}" if units else unit
    return xr.Dataset(
        {
            "fsc": ("q", fsc, {"long_name": "Fourier shell correlation (real part)"}),
            "half_bit": ("q", half_bit_threshold(counts), {"long_name": "half-bit threshold"}),
            "n_pixels": ("q", counts),
        },
        coords={"q": ("q", centres, {"units": unit, "long_name": "spatial frequency"})},
    )


__all__ = [
    "compression_ratio",
    "fourier_shell_correlation",
    "half_bit_threshold",
    "mean_theta",
    "mean_theta_curve",
    "plot_theta_curves",
    "storage_summary",
    "theta",
    "theta_from_norms",
]
