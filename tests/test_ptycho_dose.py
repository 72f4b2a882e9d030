"""A tiny version of Leidl et al.'s dose series (benchmarks/ptycho_dose_series.py): what low dose requires.

At 10² electrons per pattern (Poisson noise, seeded) on simulated MoS2 at
300 kV, fixed-step gradient descent with the paper's step rule:

* the Poisson loss (the counts' likelihood) finds the structure at least as
  well as the MSE (phase correlation with the simulator's truth);
* both keep the mean amplitude of the object at 1: their minimisers are
  unbiased estimates of the expected counts, so the (true, pure-phase) object
  transmits all electrons on average.

The full series, its table and figure are in docs/ptychography.md.
"""

from __future__ import annotations

import pytest

from benchmarks.ptycho_dose_series import run, simulate


@pytest.fixture(scope="module")
def low_dose():
    # 1 x 2 orthogonal cells (20 x 23 positions at 0.27 Å), 16-pixel detector to 34.4 mrad, 20 iterations
    return simulate(1e2, cells=(1, 2), detector=16, seed=1)


@pytest.fixture(scope="module")
def rows(low_dose):
    return {loss: run(low_dose, loss, iterations=20, contrast=False)[1] for loss in ("mse", "poisson")}


def test_low_dose_counts(low_dose):
    # the simulated dose is the one asked for (electrons beyond the detector lost: slightly fewer)
    mean = float(low_dose.data.sum(("k_y", "k_x")).mean())
    assert 90 < mean <= 101


def test_poisson_at_least_as_good_as_mse_at_low_dose(rows):
    assert rows["poisson"]["r"] >= rows["mse"]["r"] - 0.02
    # the structure is found at all (vacuum start: r of a flat phase is undefined, a poor one ~0)
    assert rows["poisson"]["r"] > 0.5


@pytest.mark.parametrize("loss", ["mse", "poisson"])
def test_mean_amplitude_stays_one_at_low_dose(rows, loss):
    assert abs(rows[loss]["mean_amplitude"] - 1) < 0.02
    assert rows[loss]["loss_monotone"]
