"""Event storage: zarr v3 stores and the stempy sparse HDF5 layout."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import stemdask
import stemdask.events as ev
from stemdask.errors import FileFormatError, IncompleteStoreError, MissingChunkError
from stemdask.events import storage


def counted_case():
    shapes = st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 6), st.integers(1, 6))
    return shapes.flatmap(
        lambda s: st.tuples(
            hnp.arrays(np.uint16, s, elements=st.integers(0, 3) | st.just(0)),
            st.integers(1, s[0]),
            st.integers(1, s[1]),
        )
    )


def counted(dense, chunks, **calibration):
    return ev.from_dense(stemdask.from_array(dense, chunks=chunks, **calibration))


@settings(max_examples=30, deadline=None)
@given(counted_case(), st.sampled_from(storage.EVENT_CODECS))
def test_zarr_round_trip(case, codec):
    dense, cy, cx = case
    data = counted(dense, (cy, cx), scan_step_A=0.3, detector_pixel_mrad=2.0, energy_ev=80e3)
    with tempfile.TemporaryDirectory() as tmp:
        old = storage.INNER_EVENTS, storage.SHARD_CHUNKS
        storage.INNER_EVENTS, storage.SHARD_CHUNKS = 4, 2  # many shards, appended across blocks
        try:
            path = ev.save_events(data, Path(tmp) / "events.zarr", codec=codec)
        finally:
            storage.INNER_EVENTS, storage.SHARD_CHUNKS = old
        back = ev.open_event_store(path)
        assert ev.is_counted(back) and back.data.chunks == data.data.chunks
        np.testing.assert_array_equal(ev.to_dense(back).values, dense)
        assert back.attrs == data.attrs
        for d in data.dims:
            np.testing.assert_array_equal(back.coords[d].values, data.coords[d].values)
            assert back.coords[d].attrs == data.coords[d].attrs
        stemdask.validate(back)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**16 - 1), max_size=6), max_size=6))
def test_frame_deltas_round_trip(frames):
    """Unsorted frames of a big detector: the gaps restore every frame's electrons."""
    indices = np.array([p for f in frames for p in f], np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])]).astype(np.int64)
    block = ev.EventBlock(indices, offsets, (1, len(frames)), (256, 256))
    deltas = storage.frame_deltas(block)
    assert deltas.dtype == np.uint16
    back = ev.EventBlock(storage.undo_frame_deltas(deltas, offsets), offsets, (1, len(frames)), (256, 256))
    for f in range(len(frames)):
        np.testing.assert_array_equal(back.indices[offsets[f] : offsets[f + 1]], sorted(frames[f]))


def test_zarr_store_layout_and_lazy_blocks(tmp_path, rng):
    dense = rng.poisson(0.1, (6, 4, 8, 8)).astype(np.uint16)
    path = ev.save_events(counted(dense, (2, 4)), tmp_path / "s.zarr")
    group = zarr.open_group(path, mode="r")
    assert group.attrs["stemdask_layout"] == "events" and group.attrs["stemdask_complete"] is True
    assert group["indices"].dtype == np.uint16 and group["indices"].shards is not None
    assert group["indices"].shape == (int(dense.sum()),)
    assert group["offsets"].shape == (6 * 4 + 1,)
    back = ev.open_event_store(path, chunks=(3, 4))
    assert back.data.chunks[:2] == ((3, 3), (4,))
    np.testing.assert_array_equal(ev.frame_sum(back).values, dense.sum((0, 1)))
    with pytest.raises(FileExistsError):
        ev.save_events(counted(dense, (2, 4)), path)
    ev.save_events(counted(dense[:, :, ::-1].copy(), (2, 4)), path, overwrite=True)
    np.testing.assert_array_equal(ev.to_dense(ev.open_event_store(path)).values, dense[:, :, ::-1])


def test_truncated_and_incomplete_stores_raise(tmp_path, rng):
    dense = rng.poisson(0.5, (4, 4, 8, 8)).astype(np.uint16)
    old = storage.INNER_EVENTS, storage.SHARD_CHUNKS
    storage.INNER_EVENTS, storage.SHARD_CHUNKS = 8, 2
    try:
        path = Path(ev.save_events(counted(dense, (2, 2)), tmp_path / "s.zarr"))
    finally:
        storage.INNER_EVENTS, storage.SHARD_CHUNKS = old
    fresh = tmp_path / "copy.zarr"

    def copy():
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.copytree(path, fresh)
        # the store's manifest would refuse these stores at open (tested below): without it the
        # event layout's own checks are what catches each case
        shutil.rmtree(fresh / "stemdask_manifest")
        return fresh

    # with its manifest, a lost shard file is refused at open, naming the file
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(path, fresh)
    shard = sorted((fresh / "indices" / "c").iterdir())[1]
    shard.unlink()
    with pytest.raises(MissingChunkError, match="indices/c/1' \\(missing"):
        ev.open_event_store(fresh)
    # a shard file lost: zarr would read zeros; the checksum catches it
    store = copy()
    shard = sorted((store / "indices" / "c").iterdir())[1]
    shard.unlink()
    with pytest.raises(FileFormatError, match="truncated or corrupt.*checksum"):
        ev.to_dense(ev.open_event_store(store)).values
    # a shard file cut short
    store = copy()
    shard = sorted((store / "indices" / "c").iterdir())[0]
    shard.write_bytes(shard.read_bytes()[:10])
    with pytest.raises(FileFormatError, match="block 0"):
        ev.to_dense(ev.open_event_store(store)).values
    # indices array shorter than recorded
    store = copy()
    zarr.open_array(store / "indices", mode="r+").resize((5,))
    with pytest.raises(FileFormatError, match="truncated: 5 of"):
        ev.open_event_store(store)
    # a missing array
    store = copy()
    shutil.rmtree(store / "offsets")
    with pytest.raises(FileFormatError, match="lacks the arrays \\['offsets'\\]"):
        ev.open_event_store(store)
    # decreasing offsets written into the store
    store = copy()
    off = zarr.open_array(store / "offsets", mode="r+")
    values = off[...]
    values[2], values[3] = values[3] + 1, values[2]
    off[...] = values
    with pytest.raises(FileFormatError, match="malformed events|checksum|truncated"):
        ev.to_dense(ev.open_event_store(store)).values
    # an interrupted write
    store = copy()
    zarr.open_group(store, mode="r+").attrs["stemdask_complete"] = False
    with pytest.raises(IncompleteStoreError, match="not completely written"):
        ev.open_event_store(store)
    with pytest.raises(FileFormatError, match="layout"):
        zarr.open_group(store, mode="r+").attrs["stemdask_layout"] = "dense"
        ev.open_event_store(store)
    with pytest.raises(FileNotFoundError):
        ev.open_event_store(tmp_path / "nothing.zarr")


@settings(max_examples=25, deadline=None)
@given(counted_case())
def test_stempy_round_trip(case):
    dense, cy, cx = case
    data = counted(dense, (cy, cx), scan_step_A=0.3, detector_pixel_mrad=2.0)
    with tempfile.TemporaryDirectory() as tmp:
        path = ev.write_stempy(data, Path(tmp) / "e.h5")
        back = ev.open_stempy(path, chunks=(cx, cy))
        np.testing.assert_array_equal(ev.to_dense(back).values, dense)
        assert back.attrs["scan_step_A"] == [0.3, 0.3]
        assert back.attrs["detector_pixel_mrad"] == [2.0, 2.0]
        np.testing.assert_array_equal(back.k_x.values, data.k_x.values)


def test_stempy_layout_is_stempy(tmp_path, rng):
    dense = rng.poisson(0.2, (3, 5, 6, 4)).astype(np.uint16)
    path = ev.write_stempy(counted(dense, (2, 2)), tmp_path / "e.h5")
    with h5py.File(path, "r") as f:
        assert f.attrs["version"] == 3
        frames, positions = f["electron_events/frames"], f["electron_events/scan_positions"]
        assert frames.shape == (15,) and h5py.check_vlen_dtype(frames.dtype) == np.uint32
        assert (positions.attrs["Nx"], positions.attrs["Ny"]) == (5, 3)
        assert (frames.attrs["Nx"], frames.attrs["Ny"]) == (6, 4)
        np.testing.assert_array_equal(positions[...], np.arange(15))
        # frame of scan position (y=2, x=1): the linear indices of its electrons, sorted
        want = np.repeat(np.arange(24), dense[2, 1].ravel())
        np.testing.assert_array_equal(frames[2 * 5 + 1], want)


def write_foreign(path, frames, scan, frame, version=3, positions=None, frame_attrs=True):
    with h5py.File(path, "w") as f:
        f.attrs["version"] = version
        g = f.create_group("electron_events")
        pos = g.create_dataset("scan_positions", data=np.arange(len(frames)) if positions is None else positions)
        pos.attrs["Nx"], pos.attrs["Ny"] = scan[1], scan[0]
        ds = g.create_dataset("frames", (len(frames),), dtype=h5py.vlen_dtype(np.uint32))
        if frame_attrs:
            ds.attrs["Nx"], ds.attrs["Ny"] = frame
        for i, fr in enumerate(frames):
            ds[i] = np.asarray(fr, np.uint32)


def test_stempy_several_frames_per_position_and_old_versions(tmp_path):
    # version 3 with 2 frames per position: their events are summed
    frames = [[0, 1], [1], [], [3, 3], [2], [0]]
    write_foreign(tmp_path / "v3.h5", frames, (1, 3), (2, 2))
    got = ev.to_dense(ev.open_stempy(tmp_path / "v3.h5", energy_ev=300e3)).values
    np.testing.assert_array_equal(got.reshape(3, 4), [[1, 2, 0, 0], [0, 0, 0, 2], [1, 0, 1, 0]])
    # version 1: frames placed by scan_positions (unordered, repeated)
    write_foreign(tmp_path / "v1.h5", [[3], [0, 0], [1]], (1, 2), (2, 2), version=1, positions=[1, 0, 1])
    got = ev.to_dense(ev.open_stempy(tmp_path / "v1.h5")).values
    np.testing.assert_array_equal(got.reshape(2, 4), [[2, 0, 0, 0], [0, 1, 0, 1]])
    # no frame-shape attrs: the user says it
    write_foreign(tmp_path / "noattr.h5", [[3], [0]], (1, 2), (2, 2), frame_attrs=False)
    with pytest.raises(FileFormatError, match="pass frame_shape"):
        ev.open_stempy(tmp_path / "noattr.h5")
    assert ev.open_stempy(tmp_path / "noattr.h5", frame_shape=(2, 2)).shape == (1, 2, 2, 2)


def test_malformed_stempy_raises(tmp_path):
    write_foreign(tmp_path / "bad.h5", [[0], [9]], (1, 2), (2, 2))
    with pytest.raises(FileFormatError, match="malformed events.*below the 4 pixels"):
        ev.to_dense(ev.open_stempy(tmp_path / "bad.h5")).values
    write_foreign(tmp_path / "short.h5", [[0], [1], [2]], (2, 2), (2, 2))
    with pytest.raises(FileFormatError, match="3 frames, not a multiple"):
        ev.open_stempy(tmp_path / "short.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(FileFormatError, match="not a stempy sparse file"):
        ev.open_stempy(tmp_path / "other.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(FileFormatError, match="cannot read"):
        ev.open_stempy(tmp_path / "junk.h5")


def test_open_dataset_routes_events_and_converts(tmp_path, rng):
    sparse = rng.poisson(0.01, (4, 6, 8, 8)).astype(np.uint16)
    store = ev.save_events(counted(sparse, (2, 3), scan_step_A=0.5), tmp_path / "s.zarr")
    opened = stemdask.open_dataset(store)
    assert ev.is_counted(opened) and opened.attrs["scan_step_A"] == [0.5, 0.5]
    np.testing.assert_array_equal(ev.to_dense(opened).values, sparse)
    dense = stemdask.open_dataset(store, representation="dense")
    assert not ev.is_counted(dense)
    np.testing.assert_array_equal(dense.values, sparse)
    h5 = ev.write_stempy(counted(sparse, (2, 3)), tmp_path / "s.h5")
    from_h5 = stemdask.open_dataset(h5, detector_pixel_mrad=1.0)
    assert ev.is_counted(from_h5) and from_h5.k_x.attrs["units"] == "mrad"
    np.testing.assert_array_equal(ev.to_dense(from_h5).values, sparse)
    # a dense store of sparse counts: "auto" picks events, exactly the same counts
    dense_store = stemdask.save(stemdask.from_array(sparse, chunks=(2, 3)), tmp_path / "d.zarr")
    auto = stemdask.open_dataset(dense_store, representation="auto")
    assert ev.is_counted(auto)
    np.testing.assert_array_equal(ev.to_dense(auto).values, sparse)
