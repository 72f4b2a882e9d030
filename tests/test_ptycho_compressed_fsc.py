"""FSC of reconstructions against the truth: the registered FSC, and compressed vs uncompressed data.

Diederichs et al. Fig. 5: a reconstruction from 15 masks made of sampled
patterns + 1 dark-field value reaches the lattice. The compressed Dataset is
made by ``stemdask.compression.compress`` (not by hand), and both
reconstructions are scored against the simulator's truth with
``stemdask.metrics.fourier_shell_correlation`` (via ``compare.registered_fsc``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")

from stemdask.compression import bases, compress  # noqa: E402
from stemdask.ptycho import reconstruct  # noqa: E402
from stemdask.ptycho.compare import band_limited, registered_fsc  # noqa: E402
from stemdask.simulate import samples, simulate_4dstem  # noqa: E402


def _image(values: np.ndarray, d: float, y0: float = 0.0, x0: float = 0.0) -> xr.DataArray:
    ny, nx = values.shape
    return xr.DataArray(values, coords={"y": y0 + np.arange(ny) * d, "x": x0 + np.arange(nx) * d}, dims=("y", "x"))


def test_registered_fsc_of_a_shifted_copy_is_one():
    rng = np.random.default_rng(0)
    truth = band_limited(rng.standard_normal((64, 64)))
    # the reconstruction: the (periodic, band-limited) truth moved by (5, 7) pixels, a constant (global phase)
    # added, in another frame; its 3 Å margin keeps the region clear of the wrap
    phase = _image(np.roll(truth, (-5, -7), axis=(0, 1)) + 0.3, 0.25, y0=-3.0, x0=2.0)
    out = registered_fsc(phase, _image(truth, 0.25), margin_A=3.0)
    assert out.attrs["r"] > 0.99999
    np.testing.assert_allclose(out.attrs["shift_A"], [5 * 0.25 + 3.0, 7 * 0.25 - 2.0], atol=1e-3)
    # every ring inside the band limit (2/3 of Nyquist) correlates; the ring at q = 0 is empty (means removed)
    inside = (out.q > 0.1) & (out.q < 2 / 3 * 2.0 * 0.9)
    assert np.all(out.fsc.values[inside.values] > 0.999)
    assert out.q.attrs["units"] == "1/Å"


@pytest.mark.slow
def test_compressed_reconstruction_reaches_half_the_lattice_fsc():
    data, truth = simulate_4dstem(
        samples.mos2((3, 4)),
        energy_ev=80e3,
        semiangle_mrad=25,
        scan_shape=(12, 12),
        scan_step_A=0.5,
        detector_shape=24,
        max_angle_mrad=50,
        chunks=(6, 12),
        dose_e_per_pattern=1e4,
    )
    data = data.persist(scheduler="threads")
    packed = compress(data, bases.make_basis(data, "data", n_bf=15, n_df=1)).persist(scheduler="threads")
    assert packed.sizes["basis"] == 16
    phase = _image(np.angle(truth.transmission.values).sum(0), 1.0)
    phase = phase.assign_coords(y=truth.y.values, x=truth.x.values)
    scores = {}
    for name, source, kw in (("full", data, {"loss": "poisson"}), ("compressed", packed, {})):
        res = reconstruct(source, iterations=20, step=0.05, **kw)
        assert res.loss.values[-1] < 0.5 * res.loss.values[0]
        region = (
            float(res.position_y.min()),
            float(res.position_y.max()),
            float(res.position_x.min()),
            float(res.position_x.max()),
        )
        scores[name] = registered_fsc(res.phase_total, phase, region_A=region)
    # the {100} and {110} rings of MoS2 (a = 3.16 Å)
    for hk in (1, 3):
        q = 2 / (3.16 * math.sqrt(3)) * math.sqrt(hk)
        full = float(scores["full"].fsc.sel(q=q, method="nearest"))
        packed_fsc = float(scores["compressed"].fsc.sel(q=q, method="nearest"))
        assert full > float(scores["full"].half_bit.sel(q=q, method="nearest"))
        assert packed_fsc >= 0.5 * full


def test_masks_from_a_prior_high_dose_scan_survive_a_low_dose():
    # Diederichs et al. make the data-basis masks from patterns recorded before the acquisition: at
    # 10^2 e/pattern masks drawn from the scan's own noisy patterns lose the {110} ring, masks drawn
    # (make_basis(samples=)) from a coarse prior scan of the same region at 10^5 e/pattern keep it
    def simulated(dose, scan, step, seed):
        return simulate_4dstem(
            samples.mos2((3, 4)),
            energy_ev=80e3,
            semiangle_mrad=25,
            scan_shape=scan,
            scan_step_A=step,
            detector_shape=24,
            max_angle_mrad=50,
            chunks=(6, 12),
            dose_e_per_pattern=dose,
            seed=seed,
        )

    data, truth = simulated(1e2, (12, 12), 0.5, 0)
    data = data.persist(scheduler="threads")
    prior = simulated(1e5, (6, 6), 1.0, 1)[0].persist(scheduler="threads")
    phase = _image(np.angle(truth.transmission.values).sum(0), 1.0)
    phase = phase.assign_coords(y=truth.y.values, x=truth.x.values)
    runs = {
        "full": (data, {"loss": "poisson"}),
        "same": (compress(data, bases.make_basis(data, "data", n_bf=15, n_df=1)), {}),
        "prior": (compress(data, bases.make_basis(data, "data", n_bf=15, n_df=1, samples=prior)), {}),
    }
    q110 = 2 / (3.16 * math.sqrt(3)) * math.sqrt(3)
    r, fsc = {}, {}
    for name, (source, kw) in runs.items():
        res = reconstruct(source, iterations=20, step=0.05, **kw)
        region = (
            float(res.position_y.min()),
            float(res.position_y.max()),
            float(res.position_x.min()),
            float(res.position_x.max()),
        )
        scores = registered_fsc(res.phase_total, phase, region_A=region)
        r[name], fsc[name] = scores.attrs["r"], float(scores.fsc.sel(q=q110, method="nearest"))
    # measured: r 0.54 / 0.18 / 0.38, FSC {110} 0.86 / -0.16 / 0.52
    assert fsc["prior"] >= 0.5 * fsc["full"] > fsc["same"]
    assert r["prior"] > r["same"] + 0.1
