"""The malloc setting of worker processes: set once, only where the nanny set its variable, by store reads."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import numpy as np

import stemdask


def _run(code: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@contextlib.contextmanager
def _one_fresh_worker(tmp_path):
    """A client of a LocalCluster of one single-threaded worker process, its nanny's variable checked set."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0", local_directory=str(tmp_path)
        ) as cluster,
        Client(cluster) as client,
    ):
        assert set(client.run(lambda: "MALLOC_TRIM_THRESHOLD_" in os.environ).values()) == {True}
        yield client


def test_keep_freed_memory_only_under_the_nannys_variable():
    code = "from stemdask.worker_memory import keep_freed_memory as k; print(k(), k())"
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    assert _run(code, env) == "False False"  # a client or a plain script: left alone
    assert _run(code, {**env, "MALLOC_TRIM_THRESHOLD_": "65536"}) == "True False"  # once per process


def test_a_store_read_on_a_worker_sets_it(tmp_path):
    from stemdask.worker_memory import keep_freed_memory

    arr = np.random.default_rng(0).integers(0, 50, size=(4, 4, 16, 16), dtype=np.uint16)
    store = stemdask.save(stemdask.from_array(arr, chunks=(2, 4)), tmp_path / "s.zarr")
    with _one_fresh_worker(tmp_path) as client:
        total = stemdask.open_dataset(store).data.sum().compute()
        assert int(total) == int(arr.sum())
        # the read already set it on the worker: a second call has nothing to do
        assert set(client.run(keep_freed_memory).values()) == {False}


def test_a_save_on_a_worker_sets_it(tmp_path):
    """The write tasks of ``save`` set it too (their chunk copies and encoded chunks are large temporaries)."""
    from stemdask.worker_memory import keep_freed_memory

    arr = np.random.default_rng(1).integers(0, 50, size=(4, 4, 16, 16), dtype=np.uint16)
    # nothing on the worker sets it before the save (the data are sent from the client, not read from a store)
    with _one_fresh_worker(tmp_path) as client:
        store = stemdask.save(stemdask.from_array(arr, chunks=(2, 4)), tmp_path / "s.zarr")
        assert set(client.run(keep_freed_memory).values()) == {False}
    np.testing.assert_array_equal(stemdask.open_dataset(store).data.compute(scheduler="sync"), arr)
