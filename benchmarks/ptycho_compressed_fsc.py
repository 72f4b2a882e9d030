"""FSC of reconstructions from compressed data against the uncompressed one (Diederichs et al. Fig. 5).

    PYTHONPATH=$PWD python benchmarks/ptycho_compressed_fsc.py [--doses inf 1e5 2e4 1e3] [--epochs 40]
        [--bases data:15 zernike:36] [--masks-from same prior:1e5 prior:same] [--paper-weights]

MoS2 (4 x 4 cells), 80 kV, 25 mrad, 20 x 20 positions at 0.5 Å, 32-pixel
detector to 60 mrad, single slice, known probe (the set-up of
``ptycho_quality.py``). At each dose the patterns are compressed with
:func:`stemdask.compression.compress` (amplitude mode) on a bright-field basis
of ``kind:n`` masks (``stemdask.compression.bases.make_basis``; ``data``: the
paper's masks from sampled patterns) plus one dark-field mask (the mean DF
value), and reconstructed from the compressed Dataset with the loss of
Diederichs et al. Eq. 13 (:mod:`stemdask.ptycho.compressed`, default weights)
and, for reference, from the full patterns (amplitude loss noiseless, Poisson
with counts); Adam lr 0.05, full batch, ``--epochs`` epochs. Prints the phase
correlation with the truth and the FSC (``stemdask.metrics`` via
``stemdask.ptycho.compare.registered_fsc``, rings of the registered scanned
region) at MoS2's lattice frequencies {100}, {110}, {200}, {210}, with the
half-bit threshold, and the ratio compressed / uncompressed.

``--masks-from`` says where the ``data`` (and ``pca``) masks' patterns come
from: ``same``, the compressed scan itself (what ``make_basis(data, ...)``
does), or ``prior:DOSE``, a separate acquisition recorded before it, as
Diederichs et al. did ("masks generated from diffraction patterns generated
before the main acquisition"): the same specimen region scanned coarsely
(10 x 10 positions at 1.0 Å, so offset by 0.25 Å from the main scan's
positions) at ``DOSE`` e/pattern (``inf`` noiseless, ``same`` the main
scan's dose) with its own noise seed, passed as
``make_basis(data, ..., samples=prior)``. ``--paper-weights`` adds a run
with the Eq. 13 weights of the paper's Fig. 5 m-p (Table 1: main 6.3e-2,
L_perp bright 5e-5, dark 5e-4, edge 5e-2), scaled to main = 1.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np
import xarray as xr

from stemdask.compression import bases, compress
from stemdask.ptycho import reconstruct
from stemdask.ptycho.compare import registered_fsc
from stemdask.simulate import samples, simulate_4dstem

#: MoS2 lattice constant (Å) of samples.mos2
A_MOS2 = 3.16
#: the in-plane reflections (h, k) of the hexagonal lattice whose rings are reported
REFLECTIONS = ((1, 0), (1, 1), (2, 0), (2, 1))
#: the paper's Table 1 weights for Fig. 5 m)-p) (data basis, 15 + 1), relative to the main term
PAPER_WEIGHTS = {"coefficients": 1.0, "perp_bf": 5e-5 / 6.3e-2, "perp_df": 5e-4 / 6.3e-2, "edge": 5e-2 / 6.3e-2}
#: the prior scan: coarse positions over the main scan's area, its own noise seed
PRIOR_SCAN = {"scan_shape": (10, 10), "scan_step_A": 1.0, "seed": 1}


def lattice_frequencies(a_A: float = A_MOS2) -> dict[str, float]:
    """Spatial frequencies (1/Å) of the hexagonal lattice's rings: 2/(a√3) √(h² + hk + k²)."""
    return {f"{{{h}{k}0}}": 2 / (a_A * math.sqrt(3)) * math.sqrt(h * h + h * k + k * k) for h, k in REFLECTIONS}


def scored(result: xr.Dataset, truth_phase: xr.DataArray) -> xr.Dataset:
    """FSC of the reconstruction's summed phase with the truth on the scanned region."""
    region = (
        float(result.position_y.min()),
        float(result.position_y.max()),
        float(result.position_x.min()),
        float(result.position_x.max()),
    )
    return registered_fsc(result.phase_total, truth_phase, region_A=region)


def simulate(dose: float | None, scan_shape=(20, 20), scan_step_A=0.5, seed=0):
    """The MoS2 scan of the set-up (lazy data, truth) at ``dose`` e/pattern (None: noiseless)."""
    return simulate_4dstem(
        samples.mos2((4, 4)),
        energy_ev=80e3,
        semiangle_mrad=25,
        scan_shape=scan_shape,
        scan_step_A=scan_step_A,
        detector_shape=32,
        max_angle_mrad=60,
        chunks=(10, 20),
        dose_e_per_pattern=dose,
        seed=seed,
    )


def mask_source(spec: str, dose: float | None, data: xr.DataArray) -> tuple[str, xr.DataArray | None]:
    """``same`` (None: the scan itself) or ``prior:DOSE`` (the prior scan) as a label and ``samples``."""
    if spec == "same":
        return "masks from this scan", None
    kind, _, prior_arg = spec.partition(":")
    if kind != "prior" or not prior_arg:
        raise SystemExit(f"--masks-from: {spec!r} is neither 'same' nor 'prior:DOSE'")
    prior_dose = dose if prior_arg == "same" else (None if prior_arg == "inf" else float(prior_arg))
    prior, _ = simulate(prior_dose, **PRIOR_SCAN)
    label = "noiseless" if prior_dose is None else f"at {prior_dose:.0e} e/pattern"
    return f"masks from a prior scan, {label}", prior.persist(scheduler="threads")


def main() -> None:
    import torch

    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--doses", nargs="+", default=["inf", "1e5", "2e4", "1e3"], help="e/pattern, inf: noiseless")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--bases", nargs="+", default=["data:15"], help="BF basis kind:masks (+ 1 DF mask)")
    p.add_argument("--masks-from", nargs="+", default=["same"], help="same, or prior:DOSE (inf, same or a number)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of the patterns drawn for the masks")
    p.add_argument("--paper-weights", action="store_true", help="also the Eq. 13 weights of the paper's Fig. 5 m-p")
    args = p.parse_args()
    rings = lattice_frequencies()
    for dose_arg in args.doses:
        dose = None if dose_arg == "inf" else float(dose_arg)
        data, truth = simulate(dose)
        data = data.persist(scheduler="threads")
        truth_phase = xr.DataArray(
            np.angle(truth.transmission.values).sum(0),
            coords={"y": truth.y.values, "x": truth.x.values},
            dims=("y", "x"),
        )
        runs: dict[str, tuple[xr.Dataset, float, float]] = {}
        t, c = time.perf_counter(), time.process_time()
        full = reconstruct(data, iterations=args.epochs, step=0.05, loss="amplitude" if dose is None else "poisson")
        runs["uncompressed"] = (scored(full, truth_phase), time.perf_counter() - t, time.process_time() - c)
        weights = {"default weights": None, **({"paper's Fig. 5 weights": PAPER_WEIGHTS} if args.paper_weights else {})}
        for spec in args.bases:
            kind, n = spec.split(":")
            sources = args.masks_from if kind in bases.SAMPLED_KINDS else ["same"]
            seeds = args.seeds if kind in bases.SAMPLED_KINDS else [0]
            for source, seed in itertools.product(sources, seeds):
                label, prior = mask_source(source, dose, data)
                basis = bases.make_basis(data, kind, n_bf=int(n), n_df=1, samples=prior, seed=seed)
                packed = compress(data, basis).persist(scheduler="threads")
                for wname, w in weights.items():
                    t, c = time.perf_counter(), time.process_time()
                    res = reconstruct(packed, iterations=args.epochs, step=0.05, compressed_weights=w)
                    name = f"{kind} {basis.sizes['basis'] - 1} BF + 1 DF" + (
                        f" ({label}, draw seed {seed}, {wname})" if kind in bases.SAMPLED_KINDS else f" ({wname})"
                    )
                    runs[name] = (scored(res, truth_phase), time.perf_counter() - t, time.process_time() - c)
        reference = runs["uncompressed"][0]
        for name, (fsc, seconds, cpu) in runs.items():
            cells = []
            for label, q in rings.items():
                ring = fsc.sel(q=q, method="nearest")
                ref = float(reference.fsc.sel(q=q, method="nearest"))
                cells.append(
                    f"{label} q={float(ring.q):.3f}: {float(ring.fsc):.3f} "
                    f"(half-bit {float(ring.half_bit):.3f}, ratio {float(ring.fsc) / ref:.3f})"
                )
            print(
                f"dose={dose_arg} {name}: r={fsc.attrs['r']:.4f}, FSC "
                + "; ".join(cells)
                + f" [{seconds:.1f} s wall, {cpu:.1f} s CPU]",
                flush=True,
            )


if __name__ == "__main__":
    main()
