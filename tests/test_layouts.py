"""The store-layout registry, the shared publish and write tasks, and io/events layering."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
import zarr

import stemdask
import stemdask.events as ev
from stemdask.errors import FileFormatError, IncompleteStoreError, InvalidArgumentError
from stemdask.io import layouts, publish


def dense_dataset(rng, shape=(6, 4, 8, 8), chunks=(2, 2)):
    arr = rng.poisson(0.3, shape).astype(np.uint16)
    return arr, stemdask.from_array(arr, chunks=chunks, scan_step_A=0.5, energy_ev=200e3)


def failing(data, bad_block=(1, 0, 0, 0), after=None):
    """``data`` whose ``bad_block`` raises (once the ``after`` event is set, when given)."""

    def fail(block, block_id=None):
        if block_id == bad_block:
            if after is not None:
                assert after.wait(timeout=60), "no block was written"  # a deadlock guard only
            raise RuntimeError("detector readout failed")
        return block

    return data.copy(data=data.data.map_blocks(fail, dtype=data.dtype))


# ----------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------
def test_dense_and_event_stores_open_through_the_registry(tmp_path, rng):
    arr, data = dense_dataset(rng)
    dense = stemdask.save(data, tmp_path / "d.zarr")
    events = stemdask.save(ev.from_dense(data), tmp_path / "e.zarr")
    assert layouts.layout_for(data).name == "dense"
    assert layouts.layout_for(ev.from_dense(data)).name == "events"
    for path, name in ((dense, "dense"), (events, "events")):
        attrs = dict(zarr.open_group(path, mode="r").attrs)
        assert attrs["stemdask_layout"] == name and attrs["stemdask_complete"] is True
        opened = layouts.get_layout(name).open(path, attrs)
        np.testing.assert_array_equal(ev.to_dense(opened).values if name == "events" else opened.values, arr)
    assert {"dense", "events"} <= set(layouts.known_layouts())


def test_unknown_layout_is_named_with_the_known_ones(tmp_path, rng):
    _, data = dense_dataset(rng)
    path = stemdask.save(data, tmp_path / "d.zarr")
    zarr.open_group(path, mode="r+").attrs["stemdask_layout"] = "holographic"
    with pytest.raises(FileFormatError, match=r"layout 'holographic'.*known: \[.*'dense'.*'events'"):
        stemdask.open_dataset(path)
    with pytest.raises(FileFormatError, match="holographic"):
        layouts.get_layout("holographic", path)


def test_too_new_format_and_incomplete_store_are_refused_once_for_all_layouts(tmp_path, rng):
    _, data = dense_dataset(rng)
    for name, obj in (("d", data), ("e", ev.from_dense(data))):
        path = stemdask.save(obj, tmp_path / f"{name}.zarr")
        group = zarr.open_group(path, mode="r+")
        group.attrs["stemdask_format"] = 99
        with pytest.raises(FileFormatError, match="format 99.*newer"):
            stemdask.open_dataset(path)
        group.attrs["stemdask_format"] = 1
        group.attrs["stemdask_complete"] = False
        with pytest.raises(IncompleteStoreError, match="not completely written"):
            stemdask.open_dataset(path)


def _write_coefficients(data, store, *, overwrite=False, progress=False, codec=None, chunks=None, shards=None):
    """A test layout: an xarray.Dataset of coefficients, one zarr array, written by a dask task."""
    with publish.atomic_path(store, overwrite=overwrite) as (tmp, final):
        group = zarr.open_group(tmp, mode="w-", zarr_format=3)
        group.attrs.update({**publish.header("coefficients-test", 2), "scale": float(data.attrs["scale"])})
        values = data["coefficients"].data
        group.create_array("coefficients", shape=values.shape, dtype=values.dtype, chunks=values.shape)
        publish.create_guard(tmp)

        def write(block, root):
            with publish.write_guard(root) as alive:
                if alive:
                    zarr.open_array(root, path="coefficients", mode="r+")[...] = block
            return 1

        assert publish.compute_writes([dask.delayed(write)(values, str(tmp))]) == [1]
        publish.mark_complete(tmp)
    return str(final)


def _open_coefficients(store, attrs, *, chunks=None, allow_incomplete=False):
    values = zarr.open_array(store, path="coefficients", mode="r")[...]
    return xr.DataArray(values * attrs["scale"], dims=("mask", "scan_y", "scan_x"))


@pytest.fixture
def coefficients_layout():
    layout = layouts.register_layout(
        layouts.Layout(
            "coefficients-test",
            version=2,
            claims=lambda data: isinstance(data, xr.Dataset) and "coefficients" in data,
            write=_write_coefficients,
            open=_open_coefficients,
        )
    )
    yield layout
    layouts.unregister_layout(layout.name)


def test_a_registered_layout_round_trips_through_save_and_open_dataset(tmp_path, coefficients_layout):
    coeffs = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    obj = xr.Dataset({"coefficients": (("mask", "scan_y", "scan_x"), coeffs)}, attrs={"scale": 0.5})
    assert layouts.layout_for(obj) is coefficients_layout
    path = stemdask.save(obj, tmp_path / "c.zarr")
    back = stemdask.open_dataset(path)
    np.testing.assert_array_equal(back.values, coeffs * 0.5)
    assert not list(tmp_path.glob(".*"))  # no temporary left, no guard file inside
    assert not (Path(path) / publish.GUARD_NAME).exists()
    with pytest.raises(InvalidArgumentError, match="not yet registered"):
        layouts.register_layout(coefficients_layout)


def test_unclaimed_objects_and_unknown_representations_are_named(tmp_path):
    with pytest.raises(TypeError, match="xarray.DataArray"):
        stemdask.save(np.zeros((2, 2, 2, 2)), tmp_path / "x.zarr")
    with pytest.raises(InvalidArgumentError, match=r"representation.*'auto'.*'dense'.*'events'"):
        layouts.convert_representation(xr.DataArray(np.zeros(1)), "sparse")


# ----------------------------------------------------------------------------
# io does not import events
# ----------------------------------------------------------------------------
def test_io_imports_nothing_from_events():
    io_dir = Path(stemdask.io.__file__).parent
    for source in sorted(io_dir.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.ImportFrom):
                target = ("." * node.level) + (node.module or "")
                names = [a.name for a in node.names]
                assert "events" not in target.split(".") and not (target == ".." and "events" in names), (
                    f"{source.name} imports {target} {names}"
                )
            elif isinstance(node, ast.Import):
                assert not any("events" in a.name.split(".") for a in node.names), source.name


# ----------------------------------------------------------------------------
# failed writes: no partial directory, no store, on both schedulers
# ----------------------------------------------------------------------------
def _assert_nothing_left(tmp_path, name):
    assert not (tmp_path / name).exists()
    assert not list(tmp_path.glob(f".{name}.partial-*"))


@pytest.mark.parametrize("kind", ["dense", "events"])
def test_failed_save_leaves_nothing_on_the_threaded_scheduler(tmp_path, rng, kind, monkeypatch):
    from stemdask.events import storage
    from stemdask.io import zarr_store

    module, name = (zarr_store, "_write_region") if kind == "dense" else (storage, "_stage_block")
    task, written, one_written = getattr(module, name), [], threading.Event()

    def recording(*args):
        result = task(*args)
        written.append(result)
        one_written.set()
        return result

    monkeypatch.setattr(module, name, recording)
    _, data = dense_dataset(rng, shape=(8, 4, 8, 8), chunks=(1, 2))
    # the failure waits for a first write, so the save fails mid-way on any schedule
    bad = failing(data, bad_block=(7, 1, 0, 0), after=one_written)
    obj = bad if kind == "dense" else ev.from_dense(bad)
    with dask.config.set(scheduler="threads", num_workers=4), pytest.raises(RuntimeError, match="readout"):
        stemdask.save(obj, tmp_path / "f.zarr", **({"chunks": (1, 2), "shards": (1, 2)} if kind == "dense" else {}))
    assert written  # the save failed mid-way: blocks had been written into the temporary store
    _assert_nothing_left(tmp_path, "f.zarr")


@pytest.mark.parametrize("kind", ["dense", "events"])
def test_failed_save_leaves_nothing_on_a_local_cluster(tmp_path, rng, kind, local_client):
    _, data = dense_dataset(rng, shape=(8, 4, 8, 8), chunks=(1, 2))
    bad = failing(data, bad_block=(7, 1, 0, 0))
    obj = bad if kind == "dense" else ev.from_dense(bad)
    with pytest.raises(RuntimeError, match="readout"):
        stemdask.save(obj, tmp_path / "f.zarr", **({"chunks": (1, 2), "shards": (1, 2)} if kind == "dense" else {}))
    _assert_nothing_left(tmp_path, "f.zarr")


def test_abandoned_store_refuses_late_writes(tmp_path):
    tmp = publish.create_guard(tmp_path / ".s.zarr.partial-test")
    with publish.write_guard(tmp) as alive:
        assert alive
    publish.abandon(tmp)
    assert not tmp.exists()
    with publish.write_guard(tmp) as alive:  # a task that starts after the save failed
        assert not alive
    assert not tmp.exists()  # and it created nothing


# ----------------------------------------------------------------------------
# event stores written by worker tasks
# ----------------------------------------------------------------------------
def test_event_store_from_a_local_cluster_is_exact_and_written_by_worker_tasks(tmp_path, rng, local_client):
    from dask.utils import key_split
    from distributed import get_task_stream

    from stemdask.events import storage

    arr, data = dense_dataset(rng, shape=(9, 5, 8, 8), chunks=(2, 3))
    counted = ev.from_dense(data)
    n_blocks = counted.data.npartitions
    old = storage.INNER_EVENTS, storage.SHARD_CHUNKS
    storage.INNER_EVENTS, storage.SHARD_CHUNKS = 4, 2  # shards span block boundaries
    try:
        with get_task_stream(local_client) as stream:
            path = ev.save_events(counted, tmp_path / "cluster.zarr")
        with dask.config.set(scheduler="threads"):
            local = ev.save_events(counted, tmp_path / "local.zarr")
    finally:
        storage.INNER_EVENTS, storage.SHARD_CHUNKS = old
    back = ev.open_event_store(path)
    np.testing.assert_array_equal(ev.to_dense(back).values, arr)
    assert back.data.chunks == counted.data.chunks and back.attrs == counted.attrs
    a, b = zarr.open_group(path, mode="r"), zarr.open_group(local, mode="r")
    for name in ("indices", "offsets", "checksums"):
        np.testing.assert_array_equal(a[name][...], b[name][...])
    n_events = int(arr.sum())
    assert a["indices"].shape == (n_events,)
    # every block was staged by one task on a worker, and the shards were copied there too
    workers = set(local_client.scheduler_info()["workers"])
    tasks = {}
    for record in stream.data:
        tasks.setdefault(key_split(record["key"]), []).append(record["worker"])
    assert len(tasks["stage_block"]) == n_blocks
    n_shards = -(-n_events // (4 * 2))
    assert len(tasks["copy_indices"]) == n_shards and len(tasks["copy_offsets"]) == 1
    assert set(tasks["stage_block"] + tasks["copy_indices"] + tasks["copy_offsets"]) <= workers
    assert not (Path(path) / storage.STAGING).exists() and not (Path(path) / publish.GUARD_NAME).exists()
