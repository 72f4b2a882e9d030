"""Checksummed chunks, manifests, verify, interrupted writes, truncated Merlin files, progress in logs."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import stemdask
from stemdask import cli
from stemdask.errors import CorruptChunkError, FileFormatError, MissingChunkError
from stemdask.io import publish
from stemdask.progress import LineProgress


def _store(tmp_path, rng, codec=None, name="s.zarr"):
    values = rng.integers(0, 60, size=(4, 8, 16, 16), dtype=np.uint16)
    path = stemdask.save(stemdask.from_array(values), tmp_path / name, codec=codec, chunks=(2, 2), shards=(2, 4))
    return Path(path), values


def _flip(path: Path, at: float = 1 / 3) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("codec", ["blosc", "zstd", "gzip", "none", "histogram"])
def test_every_codec_checksums_every_inner_chunk(tmp_path, rng, codec):
    path, values = _store(tmp_path, rng, codec)
    inner = zarr.open_array(path / "intensity", mode="r").metadata.codecs[0].codecs
    assert type(inner[-1]).__name__ == "Crc32cCodec"
    _flip(path / "intensity" / "c" / "1" / "1" / "0" / "0")  # one bit, a third into a shard
    data = stemdask.open_dataset(path)
    np.testing.assert_array_equal(data[:2].values, values[:2])  # the other shards read fine
    with pytest.raises(CorruptChunkError) as err:
        data.values
    text = str(err.value)
    assert str(path) in text and "'intensity'" in text and "intensity/c/1/1/0/0" in text and "chunk (" in text


def test_corrupt_chunk_error_has_no_asyncio_flood(tmp_path, rng):
    path, _ = _store(tmp_path, rng)
    _flip(path / "intensity" / "c" / "0" / "0" / "0" / "0")
    code = (
        f"import stemdask\ntry:\n    stemdask.open_dataset({str(path)!r}).values\n"
        "except Exception as e:\n    print(type(e).__name__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "CorruptChunkError" and "Task was destroyed" not in proc.stderr


def test_deleted_or_cut_shard_is_refused_and_verify_reports_every_problem(tmp_path, rng, local_client):
    path, _ = _store(tmp_path, rng)
    (path / "intensity" / "c" / "0" / "1" / "0" / "0").unlink()
    with pytest.raises(MissingChunkError, match="intensity/c/0/1/0/0"):
        stemdask.open_dataset(path)
    shard = path / "intensity" / "c" / "1" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:-10])
    _flip(path / "intensity" / "c" / "1" / "1" / "0" / "0")
    report = stemdask.verify(path)  # on the cluster's workers
    kinds = sorted((p["kind"], p["file"]) for p in report.problems)
    assert not report.ok
    assert ("missing", "intensity/c/0/1/0/0") in kinds and ("truncated", "intensity/c/1/0/0/0") in kinds
    assert any(k == "corrupt" and f == "intensity/c/1/1/0/0" for k, f in kinds)
    # allow_incomplete reads what is there (for recovery)
    assert stemdask.open_dataset(path, allow_incomplete=True).shape == (4, 8, 16, 16)


def test_verify_passes_a_good_store_and_an_event_store(tmp_path, rng):
    path, _ = _store(tmp_path, rng)
    report = stemdask.verify(path)
    assert report.ok and report.has_manifest and report.n_chunks == 8 + 4 and report.n_files >= 4
    events = stemdask.save(stemdask.events.from_dense(stemdask.open_dataset(path)), tmp_path / "e.zarr")
    assert stemdask.verify(events).ok


def test_killed_write_is_reported_then_cleaned_by_a_rerun(tmp_path, rng):
    values = rng.integers(0, 60, size=(8, 8, 16, 16), dtype=np.uint16)
    np.save(tmp_path / "a.npy", values)
    target = tmp_path / "s.zarr"
    # a write killed (SIGKILL: no clean-up can run) after its first task
    code = (
        "import os, signal, dask, stemdask\n"
        "class Kill(dask.callbacks.Callback):\n"
        "    def _posttask(self, *a):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        f"with Kill():\n    stemdask.save(stemdask.open_dataset({str(tmp_path / 'a.npy')!r}), {str(target)!r},"
        " chunks=(2, 2), shards=(2, 4))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    (left,) = [p for p in tmp_path.iterdir() if ".partial-" in p.name and not p.name.endswith(".lock")]
    with pytest.raises(FileNotFoundError) as err:
        stemdask.open_dataset(target)
    assert str(left) in str(err.value) and "interrupted write" in str(err.value) and "rm -r" in str(err.value)
    assert publish.interrupted_writes(target) == [(left, None)]  # its writer has ended
    stemdask.save(stemdask.open_dataset(tmp_path / "a.npy"), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "s.zarr"]
    np.testing.assert_array_equal(stemdask.open_dataset(target).values, values)


def test_a_running_write_is_not_taken_for_an_interrupted_one(tmp_path, rng):
    data = stemdask.from_array(rng.integers(0, 9, size=(2, 2, 4, 4), dtype=np.uint16))
    with publish.atomic_path(tmp_path / "s.zarr") as (tmp, final):
        tmp.mkdir()
        (found,) = publish.interrupted_writes(final)
        assert found[0] == tmp and found[1] is not None and str(os.getpid()) in found[1]
        assert publish.remove_stale_writes(final) == []
    stemdask.save(data, tmp_path / "t.zarr")


def test_failed_save_leaves_nothing(tmp_path, rng):
    data = stemdask.from_array(rng.integers(0, 9, size=(2, 2, 4, 4), dtype=np.uint16))
    with pytest.raises(Exception):
        stemdask.save(data.copy(data=data.data.map_blocks(lambda b: 1 / 0, dtype=data.dtype)), tmp_path / "s.zarr")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def merlin(shared_data, tmp_path):
    src = shared_data / "merlin" / "001_4x2_6bit"
    shutil.copy(src.with_suffix(".hdr"), tmp_path / "t.hdr")
    raw = src.with_suffix(".mib").read_bytes()
    return tmp_path / "t.mib", raw, len(raw) // 8  # 8 frames of equal size


@pytest.mark.parametrize("frames, extra", [(4, 0), (5, 0), (7, 0), (8, -1), (3, 100)])
def test_truncated_merlin_says_so(merlin, frames, extra):
    path, raw, frame = merlin
    path.write_bytes(raw[: frames * frame + extra])
    whole = frames if extra >= 0 else 7
    with pytest.raises(FileFormatError, match=f"truncated: its .hdr says 8 frames .* holds {whole} whole frames"):
        stemdask.open_dataset(path)


def test_over_long_merlin_says_so(merlin):
    path, raw, frame = merlin
    path.write_bytes(raw + raw[:frame])
    with pytest.raises(FileFormatError, match="longer than its .hdr says: 8 frames expected, 9 found"):
        stemdask.open_dataset(path)


def test_merlin_scan_shape_in_api_and_cli(merlin, capsys):
    path, raw, _ = merlin
    path.write_bytes(raw)
    default = stemdask.open_dataset(path)
    data = stemdask.open_dataset(path, scan_shape=(4, 2))
    assert data.shape == (4, 2, 256, 256)
    np.testing.assert_array_equal(data.values.reshape(8, 256, 256), default.values.reshape(8, 256, 256))
    assert cli.main(["info", str(path), "--scan-shape", "8", "1"]) == 0
    assert "(8, 1, 256, 256)" in capsys.readouterr().out


def test_arina_info_reports_the_data_files(shared_data, capsys):
    master = shared_data / "arina" / "test_00_master.h5"
    data_file = shared_data / "arina" / "test_00_data_000001.h5"
    assert cli.main(["info", "--json", str(master)]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert info["bytes_on_disk"] == data_file.stat().st_size and info["metadata_bytes"] == master.stat().st_size


def test_progress_in_a_log_is_a_few_plain_lines(capsys):
    import dask
    import dask.array as da

    with LineProgress("adding"):
        dask.compute(da.ones((100,), chunks=1).sum(), scheduler="threads")
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "\r" not in err and "\x1b" not in err and len(lines) <= 12
    assert lines[0].startswith("adding: ") and lines[-1].startswith("adding: 100%")
