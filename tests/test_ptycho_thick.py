"""Multislice reconstruction of a thick specimen (Si[110], 31 Å) beats the projection approximation.

The data come from the simulator's multislice with 16 slices of 1.92 Å; the
reconstructions use 1 and 2 slices, and are scored against the true projected
potential band-limited to the object grid (not against the model's own output).
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")

from stemdask.ptycho import reconstruct  # noqa: E402
from stemdask.ptycho.compare import band_limited, phase_correlation  # noqa: E402
from stemdask.simulate import samples, simulate_4dstem  # noqa: E402


@pytest.mark.slow
def test_two_slices_beat_one_on_31_A_of_silicon():
    sample = samples.silicon_110((3, 4), 8)
    thickness = sample.cell_A[2]
    data, truth = simulate_4dstem(
        sample,
        energy_ev=80e3,
        semiangle_mrad=25,
        scan_shape=(10, 10),
        scan_step_A=0.5,
        detector_shape=32,
        max_angle_mrad=60,
        slice_thickness_A=thickness / 16,
    )
    data = data.persist(scheduler="threads")
    target = xr.DataArray(
        band_limited(truth.projected_potential.values.astype(np.float64)),
        coords={"y": truth.y.values, "x": truth.x.values},
        dims=("y", "x"),
    )
    r = {}
    for n in (1, 2):
        extra = {"n_slices": n, "slice_thickness_A": thickness / n} if n > 1 else {}
        res = reconstruct(data, iterations=30, loss="amplitude", step=0.05, **extra)
        region = (
            float(res.position_y.min()),
            float(res.position_y.max()),
            float(res.position_x.min()),
            float(res.position_x.max()),
        )
        r[n] = phase_correlation(res.phase_total, target, region_A=region)["r"]
    assert r[2] > 0.98
    assert r[2] > r[1] + 0.01
