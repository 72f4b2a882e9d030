"""iCoM on a scan with real edges: stemdask's methods against py4DSTEM's padded DPC on an abTEM simulation.

Run from the repository root (abTEM and py4DSTEM in their own venvs, see bench_simulate_abtem.py
and bench_imaging.py)::

    python3 benchmarks/bench_icom_abtem.py [--write-docs]

The data: a MoS2 monolayer (stemdask's ``samples.mos2``, 4 × 7 orthogonal cells, 22.1 × 21.9 Å,
periodic) simulated by abTEM in the projection approximation (one slice, Lobato potential sampled
at 0.08 Å: coarse but band-limited far beyond the detector), 300 keV, 20 mrad hard aperture, no
aberrations, no noise, on a 48 × 48 scan at 0.3 Å: a 14.4 Å window inside the cell, so the scan
is *not* periodic (its edges are real). The detector keeps ±60 mrad (3α, 0.890 × 0.899 mrad pixels, kx × ky). The
patterns are cached in ``benchmarks/_work/icom_abtem_mos2.npz``.

References, both evaluated exactly at the probe positions by the Fourier series of the periodic
cell:

* the ideal iCoM image: for a thin phase object ``exp(iφ)`` the CoM of the whole pattern is
  ``λ/2π (|P|² ⋆ ∇φ)(R)`` (Ehrenfest), so integrating the exact CoM gives ``|P|² ⋆ φ`` — the
  phase ``φ = σ V_proj`` of abTEM's projected potential (band-limited to abTEM's anti-aliasing
  cut-off, 2/3 of Nyquist) convolved with the probe intensity ``|P|²`` of the same aperture;
* the projected potential low-passed to 2α (``|q| ≤ 2α/λ``).

Compared (same CoM field for stemdask's three methods: ``center_of_mass`` of the patterns, no
descan correction, no rotation): ``imaging.icom`` with ``method="neumann"`` (the default),
``"fourier"`` and ``"iterative"``, no filters; py4DSTEM 0.14.18's ``DPC`` with its default
``padding_factor=2`` on the same patterns, computing its own CoM (``fit_function="plane"``, its
default descan fit; rotation forced to 0, no transpose), 64 iterations, run in the peers venv in
a subprocess without ``MALLOC_TRIM_THRESHOLD_``. Reported: Pearson r of each phase with both
references over the whole scan.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _abtem_worker import run_abtem_worker

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work"
CACHE = WORK / "icom_abtem_mos2.npz"
_ABTEM = (HERE / "_venv_abtem" / "bin" / "python", Path("/work/main/benchmarks/_venv_abtem/bin/python"))
_PEERS = (HERE / "_venv_peers" / "bin" / "python", Path("/work/main/benchmarks/_venv_peers/bin/python"))
ABTEM_PY = next((p for p in _ABTEM if p.exists()), _ABTEM[0])
PEER_PY = next((p for p in _PEERS if p.exists()), _PEERS[0])
ENERGY_EV = 300e3
ALPHA_MRAD = 20.0
SCAN = 48
STEP_A = 0.3
MAX_ANGLE_MRAD = 60.0
SAMPLING_A = 0.08
CELLS = (4, 7)
#: Wiener regularisations of icom(deconvolve_probe=...) in the table
DECONVOLVE = (0.01, 0.1)
#: electrons per pattern of the noisy rows
DOSE = 1e4


def _fourier_eval(field: np.ndarray, sampling: tuple[float, float], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The periodic field ``(x, y)`` (its trigonometric interpolant) at the points ``xs × ys``: ``(y, x)``."""
    nx, ny = field.shape
    coef = np.fft.fft2(field) / field.size
    ex = np.exp(2j * np.pi * np.outer(xs, np.fft.fftfreq(nx, sampling[0])))
    ey = np.exp(2j * np.pi * np.outer(ys, np.fft.fftfreq(ny, sampling[1])))
    return (ex @ coef @ ey.T).real.T


def _abtem_worker(inp: str, out: str) -> None:
    """In the abTEM venv: the patterns (abTEM order (x, y, kx, ky)), the projected potential, the references."""
    import abtem
    import ase
    import dask
    from abtem.core.energy import energy2sigma, energy2wavelength

    spec = dict(np.load(inp, allow_pickle=False))
    p = json.loads(str(spec["params"]))
    atoms = ase.Atoms(numbers=spec["numbers"], positions=spec["positions"], cell=spec["cell"], pbc=True)
    potential = abtem.Potential(
        atoms,
        sampling=p["sampling_A"],
        slice_thickness=float(spec["cell"][2]),
        projection="infinite",
        parametrization="lobato",
    )
    probe = abtem.Probe(energy=p["energy_ev"], semiangle_cutoff=p["alpha_mrad"], soft=False)
    x0, y0 = p["origin_A"]
    n, step = p["scan"], p["step_A"]
    scan = abtem.GridScan(start=(x0, y0), end=(x0 + n * step, y0 + n * step), gpts=(n, n), endpoint=False)
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        m = probe.scan(potential, scan=scan, detectors=abtem.PixelatedDetector(max_angle=p["max_angle_mrad"]))
        m = m.compute(progress_bar=False)
    seconds = time.perf_counter() - t0
    lam = energy2wavelength(p["energy_ev"])
    v = np.asarray(potential.build().project().compute().array, dtype=np.float64)  # (x, y), eV Å
    sampling = tuple(float(s) for s in potential.sampling)
    qx = np.fft.fftfreq(v.shape[0], sampling[0])[:, None]
    qy = np.fft.fftfreq(v.shape[1], sampling[1])[None, :]
    q = np.hypot(qx, qy)
    # abTEM band-limits the transmission function to 2/3 of Nyquist (anti-aliasing)
    q_aa = 2 / 3 * min(1 / (2 * sampling[0]), 1 / (2 * sampling[1]))
    phase = np.fft.ifft2(np.fft.fft2(energy2sigma(p["energy_ev"]) * v) * (q <= q_aa)).real
    aperture = (q * lam * 1e3 <= p["alpha_mrad"]).astype(np.float64)
    intensity = np.abs(np.fft.ifft2(aperture)) ** 2  # the probe at the origin (χ = 0: real, symmetric)
    ideal = np.fft.ifft2(np.fft.fft2(phase) * np.fft.fft2(intensity / intensity.sum())).real
    low2a = np.fft.ifft2(np.fft.fft2(v) * (q * lam * 1e3 <= 2 * p["alpha_mrad"])).real
    xs = x0 + step * np.arange(n)
    ys = y0 + step * np.arange(n)
    arr = np.asarray(m.array, dtype=np.float32)
    np.savez(
        out,
        patterns_xy=arr,
        pixel_mrad=np.array([float(s) * lam * 1e3 for s in m.sampling[-2:]]),  # (kx, ky)
        center_px=np.array([arr.shape[-2] // 2, arr.shape[-1] // 2], dtype=np.float64),  # (kx, ky)
        ideal=_fourier_eval(ideal, sampling, xs, ys),
        low2a=_fourier_eval(low2a, sampling, xs, ys),
        potential_sampling_A=np.array(sampling),
        seconds=np.array(seconds),
        version=np.array(abtem.__version__),
    )


def simulate() -> dict:
    """The cached abTEM simulation (run once)."""
    if CACHE.exists():
        return dict(np.load(CACHE))
    from stemdask.simulate import samples

    sample = samples.mos2(CELLS)
    cell_x, cell_y, _ = sample.cell_A
    origin = ((cell_x - SCAN * STEP_A) / 2, (cell_y - SCAN * STEP_A) / 2)
    params = {
        "energy_ev": ENERGY_EV,
        "alpha_mrad": ALPHA_MRAD,
        "scan": SCAN,
        "step_A": STEP_A,
        "max_angle_mrad": MAX_ANGLE_MRAD,
        "sampling_A": SAMPLING_A,
        "origin_A": origin,
    }
    WORK.mkdir(exist_ok=True)
    result = run_abtem_worker(ABTEM_PY, __file__, sample, params)
    result["cell_A"] = np.array(sample.cell_A)
    np.savez(CACHE, **result)
    return result


def _py4dstem_worker(inp: str, out: str) -> None:
    """In the peers venv: py4DSTEM's DPC (padding 2) on the patterns in its (Rx, Ry, Qx, Qy) order."""
    import warnings

    import py4DSTEM

    warnings.filterwarnings("ignore")
    f = np.load(inp)
    dc = py4DSTEM.DataCube(data=f["patterns_xy"])
    dc.calibration.set_R_pixel_size(float(f["step_A"]))
    dc.calibration.set_R_pixel_units("A")
    dc.calibration.set_Q_pixel_size(float(f["pixel_mrad"][0]))
    dc.calibration.set_Q_pixel_units("mrad")
    dpc = py4DSTEM.process.phase.DPC(datacube=dc, energy=float(f["energy_ev"]), device="cpu", verbose=False)
    t0 = time.perf_counter()
    dpc.preprocess(
        padding_factor=2,
        force_com_rotation=0.0,
        force_com_transpose=False,
        plot_center_of_mass=False,
        plot_rotation=False,
    )
    dpc.reconstruct(max_iter=64, progress_bar=False)
    seconds = time.perf_counter() - t0
    np.savez(out, phase=np.asarray(dpc.object_phase).T, seconds=np.array(seconds))  # (Ry, Rx) = (y, x)


def run_py4dstem(sim: dict, patterns_xy: np.ndarray) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(inp, patterns_xy=patterns_xy, pixel_mrad=sim["pixel_mrad"], step_A=STEP_A, energy_ev=ENERGY_EV)
        env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_TRIM_THRESHOLD_", "PYTHONPATH")}
        proc = subprocess.run(
            [str(PEER_PY), __file__, "--py4dstem-worker", inp, out], env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            raise SystemExit("py4DSTEM worker failed")
        return dict(np.load(out))


def run_stemdask(sim: dict, patterns_xy: np.ndarray) -> dict[str, np.ndarray]:
    """stemdask's iCoM methods, and the default one with the probe deconvolved (``DECONVOLVE`` eps values)."""
    import stemdask

    patterns = np.ascontiguousarray(patterns_xy.transpose(1, 0, 3, 2))  # (y, x, ky, kx)
    px_x, px_y = (float(v) for v in sim["pixel_mrad"])
    cx, cy = (float(v) for v in sim["center_px"])
    data = stemdask.from_array(
        patterns,
        energy_ev=ENERGY_EV,
        semiangle_mrad=ALPHA_MRAD,
        scan_step_A=STEP_A,
        detector_pixel_mrad=(px_y, px_x),
        beam_center_px=(cy, cx),
    )
    com = data.stem.center_of_mass().compute()
    out = {}
    for method in ("neumann", "fourier", "iterative"):
        t0 = time.perf_counter()
        out[method] = np.asarray(stemdask.imaging.icom(com, method=method).values)
        out[f"{method}_seconds"] = np.array(time.perf_counter() - t0)
    for eps in DECONVOLVE:
        t0 = time.perf_counter()
        out[f"deconvolve {eps:g}"] = np.asarray(stemdask.imaging.icom(com, deconvolve_probe=eps).values)
        out[f"deconvolve {eps:g}_seconds"] = np.array(time.perf_counter() - t0)
    return out


def noisy(sim: dict, dose: float, seed: int = 0) -> np.ndarray:
    """Poisson counts at ``dose`` electrons per pattern (on average), seeded."""
    p = sim["patterns_xy"].astype(np.float64)
    lam = p * (dose / p.sum(axis=(-2, -1)).mean())
    return np.random.default_rng(seed).poisson(lam).astype(np.float32)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/imaging.md")
    args = parser.parse_args()
    t0 = time.perf_counter()
    cached = CACHE.exists()
    sim = simulate()
    sim_seconds = float(sim["seconds"])
    rows = []
    for label, patterns in (("", sim["patterns_xy"]), (f", {DOSE:.0e} e/pattern", noisy(sim, DOSE))):
        ours = run_stemdask(sim, patterns)
        peer = run_py4dstem(sim, patterns)
        methods = ("neumann", "fourier", "iterative") if not label else ("neumann",)
        rows += [(f"stemdask icom(method={m!r}){label}", ours[m], float(ours[f"{m}_seconds"])) for m in methods]
        rows += [
            (
                f"stemdask icom(deconvolve_probe={eps:g}){label}",
                ours[f"deconvolve {eps:g}"],
                float(ours[f"deconvolve {eps:g}_seconds"]),
            )
            for eps in DECONVOLVE
        ]
        rows.append((f"py4DSTEM 0.14.18 DPC (padding 2, own CoM){label}", peer["phase"], float(peer["seconds"])))
    load = os.getloadavg()
    table = [
        "| method | r vs ideal iCoM | r vs V low-passed to 2α | std (rad) | time (s) |",
        "|---|---|---|---|---|",
    ]
    for name, phase, seconds in rows:
        table.append(
            f"| {name} | {pearson(phase, sim['ideal']):.4f} | {pearson(phase, sim['low2a']):.4f} | "
            f"{phase.std():.3f} | {seconds:.3f} |"
        )
    table.append(f"| (ideal iCoM vs V low-passed to 2α) | 1 | {pearson(sim['ideal'], sim['low2a']):.4f} | | |")
    text = "\n".join(table)
    print(text)
    sampling = sim["potential_sampling_A"]
    summary = (
        f"abTEM {sim['version']} simulation {'(cached) ' if cached else ''}{sim_seconds:.1f} s, potential sampling "
        f"{sampling[0]:.4f} × {sampling[1]:.4f} Å; detector {sim['patterns_xy'].shape[-1]}² pixels of "
        f"{sim['pixel_mrad'][0]:.3f} mrad; total {time.perf_counter() - t0:.1f} s; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(summary)
    if args.write_docs:
        write_docs(text, summary)


def write_docs(table: str, summary: str) -> None:
    doc = ROOT / "docs" / "imaging.md"
    start, end = "<!-- bench_icom_abtem:start -->", "<!-- bench_icom_abtem:end -->"
    block = (
        f"{start}\n"
        "Measured by `python3 benchmarks/bench_icom_abtem.py --write-docs` (abTEM MoS2, 300 keV, 20 mrad, "
        "48 × 48 positions at 0.3 Å inside a 22 × 22 Å periodic cell, so the scan edges are real; see the "
        "script's docstring for the references and the set-up):\n\n"
        f"{table}\n\n{summary}.\n{end}"
    )
    text = doc.read_text()
    if start in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:  # at the end of the iCoM section
        head, rest = text.split("\n## Validation", 1)
        text = head.rstrip("\n") + "\n\n" + block + "\n\n## Validation" + rest
    doc.write_text(text)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--abtem-worker":
        _abtem_worker(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "--py4dstem-worker":
        _py4dstem_worker(sys.argv[2], sys.argv[3])
    else:
        main()
