"""stemdask's simulator against abTEM on the same MoS2 case: patterns and time.

Run from the repository root::

    python3 -m venv benchmarks/_venv_abtem
    benchmarks/_venv_abtem/bin/pip install torch==2.13.0   # first: the local CPU wheel
    benchmarks/_venv_abtem/bin/pip install -r benchmarks/requirements-abtem.txt
    python3 benchmarks/bench_simulate_abtem.py [--runs 5] [--write-docs]

abTEM runs in its own venv (a subprocess of this script, data exchanged as
.npz files); stemdask runs here on a 2-worker LocalCluster. Both simulate the
same atoms (stemdask's ``samples.mos2`` converted to ase), on the same grid:
stemdask's window is made equal to the periodic cell abTEM uses (the detector
pixel is λ / cell), potential sampling cell / M with M = 1.5 × detector
pixels, hard aperture, projection and multislice. abTEM's array order
(x, y, kx, ky) is transposed to stemdask's (scan_y, scan_x, k_y, k_x) and its
full patterns are cropped to the detector around the FFT centre.

Reported: Pearson r of every pattern (min and median), the relative
difference of the total intensity per pattern (max and mean), and the wall
time of a warm simulation (median of ``--runs``) for each code, with their
ratio. ``--write-docs`` puts the table in docs/simulate.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from _abtem_worker import run_abtem_worker

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / "benchmarks" / "_venv_abtem" / "bin" / "python"

CASES = [
    # name, slice thickness (None: one slice, the projection approximation), aberrations
    ("projection", None, {}),
    ("multislice, 0.9 Å slices", 0.9, {}),
    (
        "multislice + defocus 40 Å, C12 15 Å at 0.5 rad, C30 5 µm",
        0.9,
        {"defocus": 40.0, "C12": 15.0, "phi12": 0.5, "C30": 5e4},
    ),
]
ENERGY_EV = 80e3
SEMIANGLE_MRAD = 25.0
SCAN_SHAPE = (32, 32)
STEP_A = 0.25
DETECTOR = 64
CELLS = (4, 6)


def _abtem_worker(inp: str, out: str) -> None:
    """Run in the abTEM venv: simulate every case, time warm runs, save patterns."""
    import abtem
    import ase
    import dask

    spec = dict(np.load(inp, allow_pickle=False))
    params = json.loads(str(spec["params"]))
    atoms = ase.Atoms(numbers=spec["numbers"], positions=spec["positions"], cell=spec["cell"], pbc=True)
    results = {}
    for i, case in enumerate(params["cases"]):
        gx, gy = params["window_px"][1], params["window_px"][0]
        thickness = case["slice_thickness_A"] or float(spec["cell"][2])
        potential = abtem.Potential(
            atoms, gpts=(gx, gy), slice_thickness=thickness, projection="infinite", parametrization="lobato"
        )
        probe = abtem.Probe(
            energy=params["energy_ev"],
            semiangle_cutoff=params["semiangle_mrad"],
            soft=False,
            aberrations=dict(case["aberrations"]),
        )
        y0, x0 = params["scan_origin_A"]
        ny, nx = params["scan_shape"]
        step = params["step_A"]
        scan = abtem.GridScan(start=(x0, y0), end=(x0 + nx * step, y0 + ny * step), gpts=(nx, ny), endpoint=False)
        detector = abtem.PixelatedDetector(max_angle="full")

        def run(scheduler="threads"):
            with dask.config.set(scheduler=scheduler, num_workers=2):
                return probe.scan(potential, scan=scan, detectors=detector).compute(progress_bar=False)

        t0 = time.perf_counter()
        measurement = run()
        cold = time.perf_counter() - t0
        warm = []
        for _ in range(params["runs"]):
            t0 = time.perf_counter()
            run()
            warm.append(time.perf_counter() - t0)
        cpu = []
        for _ in range(params["runs"]):
            t0 = time.process_time()
            run("sync")
            cpu.append(time.process_time() - t0)
        results[f"cpu_{i}"] = np.array(cpu)
        array = np.asarray(measurement.array)  # (x, y, kx, ky), fftshifted
        results[f"patterns_{i}"] = array.transpose(1, 0, 3, 2)
        results[f"cold_{i}"] = np.array(cold)
        results[f"warm_{i}"] = np.array(warm)
        results[f"sampling_{i}"] = np.array(potential.sampling)
    results["version"] = np.array(abtem.__version__)
    np.savez(out, **results)


def _crop_centre(full: np.ndarray, n: int) -> np.ndarray:
    """Central n × n of fftshifted patterns, zero frequency at index n // 2."""
    my, mx = full.shape[-2:]
    iy = my // 2 - n // 2
    ix = mx // 2 - n // 2
    return full[..., iy : iy + n, ix : ix + n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="warm runs to time (median)")
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/simulate.md")
    args = parser.parse_args()

    import dask
    from distributed import Client, LocalCluster

    from stemdask.physics import wavelength_A
    from stemdask.simulate import samples, simulate_4dstem

    sample = samples.mos2(CELLS)
    cell_x, cell_y, cell_z = sample.cell_A
    lam = wavelength_A(ENERGY_EV)
    window = (int(1.5 * DETECTOR), int(1.5 * DETECTOR))
    # window = cell: detector pixel λ / cell, potential sampling cell / M
    max_angle = (1e3 * DETECTOR * lam / (2 * cell_y), 1e3 * DETECTOR * lam / (2 * cell_x))
    sampling = (cell_y / window[0], cell_x / window[1])
    origin = ((cell_y - SCAN_SHAPE[0] * STEP_A) / 2, (cell_x - SCAN_SHAPE[1] * STEP_A) / 2)

    abtem_available = VENV_PYTHON.exists()
    abtem_results = None
    if abtem_available:
        params = {
            "energy_ev": ENERGY_EV,
            "semiangle_mrad": SEMIANGLE_MRAD,
            "window_px": window,
            "scan_origin_A": origin,
            "scan_shape": SCAN_SHAPE,
            "step_A": STEP_A,
            "runs": args.runs,
            "cases": [{"name": n, "slice_thickness_A": t, "aberrations": a} for n, t, a in CASES],
        }
        abtem_results = run_abtem_worker(VENV_PYTHON, __file__, sample, params)
    else:
        print(f"abTEM venv not found at {VENV_PYTHON}: timing stemdask only", file=sys.stderr)

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    rows = []
    try:
        for i, (name, thickness, aberrations) in enumerate(CASES):

            def run(scheduler=None):
                data, truth = simulate_4dstem(
                    sample,
                    energy_ev=ENERGY_EV,
                    semiangle_mrad=SEMIANGLE_MRAD,
                    scan_shape=SCAN_SHAPE,
                    scan_step_A=STEP_A,
                    detector_shape=DETECTOR,
                    max_angle_mrad=max_angle,
                    sampling_A=sampling,
                    scan_origin_A=origin,
                    slice_thickness_A=thickness,
                    aberrations=aberrations,
                    chunks=(8, 32),
                )
                if scheduler is None:
                    return data.compute().values, data
                with dask.config.set(scheduler=scheduler, num_workers=2):
                    return data.compute().values, data

            t0 = time.perf_counter()
            ours, data = run()
            cold = time.perf_counter() - t0
            warm = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                run()
                warm.append(time.perf_counter() - t0)
            run("threads")
            threads = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                run("threads")
                threads.append(time.perf_counter() - t0)
            cpu = []
            for _ in range(args.runs):
                t0 = time.process_time()
                run("sync")
                cpu.append(time.process_time() - t0)
            row = {
                "case": name,
                "ours_cold": cold,
                "ours_warm": float(np.median(warm)),
                "ours_threads": float(np.median(threads)),
                "ours_cpu": float(np.median(cpu)),
                "pixel_mrad": data.attrs["detector_pixel_mrad"],
            }
            if abtem_results is not None:
                theirs = _crop_centre(abtem_results[f"patterns_{i}"], DETECTOR)
                a = ours.reshape(-1, DETECTOR * DETECTOR).astype(np.float64)
                b = theirs.reshape(-1, DETECTOR * DETECTOR).astype(np.float64)
                r = np.array([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)])
                total = np.abs(a.sum(1) / b.sum(1) - 1)
                row.update(
                    r_min=float(r.min()),
                    r_median=float(np.median(r)),
                    total_max=float(total.max()),
                    total_mean=float(total.mean()),
                    ours_total=float(a.sum(1).mean()),
                    theirs_total=float(b.sum(1).mean()),
                    theirs_cold=float(abtem_results[f"cold_{i}"]),
                    theirs_warm=float(np.median(abtem_results[f"warm_{i}"])),
                    theirs_cpu=float(np.median(abtem_results[f"cpu_{i}"])),
                    abtem_sampling=abtem_results[f"sampling_{i}"].tolist(),
                )
            rows.append(row)
    finally:
        client.close()
        cluster.close()

    load = os.getloadavg()
    version = str(abtem_results["version"]) if abtem_results is not None else "not installed"
    lines = [
        f"MoS2 monolayer ({CELLS[0]}×{CELLS[1]} orthogonal cells, {cell_y:.2f} × {cell_x:.2f} Å), "
        f"{ENERGY_EV / 1e3:.0f} keV, {SEMIANGLE_MRAD:g} mrad, {SCAN_SHAPE[0]}×{SCAN_SHAPE[1]} positions "
        f"at {STEP_A} Å, {DETECTOR}×{DETECTOR} detector pixels ({rows[0]['pixel_mrad'][0]:.3f} × "
        f"{rows[0]['pixel_mrad'][1]:.3f} mrad), potential sampling {sampling[0]:.4f} × "
        f"{sampling[1]:.4f} Å ({window[0]}×{window[1]} window = the cell). abTEM {version} "
        f"(dask threads, 2 workers) vs stemdask (LocalCluster, 2 workers × 1 thread, and dask "
        f"threads, 2 workers), chunks of 8 × 32 positions, times of simulate_4dstem + compute "
        f"(potentials included); CPU s = process CPU time of one run with dask's synchronous "
        f"scheduler (least sensitive to the other users' load); warm time = "
        f"median of {args.runs} runs after a cold run; load average during the run "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min) on a shared 2-core machine.",
        "",
        "| case | pattern r (min / median) | total intensity diff. (max / mean) | "
        "stemdask LocalCluster warm (cold) s | stemdask threads warm s | abTEM threads warm (cold) s | "
        "time ratio abTEM / stemdask (cluster, threads) | CPU s, one process (stemdask / abTEM) | "
        "CPU ratio abTEM / stemdask |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "r_min" in row:
            lines.append(
                f"| {row['case']} | {row['r_min']:.6f} / {row['r_median']:.6f} | "
                f"{100 * row['total_max']:.3f} % / {100 * row['total_mean']:.3f} % | "
                f"{row['ours_warm']:.2f} ({row['ours_cold']:.2f}) | {row['ours_threads']:.2f} | "
                f"{row['theirs_warm']:.2f} ({row['theirs_cold']:.2f}) | "
                f"{row['theirs_warm'] / row['ours_warm']:.2f}, "
                f"{row['theirs_warm'] / row['ours_threads']:.2f} | "
                f"{row['ours_cpu']:.2f} / {row['theirs_cpu']:.2f} | "
                f"{row['theirs_cpu'] / row['ours_cpu']:.2f} |"
            )
        else:
            lines.append(
                f"| {row['case']} | – | – | {row['ours_warm']:.2f} ({row['ours_cold']:.2f}) | "
                f"{row['ours_threads']:.2f} | – | – | {row['ours_cpu']:.2f} / – | – |"
            )
    table = "\n".join(lines)
    print(table)
    print(json.dumps(rows, indent=1, default=float))
    if args.write_docs:
        doc = ROOT / "docs" / "simulate.md"
        text = doc.read_text()
        start, end = "<!-- bench:start -->", "<!-- bench:end -->"
        head, rest = text.split(start)
        _, tail = rest.split(end)
        doc.write_text(f"{head}{start}\n{table}\n{end}{tail}")
        print(f"wrote {doc}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--abtem-worker":
        _abtem_worker(sys.argv[2], sys.argv[3])
    else:
        main()
