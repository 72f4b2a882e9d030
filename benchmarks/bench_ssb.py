"""SSB ptychography: stemdask against ptychography40 (LiberTEM) and py4DSTEM on the same simulated MoS2.

Run from the repository root (peers in their own venv, see bench_imaging.py)::

    python3 benchmarks/bench_ssb.py [--reps 5] [--write-docs] [--sizes 256:32,1024:18]

The data: a MoS2 monolayer simulated by stemdask (projection approximation,
80 keV, 25 mrad, no noise) on a 128 × 128 scan at 0.25 Å whose edges are
real (not a whole number of cells), 32 × 32 detector pixels over ±1.25 α.
Every code gets the same array (peers through a .npy file, in a subprocess
with a clean environment). Reported: the time of the first reconstruction
(stemdask: ``SSB(data)`` + ``reconstruct``; ptychography40: its trotter
masks + the UDF; py4DSTEM: preprocess + reconstruct), the time of a
refocus (stemdask: ``reconstruct(defocus_A=...)`` on the persisted G;
py4DSTEM: another ``reconstruct``; ptychography40 has none), and Pearson r
of the phase with the true phase low-passed to 2α, over the whole scan and
over its interior (8 positions from each edge). Medians of ``--reps`` warm
runs after a cold one, with the load average. ``--sizes`` adds refocus
latencies on random data of ``scan² × pixels²`` (only the shapes matter).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _timing import timed  # benchmarks/ is on sys.path when run as a script

import stemdask
from stemdask.physics import wavelength_A
from stemdask.ptycho import SSB
from stemdask.simulate import samples, simulate_4dstem

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work"
# the shared peers venv: this tree's, else the main checkout's (git-ignored, one copy for all worktrees)
_PEER_CANDIDATES = (HERE / "_venv_peers" / "bin" / "python", Path("/work/main/benchmarks/_venv_peers/bin/python"))
PEER_PY = next((p for p in _PEER_CANDIDATES if p.exists()), _PEER_CANDIDATES[0])
ENERGY_EV = 80e3
ALPHA = 25.0
SCAN = 128
STEP = 0.25
DETECTOR = 32
MAX_ANGLE = 1.25 * ALPHA
DEFOCUS_A = 40.0


def simulate() -> tuple[np.ndarray, np.ndarray, dict]:
    """The MoS2 patterns (scan_y, scan_x, k_y, k_x) float32, the true phase at the probe positions, parameters."""
    cache = WORK / "ssb_mos2.npz"
    if cache.exists():
        f = np.load(cache)
        return f["data"], f["truth"], json.loads(str(f["params"]))
    data, truth = simulate_4dstem(
        samples.mos2((7, 12)),
        energy_ev=ENERGY_EV,
        semiangle_mrad=ALPHA,
        scan_shape=(SCAN, SCAN),
        scan_step_A=STEP,
        detector_shape=DETECTOR,
        max_angle_mrad=MAX_ANGLE,
        sampling_A=0.1,
    )
    arr = data.values.astype(np.float32)
    # the true phase, low-passed to 2α on the (periodic) field and interpolated at the probe positions
    from scipy.ndimage import map_coordinates

    phase = np.angle(truth["transmission"].values.prod(axis=0))
    dy = float(truth.y[1] - truth.y[0])
    dx = float(truth.x[1] - truth.x[0])
    qy = np.fft.fftfreq(phase.shape[0], dy)[:, None]
    qx = np.fft.fftfreq(phase.shape[1], dx)[None, :]
    spec = np.fft.fft2(phase)
    spec[np.hypot(qy, qx) > 2 * ALPHA * 1e-3 / wavelength_A(ENERGY_EV)] = 0
    band = np.fft.ifft2(spec).real
    py = (truth["probe_position_y"].values - float(truth.y[0])) / dy
    px = (truth["probe_position_x"].values - float(truth.x[0])) / dx
    gy, gx = np.meshgrid(py, px, indexing="ij")
    true = map_coordinates(band, [gy, gx], order=3, mode="wrap")
    params = {
        "energy_ev": ENERGY_EV,
        "semiangle_mrad": ALPHA,
        "step_A": [STEP, STEP],
        "pixel_mrad": float(data.attrs["detector_pixel_mrad"][0]),
        "center_px": [float(c) for c in data.attrs["beam_center_px"]],
    }
    WORK.mkdir(exist_ok=True)
    np.savez(cache, data=arr, truth=true, params=json.dumps(params))
    return arr, true, params


def correlations(phase: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    inner = (slice(8, -8), slice(8, -8))
    return {
        "r": float(np.corrcoef(phase.ravel(), truth.ravel())[0, 1]),
        "r_interior": float(np.corrcoef(phase[inner].ravel(), truth[inner].ravel())[0, 1]),
    }


def as_dataset(arr: np.ndarray, params: dict) -> Any:
    return stemdask.from_array(
        arr,
        energy_ev=params["energy_ev"],
        semiangle_mrad=params["semiangle_mrad"],
        scan_step_A=params["step_A"],
        detector_pixel_mrad=params["pixel_mrad"],
        beam_center_px=params["center_px"],
    )


def refocus_latency(n: int, pixels: int, reps: int) -> dict:
    """Refocus time on random data of n² positions × pixels² (the cost depends on the shapes only)."""
    import dask.array as da

    rows = max(1, (64 * 2**20) // (pixels * pixels * 4 * n))
    arr = da.random.default_rng(0).random((n, n, pixels, pixels), dtype=np.float32, chunks=(rows, n, pixels, pixels))
    data = stemdask.from_array(
        arr,
        energy_ev=ENERGY_EV,
        semiangle_mrad=ALPHA,
        scan_step_A=STEP,
        detector_pixel_mrad=2 * MAX_ANGLE / pixels,
    )
    t0 = time.perf_counter()
    ssb = SSB(data)
    build = time.perf_counter() - t0
    res, _ = timed(lambda: ssb.reconstruct(defocus_A=DEFOCUS_A), reps)
    return {
        "build_s": build,
        "refocus": res,
        "G_kept_MiB": ssb.nbytes / 2**20,
        "G_full_MiB": ssb.full_nbytes / 2**20,
        "pairs": ssb.n_pairs,
        "bright_field_pixels": ssb.n_pixels,
        "chunks": len(ssb._pairs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--sizes", default="256:32", help="extra refocus latencies, scan:pixels[,scan:pixels]")
    args = parser.parse_args()
    arr, truth, params = simulate()
    results: dict = {"load_before": os.getloadavg()}
    WORK.mkdir(exist_ok=True)
    npy, params_path, peers_out = WORK / "ssb_mos2.npy", WORK / "ssb_params.json", WORK / "ssb_peers.npz"
    np.save(npy, arr)
    params_path.write_text(json.dumps(params))

    if not args.skip_peers:  # first, before any cluster: a clean environment (see ../shared/BENCHMARKS.md)
        env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
        env.update(OPENBLAS_NUM_THREADS="1", PYTHONPATH="")
        proc = subprocess.run(
            [str(PEER_PY), str(HERE / "_peers_ssb.py"), str(npy), str(params_path), str(peers_out), str(args.reps)],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            sys.exit("peer run failed:\n" + proc.stderr[-4000:])
        results.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        for name, phase in np.load(peers_out).items():
            results[f"{name}|quality"] = correlations(phase, truth)

    data = as_dataset(arr, params)

    def first_reconstruction() -> SSB:
        ssb = SSB(data)
        ssb.reconstruct(defocus_A=0.0)
        return ssb

    first, ssb = timed(first_reconstruction, args.reps)
    results["stemdask|first reconstruction"] = first
    results["stemdask|refocus"] = timed(lambda: ssb.reconstruct(defocus_A=DEFOCUS_A), max(args.reps, 10))[0]
    results["stemdask|quality"] = correlations(ssb.reconstruct(defocus_A=0.0)["phase"].values, truth)
    t0 = time.perf_counter()
    fit = ssb.fit_aberrations()
    results["stemdask|fit_aberrations"] = {"s": time.perf_counter() - t0, **fit}
    results["stemdask|G"] = {"kept_MiB": ssb.nbytes / 2**20, "full_MiB": ssb.full_nbytes / 2**20}
    for item in filter(None, args.sizes.split(",")):
        n, pixels = (int(v) for v in item.split(":"))
        print(f"refocus latency at {n}² × {pixels}² ...", flush=True)
        results[f"stemdask|latency {n}x{pixels}"] = refocus_latency(n, pixels, args.reps)
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    if args.write_docs:
        write_docs(results, args)


def _median(results: dict, key: str) -> float:
    return float(results[key]["median_s"]) if key in results else float("nan")


def write_docs(results: dict, args: argparse.Namespace) -> None:
    p40 = _median(results, "ptychography40|first reconstruction")
    rows = []
    for name in ("stemdask", "ptychography40", "py4DSTEM"):
        first = _median(results, f"{name}|first reconstruction")
        refocus = _median(results, f"{name}|refocus")
        q = results.get(f"{name}|quality", {})
        rows.append(
            f"| {name} | {first:.3f} | {first / p40:.2f} | "
            + (f"{refocus:.4f}" if refocus == refocus else "—")
            + f" | {q.get('r', float('nan')):.4f} | {q.get('r_interior', float('nan')):.4f} |"
        )
    lat = []
    for key, value in results.items():
        if key.startswith("stemdask|latency"):
            lat.append(
                f"| {key.split()[-1]} | {value['refocus']['median_s']:.4f} | {value['build_s']:.1f} | "
                f"{value['G_full_MiB']:.0f} | {value['G_kept_MiB']:.0f} | {value['chunks']} |"
            )
    fit = results["stemdask|fit_aberrations"]
    table = "\n".join(
        [
            "| code | first reconstruction (s) | ÷ ptychography40 | refocus (s) | r (all) | r (interior) |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "| refocus at | median (s) | build (s) | full G (MiB) | kept G (MiB) | detector chunks |",
            "|---|---|---|---|---|---|",
            f"| 128x32 (the MoS2 case) | {_median(results, 'stemdask|refocus'):.4f} | — | "
            f"{results['stemdask|G']['full_MiB']:.0f} | {results['stemdask|G']['kept_MiB']:.0f} | — |",
            *lat,
            "",
            f"fit_aberrations on the in-focus data: defocus {fit['defocus']:.1f} Å, C12 {fit['C12']:.1f} Å "
            f"in {fit['s']:.1f} s. Load average before/after: {results['load_before']} / {results['load_after']}; "
            f"medians of {args.reps} warm runs (refocus: {max(args.reps, 10)}).",
        ]
    )
    doc = ROOT / "docs" / "ssb.md"
    text = doc.read_text()
    start, end = "<!-- bench_ssb:start -->", "<!-- bench_ssb:end -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    doc.write_text(f"{head}{start}\n{table}\n{end}{tail}")


if __name__ == "__main__":
    main()
