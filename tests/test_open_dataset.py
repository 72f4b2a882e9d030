"""open_dataset routes every layout to its reader and converts representations on request."""

import dask
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


# -- histogram-coded counted stores open as events, chunk by chunk, never dense ----------------


def _counted_frames(rng, scan=(10, 14), det=(12, 12), dose=0.1):
    """Counts with a bright disc (dense pixels, some above 1) on a sparse dark field."""
    ky, kx = np.indices(det)
    disc = np.hypot(ky - det[0] / 2, kx - det[1] / 2) < det[0] / 4
    lam = np.where(disc, 40 * dose, dose / 4)
    return rng.poisson(lam, size=(*scan, *det)).astype(np.uint16)


def _reference_events(frames):
    """NumPy reference of counting: per frame (C order), each pixel index repeated by its count."""
    flat = frames.reshape(-1, frames.shape[-2] * frames.shape[-1])
    per_frame = [np.repeat(np.arange(flat.shape[1]), f) for f in flat]
    offsets = np.concatenate([[0], np.cumsum([p.size for p in per_frame])])
    return np.concatenate(per_frame), offsets


def _hist_store(tmp_path, arr, name, **kw):
    return stemdask.save(
        stemdask.from_array(arr, scan_step_A=0.5, energy_ev=300e3), tmp_path / name, codec="histogram", **kw
    )


@pytest.mark.parametrize(
    ("stored", "read"),
    [
        ({"chunks": (4, 6), "shards": (8, 12)}, None),  # edge chunks and a partial shard
        ({"chunks": (4, 6), "shards": (8, 12)}, (3, 5)),  # read tiles across chunk and shard edges
        ({"chunks": (5, 7), "shards": False}, (10, 14)),  # unsharded, one tile of several chunks
        ({"chunks": (10, 14)}, (1, 14)),  # one chunk split into rows
    ],
)
def test_histogram_store_opens_as_events_equal_to_counting(tmp_path, rng, stored, read, monkeypatch):
    from stemdask.codecs import histogram

    arr = _counted_frames(rng)
    store = _hist_store(tmp_path, arr, "h.zarr", **stored)
    opened = stemdask.open_dataset(store, representation="events", **({"chunks": read} if read else {}))
    assert events.is_counted(opened) and opened.attrs["scan_step_A"] == [0.5, 0.5]
    if read:
        assert opened.data.chunks[:2] == stemdask.open_dataset(store, chunks=read).data.chunks[:2]
    # every chunk decodes straight to events: the dense decoder is never called
    monkeypatch.setattr(histogram, "decode_chunk", lambda *a, **k: pytest.fail("decoded dense"))
    blocks = opened.data.to_delayed().ravel()
    edges = [np.cumsum((0,) + c) for c in opened.data.chunks[:2]]
    for (i, j), block in zip(np.ndindex(*opened.data.numblocks[:2]), blocks):
        got = block.compute(scheduler="sync")  # here, where decode_chunk is patched
        assert isinstance(got, events.EventBlock)
        tile = arr[edges[0][i] : edges[0][i + 1], edges[1][j] : edges[1][j + 1]]
        indices, offsets = _reference_events(tile)
        np.testing.assert_array_equal(got.offsets, offsets)
        np.testing.assert_array_equal(got.indices, indices)
    np.testing.assert_array_equal(events.to_dense(opened).values, arr)


def test_histogram_store_auto_decodes_sparse_counts_straight_to_events(tmp_path, rng, monkeypatch):
    from stemdask.codecs import histogram

    sparse = _counted_frames(rng, scan=(16, 16), det=(16, 16), dose=0.02)
    busy = rng.poisson(3.0, size=(4, 4, 16, 16)).astype("uint16")
    low = _hist_store(tmp_path, sparse, "low.zarr", chunks=(4, 4), shards=(8, 8))
    high = _hist_store(tmp_path, busy, "high.zarr", chunks=(2, 4))
    assert events.choose_representation(float(sparse.mean())) == "events"
    assert events.choose_representation(float(busy.mean())) == "dense"
    dense_calls = []
    decode = histogram.decode_chunk
    monkeypatch.setattr(histogram, "decode_chunk", lambda *a, **k: dense_calls.append(1) or decode(*a, **k))
    # in this process, where decode_chunk is patched (not on a default client's workers)
    monkeypatch.setitem(dask.config.config, "scheduler", "sync")
    auto = stemdask.open_dataset(low, representation="auto", chunks=(4, 8))
    assert len(dense_calls) == 2  # the chooser reads the first tile dense (2 of the 16 inner chunks), only that
    sampled = len(dense_calls)
    assert events.is_counted(auto) and auto.data.name.startswith("histogram-events-")
    got = events.to_dense(auto).values  # every block from its events, not through a dense decode
    assert len(dense_calls) == sampled
    np.testing.assert_array_equal(got, sparse)
    auto_high = stemdask.open_dataset(high, representation="auto")
    assert not events.is_counted(auto_high)
    np.testing.assert_array_equal(auto_high.values, busy)


def test_histogram_store_analyses_as_events_equal_dense(tmp_path, rng):
    from stemdask import imaging

    arr = _counted_frames(rng, scan=(12, 10), det=(16, 16), dose=0.05)
    data = stemdask.from_array(arr, detector_pixel_mrad=0.5)
    store = stemdask.save(data, tmp_path / "h.zarr", codec="histogram", chunks=(4, 4), shards=(8, 8))
    dense = stemdask.open_dataset(store)
    det = imaging.detectors.annulus(dense, 1.0, 3.5)
    ky, kx = np.meshgrid(dense.k_y.values, dense.k_x.values, indexing="ij")
    ref_vi = (arr * det.values[0]).sum(axis=(2, 3))
    total = arr.sum(axis=(2, 3)).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref_com = np.stack([(arr * ky).sum(axis=(2, 3)) / total, (arr * kx).sum(axis=(2, 3)) / total], axis=-1)
    for chunks in (None, (5, 3), (12, 10)):
        ev = stemdask.open_dataset(store, representation="events", **({"chunks": chunks} if chunks else {}))
        assert events.is_counted(ev)
        for got in (ev, dense):
            np.testing.assert_allclose(imaging.virtual_image(got, det).values, ref_vi, rtol=1e-12)
            np.testing.assert_allclose(imaging.center_of_mass(got).values, ref_com, rtol=1e-10, equal_nan=True)
        np.testing.assert_array_equal(events.frame_sum(ev).values, arr.sum(axis=(0, 1)))
        np.testing.assert_array_equal(events.total_counts(ev).values, arr.sum(axis=(2, 3)))


def test_histogram_store_events_on_a_local_cluster(tmp_path, rng, local_client):
    arr = _counted_frames(rng, scan=(8, 8))
    store = _hist_store(tmp_path, arr, "h.zarr", chunks=(4, 4))
    ev = stemdask.open_dataset(store, representation="events")
    np.testing.assert_array_equal(events.frame_sum(ev).values, arr.sum(axis=(0, 1)))
    np.testing.assert_array_equal(events.to_dense(ev).values, arr)


def test_version_1_chunks_open_as_events(tmp_path, rng):
    """A store of format-version-1 chunks (older stemdask) opens as events just the same."""
    from stemdask.codecs.histogram import HistogramCodec, read_header

    arr = _counted_frames(rng, scan=(8, 8))
    store = _hist_store(tmp_path, arr, "h.zarr", chunks=(4, 8), shards=False)
    old = stemdask.save(
        stemdask.from_array(arr),
        tmp_path / "v1.zarr",
        codec=HistogramCodec(format_version=1),
        chunks=(4, 8),
        shards=False,
    )
    raw = (tmp_path / "v1.zarr" / "intensity" / "c" / "0" / "0" / "0" / "0").read_bytes()
    assert read_header(raw[:-4])["version"] == 1  # the chunk, less its crc32c
    for path in (store, old):
        ev = stemdask.open_dataset(path, representation="events")
        assert ev.data.name.startswith("histogram-events")
        np.testing.assert_array_equal(events.to_dense(ev).values, arr)


def test_other_codecs_convert_and_non_counts_are_refused(tmp_path, rng):
    from stemdask.errors import CorruptChunkError

    arr = _counted_frames(rng, scan=(4, 6))
    blosc = stemdask.save(stemdask.from_array(arr), tmp_path / "b.zarr")
    ev = stemdask.open_dataset(blosc, representation="events")
    assert events.is_counted(ev) and not ev.data.name.startswith("histogram-events")
    np.testing.assert_array_equal(events.to_dense(ev).values, arr)
    floats = stemdask.save(stemdask.from_array(arr.astype(np.float32)), tmp_path / "f.zarr")
    with pytest.raises(InvalidArgumentError, match=r"representation='events'.*float32.*integer"):
        stemdask.open_dataset(floats, representation="events")
    # a flipped byte in a histogram chunk (same size: the manifest passes) names the chunk when read
    store = _hist_store(tmp_path, arr, "h.zarr", chunks=(2, 6), shards=False)
    chunk = tmp_path / "h.zarr" / "intensity" / "c" / "1" / "0" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    ev = stemdask.open_dataset(store, representation="events")
    with pytest.raises(CorruptChunkError, match=r"intensity.*\(1, 0, 0, 0\)"):
        ev.data.compute()
