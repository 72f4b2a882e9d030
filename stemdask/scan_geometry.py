"""Geometry shared by a STEM simulation and a ptychographic reconstruction.

A diffraction pattern of ``N`` detector pixels spanning ``±max_angle`` (a
pixel is ``2 max_angle / N``) is the FFT of a real-space window of
``L = λ / pixel`` Å around the probe. The window has ``M >= 1.5 N`` pixels of
``d = L / M`` Å, so the anti-aliasing band limit at 2/3 of Nyquist
(``λ / 3d``) reaches at least ``max_angle``. The detector is the central
``N`` frequencies of the window's FFT, the unscattered beam on pixel
``N // 2``. Each probe position gets the window whose integer corner on the
``d`` grid is nearest below it; the remainder is a sub-pixel offset that a
Fourier phase ramp applies exactly.

:class:`ScanGeometry` holds these numbers once, so that patterns simulated
with it and a reconstruction from them mean the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.fft

from .checks import pair
from .errors import bad_value
from .optics import BANDLIMIT_FRACTION
from .physics import wavelength_A


def fast_even_length(n: int) -> int:
    """The smallest even length ``>= n`` that scipy's FFT handles fast (factors 2, 3, 5, ...)."""
    m = scipy.fft.next_fast_len(int(n))
    while m % 2:
        m = scipy.fft.next_fast_len(m + 1)
    return m


@dataclass(frozen=True)
class ScanGeometry:
    """The simulation window, its sampling and the detector pixels, from the detector.

    Parameters
    ----------
    energy_ev : float
        Beam energy in eV.
    detector_shape_px : int or (int, int)
        Detector pixels ``N`` (k_y, k_x).
    max_angle_mrad : float or (float, float)
        Half-width of the detector in mrad (a pixel is ``2 max_angle / N``).
    sampling_A : float or (float, float), optional
        Real-space (potential) sampling ``d`` in Å. None: ``d = L / M`` with
        ``M`` the smallest fast even length ``>= 1.5 N``. Given: ``M`` is
        ``L / d`` rounded, and a sampling whose band limit does not reach
        ``max_angle_mrad`` is an error. After construction it holds the
        sampling in use.

    Attributes
    ----------
    wavelength_A : float
        Relativistic electron wavelength in Å.
    window_px : (int, int)
        Window size ``M`` (y, x) in pixels; even and at least ``1.5 N``.
    detector_pixel_mrad : (float, float)
        Exact detector pixel ``1e3 λ / (M d)`` in mrad (may differ from
        ``2 max_angle / N`` by up to ``1 / 2M`` when ``sampling_A`` is given).
    bandlimit_mrad : (float, float)
        Band-limit angle ``1e3 λ · (2/3) / (2 d)`` in mrad, at least ``max_angle_mrad``.

    Raises
    ------
    InvalidArgumentError
        For non-positive or non-finite values, or a given ``sampling_A`` too
        coarse for ``max_angle_mrad`` (the error names ``max_angle_mrad``).

    Examples
    --------
    >>> geo = ScanGeometry(80e3, 64, 60.0)
    >>> geo.window_px
    (96, 96)
    """

    energy_ev: float
    detector_shape_px: tuple[int, int]
    max_angle_mrad: tuple[float, float]
    sampling_A: tuple[float, float] | None = None
    wavelength_A: float = field(init=False)
    window_px: tuple[int, int] = field(init=False)
    detector_pixel_mrad: tuple[float, float] = field(init=False)
    bandlimit_mrad: tuple[float, float] = field(init=False)

    def __post_init__(self) -> None:
        energy = pair("energy_ev", self.energy_ev)[0]
        det = pair("detector_shape_px", self.detector_shape_px, integer=True)
        max_angle = pair("max_angle_mrad", self.max_angle_mrad)
        given = None if self.sampling_A is None else pair("sampling_A", self.sampling_A)
        lam = wavelength_A(energy)
        window, sampling = [], []
        for axis in range(2):
            n = det[axis]
            length = lam / (2 * max_angle[axis] * 1e-3 / n)  # L = λ / pixel
            if given is None:
                m = fast_even_length(math.ceil(1.5 * n))
                d = length / m
            else:
                d = given[axis]
                m = int(round(length / d))
                limit_mrad = 1e3 * lam * BANDLIMIT_FRACTION / (2 * d)
                if 2 * m < 3 * n or limit_mrad < max_angle[axis] * (1 - 1e-9):
                    raise bad_value(
                        "max_angle_mrad",
                        max_angle[axis],
                        f"at most {limit_mrad:.4g} mrad along {'yx'[axis]}: the potential "
                        f"sampling {d:.4g} Å band-limits scattering to 2/3 of Nyquist "
                        f"(λ / 3d); use a finer sampling_A or a smaller max_angle_mrad",
                    )
            window.append(m)
            sampling.append(d)
        # frozen: the normalised inputs and the derived values are set once, here
        values = {
            "energy_ev": energy,
            "detector_shape_px": det,
            "max_angle_mrad": max_angle,
            "sampling_A": tuple(sampling),
            "wavelength_A": lam,
            "window_px": tuple(window),
            "detector_pixel_mrad": tuple(1e3 * lam / (m * d) for m, d in zip(window, sampling)),
            "bandlimit_mrad": tuple(1e3 * lam * BANDLIMIT_FRACTION / (2 * d) for d in sampling),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def window_A(self) -> tuple[float, float]:
        """Window size ``L = M d`` (y, x) in Å (``λ`` over the detector pixel)."""
        d = self._d_A
        return (self.window_px[0] * d[0], self.window_px[1] * d[1])

    @property
    def _d_A(self) -> tuple[float, float]:
        """The sampling in use (never None after construction)."""
        assert self.sampling_A is not None
        return self.sampling_A

    @property
    def beam_center_px(self) -> tuple[int, int]:
        """Detector pixel (y, x) of the unscattered beam: ``N // 2``."""
        return (self.detector_shape_px[0] // 2, self.detector_shape_px[1] // 2)

    def windows(
        self, y_A: Any, x_A: Any, field_origin_px: tuple[int, int] = (0, 0)
    ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """Window corners (px) and sub-pixel probe offsets (Å) of probe positions.

        The axes are independent: pass the y and x coordinates of a list of
        positions (two arrays of the same shape), or the two axes of a raster
        (any lengths).

        Parameters
        ----------
        y_A, x_A : array-like
            Probe positions along y and x in Å, in the frame whose origin is
            pixel 0 of the ``d`` grid.
        field_origin_px : (int, int)
            Pixel of the ``d`` grid where the field (the array the windows are
            cut from) starts, e.g. from :meth:`field_px`.

        Returns
        -------
        corners_px : (array of int64, array of int64)
            First pixel (y, x) of each position's window in the field: the
            window is ``field[cy:cy + M_y, cx:cx + M_x]``.
        offsets_A : (array of float, array of float)
            Position of the probe in its window from the corner (y, x) in Å,
            between ``M // 2`` and ``M // 2 + 1`` pixels: the shift to apply
            to a probe centred on window pixel (0, 0).
        """
        corners, offsets = [], []
        for axis, p in enumerate((y_A, x_A)):
            d, m = self._d_A[axis], self.window_px[axis]
            u = np.asarray(p, dtype=np.float64) / d - field_origin_px[axis]  # in field pixels
            corner = np.floor(u).astype(np.int64) - m // 2
            corners.append(corner)
            offsets.append((u - corner) * d)
        return (corners[0], corners[1]), (offsets[0], offsets[1])

    def field_px(self, y_A: Any, x_A: Any) -> tuple[tuple[int, int], tuple[int, int]]:
        """Origin and shape (y, x) in pixels of the smallest field holding every position's window.

        Parameters
        ----------
        y_A, x_A : array-like
            Probe positions along y and x in Å (as in :meth:`windows`).

        Returns
        -------
        origin_px : (int, int)
            Pixel of the ``d`` grid where the field starts (its first pixel is
            at ``origin_px · d`` Å); one pixel of slack keeps every corner
            ``>= 0`` whatever the rounding.
        shape_px : (int, int)
            Field size in pixels.
        """
        origin = tuple(
            int(math.floor(float(np.min(p)) / d)) - m // 2 - 1 for p, d, m in zip((y_A, x_A), self._d_A, self.window_px)
        )
        corners, _ = self.windows(y_A, x_A, origin)  # type: ignore[arg-type]
        shape = tuple(int(c.max()) + m for c, m in zip(corners, self.window_px))
        return origin, shape  # type: ignore[return-value]

    def detector_index_px(self) -> tuple[np.ndarray, np.ndarray]:
        """FFT-order indices (y, x) in the window's spectrum of the detector pixels 0 … N-1.

        ``spectrum[..., iy[:, None], ix[None, :]]`` is the pattern on the
        detector, beam on pixel ``N // 2``.
        """
        return tuple(
            (np.arange(n) - n // 2) % m  # type: ignore[return-value]
            for n, m in zip(self.detector_shape_px, self.window_px)
        )

    def detector_runs(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """The detector crop as contiguous runs per axis: ``(destination start, source start, source stop)``.

        The same pixels as :meth:`detector_index_px` (at most two runs per
        axis: the negative and the non-negative frequencies), for copying
        with slices instead of fancy indexing.
        """
        runs = []
        for n, m in zip(self.detector_shape_px, self.window_px):
            half = n // 2
            runs.append([(0, m - half, m), (half, 0, n - half)] if half else [(0, 0, n)])
        return runs[0], runs[1]
