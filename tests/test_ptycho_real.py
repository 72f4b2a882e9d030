"""The iterative reconstruction on a real detector file (Merlin, 4 x 2 scan): a smoke test.

The file has no calibration and no ground truth (see benchmarks/ptycho_merlin_smoke.py):
this checks only that real counts go through the sharded Poisson reconstruction with a
falling loss and finite results.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stemdask.ptycho import reconstruct  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "benchmarks" / "ptycho_merlin_smoke.py"


def _smoke_module():
    spec = importlib.util.spec_from_file_location("ptycho_merlin_smoke", SMOKE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_merlin_file_reconstructs():
    smoke = _smoke_module()
    if not smoke.FILE.exists():
        pytest.skip(f"{smoke.FILE} not present")
    data, (cy, cx) = smoke.merlin_dataset()
    assert data.shape == (2, 4, 48, 48)
    # the bright-field disc of the mean pattern is where the file puts it (cut by the edge at x = 0)
    assert abs(cy - 112) <= 2 and abs(cx - 26) <= 2
    res = reconstruct(data, iterations=6, loss="poisson", step=0.05)
    assert np.all(np.diff(res.loss.values) < 0)
    assert np.isfinite(res.object.values).all()
    assert res.phase_total.shape == (76, 83)
