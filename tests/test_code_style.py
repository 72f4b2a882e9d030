"""The code checks CI runs with the tests: ruff (lint and format) and mypy on the public modules.

Configuration in pyproject.toml ([tool.ruff], [tool.mypy]); the tools are
pinned in the ``test`` extra so every machine checks with the same rules.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["stemdask", "tests", "benchmarks", "examples"]


def _run(*args: str) -> subprocess.CompletedProcess:
    # no cache files in the repository
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "RUFF_NO_CACHE": "true"},
    )


@pytest.mark.parametrize(
    "check",
    [["ruff", "check", "--no-cache", *SOURCES], ["ruff", "format", "--check", "--no-cache", *SOURCES]],
    ids=["lint", "format"],
)
def test_ruff(check):
    result = _run(*check)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy(tmp_path):
    result = _run("mypy", "--cache-dir", str(tmp_path / "mypy-cache"))
    assert result.returncode == 0, result.stdout + result.stderr
