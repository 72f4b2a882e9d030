"""py4DSTEM's single-slice gradient-descent ptychography on bench_ptycho.py's data (peers' venv).

    _venv_peers/bin/python _peers_ptycho.py DATA.npy PARAMS.json OUT.npy

Prints one JSON object: seconds per iteration (median of the iterations
after the first; wall time and this process's CPU time) and the object's
pixel size; writes the object phase to OUT.npy.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main() -> None:
    data_path, params_path, out_path = sys.argv[1:4]
    p = json.loads(open(params_path).read())
    data = np.load(data_path).astype(np.float32)
    import py4DSTEM
    from py4DSTEM.process.phase import SingleslicePtychography

    dc = py4DSTEM.DataCube(data=data)
    dc.calibration.set_R_pixel_size(p["scan_step_A"])
    dc.calibration.set_R_pixel_units("A")
    dc.calibration.set_Q_pixel_size(p["detector_pixel_mrad"])
    dc.calibration.set_Q_pixel_units("mrad")
    t0 = time.perf_counter()
    ptycho = SingleslicePtychography(
        energy=p["energy_ev"], datacube=dc, semiangle_cutoff=p["semiangle_mrad"], device="cpu", verbose=False
    ).preprocess(
        plot_center_of_mass=False,
        plot_rotation=False,
        plot_probe_overlaps=False,
        force_com_rotation=0.0,
        force_com_transpose=False,
    )
    prep = time.perf_counter() - t0
    times, cpu = [], []
    for i in range(p["iterations"]):
        t0, c0 = time.perf_counter(), time.process_time()
        ptycho.reconstruct(
            num_iter=1,
            reconstruction_method="gradient-descent",
            step_size=0.5,
            reset=(i == 0),
            fix_probe=True,
            progress_bar=False,
            gaussian_filter=False,
            butterworth_filter=False,
            tv_denoise=False,
            object_positivity=False,
        )
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    obj = np.asarray(ptycho.object)
    np.save(out_path, np.angle(obj))
    print(
        json.dumps(
            {
                "seconds_per_iteration": float(np.median(times[1:] if len(times) > 1 else times)),
                "iteration_seconds": times,
                "cpu_seconds_per_iteration": float(np.median(cpu[1:] if len(cpu) > 1 else cpu)),
                "preprocess_seconds": prep,
                "sampling_A": [float(s) for s in ptycho.sampling],
                "positions_px": np.asarray(ptycho.positions).tolist()[:2],
            }
        )
    )


if __name__ == "__main__":
    main()
