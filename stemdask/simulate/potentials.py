"""Projected atomic potentials from the Lobato & Van Dyck (2014) parameterisation.

The electron scattering factor of a neutral atom is

    f_e(g) = Σ_i a_i (2 + b_i g²) / (1 + b_i g²)²      (g in 1/Å, f_e in Å)

with five fitted pairs (a_i, b_i) per element (I. Lobato and D. Van Dyck,
Acta Cryst. A70 (2014) 636-649, doi:10.1107/S205327331401643X), shipped as
``stemdask/data/lobato_2014.json`` for H-U. With ``V(r) = 2π a0 e ∫ f_e(g)
exp(2πi g·r) d³g`` (a0 the Bohr radius, e = 14.40 V·Å) the closed forms are

    V(r)   = 2π² a0 e Σ_i a_i / b_i^(3/2) (√b_i / r + π) exp(-2π r / √b_i)             [V]
    v_z(R) = 4π² a0 e Σ_i a_i / b_i^(3/2) (√b_i K0(2πR/√b_i) + π R K1(2πR/√b_i))     [V·Å]

and the 2-D Fourier transform of the projected potential is
``2π a0 e f_e(k)`` [V·Å³], which is how slices are built on a grid: a sum over
atoms of ``f_e(k) exp(-2πi k·r_j)`` (computed exactly, sub-pixel, as a
matrix product of separable phase factors) and one inverse FFT.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from types import ModuleType
from typing import Any

import numpy as np
from scipy import constants as _c
from scipy import special

from ..errors import bad_type, bad_value

#: Bohr radius in Å
BOHR_A = _c.physical_constants["Bohr radius"][0] * 1e10
#: e / (4π ε0) in V·Å (14.40 V·Å)
COULOMB_V_A = _c.e / (4 * math.pi * _c.epsilon_0) * 1e10
#: the prefactor 2π a0 e of V(r) = 2π a0 e ∫ f_e(g) exp(2πi g·r) d³g, in V·Å²
KAPPA_V_A2 = 2 * math.pi * BOHR_A * COULOMB_V_A

PARAMETRIZATION = "Lobato & Van Dyck, Acta Cryst. A70 (2014) 636-649"


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    text = resources.files("stemdask").joinpath("data/lobato_2014.json").read_text()
    return json.loads(text)


@lru_cache(maxsize=1)
def _symbols() -> tuple[str, ...]:
    elements = _table()["elements"]
    return tuple(sorted(elements, key=lambda s: elements[s]["Z"]))


def atomic_number(element: str | int) -> int:
    """Atomic number of an element given by symbol (``"Mo"``) or number (42), H-U only."""
    symbols = _symbols()
    if isinstance(element, (str, np.str_)):
        key = str(element)
        if key not in symbols:
            raise bad_value(
                "element", element, f"an element symbol from H to U ({symbols[0]}..{symbols[-1]}, case-sensitive)"
            )
        return symbols.index(key) + 1
    if isinstance(element, bool) or not isinstance(element, (int, np.integer)):
        raise bad_type("element", element, "an element symbol or an atomic number")
    if not 1 <= int(element) <= len(symbols):
        raise bad_value("element", element, f"an atomic number from 1 (H) to {len(symbols)} (U)")
    return int(element)


def symbol(number: int) -> str:
    """Element symbol of atomic number ``number`` (1-92)."""
    return _symbols()[atomic_number(number) - 1]


def parameters(element: str | int) -> tuple[np.ndarray, np.ndarray]:
    """The Lobato (a_i [Å], b_i [Å²]) of an element."""
    entry = _table()["elements"][symbol(atomic_number(element))]
    return np.asarray(entry["a"], dtype=np.float64), np.asarray(entry["b"], dtype=np.float64)


def scattering_factor(element: str | int, k_inv_A: Any, xp: ModuleType = np) -> Any:
    """Electron scattering factor ``f_e(k)`` in Å at spatial frequency ``k`` (1/Å)."""
    a, b = parameters(element)
    k2 = xp.asarray(k_inv_A) ** 2
    out = xp.zeros_like(k2, dtype=float)
    for ai, bi in zip(a, b):
        denom = 1.0 + bi * k2
        out = out + ai * (2.0 + bi * k2) / denom**2
    return out


def potential(element: str | int, r_A: Any) -> np.ndarray:
    """Spherical atomic potential ``V(r)`` in V at distance ``r`` (Å) from the nucleus."""
    a, b = parameters(element)
    r = np.asarray(r_A, dtype=np.float64)[..., None]
    sb = np.sqrt(b)
    terms = a / b**1.5 * (sb / r + math.pi) * np.exp(-2 * math.pi * r / sb)
    return 2 * math.pi**2 * BOHR_A * COULOMB_V_A * terms.sum(-1)


def projected_potential(element: str | int, r_A: Any) -> np.ndarray:
    """Projected potential ``v_z(R) = ∫ V dz`` in V·Å at radial distance ``R`` (Å), closed form."""
    a, b = parameters(element)
    r = np.asarray(r_A, dtype=np.float64)[..., None]
    sb = np.sqrt(b)
    x = 2 * math.pi * r / sb
    terms = a / b**1.5 * (sb * special.k0(x) + math.pi * r * special.k1(x))
    return 4 * math.pi**2 * BOHR_A * COULOMB_V_A * terms.sum(-1)


def projected_scattering_factor(element: str | int, k_inv_A: Any, xp: ModuleType = np) -> Any:
    """2-D Fourier transform of ``v_z``: ``2π a0 e f_e(k)`` in V·Å³."""
    return KAPPA_V_A2 * scattering_factor(element, k_inv_A, xp)


def phase_factors(coords_A: Any, n: int, d: float, xp: ModuleType = np) -> Any:
    """``exp(-2πi k r_j)`` for the FFT frequencies ``k`` of an ``n``-point grid of step ``d``.

    Built as powers of ``exp(-2πi r_j / (n d))`` (a cumulative product: one
    complex exponential per atom instead of one per atom and frequency), with
    the negative frequencies as complex conjugates; the round-off after ``n/2``
    products stays below 1e-13.
    """
    coords = xp.asarray(coords_A, dtype=np.float64)
    base = xp.exp(-2j * math.pi * coords / (n * d))
    m_max = n // 2
    powers = xp.empty((coords.size, m_max + 1), dtype=np.complex128)
    powers[:, 0] = 1.0
    if m_max:
        powers[:, 1:] = xp.cumprod(xp.broadcast_to(base[:, None], (coords.size, m_max)), axis=1)
    m = np.rint(np.fft.fftfreq(n) * n).astype(np.int64)
    out = powers[:, xp.asarray(np.abs(m))]
    negative = xp.asarray(m < 0)
    out[:, negative] = xp.conj(out[:, negative])
    return out


def _ifft2(a: Any, xp: ModuleType) -> Any:
    if xp is np:
        import scipy.fft

        return scipy.fft.ifft2(a, overwrite_x=True)
    return xp.fft.ifft2(a)


def slice_potentials(
    numbers: Sequence[int],
    positions_A: np.ndarray,
    *,
    origin_A: Sequence[float],
    shape: Sequence[int],
    sampling_A: Sequence[float],
    slice_edges_A: Sequence[float],
    xp: ModuleType = np,
) -> Any:
    """Projected potential of each slice on a periodic grid, in V·Å.

    Parameters
    ----------
    numbers : sequence of int
        Atomic numbers.
    positions_A : (n, 3) array
        Atom positions ``(x, y, z)`` in Å (the ase order).
    origin_A : (float, float)
        Position ``(y, x)`` in Å of grid pixel (0, 0).
    shape : (int, int)
        Grid size ``(ny, nx)``; the grid is periodic (an atom near one edge
        has its tail on the other: the caller pads).
    sampling_A : (float, float)
        Pixel size ``(dy, dx)`` in Å.
    slice_edges_A : sequence of float
        Increasing z boundaries; atom j belongs to slice s when
        ``edges[s] <= z_j < edges[s + 1]`` (its whole projected potential).

    Returns
    -------
    array
        ``(n_slices, ny, nx)`` float64 projected potential per slice (V·Å).
    """
    ny, nx = int(shape[0]), int(shape[1])
    dy, dx = float(sampling_A[0]), float(sampling_A[1])
    numbers = np.asarray(numbers, dtype=np.int64)
    pos = np.asarray(positions_A, dtype=np.float64)
    edges = np.asarray(slice_edges_A, dtype=np.float64)
    ky = xp.fft.fftfreq(ny, dy)
    kx = xp.fft.fftfreq(nx, dx)
    k = xp.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    factors = {int(z): projected_scattering_factor(int(z), k, xp) for z in np.unique(numbers)}
    n_slices = len(edges) - 1
    out = xp.zeros((n_slices, ny, nx), dtype=np.float64)
    which = np.searchsorted(edges, pos[:, 2], side="right") - 1
    for s in range(n_slices):
        in_slice = which == s
        if not in_slice.any():
            continue
        spectrum = xp.zeros((ny, nx), dtype=np.complex128)
        for z, factor in factors.items():
            sel = in_slice & (numbers == z)
            if not sel.any():
                continue
            y = xp.asarray(pos[sel, 1] - origin_A[0])
            x = xp.asarray(pos[sel, 0] - origin_A[1])
            # Σ_j exp(-2πi (ky y_j + kx x_j)) as one (ny, n) @ (n, nx) product
            spectrum += factor * (phase_factors(y, ny, dy, xp).T @ phase_factors(x, nx, dx, xp))
        out[s] = _ifft2(spectrum, xp).real / (dy * dx)
    return out
