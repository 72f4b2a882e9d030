"""Lossy compression (Diederichs et al.): throughput, Θ curves of the four bases, ratio C and bytes.

Three measurements, all in one run (results in docs/compression.md):

1. throughput in GB/s (raw uint16 bytes per second of wall time, graph
   building included) of ``compress`` (15 data masks + 1 DF mask, amplitude
   mode) against the plain 16-mask virtual image (``imaging.project`` with 16
   rings) on the same in-memory data (2048 patterns of 256², 256 MiB),
   interleaved, median of ``--reps`` runs each;
2. mean Θ_bright / Θ_dark against the number of masks (Fig. 7) for the data,
   PCA, Zernike and binning bases on a simulated MoS2 scan (stemdask
   simulator, 256² detector, noise-free) and on the real Merlin file in
   ``../shared/data`` (8 patterns: bases from scan row 0, Θ on row 1);
   patterns a data/PCA basis was drawn from are left out of its mean;
3. the ratio C of Eq. 17 for 15 data masks + 1 DF on 256² beside the bytes
   on disk of the compressed store, of the raw uint16 counts and of the
   same counts stored with the default lossless codec (blosc).

    python3 benchmarks/bench_compression.py                    # ~5 min
    python3 benchmarks/bench_compression.py --scan 12 --reps 3  # quicker
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

import stemdask  # noqa: E402
from stemdask import metrics  # noqa: E402
from stemdask.compression import bases, compress, detector_regions  # noqa: E402
from stemdask.imaging import detectors, project  # noqa: E402
from stemdask.simulate import samples, simulate_4dstem  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MERLIN = ROOT.parent / "shared" / "data" / "merlin" / "001_4x2_6bit.mib"
if not MERLIN.exists():
    MERLIN = Path("/work/shared/data/merlin/001_4x2_6bit.mib")


def median_time(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times


def throughput(counts: xr.DataArray, reps: int) -> dict:
    basis = bases.make_basis(counts, "data", n_bf=15, n_df=1, seed=0)
    rings = detectors.rings(counts, np.linspace(0.0, float(np.abs(counts.k_x).max()) * 1.5, 17))
    runs = {
        "virtual_image_16_rings": lambda: project(counts, rings).compute(),
        "compress_float64": lambda: compress(counts, basis).compute(),
        "compress_float32": lambda: compress(counts, basis, dtype="float32").compute(),
        "compress_intensity_float32": lambda: compress(counts, basis, mode="intensity", dtype="float32").compute(),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn()  # warm (numba compile, caches)
    for _ in range(reps):  # interleaved, so load changes hit every variant alike
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    gb = counts.nbytes / 1e9
    out = {name: {"median_s": float(np.median(t)), "GB_per_s": gb / float(np.median(t))} for name, t in times.items()}
    base = out["virtual_image_16_rings"]["median_s"]
    for name in runs:
        out[name]["ratio_to_virtual_image"] = base / out[name]["median_s"]
    out["bytes"] = int(counts.nbytes)
    return out


def drawn_mask(basis: xr.DataArray, shape: tuple[int, int]) -> np.ndarray:
    keep = np.ones(shape, bool)
    for part in basis.attrs.get("parts", [basis.attrs]):
        for y, x in part.get("positions", []):
            keep[y, x] = False
    return keep


def theta_curves(train: xr.DataArray, test: xr.DataArray, n_bf: int, n_df: int, n_samples: int, same_scan: bool):
    regions = detector_regions(train)
    test_regions = detector_regions(test, bf_radius_mrad=regions.attrs["bf_radius_mrad"])
    assert np.array_equal(regions.bf_region.values, test_regions.bf_region.values)
    df1 = bases.dark_field_mean(train, regions=regions)
    shape = (test.sizes["scan_y"], test.sizes["scan_x"])
    out: dict[str, dict] = {"bright": {}, "dark": {}}
    for kind, bf in (
        ("data", bases.data_basis(train, n_bf, seed=0, regions=regions)),
        ("pca", bases.pca(train, n_bf, n_samples=n_samples, seed=0, regions=regions)),
        ("zernike", bases.zernike(train, n_bf, regions=regions)),
    ):
        basis = bases.combine(bf, df1)
        c = compress(test, basis)
        where = drawn_mask(bf, shape) if same_scan and kind == "data" else None
        curve = metrics.mean_theta_curve(c, "bf", where=where)
        out["bright"][kind] = {
            "n_masks": curve.n_masks.values.tolist(),
            "mean_theta_deg": np.degrees(curve.values).tolist(),
        }
    points = []
    for size in (2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32):
        binned = bases.binning(train, size, regions=regions)
        if binned.sizes["basis"] > 4 * n_bf:
            continue
        c = compress(test, bases.combine(binned, df1))
        points.append((int(binned.sizes["basis"]), size, np.degrees(metrics.mean_theta(c, "bf"))))
        if binned.sizes["basis"] == 1:
            break
    points.sort()
    out["bright"]["binning"] = {
        "n_masks": [p[0] for p in points],
        "size_px": [p[1] for p in points],
        "mean_theta_deg": [p[2] for p in points],
    }
    bf_z = bases.zernike(train, n_bf, regions=regions)
    for label, df in (
        ("zernike", bases.zernike(train, n_df, region="df", regions=regions)),
        ("zernike_m0", bases.zernike(train, n_df, region="df", m0_only=True, regions=regions)),
    ):
        curve = metrics.mean_theta_curve(compress(test, bases.combine(bf_z, df)), "df")
        out["dark"][label] = {
            "n_masks": curve.n_masks.values.tolist(),
            "mean_theta_deg": np.degrees(curve.values).tolist(),
        }
    dpoints = []
    for size in (8, 16, 24, 32, 48, 64, 96, 128, 256):
        binned = bases.binning(train, size, region="df", regions=regions)
        if binned.sizes["basis"] > 4 * n_df:
            continue
        c = compress(test, bases.combine(bf_z, binned))
        dpoints.append((int(binned.sizes["basis"]), size, np.degrees(metrics.mean_theta(c, "df"))))
    dpoints.sort()
    out["dark"]["binning"] = {
        "n_masks": [p[0] for p in dpoints],
        "size_px": [p[1] for p in dpoints],
        "mean_theta_deg": [p[2] for p in dpoints],
    }
    return out


def storage(counts: xr.DataArray, workdir: Path) -> dict:
    basis = bases.make_basis(counts, "data", n_bf=15, n_df=1, seed=0)
    out = {}
    for precision in ("float64", "float32"):
        path = stemdask.save(compress(counts, basis, dtype=precision), workdir / f"c_{precision}.zarr")
        out[f"compressed_{precision}"] = metrics.storage_summary(stemdask.open_dataset(path), path)
    lossless = stemdask.save(counts, workdir / "lossless.zarr")
    out["raw_uint16_bytes"] = int(counts.nbytes)
    out["lossless_blosc_bytes"] = stemdask.io.store_nbytes(lossless)
    return out


def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, region in zip(axes, ("bright", "dark")):
        shown = {
            k: xr.DataArray(np.radians(v["mean_theta_deg"]), dims="n_masks", coords={"n_masks": v["n_masks"]})
            for k, v in curves[region].items()
        }
        metrics.plot_theta_curves(shown, ax=ax, title=f"{title}: Θ_{region}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scan", type=int, default=20, help="simulated scan edge (positions)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "docs" / "compression_theta.png"))
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    t0 = time.perf_counter()
    sim, _ = simulate_4dstem(
        samples.mos2((4, 3)),
        energy_ev=80e3,
        semiangle_mrad=25.0,
        aberrations={"defocus": 50.0},
        scan_shape=(args.scan, args.scan),
        scan_step_A=0.3,
        detector_shape=256,
        max_angle_mrad=100.0,
        chunks=(4, args.scan),
    )
    sim = sim.persist()
    simulate_s = time.perf_counter() - t0
    # Poisson counts of the same patterns (1e5 e- per pattern) as uint16, for throughput and bytes
    rng = np.random.default_rng(0)
    values = np.asarray(sim.values, np.float64)
    values *= 1e5 / values.sum(axis=(2, 3), keepdims=True)
    counts = stemdask.from_array(
        rng.poisson(values).astype(np.uint16),
        chunks=(4, args.scan),
        **{k: sim.attrs[k] for k in ("energy_ev", "semiangle_mrad", "scan_step_A", "detector_pixel_mrad")},
    )
    results: dict = {"load_average_start": os.getloadavg(), "simulate_s": simulate_s, "scan": args.scan}
    # throughput on 2048 patterns (the simulated counts tiled), so graph building is not what is timed
    reps_y, reps_x = -(-32 // args.scan), -(-64 // args.scan)
    big = np.tile(counts.values, (reps_y, reps_x, 1, 1))[:32, :64]
    tiled = stemdask.from_array(
        big, chunks=(2, 64), **{k: counts.attrs[k] for k in ("semiangle_mrad", "detector_pixel_mrad")}
    )
    results["throughput"] = throughput(tiled, args.reps)
    results["theta_simulated_MoS2"] = theta_curves(
        sim, sim, n_bf=30, n_df=22, n_samples=min(320, args.scan**2), same_scan=True
    )
    plot(results["theta_simulated_MoS2"], Path(args.out), "simulated MoS2")
    if MERLIN.exists():
        merlin = stemdask.open_dataset(MERLIN)
        profile = merlin.mean(("scan_y", "scan_x")).values.astype(float)
        ky, kx = np.mgrid[: profile.shape[0], : profile.shape[1]] - 128.0
        r = np.hypot(ky, kx).astype(int)
        radial = np.bincount(r.ravel(), profile.ravel()) / np.maximum(np.bincount(r.ravel()), 1)
        edge = int(np.argmax(radial < 0.5 * radial[:5].mean())) or 40
        # the file carries no calibration: 1 mrad per pixel assumed, BF radius where the mean falls to half
        merlin = stemdask.calibrate(merlin, detector_pixel_mrad=1.0, semiangle_mrad=float(edge))
        train, test = merlin.isel(scan_y=[0]), merlin.isel(scan_y=[1])
        results["merlin_bf_radius_px"] = edge
        results["theta_merlin"] = theta_curves(train, test, n_bf=4, n_df=4, n_samples=4, same_scan=False)
        plot(results["theta_merlin"], Path(args.out).with_name("compression_theta_merlin.png"), "Merlin 001_4x2")
    with tempfile.TemporaryDirectory() as tmp:
        results["storage"] = storage(counts, Path(tmp))
    results["load_average_end"] = os.getloadavg()
    results["total_s"] = time.perf_counter() - t0
    text = json.dumps(results, indent=1, default=float)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
