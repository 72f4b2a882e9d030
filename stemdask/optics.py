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
* Propagation over ``Δz`` multiplies the spectrum by ``exp(-iπ λ Δz k²)``;
  the anti-aliasing band limit keeps ``|k| <= 2/3`` of the Nyquist frequency.

One implementation serves numpy, cupy and torch: the functions are written
against the array API (``array_api_compat`` namespaces, see
:func:`stemdask.backend.namespace`). Functions that create arrays take ``xp``
(the module ``numpy``, ``cupy`` or ``torch``, or an array-API namespace) and
``device`` (e.g. ``"cuda:0"`` for torch; None: the library's default);
functions of arrays use the arrays' own backend. With torch everything is
differentiable: aberration coefficients (and ``dz_A``, shifts) may be 0-d
tensors that require grad, and they are kept as tensors all the way into χ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from .backend import namespace
from .checks import pair
from .errors import bad_type, bad_value
from .physics import wavelength_A

#: fraction of the Nyquist frequency kept by the anti-aliasing band limit
BANDLIMIT_FRACTION = 2.0 / 3.0

#: polar aberration symbols up to 5th order (magnitudes in Å, angles in rad)
POLAR_SYMBOLS: tuple[str, ...] = (
    "C10",
    "C12",
    "phi12",
    "C21",
    "phi21",
    "C23",
    "phi23",
    "C30",
    "C32",
    "phi32",
    "C34",
    "phi34",
    "C41",
    "phi41",
    "C43",
    "phi43",
    "C45",
    "phi45",
    "C50",
    "C52",
    "phi52",
    "C54",
    "phi54",
    "C56",
    "phi56",
)

#: abTEM's aliases of the polar symbols (``defocus`` is handled apart: C10 = -defocus)
POLAR_ALIASES: dict[str, str] = {
    "Cs": "C30",
    "C5": "C50",
    "astigmatism": "C12",
    "astigmatism_angle": "phi12",
    "astigmatism3": "C32",
    "astigmatism3_angle": "phi32",
    "astigmatism5": "C52",
    "astigmatism5_angle": "phi52",
    "coma": "C21",
    "coma_angle": "phi21",
    "coma4": "C41",
    "coma4_angle": "phi41",
    "trefoil": "C23",
    "trefoil_angle": "phi23",
    "trefoil4": "C43",
    "trefoil4_angle": "phi43",
    "quadrafoil": "C34",
    "quadrafoil_angle": "phi34",
    "quadrafoil5": "C54",
    "quadrafoil5_angle": "phi54",
    "pentafoil": "C45",
    "pentafoil_angle": "phi45",
    "hexafoil": "C56",
    "hexafoil_angle": "phi56",
}


def polar_coefficients(aberrations: Mapping[str, Any] | None) -> dict[str, Any]:
    """Normalise aberrations to the full dict of polar coefficients.

    Parameters
    ----------
    aberrations : mapping, optional
        Coefficients by polar symbol (``"C30"``), abTEM alias (``"Cs"``) or
        ``"defocus"`` (stored as ``C10 = -defocus``); magnitudes in Å, angles
        in rad. Values are numbers, or 0-d arrays (torch tensors that may
        require grad, cupy arrays), which are kept as arrays so that a
        gradient can flow through them.

    Returns
    -------
    dict
        Every symbol of :data:`POLAR_SYMBOLS` with its value: a float (0.0
        when not given) or the given 0-d array (negated for ``defocus``).

    Raises
    ------
    InvalidArgumentError
        For an unknown symbol, a non-finite value, a non-scalar array, or a
        coefficient given twice (e.g. ``C10`` and ``defocus``).
    """
    out: dict[str, Any] = {symbol: 0.0 for symbol in POLAR_SYMBOLS}
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
            raise bad_value(
                "aberrations",
                {key: value},
                f"keys among 'defocus', {', '.join(POLAR_SYMBOLS)} or the aliases {', '.join(POLAR_ALIASES)}",
            )
        if symbol in seen:
            raise bad_value(
                "aberrations",
                dict(aberrations),
                f"each coefficient once ({seen[symbol]!r} and {key!r} both set {symbol})",
            )
        seen[symbol] = key
        value = _scalar(f"aberrations[{key!r}]", value, "a finite number (Å or rad)")
        # negating a tensor keeps the autograd graph; float() would cut it
        out[symbol] = -value if sign < 0 else value
    return out


def spatial_frequencies(
    shape: Sequence[int],
    sampling_A: Sequence[float] | float,
    xp: Any = np,
    *,
    device: Any = None,
    dtype: Any = np.float64,
) -> tuple[Any, Any]:
    """FFT-ordered spatial frequencies ``(k_y[:, None], k_x[None, :])`` in 1/Å.

    Parameters
    ----------
    shape : (int, int)
        Grid size (y, x) in pixels.
    sampling_A : float or (float, float)
        Real-space pixel size in Å.
    xp : module
        numpy, cupy, torch or an array-API namespace.
    device : optional
        Where to create the arrays (e.g. ``"cuda:0"`` for torch).
    dtype : dtype
        Real floating dtype (numpy dtype or the library's own).
    """
    ny, nx = pair("shape", shape, integer=True)
    dy, dx = pair("sampling_A", sampling_A)
    xp = namespace(xp)
    dtype = _dtype(xp, dtype)
    ky = xp.fft.fftfreq(ny, d=dy, dtype=dtype, device=device)[:, None]
    kx = xp.fft.fftfreq(nx, d=dx, dtype=dtype, device=device)[None, :]
    return ky, kx


def polar_angles(
    shape: Sequence[int],
    sampling_A: Sequence[float] | float,
    energy_ev: float,
    xp: Any = np,
    *,
    device: Any = None,
    dtype: Any = np.float64,
) -> tuple[Any, Any]:
    """Scattering angle ``α`` (rad) and azimuth ``φ = atan2(k_y, k_x)`` (rad) on an FFT grid.

    Arguments as :func:`spatial_frequencies`, plus the beam energy in eV.
    """
    xp = namespace(xp)
    ky, kx = spatial_frequencies(shape, sampling_A, xp, device=device, dtype=dtype)
    lam = wavelength_A(energy_ev)
    alpha = lam * xp.sqrt(ky**2 + kx**2)
    phi = xp.atan2(ky + 0 * kx, kx + 0 * ky)
    return alpha, phi


def aperture(
    alpha: Any,
    semiangle_mrad: float,
    *,
    soft: bool = False,
    angular_sampling_mrad: Sequence[float] | float | None = None,
) -> Any:
    """Circular probe-forming aperture on an angle grid ``alpha`` (rad).

    Parameters
    ----------
    alpha : array
        Scattering angles in rad (e.g. from :func:`polar_angles`); numpy,
        cupy or torch, and the result is of the same kind and dtype.
    semiangle_mrad : float
        Aperture semi-angle in mrad.
    soft : bool
        Soften the edge over one pixel (linear ramp of the distance to the
        edge in pixels), which reduces ringing of coarse grids.
    angular_sampling_mrad : float or (float, float)
        Pixel size in mrad, needed when ``soft``.
    """
    if (
        isinstance(semiangle_mrad, bool)
        or not isinstance(semiangle_mrad, (int, float, np.number))
        or not math.isfinite(float(semiangle_mrad))
        or semiangle_mrad <= 0
    ):
        raise bad_value("semiangle_mrad", semiangle_mrad, "a positive finite angle in mrad")
    xp = namespace(alpha)
    cutoff = float(semiangle_mrad) * 1e-3
    if not soft:
        return xp.astype(alpha <= cutoff, alpha.dtype)
    if angular_sampling_mrad is None:
        raise bad_value("angular_sampling_mrad", None, "the pixel size in mrad when soft=True")
    dy, dx = pair("angular_sampling_mrad", angular_sampling_mrad)
    # pixel size along the radial direction: edge softened over one pixel
    step = 1e-3 * min(dy, dx)
    return xp.clip((cutoff - alpha) / step + 0.5, 0.0, 1.0)


#: (order n, [(m, C symbol, phi symbol)]) of χ, with the α^(n+1)/(n+1) prefactor
_CHI_TERMS: tuple[tuple[int, tuple[tuple[int, str, str | None], ...]], ...] = (
    (1, ((0, "C10", None), (2, "C12", "phi12"))),
    (2, ((1, "C21", "phi21"), (3, "C23", "phi23"))),
    (3, ((0, "C30", None), (2, "C32", "phi32"), (4, "C34", "phi34"))),
    (4, ((1, "C41", "phi41"), (3, "C43", "phi43"), (5, "C45", "phi45"))),
    (5, ((0, "C50", None), (2, "C52", "phi52"), (4, "C54", "phi54"), (6, "C56", "phi56"))),
)


def aberration_function(alpha: Any, phi: Any, energy_ev: float, aberrations: Mapping[str, Any] | None) -> Any:
    """The aberration phase ``χ(α, φ)`` in rad (abTEM convention, see module doc).

    Parameters
    ----------
    alpha, phi : array
        Scattering angle and azimuth in rad (numpy, cupy or torch, same shape
        or broadcastable).
    energy_ev : float
        Beam energy in eV.
    aberrations : mapping, optional
        Polar coefficients (see :func:`polar_coefficients`); 0-d tensors are
        differentiated through.

    Returns
    -------
    array
        χ in rad, of the backend and real dtype of ``alpha``.
    """
    p = polar_coefficients(aberrations)
    xp = namespace(alpha)
    lam = wavelength_A(energy_ev)
    chi = xp.zeros_like(alpha)
    for n, parts in _CHI_TERMS:
        angular: Any = 0.0
        for m, c_symbol, phi_symbol in parts:
            c = p[c_symbol]
            phase = p[phi_symbol] if phi_symbol else 0.0
            # only a plain zero is skipped: a zero-valued tensor must stay in the
            # graph, else its gradient (and that of its angle) would be lost
            if _is_zero(c) and _is_zero(phase):
                continue
            angular = angular + (c if m == 0 else c * xp.cos(m * (phi - phase)))
        if not _is_zero(angular):
            chi = chi + alpha ** (n + 1) / (n + 1) * angular
    return (2 * math.pi / lam) * chi


def probe_fourier(
    shape: Sequence[int],
    sampling_A: Sequence[float] | float,
    *,
    energy_ev: float,
    semiangle_mrad: float,
    aberrations: Mapping[str, Any] | None = None,
    soft: bool = False,
    xp: Any = np,
    device: Any = None,
    dtype: Any = np.complex128,
) -> Any:
    """The probe in Fourier space, ``A(α) exp(-i χ)``, FFT-ordered.

    Normalised so that its inverse FFT has ``Σ |ψ|² = 1``; that real-space
    probe is centred on pixel ``(0, 0)``. Arguments as :func:`probe`.
    """
    ny, nx = pair("shape", shape, integer=True)
    dy, dx = pair("sampling_A", sampling_A)
    xp = namespace(xp)
    dtype = _dtype(xp, dtype)
    # the grids and χ in float64 whatever the output dtype: χ is large (many rad)
    # at the aperture edge and float32 would lose its fine phase
    alpha, phi = polar_angles((ny, nx), (dy, dx), energy_ev, xp, device=device)
    lam = wavelength_A(energy_ev)
    pixel_mrad = (1e3 * lam / (ny * dy), 1e3 * lam / (nx * dx))
    amp = aperture(alpha, semiangle_mrad, soft=soft, angular_sampling_mrad=pixel_mrad)
    if float(xp.sum(amp)) == 0:
        raise bad_value(
            "semiangle_mrad",
            semiangle_mrad,
            f"an aperture of at least one pixel ({min(pixel_mrad):.3g} mrad on this grid)",
        )
    chi = aberration_function(alpha, phi, energy_ev, aberrations)
    psi = xp.astype(amp * _expi(xp, -chi), dtype)
    # Parseval: Σ|ifft2(Ψ)|² = Σ|Ψ|² / N
    norm = xp.sqrt(xp.sum(xp.abs(psi) ** 2) / (ny * nx))
    return psi / norm


def probe(
    shape: Sequence[int],
    sampling_A: Sequence[float] | float,
    *,
    energy_ev: float,
    semiangle_mrad: float,
    aberrations: Mapping[str, Any] | None = None,
    soft: bool = False,
    xp: Any = np,
    device: Any = None,
    dtype: Any = np.complex128,
) -> Any:
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
    xp : module
        numpy, cupy, torch or an array-API namespace.
    device : optional
        Where to create the arrays (torch/cupy device).
    dtype : dtype
        Complex dtype of the result (numpy dtype or the library's own).

    Returns
    -------
    array
        Complex ``(ny, nx)`` array with ``Σ |ψ|² = 1``.
    """
    ny, nx = pair("shape", shape, integer=True)
    xp = namespace(xp)
    psi_k = probe_fourier(
        (ny, nx),
        sampling_A,
        energy_ev=energy_ev,
        semiangle_mrad=semiangle_mrad,
        aberrations=aberrations,
        soft=soft,
        xp=xp,
        device=device,
        dtype=dtype,
    )
    psi = xp.fft.fftshift(xp.fft.ifftn(psi_k, axes=(0, 1)), axes=(0, 1))
    return xp.astype(psi, _dtype(xp, dtype), copy=False)


def shift_phase(
    shape: Sequence[int], sampling_A: Sequence[float] | float, shift_A: Any, xp: Any = np, *, device: Any = None
) -> Any:
    """Fourier phase ramp ``exp(-2πi k·r0)`` that moves a wave by ``shift_A`` = (y, x) in Å.

    Parameters
    ----------
    shape : (int, int)
        Grid size (y, x) in pixels.
    sampling_A : float or (float, float)
        Pixel size in Å.
    shift_A : array-like (..., 2)
        Shifts (y, x) in Å; a torch tensor may require grad.
    xp, device
        Backend and device of the result (as :func:`spatial_frequencies`).

    Returns
    -------
    array (..., ny, nx)
        complex128 phase ramps, FFT order.
    """
    xp = namespace(xp)
    ky, kx = spatial_frequencies(shape, sampling_A, xp, device=device)
    shift = xp.asarray(shift_A, dtype=xp.float64, device=device)
    if shift.ndim == 0 or shift.shape[-1] != 2:
        raise bad_value("shift_A", shift_A, "(y, x) shifts in Å: an array of shape (..., 2)")
    sy = shift[..., 0][..., None, None]
    sx = shift[..., 1][..., None, None]
    # separable: exp(-2πi ky y0) * exp(-2πi kx x0)
    return _expi(xp, (-2 * math.pi) * ky * sy) * _expi(xp, (-2 * math.pi) * kx * sx)


def fresnel_propagator(
    shape: Sequence[int],
    sampling_A: Sequence[float] | float,
    energy_ev: float,
    dz_A: Any,
    xp: Any = np,
    *,
    device: Any = None,
    dtype: Any = np.complex64,
) -> Any:
    """Fresnel propagator ``exp(-iπ λ Δz k²)`` over ``dz_A``, FFT order (abTEM's sign).

    Parameters
    ----------
    shape : (int, int)
        Grid size (y, x) in pixels.
    sampling_A : float or (float, float)
        Pixel size in Å.
    energy_ev : float
        Beam energy in eV.
    dz_A : float or 0-d array
        Propagation distance in Å (any sign; a torch tensor may require grad).
    xp, device
        Backend and device (as :func:`spatial_frequencies`).
    dtype : dtype
        Complex dtype of the result; the phase is computed in float64.
    """
    xp = namespace(xp)
    dz = _scalar("dz_A", dz_A, "a finite distance in Å")
    lam = wavelength_A(energy_ev)
    ky, kx = spatial_frequencies(shape, sampling_A, xp, device=device)
    # separable: two 1-D exponentials instead of one on the whole grid
    py = _expi(xp, (-math.pi * lam) * dz * ky**2)
    px = _expi(xp, (-math.pi * lam) * dz * kx**2)
    return xp.astype(py * px, _dtype(xp, dtype))


def bandlimit(
    shape: Sequence[int],
    fraction: float = BANDLIMIT_FRACTION,
    xp: Any = np,
    *,
    device: Any = None,
    dtype: Any = np.float32,
) -> Any:
    """Anti-aliasing mask (FFT order): 1 inside ``(k_y/k_Ny,y)² + (k_x/k_Ny,x)² <= fraction²``.

    Parameters
    ----------
    shape : (int, int)
        Grid size (y, x) in pixels.
    fraction : float
        Radius of the kept disc in units of each axis' Nyquist frequency
        (default 2/3: products of two band-limited waves do not alias).
    xp, device
        Backend and device (as :func:`spatial_frequencies`).
    dtype : dtype
        Real dtype of the 0/1 mask.
    """
    ny, nx = pair("shape", shape, integer=True)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.number)) or not 0 < float(fraction) <= 1:
        raise bad_value("fraction", fraction, "a fraction of the Nyquist frequency in (0, 1]")
    xp = namespace(xp)
    # frequencies in units of the Nyquist frequency of each axis
    fy = xp.fft.fftfreq(ny, dtype=xp.float64, device=device) * 2
    fx = xp.fft.fftfreq(nx, dtype=xp.float64, device=device) * 2
    inside = (fy[:, None] ** 2 + fx[None, :] ** 2) <= float(fraction) ** 2 + 1e-12
    return xp.astype(inside, _dtype(xp, dtype))


def _scalar(name: str, value: Any, expected: str) -> Any:
    """A finite number as float, or a finite 0-d array (tensor, cupy) kept as it is."""
    if isinstance(value, bool):
        raise bad_value(name, value, expected)
    if isinstance(value, (int, float, np.integer, np.floating)):
        if not math.isfinite(float(value)):
            raise bad_value(name, value, expected)
        return float(value)
    shape = getattr(value, "shape", None)
    if shape is None or not hasattr(value, "dtype"):
        raise bad_value(name, value, expected)
    if tuple(shape) != ():
        raise bad_value(name, value, f"{expected}, a scalar (0-d array), not shape {tuple(shape)}")
    if isinstance(value, np.ndarray):
        value = value[()]
        return _scalar(name, value, expected)
    # detach: a check needs no graph (and torch warns on float() of a grad tensor)
    plain = value.detach() if hasattr(value, "detach") else value
    try:
        finite = math.isfinite(float(plain))  # a host sync on a GPU: once per coefficient
    except (TypeError, ValueError):
        raise bad_value(name, value, expected) from None
    if not finite:
        raise bad_value(name, value, expected)
    return value


def _is_zero(value: Any) -> bool:
    """True for a plain number 0 (never for an array, whose gradient may be needed)."""
    return isinstance(value, (int, float)) and value == 0


def _expi(xp: ModuleType, phase: Any) -> Any:
    """``exp(i phase)`` of a real array as a complex array of the matching precision."""
    cdtype = xp.complex64 if phase.dtype == xp.float32 else xp.complex128
    # through a complex cast, not python `1j * real`: the array API does not promote
    # real arrays with complex scalars on every backend
    return xp.exp(xp.astype(phase, cdtype) * 1j)


def _dtype(xp: ModuleType, dtype: Any) -> Any:
    """A numpy dtype (or its name) as the namespace's dtype; other dtypes unchanged."""
    try:
        name = np.dtype(dtype).name
    except TypeError:  # torch.float32 and other libraries' dtypes
        return dtype
    return getattr(xp, name)


def geometric_probe_radius_A(
    energy_ev: float, semiangle_mrad: float, aberrations: Mapping[str, float] | None, n: int = 64
) -> float:
    """Largest ray displacement ``|∇_k χ| / 2π`` (Å) over the aperture: the probe's geometric radius.

    With pure defocus this is ``|C10| · α``; with no aberrations 0.
    """
    lam = wavelength_A(energy_ev)
    # a numpy estimate: tensors become numbers (a size check needs no gradient)
    aberrations = {k: float(v) for k, v in polar_coefficients(aberrations).items()}
    amax = semiangle_mrad * 1e-3
    a = np.linspace(0.0, amax, n)[:, None] + np.zeros((1, 4 * n))
    p = np.linspace(0.0, 2 * np.pi, 4 * n, endpoint=False)[None, :] + np.zeros((n, 1))
    h = 1e-7
    # central differences of the polynomial χ: radial and azimuthal gradient in k = α / λ
    da = (
        (aberration_function(a + h, p, energy_ev, aberrations) - aberration_function(a - h, p, energy_ev, aberrations))
        / (2 * h)
        * lam
    )
    dp = (
        aberration_function(a, p + h, energy_ev, aberrations) - aberration_function(a, p - h, energy_ev, aberrations)
    ) / (2 * h)
    with np.errstate(divide="ignore", invalid="ignore"):
        dp = np.where(a > 0, dp * lam / a, 0.0)
    return float(np.sqrt(da**2 + dp**2).max() / (2 * np.pi))
