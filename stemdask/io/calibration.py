"""Turn a file's axis calibration (scale, offset, units) into stemdask's units.

Readers (rosettasciio, EMD 1.0) report axes in whatever units the file uses;
scan axes become Å and detector axes mrad. Reciprocal-space units need the
beam energy; without it the detector stays uncalibrated rather than guessed.
"""

from __future__ import annotations

import math

from ..physics import inverse_A_to_mrad

_LENGTH_TO_A = {
    "a": 1.0,
    "å": 1.0,
    "angstrom": 1.0,
    "ångström": 1.0,
    "nm": 10.0,
    "pm": 0.01,
    "um": 1e4,
    "µm": 1e4,
    "μm": 1e4,
    "m": 1e10,
}
_ANGLE_TO_MRAD = {"mrad": 1.0, "rad": 1e3, "urad": 1e-3, "µrad": 1e-3, "μrad": 1e-3}
_RECIPROCAL_TO_INV_A = {
    "1/a": 1.0,
    "a^-1": 1.0,
    "å^-1": 1.0,
    "1/å": 1.0,
    "a-1": 1.0,
    "1/nm": 0.1,
    "nm^-1": 0.1,
    "nm-1": 0.1,
    "1 / nm": 0.1,
}


def _norm(units: object) -> str:
    return str(units or "").strip().lower().replace(" ", "")


def length_scale_A(units: object) -> float | None:
    """Factor from ``units`` to Å, or None when ``units`` is not a length."""
    return _LENGTH_TO_A.get(_norm(units))


def angle_scale_mrad(units: object, energy_ev: float | None) -> float | None:
    """Factor from ``units`` (an angle or a spatial frequency) to mrad, or None."""
    u = _norm(units)
    if u in _ANGLE_TO_MRAD:
        return _ANGLE_TO_MRAD[u]
    if u in _RECIPROCAL_TO_INV_A and energy_ev:
        return inverse_A_to_mrad(_RECIPROCAL_TO_INV_A[u], energy_ev)
    return None


def detector_axis(
    scale: float, offset: float, units: object, energy_ev: float | None
) -> tuple[float | None, float | None]:
    """(pixel size in mrad, beam-centre pixel) of a detector axis, None where unknown.

    The beam centre is where the calibrated coordinate is zero: ``-offset/scale``.
    """
    factor = angle_scale_mrad(units, energy_ev)
    if factor is None or not scale or not math.isfinite(scale):
        return None, None
    return abs(scale) * factor, -offset / scale if offset else None


def scan_axis(scale: float, units: object) -> float | None:
    """Probe step in Å of a scan axis, None where unknown."""
    factor = length_scale_A(units)
    if factor is None or not scale or not math.isfinite(scale):
        return None
    return abs(scale) * factor
