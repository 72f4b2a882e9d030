"""Compress a simulated acquisition as it arrives: basis from the first patterns, then only coefficients.

A simulated MoS2 scan (``stemdask.simulate``) stands in for the detector and
delivers one scan row at a time. ``CompressedWriter`` keeps the first rows
until it has ``n_first`` patterns, builds a data basis (15 BF masks drawn at
random among them, plus one mean-DF mask; Diederichs et al.), and from then
on compresses each row as it arrives and stores only its 16 coefficients and
2 perpendicular norms: no frame reaches the disk. The store opens with
``stemdask.open_dataset``; the script prints the ratio C, the bytes on disk
and the mean angle Θ between the patterns and their compressed versions.

Run:  python examples/compress_as_acquired.py [OUTPUT_FOLDER]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

import stemdask
from stemdask import metrics
from stemdask.compression import CompressedWriter
from stemdask.simulate import samples, simulate_4dstem


def acquisition(scan: int = 16, detector: int = 64, dose: float = 2e4):
    """The simulated scan and a generator of its rows, computed one row at a time (as a detector delivers)."""
    data, _ = simulate_4dstem(
        samples.mos2((3, 2)),
        energy_ev=80e3,
        semiangle_mrad=25.0,
        aberrations={"defocus": 50.0},
        scan_shape=(scan, scan),
        scan_step_A=0.4,
        detector_shape=detector,
        max_angle_mrad=60.0,
        dose_e_per_pattern=dose,
        chunks=(1, scan),
        seed=1,
    )
    return data, (data.isel(scan_y=slice(y, y + 1)).values for y in range(scan))


def main(out: Path) -> None:
    data, rows = acquisition()
    store = out / "compressed.zarr"
    calibration = {k: data.attrs[k] for k in ("energy_ev", "semiangle_mrad", "scan_step_A", "detector_pixel_mrad")}
    with CompressedWriter(
        store,
        scan_x=data.sizes["scan_x"],
        detector_shape=(data.sizes["k_y"], data.sizes["k_x"]),
        basis="data",
        n_bf=15,
        n_df=1,
        n_first=64,
        overwrite=True,
        **calibration,
    ) as writer:
        for row in rows:
            writer.append(row)
    compressed = stemdask.open_dataset(store)
    summary = metrics.storage_summary(compressed, store)
    theta = metrics.theta(compressed).compute()
    print(
        f"compressed {data.sizes['scan_y']}x{data.sizes['scan_x']} patterns of {data.sizes['k_y']}x{data.sizes['k_x']} "
        f"pixels onto {summary['n_bright']} BF + {summary['n_dark']} DF masks: ratio C {summary['ratio_C']:.1f}, "
        f"{summary['bytes_on_disk'] / 1024:.1f} KiB on disk for {summary['raw_bytes'] / 1024:.1f} KiB of uint16 frames"
    )
    print(
        f"mean Θ_bright {np.degrees(float(theta.theta_bright.mean())):.2f}°, "
        f"mean Θ_dark {np.degrees(float(theta.theta_dark.mean())):.2f}°"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
