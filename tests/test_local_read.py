"""Readers of local zarr stores (io/local_read): same bytes as zarr's LocalStore, checks kept."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

import stemdask
from stemdask.errors import CorruptChunkError, InvalidArgumentError
from stemdask.io import local_read
from stemdask.io.checked import CheckedZarrSource

READERS = sorted(local_read.READERS)
pytestmark = pytest.mark.filterwarnings("ignore:The specified chunks separate the stored chunks")


def _store(tmp_path, rng, codec):
    # 5x7 positions with inner chunks 2x2 and shards 2x4: edge chunks and edge shards on both scan axes
    values = rng.integers(0, 4096, size=(5, 7, 12, 10), dtype=np.uint16)
    path = stemdask.save(
        stemdask.from_array(values), tmp_path / f"{codec}.zarr", codec=codec, chunks=(2, 2), shards=(2, 4)
    )
    return Path(path), values


@pytest.mark.parametrize("reader", READERS)
def test_byte_ranges_equal_localstore(tmp_path, reader):
    (tmp_path / "f").write_bytes(bytes(range(256)) * 40)
    plain = zarr.storage.LocalStore(tmp_path, read_only=True)
    store = local_read.READERS[reader](tmp_path, read_only=True)
    proto = default_buffer_prototype()
    requests = [
        None,
        RangeByteRequest(0, 10),
        RangeByteRequest(4093, 8200),  # across a page boundary, unaligned start
        RangeByteRequest(10000, 20000),  # past the end: clipped
        RangeByteRequest(5, 5),
        OffsetByteRequest(4097),
        SuffixByteRequest(7),
        SuffixByteRequest(100000),
    ]
    for request in requests:
        want = sync(plain.get("f", proto, request)).to_bytes()
        got = sync(store.get("f", proto, request))
        assert got.to_bytes() == want, request
    assert sync(store.get("missing", proto)) is None
    got = sync(store.get_partial_values(proto, [("f", RangeByteRequest(1, 3)), ("f", SuffixByteRequest(1))]))
    assert [g.to_bytes() for g in got] == [bytes([1, 2]), bytes([255])]


@pytest.mark.parametrize("codec", ["none", None])  # None: the default codec
@pytest.mark.parametrize("reader", READERS)
def test_every_reader_round_trips_bitwise_threads(tmp_path, rng, monkeypatch, codec, reader):
    path, values = _store(tmp_path, rng, codec)
    monkeypatch.setenv(local_read.ENV_VAR, reader)
    whole = stemdask.open_dataset(path)
    assert whole.data.compute(scheduler="sync").tobytes() == values.tobytes()
    tiles = stemdask.open_dataset(path, chunks=(3, 3))  # tiles across inner-chunk and shard edges
    got = tiles.data.compute(scheduler="threads")
    assert got.dtype == values.dtype and got.tobytes() == values.tobytes()
    np.testing.assert_array_equal(tiles.data[1:4, 2:7].compute(scheduler="threads"), values[1:4, 2:7])


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_round_trips_bitwise_localcluster(tmp_path, rng, local_client, monkeypatch, reader):
    monkeypatch.delenv(local_read.ENV_VAR, raising=False)  # restored after use_reader below
    path, values = _store(tmp_path, rng, "none")
    previous = local_read.use_reader(reader)  # chosen on the client only: the source carries it to the workers
    try:
        data = stemdask.open_dataset(path, chunks=(3, 3))
    finally:
        local_read.use_reader(previous)
    got = local_client.compute(data.data).result()
    assert got.tobytes() == values.tobytes()
    (source,) = {
        id(v): v for v in dict(data.data.__dask_graph__()).values() if isinstance(v, CheckedZarrSource)
    }.values()
    name, part = local_client.submit(_read_on_worker, source, pure=False).result()
    assert name == local_read.READERS[reader].__name__ and part.tobytes() == values[1:4, 2:7].tobytes()


def _read_on_worker(source):
    return type(source.array().store).__name__, np.asarray(source[1:4, 2:7])


@pytest.mark.parametrize("reader", READERS)
def test_a_corrupt_chunk_is_still_found(tmp_path, rng, monkeypatch, reader):
    path, values = _store(tmp_path, rng, "none")
    data = bytearray((path / "intensity" / "c" / "1" / "1" / "0" / "0").read_bytes())
    data[len(data) // 3] ^= 0x01
    (path / "intensity" / "c" / "1" / "1" / "0" / "0").write_bytes(bytes(data))
    monkeypatch.setenv(local_read.ENV_VAR, reader)
    opened = stemdask.open_dataset(path)
    np.testing.assert_array_equal(opened[:2].data.compute(scheduler="sync"), values[:2])
    with pytest.raises(CorruptChunkError, match="intensity/c/1/1/0/0"):
        opened.data.compute(scheduler="sync")


def test_the_source_carries_its_reader(tmp_path, rng, monkeypatch):
    path, values = _store(tmp_path, rng, "none")
    monkeypatch.setenv(local_read.ENV_VAR, "numpy")
    source = CheckedZarrSource(str(path), "intensity", values.shape, values.dtype)
    monkeypatch.setenv(local_read.ENV_VAR, "zarr")
    again = pickle.loads(pickle.dumps(source))
    assert again.reader == "numpy" and type(again.array().store) is local_read.NumpyReadLocalStore
    assert np.asarray(again[1:3, 2:5]).tobytes() == values[1:3, 2:5].tobytes()
    monkeypatch.delenv(local_read.ENV_VAR)
    assert local_read.resolve_reader() == local_read.DEFAULT_READER == "mmap"
    store_object = zarr.storage.LocalStore(path, read_only=True)
    assert local_read.reading_store(store_object, "mmap") is store_object  # store objects are used as given


def test_unknown_reader_is_refused(monkeypatch):
    with pytest.raises(InvalidArgumentError, match="reader='nope'.*mmap"):
        local_read.resolve_reader("nope")
    with pytest.raises(InvalidArgumentError, match="STEMDASK_ZARR_READER='nope'"):
        monkeypatch.setenv(local_read.ENV_VAR, "nope")
        local_read.resolve_reader()
    with pytest.raises(InvalidArgumentError):
        local_read.use_reader("nope")


def test_mmap_reader_sees_files_rewritten_after_a_read(tmp_path, rng, monkeypatch):
    path, values = _store(tmp_path, rng, "none")
    monkeypatch.setenv(local_read.ENV_VAR, "mmap")
    assert stemdask.open_dataset(path).data.compute(scheduler="sync").tobytes() == values.tobytes()  # maps kept
    new = (values[::-1] + 1).astype(np.uint16)
    zarr.open_array(path / "intensity", mode="r+")[:] = new  # zarr replaces each shard file (a new inode)
    assert stemdask.open_dataset(path).data.compute(scheduler="sync").tobytes() == new.tobytes()
    shard = path / "intensity" / "c" / "1" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    with open(shard, "r+b") as f:  # in place: same inode and size, seen through the kept map
        f.write(bytes(data))
    with pytest.raises(CorruptChunkError, match="intensity/c/1/1/0/0"):
        stemdask.open_dataset(path).data.compute(scheduler="sync")
    local_read.clear_maps()
    assert not local_read._maps


def test_mmap_reader_keeps_maps_within_its_budget(tmp_path, rng, monkeypatch):
    path, values = _store(tmp_path, rng, "none")
    shards = sorted(str(p) for p in (path / "intensity" / "c").rglob("*") if p.is_file())
    monkeypatch.setenv(local_read.ENV_VAR, "mmap")
    sizes = [Path(p).stat().st_size for p in shards]
    for budget, kept in ((0, 0), (max(sizes), 1), (sum(sizes), len(shards))):
        local_read.clear_maps()
        monkeypatch.setenv(local_read.MAP_CACHE_ENV, str(budget))
        assert stemdask.open_dataset(path).data.compute(scheduler="sync").tobytes() == values.tobytes()
        assert len(local_read._maps) == kept and set(local_read._maps) <= set(shards)
    monkeypatch.setenv(local_read.MAP_CACHE_ENV, "lots")
    local_read.clear_maps()
    with pytest.raises(InvalidArgumentError, match="STEMDASK_ZARR_MAP_CACHE_BYTES='lots'"):
        local_read.MmapLocalStore._read(Path(shards[0]), default_buffer_prototype(), None)
    local_read.clear_maps()


def _resident_kib(path: str) -> int:
    """Resident KiB of this process's maps of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if line[:1].isalnum() and "-" in line.split()[0] and ":" not in line.split()[0]:
            inside = line.rstrip().endswith(path)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc")
def test_kept_maps_leave_the_resident_memory_after_a_read(tmp_path, rng, monkeypatch):
    path, values = _store(tmp_path, rng, "none")
    shard = str((path / "intensity" / "c" / "0" / "0" / "0" / "0").resolve())
    local_read.clear_maps()
    store = local_read.MmapLocalStore(path, read_only=True)
    sync(store.get("intensity/c/0/0/0/0", default_buffer_prototype())).as_numpy_array().sum()  # touch every page
    assert shard in local_read._maps and _resident_kib(shard) > 0
    local_read.release_pages()
    assert _resident_kib(shard) == 0 and shard in local_read._maps  # the map stays, its pages left
    source = CheckedZarrSource(str(path), "intensity", values.shape, values.dtype, "mmap")
    assert np.asarray(source[0:2, 0:4]).tobytes() == values[0:2, 0:4].tobytes()
    assert _resident_kib(shard) == 0  # CheckedZarrSource released them after its read
    local_read.clear_maps()


@pytest.mark.parametrize("reader", ["mmap", "numpy"])
def test_a_corrupt_chunk_is_found_on_the_localcluster(tmp_path, rng, local_client, monkeypatch, reader):
    monkeypatch.delenv(local_read.ENV_VAR, raising=False)  # restored after use_reader below
    path, values = _store(tmp_path, rng, "none")
    shard = path / "intensity" / "c" / "2" / "1" / "0" / "0"  # an edge shard (scan_y 4, scan_x 4-6)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    previous = local_read.use_reader(reader)
    try:
        opened = stemdask.open_dataset(path, chunks=(3, 3))
    finally:
        local_read.use_reader(previous)
    assert local_client.compute(opened.data[:4]).result().tobytes() == values[:4].tobytes()
    with pytest.raises(CorruptChunkError, match="intensity/c/2/1/0/0"):
        local_client.compute(opened.data).result()


def test_under_zarrs_the_source_reads_through_zarrs_and_back(tmp_path, rng, monkeypatch):
    pytest.importorskip("zarrs")
    from stemdask.io.pipeline import ENV_VAR, PIPELINES, use_codec_pipeline

    monkeypatch.setenv(ENV_VAR, PIPELINES["zarr"])  # restored after the test
    path, values = _store(tmp_path, rng, "none")
    source = CheckedZarrSource(str(path), "intensity", values.shape, values.dtype, "mmap")
    assert type(source.array().store) is local_read.MmapLocalStore
    previous = use_codec_pipeline("zarrs")
    try:
        # zarrs reads local files itself and would silently fall back for a store class it does not know
        pipeline = source.array()._async_array.codec_pipeline
        assert type(pipeline).__name__ == "ZarrsCodecPipeline" and type(source.array().store) is zarr.storage.LocalStore
        assert np.asarray(source[1:4, 2:7]).tobytes() == values[1:4, 2:7].tobytes()
    finally:
        use_codec_pipeline(previous)
    assert type(source.array().store) is local_read.MmapLocalStore  # reopened for zarr-python's pipeline
    assert np.asarray(source[1:4, 2:7]).tobytes() == values[1:4, 2:7].tobytes()
