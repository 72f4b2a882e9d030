"""`stemdask demo`, the main job, end to end on a real LocalCluster (quick size)."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import stemdask


def test_demo_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "stemdask.cli", "demo", "--quick", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dashboard: http" in proc.stdout
    for name in ("bf.png", "adf.png", "icom.png", "pacbed.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp_path / "report.md").read_text()
    assert "histogram codec" in report
    # the ADF image follows the atoms: correlation with the true projected potential
    r_adf = float(re.search(r"ADF vs projected potential \| ([0-9.]+)", report).group(1))
    assert r_adf > 0.7
    data = stemdask.open_dataset(tmp_path / "mos2.zarr")
    assert data.shape == (16, 16, 48, 48) and data.dtype == np.uint16
    assert data.attrs["dose_e_per_pattern"] == 2000.0
    # counted data: the mean electrons per pattern matches the dose
    assert float(data.sum(dim=("k_y", "k_x")).mean()) == pytest.approx(2000.0, rel=0.02)
