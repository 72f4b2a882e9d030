"""Inverse crime check: single-slice reconstruction of abTEM-simulated MoS2 against stemdask-simulated MoS2.

Run from the repository root (abTEM in its own venv, see ``bench_simulate_abtem.py``)::

    PYTHONPATH=$PWD python benchmarks/ptycho_abtem.py [--doses inf 2e4] [--epochs 40]
        [--configs poisson "holdout=0.1,epochs=80" "holdout=0.1,epochs=80,refit=1"] [--cache abtem.npz]

The same experiment is simulated twice: by abTEM 1.0.11 (a subprocess in the
abTEM venv, data exchanged as .npz) and by stemdask's simulator, on the same
grid (the set-up of ``bench_simulate_abtem.py``: stemdask's window equals
abTEM's periodic cell, detector pixel λ / cell, potential sampling cell / 96):
MoS2 4 × 7 cells (21.9 × 22.1 Å: a nearly square grid, so stemdask's
band limit, 2/3 of each axis's Nyquist, and abTEM's circular one are the same
disc), 80 kV, 25 mrad hard aperture, no aberrations, 20 × 20 positions at
0.5 Å centred on the cell, 64-pixel detector (61.0 × 60.4 mrad), in the
projection approximation and with 0.9 Å slices. Poisson noise (``--doses``) is drawn here, with one seed, for both.
Each dataset is reconstructed by the same single-slice call (known probe,
Adam lr 0.05, full batch, amplitude loss noiseless / Poisson with counts) and
scored against both truths: abTEM's projected potential (band-limited to the
object grid's 2/3-Nyquist disc) and stemdask's summed transmission phase, by
``stemdask.ptycho.compare.phase_correlation`` on the scanned region.

``--configs`` runs other reconstructions of the noisy data (each a comma
list of ``key=value``; noiseless data always get the amplitude loss):
``loss`` (default ``poisson``), ``epochs`` (default ``--epochs``),
``holdout`` (``holdout_fraction``: that fraction of positions, seeded, is
left out of the gradient and the epoch of least held-out loss is returned),
``refit=1`` (then rerun on every position for that many epochs: the held-out
criterion picks the epoch count only), ``object`` (``complex`` or
``phase``). None of them looks at the truth. ``--cache`` keeps abTEM's
output in an .npz (reused when its parameters match).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _abtem_worker import run_abtem_worker

HERE = Path(__file__).resolve().parent
_ABTEM = (HERE / "_venv_abtem" / "bin" / "python", Path("/work/main/benchmarks/_venv_abtem/bin/python"))
ABTEM_PY = next((p for p in _ABTEM if p.exists()), _ABTEM[0])
ENERGY_EV = 80e3
SEMIANGLE_MRAD = 25.0
SCAN = (20, 20)
STEP_A = 0.5
DETECTOR = 64
CELLS = (4, 7)
#: the simulations: name and slice thickness (None: one slice, the projection approximation)
CASES = (("projection", None), ("multislice 0.9 Å", 0.9))


def _abtem_worker(inp: str, out: str) -> None:
    """In the abTEM venv: patterns of every case (stemdask's order) and the projected potential (y, x)."""
    import abtem
    import ase
    import dask

    spec = dict(np.load(inp, allow_pickle=False))
    p = json.loads(str(spec["params"]))
    atoms = ase.Atoms(numbers=spec["numbers"], positions=spec["positions"], cell=spec["cell"], pbc=True)
    gx, gy = p["window_px"][1], p["window_px"][0]
    probe = abtem.Probe(energy=p["energy_ev"], semiangle_cutoff=p["semiangle_mrad"], soft=False)
    y0, x0 = p["scan_origin_A"]
    ny, nx = p["scan_shape"]
    step = p["step_A"]
    scan = abtem.GridScan(start=(x0, y0), end=(x0 + nx * step, y0 + ny * step), gpts=(nx, ny), endpoint=False)
    results = {}
    for i, thickness in enumerate(p["thicknesses"]):
        potential = abtem.Potential(
            atoms,
            gpts=(gx, gy),
            slice_thickness=thickness or float(spec["cell"][2]),
            projection="infinite",
            parametrization="lobato",
        )
        t0 = time.perf_counter()
        with dask.config.set(scheduler="threads", num_workers=2):
            m = probe.scan(potential, scan=scan, detectors=abtem.PixelatedDetector(max_angle="full"))
            m = m.compute(progress_bar=False)
        results[f"seconds_{i}"] = np.array(time.perf_counter() - t0)
        results[f"patterns_{i}"] = np.asarray(m.array, dtype=np.float32).transpose(1, 0, 3, 2)
        if i == 0:
            v = np.asarray(potential.build().project().compute().array, dtype=np.float64)
            results["projected_potential"] = v.T  # (x, y) -> (y, x)
            results["potential_sampling_A"] = np.array(potential.sampling[::-1])
    results["version"] = np.array(abtem.__version__)
    np.savez(out, **results)


def _crop_centre(full: np.ndarray, n: int) -> np.ndarray:
    """Central n × n of fftshifted patterns, zero frequency at index n // 2."""
    my, mx = full.shape[-2:]
    return full[..., my // 2 - n // 2 : my // 2 - n // 2 + n, mx // 2 - n // 2 : mx // 2 - n // 2 + n]


def run_abtem(sample, window, origin) -> dict:
    params = {
        "energy_ev": ENERGY_EV,
        "semiangle_mrad": SEMIANGLE_MRAD,
        "window_px": window,
        "scan_origin_A": origin,
        "scan_shape": SCAN,
        "step_A": STEP_A,
        "thicknesses": [t for _, t in CASES],
    }
    return run_abtem_worker(ABTEM_PY, __file__, sample, params, isolated=True)


#: keys of a --configs entry and their parsers
CONFIG_KEYS = {"loss": str, "epochs": int, "holdout": float, "refit": int, "object": str}


def parse_config(text: str, epochs: int) -> dict:
    """``"key=value,..."`` (or a loss name alone) into a reconstruction config."""
    config = {"loss": "poisson", "epochs": epochs, "holdout": 0.0, "refit": 0, "object": "complex"}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if not value:
            key, value = "loss", key
        if key not in CONFIG_KEYS:
            raise SystemExit(f"--configs: unknown key {key!r} in {text!r}; keys: {sorted(CONFIG_KEYS)}")
        config[key] = CONFIG_KEYS[key](value)
    return config


def cached_abtem(sample, window, origin, cache: str | None) -> dict:
    """abTEM's output, from ``cache`` when it holds the same parameters, else simulated (and saved there)."""
    key = json.dumps([window, list(origin), SCAN, STEP_A, DETECTOR, CELLS, [t for _, t in CASES]])
    if cache and Path(cache).exists():
        stored = dict(np.load(cache))
        if str(stored.pop("cache_key")) == key:
            print(f"abTEM output from {cache}", flush=True)
            return stored
    t0 = time.perf_counter()
    theirs = run_abtem(sample, window, origin)
    print(
        f"abTEM {theirs['version']}: {time.perf_counter() - t0:.1f} s "
        f"(scans {[round(float(theirs[f'seconds_{i}']), 1) for i in range(len(CASES))]} s)",
        flush=True,
    )
    if cache:
        np.savez(cache, cache_key=np.array(key), **theirs)
    return theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doses", nargs="+", default=["inf", "2e4"], help="e/pattern, inf: noiseless")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--configs", nargs="+", default=["poisson"], help="reconstructions of the noisy data")
    parser.add_argument("--noise-seed", type=int, default=7, help="seed of the Poisson noise (both simulations)")
    parser.add_argument("--cache", default=None, help="an .npz keeping abTEM's output between runs")
    args = parser.parse_args()
    configs = {text: parse_config(text, args.epochs) for text in args.configs}

    import torch
    import xarray as xr

    import stemdask
    from stemdask.physics import wavelength_A
    from stemdask.ptycho import reconstruct
    from stemdask.ptycho.compare import band_limited, phase_correlation
    from stemdask.simulate import samples, simulate_4dstem

    torch.set_num_threads(1)
    sample = samples.mos2(CELLS)
    cell_x, cell_y, _ = sample.cell_A
    lam = wavelength_A(ENERGY_EV)
    window = (int(1.5 * DETECTOR), int(1.5 * DETECTOR))
    max_angle = (1e3 * DETECTOR * lam / (2 * cell_y), 1e3 * DETECTOR * lam / (2 * cell_x))
    sampling = (cell_y / window[0], cell_x / window[1])
    origin = ((cell_y - (SCAN[0] - 1) * STEP_A) / 2, (cell_x - (SCAN[1] - 1) * STEP_A) / 2)
    theirs = cached_abtem(sample, window, origin, args.cache)
    truths = {}
    ours_by_case = {}
    for i, (name, thickness) in enumerate(CASES):
        data, truth = simulate_4dstem(
            sample,
            energy_ev=ENERGY_EV,
            semiangle_mrad=SEMIANGLE_MRAD,
            scan_shape=SCAN,
            scan_step_A=STEP_A,
            detector_shape=DETECTOR,
            max_angle_mrad=max_angle,
            sampling_A=sampling,
            scan_origin_A=origin,
            slice_thickness_A=thickness,
        )
        ours_by_case[name] = (np.asarray(data.values, dtype=np.float64), data.attrs)
        if i == 0:
            truths["stemdask phase"] = xr.DataArray(
                np.angle(truth.transmission.values).sum(0),
                coords={"y": truth.y.values, "x": truth.x.values},
                dims=("y", "x"),
            )
    v = theirs["projected_potential"]
    dy, dx = (float(s) for s in theirs["potential_sampling_A"])
    if not np.allclose((dy, dx), sampling):
        raise SystemExit(f"abTEM's grid {dy, dx} is not stemdask's {sampling}")
    truths["abTEM potential"] = xr.DataArray(
        band_limited(v), coords={"y": np.arange(v.shape[0]) * dy, "x": np.arange(v.shape[1]) * dx}, dims=("y", "x")
    )
    for i, (name, _) in enumerate(CASES):
        ours, attrs = ours_by_case[name]
        abtem_patterns = _crop_centre(theirs[f"patterns_{i}"], DETECTOR).astype(np.float64)
        flat_a, flat_s = abtem_patterns.reshape(-1), ours.reshape(-1)
        sliver = band_limit_sliver(attrs["detector_pixel_mrad"], max_angle)
        print(
            f"{name}: patterns r = {np.corrcoef(flat_a, flat_s)[0, 1]:.6f}, "
            f"total per pattern abTEM / stemdask = {abtem_patterns.sum((2, 3)).mean() / ours.sum((2, 3)).mean():.4f}; "
            f"band limits: {int(sliver.sum())} pixels inside stemdask's ellipse and outside abTEM's circle, "
            f"holding {ours[..., sliver].sum() / ours.sum():.2e} of stemdask's and "
            f"{abtem_patterns[..., sliver].sum() / abtem_patterns.sum():.2e} of abTEM's intensity",
            flush=True,
        )
        for dose_arg in args.doses:
            dose = None if dose_arg == "inf" else float(dose_arg)
            runs = {"amplitude": parse_config("amplitude", args.epochs)} if dose is None else configs
            for source, patterns in (("stemdask", ours), ("abTEM", abtem_patterns)):
                values = patterns
                if dose is not None:
                    values = np.random.default_rng(args.noise_seed).poisson(dose * patterns).astype(np.float32)
                data = stemdask.from_array(
                    values,
                    energy_ev=ENERGY_EV,
                    semiangle_mrad=SEMIANGLE_MRAD,
                    scan_step_A=STEP_A,
                    detector_pixel_mrad=attrs["detector_pixel_mrad"],
                    dose_e_per_pattern=dose,
                    units="probability" if dose is None else "counts",
                    chunks=(10, 20),
                )
                for label, config in runs.items():
                    t, c = time.perf_counter(), time.process_time()
                    res, note = reconstruct_with(reconstruct, data, config)
                    region = (
                        float(res.position_y.min()),
                        float(res.position_y.max()),
                        float(res.position_x.min()),
                        float(res.position_x.max()),
                    )
                    scores = {
                        k: phase_correlation(res.phase_total, tr, region_A=region)["r"] for k, tr in truths.items()
                    }
                    print(
                        f"  {name}, dose {dose_arg}, {source} data, [{label}]{note}: "
                        + ", ".join(f"r vs {k} = {r:.4f}" for k, r in scores.items())
                        + f", mean amplitude {float(res.amplitude_total.mean()):.3f} "
                        f"[{time.perf_counter() - t:.1f} s wall, {time.process_time() - c:.1f} s CPU]",
                        flush=True,
                    )


def band_limit_sliver(pixel_mrad, max_angle_mrad) -> np.ndarray:
    """Detector pixels inside stemdask's elliptical band limit but outside abTEM's circular one.

    The detector spans 2/3 of each axis's Nyquist angle (``max_angle_mrad``):
    stemdask keeps the ellipse with those half-axes, abTEM the disc of the
    smaller one.
    """
    k = [(np.arange(DETECTOR) - DETECTOR // 2) * float(p) for p in np.broadcast_to(pixel_mrad, 2)]
    ky, kx = np.meshgrid(*k, indexing="ij")
    ay, ax = max_angle_mrad
    ellipse = (ky / ay) ** 2 + (kx / ax) ** 2 <= 1
    return ellipse & (np.hypot(ky, kx) > min(ay, ax))


def reconstruct_with(reconstruct, data, config: dict):
    """The single-slice reconstruction of ``config`` (see ``--configs``) and a note on the epoch chosen."""
    common = {"step": 0.05, "loss": config["loss"], "object_kind": config["object"]}
    res = reconstruct(data, iterations=config["epochs"], holdout_fraction=config["holdout"], **common)
    if not config["holdout"]:
        return res, ""
    best = max(int(res.attrs["best_iteration"]), 1)
    note = f" (held-out best epoch {best} of {config['epochs']})"
    if config["refit"]:
        # the held-out criterion chose the epoch count; refit on every position for that many epochs
        res = reconstruct(data, iterations=best, **common)
        note += f", refit on all positions for {best} epochs"
    return res, note


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--abtem-worker":
        _abtem_worker(sys.argv[2], sys.argv[3])
    else:
        main()
