"""Peer SSB reconstructions for bench_ssb.py: ptychography40 (LiberTEM) and py4DSTEM on the same data.

Runs inside ``benchmarks/_venv_peers`` (numpy 1.26); called by
``bench_ssb.py`` as a subprocess. Writes the phases to OUT.npz and prints
one JSON object of timings.

    _venv_peers/bin/python _peers_ssb.py DATA.npy PARAMS.json OUT.npz REPS
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
from _timing import timed  # this script's folder is on sys.path (run as a script)


def main() -> None:
    path, params_path, out_path, reps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    p = json.loads(open(params_path).read())
    data = np.load(path)
    results: dict = {}
    phases: dict = {}
    warnings.filterwarnings("ignore")

    # ptychography40: trotter masks (its set-up) and the SSB UDF on an in-process LiberTEM context
    from libertem.api import Context
    from libertem.common.container import MaskContainer
    from ptychography40.reconstruction.common import wavelength
    from ptychography40.reconstruction.ssb import SSB_UDF, generate_masks

    ctx = Context.make_with("threads", cpus=2)
    ds = ctx.load("memory", data=data, sig_dims=2)
    lamb = wavelength(p["energy_ev"] / 1e3)
    dpix = (p["step_A"][0] * 1e-10, p["step_A"][1] * 1e-10)
    semiconv = p["semiangle_mrad"] * 1e-3
    semiconv_pix = p["semiangle_mrad"] / p["pixel_mrad"]
    cy, cx = p["center_px"]

    def p40():
        masks = generate_masks(
            reconstruct_shape=data.shape[:2],
            mask_shape=data.shape[2:],
            dtype=np.float32,
            lamb=lamb,
            dpix=dpix,
            semiconv=semiconv,
            semiconv_pix=semiconv_pix,
            cy=cy,
            cx=cx,
            method="subpix",
        )
        container = MaskContainer(mask_factories=lambda: masks, dtype=masks.dtype, count=masks.shape[0])
        udf = SSB_UDF(
            lamb=lamb,
            dpix=dpix,
            semiconv=semiconv,
            semiconv_pix=semiconv_pix,
            dtype=np.float32,
            cy=cy,
            cx=cx,
            mask_container=container,
        )
        return ctx.run_udf(udf=udf, dataset=ds)

    res, out = timed(p40, reps)
    results["ptychography40|first reconstruction"] = res
    phases["ptychography40"] = np.asarray(out["phase"].data)
    ctx.close()

    # py4DSTEM: preprocessing (no CoM rotation search) and reconstruct; a refocus is another reconstruct
    import py4DSTEM

    def p4():
        dc = py4DSTEM.DataCube(data=data)
        dc.calibration.set_R_pixel_size(float(p["step_A"][1]))
        dc.calibration.set_R_pixel_units("A")
        dc.calibration.set_Q_pixel_size(float(p["pixel_mrad"]))
        dc.calibration.set_Q_pixel_units("mrad")
        ssb = py4DSTEM.process.phase.SSB(
            energy=p["energy_ev"], datacube=dc, semiangle_cutoff=p["semiangle_mrad"], device="cpu", verbose=False
        )
        ssb.preprocess(
            plot_center_of_mass=False,
            plot_rotation=False,
            plot_overlap_trotters=False,
            force_com_rotation=0.0,
            force_com_transpose=False,
            fit_function="constant",
        )
        ssb.reconstruct(progress_bar=False, num_jobs=1)
        return ssb

    res, ssb = timed(p4, max(1, reps // 2))
    results["py4DSTEM|first reconstruction"] = res
    phases["py4DSTEM"] = np.angle(ssb.object)
    res, _ = timed(
        lambda: ssb.reconstruct(progress_bar=False, num_jobs=1, polar_parameters={"C10": -40.0}), max(1, reps // 2)
    )
    results["py4DSTEM|refocus"] = res
    np.savez(out_path, **phases)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
