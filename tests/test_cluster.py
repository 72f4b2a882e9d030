"""Clusters started for real: a LocalCluster, connecting to it, clear errors elsewhere."""

import importlib.util

import numpy as np
import pytest

import stemdask
from stemdask import cluster
from stemdask.errors import InvalidArgumentError, MissingDependencyError


def test_local_cluster_computes_like_numpy(capsys, tmp_path, rng):
    arr = rng.integers(0, 1000, size=(6, 8, 16, 16), dtype="uint16")
    data = stemdask.from_array(arr, chunks=(2, 4), scan_step_A=0.5)
    client = cluster.start(
        "local", n_workers=2, dashboard_address=":0", memory_limit="1GiB", local_directory=str(tmp_path)
    )
    try:
        assert "dashboard: http" in capsys.readouterr().out
        assert len(client.scheduler_info()["workers"]) == 2
        frame_sum = data.sum(dim=("scan_y", "scan_x"), dtype="uint64").compute()
        np.testing.assert_array_equal(frame_sum.values, arr.sum(axis=(0, 1), dtype=np.uint64))
        # a second client joins the same scheduler
        other = cluster.connect(client.scheduler.address, quiet=True)
        assert int(data.max().compute()) == int(arr.max())
        other.close()
    finally:
        cluster.stop(client)
    assert client.status == "closed"


def test_session_uses_an_existing_scheduler(local_client, rng):
    arr = rng.random((2, 3, 4, 4))
    with cluster.session(local_client.scheduler.address) as client:
        assert client.scheduler.address == local_client.scheduler.address
        assert float(stemdask.from_array(arr).sum().compute()) == pytest.approx(arr.sum())
    assert local_client.status == "running"  # connecting never closes someone else's cluster


def test_bad_kind_and_address():
    with pytest.raises(InvalidArgumentError, match="kind='pbs'"):
        cluster.start("pbs")
    with pytest.raises(cluster.ClusterStartError, match="tcp://127.0.0.1:1"):
        cluster.connect("tcp://127.0.0.1:1", timeout_s=1)


def test_cuda_without_gpu_is_a_clear_error():
    if importlib.util.find_spec("dask_cuda") is None:
        with pytest.raises(MissingDependencyError, match="stemdask\\[gpu\\]"):
            cluster.start("cuda")
    elif not stemdask.backend.gpu_available():
        with pytest.raises(cluster.ClusterStartError, match="GPU"):
            cluster.start("cuda")
    else:
        pytest.skip("a GPU is present: see test_cuda_cluster")


@pytest.mark.gpu
def test_cuda_cluster_one_worker_per_gpu():
    import cupy

    client = cluster.start("cuda", quiet=True)
    try:
        assert len(client.scheduler_info()["workers"]) == cupy.cuda.runtime.getDeviceCount()
    finally:
        cluster.stop(client)


@pytest.mark.slurm
def test_slurm_cluster_runs_workers_as_jobs(slurm_queue, tmp_path, rng):
    import subprocess

    arr = rng.integers(0, 500, size=(4, 6, 8, 8), dtype="uint16")
    data = stemdask.from_array(arr, chunks=(2, 3))
    client = cluster.start(
        "slurm",
        n_workers=2,
        cores=1,
        memory="1GB",
        processes=1,
        queue="debug",
        walltime="00:10:00",
        interface="lo",
        log_directory=str(tmp_path / "logs"),
        local_directory=str(tmp_path / "work"),
        wait_timeout_s=90,
        quiet=True,
        scheduler_options={"dashboard_address": ":0"},
    )
    try:
        jobs = subprocess.run(
            ["squeue", "-h", "-o", "%T"], capture_output=True, text=True, env=slurm_queue["env"]
        ).stdout.split()
        assert jobs.count("RUNNING") == 2
        total = data.astype("uint64").sum(dim=("scan_y", "scan_x")).compute()
        np.testing.assert_array_equal(total.values, arr.sum(axis=(0, 1), dtype=np.uint64))
    finally:
        cluster.stop(client)
