"""Iterative reconstruction: monotone fixed-step descent, seeds, workers, checkpoints, bad input."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ptycho_data import tiny_mos2  # noqa: E402

import stemdask  # noqa: E402
from stemdask.errors import (  # noqa: E402
    DatasetContractError,
    InvalidArgumentError,
    InvalidTypeError,
    MissingCalibrationError,
)
from stemdask.ptycho import reconstruct  # noqa: E402
from stemdask.simulate import samples, simulate_4dstem  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    """8 x 8 positions of MoS2, noiseless, 24-pixel detector, two chunks of positions."""
    data, truth = tiny_mos2(chunks=(4, 8))
    # in this process (not on a session-wide default client, whose futures another cluster cannot read)
    return data.persist(scheduler="threads"), truth


@pytest.fixture(scope="module")
def counted():
    data, _ = tiny_mos2(chunks=(4, 8), dose_e_per_pattern=1e4)
    return data.persist(scheduler="threads")


@pytest.mark.parametrize("loss", ["mse", "poisson"])
def test_fixed_step_descent_decreases_the_loss_monotonically(tiny, counted, loss):
    data = tiny[0] if loss == "mse" else counted
    res = reconstruct(data, iterations=8, loss=loss, optimizer="gd", step="auto")
    assert np.all(np.diff(res.loss.values) < 0)
    # the auto step: the first update changes the object by FIRST_STEP_CHANGE at most
    first = reconstruct(data, iterations=1, loss=loss, optimizer="gd", step="auto")
    assert np.abs(first.object.values - 1).max() == pytest.approx(2e-2, rel=1e-6)


def test_seed_makes_mini_batches_and_hold_out_reproducible(tiny):
    kw = dict(iterations=3, loss="amplitude", batch_size=16, holdout_fraction=0.2)
    a = reconstruct(tiny[0], seed=3, **kw)
    b = reconstruct(tiny[0], seed=3, **kw)
    c = reconstruct(tiny[0], seed=4, **kw)
    np.testing.assert_array_equal(a.object.values, b.object.values)
    assert not np.array_equal(a.object.values, c.object.values)
    assert a.holdout_loss.values.min() > 0


def test_one_and_two_workers_agree(tiny):
    from distributed import Client, LocalCluster

    kw = dict(iterations=3, loss="poisson", optimizer="adam", n_modes=2, refine_probe="pixelated")
    local = reconstruct(tiny[0], **kw)
    results = []
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
            with Client(cluster) as client:
                results.append(reconstruct(tiny[0], client=client, **kw))
                # the shards are released at the end (asynchronously: give the scheduler a moment)
                deadline = time.monotonic() + 20
                while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) and (
                    time.monotonic() < deadline
                ):
                    time.sleep(0.1)
                assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0
    for other in results:
        np.testing.assert_allclose(other.object.values, local.object.values, rtol=0, atol=1e-6)
        np.testing.assert_allclose(other.probe.values, local.probe.values, rtol=0, atol=1e-6)
        np.testing.assert_allclose(other.loss.values, local.loss.values, rtol=1e-6)
    assert results[1].attrs["n_shards"] == 2


def test_resumed_run_equals_uninterrupted(tiny, tmp_path):
    kw = dict(loss="amplitude", optimizer="adam", batch_size=20, refine_positions=True, checkpoint_every=2)
    whole = reconstruct(tiny[0], iterations=4, **kw)
    path = str(tmp_path / "ckpt.zarr")
    reconstruct(tiny[0], iterations=2, checkpoint=path, **kw)
    resumed = reconstruct(tiny[0], iterations=4, checkpoint=path, **kw)
    np.testing.assert_array_equal(resumed.object.values, whole.object.values)
    np.testing.assert_array_equal(resumed.position_y.values, whole.position_y.values)
    np.testing.assert_array_equal(resumed.loss.values, whole.loss.values)


def test_result_dataset(tiny):
    res = reconstruct(tiny[0], iterations=2, n_slices=2, slice_thickness_A=2.0, object_kind="phase", n_modes=2)
    assert res.object.dims == ("slice", "y", "x") and res.sizes["slice"] == 2
    np.testing.assert_allclose(res.amplitude.values, 1.0, rtol=1e-12)
    np.testing.assert_allclose(res.phase_total.values, res.phase.values.sum(0))
    np.testing.assert_allclose(float(res.probe_mode_weight.sum()), 1.0, rtol=1e-6)
    assert res.sizes["position"] == 64 and res.sizes["iteration"] == 2
    # positions: the scan's (no refinement)
    np.testing.assert_allclose(res.position_x.values[:8], tiny[0].scan_x.values, atol=1e-9)


def test_bad_input(tiny):
    data = tiny[0]
    bare = stemdask.from_array(data.data)
    with pytest.raises(MissingCalibrationError, match="energy_ev"):
        reconstruct(bare, iterations=1)
    with pytest.raises(InvalidArgumentError, match="step"):
        reconstruct(data, iterations=1, optimizer="gd", step=-1.0)
    with pytest.raises(InvalidArgumentError, match="probe"):
        reconstruct(data, iterations=1, probe=np.ones((80, 80), complex))
    with pytest.raises(InvalidArgumentError, match="probe smaller than the object window"):
        reconstruct(data, iterations=1, aberrations={"defocus": 400.0})
    with pytest.raises(InvalidArgumentError, match="loss"):
        reconstruct(data, iterations=1, loss="l2")
    with pytest.raises(DatasetContractError, match="masks"):
        reconstruct(data.to_dataset(name="coefficients"), iterations=1)
    with pytest.raises(InvalidTypeError, match="DataArray"):
        reconstruct(data.values, iterations=1)


def test_defocus_refined_from_a_wrong_start():
    data, _ = simulate_4dstem(
        samples.mos2((2, 2)),
        energy_ev=80e3,
        semiangle_mrad=25,
        aberrations={"defocus": 40.0},
        scan_shape=(8, 8),
        scan_step_A=0.5,
        detector_shape=24,
        max_angle_mrad=50,
    )
    res = reconstruct(
        data.persist(scheduler="threads"),
        iterations=15,
        loss="amplitude",
        step=0.05,
        aberrations={"defocus": 20.0},
        refine_probe="aberrations",
        probe_step=2.0,
    )
    # C10 = -defocus: from 20 Å to within 5 Å of the true 40 Å
    assert abs(-res.attrs["aberrations"]["C10"] - 40.0) < 5.0
