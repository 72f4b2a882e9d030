"""Leidl et al.'s dose series: four losses × three doses on simulated MoS2 at 300 kV.

    PYTHONPATH=$PWD python benchmarks/ptycho_dose_series.py [--cells 2 2] [--detector 32]
        [--iterations 100] [--doses 1e6 1e4 1e2] [--losses l1 mse amplitude poisson]
        [--figure docs/ptycho_dose_series.png]

Leidl, Diederichs, Sachse & Müller-Caspary, Micron 185 (2024) 103688, Sec. 3
and 4.6 (their ``../shared/papers/002_85191dcbdfb40f7c.txt``): 300 kV, 18 mrad,
in focus, scan step ``0.25 λ / α`` (27.3 pm), detector to 34.4 mrad (1.749
Å⁻¹), Poisson noise of 10⁶, 10⁴ and 10² electrons per pattern (electrons
beyond the detector lost), one slice per atomic layer in the simulation
(three), a single-slice reconstruction with the known probe, vacuum start,
ε = 10⁻⁴, fixed-step gradient descent (Wirtinger flow) whose step makes the
first update change the object by 2·10⁻² (the paper: between 10⁻³ and
5·10⁻²), 100 iterations, the last one reported.

Scaled down for two CPU cores: the scan covers ``--cells`` orthogonal MoS2
cells (3.16 × 5.47 Å each; the paper: 128 × 128 positions) and the detector
has ``--detector`` pixels across the same 34.4 mrad (the paper: 256, and its
binning test at 32); the object grid is stemdask's (1.5 × the detector's
pixels, band limit at the detector's edge) where the paper reconstructs to
eight times the detector's frequencies.

For each dose and loss: the phase correlation with the truth (the summed
phase of the simulator's band-limited transmission; band-limited, global
phase removed, sub-pixel registered: :func:`stemdask.ptycho.compare.phase_correlation`),
the mean amplitude of the object over the scanned region, and the Mo vs S₂
peak contrast :func:`site_contrast`

    C = (φ̄(Mo) − φ̄(hollow)) / (φ̄(S₂) − φ̄(hollow)),

φ̄ the mean of the band-limited phase sampled (cubic interpolation) at the
Mo columns, the S₂ columns and the empty hexagon centres (hollow sites) of
the simulated atom positions mapped into the reconstruction's frame by the
registration, sites at least 0.5 Å inside the scanned region; the truth's
value (the registered truth sampled the same way) beside it. The hollow
sites are the reference because the phase's global offset is not measured.
C > 1: Mo stronger than S₂ (the truth). Chemical contrast is called
*shown* when ``C − 1`` is more than twice its standard error (from the
scatter of the site values) and between half and twice the truth's ``C − 1``
(:func:`chemical_contrast_shown`).

Outputs go to ``benchmarks/_work/dose_series/`` (git-ignored): ``results.json``,
``table.md`` and the figure (also to ``--figure`` when given).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage
import xarray as xr

from stemdask.physics import wavelength_A
from stemdask.ptycho import reconstruct
from stemdask.ptycho.compare import phase_correlation
from stemdask.simulate import samples, simulate_4dstem

#: beam energy (eV), convergence semi-angle and detector half-width (mrad): Leidl et al. Sec. 3, 300 kV
ENERGY_EV = 300e3
SEMIANGLE_MRAD = 18.0
MAX_ANGLE_MRAD = 34.4
#: scan step in Å: 0.25 λ / α (Nyquist for twice the bright-field radius; 27.3 pm at 300 kV)
SCAN_STEP_A = 0.25 * wavelength_A(ENERGY_EV) / (SEMIANGLE_MRAD * 1e-3)
DOSES = (1e6, 1e4, 1e2)
LOSSES = ("l1", "mse", "amplitude", "poisson")
ITERATIONS = 100
#: sites closer than this to the scanned region's edge are not used (Å)
SITE_MARGIN_A = 0.5
OUT = Path(__file__).resolve().parent / "_work" / "dose_series"


@dataclass(frozen=True)
class Case:
    """One simulated dataset of the series with what the measures need."""

    dose: float
    data: xr.DataArray
    truth_phase: xr.DataArray
    sites: dict[str, np.ndarray]


def mos2_sites(sample: samples.AtomicSample) -> dict[str, np.ndarray]:
    """Projected Mo columns, S₂ columns and hollow sites ``(n, 2)`` (y, x) in Å of a MoS2 sample.

    The hollow sites (empty hexagon centres) are the third sublattice: the
    Mo site reflected through each of its nearest S₂ columns' opposite,
    ``2 Mo − S₂``.
    """
    # the sample is periodic: its images in the neighbouring cells too (a registration may pick any lattice shift)
    cell = np.array([sample.cell_A[1], sample.cell_A[0]])
    images = np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], indexing="ij"), -1).reshape(-1, 1, 2) * cell
    xy = (sample.positions_A[None, :, :2][..., ::-1] + images).reshape(-1, 2)
    numbers = np.tile(sample.numbers, len(images))
    mo = xy[numbers == 42]
    s2 = np.unique(np.round(xy[numbers == 16], 6), axis=0)
    dist = np.linalg.norm(mo[:, None] - s2[None], axis=-1)
    nearest = dist < dist.min() * 1.01
    hollow = np.concatenate([2 * mo[i] - s2[nearest[i]] for i in range(len(mo))])
    mo = np.unique(np.round(mo, 6), axis=0)
    return {"Mo": mo, "S2": s2, "hollow": np.unique(np.round(hollow, 6), axis=0)}


def simulate(
    dose: float, cells: tuple[int, int] = (2, 2), detector: int = 32, seed: int = 1, chunk_rows: int | None = None
) -> Case:
    """MoS2 scanned over ``cells`` orthogonal cells at ``dose`` e/pattern (Poisson, seeded).

    ``chunk_rows``: scan rows per chunk, i.e. per reconstruction shard (default
    all: one shard); fewer keep the shard's working memory down on big detectors.
    """
    sample = samples.mos2((cells[0] + 2, cells[1] + 3))
    cell_y = sample.cell_A[1] / (cells[0] + 2)
    cell_x = sample.cell_A[0] / (cells[1] + 3)
    scan = (round(cells[0] * cell_y / SCAN_STEP_A), round(cells[1] * cell_x / SCAN_STEP_A))
    data, truth = simulate_4dstem(
        sample,
        energy_ev=ENERGY_EV,
        semiangle_mrad=SEMIANGLE_MRAD,
        scan_shape=scan,
        scan_step_A=SCAN_STEP_A,
        detector_shape=detector,
        max_angle_mrad=MAX_ANGLE_MRAD,
        slice_thickness_A=sample.cell_A[2] / 3,  # one slice per atomic layer (S, Mo, S), as the paper
        dose_e_per_pattern=dose,
        seed=seed,
        chunks=(chunk_rows or scan[0], scan[1]),
    )
    phase = np.angle(truth.transmission.values).sum(0)
    truth_phase = xr.DataArray(phase, coords={"y": truth.y.values, "x": truth.x.values}, dims=("y", "x"))
    return Case(float(dose), data.persist(), truth_phase, mos2_sites(sample))


def counts_per_pixel(data: xr.DataArray) -> dict[str, float]:
    """Mean recorded electrons per pixel of the bright field (``|k| <= α``) and of the dark field."""
    k = np.hypot(data.k_y.values[:, None], data.k_x.values[None, :])
    bf = k <= float(data.attrs["semiangle_mrad"])
    mean = np.asarray(data.mean(("scan_y", "scan_x")).values, dtype=np.float64)
    return {"bf_counts_per_px": float(mean[bf].mean()), "df_counts_per_px": float(mean[~bf].mean())}


def site_contrast(
    image: np.ndarray, origin_A: tuple[float, float], sampling_A: tuple[float, float], sites: dict[str, np.ndarray]
) -> dict[str, float]:
    """Mo vs S₂ peak contrast ``(φ̄(Mo) − φ̄(hollow)) / (φ̄(S₂) − φ̄(hollow))`` of a phase image.

    Parameters
    ----------
    image : (ny, nx) array
        Phase (rad) whose pixel ``(0, 0)`` lies at ``origin_A``.
    origin_A, sampling_A : (float, float)
        Position of the first pixel and pixel size (y, x) in Å.
    sites : dict
        ``Mo``, ``S2``, ``hollow`` site positions (y, x) in Å in the image's
        frame; those within :data:`SITE_MARGIN_A` of the edge are left out.

    Returns
    -------
    dict
        ``contrast``, its standard error ``contrast_se`` (first-order, from
        the scatter of the site values), the background-subtracted means
        ``Mo_rad``, ``S2_rad`` and the site counts.
    """
    lo = np.asarray(origin_A) + SITE_MARGIN_A
    hi = np.asarray(origin_A) + (np.asarray(image.shape) - 1) * np.asarray(sampling_A) - SITE_MARGIN_A
    values = {}
    for name, pos in sites.items():
        inside = np.all((pos >= lo) & (pos <= hi), axis=1)
        p = (pos[inside] - np.asarray(origin_A)) / np.asarray(sampling_A)
        values[name] = scipy.ndimage.map_coordinates(image, [p[:, 0], p[:, 1]], order=3)
    if min(v.size for v in values.values()) < 2:
        raise ValueError(f"fewer than two sites of a kind inside the region: {[v.size for v in values.values()]}")
    mean = {k: float(v.mean()) for k, v in values.items()}
    var = {k: float(v.var(ddof=1) / v.size) for k, v in values.items()}
    mo, s2 = mean["Mo"] - mean["hollow"], mean["S2"] - mean["hollow"]
    c = mo / s2
    # first-order error of the ratio (the hollow term enters both)
    se = math.sqrt(var["Mo"] / s2**2 + var["S2"] * mo**2 / s2**4 + var["hollow"] * ((s2 - mo) / s2**2) ** 2)
    return {
        "contrast": c,
        "contrast_se": se,
        "Mo_rad": mo,
        "S2_rad": s2,
        **{f"n_{k}": int(v.size) for k, v in values.items()},
    }


def chemical_contrast_shown(contrast: float, contrast_se: float, truth: float) -> bool:
    """Whether a reconstruction shows the truth's Mo vs S₂ contrast ``truth`` (> 1).

    ``C − 1`` is more than twice its standard error (significant, the
    truth's sign) and between half and twice the truth's ``C − 1`` (a ratio
    far from the truth's is noise, not chemistry).
    """
    excess, true_excess = contrast - 1, truth - 1
    return bool(excess > 2 * contrast_se and 0.5 * true_excess <= excess <= 2 * true_excess)


def measure(result: xr.Dataset, case: Case, *, contrast: bool = True) -> dict[str, Any]:
    """Phase correlation, mean amplitude and (``contrast``) the site contrast, with the truth's, of a reconstruction."""
    region = (
        float(result.position_y.min()),
        float(result.position_y.max()),
        float(result.position_x.min()),
        float(result.position_x.max()),
    )
    cmp = phase_correlation(result.phase_total, case.truth_phase, region_A=region)
    y, x = result.y.values, result.x.values
    origin = (float(y[y >= region[0]][0]), float(x[x >= region[2]][0]))
    d = (float(y[1] - y[0]), float(x[1] - x[0]))
    amp = result.amplitude_total.sel(y=slice(region[0], region[1]), x=slice(region[2], region[3]))
    out = {"r": cmp["r"], "mean_amplitude": float(amp.mean()), "aligned_truth": cmp["aligned_truth"]}
    if not contrast:
        return out
    # the sites in the reconstruction's frame: truth frame less the registration shift
    shift = np.asarray(cmp["shift_A"])
    sites = {k: v - shift for k, v in case.sites.items()}
    rec = site_contrast(cmp["region"], origin, d, sites)
    tru = site_contrast(cmp["aligned_truth"], origin, d, sites)
    shown = chemical_contrast_shown(rec["contrast"], rec["contrast_se"], tru["contrast"])
    return out | {
        "contrast": rec["contrast"],
        "contrast_se": rec["contrast_se"],
        "contrast_truth": tru["contrast"],
        "Mo_rad": rec["Mo_rad"],
        "S2_rad": rec["S2_rad"],
        "Mo_rad_truth": tru["Mo_rad"],
        "S2_rad_truth": tru["S2_rad"],
        "chemical_contrast": bool(shown),
        "sites": [rec["n_Mo"], rec["n_S2"], rec["n_hollow"]],
    }


def run(
    case: Case, loss: str, iterations: int = ITERATIONS, *, contrast: bool = True
) -> tuple[xr.Dataset, dict[str, Any]]:
    """Reconstruct ``case`` with ``loss`` (the paper's settings) and :func:`measure` it."""
    t0 = time.perf_counter()
    result = reconstruct(case.data, iterations=iterations, loss=loss, eps=1e-4, optimizer="gd", step="auto")
    seconds = time.perf_counter() - t0
    row = {"dose": case.dose, "loss": loss, "seconds": seconds, "step": result.attrs["object_step"]}
    row.update(counts_per_pixel(case.data))
    row.update(measure(result, case, contrast=contrast))
    result.attrs["aligned_truth_phase"] = row.pop("aligned_truth")
    loss_curve = result.loss.values
    row["loss_monotone"] = bool(np.all(np.diff(loss_curve) <= 0))
    return result, row


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| dose (e/pattern) | e/px BF, DF | loss | phase correlation | mean amplitude | Mo/S₂ contrast C (truth) "
        "| chemical contrast |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dose']:.0e} | {r['bf_counts_per_px']:.3g}, {r['df_counts_per_px']:.2g} | {r['loss']} | "
            f"{r['r']:.4f} | {r['mean_amplitude']:.3f} | "
            f"{r['contrast']:.3f} ± {r['contrast_se']:.3f} ({r['contrast_truth']:.3f}) | "
            f"{'yes' if r['chemical_contrast'] else 'no'} |"
        )
    return "\n".join(lines)


def figure(
    images: dict[tuple[float, str], xr.Dataset], rows: list[dict[str, Any]], truth: np.ndarray, path: Path
) -> None:
    """Phase and amplitude of every reconstruction (rows: dose; columns: loss) and the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doses = sorted({k[0] for k in images}, reverse=True)
    losses = [loss for loss in LOSSES if any(k[1] == loss for k in images)]
    fig, axes = plt.subplots(2 * len(doses), len(losses) + 1, figsize=(1.8 * (len(losses) + 1), 2.4 * 2 * len(doses)))
    axes = np.atleast_2d(axes)
    by_key = {(r["dose"], r["loss"]): r for r in rows}
    for i, dose in enumerate(doses):
        for j, loss in enumerate(losses):
            res, r = images[(dose, loss)], by_key[(dose, loss)]
            region = dict(
                y=slice(float(res.position_y.min()), float(res.position_y.max())),
                x=slice(float(res.position_x.min()), float(res.position_x.max())),
            )
            ph = res.phase_total.sel(**region)
            ph = ph - ph.mean()
            am = res.amplitude_total.sel(**region)
            ax = axes[2 * i, j]
            ax.imshow(ph.values, cmap="magma")
            ax.set_title(
                f"{loss} {dose:.0e}\nr={r['r']:.3f} C={r['contrast']:.3f}\n"
                f"{float(ph.min()):.2f} to {float(ph.max()):.2f} rad",
                fontsize=7,
            )
            ax = axes[2 * i + 1, j]
            ax.imshow(am.values, cmap="gray")
            ax.set_title(
                f"amplitude, mean {r['mean_amplitude']:.3f}\n{float(am.min()):.2f} to {float(am.max()):.2f}",
                fontsize=7,
            )
        axes[2 * i, -1].axis("off")
        axes[2 * i + 1, -1].axis("off")
    t = by_key[(doses[0], losses[0])]
    ax = axes[0, -1]
    ax.imshow(truth, cmap="magma")
    ax.set_title(f"truth phase\nC={t['contrast_truth']:.3f}\n{truth.min():.2f} to {truth.max():.2f} rad", fontsize=7)
    ax.axis("on")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cells", type=int, nargs=2, default=(2, 2), help="scanned orthogonal cells (y, x)")
    parser.add_argument("--detector", type=int, default=32, help="detector pixels across 2 x 34.4 mrad")
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--doses", type=float, nargs="+", default=DOSES)
    parser.add_argument("--losses", nargs="+", default=LOSSES)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chunk-rows", type=int, default=None, help="scan rows per shard (default: one shard)")
    parser.add_argument("--figure", type=Path, default=None, help="also save the figure here")
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the outputs (git-ignored default)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    t0 = time.perf_counter()
    rows, images, truth = [], {}, None
    for dose in args.doses:
        case = simulate(dose, tuple(args.cells), args.detector, args.seed, args.chunk_rows)
        for loss in args.losses:
            result, row = run(case, loss, args.iterations)
            rows.append(row)
            images[(case.dose, loss)] = result
            print(
                f"dose {dose:.0e} {loss:9s} {row['seconds']:6.1f} s  r={row['r']:.4f}  "
                f"amplitude {row['mean_amplitude']:.3f}  C={row['contrast']:.3f}±{row['contrast_se']:.3f} "
                f"(truth {row['contrast_truth']:.3f})  shown={row['chemical_contrast']}",
                flush=True,
            )
        if truth is None:
            # the truth registered onto the first reconstruction's scanned region
            truth = images[(case.dose, args.losses[0])].attrs.pop("aligned_truth_phase")
    total = time.perf_counter() - t0
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    summary = {
        "rows": rows,
        "seconds_total": total,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "settings": {
            "energy_ev": ENERGY_EV,
            "semiangle_mrad": SEMIANGLE_MRAD,
            "max_angle_mrad": MAX_ANGLE_MRAD,
            "scan_step_A": SCAN_STEP_A,
            "cells": list(args.cells),
            "detector_px": args.detector,
            "iterations": args.iterations,
            "seed": args.seed,
        },
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    text = table(rows)
    (out / "table.md").write_text(text + "\n")
    print(text)
    print(f"total {total:.0f} s, load average {' '.join(load_before)} -> {' '.join(load_after)}")
    assert truth is not None
    figure(images, rows, truth, out / "dose_series.png")
    if args.figure is not None:
        figure(images, rows, truth, args.figure)


if __name__ == "__main__":
    main()
