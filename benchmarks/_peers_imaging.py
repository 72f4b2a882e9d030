"""Peer timings for bench_imaging.py: LiberTEM and py4DSTEM on the same data.

Runs inside ``benchmarks/_venv_peers`` (numpy 1.26); called by
``bench_imaging.py`` as a subprocess and prints one JSON object.

    _venv_peers/bin/python _peers_imaging.py DATA.npy MASKS.npz REPS
"""

from __future__ import annotations

import json
import sys

import numpy as np
from _timing import timed  # this script's folder is on sys.path (run as a script)


def main() -> None:
    path, masks_path, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    which = set(sys.argv[4].split(",")) if len(sys.argv) > 4 else {"libertem", "py4dstem"}
    masks = np.load(masks_path)
    adf, rings, center, radii = masks["adf"], masks["rings"], masks["center_px"], masks["adf_radii_px"]
    data = np.load(path)
    results: dict = {"nbytes": int(data.nbytes), "shape": list(data.shape)}
    checks: dict = {}

    if "libertem" in which:
        from libertem.api import Context
        from libertem.udf.com import CoMUDF
        from libertem.udf.masks import ApplyMasksUDF

        one = [lambda: adf]
        many = [(lambda m=m: m) for m in rings]
        for label, ctx, ds in (
            ("libertem-threads-mem", Context.make_with("threads", cpus=2), None),
            ("libertem-dask-npy", Context.make_with("dask", cpus=2), "npy"),
        ):
            ds = ctx.load("npy", path=path) if ds == "npy" else ctx.load("memory", data=data, sig_dims=2)
            for task, udf in (
                ("1 mask", lambda: ApplyMasksUDF(mask_factories=one)),
                ("16 masks", lambda: ApplyMasksUDF(mask_factories=many)),
                ("CoM", lambda: CoMUDF.with_params(cy=float(center[0]), cx=float(center[1]))),
            ):
                res, out = timed(lambda: ctx.run_udf(dataset=ds, udf=udf()), reps)
                results[f"{label}|{task}"] = res
                if label == "libertem-threads-mem":
                    if task == "CoM":
                        checks[task] = np.asarray(out["raw_com"].data)[:2, :2].tolist()
                    else:
                        checks[task] = np.asarray(out["intensity"].data)[:2, :2].tolist()
            ctx.close()

    if "py4dstem" in which:
        import py4DSTEM

        dc = py4DSTEM.DataCube(data=data)
        geometry = ((float(center[0]), float(center[1])), (float(radii[0]), float(radii[1])))
        res, out = timed(
            lambda: dc.get_virtual_image(mode="annulus", geometry=geometry, verbose=False, name="adf", returncalc=True),
            max(2, reps // 2),
        )
        results["py4dstem|1 mask"] = res
        checks["py4dstem 1 mask"] = np.asarray(out.data)[:2, :2].tolist()
        edges = masks["ring_edges_px"]

        def sixteen():
            for lo, hi in zip(edges[:-1], edges[1:]):
                dc.get_virtual_image(
                    mode="annulus",
                    geometry=((float(center[0]), float(center[1])), (float(lo), float(hi))),
                    verbose=False,
                    name="ring",
                    returncalc=True,
                )

        res, _ = timed(sixteen, 1)
        results["py4dstem|16 masks"] = res
    results["checks"] = checks
    print(json.dumps(results))


if __name__ == "__main__":
    main()
