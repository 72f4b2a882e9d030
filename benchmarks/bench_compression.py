"""Lossy compression (Diederichs et al.): throughput, Θ curves of the four bases, ratio C and bytes.

Four measurements, all in one run (results in docs/compression.md):

1. throughput in GB/s (raw uint16 bytes per second of wall time, graph
   building included) of ``compress`` (15 data masks + 1 DF mask, amplitude
   mode; mixed precision, the default, and float64) against the plain
   16-mask virtual image (``imaging.project`` with 16 rings) on the same
   in-memory data (2048 patterns of 256², 256 MiB), interleaved, median of
   ``--reps`` runs each;
2. the error of c_perp (Eq. 11) and of the coefficients in each precision
   against a float64 NumPy reference (c_perp as the norm of the residual,
   computed directly) on the simulated MoS2 patterns (float) and their
   Poisson counts (uint16), 15 data masks + 1 DF on 256²; beside it the error
   a float32 matrix product would give (emulated in NumPy);
3. mean Θ_bright / Θ_dark against the number of masks (Fig. 7) for the data,
   PCA, Zernike and binning bases on a simulated MoS2 scan (stemdask
   simulator, 256² detector, noise-free); patterns a data basis was drawn
   from are left out of its mean; and, where ``../shared/data`` is present,
   Θ_bright on the real Merlin file (8 patterns) by leave-one-out: the BF
   disc found from the mean pattern, bases from 7 patterns, Θ on the 8th;
4. the ratio C of Eq. 17 for 15 data masks + 1 DF on 256² beside the bytes
   on disk of the compressed store, of the raw uint16 counts and of the
   same counts stored with the default lossless codec (blosc).

    python3 benchmarks/bench_compression.py                    # ~5 min
    python3 benchmarks/bench_compression.py --scan 12 --reps 3  # quicker
    python3 benchmarks/bench_compression.py --only merlin       # the Merlin part alone
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
        "compress_mixed": lambda: compress(counts, basis).compute(),  # the default: precision="mixed", float64 out
        "compress_mixed_store_float32": lambda: compress(counts, basis, dtype="float32").compute(),
        "compress_float64": lambda: compress(counts, basis, precision="float64").compute(),
        "compress_intensity_mixed": lambda: compress(counts, basis, mode="intensity").compute(),
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


def _drawn(basis: xr.DataArray, shape: tuple[int, int]) -> np.ndarray:
    return ~drawn_mask(basis, shape)


def _error_summary(got_perp, ref_perp, norm, drawn, got_coef, ref_coef) -> dict:
    keep = ~drawn.ravel()
    rel = np.abs(got_perp - ref_perp)[keep] / ref_perp[keep]
    return {
        "c_perp_rel_err_max": float(rel.max()),
        "c_perp_rel_err_median": float(np.median(rel)),
        "c_perp_abs_err_over_norm_max_drawn": float((np.abs(got_perp - ref_perp) / norm)[~keep].max(initial=0.0)),
        "coef_abs_err_over_norm_max": float((np.abs(got_coef - ref_coef).max(axis=-1) / norm).max()),
    }


def precision_errors(data: xr.DataArray) -> dict:
    """c_perp_bf and coefficient errors of each precision against float64 NumPy (15 data + 1 DF, amplitude)."""
    basis = bases.make_basis(data, "data", n_bf=15, n_df=1, seed=0)
    shape = (data.sizes["scan_y"], data.sizes["scan_x"])
    values = np.asarray(data.values, np.float64).reshape(shape[0] * shape[1], -1)
    d = np.sqrt(values)
    m = basis.values.reshape(basis.sizes["basis"], -1)
    bf = basis.coords["bf_region"].values.ravel()
    mine = basis.coords["basis_region"].values == "bf"
    coef = d @ m.T
    perp = np.linalg.norm((d - coef[:, mine] @ m[mine]) * bf, axis=-1)  # the residual itself, no Pythagoras
    norm = np.linalg.norm(d * bf, axis=-1)
    drawn = _drawn(basis, shape)
    out: dict = {
        "c_perp_over_norm_median": float(np.median((perp / norm)[~drawn.ravel()])),
        "n_patterns": int(d.shape[0]),
        "n_drawn": int(drawn.sum()),
    }
    for label, kwargs in (
        ("mixed_float64_out", {}),
        ("mixed_float32_out", {"dtype": "float32"}),
        ("float64", {"precision": "float64"}),
    ):
        c = compress(data, basis, **kwargs).compute()
        out[label] = _error_summary(
            c.c_perp_bf.values.ravel().astype(np.float64),
            perp,
            norm,
            drawn,
            c.coefficients.values.reshape(coef.shape).astype(np.float64),
            coef,
        )
    # what a float32 product would give (the engine's float32 BLAS path; Eq. 11 from its coefficients, the
    # region norms exact): the reason for mixed precision
    c32 = (d.astype(np.float32) @ m.T.astype(np.float32)).astype(np.float64)
    norm_sq = (values * bf).sum(axis=-1)
    perp32 = np.sqrt(np.maximum(norm_sq - (c32[:, mine] ** 2).sum(axis=-1), 0))
    out["float32_product_emulated"] = _error_summary(perp32, perp, norm, drawn, c32, coef)
    return out


def bright_field_disc(mean_pattern: np.ndarray, fraction: float = 0.5) -> dict:
    """The BF disc of a mean pattern, in pixels: threshold, centroid, radius of the equal-area disc.

    The mean pattern is smoothed (5 px box), thresholded at ``fraction`` of
    its maximum and reduced to its largest connected part; the disc is centred
    on that part's centroid with the radius of a disc of the same area.
    """
    from scipy import ndimage

    smooth = ndimage.uniform_filter(np.asarray(mean_pattern, np.float64), 5)
    bright = smooth > fraction * smooth.max()
    labels, n = ndimage.label(bright)
    sizes = ndimage.sum(bright, labels, range(1, n + 1))
    bright = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    cy, cx = (float(v) for v in ndimage.center_of_mass(bright))
    radius = float(np.sqrt(bright.sum() / np.pi))
    ky, kx = np.mgrid[: bright.shape[0], : bright.shape[1]]
    disc = np.hypot(ky - cy, kx - cx) <= radius
    return {
        "threshold": float(fraction * smooth.max()),
        "center_px": [cy, cx],
        "radius_px": radius,
        "bright_pixels": int(bright.sum()),
        "disc_pixels_on_detector": int(disc.sum()),
        "overlap_iou": float((disc & bright).sum() / (disc | bright).sum()),
    }


def merlin_theta(path: Path, pixel_mrad: float, max_zernike: int = 15) -> dict:
    """Leave-one-out Θ_bright on the Merlin file: bases from 7 patterns, Θ on the 8th, averaged over the 8.

    The file has no calibration: ``pixel_mrad`` is assumed and the
    semi-angle is the disc radius times it. Regions and bases are then
    defined relative to the disc, so Θ does not depend on ``pixel_mrad``
    (checked: a second calibration gives the same curves).
    """
    raw = stemdask.open_dataset(path)
    values = np.asarray(raw.values)
    ny, nx = values.shape[:2]
    frames = values.reshape(ny * nx, *values.shape[2:])
    disc = bright_field_disc(frames.astype(np.float64).mean(axis=0))

    def calibrated(v: np.ndarray, pixel: float) -> xr.DataArray:
        return stemdask.from_array(
            v,
            detector_pixel_mrad=pixel,
            semiangle_mrad=disc["radius_px"] * pixel,
            beam_center_px=tuple(disc["center_px"]),
        )

    def folds(pixel: float, kinds: tuple[str, ...]) -> dict[str, list[np.ndarray]]:
        curves: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
        for i in range(frames.shape[0]):
            train = calibrated(np.delete(frames, i, axis=0)[None], pixel)
            test = calibrated(frames[i][None, None], pixel)
            regions = detector_regions(train)
            df1 = bases.dark_field_mean(train, regions=regions)
            n_train = frames.shape[0] - 1
            made = {
                "data": lambda: bases.data_basis(train, n_train, seed=i, regions=regions),
                "pca": lambda: bases.pca(train, n_train, n_samples=n_train, seed=i, regions=regions),
                "zernike": lambda: bases.zernike(train, max_zernike, regions=regions),
            }
            for kind in kinds:
                c = compress(test, bases.combine(made[kind](), df1), precision="float64")
                curves[kind].append(np.degrees(metrics.mean_theta_curve(c, "bf").values))
        return curves

    kinds = ("data", "pca", "zernike")
    curves = folds(pixel_mrad, kinds)
    check = folds(2.0 * pixel_mrad, ("zernike",))  # another assumed calibration: the same Θ
    invariant = float(np.abs(np.array(check["zernike"]) - np.array(curves["zernike"])).max())
    out: dict = {
        "file": path.name,
        "patterns": int(frames.shape[0]),
        "max_count": int(frames.max()),
        "saturated_fraction": float((frames == frames.max()).mean()),
        "assumed_pixel_mrad": pixel_mrad,
        "bf_disc": disc,
        "theta_change_at_2x_pixel_mrad_deg": invariant,
        "bright": {},
    }
    for kind in kinds:
        per = np.array(curves[kind])
        out["bright"][kind] = {
            "n_masks": list(range(1, per.shape[1] + 1)),
            "mean_theta_deg": per.mean(axis=0).tolist(),
            "min_theta_deg": per.min(axis=0).tolist(),
            "max_theta_deg": per.max(axis=0).tolist(),
        }
    points = []
    for size in (4, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96):
        thetas = []
        for i in range(frames.shape[0]):
            train = calibrated(np.delete(frames, i, axis=0)[None], pixel_mrad)
            test = calibrated(frames[i][None, None], pixel_mrad)
            regions = detector_regions(train)
            binned = bases.binning(train, size, regions=regions)
            c = compress(test, bases.combine(binned, bases.dark_field_mean(train, regions=regions)))
            thetas.append(np.degrees(metrics.mean_theta(c, "bf")))
        if int(binned.sizes["basis"]) not in [p[0] for p in points]:  # larger tiles cut to the same masks
            points.append((int(binned.sizes["basis"]), size, float(np.mean(thetas))))
    points.sort()
    out["bright"]["binning"] = {
        "n_masks": [p[0] for p in points],
        "size_px": [p[1] for p in points],
        "mean_theta_deg": [p[2] for p in points],
    }
    # the floor set by counting noise: Var sqrt(min(n, max_count)) summed over the BF for Poisson counts at
    # the mean pattern (the 6-bit counter clips at max_count), against the mean BF norm^2 of sqrt(n); an
    # estimate (a pixel's mean stands in for its rate, which saturation biases low)
    from scipy.stats import poisson

    lam = frames.astype(np.float64).mean(axis=0)
    ky, kx = np.mgrid[: lam.shape[0], : lam.shape[1]]
    bf = np.hypot(ky - disc["center_px"][0], kx - disc["center_px"][1]) <= disc["radius_px"]
    k = np.arange(0, 400)[:, None]
    clipped = np.minimum(k, out["max_count"]).astype(np.float64)
    pmf = poisson.pmf(k, lam[bf][None, :])
    var = (pmf * clipped).sum(0) - ((pmf * np.sqrt(clipped)).sum(0)) ** 2
    norm_sq = frames.reshape(frames.shape[0], -1)[:, bf.ravel()].astype(np.float64).sum(axis=1).mean()
    out["poisson_floor_theta_deg"] = float(np.degrees(np.arcsin(min(1.0, np.sqrt(var.sum() / norm_sq)))))
    return out


def storage(counts: xr.DataArray, workdir: Path) -> dict:
    basis = bases.make_basis(counts, "data", n_bf=15, n_df=1, seed=0)
    out = {}
    for precision in ("float64", "float32"):
        path = stemdask.save(compress(counts, basis, dtype=precision), workdir / f"c_{precision}.zarr")
        out[f"compressed_{precision}"] = metrics.storage_summary(stemdask.open_dataset(path), path)
        parts = {
            name: stemdask.io.store_nbytes(Path(path) / name) for name in ("coefficients", "c_perp_bf", "c_perp_df")
        }
        out[f"compressed_{precision}"]["per_pattern_bytes"] = int(sum(parts.values()))
        out[f"compressed_{precision}"]["masks_bytes"] = stemdask.io.store_nbytes(Path(path) / "masks")
    lossless = stemdask.save(counts, workdir / "lossless.zarr")
    out["raw_uint16_bytes"] = int(counts.nbytes)
    out["lossless_blosc_bytes"] = stemdask.io.store_nbytes(lossless)
    return out


def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = [r for r in ("bright", "dark") if r in curves]
    fig, axes = plt.subplots(1, len(regions), figsize=(4.5 * len(regions), 3.5), squeeze=False)
    for ax, region in zip(axes[0], regions):
        shown = {
            k: xr.DataArray(np.radians(v["mean_theta_deg"]), dims="n_masks", coords={"n_masks": v["n_masks"]})
            for k, v in curves[region].items()
        }
        metrics.plot_theta_curves(shown, ax=ax, title=f"{title}: Θ_{region}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def merlin_part(args: argparse.Namespace, results: dict) -> None:
    """Θ_bright on the real Merlin file by leave-one-out (skipped where ../shared/data is absent)."""
    if not MERLIN.exists():
        results["theta_merlin"] = f"skipped: {MERLIN} not found"
        return
    results["theta_merlin"] = merlin_theta(MERLIN, args.merlin_pixel_mrad)
    plot(results["theta_merlin"], Path(args.out).with_name("compression_theta_merlin.png"), "Merlin 001_4x2 (LOO)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scan", type=int, default=20, help="simulated scan edge (positions)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "docs" / "compression_theta.png"))
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--only", choices=["all", "merlin"], default="all")
    parser.add_argument(
        "--merlin-pixel-mrad",
        type=float,
        default=1.0,
        help="assumed detector pixel size of the (uncalibrated) Merlin file; Θ does not depend on it",
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    results: dict = {"load_average_start": os.getloadavg()}
    if args.only == "merlin":
        merlin_part(args, results)
        finish(args, results, t0)
        return
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
    results.update({"simulate_s": simulate_s, "scan": args.scan})
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
    results["precision_simulated_MoS2"] = precision_errors(sim)
    results["precision_counts"] = precision_errors(counts)
    merlin_part(args, results)
    with tempfile.TemporaryDirectory() as tmp:
        results["storage"] = storage(counts, Path(tmp))
    finish(args, results, t0)


def finish(args: argparse.Namespace, results: dict, t0: float) -> None:
    results["load_average_end"] = os.getloadavg()
    results["total_s"] = time.perf_counter() - t0
    text = json.dumps(results, indent=1, default=float)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
