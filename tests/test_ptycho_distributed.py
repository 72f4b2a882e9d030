"""The distributed engine on real worker processes: a worker killed mid-reconstruction, and the per-step traffic."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

torch = pytest.importorskip("torch")
distributed = pytest.importorskip("distributed")

from ptycho_data import tiny_mos2  # noqa: E402

import stemdask  # noqa: E402
from stemdask.ptycho import reconstruct  # noqa: E402

KW = dict(iterations=5, loss="amplitude", optimizer="adam", step=0.05)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """8 x 8 positions of MoS2 in a zarr store, read lazily in two chunks of 4 x 8 positions (two shards)."""
    data, _ = tiny_mos2(chunks=(4, 8))
    path = str(tmp_path_factory.mktemp("ptycho") / "mos2.zarr")
    stemdask.save(data.compute(scheduler="threads"), path, chunks=(4, 8))
    return stemdask.open_dataset(path, chunks=(4, 8, -1, -1))


class KillAfterSteps(distributed.diagnostics.plugin.SchedulerPlugin):
    """Kills (SIGKILL) the worker process that just finished the ``n``-th shard step."""

    def __init__(self, scheduler, n: int) -> None:
        self.scheduler, self.n, self.done, self.killed = scheduler, n, 0, None

    def transition(self, key, start, finish, *args, **kwargs):
        if finish != "memory" or not str(key).startswith("ptycho-shard-step-") or self.killed is not None:
            return
        self.done += 1
        if self.done == self.n:
            (worker,) = self.scheduler.tasks[key].who_has
            self.killed = worker.pid
            os.kill(worker.pid, signal.SIGKILL)


def test_worker_killed_mid_reconstruction_does_not_change_the_result(stored):
    """Kill one of two worker processes after iteration 2: its shard is rebuilt from the store elsewhere."""
    from distributed import Client, LocalCluster

    whole = reconstruct(stored, **KW)
    assert whole.attrs["n_shards"] == 2
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, memory_limit="2GiB", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = set(client.run(os.getpid).values())
        plugin = KillAfterSteps(cluster.scheduler, 2 * 2 + 1)  # two shards per step: the first step of iteration 3
        cluster.scheduler.add_plugin(plugin)
        interrupted = reconstruct(stored, client=client, **KW)
        # the worker really died (the nanny started a new process in its place)
        assert plugin.killed in pids
        assert plugin.killed not in set(client.run(os.getpid).values())
    np.testing.assert_allclose(interrupted.object.values, whole.object.values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(interrupted.loss.values, whole.loss.values, rtol=1e-6)


def test_traffic_per_step_is_the_patches_not_the_data(stored):
    """Bytes sent per step: each shard's object patch + probe + offsets (complex64), never its patterns."""
    res = reconstruct(stored, iterations=2, loss="amplitude")
    n_shards, my, mx = res.attrs["n_shards"], res.probe.sizes["probe_y"], res.probe.sizes["probe_x"]
    # each shard's patch: its windows' bounding box; 4 x 8 positions at 0.5 Å on the object grid
    d = res.attrs["sampling_A"]
    box = [(int(np.ceil(3 * 0.5 / d[0])) + 2 + my), (int(np.ceil(7 * 0.5 / d[1])) + 2 + mx)]
    upper = n_shards * (8 * box[0] * box[1] + 8 * my * mx + 16 * 32)
    assert 0 < res.attrs["sent_bytes_per_step_median"] <= upper
    # the gradient patches come back (complex64): at most the patches' bytes
    assert 0 < res.attrs["received_bytes_per_step_median"] <= n_shards * 8 * box[0] * box[1]
    assert res.attrs["data_bytes"] == 64 * 24 * 24 * 4
    assert upper < res.attrs["data_bytes"] / 2  # so the bound above tells patches from patterns


def test_cached_fixed_probe_equals_the_probe_shifted_every_step(stored, monkeypatch):
    """The shard's cache of the shifted fixed probe changes nothing (against re-shifting it every step)."""
    from stemdask.ptycho import shards

    cached = reconstruct(stored, **KW)
    monkeypatch.setattr(shards, "PROBE_CACHE_BYTES", 0)
    fresh = reconstruct(stored, **KW)
    np.testing.assert_array_equal(cached.object.values, fresh.object.values)
    np.testing.assert_array_equal(cached.loss.values, fresh.loss.values)
