"""Physical constants against tabulated values."""

import math

import pytest

from stemdask import physics
from stemdask.errors import InvalidArgumentError


@pytest.mark.parametrize(
    "energy_ev, wavelength_A",
    [
        # Kirkland, Advanced Computing in Electron Microscopy (2010), Table 2.2 / 5.2
        (100e3, 0.0370144),
        (200e3, 0.0250793),
        (300e3, 0.0196875),
    ],
)
def test_wavelength_matches_tables(energy_ev, wavelength_A):
    assert physics.wavelength_A(energy_ev) == pytest.approx(wavelength_A, rel=2e-5)


@pytest.mark.parametrize("energy_ev, sigma", [(200e3, 0.72884e-3), (300e3, 0.65262e-3)])
def test_interaction_constant_matches_kirkland(energy_ev, sigma):
    # Kirkland Table 5.2 in rad/(kV Å) -> rad/(V Å)
    assert physics.interaction_constant(energy_ev) == pytest.approx(sigma, rel=2e-4)


def test_angle_frequency_conversion_round_trips():
    k = physics.mrad_to_inverse_A(25.0, 300e3)
    assert k == pytest.approx(25e-3 / 0.0196875, rel=1e-4)
    assert physics.inverse_A_to_mrad(k, 300e3) == pytest.approx(25.0)


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf])
def test_bad_energy_is_named(bad):
    with pytest.raises(InvalidArgumentError, match="energy_ev"):
        physics.wavelength_A(bad)
