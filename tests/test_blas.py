"""The BLAS limiter of the projection kernels (stemdask.imaging._blas).

The thread count is read with threadpoolctl's ``threadpool_info()`` (a fresh
look at each library's own ``get_num_threads``), not through the limiter.
Each test first sets BLAS to 2 threads from the main thread with
``threadpool_limits``, which under threadpoolctl 3.8 makes the main thread the
one allowed to change OpenBLAS: a limiter that calls threadpoolctl naively from
a worker thread is then ignored and these tests fail.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import threadpoolctl

from stemdask.imaging import _blas


def blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]


@pytest.fixture
def two_blas_threads():
    if not blas_threads():
        pytest.skip("no BLAS library that threadpoolctl can control")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        if set(blas_threads()) != {2}:
            pytest.skip(f"cannot give BLAS 2 threads here (got {blas_threads()})")
        yield
        # whatever the test did, it left the count where it found it
        assert set(blas_threads()) == {2}


def test_two_threads_run_with_one_blas_thread_and_it_is_restored(two_blas_threads):
    a = np.random.default_rng(0).random((512, 512))
    barrier = threading.Barrier(2)
    later = threading.Event()  # never set: a short sleep
    inside: list[list[int]] = []

    def kernel(i: int, r: int) -> None:
        with _blas.single_blas_thread():
            barrier.wait()  # both inside at once
            inside.append(blas_threads())
            a @ a[:, :16]
            inside.append(blas_threads())
            barrier.wait()
            if (i + r) % 2:  # alternate which thread leaves last (the one that restores)
                later.wait(0.05)

    with ThreadPoolExecutor(2) as pool:  # the same two worker threads every round, like dask's pool
        for r in range(4):
            inside.clear()
            list(pool.map(kernel, range(2), [r, r]))
            assert inside and all(set(n) == {1} for n in inside), (r, inside)
            assert set(blas_threads()) == {2}, r  # restored once the last kernel left


def test_nested_use_keeps_one_thread_until_the_outer_block_leaves(two_blas_threads):
    def nested() -> list[set[int]]:
        seen = []
        with _blas.single_blas_thread():
            seen.append(set(blas_threads()))
            with _blas.single_blas_thread():
                seen.append(set(blas_threads()))
            seen.append(set(blas_threads()))  # the inner block left, the outer one still runs
        seen.append(set(blas_threads()))
        return seen

    assert nested() == [{1}, {1}, {1}, {2}]  # main thread
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(nested).result() == [{1}, {1}, {1}, {2}]  # a worker thread


def test_restored_after_an_exception(two_blas_threads):
    with pytest.raises(RuntimeError), _blas.single_blas_thread():
        assert set(blas_threads()) == {1}
        raise RuntimeError("kernel failed")
    assert set(blas_threads()) == {2}


def test_projection_kernels_in_a_dask_threaded_compute(two_blas_threads, monkeypatch):
    import importlib

    import dask.array as da

    import stemdask
    from stemdask.imaging import detectors, virtual_image

    project = importlib.import_module("stemdask.imaging.project")  # the module (the package exports a function)

    seen: list[tuple[str, list[int]]] = []
    body = project._project_numpy_body

    def probed(*args, **kwargs):  # the real kernel body, with the count it runs under recorded
        seen.append((threading.current_thread().name, blas_threads()))
        return body(*args, **kwargs)

    monkeypatch.setattr(project, "_project_numpy_body", probed)
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 50, size=(8, 8, 16, 16), dtype=np.uint16)
    data = stemdask.from_array(da.from_array(arr, chunks=(2, -1, -1, -1)), detector_pixel_mrad=1.0)
    rings = detectors.rings(data, np.linspace(0, 8, 5))
    weights = np.asarray(rings.values, dtype=np.float64)
    for _ in range(2):  # twice: the pool's threads are reused, the one that restores changes
        seen.clear()
        got = virtual_image(data, rings).compute(scheduler="threads", num_workers=2)
        np.testing.assert_allclose(got.values, np.einsum("abkl,mkl->abm", arr.astype(np.float64), weights))
        assert len(seen) >= 2 and all(set(n) == {1} for _, n in seen), seen
        assert set(blas_threads()) == {2}
