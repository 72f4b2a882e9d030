"""zarr v3 storage: exact round trips, sharding, atomic writes, incremental writes."""

import json

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

import stemdask
from stemdask.errors import FileFormatError, IncompleteStoreError, InvalidArgumentError
from stemdask.io.zarr_store import storage_layout

CAL = dict(
    energy_ev=200e3,
    semiangle_mrad=21.4,
    scan_step_A=(0.31, 0.29),
    detector_pixel_mrad=(0.9, 1.1),
    beam_center_px=(6.5, 4.0),
    dose_e_per_pattern=1e4,
    scan_rotation_deg=12.5,
)


def dataset(rng, shape=(7, 5, 13, 9), dtype="uint16", chunks=(3, 2)):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
    if info is not None:
        arr = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    else:
        arr = rng.standard_normal(shape).astype(dtype)
    return arr, stemdask.from_array(arr, chunks=chunks, **CAL, source="test")


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "int16", "float32", "float64"])
@pytest.mark.parametrize("chunks, shards", [((3, 2), (6, 4)), ((1, 5), None), ((7, 5), False), ((2, 3), (2, 3))])
def test_round_trip_is_exact(tmp_path, rng, dtype, chunks, shards):
    arr, data = dataset(rng, dtype=dtype, chunks=(4, 3))
    path = stemdask.save(data, tmp_path / "d.zarr", chunks=chunks, shards=shards)
    back = stemdask.open_dataset(path)
    assert back.dtype == arr.dtype
    np.testing.assert_array_equal(back.values, arr)
    assert back.attrs == data.attrs
    for dim in data.dims:
        np.testing.assert_array_equal(back[dim].values, data[dim].values)
        assert back[dim].attrs == data[dim].attrs
    stemdask.validate(back)


def test_store_is_sharded_with_few_files(tmp_path, rng):
    arr, data = dataset(rng, shape=(16, 16, 8, 8), chunks=(4, 16))
    path = stemdask.save(data, tmp_path / "s.zarr", chunks=(2, 4), shards=(8, 16))
    array = zarr.open_array(path + "/intensity", mode="r")
    assert array.chunks == (2, 4, 8, 8) and array.shards == (8, 16, 8, 8)
    shard_files = [p for p in (tmp_path / "s.zarr" / "intensity" / "c").rglob("*") if p.is_file()]
    assert len(shard_files) == 2  # 2 shards of 32 inner chunks each
    group = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())
    assert group["attributes"]["stemdask_complete"] is True
    assert group["zarr_format"] == 3


def test_default_layout_targets_megabyte_chunks():
    inner, shard = storage_layout((256, 256, 128, 128), 2)
    assert inner[2:] == (128, 128) and shard[2:] == (128, 128)
    assert 2 * 2**20 <= np.prod(inner) * 2 <= 8 * 2**20
    assert shard[0] % inner[0] == 0 and shard[1] % inner[1] == 0
    assert np.prod(shard) * 2 <= 128 * 2**20
    with pytest.raises(InvalidArgumentError, match="shards"):
        storage_layout((8, 8, 4, 4), 2, chunks=(2, 2), shards=(3, 2))
    with pytest.raises(InvalidArgumentError, match="chunks"):
        storage_layout((8, 8, 4, 4), 2, chunks=(0, 2))


@pytest.mark.parametrize("codec", ["zstd", "gzip", "blosc", "blosc-lz4", "none", [zarr.codecs.ZstdCodec(level=9)]])
def test_codecs_round_trip(tmp_path, rng, codec):
    arr, data = dataset(rng)
    path = stemdask.save(data, tmp_path / "c.zarr", codec=codec)
    np.testing.assert_array_equal(stemdask.open_dataset(path).values, arr)


def test_unknown_codec_is_named(tmp_path, rng):
    _, data = dataset(rng)
    with pytest.raises(InvalidArgumentError, match="codec='lzma9'"):
        stemdask.save(data, tmp_path / "x.zarr", codec="lzma9")
    assert not (tmp_path / "x.zarr").exists()


def _failing(data, bad_block=(1, 0, 0, 0)):
    def fail(block, block_id=None):
        if block_id == bad_block:
            raise RuntimeError("detector readout failed")
        return block

    return data.copy(data=data.data.map_blocks(fail, dtype=data.dtype))


def test_failed_write_leaves_no_store(tmp_path, rng):
    _, data = dataset(rng)
    with pytest.raises(RuntimeError, match="readout"):
        stemdask.save(_failing(data), tmp_path / "f.zarr", chunks=(3, 2), shards=(3, 2))
    assert list(tmp_path.iterdir()) == []  # neither the store nor a temporary one
    with pytest.raises(FileNotFoundError):
        stemdask.open_dataset(tmp_path / "f.zarr")


def test_failed_overwrite_keeps_the_old_store(tmp_path, rng):
    arr, data = dataset(rng)
    path = stemdask.save(data, tmp_path / "o.zarr")
    with pytest.raises(FileExistsError, match="overwrite"):
        stemdask.save(data, path)
    with pytest.raises(RuntimeError):
        stemdask.save(_failing(data * 0), path, overwrite=True, chunks=(3, 2), shards=(3, 2))
    np.testing.assert_array_equal(stemdask.open_dataset(path).values, arr)
    stemdask.save(data * 0, path, overwrite=True)
    assert int(stemdask.open_dataset(path).sum()) == 0


def test_store_without_completion_marker_is_refused(tmp_path, rng):
    arr, data = dataset(rng)
    path = stemdask.save(data, tmp_path / "m.zarr")
    zarr.open_group(path, mode="r+").attrs["stemdask_complete"] = False
    with pytest.raises(IncompleteStoreError, match="not completely written"):
        stemdask.open_dataset(path)
    np.testing.assert_array_equal(stemdask.open_dataset(path, allow_incomplete=True).values, arr)


def test_writer_region_writes_then_publishes(tmp_path, rng):
    arr, _ = dataset(rng, shape=(6, 4, 5, 5))
    writer = stemdask.DatasetWriter(
        tmp_path / "w.zarr",
        scan_shape=(6, 4),
        detector_shape=(5, 5),
        dtype="uint16",
        chunks=(2, 4),
        shards=(6, 4),
        **CAL,
    )
    for row in [5, 0, 3, 1, 4, 2]:  # rows arrive out of order
        writer.write(arr[row : row + 1], scan_y=row)
        with pytest.raises(IncompleteStoreError):
            stemdask.open_dataset(tmp_path / "w.zarr")
    writer.write(arr[2:4, 1:3], scan_y=slice(2, 4), scan_x=slice(1, 3))
    writer.close()
    back = stemdask.open_dataset(tmp_path / "w.zarr")
    np.testing.assert_array_equal(back.values, arr)
    assert back.attrs["scan_step_A"] == [0.31, 0.29]
    np.testing.assert_allclose(back.k_x.values, (np.arange(5) - 4.0) * 1.1)


def test_writer_appends_rows_and_crash_stays_incomplete(tmp_path, rng):
    arr, _ = dataset(rng, shape=(5, 3, 4, 4))
    with stemdask.DatasetWriter(
        tmp_path / "a.zarr", scan_shape=(0, 3), detector_shape=(4, 4), dtype="uint16", scan_step_A=0.5
    ) as writer:
        for y in range(5):
            writer.append(arr[y : y + 1])
    back = stemdask.open_dataset(tmp_path / "a.zarr")
    np.testing.assert_array_equal(back.values, arr)
    np.testing.assert_allclose(back.scan_y.values, np.arange(5) * 0.5)

    with pytest.raises(KeyboardInterrupt):
        with stemdask.DatasetWriter(
            tmp_path / "b.zarr", scan_shape=(0, 3), detector_shape=(4, 4), dtype="uint16"
        ) as writer:
            writer.append(arr[:2])
            raise KeyboardInterrupt  # the acquisition is aborted
    with pytest.raises(IncompleteStoreError):
        stemdask.open_dataset(tmp_path / "b.zarr")


def _writer_ops(writer, arr, other):
    """Appends of 3 rows into shards of 4 rows (each splits a shard), then regions across shards."""
    for y in range(0, arr.shape[0], 3):
        writer.append(arr[y : y + 3])
    writer.write(other[2:7, 1:3], scan_y=slice(2, 7), scan_x=slice(1, 3))
    writer.write(other[9:10], scan_y=9)
    writer.write(other[3:5, :1], scan_y=slice(3, 5), scan_x=slice(0, 1))


def _chunk_files(path):
    root = path / "intensity" / "c"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_writer_on_workers_matches_the_in_process_writer(tmp_path, rng, local_client):
    arr = rng.poisson(2.0, size=(24, 3, 8, 8)).astype("uint16")
    other = rng.poisson(5.0, size=arr.shape).astype("uint16")
    expected = arr.copy()
    for ys, xs in [(slice(2, 7), slice(1, 3)), (slice(9, 10), slice(None)), (slice(3, 5), slice(0, 1))]:
        expected[ys, xs] = other[ys, xs]
    kw = dict(scan_shape=(0, 3), detector_shape=(8, 8), dtype="uint16", shards=(4, 3), scan_step_A=0.5)
    with stemdask.DatasetWriter(tmp_path / "here.zarr", **kw) as writer:
        _writer_ops(writer, arr, other)
    with stemdask.DatasetWriter(tmp_path / "workers.zarr", client=local_client, **kw) as writer:
        _writer_ops(writer, arr, other)
        assert len(writer._pending) > 1  # several writes in flight when close() waits for them
    here, workers = (stemdask.open_dataset(tmp_path / n) for n in ("here.zarr", "workers.zarr"))
    np.testing.assert_array_equal(workers.values, expected)
    np.testing.assert_array_equal(here.values, expected)
    np.testing.assert_allclose(workers.scan_y.values, np.arange(24) * 0.5)
    files = _chunk_files(tmp_path / "workers.zarr")
    assert len(files) == 6 and files == _chunk_files(tmp_path / "here.zarr")  # bitwise identical shards


def test_writer_on_workers_failure_is_raised_by_close_and_store_stays_incomplete(tmp_path, rng, local_client):
    arr = rng.poisson(2.0, size=(6, 3, 8, 8)).astype("uint16")
    path = tmp_path / "bad.zarr"
    writer = stemdask.DatasetWriter(
        path, scan_shape=(0, 3), detector_shape=(8, 8), dtype="uint16", shards=(4, 3), client=local_client
    )
    # a damaged first shard on disk: the worker's read-modify-write of it fails its index checksum
    shard = path / "intensity" / "c" / "0" / "0" / "0" / "0"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"\x00" * 100)
    writer.append(arr[:3])
    writer.append(arr[3:])  # touches the damaged shard (after the failed write) and the next one
    with pytest.raises(IncompleteStoreError, match="scan_y 0:3, scan_x 0:3.*checksum") as info:
        writer.close()
    assert isinstance(info.value.__cause__, ValueError)
    assert not writer.closed
    with pytest.raises(IncompleteStoreError):
        stemdask.open_dataset(path)
    with pytest.raises(IncompleteStoreError, match="scan_y 0:3"):
        writer.close()  # still refused


def test_writer_rejects_wrong_frames(tmp_path):
    writer = stemdask.DatasetWriter(tmp_path / "r.zarr", scan_shape=(2, 3), detector_shape=(4, 4), dtype="uint8")
    with pytest.raises(InvalidArgumentError, match="shape"):
        writer.write(np.zeros((1, 3, 4, 5), "uint8"), scan_y=0)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        writer.write(np.zeros((1, 3, 4, 4), "uint16"), scan_y=0)  # would be clipped
    with pytest.raises(InvalidArgumentError, match="region"):
        writer.write(np.zeros((0, 3, 4, 4), "uint8"), scan_y=slice(5, 7))


def test_foreign_zarr_array_opens_with_given_calibration(tmp_path, rng):
    arr = rng.integers(0, 100, size=(3, 4, 6, 6), dtype="uint16")
    z = zarr.create_array(tmp_path / "plain.zarr", shape=arr.shape, chunks=(1, 4, 6, 6), dtype=arr.dtype)
    z[...] = arr
    data = stemdask.open_dataset(tmp_path / "plain.zarr", scan_step_A=0.2, energy_ev=300e3)
    np.testing.assert_array_equal(data.values, arr)
    assert data.attrs["scan_step_A"] == [0.2, 0.2]


def test_not_a_store(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileFormatError, match="zarr"):
        stemdask.open_dataset(tmp_path / "empty")


def test_save_validates_first(tmp_path):
    with pytest.raises(TypeError, match="xarray.DataArray"):
        stemdask.save(da.zeros((2, 2)), tmp_path / "x.zarr")
    with pytest.raises(InvalidArgumentError, match="4 dims"):
        stemdask.save(xr.DataArray(np.zeros((2, 2)), dims=("a", "b")), tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_histogram_codec_gets_chunks_of_many_frames():
    inner, shard = storage_layout((128, 128, 256, 256), 2, min_chunk_frames=256)
    assert inner[0] * inner[1] >= 256 and shard[0] % inner[0] == 0 and shard[1] % inner[1] == 0
    assert storage_layout((128, 128, 256, 256), 2)[0][:2] == (1, 64)  # 8 MiB of frames otherwise


def test_default_codec_store_opens_with_plain_zarr_in_a_fresh_process(tmp_path, rng):
    import subprocess
    import sys

    arr, data = dataset(rng)
    path = stemdask.save(data, tmp_path / "d.zarr")
    assert stemdask.codecs.DEFAULT_CODEC == "blosc-lz4"
    code = (
        "import sys, zarr, numpy as np; z = zarr.open_array(sys.argv[1] + '/intensity', mode='r'); "
        "assert 'stemdask' not in sys.modules; a = z[...]; print(a.dtype.str, a.shape, int(a.astype('u8').sum()))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split()[-1] == str(int(arr.astype(np.uint64).sum()))
    assert str(arr.shape).replace(" ", "") in out.stdout.replace(" ", "")


# ----------------------------------------------------------------------------
# write settings (WRITE_ARRAY_CONFIG) and the codec-pipeline choice
# ----------------------------------------------------------------------------
def _zero_shard_data(rng):
    """Random uint16 data whose first shard (4 x 4 positions) is all zero: zarr's default would not store it."""
    arr = rng.integers(0, 60000, size=(8, 4, 6, 5), dtype="uint16")
    arr[:4] = 0
    return arr, stemdask.from_array(arr, chunks=(4, 4), **CAL)


def _shard_files(path):
    root = path / "intensity" / "c"
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("scheduler", ["threads", "cluster"])
def test_save_stores_all_zero_shards_and_round_trips(tmp_path, rng, scheduler, request):
    from stemdask.io import manifest

    arr, data = _zero_shard_data(rng)
    client = request.getfixturevalue("local_client") if scheduler == "cluster" else None
    with dask_config(client):
        path = stemdask.save(data, tmp_path / "z.zarr", chunks=(2, 2), shards=(4, 4))
    # both shards exist (the all-zero one too), and the manifest records both
    assert [str(p) for p in _shard_files(tmp_path / "z.zarr")] == ["0/0/0/0", "1/0/0/0"]
    assert set(manifest.read(path)["arrays"]["intensity"]) == {"c/0/0/0/0", "c/1/0/0/0"}
    np.testing.assert_array_equal(stemdask.open_dataset(path).values, arr)


def dask_config(client):
    import contextlib

    return contextlib.nullcontext() if client is not None else dask.config.set(scheduler="threads")


def test_deleted_all_zero_shard_is_an_error_not_zeros(tmp_path, rng):
    from stemdask.errors import MissingChunkError

    _, data = _zero_shard_data(rng)
    path = stemdask.save(data, tmp_path / "z.zarr", chunks=(2, 2), shards=(4, 4))
    (tmp_path / "z.zarr" / "intensity" / "c" / "0" / "0" / "0" / "0").unlink()
    with pytest.raises(MissingChunkError, match="c/0/0/0/0"):
        stemdask.open_dataset(path)


def test_dataset_writer_stores_zero_rows_and_round_trips(tmp_path, rng):
    arr, _ = _zero_shard_data(rng)
    with stemdask.DatasetWriter(
        tmp_path / "w.zarr", scan_shape=(0, 4), detector_shape=(6, 5), dtype="uint16", shards=(4, 4)
    ) as writer:
        for y in range(0, 8, 2):
            writer.append(arr[y : y + 2])
    assert [str(p) for p in _shard_files(tmp_path / "w.zarr")] == ["0/0/0/0", "1/0/0/0"]
    np.testing.assert_array_equal(stemdask.open_dataset(tmp_path / "w.zarr").values, arr)


def test_codec_pipeline_choice_names_the_bad_value_and_restores():
    from stemdask.io.pipeline import PIPELINES, codec_pipeline, use_codec_pipeline

    with pytest.raises(InvalidArgumentError, match="'rust'.*'zarr', 'zarrs'"):
        use_codec_pipeline("rust")
    before = codec_pipeline()
    assert before == "zarr" and zarr.config.get("codec_pipeline.path") == PIPELINES["zarr"]
    assert use_codec_pipeline("zarr") == "zarr"


@pytest.mark.parametrize("codec", ["blosc-lz4", "none", "histogram"])
def test_zarrs_pipeline_round_trips_and_writes_stores_zarr_python_reads(tmp_path, rng, codec, monkeypatch):
    pytest.importorskip("zarrs")
    from stemdask.io.pipeline import ENV_VAR, PIPELINES, use_codec_pipeline

    monkeypatch.setenv(ENV_VAR, PIPELINES["zarr"])  # restored after the test
    arr = rng.poisson(0.3, size=(8, 4, 16, 16)).astype("uint16")
    arr[:4] = 0
    data = stemdask.from_array(arr, chunks=(4, 4), **CAL)
    previous = use_codec_pipeline("zarrs")
    try:
        warns = pytest.warns(UserWarning, match="histogram") if codec == "histogram" else _no_warning()
        with warns, dask.config.set(scheduler="threads"):  # in this process, where the choice is set
            path = stemdask.save(data, tmp_path / "r.zarr", codec=codec, chunks=(2, 4), shards=(4, 4))
            pipeline = zarr.open_array(path, path="intensity", mode="r")._async_array.codec_pipeline
            assert type(pipeline).__name__ == "ZarrsCodecPipeline"
            np.testing.assert_array_equal(stemdask.open_dataset(path).values, arr)
            np.testing.assert_array_equal(stemdask.open_dataset(path, chunks=(1, 3)).values, arr)
    finally:
        use_codec_pipeline(previous)
    # what zarrs wrote, zarr-python reads back exactly
    assert zarr.config.get("codec_pipeline.path") == PIPELINES["zarr"]
    np.testing.assert_array_equal(stemdask.open_dataset(path).values, arr)


def _no_warning():
    import contextlib

    return contextlib.nullcontext()


def test_codec_pipeline_choice_reaches_running_workers(local_client, monkeypatch):
    pytest.importorskip("zarrs")
    from stemdask.io.pipeline import ENV_VAR, PIPELINES, use_codec_pipeline

    monkeypatch.setenv(ENV_VAR, PIPELINES["zarr"])

    def worker_path():
        import zarr

        return zarr.config.get("codec_pipeline.path")

    previous = use_codec_pipeline("zarrs", client=local_client)
    try:
        assert set(local_client.run(worker_path).values()) == {PIPELINES["zarrs"]}
    finally:
        use_codec_pipeline(previous, client=local_client)
    assert set(local_client.run(worker_path).values()) == {PIPELINES["zarr"]}


@pytest.mark.parametrize("chunks, shards", [((1, 5), (3, 5)), ((2, 5), None), ((1, 5), False)])
def test_open_for_save_reads_in_shards_and_converts_exactly(tmp_path, rng, chunks, shards):
    from stemdask.io.zarr_store import open_for_save, write_tile

    arr = rng.integers(0, 1000, size=(7, 5, 13, 9), dtype="uint16")
    np.save(tmp_path / "a.npy", arr)
    data = open_for_save(tmp_path / "a.npy", chunks=chunks, shards=shards, scan_step_A=0.5)
    tile = write_tile(data, chunks=chunks, shards=shards)
    expected = (
        (3, 5) if shards == (3, 5) else chunks if shards is False else storage_layout(arr.shape, 2, chunks)[1][:2]
    )
    assert tile == expected
    # every dask block but the last along each scan axis is one write tile: save does not rechunk
    assert all(set(c[:-1]) <= {t} and c[-1] <= t for c, t in zip(data.data.chunks[:2], tile))
    assert data.attrs["scan_step_A"] == [0.5, 0.5]
    with dask.config.set(scheduler="sync"):
        store = stemdask.save(data, tmp_path / "a.zarr", chunks=chunks, shards=shards)
        np.testing.assert_array_equal(stemdask.open_dataset(store).values, arr)
