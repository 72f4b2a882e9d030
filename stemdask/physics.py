"""Physical constants and electron-optical relations, written down once.

Conventions used throughout stemdask:

* Energies in eV, lengths in ångström (Å), angles in mrad at the public API
  and radians inside computations.
* Wavelength from the relativistic formula
  ``λ = h c / sqrt(E (2 m c² + E))``.
* Interaction constant ``σ = 2π m e λ / h²`` with the relativistic mass
  ``m = γ m0`` (Kirkland, *Advanced Computing in Electron Microscopy*,
  eq. 5.6), in rad / (V·Å).

Constants are CODATA 2018 values, as in scipy.constants.
"""

from __future__ import annotations

import math

from scipy import constants as _c

from .errors import bad_value

#: electron rest mass (kg)
ELECTRON_MASS_KG = _c.m_e
#: elementary charge (C)
ELEMENTARY_CHARGE_C = _c.e
#: Planck constant (J s)
PLANCK_J_S = _c.h
#: speed of light (m/s)
SPEED_OF_LIGHT_M_S = _c.c
#: electron rest energy (eV)
ELECTRON_REST_ENERGY_EV = _c.m_e * _c.c**2 / _c.e


def _check_energy(energy_ev: float) -> float:
    energy = float(energy_ev)
    if not math.isfinite(energy) or energy <= 0:
        raise bad_value("energy_ev", energy_ev, "a positive finite beam energy in eV")
    return energy


def wavelength_A(energy_ev: float) -> float:
    """Relativistic electron wavelength in Å.

    Parameters
    ----------
    energy_ev : float
        Beam energy in eV (e.g. ``200e3``).

    Returns
    -------
    float
        Wavelength in Å (0.025079 Å at 200 keV, 0.019687 Å at 300 keV).
    """
    energy = _check_energy(energy_ev)
    e_joule = energy * ELEMENTARY_CHARGE_C
    mc2 = ELECTRON_MASS_KG * SPEED_OF_LIGHT_M_S**2
    wavelength_m = PLANCK_J_S * SPEED_OF_LIGHT_M_S / math.sqrt(e_joule * (2 * mc2 + e_joule))
    return wavelength_m * 1e10


def lorentz_factor(energy_ev: float) -> float:
    """Relativistic γ = 1 + E / (m0 c²) of an electron of kinetic energy ``energy_ev``."""
    return 1.0 + _check_energy(energy_ev) / ELECTRON_REST_ENERGY_EV


def interaction_constant(energy_ev: float) -> float:
    """Interaction constant σ in rad / (V·Å).

    ``σ = 2π γ m0 e λ / h²``: 7.2884e-4 rad/(V·Å) at 200 keV and
    6.5262e-4 rad/(V·Å) at 300 keV (Kirkland 2010, Table 5.2: 0.72884 and
    0.65262 rad/(kV·Å)).
    """
    lam_m = wavelength_A(energy_ev) * 1e-10
    sigma_si = (
        2 * math.pi * lorentz_factor(energy_ev) * ELECTRON_MASS_KG * ELEMENTARY_CHARGE_C * lam_m / PLANCK_J_S**2
    )  # rad / (V m)
    return sigma_si * 1e-10


def mrad_to_inverse_A(angle_mrad: float, energy_ev: float) -> float:
    """Convert a scattering angle in mrad to a spatial frequency in 1/Å (small angles)."""
    return angle_mrad * 1e-3 / wavelength_A(energy_ev)


def inverse_A_to_mrad(k_inv_A: float, energy_ev: float) -> float:
    """Convert a spatial frequency in 1/Å to a scattering angle in mrad (small angles)."""
    return k_inv_A * wavelength_A(energy_ev) * 1e3
