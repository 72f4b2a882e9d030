"""ScanGeometry against hand-computed windows, samplings, corners and detector crops."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from stemdask.errors import InvalidArgumentError
from stemdask.physics import wavelength_A
from stemdask.scan_geometry import ScanGeometry, fast_even_length

E = 80e3
LAM = wavelength_A(E)


def test_default_window_from_the_detector():
    geo = ScanGeometry(E, 64, 60.0)
    # pixel 2·60/64 = 1.875 mrad; L = λ / pixel; M = 1.5 · 64 = 96 (= 2⁵·3, fast and even)
    length = LAM / 1.875e-3
    assert geo.window_px == (96, 96)
    assert geo.sampling_A == pytest.approx((length / 96, length / 96), rel=1e-12)
    assert geo.window_A == pytest.approx((length, length), rel=1e-12)
    assert geo.detector_pixel_mrad == pytest.approx((1.875, 1.875), rel=1e-12)
    # band limit λ (2/3) / 2d = 1.875 mrad · 96 / 3 = 60 mrad: exactly the detector edge
    assert geo.bandlimit_mrad == pytest.approx((60.0, 60.0), rel=1e-12)
    assert geo.wavelength_A == LAM and geo.beam_center_px == (32, 32)
    assert geo.detector_shape_px == (64, 64) and geo.max_angle_mrad == (60.0, 60.0)


def test_window_is_even_fast_and_at_least_one_and_a_half_detectors():
    # 1.5 · 50 = 75 = 3·5² is fast but odd; 76 = 2²·19 and 77, 78 = 2·3·13 are not fast: 80 = 2⁴·5
    assert fast_even_length(75) == 80
    geo = ScanGeometry(E, (50, 40), (55.0, 45.0))
    assert geo.window_px == (80, 60)
    for axis, (n, max_angle) in enumerate([(50, 55.0), (40, 45.0)]):
        m = geo.window_px[axis]
        assert m % 2 == 0 and m >= 1.5 * n
        assert geo.detector_pixel_mrad[axis] == pytest.approx(2 * max_angle / n, rel=1e-12)
        assert geo.bandlimit_mrad[axis] >= max_angle
        assert geo.sampling_A[axis] == pytest.approx(LAM / (2 * max_angle * 1e-3 / n) / m, rel=1e-12)


def test_given_sampling_rounds_the_window_and_too_coarse_a_sampling_is_an_error():
    geo = ScanGeometry(E, 64, 60.0, sampling_A=0.04)
    length = LAM / 1.875e-3
    m = round(length / 0.04)
    assert geo.window_px == (m, m) and geo.sampling_A == (0.04, 0.04)
    assert geo.detector_pixel_mrad[0] == pytest.approx(1e3 * LAM / (m * 0.04), rel=1e-12)
    assert geo.bandlimit_mrad[0] == pytest.approx(1e3 * LAM / (3 * 0.04), rel=1e-12)
    # d = 0.3 Å band-limits at λ / 3d ≈ 46.4 mrad < 60 mrad
    limit = 1e3 * LAM / (3 * 0.3)
    assert 46 < limit < 47
    with pytest.raises(InvalidArgumentError, match=f"max_angle_mrad=60.0 is invalid.*at most {limit:.4g}"):
        ScanGeometry(E, 64, 60.0, sampling_A=0.3)
    with pytest.raises(InvalidArgumentError, match="energy_ev"):
        ScanGeometry(-1.0, 64, 60.0)
    with pytest.raises(InvalidArgumentError, match="detector_shape_px"):
        ScanGeometry(E, 64.5, 60.0)


def test_windows_corners_and_sub_pixel_offsets():
    geo = ScanGeometry(E, 64, 60.0)
    d = geo.sampling_A[0]
    y = np.array([3.37, 10.5]) * d
    x = np.array([0.25, 7.0, 20.75]) * d
    origin, shape = geo.field_px(y, x)
    # origin: floor(min / d) - M/2 - 1
    assert origin == (3 - 48 - 1, 0 - 48 - 1)
    (cy, cx), (oy, ox) = geo.windows(y, x, origin)
    # positions in field pixels 49.37, 56.5 (y) and 49.25, 56, 69.75 (x); corner floor(u) - 48
    np.testing.assert_array_equal(cy, [1, 8])
    np.testing.assert_array_equal(cx, [1, 8, 21])
    np.testing.assert_allclose(oy / d, [48.37, 48.5], atol=1e-9)
    np.testing.assert_allclose(ox / d, [48.25, 48.0, 48.75], atol=1e-9)
    assert shape == (8 + 96, 21 + 96)
    # windows in the field frame: the corner plus the offset is the position
    np.testing.assert_allclose((origin[0] + cy) * d + oy, y, atol=1e-12)
    np.testing.assert_allclose((origin[1] + cx) * d + ox, x, atol=1e-12)


def test_detector_crop_indices_and_runs_agree():
    geo = ScanGeometry(E, (64, 5), (60.0, 6.0))
    iy, ix = geo.detector_index_px()
    m_y, m_x = geo.window_px
    np.testing.assert_array_equal(iy, np.r_[np.arange(m_y - 32, m_y), np.arange(32)])
    np.testing.assert_array_equal(ix, np.r_[m_x - 2, m_x - 1, 0, 1, 2])
    assert iy[32] == 0 and ix[2] == 0  # the beam on pixel N // 2
    runs_y, runs_x = geo.detector_runs()
    assert runs_y == [(0, m_y - 32, m_y), (32, 0, 32)]
    assert runs_x == [(0, m_x - 2, m_x), (2, 0, 3)]
    # the runs copy the same pixels as the indices, and the indices are fftshift's centre
    spectrum = np.random.default_rng(0).normal(size=(m_y, m_x))
    by_runs = np.empty((64, 5))
    for dy, sy0, sy1 in runs_y:
        for dx, sx0, sx1 in runs_x:
            by_runs[dy : dy + sy1 - sy0, dx : dx + sx1 - sx0] = spectrum[sy0:sy1, sx0:sx1]
    np.testing.assert_array_equal(by_runs, spectrum[iy[:, None], ix[None, :]])
    shifted = np.fft.fftshift(spectrum)
    np.testing.assert_array_equal(by_runs[:, 2], shifted[m_y // 2 - 32 : m_y // 2 + 32, m_x // 2])


def test_frozen_and_consistent_with_the_simulator():
    geo = ScanGeometry(E, 32, 50.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        geo.window_px = (10, 10)
    assert geo == ScanGeometry(E, (32, 32), (50, 50))
    assert dataclasses.replace(geo, max_angle_mrad=(50.0, 50.0)) == geo
    from stemdask.simulate import samples, simulate_4dstem

    data, truth = simulate_4dstem(
        samples.mos2((2, 2)),
        energy_ev=E,
        semiangle_mrad=20,
        scan_shape=(2, 2),
        scan_step_A=0.5,
        detector_shape=32,
        max_angle_mrad=50.0,
    )
    assert truth.attrs["window_px"] == list(geo.window_px)
    assert truth.attrs["potential_sampling_A"] == list(geo.sampling_A)
    assert data.attrs["detector_pixel_mrad"] == pytest.approx(list(geo.detector_pixel_mrad))
    assert truth.attrs["bandlimit_mrad"] == pytest.approx(list(geo.bandlimit_mrad))
    assert math.isclose(truth.attrs["window_A"][0], geo.window_A[0])
