"""Phase from the CoM field: integrated CoM (iCoM) and segmented DPC.

Phase convention: the specimen transmits ``psi_out = psi_in exp(i phi)``
with ``phi = sigma V_proj`` in radians (positive at atoms for an
attractive potential); the CoM shift (rad) is
``theta = lambda / (2 pi) grad(phi)``, so the measured phase gradient is
``G = 2 pi theta / lambda`` in rad/Å. Spatial frequencies ``q`` are in 1/Å
without the 2 pi (``grad -> 2 pi i q``). The returned phase has zero mean.

iCoM minimises the regularised least-squares misfit (Pelz et al., IEEE
Signal Processing Magazine 39(1), 2022, section V)::

    L(phi) = ||M (grad phi - G)||^2 + a1 ||phi||^2 + a2 ||laplace phi||^2

with ``a1 = (2 pi q_hp)^2`` and ``a2 = 1 / (2 pi q_lp)^2`` so that, for a
fully measured periodic field, the minimiser is the paper's filter::

    F{phi} = -i q . F{G} / (2 pi (q_hp^2 + q^2 + q^4 / q_lp^2))

— the ``q . F{I} / (lambda1 + k^2 + lambda2 k^4)`` of the paper with
``lambda1 = q_hp^2`` (high-pass: suppresses q << q_hp) and
``lambda2 = 1 / q_lp^2`` (low-pass: suppresses q >> q_lp); each filter
passes half at its cut-off. ``method="fourier"`` applies it directly
(periodic boundaries: exact for a scan over whole periodic cells, with
wrap-around errors at the edges of any other scan).

``method="neumann"`` (the default) integrates on the scan rectangle itself
with Neumann boundaries (no gradient across its edges) and no assumption
about what lies beyond them: the phase is extended evenly about every edge
(the gradient field mirrored, with the sign of the normal component
flipped), which is periodic over twice the scan without a jump, and the
same filter is applied to it spectrally (exact ``q``; the DCT-II basis,
cf. Simchony, Chellappa & Shao, IEEE PAMI 12(5), 1990, with the continuous
rather than the discrete Laplacian, whose ``sin(pi q h)`` eigenvalues
attenuated the fine detail). The mean gradient is integrated apart as the
exact ramp ``<G> . r`` (mirrored, a ramp would become a triangle wave with
kinks). Direct, and without the wrap-around of a non-periodic field.

``method="iterative"`` runs the paper's preconditioned gradient descent
``phi += mu F^-1[q . F{residual} / (...)]`` on a zero-padded canvas where
only measured positions enter the misfit (``M``). The mean gradient (a
tilt or descan left in the field) is integrated apart, as the exact ramp
``<G> . r``: the descent converges slowest at the lowest frequencies, and on
the padded canvas a ramp would need a wrap-around outside the scan, which
left a smooth background instead of the ramp.

``deconvolve_probe=eps`` goes one step beyond iCoM. For a thin phase object
the CoM is the probe-intensity-weighted mean gradient (Ehrenfest), so the
integrated CoM is ``sum_r |P(r - R)|^2 phi(r)``: the phase blurred by the
probe intensity, a correlation whose transfer is ``conj(T(q))`` with
``T = F{|P|^2} / F{|P|^2}(0)`` (the normalised autocorrelation of the
aperture times ``exp(-i chi)``; real without odd aberrations), which falls
to zero at ``2 alpha / lambda``. The Wiener filter ``T / (|T|^2 + eps)`` undoes
that blur inside the ``2 alpha`` band and passes nothing beyond it; ``eps`` is
the noise-to-signal power ratio it assumes (about 1e-2 for clean data, larger
for noisy data, where it trades resolution for noise). For ``method="fourier"``
(a periodic scan) the filter is applied directly. For the other methods the
same Tikhonov problem is solved on a zero-padded canvas where only the scan
positions are measured (conjugate gradients), so what lies beyond the scan
edges stays free; the phase's best-fit plane is set apart first (a unit-mass
kernel maps a plane onto itself up to a constant).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from .. import optics
from ..checks import integer, number
from ..dataset import SCAN_DIMS, validate
from ..errors import MissingCalibrationError, bad_value
from ..physics import wavelength_A
from . import detectors
from .com import _check_com
from .project import check_masks, project_checked


def _cutoff(name: str, value: Any) -> float | None:
    if value is None:
        return None
    return number(name, value, expected="a positive spatial frequency in 1/Å (or None)")


def _gradient_field(com: xr.DataArray) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Phase gradient (rad/Å) from a CoM in mrad, and the scan step (Å)."""
    if com.attrs.get("units") != "mrad":
        raise bad_value(
            "com", f"<CoM in {com.attrs.get('units')!r}>", "a CoM in mrad (calibrate the dataset's detector_pixel_mrad)"
        )
    if "energy_ev" not in com.attrs:
        raise MissingCalibrationError("icom needs the calibration ['energy_ev'] in com.attrs")
    steps = []
    for dim in SCAN_DIMS:
        coord = com.coords[dim]
        if coord.attrs.get("units") != "Å" or coord.size < 2:
            raise MissingCalibrationError(
                f"icom needs scan coordinates in Å; {dim} has units {coord.attrs.get('units')!r} "
                "(set scan_step_A on the dataset)"
            )
        steps.append(float(coord.values[1] - coord.values[0]))
    values = np.asarray(com.values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise bad_value(
            "com",
            f"<CoM with {int(np.count_nonzero(~np.isfinite(values)))} NaN values>",
            "finite values (patterns without intensity give NaN; fill or crop them)",
        )
    scale = 2 * math.pi * 1e-3 / wavelength_A(com.attrs["energy_ev"])
    return values[..., 0] * scale, values[..., 1] * scale, (steps[0], steps[1])


def _freqs(shape: tuple[int, int], steps: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    qy = np.fft.fftfreq(shape[0], d=steps[0])[:, None]
    qx = np.fft.fftfreq(shape[1], d=steps[1])[None, :]
    return qy, qx


def _denominator(qy: np.ndarray, qx: np.ndarray, q_hp: float | None, q_lp: float | None) -> np.ndarray:
    q2 = qy**2 + qx**2
    den = q2 + (q_hp**2 if q_hp else 0.0) + (q2**2 / q_lp**2 if q_lp else 0.0)
    return 2 * math.pi * den


def _integrate(gy: np.ndarray, gx: np.ndarray, qy: np.ndarray, qx: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = -1j * (qy * np.fft.fft2(gy) + qx * np.fft.fft2(gx))
    with np.errstate(divide="ignore", invalid="ignore"):
        spec = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return np.fft.ifft2(spec).real


def icom(
    com: xr.DataArray,
    *,
    lowpass: float | None = None,
    highpass: float | None = None,
    method: str = "neumann",
    n_iter: int = 64,
    step: float = 0.5,
    pad: int = 2,
    deconvolve_probe: float | None = None,
    aberrations: Mapping[str, float] | None = None,
) -> xr.DataArray:
    """Integrate a CoM field into a phase image (radians).

    Parameters
    ----------
    com : xarray.DataArray
        CoM shift ``(scan_y, scan_x, component)`` in mrad in the scan frame
        (see :func:`~stemdask.imaging.correct_com`), from a dataset with
        ``energy_ev`` and ``scan_step_A``. Lazy input is computed.
    lowpass : float, optional
        Low-pass cut-off ``q_lp`` in 1/Å (``lambda2 = 1/q_lp^2``); None: none.
    highpass : float, optional
        High-pass cut-off ``q_hp`` in 1/Å (``lambda1 = q_hp^2``); None: none
        (only the mean is removed).
    method : {"neumann", "fourier", "iterative"}
        Direct integration of the mirrored field on the scan rectangle
        (Neumann boundaries: any scan), direct Fourier integration (periodic scans
        only), or the paper's iterated, preconditioned gradient descent on a
        zero-padded canvas.
    n_iter : int
        Iterations of ``method="iterative"``.
    step : float
        Step size ``mu`` of the iteration (0.5 in the paper).
    pad : int
        Canvas size factor of ``method="iterative"`` (>= 1).
    deconvolve_probe : float, optional
        Wiener regularisation ``eps > 0`` of a deconvolution of the probe
        intensity (see the module doc; needs ``semiangle_mrad`` in
        ``com.attrs``); None (default): the plain iCoM image ``|P|^2 * phi``.
    aberrations : mapping, optional
        The probe's aberrations (:func:`stemdask.optics.polar_coefficients`)
        for ``deconvolve_probe``; None: an aberration-free probe.

    Returns
    -------
    xarray.DataArray
        Phase ``(scan_y, scan_x)`` in rad with zero mean.
    """
    com = _check_com(com)
    q_lp = _cutoff("lowpass", lowpass)
    q_hp = _cutoff("highpass", highpass)
    gy, gx, steps = _gradient_field(com)
    if method == "fourier":
        qy, qx = _freqs(gy.shape, steps)
        phase = _integrate(gy, gx, qy, qx, _denominator(qy, qx, q_hp, q_lp))
    elif method == "neumann":
        phase = _neumann(gy, gx, steps, q_hp, q_lp)
    elif method == "iterative":
        if not (isinstance(n_iter, (int, np.integer)) and n_iter >= 1):
            raise bad_value("n_iter", n_iter, "a positive number of iterations")
        if not (isinstance(step, (int, float)) and 0 < step <= 1):
            raise bad_value("step", step, "a step size in (0, 1]")
        if not (isinstance(pad, (int, np.integer)) and pad >= 1):
            raise bad_value("pad", pad, "an integer canvas factor >= 1")
        # the mean gradient integrates exactly to a ramp; only the rest is iterated
        mean_y, mean_x = gy.mean(), gx.mean()
        ramp = mean_y * steps[0] * np.arange(gy.shape[0])[:, None] + mean_x * steps[1] * np.arange(gy.shape[1])[None, :]
        phase = ramp + _iterate(gy - mean_y, gx - mean_x, steps, q_hp, q_lp, int(n_iter), float(step), int(pad))
    else:
        raise bad_value("method", method, "'neumann', 'fourier' or 'iterative'")
    eps = 0.0
    if deconvolve_probe is not None:
        eps = number("deconvolve_probe", deconvolve_probe, expected="a Wiener regularisation eps > 0 (or None)")
        if "semiangle_mrad" not in com.attrs:
            raise MissingCalibrationError(
                "icom(deconvolve_probe=...) needs the calibration ['semiangle_mrad'] in com.attrs"
            )
        phase = _deconvolve(
            phase,
            steps,
            eps,
            periodic=method == "fourier",
            energy_ev=float(com.attrs["energy_ev"]),
            semiangle_mrad=float(com.attrs["semiangle_mrad"]),
            aberrations=aberrations,
        )
    phase = phase - phase.mean()
    attrs = {k: v for k, v in com.attrs.items() if k not in ("units", "long_name", "field_V_per_mrad")}
    attrs.update(
        units="rad",
        long_name="iCoM phase",
        method=method,
        lowpass_inv_A=q_lp if q_lp else 0.0,
        highpass_inv_A=q_hp if q_hp else 0.0,
        deconvolve_probe_eps=eps,
    )
    return xr.DataArray(phase, dims=SCAN_DIMS, coords={d: com.coords[d] for d in SCAN_DIMS}, attrs=attrs, name="icom")


def probe_intensity_transfer(
    qy: np.ndarray,
    qx: np.ndarray,
    *,
    energy_ev: float,
    semiangle_mrad: float,
    aberrations: Mapping[str, float] | None = None,
) -> np.ndarray:
    """The probe intensity's normalised transfer ``T(q) = F{|P|^2}(q) / F{|P|^2}(0)``.

    Parameters
    ----------
    qy, qx : numpy.ndarray
        Spatial frequencies in 1/Å (without the 2 pi), broadcastable.
    energy_ev, semiangle_mrad : float
        Beam energy (eV) and convergence semi-angle (mrad).
    aberrations : mapping, optional
        Polar aberration coefficients (:func:`stemdask.optics.polar_coefficients`).

    Returns
    -------
    numpy.ndarray
        Complex ``T`` (Hermitian; real and radial without aberrations), 1 at
        ``q = 0`` and 0 beyond ``2 alpha / lambda``.

    Notes
    -----
    ``|P|^2`` is computed from :func:`stemdask.optics.probe` on a grid that
    resolves its band limit (``2 alpha / lambda`` well below Nyquist) and holds
    the probe's geometric extent four times over, then interpolated
    (bilinearly) at ``q``.
    """
    from scipy.interpolate import RegularGridInterpolator

    k_alpha = semiangle_mrad * 1e-3 / wavelength_A(energy_ev)
    sampling = 1.0 / (4.5 * k_alpha)
    radius = optics.geometric_probe_radius_A(energy_ev, semiangle_mrad, aberrations) + 8.0 / k_alpha
    n = max(256, 1 << math.ceil(math.log2(4 * radius / sampling)))
    p = optics.probe((n, n), sampling, energy_ev=energy_ev, semiangle_mrad=semiangle_mrad, aberrations=aberrations)
    intensity = np.abs(np.fft.ifftshift(p)) ** 2  # centred on pixel (0, 0)
    t = np.fft.fftshift(np.fft.fft2(intensity) / intensity.sum())
    freq = (np.arange(n) - n // 2) / (n * sampling)
    qy, qx = np.broadcast_arrays(np.asarray(qy, dtype=np.float64), np.asarray(qx, dtype=np.float64))
    points = np.stack([qy.ravel(), qx.ravel()], -1)
    out = np.zeros(points.shape[0], dtype=np.complex128)
    for part, scale in ((t.real, 1.0), (t.imag, 1j)):
        f = RegularGridInterpolator((freq, freq), part, bounds_error=False, fill_value=0.0)
        out += scale * f(points)
    # exact band limit: the interpolation smears the edge over one grid pixel
    out[np.hypot(points[:, 0], points[:, 1]) > 2 * k_alpha] = 0.0
    return out.reshape(qy.shape)


def _deconvolve(
    phase: np.ndarray,
    steps: tuple[float, float],
    eps: float,
    *,
    periodic: bool,
    energy_ev: float,
    semiangle_mrad: float,
    aberrations: Mapping[str, float] | None,
    max_iter: int = 200,
) -> np.ndarray:
    """Deconvolve the probe intensity from an iCoM phase (see the module doc).

    Periodic: the Wiener filter. Otherwise the same Tikhonov problem,
    ``min ||M (h * psi - phase)||^2 + eps ||psi||^2`` (``h`` the blur), on a zero-padded canvas
    where only the scan (``M``) is measured, solved by conjugate gradients:
    what lies beyond the scan edges stays free, so the blur of unknown
    surroundings into the edge pixels is not forced into the scan (mirroring
    the blurred phase instead rang at the edges).
    """
    from scipy.sparse.linalg import LinearOperator, cg

    ny, nx = phase.shape

    def blur(shape: tuple[int, int]) -> np.ndarray:
        # iCoM(R) = sum_r |P(r - R)|^2 phi(r): a correlation with |P|^2, so its transfer is conj(T)
        qy, qx = _freqs(shape, steps)
        t = probe_intensity_transfer(
            qy, qx, energy_ev=energy_ev, semiangle_mrad=semiangle_mrad, aberrations=aberrations
        )
        return np.conj(t)

    if periodic:
        h = blur((ny, nx))
        return np.fft.ifft2(np.fft.fft2(phase) * np.conj(h) / (np.abs(h) ** 2 + eps)).real
    # the best-fit plane set apart: a unit-mass kernel maps it onto itself (up to a constant)
    y = np.arange(ny)[:, None] * np.ones((1, nx))
    x = np.ones((ny, 1)) * np.arange(nx)[None, :]
    design = np.stack([np.ones(phase.size), y.ravel(), x.ravel()], -1)
    coef, *_ = np.linalg.lstsq(design, phase.ravel(), rcond=None)
    plane = (design @ coef).reshape(ny, nx)
    shape = (2 * ny, 2 * nx)
    oy, ox = ny // 2, nx // 2
    h = blur(shape)
    hc = np.conj(h)
    inside = (slice(oy, oy + ny), slice(ox, ox + nx))

    def normal(v: np.ndarray) -> np.ndarray:
        psi = v.reshape(shape)
        blurred = np.fft.ifft2(np.fft.fft2(psi) * h).real
        masked = np.zeros(shape)
        masked[inside] = blurred[inside]
        return (np.fft.ifft2(np.fft.fft2(masked) * hc).real + eps * psi).ravel()

    rhs_canvas = np.zeros(shape)
    rhs_canvas[inside] = phase - plane
    rhs = np.fft.ifft2(np.fft.fft2(rhs_canvas) * hc).real.ravel()
    op = LinearOperator((rhs.size, rhs.size), matvec=normal, dtype=np.float64)
    sol, info = cg(op, rhs, rtol=1e-6, maxiter=max_iter)
    if info < 0:  # pragma: no cover - a breakdown, not slow convergence
        raise RuntimeError(f"icom(deconvolve_probe=...): conjugate gradients broke down (info={info})")
    return sol.reshape(shape)[inside] + plane


def _neumann(
    gy: np.ndarray, gx: np.ndarray, steps: tuple[float, float], q_hp: float | None, q_lp: float | None
) -> np.ndarray:
    """Integration on the scan rectangle with Neumann boundaries: the mirrored field, integrated spectrally."""
    ny, nx = gy.shape
    # the mean gradient integrates exactly to a ramp; mirrored, it would be a triangle wave with kinks
    mean_y, mean_x = gy.mean(), gx.mean()
    a, c = gy - mean_y, gx - mean_x
    # even extension of the phase about both edges: its y-gradient is odd in y and even in x, and vice versa
    ey = np.block([[a, a[:, ::-1]], [-a[::-1], -a[::-1, ::-1]]])
    ex = np.block([[c, -c[:, ::-1]], [c[::-1], -c[::-1, ::-1]]])
    qy, qx = _freqs(ey.shape, steps)
    phase = _integrate(ey, ex, qy, qx, _denominator(qy, qx, q_hp, q_lp))[:ny, :nx]
    ramp = mean_y * steps[0] * np.arange(ny)[:, None] + mean_x * steps[1] * np.arange(nx)[None, :]
    return phase + ramp


def _iterate(
    gy: np.ndarray,
    gx: np.ndarray,
    steps: tuple[float, float],
    q_hp: float | None,
    q_lp: float | None,
    n_iter: int,
    mu: float,
    pad: int,
) -> np.ndarray:
    ny, nx = gy.shape
    shape = (ny * pad, nx * pad)
    qy, qx = _freqs(shape, steps)
    den = _denominator(qy, qx, q_hp, q_lp)
    a1 = (2 * math.pi * q_hp) ** 2 if q_hp else 0.0
    a2 = 1.0 / (2 * math.pi * q_lp) ** 2 if q_lp else 0.0
    q2 = qy**2 + qx**2
    phi = np.zeros(shape)
    for _ in range(n_iter):
        f = np.fft.fft2(phi)
        # residual of the misfit: measured gradient minus the current phase's, on measured positions
        ry = np.zeros(shape)
        ry[:ny, :nx] = gy - np.fft.ifft2(2j * math.pi * qy * f).real[:ny, :nx]
        rx = np.zeros(shape)
        rx[:ny, :nx] = gx - np.fft.ifft2(2j * math.pi * qx * f).real[:ny, :nx]
        # minus the regularisers' gradient, expressed in the same units as q . F{residual}
        reg = (a1 + a2 * (2 * math.pi) ** 4 * q2**2) * f / (2 * math.pi)
        num = -1j * (qy * np.fft.fft2(ry) + qx * np.fft.fft2(rx)) - reg
        with np.errstate(divide="ignore", invalid="ignore"):
            upd = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        phi = phi + mu * np.fft.ifft2(upd).real
    return phi[:ny, :nx]


def dpc(
    data: xr.DataArray,
    *,
    n_segments: int = 4,
    inner_mrad: float = 0.0,
    outer_mrad: float | None = None,
    rotation_deg: float = 0.0,
    center_mrad: Any = None,
    dtype: Any = "float64",
) -> xr.DataArray:
    """Segmented-detector DPC: beam shift from ``n`` azimuthal segments (lazy).

    The signal is ``s = sum_i S_i u_i / sum_i S_i`` with ``S_i`` the segment
    images and ``u_i`` their centre directions. For a uniform bright-field
    disk of radius ``alpha`` (``semiangle_mrad``) whose edge lies between
    ``inner_mrad`` and ``outer_mrad``, a small shift ``d`` gives
    ``s = d alpha n sin(pi/n) / (pi (alpha^2 - inner^2))`` (n >= 3), which is
    inverted to return the shift in mrad; it is linear only for shifts well
    below ``alpha``. Feed it to :func:`icom` like a CoM.

    Parameters
    ----------
    data : xarray.DataArray
        A calibrated dataset with ``semiangle_mrad``.
    n_segments : int
        Number of segments (>= 3; 4 = quadrants).
    inner_mrad, outer_mrad : float
        Radial range of the segments; ``outer_mrad`` default ``1.5 alpha``.
    rotation_deg : float
        Azimuth of the first segment's start (from +k_x towards +k_y).
    center_mrad : (float, float), optional
        Detector centre relative to the coordinate origin.

    Returns
    -------
    xarray.DataArray
        Lazy shift ``(scan_y, scan_x, component=["y", "x"])`` in mrad, with
        attrs like :func:`~stemdask.imaging.center_of_mass`.
    """
    validate(data)
    n_segments = integer("n_segments", n_segments, minimum=3, expected="an integer >= 3 (4 = quadrants)")
    if "semiangle_mrad" not in data.attrs:
        raise MissingCalibrationError("dpc needs the calibration ['semiangle_mrad'] to convert to mrad")
    alpha = float(data.attrs["semiangle_mrad"])
    outer = 1.5 * alpha if outer_mrad is None else float(outer_mrad)
    inner = float(inner_mrad)
    if not (0 <= inner < alpha <= outer):
        raise bad_value(
            "inner_mrad/outer_mrad",
            (inner_mrad, outer_mrad),
            f"inner < semiangle ({alpha} mrad) <= outer: the disk edge must fall on the segments",
        )
    masks = detectors.segments(
        data, int(n_segments), inner_mrad=inner, outer_mrad=outer, rotation_deg=rotation_deg, center_mrad=center_mrad
    )
    signals = project_checked(data, check_masks(masks, data), dtype=dtype)
    phi = np.radians(masks.coords["phi_deg"].values)
    uy = xr.DataArray(np.sin(phi), dims=("mask",))
    ux = xr.DataArray(np.cos(phi), dims=("mask",))
    total = signals.sum("mask")
    safe = xr.where(total != 0, total, np.nan)
    gain = alpha * n_segments * math.sin(math.pi / n_segments) / (math.pi * (alpha**2 - inner**2))
    sy = (signals * uy).sum("mask") / safe / gain
    sx = (signals * ux).sum("mask") / safe / gain
    out = xr.concat([sy, sx], dim="component").assign_coords(component=["y", "x"])
    out = out.transpose(*SCAN_DIMS, "component")
    out.attrs = dict(data.attrs, units="mrad", long_name=f"segmented DPC shift ({n_segments} segments)")
    return out.rename("dpc")


__all__ = ["dpc", "icom"]
