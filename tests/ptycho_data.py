"""The small simulated MoS2 scan that the ptychography tests share (stemdask's simulator)."""

from __future__ import annotations

from typing import Any

from stemdask.simulate import samples, simulate_4dstem

#: 8 x 8 positions at 0.5 Å over 2 x 2 cells, 80 kV, 25 mrad, a 24-pixel detector to 50 mrad
TINY = dict(energy_ev=80e3, semiangle_mrad=25, scan_shape=(8, 8), scan_step_A=0.5, detector_shape=24, max_angle_mrad=50)


def tiny_mos2(cells: tuple[int, int] = (2, 2), **overrides: Any) -> tuple[Any, Any]:
    """``(data, truth)`` of :data:`TINY` with ``overrides`` (e.g. ``chunks``, ``dose_e_per_pattern``)."""
    return simulate_4dstem(samples.mos2(cells), **{**TINY, **overrides})
