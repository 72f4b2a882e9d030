"""Smoke run of the iterative reconstruction on the real Merlin file (4 x 2 scan): it runs, nothing more.

    PYTHONPATH=$PWD python benchmarks/ptycho_merlin_smoke.py [--epochs 10]

``../shared/data/merlin/001_4x2_6bit.mib`` (Medipix3 6-bit, 256², 4 x 2
positions) carries no calibration, its bright field is saturated (63 counts)
and cut by the detector edge at x = 0 (centre near pixel (112, 25)). The
patterns are cropped to the 48² pixels around the centroid of the saturated
disc (beam on pixel 24) and calibrated with ASSUMED values (300 kV, 1
mrad/pixel, 20 mrad semi-angle, 1 Å step). With 8 positions, no ground truth
and an invented calibration this only shows that a real detector file goes
through reading, cropping, calibration and the sharded Poisson
reconstruction with finite results and a falling loss; it measures no quality.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import stemdask

FILE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "merlin" / "001_4x2_6bit.mib"
#: assumed calibration (the file has none)
ASSUMED = {"energy_ev": 300e3, "detector_pixel_mrad": 1.0, "semiangle_mrad": 20.0, "scan_step_A": 1.0}
CROP = 48


def merlin_dataset(path: Path = FILE, crop: int = CROP):
    """The file's patterns cropped around the saturated bright-field disc, with the assumed calibration."""
    raw = stemdask.open_dataset(str(path))
    values = np.asarray(raw.values, dtype=np.float32)
    mean = values.mean((0, 1))
    ys, xs = np.nonzero(mean >= 0.95 * mean.max())
    cy, cx = int(round(ys.mean())), int(round(xs.mean()))
    y0, x0 = max(cy - crop // 2, 0), max(cx - crop // 2, 0)
    patch = values[:, :, y0 : y0 + crop, x0 : x0 + crop]
    return stemdask.from_array(patch, units="counts", source=str(path), **ASSUMED), (cy, cx)


def main() -> None:
    import torch

    from stemdask.ptycho import reconstruct

    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args()
    data, centre = merlin_dataset()
    print(f"{FILE.name}: {data.shape}, disc centre {centre}, {float(data.sum()) / 8:.0f} counts per pattern")
    res = reconstruct(data, iterations=args.epochs, loss="poisson", step=0.05)
    phase = res.phase_total.values
    print(
        f"loss {res.loss.values[0]:.6g} -> {res.loss.values[-1]:.6g}, phase range "
        f"{phase.min():.3f} .. {phase.max():.3f} rad, finite {bool(np.isfinite(phase).all())}, "
        f"object {phase.shape}, mean amplitude {float(res.amplitude_total.mean()):.3f}"
    )


if __name__ == "__main__":
    main()
