"""The stemdask command, run as a user would: in a subprocess."""

import json
import os
import subprocess
import sys

import numpy as np

import stemdask


def run(*args, cwd=None, check=True):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "stemdask.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"stemdask {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_info_on_real_merlin(shared_data):
    out = run("info", shared_data / "merlin" / "001_4x2_6bit.mib").stdout
    assert "(2, 4, 256, 256)" in out and "uint8" in out and "QuantumDetector" in out
    info = json.loads(run("info", "--json", shared_data / "merlin" / "001_4x2_6bit.mib").stdout)
    assert info["shape"] == [2, 4, 256, 256]
    assert (
        info["bytes_on_disk"]
        == (shared_data / "merlin" / "001_4x2_6bit.mib").stat().st_size
        + (shared_data / "merlin" / "001_4x2_6bit.hdr").stat().st_size
    )


def test_convert_real_merlin_then_info(shared_data, tmp_path):
    src = shared_data / "merlin" / "002_merlin_test_roi_sig256x128_nav4x2_hot_pixel_52x_39y.mib"
    proc = run("convert", src, tmp_path / "m.zarr", "--codec", "zstd", "--chunks", "1", "4", "--energy-ev", "300000")
    assert "wrote" in proc.stdout and "100%" in proc.stderr  # the progress bar
    assert np.array_equal(stemdask.open_dataset(tmp_path / "m.zarr").values, stemdask.open_dataset(src).values)
    info = json.loads(run("info", "--json", tmp_path / "m.zarr").stdout)
    assert info["energy_ev"] == 300000.0 and info["compression_ratio"] > 1.0
    assert "zarr v3 store" in info["file_format"]


def test_convert_on_an_existing_scheduler(local_client, tmp_path, rng):
    arr = rng.integers(0, 100, size=(4, 6, 8, 8), dtype="uint16")
    np.save(tmp_path / "a.npy", arr)
    proc = run("convert", tmp_path / "a.npy", tmp_path / "a.zarr", "--scheduler", local_client.scheduler.address)
    assert "dashboard" in proc.stdout
    np.testing.assert_array_equal(stemdask.open_dataset(tmp_path / "a.zarr").values, arr)


def test_errors_are_reported_not_raised(tmp_path):
    proc = run("info", tmp_path / "missing.mib", check=False)
    assert proc.returncode == 2 and "no file or store" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "short.raw").write_bytes(b"\0" * 10)
    proc = run(
        "convert",
        tmp_path / "short.raw",
        tmp_path / "o.zarr",
        "--shape",
        "2",
        "2",
        "4",
        "4",
        "--dtype",
        "uint16",
        check=False,
    )
    assert proc.returncode == 2 and "truncated" in proc.stderr
    assert not (tmp_path / "o.zarr").exists()


def test_help_lists_commands():
    out = run("--help").stdout
    for command in ("info", "convert", "demo"):
        assert command in out
