"""The README's Python example runs exactly as written: as a script and as a notebook cell.

It runs on a copy of a real Merlin file. As a script (``python ex.py``) the
LocalCluster's worker processes import the file, which is why the example has
its ``__main__`` guard; a notebook runs the same text as one IPython cell,
where ``__name__`` is ``"__main__"`` too and the main module has no file.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

# what IPython (a Jupyter kernel's shell) does with a cell; the cell's text is read from a file
NOTEBOOK = """
import sys
from IPython.core.interactiveshell import InteractiveShell
result = InteractiveShell.instance().run_cell(open(sys.argv[1]).read())
result.raise_error()
print("CELL OK")
"""


def _example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = blocks[0]
    assert 'open_dataset("scan.mib"' in example
    return example


def _scan(shared_data: Path, folder: Path) -> None:
    for suffix in (".mib", ".hdr"):
        shutil.copy(shared_data / "merlin" / f"001_4x2_6bit{suffix}", folder / f"scan{suffix}")


def test_readme_example_as_a_script(shared_data, tmp_path):
    _scan(shared_data, tmp_path)
    script = tmp_path / "ex.py"
    script.write_text(_example())  # exactly as written: no wrapping, no added lines
    proc = subprocess.run([sys.executable, "ex.py"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dashboard" in proc.stdout and "(2, 4)" in proc.stdout  # the cluster and the example's print
    assert (tmp_path / "scan.zarr" / "zarr.json").is_file()


def test_readme_example_as_a_notebook_cell(shared_data, tmp_path):
    pytest.importorskip("IPython")
    _scan(shared_data, tmp_path)
    (tmp_path / "cell.txt").write_text(_example())
    (tmp_path / "notebook.py").write_text(NOTEBOOK)
    proc = subprocess.run(
        [sys.executable, "notebook.py", "cell.txt"], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "CELL OK" in proc.stdout and "dashboard" in proc.stdout and "(2, 4)" in proc.stdout
    assert (tmp_path / "scan.zarr" / "zarr.json").is_file()
