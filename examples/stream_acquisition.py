"""Store an acquisition row by row as it arrives, then analyse it lazily.

A detector delivers one scan row at a time; ``stemdask.DatasetWriter`` appends
each row to a sharded zarr v3 store. Until ``close()`` the store is marked
incomplete, so a crashed acquisition never reads as a finished dataset.

Run:  python examples/stream_acquisition.py [OUTPUT_FOLDER]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

import stemdask


def fake_detector_rows(n_rows: int, n_cols: int, frame: int, seed: int = 0):
    """Rows of Poisson-noisy frames with a bright-field disc that moves slightly."""
    rng = np.random.default_rng(seed)
    ky, kx = np.mgrid[:frame, :frame] - frame // 2
    for y in range(n_rows):
        shift = np.sin(np.linspace(0, np.pi, n_cols) + y / 3)[:, None, None]
        disc = ((ky[None] - 2 * shift) ** 2 + kx[None] ** 2 < (frame // 5) ** 2) * 20.0 + 0.2
        yield rng.poisson(disc)[None].astype(np.uint16)


def main(out: Path) -> None:
    store = out / "acquisition.zarr"
    with stemdask.DatasetWriter(
        store,
        scan_shape=(0, 32),
        detector_shape=(64, 64),
        dtype="uint16",
        energy_ev=300e3,
        semiangle_mrad=20.0,
        scan_step_A=0.5,
        detector_pixel_mrad=1.0,
        overwrite=True,
    ) as writer:
        for row in fake_detector_rows(24, 32, 64):
            writer.append(row)
    data = stemdask.open_dataset(store)
    print(data)
    pacbed = data.mean(dim=("scan_y", "scan_x")).compute()
    print(
        f"stored {data.stem.scan_shape} positions; mean counts per pattern "
        f"{float(pacbed.sum()):.1f}; on disk {stemdask.io.store_nbytes(store) / 2**20:.2f} MiB"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
