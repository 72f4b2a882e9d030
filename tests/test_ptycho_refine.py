"""Probe refinement: the aberration-parameterised probe's defocus converges from a wrong start.

Leidl et al. Sec. 3: the defocus goes from 0 to the true -100 ± 5 Å. The data
come from the simulator (its probe from ``stemdask.optics``, ``C10 = -defocus``).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from stemdask.ptycho import reconstruct  # noqa: E402
from stemdask.simulate import samples, simulate_4dstem  # noqa: E402

TRUE_DEFOCUS_A = -100.0


def _data(dose: float | None):
    data, _ = simulate_4dstem(
        samples.mos2((2, 2)),
        energy_ev=80e3,
        semiangle_mrad=25,
        aberrations={"defocus": TRUE_DEFOCUS_A},
        scan_shape=(8, 8),
        scan_step_A=0.5,
        detector_shape=32,
        max_angle_mrad=50,
        dose_e_per_pattern=dose,
    )
    return data.persist(scheduler="threads")


@pytest.mark.parametrize(
    ("start", "dose", "loss", "epochs"),
    [(0.0, None, "amplitude", 40), (-150.0, None, "amplitude", 40), (-150.0, 1e5, "poisson", 30)],
)
def test_defocus_converges_to_the_true_one(start, dose, loss, epochs):
    res = reconstruct(
        _data(dose),
        iterations=epochs,
        loss=loss,
        step=0.05,
        aberrations={"defocus": start},
        refine_probe="aberrations",
        probe_step=5.0,
    )
    assert res.loss.values[-1] < 0.2 * res.loss.values[0]
    # only the defocus was free: C10 = -defocus, within 5 Å of the truth
    assert set(res.attrs["aberrations"]) == {"C10"}
    assert abs(-res.attrs["aberrations"]["C10"] - TRUE_DEFOCUS_A) < 5.0
