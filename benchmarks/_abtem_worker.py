"""Run a benchmark's ``--abtem-worker`` in the abTEM venv: the sample and parameters in, its arrays out.

abTEM lives in its own venv (``benchmarks/requirements-abtem.txt``), so each script that compares
with it re-executes itself there as ``python SCRIPT --abtem-worker IN OUT``: ``IN`` holds the
atoms (``numbers``, ``positions``, ``cell``) and ``params`` as JSON, ``OUT`` whatever the worker
saves. One BLAS/OpenMP thread, as stemdask's side of every comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def run_abtem_worker(
    python: Path | str, script: Path | str, sample: Any, params: dict[str, Any], *, isolated: bool = False
) -> dict[str, np.ndarray]:
    """The arrays the worker of ``script`` saved, run by ``python`` (the abTEM venv's).

    ``isolated`` drops ``PYTHONPATH`` and writes no bytecode (a worker that must not import this
    checkout's modules nor leave files in another venv).
    """
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(
            inp,
            numbers=sample.numbers,
            positions=sample.positions_A,
            cell=np.array(sample.cell_A),
            params=np.array(json.dumps(params)),
        )
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        if isolated:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
            env.pop("PYTHONPATH", None)
        proc = subprocess.run(
            [str(python), str(script), "--abtem-worker", inp, out], env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            raise SystemExit("abTEM worker failed")
        return dict(np.load(out))
