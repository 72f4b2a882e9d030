"""Electron-optics conventions, written once: frequency grids, aperture, aberrations, probe.

Shared by the simulator and by the phase-retrieval code, so that a probe made
here and a probe fitted there mean the same thing.

Conventions (the same as abTEM's, checked against ``abtem/transfer.py``):

* Aberrations are polar coefficients ``Cnm`` in Å and angles ``phinm`` in
  radians (``C10, C12, phi12, C21, phi21, C23, phi23, C30, C32, phi32, C34,
  phi34, C41, ..., C56, phi56``); abTEM's aliases are accepted (``Cs`` is
  ``C30``, ``astigmatism`` is ``C12``, ...).
* ``defocus`` is an alias with the opposite sign: ``C10 = -defocus``. A
  positive defocus puts the probe crossover *below* the entrance surface
  (propagating the wave by ``dz`` adds ``dz`` to ``C10``).
* The aberration function is

  ``χ(α, φ) = 2π/λ · Σ_n α^(n+1)/(n+1) · Σ_m C_nm cos(m (φ - φ_nm))``

  with ``α = λ |k|`` the scattering angle in rad and ``φ = atan2(k_y, k_x)``;
  the probe in Fourier space is ``A(α) exp(-i χ)``.
* Grids are ``(y, x)`` ordered, unshifted (FFT order), frequencies in 1/Å.
* A real-space probe is normalised to ``Σ |ψ|² = 1`` over its grid.

All functions accept ``xp`` (numpy or cupy) so the same code runs on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from .checks import pair
from .errors import bad_type, bad_value
from .physics import wavelength_A

#: polar aberration symbols up to 5th order (magnitudes in Å, angles in rad)
POLAR_SYMBOLS: tuple[str, ...] = (
    "C10", "C12", "phi12",
    "C21", "phi21", "C23", "phi23",
    "C30", "C32", "phi32", "C34", "phi34",
    "C41", "phi41", "C43", "phi43", "C45", "phi45",
    "C50", "C52", "phi52", "C54", "phi54", "C56", "phi56",
)

#: abTEM's aliases of the polar symbols (``defocus`` is handled apart: C10 = -defocus)
POLAR_ALIASES: dict[str, str] = {
    "Cs": "C30", "C5": "C50",
    "astigmatism": "C12", "astigmatism_angle": "phi12",
    "astigmatism3": "C32", "astigmatism3_angle": "phi32",
    "astigmatism5": "C52", "astigmatism5_angle": "phi52",
    "coma": "C21", "coma_angle": "phi21",
    "coma4": "C41", "coma4_angle": "phi41",
    "trefoil": "C23", "trefoil_angle": "phi23",
    "trefoil4": "C43", "trefoil4_angle": "phi43",
    "quadrafoil": "C34", "quadrafoil_angle": "phi34",
    "quadrafoil5": "C54", "quadrafoil5_angle": "phi54",
    "pentafoil": "C45", "pentafoil_angle": "phi45",
    "hexafoil": "C56", "hexafoil_angle": "phi56",
}


def polar_coefficients(aberrations: Mapping[str, float] | None) -> dict[str, float]:
    """Normalise aberrations to the full dict of polar coefficients.

    Parameters
    ----------
    aberrations : mapping, optional
        Coefficients by polar symbol (``"C30"``), abTEM alias (``"Cs"``) or
        ``"defocus"`` (stored as ``C10 = -defocus``); magnitudes in Å, angles
        in rad.

    Returns
    -------
    dict
        Every symbol of :data:`POLAR_SYMBOLS` with its value (0 when not given).

    Raises
    ------
    InvalidArgumentError
        For an unknown symbol, a non-finite value, or a coefficient given
        twice (e.g. ``C10`` and ``defocus``).
    """
    out = {symbol: 0.0 for symbol in POLAR_SYMBOLS}
    if aberrations is None:
        return out
    if not isinstance(aberrations, Mapping):
        raise bad_type("aberrations", aberrations, "a mapping of polar symbols to values (Å, rad)")
    seen: dict[str, str] = {}
    for key, value in aberrations.items():
        if key == "defocus":
            symbol, sign = "C10", -1.0
        elif key in POLAR_SYMBOLS:
            symbol, sign = key, 1.0
        elif key in POLAR_ALIASES:
            symbol, sign = POLAR_ALIASES[key], 1.0
        else:
            raise bad_value("aberrations", {key: value},
                            f"keys among 'defocus', {', '.join(POLAR_SYMBOLS)} or the aliases "
                            f"{', '.join(POLAR_ALIASES)}")
        if symbol in seen:
            raise bad_value("aberrations", dict(aberrations),
                            f"each coefficient once ({seen[symbol]!r} and {key!r} both set {symbol})")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(value)):
            raise bad_value(f"aberrations[{key!r}]", value, "a finite number (Å or rad)")
        seen[symbol] = key
        out[symbol] = sign * float(value)
    return out


def spatial_frequencies(shape: Sequence[int], sampling_A: Sequence[float] | float,
                        xp: ModuleType = np) -> tuple[Any, Any]:
    """FFT-ordered spatial frequencies ``(k_y[:, None], k_x[None, :])`` in 1/Å."""
    ny, nx = pair("shape", shape, integer=True)
    dy, dx = pair("sampling_A", sampling_A)
    ky = xp.fft.fftfreq(ny, dy)[:, None]
    kx = xp.fft.fftfreq(nx, dx)[None, :]
    return ky, kx


def polar_angles(shape: Sequence[int], sampling_A: Sequence[float] | float, energy_ev: float,
                 xp: ModuleType = np) -> tuple[Any, Any]:
    """Scattering angle ``α`` (rad) and azimuth ``φ = atan2(k_y, k_x)`` (rad) on an FFT grid."""
    ky, kx = spatial_frequencies(shape, sampling_A, xp)
    lam = wavelength_A(energy_ev)
    alpha = lam * xp.sqrt(ky**2 + kx**2)
    phi = xp.arctan2(ky + 0 * kx, kx + 0 * ky)
    return alpha, phi


def aperture(alpha: Any, semiangle_mrad: float, *, soft: bool = False,
             angular_sampling_mrad: Sequence[float] | float | None = None) -> Any:
    """Circular probe-forming aperture on an angle grid ``alpha`` (rad).

    Parameters
    ----------
    alpha : array
        Scattering angles in rad (e.g. from :func:`polar_angles`).
    semiangle_mrad : float
        Aperture semi-angle in mrad.
    soft : bool
        Soften the edge over one pixel (linear ramp of the distance to the
        edge in pixels), which reduces ringing of coarse grids.
    angular_sampling_mrad : float or (float, float)
        Pixel size in mrad, needed when ``soft``.
    """
    if not math.isfinite(float(semiangle_mrad)) or semiangle_mrad <= 0:
        raise bad_value("semiangle_mrad", semiangle_mrad, "a positive finite angle in mrad")
    xp = _xp(alpha)
    cutoff = semiangle_mrad * 1e-3
    if not soft:
        return (alpha <= cutoff).astype(alpha.dtype)
    if angular_sampling_mrad is None:
        raise bad_value("angular_sampling_mrad", None, "the pixel size in mrad when soft=True")
    dy, dx = pair("angular_sampling_mrad", angular_sampling_mrad)
    # pixel size along the radial direction: edge softened over one pixel
    step = 1e-3 * min(dy, dx)
    return xp.clip((cutoff - alpha) / step + 0.5, 0.0, 1.0).astype(alpha.dtype)


def aberration_function(alpha: Any, phi: Any, energy_ev: float,
                        aberrations: Mapping[str, float] | None) -> Any:
    """The aberration phase ``χ(α, φ)`` in rad (abTEM convention, see module doc)."""
    p = polar_coefficients(aberrations)
    xp = _xp(alpha)
    lam = wavelength_A(energy_ev)
    chi = xp.zeros_like(alpha)
    # (order n, [(m, C symbol, phi symbol)]) with the α^(n+1)/(n+1) prefactor
    terms = (
        (1, ((0, "C10", None), (2, "C12", "phi12"))),
        (2, ((1, "C21", "phi21"), (3, "C23", "phi23"))),
        (3, ((0, "C30", None), (2, "C32", "phi32"), (4, "C34", "phi34"))),
        (4, ((1, "C41", "phi41"), (3, "C43", "phi43"), (5, "C45", "phi45"))),
        (5, ((0, "C50", None), (2, "C52", "phi52"), (4, "C54", "phi54"), (6, "C56", "phi56"))),
    )
    for n, parts in terms:
        angular = 0.0
        for m, c_symbol, phi_symbol in parts:
            c = p[c_symbol]
            if c == 0.0:
                continue
            angular = angular + (c if m == 0 else c * xp.cos(m * (phi - p[phi_symbol])))
        if not isinstance(angular, float) or angular != 0.0:
            chi = chi + alpha ** (n + 1) / (n + 1) * angular
    return (2 * np.pi / lam) * chi


def probe_fourier(shape: Sequence[int], sampling_A: Sequence[float] | float, *, energy_ev: float,
                  semiangle_mrad: float, aberrations: Mapping[str, float] | None = None,
                  soft: bool = False, xp: ModuleType = np, dtype: Any = np.complex128) -> Any:
    """The probe in Fourier space, ``A(α) exp(-i χ)``, FFT-ordered.

    Normalised so that its inverse FFT (``xp.fft.ifft2``) has ``Σ |ψ|² = 1``;
    that real-space probe is centred on pixel ``(0, 0)``.
    """
    ny, nx = pair("shape", shape, integer=True)
    dy, dx = pair("sampling_A", sampling_A)
    alpha, phi = polar_angles((ny, nx), (dy, dx), energy_ev, xp)
    lam = wavelength_A(energy_ev)
    pixel_mrad = (1e3 * lam / (ny * dy), 1e3 * lam / (nx * dx))
    amp = aperture(alpha, semiangle_mrad, soft=soft, angular_sampling_mrad=pixel_mrad)
    if float(amp.sum()) == 0:
        raise bad_value("semiangle_mrad", semiangle_mrad,
                        f"an aperture of at least one pixel ({min(pixel_mrad):.3g} mrad on this grid)")
    chi = aberration_function(alpha, phi, energy_ev, aberrations)
    psi = (amp * xp.exp(-1j * chi)).astype(dtype)
    # Parseval: Σ|ifft2(Ψ)|² = Σ|Ψ|² / N
    norm = xp.sqrt(xp.sum(xp.abs(psi) ** 2) / (ny * nx))
    return psi / norm


def probe(shape: Sequence[int], sampling_A: Sequence[float] | float, *, energy_ev: float,
          semiangle_mrad: float, aberrations: Mapping[str, float] | None = None,
          soft: bool = False, xp: ModuleType = np, dtype: Any = np.complex128) -> Any:
    """The probe wavefunction in real space, centred on pixel ``(ny // 2, nx // 2)``.

    Parameters
    ----------
    shape : (int, int)
        Grid size (y, x).
    sampling_A : float or (float, float)
        Real-space pixel size in Å.
    energy_ev : float
        Beam energy in eV.
    semiangle_mrad : float
        Convergence semi-angle in mrad.
    aberrations : mapping, optional
        Polar coefficients (see :func:`polar_coefficients`).
    soft : bool
        Soft aperture edge.

    Returns
    -------
    array
        Complex ``(ny, nx)`` array with ``Σ |ψ|² = 1``.
    """
    ny, nx = pair("shape", shape, integer=True)
    psi_k = probe_fourier((ny, nx), sampling_A, energy_ev=energy_ev, semiangle_mrad=semiangle_mrad,
                          aberrations=aberrations, soft=soft, xp=xp, dtype=dtype)
    return xp.fft.fftshift(xp.fft.ifft2(psi_k), axes=(0, 1)).astype(dtype)


def shift_phase(shape: Sequence[int], sampling_A: Sequence[float] | float, shift_A: Any,
                xp: ModuleType = np) -> Any:
    """Fourier phase ramp ``exp(-2πi k·r0)`` that moves a wave by ``shift_A`` = (y, x) in Å.

    ``shift_A`` may be an array of shape ``(..., 2)``; the result then has
    shape ``(..., ny, nx)``.
    """
    ky, kx = spatial_frequencies(shape, sampling_A, xp)
    shift = xp.asarray(shift_A, dtype=float)
    sy = shift[..., 0][..., None, None]
    sx = shift[..., 1][..., None, None]
    # separable: exp(-2πi ky y0) * exp(-2πi kx x0)
    return xp.exp(-2j * np.pi * ky * sy) * xp.exp(-2j * np.pi * kx * sx)


def geometric_probe_radius_A(energy_ev: float, semiangle_mrad: float,
                             aberrations: Mapping[str, float] | None, n: int = 64) -> float:
    """Largest ray displacement ``|∇_k χ| / 2π`` (Å) over the aperture: the probe's geometric radius.

    With pure defocus this is ``|C10| · α``; with no aberrations 0.
    """
    lam = wavelength_A(energy_ev)
    amax = semiangle_mrad * 1e-3
    a = np.linspace(0.0, amax, n)[:, None] + np.zeros((1, 4 * n))
    p = np.linspace(0.0, 2 * np.pi, 4 * n, endpoint=False)[None, :] + np.zeros((n, 1))
    h = 1e-7
    # central differences of the polynomial χ: radial and azimuthal gradient in k = α / λ
    da = (aberration_function(a + h, p, energy_ev, aberrations)
          - aberration_function(a - h, p, energy_ev, aberrations)) / (2 * h) * lam
    dp = (aberration_function(a, p + h, energy_ev, aberrations)
          - aberration_function(a, p - h, energy_ev, aberrations)) / (2 * h)
    with np.errstate(divide="ignore", invalid="ignore"):
        dp = np.where(a > 0, dp * lam / a, 0.0)
    return float(np.sqrt(da**2 + dp**2).max() / (2 * np.pi))


def _xp(array: Any) -> ModuleType:
    from .backend import array_module

    return array_module(array)
