"""File-backed sources: the per-process memory map of raw / .npy files is reused and never stale."""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import stemdask
from stemdask.io import sources
from stemdask.io.sources import RawSource


@pytest.fixture(autouse=True)
def _fresh_maps():
    sources.clear_map_cache()
    yield
    sources.clear_map_cache()


def _values(data):
    """Computed in this process (the session's LocalCluster may be the default client: its workers map apart)."""
    return data.compute(scheduler="threads").values


def _replace(path, arr):
    """Write ``arr`` as a new file and rename it over ``path`` (a new inode, as many writers do)."""
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def test_reads_reuse_one_map_per_file(tmp_path, rng):
    arr = rng.integers(0, 60000, size=(4, 5, 6, 7), dtype="uint16")
    (tmp_path / "a.raw").write_bytes(b"H" * 11 + arr.tobytes())
    source = RawSource(str(tmp_path / "a.raw"), arr.shape, arr.dtype, header_bytes=11)
    first, second = source[0:2], source[2:4]
    np.testing.assert_array_equal(first, arr[0:2])
    np.testing.assert_array_equal(second, arr[2:4])
    assert len(sources._MAPS) == 1
    (frames,) = sources._MAPS.values()
    assert np.shares_memory(first, frames) and np.shares_memory(second, frames)


@pytest.mark.parametrize("rewrite", ["in place", "replaced"])
def test_a_rewritten_npy_file_is_read_afresh(tmp_path, rng, rewrite):
    path = tmp_path / "d.npy"
    old = rng.integers(0, 4096, size=(3, 4, 8, 8), dtype="uint16")
    new = rng.integers(0, 4096, size=old.shape, dtype="uint16")
    assert not np.array_equal(old, new)
    np.save(path, old)
    data = stemdask.open_dataset(path)
    np.testing.assert_array_equal(_values(data), old)
    if rewrite == "in place":
        np.save(path, new)  # same inode, truncated and written again
    else:
        _replace(path, new)  # same size, another inode: the old map still shows the old bytes
    np.testing.assert_array_equal(_values(data), new)  # the same lazy dataset, computed again
    np.testing.assert_array_equal(_values(stemdask.open_dataset(path)), new)
    assert len(sources._MAPS) == 1  # the map of the old version was dropped


def test_a_file_of_another_size_is_mapped_afresh(tmp_path, rng):
    path = tmp_path / "e.npy"
    small = rng.integers(0, 4096, size=(2, 2, 4, 4), dtype="uint16")
    big = rng.integers(0, 4096, size=(3, 2, 4, 4), dtype="uint16")
    np.save(path, small)
    np.testing.assert_array_equal(_values(stemdask.open_dataset(path)), small)
    _replace(path, big)
    np.testing.assert_array_equal(_values(stemdask.open_dataset(path)), big)


def test_threads_reading_at_once_get_the_file(tmp_path, rng):
    arr = rng.integers(0, 60000, size=(16, 3, 5, 6), dtype="uint16").astype(">u2")
    (tmp_path / "t.raw").write_bytes(arr.tobytes())
    source = RawSource(str(tmp_path / "t.raw"), arr.shape, arr.dtype)
    with ThreadPoolExecutor(8) as pool:
        blocks = list(pool.map(lambda i: source[i : i + 1], [i % 16 for i in range(200)]))
    for n, block in enumerate(blocks):
        i = n % 16
        assert block.dtype.isnative
        np.testing.assert_array_equal(block, arr[i : i + 1])
    assert len(sources._MAPS) == 1


def test_map_cache_is_bounded(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(sources, "MAX_MAPS", 2)
    arrays = []
    for i in range(4):
        arr = rng.integers(0, 100, size=(2, 2, 3, 3), dtype="uint16")
        np.save(tmp_path / f"f{i}.npy", arr)
        arrays.append(arr)
        np.testing.assert_array_equal(_values(stemdask.open_dataset(tmp_path / f"f{i}.npy")), arr)
    assert len(sources._MAPS) == 2
    np.testing.assert_array_equal(_values(stemdask.open_dataset(tmp_path / "f0.npy")), arrays[0])


def test_worker_processes_read_a_replaced_file_afresh(local_client, tmp_path, rng):
    """Workers keep their maps between computes; a replaced file must still be read new."""
    path = tmp_path / "w.npy"
    old = rng.integers(0, 4096, size=(8, 4, 16, 16), dtype="uint16")
    new = rng.integers(0, 4096, size=old.shape, dtype="uint16")
    np.save(path, old)
    data = stemdask.open_dataset(path)
    lazy = data.data.rechunk((2, -1, -1, -1)).sum(axis=(2, 3), dtype="uint64")
    np.testing.assert_array_equal(local_client.compute(lazy).result(), old.sum(axis=(2, 3), dtype="uint64"))
    _replace(path, new)
    np.testing.assert_array_equal(local_client.compute(lazy).result(), new.sum(axis=(2, 3), dtype="uint64"))
