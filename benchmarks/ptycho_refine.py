"""Probe refinement from a wrong defocus: where the aberration-parameterised probe converges.

    PYTHONPATH=$PWD python benchmarks/ptycho_refine.py [--true -100] [--starts 0 -150] [--epochs 10 20 30 40]

MoS2 (2 x 2 cells), 80 kV, 25 mrad, 8 x 8 positions at 0.5 Å, 32-pixel
detector to 50 mrad, single slice, simulated with ``defocus = --true``
(stemdask's convention, abTEM's: ``C10 = -defocus``, so -100 Å is
``C10 = +100 Å``, the crossover 100 Å above the entrance surface). Each row
reconstructs object and probe (``refine_probe="aberrations"``, only the
defocus free, Adam, object lr 0.05, defocus lr ``--lr`` Å) from the wrong
start, noiseless with the amplitude loss and at ``--dose`` e/pattern with the
Poisson loss, and prints the defocus after each number of ``--epochs`` (runs
are deterministic, so a shorter run is the longer one's prefix).
"""

from __future__ import annotations

import argparse
import time

from stemdask.ptycho import reconstruct
from stemdask.simulate import samples, simulate_4dstem


def main() -> None:
    import torch

    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--true", type=float, default=-100.0, help="defocus of the simulation (Å)")
    p.add_argument("--starts", type=float, nargs="+", default=[0.0, -150.0], help="starting defocus (Å)")
    p.add_argument("--epochs", type=int, nargs="+", default=[10, 20, 30, 40, 60])
    p.add_argument("--lr", type=float, default=5.0, help="Adam learning rate of the defocus (Å)")
    p.add_argument("--dose", type=float, default=1e5, help="e/pattern of the noisy case")
    args = p.parse_args()
    for dose in (None, args.dose):
        data, _ = simulate_4dstem(
            samples.mos2((2, 2)),
            energy_ev=80e3,
            semiangle_mrad=25,
            aberrations={"defocus": args.true},
            scan_shape=(8, 8),
            scan_step_A=0.5,
            detector_shape=32,
            max_angle_mrad=50,
            dose_e_per_pattern=dose,
        )
        data = data.persist(scheduler="threads")
        loss = "amplitude" if dose is None else "poisson"
        for start in args.starts:
            row = []
            t = time.perf_counter()
            for epochs in args.epochs:
                res = reconstruct(
                    data,
                    iterations=epochs,
                    loss=loss,
                    step=0.05,
                    aberrations={"defocus": start},
                    refine_probe="aberrations",
                    probe_step=args.lr,
                )
                row.append(f"{-res.attrs['aberrations']['C10']:.2f}")
            print(
                f"dose={'inf' if dose is None else f'{dose:.0e}'} loss={loss} true={args.true:g} start={start:g}: "
                f"defocus after {args.epochs} epochs = {row} Å "
                f"(final error {float(row[-1]) - args.true:+.2f} Å, {time.perf_counter() - t:.1f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
