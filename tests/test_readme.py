"""The README's Python example runs as written (on a copy of a real Merlin file)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example(shared_data, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = blocks[0]
    assert 'open_dataset("scan.mib"' in example
    for suffix in (".mib", ".hdr"):
        shutil.copy(shared_data / "merlin" / f"001_4x2_6bit{suffix}", tmp_path / f"scan{suffix}")
    script = tmp_path / "example.py"
    # worker processes re-import the main module: guard it as a user's script would be
    body = "\n".join("    " + line for line in example.splitlines())
    script.write_text(f"if __name__ == '__main__':\n{body}\n    print('EXAMPLE OK')\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "EXAMPLE OK" in proc.stdout and "dashboard" in proc.stdout
    assert (tmp_path / "scan.zarr" / "zarr.json").is_file()
