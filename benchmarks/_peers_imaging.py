"""Peer timings for bench_imaging.py: LiberTEM and py4DSTEM on the same data.

Runs inside ``benchmarks/_venv_peers`` (numpy 1.26); called by
``bench_imaging.py`` as a subprocess with a clean environment
(``_clean_env.peer_env``), prints one JSON object (timings and the
environment it ran in) and writes every result array to ``--outputs`` so
that the caller compares them with its own, whole.

    _venv_peers/bin/python _peers_imaging.py DATA.npy MASKS.npz REPS --outputs OUT.npz
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from _timing import timed  # this script's folder is on sys.path (run as a script)


def environment() -> dict:
    """What could make this run slower than a user's: malloc tunables, BLAS and torch threads."""
    env = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k.endswith("_NUM_THREADS")}
    try:
        from threadpoolctl import threadpool_info

        env["threadpools"] = [(p["internal_api"], p["num_threads"]) for p in threadpool_info()]
    except ImportError:
        pass
    return env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("masks")
    parser.add_argument("reps", type=int)
    parser.add_argument("--which", default="libertem,py4dstem")
    parser.add_argument("--outputs", required=True, help="npz file for the result arrays")
    args = parser.parse_args()
    which = set(args.which.split(","))
    masks = np.load(args.masks)
    adf, rings, center, radii = masks["adf"], masks["rings"], masks["center_px"], masks["adf_radii_px"]
    data = np.load(args.data)
    results: dict = {"nbytes": int(data.nbytes), "shape": list(data.shape), "env_start": environment()}
    outputs: dict = {}

    if "libertem" in which:
        import torch
        from libertem.api import Context
        from libertem.udf.com import CoMUDF
        from libertem.udf.masks import ApplyMasksUDF

        results["torch_threads"] = torch.get_num_threads()
        one = [lambda: adf]
        many = [(lambda m=m: m) for m in rings]
        for label, kind, source in (
            ("libertem-threads-mem", "threads", "memory"),
            ("libertem-dask-npy", "dask", "npy"),
        ):
            ctx = Context.make_with(kind, cpus=2)
            ds = ctx.load("npy", path=args.data) if source == "npy" else ctx.load("memory", data=data, sig_dims=2)
            for task, udf in (
                ("1 mask", lambda: ApplyMasksUDF(mask_factories=one)),
                ("16 masks", lambda: ApplyMasksUDF(mask_factories=many)),
                ("CoM", lambda: CoMUDF.with_params(cy=float(center[0]), cx=float(center[1]))),
            ):
                res, out = timed(lambda: ctx.run_udf(dataset=ds, udf=udf()), args.reps)
                results[f"{label}|{task}"] = res
                key = "raw_com" if task == "CoM" else "intensity"
                outputs[f"{label}|{task}"] = np.asarray(out[key].data)
            ctx.close()
        results["env_after_libertem"] = environment()

    if "py4dstem" in which:
        import py4DSTEM

        dc = py4DSTEM.DataCube(data=data)
        geometry = ((float(center[0]), float(center[1])), (float(radii[0]), float(radii[1])))
        res, out = timed(
            lambda: dc.get_virtual_image(mode="annulus", geometry=geometry, verbose=False, name="adf", returncalc=True),
            max(2, args.reps // 2),
        )
        results["py4dstem|1 mask"] = res
        outputs["py4dstem|1 mask"] = np.asarray(out.data)
        edges = masks["ring_edges_px"]

        def sixteen():
            return [
                np.asarray(
                    dc.get_virtual_image(
                        mode="annulus",
                        geometry=((float(center[0]), float(center[1])), (float(lo), float(hi))),
                        verbose=False,
                        name="ring",
                        returncalc=True,
                    ).data
                )
                for lo, hi in zip(edges[:-1], edges[1:])
            ]

        res, out16 = timed(sixteen, 1)
        results["py4dstem|16 masks"] = res
        outputs["py4dstem|16 masks"] = np.stack(out16, axis=-1)
    np.savez(args.outputs, **outputs)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
