"""The example scripts run as a user would run them."""

import subprocess
import sys
from pathlib import Path

import numpy as np

import stemdask

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_stream_acquisition_example(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "stream_acquisition.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = stemdask.open_dataset(tmp_path / "acquisition.zarr")
    assert data.shape == (24, 32, 64, 64) and data.attrs["energy_ev"] == 300e3
    np.testing.assert_allclose(data.scan_y.values, np.arange(24) * 0.5)


def test_convert_real_file_example(shared_data, tmp_path):
    src = shared_data / "merlin" / "001_4x2_6bit.mib"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "convert_real_file.py"), str(src), str(tmp_path / "o.zarr")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert stemdask.open_dataset(tmp_path / "o.zarr").attrs["detector_pixel_mrad"] == [0.05, 0.05]


def test_compress_as_acquired_example(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "compress_as_acquired.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    compressed = stemdask.open_dataset(tmp_path / "compressed.zarr")
    assert compressed.coefficients.shape == (16, 16, 16) and compressed.attrs["basis_kind"] == "data+df_mean"
    assert "ratio C 227.6" in proc.stdout
