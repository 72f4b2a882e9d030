"""Shared fixtures; keeps every test's files inside temporary folders."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before dask/matplotlib are imported anywhere: no config or cache outside tmp.
_TMP = Path(tempfile.mkdtemp(prefix="stemdask-tests-"))
os.environ.setdefault("DASK_CONFIG", str(_TMP / "dask-config"))
os.environ.setdefault("MPLCONFIGDIR", str(_TMP / "mpl"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("NUMBA_CACHE_DIR", str(_TMP / "numba"))
os.environ.setdefault("DASK_TEMPORARY_DIRECTORY", str(_TMP / "dask-scratch"))
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(_TMP / "hypothesis"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# property tests: the same examples on every run, and no example database in the repository
settings.register_profile("stemdask", derandomize=True, database=None)
settings.load_profile("stemdask")


# ../shared/data beside the checkout; STEMDASK_SHARED_DATA points elsewhere (a git worktree, say)
SHARED_DATA = Path(
    os.environ.get("STEMDASK_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


def _has_gpu() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and cupy")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real detector files, or skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real detector files not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def local_client():
    """A real 2-worker LocalCluster, shared by the tests that need one."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        memory_limit="2GiB",
        local_directory=str(_TMP / "dask-workers"),
    )
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


from slurm_queue import slurm_queue  # noqa: E402,F401  (fixture)
