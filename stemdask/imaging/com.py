"""Centre of mass (CoM) of every pattern, descan removal, scan rotation and flip.

Conventions
-----------
* :func:`center_of_mass` returns a DataArray ``(scan_y, scan_x, component)``
  with ``component = ["y", "x"]``: the intensity-weighted mean scattering
  angle of each pattern in the units of the detector coordinates (mrad),
  relative to their origin (the beam centre of the dataset's calibration).
* For a thin specimen with phase ``phi`` (rad) the CoM shift is
  ``theta = lambda / (2 pi) * grad(phi)`` (rad); it points towards higher
  phase, i.e. towards atomic nuclei. The projected in-plane electric field
  is ``E = -grad(V) = -grad(phi) / sigma`` (V, i.e. V/Å integrated along the
  beam over Å); :func:`electric_field` converts.
* Scan rotation: CoM vectors measured on the detector are brought into the
  scan frame by first negating the y component if ``flip`` and then
  rotating by ``rotation_deg``:
  ``x' = cos(t) x - sin(t) y``, ``y' = sin(t) x + cos(t) y``.
"""

from __future__ import annotations

import math
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..dataset import DETECTOR_DIMS, SCAN_DIMS, validate
from ..errors import MissingCalibrationError, bad_type, bad_value
from ..physics import interaction_constant, wavelength_A
from .project import BATCH_BYTES, check_masks, project_checked


def _com_masks(data: xr.DataArray, mask: xr.DataArray | None) -> xr.DataArray:
    ky = np.asarray(data.coords["k_y"].values, dtype=np.float64)
    kx = np.asarray(data.coords["k_x"].values, dtype=np.float64)
    if mask is None:
        w = np.ones((ky.size, kx.size))
    else:
        m = check_masks(mask, data)
        if m.sizes["mask"] != 1:
            raise bad_value("mask", f"<{m.sizes['mask']} masks>", "a single mask (k_y, k_x) or (1, k_y, k_x)")
        w = np.asarray(m.values[0], dtype=np.float64)
    weights = np.stack([w * ky[:, None], w * kx[None, :], w])
    return xr.DataArray(
        weights,
        dims=("mask", *DETECTOR_DIMS),
        coords={"mask": ["k_y", "k_x", "total"], "k_y": data.coords["k_y"], "k_x": data.coords["k_x"]},
    )


def center_of_mass(
    data: xr.DataArray, *, mask: xr.DataArray | None = None, dtype: Any = "float64", batch_bytes: int = BATCH_BYTES
) -> xr.DataArray:
    """Centre of mass of every diffraction pattern (lazy), through the projection engine.

    One pass with three masks ``(k_y w, k_x w, w)``, ``w`` the optional mask
    (default the whole detector), then ``com = (sum k_y I w, sum k_x I w) / sum I w``.

    Parameters
    ----------
    data : xarray.DataArray
        A stemdask dataset ``(scan_y, scan_x, k_y, k_x)``.
    mask : xarray.DataArray, optional
        One detector mask (e.g. ``detectors.disk(data, 1.2 * alpha)``) that
        restricts the CoM to a region.
    dtype : {"float64", "float32"}
        Accumulation dtype.

    Returns
    -------
    xarray.DataArray
        Lazy ``(scan_y, scan_x, component=["y", "x"])`` CoM shift in mrad
        (detector-coordinate units) relative to the coordinate origin; NaN
        where a pattern has no intensity inside the mask. attrs carry the
        dataset calibration and ``field_V_per_mrad`` (projected field per
        mrad of shift, when ``energy_ev`` is known; see
        :func:`electric_field`).
    """
    validate(data)
    masks = _com_masks(data, mask)
    sums = project_checked(data, masks, dtype=dtype, batch_bytes=batch_bytes).data
    # one task per chunk for the ratio (a chain of xarray operations costs more than the
    # projection itself on sparse or small data)
    ratio = da.map_blocks(
        _ratio_block, sums, chunks=(sums.chunks[0], sums.chunks[1], (2,)), dtype=sums.dtype, meta=sums._meta
    )
    com = xr.DataArray(
        ratio,
        dims=(*SCAN_DIMS, "component"),
        coords={**{d: data.coords[d] for d in SCAN_DIMS}, "component": ["y", "x"]},
    )
    attrs = {k: v for k, v in data.attrs.items() if k != "representation"}
    attrs["units"] = data.coords["k_x"].attrs.get("units", "mrad")
    attrs["long_name"] = "centre-of-mass shift"
    if "energy_ev" in data.attrs and attrs["units"] == "mrad":
        attrs["field_V_per_mrad"] = field_per_mrad(data.attrs["energy_ev"])
    com.attrs = attrs
    return com.rename("com")


def _ratio_block(sums: Any) -> Any:
    """(y, x) first moments over the total of a block of sums (k_y, k_x, total); NaN where empty."""
    from ..backend import array_module

    xp = array_module(sums)
    total = sums[..., 2:3]
    with np.errstate(invalid="ignore", divide="ignore"):
        return xp.where(total != 0, sums[..., :2] / total, xp.nan).astype(sums.dtype, copy=False)


def field_per_mrad(energy_ev: float) -> float:
    """Projected electric field (V) per mrad of CoM shift: ``-2 pi 1e-3 / (lambda sigma)``.

    The minus sign: the beam is deflected towards positive potential
    (nuclei) while the field points away from them.
    """
    return -2 * math.pi * 1e-3 / (wavelength_A(energy_ev) * interaction_constant(energy_ev))


def _check_com(com: Any, name: str = "com") -> xr.DataArray:
    if not isinstance(com, xr.DataArray):
        raise bad_type(name, com, "a (scan_y, scan_x, component) DataArray from center_of_mass")
    if tuple(com.dims) != (*SCAN_DIMS, "component") or com.sizes["component"] != 2:
        raise bad_value(
            name,
            f"<DataArray dims {com.dims} shape {com.shape}>",
            "dims (scan_y, scan_x, component) with component = ['y', 'x']",
        )
    return com


def electric_field(com: xr.DataArray) -> xr.DataArray:
    """Projected in-plane electric field (V = V/Å · Å) from a CoM shift in mrad.

    ``E = -(2 pi / (lambda sigma)) theta``; needs ``energy_ev`` in ``com.attrs``.
    """
    com = _check_com(com)
    if com.attrs.get("units") != "mrad":
        raise bad_value("com", f"<CoM in {com.attrs.get('units')!r}>", "a CoM in mrad (a calibrated dataset)")
    if "energy_ev" not in com.attrs:
        raise MissingCalibrationError("electric_field needs the calibration ['energy_ev'] in com.attrs")
    out = com * field_per_mrad(com.attrs["energy_ev"])
    out.attrs = dict(com.attrs, units="V", long_name="projected electric field")
    return out.rename("electric_field")


# ----------------------------------------------------------------------------
# descan
# ----------------------------------------------------------------------------
def fit_descan(com: xr.DataArray, *, order: int = 1) -> xr.DataArray:
    """Least-squares fit of the descan (beam shift across the scan) to the CoM.

    ``order=0`` fits a constant, ``order=1`` a plane ``a + b y + c x`` per
    component (lazy; NaN positions are ignored). Subtract it with
    :func:`remove_descan`, or pass it as ``shifts`` to
    :func:`~stemdask.imaging.virtual_image` to make detectors follow the beam.
    """
    com = _check_com(com)
    if order not in (0, 1):
        raise bad_value("order", order, "0 (constant) or 1 (plane)")
    ny, nx = com.shape[:2]
    yy, xx = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    basis = np.stack([np.ones_like(yy), yy, xx])[: 1 + 2 * order]  # (p, ny, nx)
    values = com.data if isinstance(com.data, da.Array) else da.from_array(np.asarray(com.data))
    fits = []
    for c in range(2):
        v = values[..., c]
        ok = da.isfinite(v)
        vz = da.where(ok, v, 0.0)
        bw = [da.where(ok, b, 0.0) for b in basis]
        ata = da.stack([da.stack([(bi * bj).sum() for bj in bw]) for bi in bw])
        atb = da.stack([(bi * vz).sum() for bi in bw])
        coef = da.linalg.solve(ata.rechunk(-1), atb.rechunk(-1))
        fits.append(da.tensordot(coef, basis, axes=1))
    out = xr.DataArray(da.stack(fits, axis=-1), dims=com.dims, coords=com.coords, attrs=dict(com.attrs))
    out.attrs["long_name"] = f"descan fit (order {order})"
    return out.rename("descan")


def remove_descan(com: xr.DataArray, *, order: int = 1) -> xr.DataArray:
    """``com`` minus its :func:`fit_descan` (constant or plane), lazy."""
    out = com - fit_descan(com, order=order)
    out.attrs = dict(com.attrs, descan_order=order)
    return out.rename(com.name)


# ----------------------------------------------------------------------------
# rotation and flip
# ----------------------------------------------------------------------------
def _curl_div(gy: np.ndarray, gx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Discrete curl ``d gx/dy ... `` and divergence on the scan grid (interior only)."""
    dgy_dy, dgy_dx = np.gradient(gy)
    dgx_dy, dgx_dx = np.gradient(gx)
    curl = dgy_dx - dgx_dy
    div = dgx_dx + dgy_dy
    return curl[1:-1, 1:-1], div[1:-1, 1:-1]


def rotate_com(com: xr.DataArray, rotation_deg: float, *, flip: bool = False) -> xr.DataArray:
    """CoM vectors from the detector frame into the scan frame (lazy).

    First ``y -> -y`` when ``flip``, then a rotation by ``rotation_deg``:
    ``x' = cos(t) x - sin(t) y``, ``y' = sin(t) x + cos(t) y``.
    """
    com = _check_com(com)
    t = math.radians(float(rotation_deg))
    if not math.isfinite(t):
        raise bad_value("rotation_deg", rotation_deg, "a finite angle in degrees")
    y = com.sel(component="y") * (-1.0 if flip else 1.0)
    x = com.sel(component="x")
    ry = math.sin(t) * x + math.cos(t) * y
    rx = math.cos(t) * x - math.sin(t) * y
    out = xr.concat([ry, rx], dim="component").transpose(*SCAN_DIMS, "component")
    out = out.assign_coords(component=["y", "x"])
    out.attrs = dict(com.attrs, rotation_deg=float(rotation_deg), flip=bool(flip))
    return out.rename(com.name)


def find_rotation(com: xr.DataArray, *, flip: bool | None = None, resolve_180: bool = True) -> xr.Dataset:
    """Scan rotation and flip that make the CoM field curl-free (computes ``com``).

    The mean squared curl of the rotated field is a quadratic form in
    ``(cos t, sin t)`` (``curl' = cos t curl + sin t div``), so its minimum
    over all angles is the eigenvector of the smallest eigenvalue of a 2x2
    matrix: exact, no angle grid. Both detector handednesses are tried
    (unless ``flip`` is given) and the one with the smaller curl wins. A
    rotation by 180° leaves the curl unchanged; as in LiberTEM, it is
    resolved from the divergence, which is strongly negative at atom columns
    (the beam is deflected towards the nuclei): the angle whose divergence
    has the heavier negative tail is kept. With ``resolve_180=False`` the
    angle is returned in (-90, 90] as py4DSTEM does.

    Returns
    -------
    xarray.Dataset
        Scalars ``rotation_deg``, ``flip`` (bool), ``rms_curl`` (of the
        corrected field) and ``rms_curl_other`` (best of the other
        handedness; NaN when ``flip`` was given).
    """
    com = _check_com(com)
    values = np.asarray(com.values, dtype=np.float64)
    if values.shape[0] < 4 or values.shape[1] < 4:
        raise bad_value("com", f"<CoM of scan shape {values.shape[:2]}>", "a scan of at least 4 x 4 positions")
    if not np.all(np.isfinite(values)):
        raise bad_value(
            "com",
            f"<CoM with {int(np.count_nonzero(~np.isfinite(values)))} NaN values>",
            "finite values (patterns without intensity give NaN; fill or crop them)",
        )
    gy = values[..., 0] - values[..., 0].mean()
    gx = values[..., 1] - values[..., 1].mean()
    best = []
    for flipped in (False, True) if flip is None else (bool(flip),):
        curl, div = _curl_div(-gy if flipped else gy, gx)
        quad = np.array([[np.mean(curl * curl), np.mean(curl * div)], [np.mean(curl * div), np.mean(div * div)]])
        evals, evecs = np.linalg.eigh(quad)
        c, s = evecs[:, 0]
        best.append((max(evals[0], 0.0), math.degrees(math.atan2(s, c)), flipped))
    best.sort(key=lambda item: item[0])
    ms, angle, flipped = best[0]
    ms_other = best[1][0] if len(best) > 1 else math.nan
    angle = (angle + 90.0) % 180.0 - 90.0  # (-90, 90]
    if angle == -90.0:
        angle = 90.0
    if resolve_180:
        t = math.radians(angle)
        yy = -gy if flipped else gy
        _, div = _curl_div(math.sin(t) * gx + math.cos(t) * yy, math.cos(t) * gx - math.sin(t) * yy)
        limit = np.max(np.abs(div))
        if limit > 0:
            # outer fifth of the symmetric range on each side (LiberTEM's 5-bin histogram test)
            neg = np.count_nonzero(div < -0.6 * limit)
            pos = np.count_nonzero(div > 0.6 * limit)
            if pos > neg or (pos == neg and np.mean(div**3) > 0):
                angle = angle - 180.0 if angle > 0 else angle + 180.0
    out = xr.Dataset(
        {
            "rotation_deg": float(angle),
            "flip": bool(flipped),
            "rms_curl": float(math.sqrt(ms)),
            "rms_curl_other": float(math.sqrt(ms_other)),
        }
    )
    out["rotation_deg"].attrs["units"] = "deg"
    return out


def correct_com(
    com: xr.DataArray, *, descan: int | None = 1, rotation_deg: float | str | None = "auto", flip: bool | None = None
) -> xr.DataArray:
    """Remove the descan and rotate the CoM into the scan frame.

    Parameters
    ----------
    com : xarray.DataArray
        From :func:`center_of_mass`.
    descan : {1, 0, None}
        Plane (1) or constant (0) fit to remove, or None.
    rotation_deg : float, "auto" or None
        ``"auto"`` finds rotation (and flip, unless given) by
        :func:`find_rotation` (this computes the CoM); a number uses it;
        None leaves the vectors in the detector frame.
    flip : bool, optional
        Detector handedness; with ``rotation_deg="auto"`` and ``flip=None``
        it is found too.

    Returns
    -------
    xarray.DataArray
        Corrected CoM with attrs ``rotation_deg``, ``flip``, ``descan_order``.
    """
    com = _check_com(com)
    out = remove_descan(com, order=descan) if descan is not None else com
    if rotation_deg is None:
        return out
    if isinstance(rotation_deg, str):
        if rotation_deg != "auto":
            raise bad_value("rotation_deg", rotation_deg, "'auto', a number of degrees or None")
        out = out.compute()
        found = find_rotation(out, flip=flip)
        return rotate_com(out, float(found["rotation_deg"]), flip=bool(found["flip"]))
    return rotate_com(out, float(rotation_deg), flip=bool(flip))


__all__ = [
    "center_of_mass",
    "correct_com",
    "electric_field",
    "field_per_mrad",
    "find_rotation",
    "fit_descan",
    "remove_descan",
    "rotate_com",
]
