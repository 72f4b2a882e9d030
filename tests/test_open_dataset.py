"""open_dataset routes every layout to its reader and converts representations on request."""

import numpy as np
import pytest

import stemdask
from stemdask import events
from stemdask.errors import InvalidArgumentError


@pytest.fixture
def sparse(rng):
    arr = rng.poisson(0.02, size=(4, 6, 16, 16)).astype("uint16")
    return arr, stemdask.from_array(arr, scan_step_A=0.5, energy_ev=300e3, chunks=(2, 3))


def test_event_store_and_stempy_file_open_as_counted(tmp_path, sparse):
    arr, data = sparse
    counted = events.from_dense(data)
    events.save_events(counted, tmp_path / "e.zarr")
    events.write_stempy(counted, tmp_path / "s.h5")
    for path in (tmp_path / "e.zarr", tmp_path / "s.h5"):
        opened = stemdask.open_dataset(path)
        assert events.is_counted(opened)
        np.testing.assert_array_equal(events.to_dense(opened).values, arr)
        np.testing.assert_array_equal(stemdask.open_dataset(path, representation="dense").values, arr)


def test_representation_auto_picks_events_for_sparse_counts(tmp_path, sparse, rng):
    arr, data = sparse
    stemdask.save(data, tmp_path / "d.zarr")
    auto = stemdask.open_dataset(tmp_path / "d.zarr", representation="auto")
    assert events.is_counted(auto)
    np.testing.assert_array_equal(events.to_dense(auto).values, arr)
    dense = rng.poisson(5.0, size=(2, 2, 16, 16)).astype("uint16")
    np.save(tmp_path / "dense.npy", dense)
    assert not events.is_counted(stemdask.open_dataset(tmp_path / "dense.npy", representation="auto"))
    with pytest.raises(InvalidArgumentError, match="representation"):
        stemdask.open_dataset(tmp_path / "dense.npy", representation="sparse")


def test_save_keeps_counted_data_as_events(tmp_path, sparse):
    arr, data = sparse
    counted = events.from_dense(data)
    path = stemdask.save(counted, tmp_path / "c.zarr")
    assert zarr_layout(path) == "events"
    back = stemdask.open_dataset(path)
    assert events.is_counted(back)
    np.testing.assert_array_equal(events.to_dense(back).values, arr)
    with pytest.raises(InvalidArgumentError, match="chunks/shards"):
        stemdask.save(counted, tmp_path / "d.zarr", chunks=(2, 2))


def zarr_layout(path):
    import zarr

    return zarr.open_group(path, mode="r").attrs["stemdask_layout"]
