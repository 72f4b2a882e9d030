"""Electron dose: Poisson counting noise, integer counts, and partial spatial coherence.

Random numbers come from one generator per probe position, seeded from
``(seed, scan_y index, scan_x index)`` with :class:`numpy.random.SeedSequence`,
so a simulated dataset is the same whatever its chunking or the scheduler.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import bad_value

#: count dtypes by the largest count they hold
_COUNT_DTYPES = (np.uint8, np.uint16, np.uint32)


def resolve_dose(
    dose_e_per_pattern: float | None, dose_e_per_A2: float | None, scan_step_A: tuple[float, float]
) -> float | None:
    """Electrons per pattern from a dose per pattern or per Å² (``per_A2 · step_y · step_x``)."""
    if dose_e_per_pattern is not None and dose_e_per_A2 is not None:
        raise bad_value("dose_e_per_A2", dose_e_per_A2, "None when dose_e_per_pattern is given (give one of the two)")
    for name, value in (("dose_e_per_pattern", dose_e_per_pattern), ("dose_e_per_A2", dose_e_per_A2)):
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(float(value))
            or value <= 0
        ):
            raise bad_value(name, value, "a positive finite number of electrons (or None for no noise)")
    if dose_e_per_A2 is not None:
        return float(dose_e_per_A2) * scan_step_A[0] * scan_step_A[1]
    return None if dose_e_per_pattern is None else float(dose_e_per_pattern)


def count_dtype(dose_e_per_pattern: float) -> np.dtype:
    """Smallest unsigned dtype that holds a pattern's counts with certainty in practice.

    A pixel never holds more than the pattern total, which exceeds its mean
    ``dose`` by 12 standard deviations with probability below 1e-30.
    """
    bound = dose_e_per_pattern + 12 * math.sqrt(dose_e_per_pattern) + 12
    for dtype in _COUNT_DTYPES:
        if bound < np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def position_rng(seed: int, iy: int, ix: int) -> np.random.Generator:
    """The generator of probe position ``(iy, ix)`` (independent streams, any chunking)."""
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(int(iy), int(ix))))


def poisson_counts(
    intensity: np.ndarray, dose_e_per_pattern: float, seed: int, iy: np.ndarray, ix: np.ndarray, dtype: Any
) -> np.ndarray:
    """Counted patterns ``Poisson(dose · I)`` for a tile of positions.

    Parameters
    ----------
    intensity : (cy, cx, ky, kx) array
        Patterns normalised to the fraction of the beam per pixel.
    dose_e_per_pattern : float
        Mean electrons of a pattern whose intensities sum to 1.
    seed : int
        Global seed.
    iy, ix : int arrays (cy,), (cx,)
        Global scan indices of the tile's rows and columns.
    dtype : dtype
        Integer output dtype (see :func:`count_dtype`).
    """
    out = np.empty(intensity.shape, dtype=dtype)
    limit = np.iinfo(dtype).max
    lam = np.clip(intensity, 0.0, None) * dose_e_per_pattern  # FFT round-off can give -1e-20
    for a, y in enumerate(iy):
        for b, x in enumerate(ix):
            counts = position_rng(seed, y, x).poisson(lam[a, b])
            if counts.max(initial=0) > limit:
                raise OverflowError(f"a count of {counts.max()} does not fit {np.dtype(dtype)}")
            out[a, b] = counts
    return out


def source_blur(intensity: np.ndarray, sigma_positions: tuple[float, float]) -> np.ndarray:
    """Gaussian convolution of the intensity over probe positions (axes 0 and 1).

    The kernel (standard deviation ``sigma_positions`` in scan steps,
    truncated at 4σ) is sampled at the scan positions and normalised; the
    caller supplies ``margin(sigma)`` extra positions on each side and crops
    them, so no boundary condition is involved.
    """
    out = intensity
    for axis, sigma in enumerate(sigma_positions):
        if sigma > 0:
            out = ndimage.gaussian_filter1d(out, sigma, axis=axis, mode="constant", truncate=4.0)
    return out


def margin(sigma_positions: float) -> int:
    """Extra positions on each side that :func:`source_blur` reads (its kernel radius)."""
    return int(4.0 * sigma_positions + 0.5) if sigma_positions > 0 else 0
