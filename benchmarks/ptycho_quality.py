"""Reconstruction quality on simulated MoS2: phase correlation with the simulator's truth.

    PYTHONPATH=$PWD python benchmarks/ptycho_quality.py DOSE "CONFIG" ["CONFIG" ...]

DOSE is electrons per pattern or ``inf`` (noiseless); each CONFIG is the
keyword arguments of :func:`stemdask.ptycho.reconstruct` as Python source,
e.g. ``"iterations=40, loss='poisson', step=0.05"``. MoS2 (4 x 4 cells), 80 kV,
25 mrad, 20 x 20 positions at 0.5 Å, 32-pixel detector to 60 mrad, single
slice, known probe. Prints one line per configuration: time, correlation of
the summed phase with the truth on the scanned region (band-limited to the
object grid, sub-pixel registered, global phase removed), returned epoch,
mean amplitude, first and last loss.
"""

from __future__ import annotations

import ast
import sys
import time

import numpy as np
import xarray as xr

from stemdask.ptycho import reconstruct
from stemdask.ptycho.compare import phase_correlation
from stemdask.simulate import samples, simulate_4dstem


def main() -> None:
    import torch

    torch.set_num_threads(1)
    dose = None if sys.argv[1] == "inf" else float(sys.argv[1])
    data, truth = simulate_4dstem(
        samples.mos2((4, 4)),
        energy_ev=80e3,
        semiangle_mrad=25,
        scan_shape=(20, 20),
        scan_step_A=0.5,
        detector_shape=32,
        max_angle_mrad=60,
        chunks=(10, 20),
        dose_e_per_pattern=dose,
    )
    data = data.persist()
    tp = xr.DataArray(
        np.angle(truth.transmission.values).sum(0), coords={"y": truth.y.values, "x": truth.x.values}, dims=("y", "x")
    )
    for cfg in sys.argv[2:]:
        call = ast.parse(f"f({cfg})", mode="eval").body
        kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords}  # type: ignore[attr-defined]
        t = time.perf_counter()
        res = reconstruct(data, **kw)
        region = (
            float(res.position_y.min()),
            float(res.position_y.max()),
            float(res.position_x.min()),
            float(res.position_x.max()),
        )
        r = phase_correlation(res.phase_total, tp, region_A=region)["r"]
        print(
            f"{cfg}: t={time.perf_counter() - t:.1f} s r={r:.4f} epoch={res.attrs['best_iteration']} "
            f"mean amplitude={float(res.amplitude_total.mean()):.3f} "
            f"loss {res.loss.values[0]:.6g} -> {res.loss.values[-1]:.6g}",
            flush=True,
        )


if __name__ == "__main__":
    main()
