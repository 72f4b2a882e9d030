"""Multislice against single-slice reconstruction of a thick specimen simulated by stemdask's multislice.

    PYTHONPATH=$PWD python benchmarks/ptycho_thick.py [--sample si110|mos2] [--thickness-cells 8]
        [--slices 1 2 4 8] [--epochs 30 60] [--energy-kev 80]

Si[110] (3 x 4 cells, ``--thickness-cells`` repeats of 3.84 Å along the beam)
or AA-stacked MoS2 layers (2 x 3 cells, repeats of 7.17 Å), 25 mrad, 14 x 14
positions at 0.5 Å, 32-pixel detector to 60 mrad, simulated with slices of
half a repeat, noiseless, the probe focused on the entrance surface. Each
row reconstructs with ``n_slices`` slices of ``thickness / n_slices`` (the
probe known, focused on the first slice; amplitude loss, Adam lr 0.05, full
batch); single slice is also run with the probe focused mid-specimen (the
best plane for the projection approximation). Prints the correlation of the
summed phase with the true projected potential band-limited to the object
grid's 2/3-Nyquist disc (``stemdask.ptycho.compare.phase_correlation``:
sub-pixel registration, global phase removed) on the scanned region, after
each number of ``--epochs``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import xarray as xr

from stemdask.ptycho import reconstruct
from stemdask.ptycho.compare import band_limited, phase_correlation
from stemdask.simulate import samples, simulate_4dstem


def specimen(name: str, repeats: int) -> samples.AtomicSample:
    """The thick specimen: Si[110] or ``repeats`` AA-stacked MoS2 layers."""
    if name == "si110":
        return samples.silicon_110((3, 4), repeats)
    layer = samples.mos2((2, 3))
    return layer.repeat(1, 1, repeats)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sample", choices=("si110", "mos2"), default="si110")
    p.add_argument("--thickness-cells", type=int, default=8, help="repeats along the beam")
    p.add_argument("--slices", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--epochs", type=int, nargs="+", default=[30, 60])
    p.add_argument("--energy-kev", type=float, default=80.0)
    args = p.parse_args()
    sample = specimen(args.sample, args.thickness_cells)
    thickness = sample.cell_A[2]
    t = time.perf_counter()
    data, truth = simulate_4dstem(
        sample,
        energy_ev=args.energy_kev * 1e3,
        semiangle_mrad=25,
        scan_shape=(14, 14),
        scan_step_A=0.5,
        detector_shape=32,
        max_angle_mrad=60,
        slice_thickness_A=thickness / (2 * args.thickness_cells),
        chunks=(7, 14),
    )
    data = data.persist(scheduler="threads")
    print(
        f"{sample.name}, {thickness:.2f} Å thick, {truth.sizes['slice']} simulated slices, "
        f"{args.energy_kev:g} kV: simulated in {time.perf_counter() - t:.1f} s",
        flush=True,
    )
    potential = band_limited(np.asarray(truth.projected_potential.values, dtype=np.float64))
    target = xr.DataArray(potential, coords={"y": truth.y.values, "x": truth.x.values}, dims=("y", "x"))
    for n in args.slices:
        for focus in [0.0, thickness / 2] if n == 1 else [0.0]:
            row = []
            t = time.perf_counter()
            for epochs in args.epochs:
                multislice = {"n_slices": n, "slice_thickness_A": thickness / n} if n > 1 else {}
                res = reconstruct(
                    data,
                    iterations=epochs,
                    loss="amplitude",
                    step=0.05,
                    aberrations={"defocus": focus},
                    **multislice,
                )
                region = (
                    float(res.position_y.min()),
                    float(res.position_y.max()),
                    float(res.position_x.min()),
                    float(res.position_x.max()),
                )
                row.append(f"{phase_correlation(res.phase_total, target, region_A=region)['r']:.4f}")
            print(
                f"slices={n} focus={focus:.1f} Å: r after {args.epochs} epochs = {row}, "
                f"loss {res.loss.values[0]:.4g} -> {res.loss.values[-1]:.4g} ({time.perf_counter() - t:.1f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
