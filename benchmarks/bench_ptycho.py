"""Iterative ptychography: seconds per iteration against py4DSTEM on the same data, same run, same cores.

    PYTHONPATH=$PWD python benchmarks/bench_ptycho.py [--scan 32] [--detector 128] [--iterations 6]

Simulates MoS2 (stemdask.simulate, 80 kV, 25 mrad, noiseless), then runs

* stemdask.ptycho.reconstruct in this process (torch, one thread; amplitude
  loss, fixed-step gradient descent with the "auto" first step, full batch,
  known probe): the median step time;
* the same on LocalClusters of 1 and of 2 single-threaded worker processes
  (``--memory-limit`` each, 3 GiB by default), both up and taking turns
  ``--reps`` times, the data written to a zarr store and read there by the
  workers (the shards on the workers; the per-step overhead is the step's
  wall time less the busiest worker's compute; the bytes sent and received
  per step; worker restarts counted; the 1 -> 2 scaling of the median step
  time and of the CPU-time critical path);
* py4DSTEM 0.14.18 SingleslicePtychography (gradient descent, fixed probe, no
  filters) in ``benchmarks/_venv_peers`` as a subprocess with a clean
  environment (one BLAS/OpenMP thread, no MALLOC_TRIM_THRESHOLD_).

Both objects are compared with the simulator's truth after the same number
of iterations (phase correlation after sub-pixel registration; py4DSTEM's
object is resampled to stemdask's finer object grid first). Prints JSON.
"""

from __future__ import annotations

import _clean_env

if __name__ == "__main__":  # not in a worker process that re-imports this module as __mp_main__
    _clean_env.start_clean()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy.ndimage  # noqa: E402
import xarray as xr  # noqa: E402

from stemdask.ptycho import reconstruct  # noqa: E402
from stemdask.ptycho.compare import phase_correlation  # noqa: E402
from stemdask.simulate import samples, simulate_4dstem  # noqa: E402

HERE = Path(__file__).resolve().parent
PEER_PY = HERE / "_venv_peers" / "bin" / "python"


def truth_phase(truth: xr.Dataset) -> xr.DataArray:
    return xr.DataArray(
        np.angle(truth.transmission.values).sum(0), coords={"y": truth.y.values, "x": truth.x.values}, dims=("y", "x")
    )


#: stemdask's settings: amplitude loss, fixed-step gradient descent (the first step changes the object by 2 %)
SETTINGS = {"loss": "amplitude", "optimizer": "gd", "step": "auto"}


def ours(data, truth, iterations, client=None):
    res = reconstruct(data, iterations=iterations, client=client, **SETTINGS)
    region = (
        float(res.position_y.min()),
        float(res.position_y.max()),
        float(res.position_x.min()),
        float(res.position_x.max()),
    )
    r = phase_correlation(res.phase_total, truth_phase(truth), region_A=region)["r"]
    return {
        "seconds_per_iteration": res.attrs["step_seconds_median"],
        "compute_seconds": res.attrs["compute_seconds_median"],
        "overhead_seconds": res.attrs["overhead_seconds_median"],
        "phase_correlation": r,
        "n_shards": res.attrs["n_shards"],
        "sent_bytes_per_step": res.attrs["sent_bytes_per_step_median"],
        "received_bytes_per_step": res.attrs["received_bytes_per_step_median"],
        "data_bytes": res.attrs["data_bytes"],
        "compute_cpu_seconds": res.attrs.get("compute_cpu_seconds_median"),
    }


def on_clusters(path, chunks, truth, iterations, memory_limit, reps):
    """``ours`` on LocalClusters of 1 and of 2 single-threaded worker processes, alternately ``reps`` times.

    Both clusters stay up and take turns, so a load that changes during the
    run hits both alike; reported are the medians over the repetitions of
    the step time and of the CPU-time critical path (the busiest worker's
    CPU seconds in its shard steps plus the step's overhead), which other
    processes taking the cores do not lengthen.
    """
    from contextlib import ExitStack

    from distributed import Client, LocalCluster

    import stemdask

    data = stemdask.open_dataset(path, chunks=chunks)
    out = {}
    with ExitStack() as stack:
        clients = {}
        for workers in (1, 2):
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    memory_limit=memory_limit,
                    dashboard_address=None,
                )
            )
            clients[workers] = stack.enter_context(Client(cluster))
        pids = {w: set(c.run(os.getpid).values()) for w, c in clients.items()}
        runs = {1: [], 2: []}
        for _ in range(reps):
            for workers, client in clients.items():
                runs[workers].append(ours(data, truth, iterations, client))
        for workers, client in clients.items():
            after = client.run(lambda: (os.getpid(), __import__("psutil").Process().memory_info().rss))
            last = dict(runs[workers][-1])
            last["seconds_per_iteration"] = float(np.median([r["seconds_per_iteration"] for r in runs[workers]]))
            last["seconds_per_iteration_each_repetition"] = [r["seconds_per_iteration"] for r in runs[workers]]
            last["cpu_critical_path_seconds"] = float(
                np.median([r["compute_cpu_seconds"] + r["overhead_seconds"] for r in runs[workers]])
            )
            last["workers"] = workers
            last["memory_limit"] = memory_limit
            last["worker_rss_bytes_end"] = sorted(r for _, r in after.values())
            last["workers_restarted"] = len(pids[workers] - {p for p, _ in after.values()})
            out[workers] = last
    return out


def peer(data, truth, iterations, params, sampling_A, scan_extent_A, python):
    with tempfile.TemporaryDirectory() as tmp:
        npy, js, out = (str(Path(tmp) / n) for n in ("data.npy", "params.json", "phase.npy"))
        np.save(npy, np.asarray(data.values))
        Path(js).write_text(json.dumps({**params, "iterations": iterations}))
        env = _clean_env.peer_env()
        proc = subprocess.run(
            [python, str(HERE / "_peers_ptycho.py"), npy, js, out], capture_output=True, text=True, env=env
        )
        if proc.returncode != 0:
            sys.exit("py4DSTEM run failed:\n" + proc.stderr[-4000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        phase = np.load(out)
    # resample py4DSTEM's object (its pixel is λ / (N Δk)) onto stemdask's grid, compare its centre
    zoom = result["sampling_A"][0] / sampling_A[0]
    fine = scipy.ndimage.zoom(phase, zoom, order=3)
    y = np.arange(fine.shape[0]) * sampling_A[0]
    x = np.arange(fine.shape[1]) * sampling_A[1]
    da = xr.DataArray(fine, coords={"y": y, "x": x}, dims=("y", "x"))
    cy, cx = y[-1] / 2, x[-1] / 2
    half = (scan_extent_A[0] / 2, scan_extent_A[1] / 2)
    region = (cy - half[0], cy + half[0], cx - half[1], cx + half[1])
    result["phase_correlation"] = phase_correlation(da, truth_phase(truth), region_A=region)["r"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scan", type=int, default=32)
    ap.add_argument("--detector", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--skip-cluster", action="store_true")
    ap.add_argument("--peer-python", default=str(PEER_PY), help="python of the peers' venv")
    ap.add_argument("--memory-limit", default="3GiB", help="memory limit of each cluster worker")
    ap.add_argument("--reps", type=int, default=3, help="alternate runs on the 1- and 2-worker clusters")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    step = 0.4
    params = {"energy_ev": 80e3, "semiangle_mrad": 25.0, "scan_step_A": step}
    cells = (int(np.ceil((args.scan * step + 6) / 5.47)), int(np.ceil((args.scan * step + 6) / 3.16)))
    data, truth = simulate_4dstem(
        samples.mos2(cells),
        energy_ev=params["energy_ev"],
        semiangle_mrad=params["semiangle_mrad"],
        scan_shape=(args.scan, args.scan),
        scan_step_A=step,
        detector_shape=args.detector,
        max_angle_mrad=60.0,
        chunks=(args.scan // 2, args.scan),
    )
    data = data.persist(scheduler="threads")
    params["detector_pixel_mrad"] = float(data.attrs["detector_pixel_mrad"][0])
    n = args.scan * args.scan
    out: dict = {
        "positions": n,
        "detector_px": args.detector,
        "iterations": args.iterations,
        "settings": SETTINGS,
        "load_average": os.getloadavg(),
    }
    out["stemdask"] = ours(data, truth, args.iterations)
    if not args.skip_cluster:
        import stemdask

        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "data.zarr")
            stemdask.save(data, path, chunks=(args.scan // 2, args.scan))
            both = on_clusters(
                path, (args.scan // 2, args.scan, -1, -1), truth, args.iterations, args.memory_limit, args.reps
            )
        for workers, result in both.items():
            out[f"stemdask_{workers}_workers"] = result
        out["scaling_1_to_2_workers"] = both[1]["seconds_per_iteration"] / both[2]["seconds_per_iteration"]
        out["scaling_1_to_2_workers_cpu_critical_path"] = (
            both[1]["cpu_critical_path_seconds"] / both[2]["cpu_critical_path_seconds"]
        )
    if not args.skip_peers:
        sampling = tuple(truth.attrs["potential_sampling_A"])
        out["py4dstem"] = peer(
            data, truth, args.iterations, params, sampling, ((args.scan - 1) * step,) * 2, args.peer_python
        )
        out["ratio_stemdask_over_py4dstem"] = (
            out["stemdask"]["seconds_per_iteration"] / out["py4dstem"]["seconds_per_iteration"]
        )
        # CPU seconds (one thread each): not lengthened by other processes taking the cores
        out["ratio_stemdask_over_py4dstem_cpu"] = (
            out["stemdask"]["compute_cpu_seconds"] / out["py4dstem"]["cpu_seconds_per_iteration"]
        )
    for key in [k for k in out if k.startswith("stemdask") and isinstance(out[k], dict)]:
        out[key]["seconds_per_iteration_per_1000_positions"] = out[key]["seconds_per_iteration"] * 1000 / n
    out["load_average_end"] = os.getloadavg()
    out["leaked_env_not_passed_to_peer"] = _clean_env.leaked()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
