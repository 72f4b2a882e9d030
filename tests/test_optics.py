"""Electron-optics conventions: aberration symbols and signs, aperture, probe (Airy), grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, special

from stemdask import optics
from stemdask.errors import InvalidArgumentError, InvalidTypeError
from stemdask.optics import fresnel_propagator
from stemdask.physics import wavelength_A

E = 200e3
LAM = wavelength_A(E)


def test_defocus_is_minus_c10_and_aliases_map_to_polar_symbols():
    p = optics.polar_coefficients(
        {"defocus": 50.0, "Cs": 1e4, "astigmatism": 3.0, "astigmatism_angle": 0.5, "coma": 7.0}
    )
    assert p["C10"] == -50.0
    assert p["C30"] == 1e4 and p["C12"] == 3.0 and p["phi12"] == 0.5 and p["C21"] == 7.0
    assert set(p) == set(optics.POLAR_SYMBOLS)
    assert all(v == 0.0 for k, v in p.items() if k not in {"C10", "C30", "C12", "phi12", "C21"})


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"C99": 1.0}, "C99"),
        ({"defocus": 10.0, "C10": -10.0}, "each coefficient once"),
        ({"C30": float("nan")}, "finite"),
        ({"C12": "big"}, "finite"),
    ],
)
def test_bad_aberrations_raise(bad, match):
    with pytest.raises(InvalidArgumentError, match=match):
        optics.polar_coefficients(bad)


def test_aberrations_must_be_a_mapping():
    with pytest.raises(InvalidTypeError, match="aberrations"):
        optics.polar_coefficients([("C10", 1.0)])


def test_chi_matches_the_polar_formula():
    rng = np.random.default_rng(3)
    alpha = rng.uniform(0, 0.03, 50)
    phi = rng.uniform(-np.pi, np.pi, 50)
    ab = {
        "defocus": 120.0,
        "C12": 20.0,
        "phi12": 0.3,
        "C21": 500.0,
        "phi21": -1.0,
        "C23": 300.0,
        "phi23": 0.7,
        "C30": 2e4,
        "C32": 1e3,
        "phi32": 0.2,
        "C34": 800.0,
        "phi34": 1.1,
        "C41": 1e5,
        "phi41": 0.4,
        "C50": 1e6,
        "C56": 2e5,
        "phi56": 0.9,
    }
    chi = optics.aberration_function(alpha, phi, E, ab)
    expected = (2 * np.pi / LAM) * (
        alpha**2 / 2 * (-120.0 + 20.0 * np.cos(2 * (phi - 0.3)))
        + alpha**3 / 3 * (500.0 * np.cos(phi + 1.0) + 300.0 * np.cos(3 * (phi - 0.7)))
        + alpha**4 / 4 * (2e4 + 1e3 * np.cos(2 * (phi - 0.2)) + 800.0 * np.cos(4 * (phi - 1.1)))
        + alpha**5 / 5 * (1e5 * np.cos(phi - 0.4))
        + alpha**6 / 6 * (1e6 + 2e5 * np.cos(6 * (phi - 0.9)))
    )
    np.testing.assert_allclose(chi, expected, rtol=1e-12, atol=1e-12)


def test_positive_defocus_focuses_below_the_entrance_surface():
    # abTEM: C10 = -defocus and propagation over dz multiplies by exp(-iπλ dz k²),
    # i.e. adds dz to C10: a probe with defocus Δ is in focus after travelling Δ.
    shape, sampling, delta = (128, 128), (0.05, 0.05), 80.0
    defocused = optics.probe_fourier(shape, sampling, energy_ev=E, semiangle_mrad=25, aberrations={"defocus": delta})
    focused = optics.probe_fourier(shape, sampling, energy_ev=E, semiangle_mrad=25)
    after = defocused * fresnel_propagator(shape, sampling, E, delta)
    np.testing.assert_allclose(after, focused, atol=2e-6 * np.abs(focused).max())
    # and travelling the other way makes it worse, not better
    before = defocused * fresnel_propagator(shape, sampling, E, -delta)
    assert np.abs(before - focused).max() > 0.5 * np.abs(focused).max()


def test_probe_is_normalised_and_centred():
    psi = optics.probe((96, 80), (0.07, 0.06), energy_ev=E, semiangle_mrad=20, aberrations={"defocus": 30})
    intensity = np.abs(psi) ** 2
    assert intensity.sum() == pytest.approx(1.0, rel=1e-10)
    assert np.unravel_index(np.argmax(intensity), intensity.shape) == (48, 40)
    # χ(k) = χ(-k) for defocus: the probe is point-symmetric about its centre pixel
    np.testing.assert_allclose(intensity[1:, 1:], intensity[1:, 1:][::-1, ::-1], atol=1e-12)


def _probe_on_line(r_A: np.ndarray, semiangle_mrad: float) -> np.ndarray:
    """|ψ(r)|² of the discrete aberration-free probe along x, by a direct Fourier sum."""
    n, d = 512, 0.04  # 20 Å window, fine k grid
    psi_k = optics.probe_fourier((n, n), (d, d), energy_ev=E, semiangle_mrad=semiangle_mrad)
    ky, kx = optics.spatial_frequencies((n, n), (d, d))
    kx = np.broadcast_to(kx, psi_k.shape)
    inside = psi_k != 0
    amp = psi_k[inside]
    return np.abs(np.exp(2j * np.pi * np.outer(r_A, kx[inside])) @ amp) ** 2


def test_aberration_free_probe_is_the_airy_pattern():
    alpha = 20e-3
    r = np.linspace(0.0, 2.2 * LAM / alpha, 60)
    profile = _probe_on_line(r, 20.0)
    profile /= profile[0]
    v = 2 * np.pi * alpha * r / LAM
    with np.errstate(invalid="ignore", divide="ignore"):
        airy = np.where(v > 0, (2 * special.j1(v) / v) ** 2, 1.0)
    np.testing.assert_allclose(profile, airy, atol=0.01)
    # first zero at 0.61 λ/α
    zero = optimize.minimize_scalar(
        lambda s: _probe_on_line(np.array([s]), 20.0)[0],
        bounds=(0.5 * LAM / alpha, 0.7 * LAM / alpha),
        method="bounded",
    ).x
    assert zero == pytest.approx(0.6098 * LAM / alpha, rel=0.01)


def test_soft_aperture_is_a_one_pixel_ramp():
    alpha, _ = optics.polar_angles((64, 64), (0.1, 0.1), E)
    pixel_mrad = 1e3 * LAM / 6.4
    hard = optics.aperture(alpha, 20.0)
    soft = optics.aperture(alpha, 20.0, soft=True, angular_sampling_mrad=pixel_mrad)
    assert soft.min() >= 0 and soft.max() <= 1
    assert np.all(soft[alpha * 1e3 < 20 - pixel_mrad] == 1)
    assert np.all(soft[alpha * 1e3 > 20 + pixel_mrad] == 0)
    # the soft edge integrates to the disc's area (π r² pixels) better than the hard one
    area = np.pi * (20.0 / pixel_mrad) ** 2
    assert abs(soft.sum() - area) < 0.02 * area
    assert abs(soft.sum() - area) < abs(hard.sum() - area)


def test_grids_are_fft_ordered_and_phi_is_measured_from_x_towards_y():
    ky, kx = optics.spatial_frequencies((4, 6), (0.5, 0.25))
    np.testing.assert_allclose(ky.ravel(), np.fft.fftfreq(4, 0.5))
    np.testing.assert_allclose(kx.ravel(), np.fft.fftfreq(6, 0.25))
    alpha, phi = optics.polar_angles((8, 8), (0.1, 0.1), E)
    assert phi[1, 0] == pytest.approx(np.pi / 2)  # +k_y
    assert phi[0, 1] == pytest.approx(0.0)  # +k_x
    assert alpha[0, 1] == pytest.approx(LAM / 0.8)


def test_shift_phase_moves_a_probe_by_the_given_vector():
    shape, d = (64, 64), (0.1, 0.1)
    psi_k = optics.probe_fourier(shape, d, energy_ev=E, semiangle_mrad=25)
    moved = np.fft.ifft2(psi_k * optics.shift_phase(shape, d, (0.7, -1.2)))
    rolled = np.roll(np.fft.ifft2(psi_k), (7, -12), axis=(0, 1))
    np.testing.assert_allclose(moved, rolled, atol=1e-6)


def test_geometric_probe_radius_of_defocus_is_defocus_times_angle():
    r = optics.geometric_probe_radius_A(E, 20.0, {"defocus": 200.0})
    assert r == pytest.approx(200.0 * 0.020, rel=1e-3)
    assert optics.geometric_probe_radius_A(E, 20.0, None) == 0.0


def test_semiangle_must_cover_a_pixel():
    with pytest.raises(InvalidArgumentError, match="semiangle_mrad"):
        optics.probe_fourier((8, 8), (0.1, 0.1), energy_ev=E, semiangle_mrad=-1)
    # positive but smaller than the first ring of frequencies still keeps the (0, 0) beam
    psi = optics.probe_fourier((8, 8), (0.1, 0.1), energy_ev=E, semiangle_mrad=1e-3)
    assert np.count_nonzero(psi) == 1
    assert math.isclose(float(np.sum(np.abs(np.fft.ifft2(psi)) ** 2)), 1.0)
