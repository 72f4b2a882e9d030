"""One multislice step for a batch of waves: transmit, Fresnel-propagate, band-limit.

The exit wave of a specimen cut into slices with transmission functions
``t_s = exp(i σ v_s)`` (σ the interaction constant, v_s the slice's projected
potential) is

    ψ_{s+1} = F⁻¹[ B(k) P(k, Δz) F[t_s ψ_s] ],     P = exp(-iπ λ Δz k²)

(Kirkland, *Advanced Computing in Electron Microscopy*, ch. 6), with ``B``
the band limit at 2/3 of the Nyquist frequency that keeps the products
``t_s ψ_s`` free of aliasing (:func:`stemdask.optics.bandlimit`). The
projection approximation is one slice. The far-field pattern is
``|B F[t_N ψ_N]|²``: the propagation after the last slice is a pure phase in
Fourier space and does not change it, so the last step is taken with
``kernel = B`` and ``return_spectrum=True``.

:func:`multislice_step` serves the simulator (numpy or cupy, in place for
speed) and phase retrieval (torch, differentiable) with one definition.
FFTs follow numpy's normalisation (forward unnormalised, inverse ``1/N``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.fft

from . import optics
from .backend import array_module, is_torch
from .errors import bad_value


def propagation_kernel(
    shape: Sequence[int],
    sampling_A: Sequence[float] | float,
    energy_ev: float,
    dz_A: Any,
    xp: Any = np,
    *,
    device: Any = None,
    dtype: Any = np.complex64,
) -> Any:
    """``K = B · P(Δz)``: the Fresnel propagator over ``dz_A`` (Å) times the 2/3 band limit.

    Parameters
    ----------
    shape : (int, int)
        Wave grid (y, x) in pixels.
    sampling_A : float or (float, float)
        Pixel size in Å.
    energy_ev : float
        Beam energy in eV.
    dz_A : float or 0-d array
        Slice thickness in Å (a torch tensor may require grad).
    xp, device, dtype
        Backend (numpy, cupy, torch or an array-API namespace), device and
        complex dtype of the kernel, as in :func:`stemdask.optics.fresnel_propagator`.

    Returns
    -------
    array (ny, nx)
        Complex kernel, FFT order.
    """
    propagator = optics.fresnel_propagator(shape, sampling_A, energy_ev, dz_A, xp, device=device, dtype=dtype)
    mask = optics.bandlimit(shape, xp=xp, device=device, dtype=propagator.real.dtype)
    return propagator * mask


def multislice_step(
    psi: Any, transmission: Any, kernel: Any, *, overwrite: bool = False, return_spectrum: bool = False
) -> Any:
    """One slice: ``F⁻¹[K · F[t ψ]]`` for a batch of waves (FFTs over the last two axes).

    Parameters
    ----------
    psi : array (..., ny, nx)
        Complex waves in real space: numpy, cupy or torch.
    transmission : array or sequence of arrays
        The slice's transmission function: an array broadcastable to ``psi``
        (one object for all waves, or one per wave), or a sequence with one
        ``(ny, nx)`` array per wave of a ``(batch, ny, nx)`` ``psi``. The
        sequence form lets a caller pass each wave's window of a larger field
        as a view: gathering the windows into one array would copy them at
        every slice.
    kernel : array (ny, nx)
        What multiplies the spectrum: :func:`propagation_kernel` (``B · P``)
        between slices, or the band limit ``B`` alone after the last slice.
    overwrite : bool
        numpy and cupy: work in ``psi``'s memory (it is overwritten and the
        result may share it); numpy's FFTs then run in place (``scipy.fft``
        with ``overwrite_x``), which is what makes the simulator fast. Torch
        ignores it: in-place operations would break autograd.
    return_spectrum : bool
        Return ``K · F[t ψ]`` (FFT order, unnormalised) instead of the wave
        in real space: the last slice of a diffraction simulation, whose
        pattern is ``|B F[t ψ]|²``.

    Returns
    -------
    array (..., ny, nx)
        The waves entering the next slice (or their spectrum), same backend.
    """
    if is_torch(psi):
        # autograd-safe: every operation makes a new tensor
        if isinstance(transmission, (list, tuple)):
            import torch

            transmission = torch.stack(tuple(transmission))
        spectrum = fft2(psi * transmission) * kernel
        return spectrum if return_spectrum else fft2(spectrum, inverse=True)

    if not overwrite:
        psi = psi.copy()
    if isinstance(transmission, (list, tuple)):
        if len(transmission) != psi.shape[0]:
            raise bad_value(
                "transmission",
                f"a sequence of {len(transmission)} arrays",
                f"one (ny, nx) transmission per wave ({psi.shape[0]} waves)",
            )
        for b, t in enumerate(transmission):
            psi[b] *= t
    else:
        psi *= transmission
    psi = fft2(psi, overwrite=True)
    psi *= kernel
    return psi if return_spectrum else fft2(psi, inverse=True, overwrite=True)


def fft2(a: Any, *, inverse: bool = False, overwrite: bool = False) -> Any:
    """2-D FFT (or inverse) over the last two axes of a numpy, cupy or torch array.

    Parameters
    ----------
    a : array (..., ny, nx)
        Complex array.
    inverse : bool
        Inverse transform (normalised by ``1/N``, as numpy's).
    overwrite : bool
        numpy only: let ``scipy.fft`` work in ``a``'s memory (``overwrite_x``),
        which saves a copy of the batch per transform; ``a`` is then garbage.

    Returns
    -------
    array (..., ny, nx)
        Same backend as ``a``.
    """
    root = type(a).__module__.partition(".")[0]
    if root == "numpy":
        # scipy.fft: faster than numpy.fft, no threads of its own, can work in place
        f = scipy.fft.ifft2 if inverse else scipy.fft.fft2
        return f(a, axes=(-2, -1), overwrite_x=overwrite)
    if root == "torch":
        import torch

        f = torch.fft.ifftn if inverse else torch.fft.fftn
        return f(a, dim=(-2, -1))
    xp = array_module(a)
    f = xp.fft.ifft2 if inverse else xp.fft.fft2
    return f(a, axes=(-2, -1))
