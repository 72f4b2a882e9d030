"""Projection (single slice) and multislice propagation of an electron wave.

The exit wave of a specimen cut into slices with transmission functions
``t_s = exp(i σ v_s)`` (σ the interaction constant, v_s the slice's projected
potential) is

    ψ_{s+1} = F⁻¹[ B(k) P(k, Δz) F[t_s ψ_s] ],     P = exp(-iπ λ Δz k²)

(Kirkland, *Advanced Computing in Electron Microscopy*, ch. 6), with ``B``
the band limit at 2/3 of the Nyquist frequency that keeps the products
``t_s ψ_s`` free of aliasing. The projection approximation is one slice. The
far-field pattern is ``|B F[t_N ψ_N]|²``: the propagation after the last slice
is a pure phase in Fourier space and does not change it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ..physics import interaction_constant, wavelength_A

#: fraction of the Nyquist frequency kept by the anti-aliasing band limit
BANDLIMIT_FRACTION = 2.0 / 3.0


def bandlimit(shape: Sequence[int], fraction: float = BANDLIMIT_FRACTION,
              xp: ModuleType = np) -> Any:
    """Anti-aliasing mask (FFT order): 1 inside ``(k_y/k_Ny,y)² + (k_x/k_Ny,x)² <= fraction²``."""
    ny, nx = int(shape[0]), int(shape[1])
    # frequencies in units of the Nyquist frequency of each axis
    fy = xp.fft.fftfreq(ny) * 2
    fx = xp.fft.fftfreq(nx) * 2
    return ((fy[:, None] ** 2 + fx[None, :] ** 2) <= fraction**2 + 1e-12).astype(np.float32)


def fresnel_propagator(shape: Sequence[int], sampling_A: Sequence[float], energy_ev: float,
                       dz_A: float, xp: ModuleType = np) -> Any:
    """Fresnel propagator ``exp(-iπ λ Δz k²)`` over ``dz_A`` (Å), FFT order (abTEM's sign)."""
    lam = wavelength_A(energy_ev)
    ky = xp.fft.fftfreq(int(shape[0]), float(sampling_A[0]))
    kx = xp.fft.fftfreq(int(shape[1]), float(sampling_A[1]))
    py = xp.exp(-1j * math.pi * lam * dz_A * ky**2)
    px = xp.exp(-1j * math.pi * lam * dz_A * kx**2)
    return (py[:, None] * px[None, :]).astype(np.complex64)


def transmission(potential_V_A: Any, energy_ev: float) -> Any:
    """Transmission function ``exp(i σ v)`` of a projected potential (V·Å)."""
    from ..backend import array_module

    xp = array_module(potential_V_A)
    return xp.exp(1j * interaction_constant(energy_ev) * potential_V_A)


def fft_module(xp: ModuleType) -> Any:
    """scipy.fft for numpy arrays (faster, no extra threads), else ``xp.fft``."""
    if xp is np:
        import scipy.fft

        return scipy.fft
    return xp.fft


def exit_spectrum(psi: Any, transmissions: Iterable[Any], propagator: Any, mask: Any,
                  xp: ModuleType = np) -> Any:
    """Band-limited Fourier transform of the exit wave, ``B F[t_N ψ_N]``.

    Parameters
    ----------
    psi : array (..., ny, nx)
        Incident waves in real space.
    transmissions : iterable of arrays broadcastable to ``psi``
        Transmission function of each slice, in order along the beam; an
        iterable so that a caller can build them one slice at a time.
    propagator : array (ny, nx)
        Fresnel propagator over one slice thickness (FFT order).
    mask : array (ny, nx)
        Band limit (FFT order).

    Returns
    -------
    array (..., ny, nx)
        Complex spectrum, FFT order, unnormalised (numpy's forward FFT).
    """
    fft = fft_module(xp)
    kernel = propagator * mask
    spectrum = None
    for t in transmissions:
        if spectrum is not None:
            psi = fft.ifft2(spectrum * kernel, axes=(-2, -1))
        spectrum = fft.fft2(psi * t, axes=(-2, -1))
    if spectrum is None:
        spectrum = fft.fft2(psi, axes=(-2, -1))
    return spectrum * mask


def exit_wave(psi: Any, transmissions: Iterable[Any], propagator: Any, mask: Any,
              xp: ModuleType = np) -> Any:
    """Exit wave in real space after the last slice (no propagation after it)."""
    fft = fft_module(xp)
    return fft.ifft2(exit_spectrum(psi, transmissions, propagator, mask, xp), axes=(-2, -1))

