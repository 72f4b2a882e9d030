"""Iterative ptychography (Wirtinger flow / Adam) sharded over the dataset's chunks.

Each chunk of probe positions is a shard (:mod:`stemdask.ptycho.shards`):
built once where it lives (a dask worker, or in this process without a
client), it receives at every step the object patch its windows touch, the
probe and its offsets, and returns its loss and gradients. The driver adds
the gradient patches into the object's gradient in shard order (so any
number of workers gives the same sum, bit for bit), applies the update
(:mod:`stemdask.ptycho.optimizers`) and sends the new patches next step.

Why a gather at the driver and not a tree reduction or an all-reduce: the
update needs the whole object in one place, each shard's gradient is a
patch (not the whole object) and the patches of ``W`` workers arrive in one
hop, so a tree would add hops and an all-reduce would send every worker the
whole object. The per-step overhead (the step's wall time less the busiest
worker's compute, the sum of its shards') and the bytes sent to and received
from the shards per step are measured and returned in the result's attrs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from .. import optics
from ..checks import integer, number
from ..dataset import dask_data, require, validate
from ..errors import MissingCalibrationError, bad_type, bad_value
from ..multislice import fft2
from ..worker_memory import keep_freed_memory
from .checkpoint import load_checkpoint, save_checkpoint
from .compressed import compressed_basis, measured_vectors
from .compressed import regularization as regularization_terms
from .forward import ModelGeometry, initial_modes, model_geometry, positions_in_detector_frame, windows
from .losses import REGIONS, check_loss, detector_regions
from .optimizers import OPTIMIZERS, Optimizer
from .result import result_dataset
from .shards import ModelSpec, load_shard, shard_step

#: default learning rates of Adam for the object, the probe modes, aberrations (Å) and offsets (Å)
ADAM_STEPS = {"object": 1e-2, "probe": 1e-3, "aberrations": 1.0, "offsets": 1e-3}
#: largest change of the object in the first step of gradient descent with step="auto" (Leidl et al. Sec. 3)
FIRST_STEP_CHANGE = 2e-2


def _positions(data: xr.DataArray | xr.Dataset) -> np.ndarray:
    for dim in ("scan_y", "scan_x"):
        if data[dim].attrs.get("units") != "Å":
            raise MissingCalibrationError(
                f"ptychography needs probe positions in Å but {dim} is in {data[dim].attrs.get('units')!r}; "
                "set scan_step_A with stemdask.calibrate(data, scan_step_A=...)"
            )
    y = np.asarray(data["scan_y"].values, dtype=np.float64)
    x = np.asarray(data["scan_x"].values, dtype=np.float64)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    return positions_in_detector_frame(yy.ravel(), xx.ravel(), float(data.attrs.get("scan_rotation_deg", 0.0)))


def _check_detector(data: xr.DataArray | xr.Dataset) -> tuple[float, float]:
    pixel = [float(p) for p in data.attrs["detector_pixel_mrad"]]
    for axis, dim in enumerate(("k_y", "k_x")):
        k = np.asarray(data[dim].values, dtype=np.float64)
        n = k.size
        if data[dim].attrs.get("units") != "mrad":
            raise MissingCalibrationError(f"ptychography needs {dim} in mrad; set detector_pixel_mrad")
        if abs(k[n // 2]) > 1e-6 * pixel[axis]:
            raise bad_value(
                "data",
                f"{dim}[{n // 2}] = {k[n // 2]:.4g} mrad",
                f"the unscattered beam on detector pixel N // 2 = {n // 2} (shift or crop the patterns so it is)",
            )
    return pixel[0], pixel[1]


def _probe_modes(
    probe: Any,
    geometry: ModelGeometry,
    energy_ev: float,
    semiangle_mrad: float | None,
    aberrations: Mapping[str, float] | None,
    n_modes: int,
) -> np.ndarray:
    """Probe modes in Fourier space (K, My, Mx), complex128, from optics or a pixelated probe."""
    import torch

    shape = geometry.window_px
    if probe is None:
        if semiangle_mrad is None:
            raise MissingCalibrationError(
                "ptychography with a probe from the optics needs semiangle_mrad; "
                "set it with stemdask.calibrate(data, semiangle_mrad=...) or pass probe="
            )
        radius = optics.geometric_probe_radius_A(energy_ev, semiangle_mrad, aberrations) + 1.22 * (
            geometry.scan.wavelength_A / (semiangle_mrad * 1e-3)
        )
        window = min(geometry.scan.window_A)
        if 2 * radius > 0.9 * window:
            raise bad_value(
                "aberrations",
                dict(aberrations or {}),
                f"a probe smaller than the object window: it is about {2 * radius:.3g} Å across but the "
                f"window (λ / detector pixel) is {window:.3g} Å; bin the detector less or reduce the defocus",
            )
        pk = optics.probe_fourier(
            shape,
            geometry.sampling_A,
            energy_ev=energy_ev,
            semiangle_mrad=semiangle_mrad,
            aberrations=aberrations,
            dtype=np.complex128,
        )
    else:
        arr = np.asarray(probe.values if isinstance(probe, xr.DataArray) else probe)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or not np.iscomplexobj(arr):
            raise bad_value("probe", f"<array {arr.shape} {arr.dtype}>", "a complex (y, x) or (mode, y, x) probe")
        if arr.shape[-2] > shape[0] or arr.shape[-1] > shape[1]:
            raise bad_value(
                "probe",
                f"<array of shape {arr.shape}>",
                f"a probe no larger than the object window {shape} px (set by the detector)",
            )
        if arr.shape[-2:] != shape:
            pad = [(0, 0)] + [((m - n) // 2, m - n - (m - n) // 2) for n, m in zip(arr.shape[-2:], shape)]
            arr = np.pad(arr, pad)
        # centred on pixel (M//2) in real space → spectrum of a probe centred on pixel 0
        pk = np.fft.fft2(np.fft.ifftshift(arr, axes=(-2, -1)), axes=(-2, -1))
        total = np.sum(np.abs(pk) ** 2) / (shape[0] * shape[1])
        pk = pk / np.sqrt(total)
        if pk.shape[0] > 1:
            return pk.astype(np.complex128)
    return initial_modes(torch.as_tensor(np.asarray(pk)), n_modes).numpy().astype(np.complex128)


def reconstruct(
    data: xr.DataArray | xr.Dataset,
    *,
    iterations: int = 20,
    loss: str = "poisson",
    eps: float = 1e-4,
    regions: str = "full",
    n_rings: int = 4,
    optimizer: str = "adam",
    step: float | str | None = None,
    probe_step: float | None = None,
    position_step: float | None = None,
    probe: Any = None,
    aberrations: Mapping[str, float] | None = None,
    refine_probe: str | None = None,
    n_modes: int = 1,
    object_kind: str = "complex",
    n_slices: int = 1,
    slice_thickness_A: float | None = None,
    refine_positions: bool = False,
    batch_size: int | None = None,
    holdout_fraction: float = 0.0,
    seed: int = 0,
    bin_factor: int = 1,
    detector_transpose: bool = False,
    client: Any = None,
    device: str = "cpu",
    double: bool = False,
    checkpoint: str | None = None,
    checkpoint_every: int = 10,
    progress: bool = False,
    padding_px: int = 0,
    compressed_weights: Mapping[str, float] | None = None,
    regularization: Mapping[str, float] | None = None,
) -> xr.Dataset:
    """Reconstruct object and probe from a 4D-STEM dataset by gradient descent on a loss.

    Parameters
    ----------
    data : DataArray (scan_y, scan_x, k_y, k_x)
        Calibrated dataset (``energy_ev``, ``scan_step_A``, ``detector_pixel_mrad``;
        ``semiangle_mrad`` for a probe from the optics). Counts (``units="counts"``)
        are compared with ``dose_e_per_pattern`` × the model's probabilities, or,
        without a dose, with each pattern's total over the probability that the
        vacuum probe lands on the detector (Leidl et al. Sec. 3).
    iterations : int
        Epochs (every position once).
    loss : {"l1", "mse", "amplitude", "poisson"}
        The loss (:mod:`stemdask.ptycho.losses`).
    eps : float
        ε of the Poisson loss.
    regions : {"full", "bf", "bf+rings"}
        Pixels compared: all, the bright field, or the bright field and
        ``n_rings`` dark-field rings (summed).
    optimizer : {"gd", "adam"}
        Fixed-step gradient descent (Wirtinger flow) or Adam.
    step : float or "auto", optional
        Object step: gradient descent's ``μ`` (``"auto"``, the default: the first
        step changes the object by at most ``FIRST_STEP_CHANGE``, then fixed),
        Adam's learning rate (default ``ADAM_STEPS["object"]``).
    probe_step, position_step : float, optional
        Steps of the probe and the offsets (Å).
    probe : array (y, x) or (mode, y, x), optional
        Pixelated complex probe centred on its grid; default from the optics
        (``semiangle_mrad`` and ``aberrations``).
    aberrations : mapping, optional
        Polar aberrations of the optics probe (:mod:`stemdask.optics`).
    refine_probe : {None, "pixelated", "aberrations"}
        Keep the probe fixed, refine its modes pixel by pixel, or refine the
        given aberration coefficients (every key of ``aberrations``).
    n_modes : int
        Probe modes (mixed state), orthogonalised after each update.
    object_kind : {"complex", "phase"}
        Refine the complex transmission or a pure phase.
    n_slices, slice_thickness_A
        Multislice object.
    refine_positions : bool
        Refine the sub-pixel probe positions.
    batch_size : int, optional
        Positions per update (random order per epoch, seeded); None: full batch.
    holdout_fraction : float
        Fraction of positions left out of the gradient; their loss picks the
        epoch returned (early stopping). 0: the last epoch.
    seed : int
        Seed of the hold-out choice and the mini-batch order.
    bin_factor : int
        Model detector pixels per recorded pixel.
    detector_transpose : bool
        The detector's axes are swapped against the scan's.
    client : distributed.Client, optional
        Run the shards on the cluster's workers (their data stay there).
    device : str
        Torch device of the shards ("cpu", "cuda", or "worker": each worker's GPU).
    double : bool
        Compute in float64.
    checkpoint : str, optional
        Zarr path of a checkpoint written every ``checkpoint_every`` epochs; a
        run finds it there and resumes.
    progress : bool
        Show a progress bar with the loss.
    padding_px : int
        Extra object pixels around the scanned field.
    compressed_weights : mapping, optional
        With a compressed dataset as ``data``: the weights of the per-position
        terms of Diederichs et al.'s Eq. 13 (``coefficients``, ``perp_bf``,
        ``perp_df``, ``edge``; :mod:`stemdask.ptycho.compressed`).
    regularization : mapping, optional
        Weights of ``probe_aperture`` (probe power outside the aperture),
        ``tv`` (total variation of the object) and ``phase_l1``, applied on the driver.

    Returns
    -------
    xarray.Dataset
        See :func:`stemdask.ptycho.result.result_dataset`.
    """
    basis = None
    if isinstance(data, xr.Dataset):
        basis = compressed_basis(data, compressed_weights)
        measured = measured_vectors(data)
        measured.attrs = dict(data.attrs)
        if basis.amplitude and data.attrs.get("dose_e_per_pattern") is not None:
            measured.attrs["units"] = "counts"
        det_shape: tuple[int, ...] = (data.sizes["k_y"], data.sizes["k_x"])
    elif isinstance(data, xr.DataArray):
        validate(data)
        measured = data
        det_shape = data.shape[2:]
    else:
        raise bad_type("data", data, "a 4D-STEM DataArray or a compressed Dataset (stemdask.compression)")
    energy_ev, _, _ = require(measured, "energy_ev", "scan_step_A", "detector_pixel_mrad")
    pixel = _check_detector(data)
    loss = check_loss(loss)
    if regions not in REGIONS:
        raise bad_value("regions", regions, f"one of {', '.join(map(repr, REGIONS))}")
    if optimizer not in OPTIMIZERS:
        raise bad_value("optimizer", optimizer, f"one of {', '.join(map(repr, OPTIMIZERS))}")
    if object_kind not in ("complex", "phase"):
        raise bad_value("object_kind", object_kind, "'complex' or 'phase'")
    if refine_probe not in (None, "pixelated", "aberrations"):
        raise bad_value("refine_probe", refine_probe, "None, 'pixelated' or 'aberrations'")
    if refine_probe == "aberrations" and not aberrations:
        raise bad_value("aberrations", aberrations, "the coefficients to refine (e.g. {'defocus': 0.0})")
    if refine_probe == "aberrations" and n_modes != 1:
        raise bad_value("n_modes", n_modes, "1 with an aberration-parameterised probe")
    iterations = integer("iterations", iterations)
    if batch_size is not None:
        batch_size = integer("batch_size", batch_size)
    checkpoint_every = integer("checkpoint_every", checkpoint_every)
    seed = integer("seed", seed, minimum=0)
    holdout_fraction = number("holdout_fraction", holdout_fraction, allow_zero=True)
    if holdout_fraction >= 0.9:
        raise bad_value("holdout_fraction", holdout_fraction, "a fraction in [0, 0.9) of positions to hold out")
    for name, value in (("step", step), ("probe_step", probe_step), ("position_step", position_step)):
        if value is None or (name == "step" and value == "auto"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise bad_value(name, value, "a positive finite step size" + (" or 'auto'" if name == "step" else ""))
    if step == "auto" and optimizer != "gd":
        raise bad_value("step", step, "a number for Adam ('auto' is the gradient-descent rule)")

    if detector_transpose:
        det_shape, pixel = det_shape[::-1], pixel[::-1]
    geometry = model_geometry(
        energy_ev, det_shape, pixel, bin_factor=bin_factor, n_slices=n_slices, slice_thickness_A=slice_thickness_A
    )
    semiangle = data.attrs.get("semiangle_mrad")
    probe_k = _probe_modes(probe, geometry, energy_ev, semiangle, aberrations, n_modes)
    positions = _positions(data)
    win = windows(geometry, positions, padding_px=integer("padding_px", padding_px, minimum=0))

    region_masks = None
    if regions != "full":
        if semiangle is None:
            raise MissingCalibrationError(f"regions={regions!r} needs semiangle_mrad (the bright-field radius)")
        ky, kx = data["k_y"].values, data["k_x"].values
        if detector_transpose:
            ky, kx = kx, ky
        region_masks = detector_regions(ky, kx, semiangle, regions, n_rings)
    spec = ModelSpec(
        geometry=geometry,
        loss=loss,
        eps=float(eps),
        regions=region_masks,
        object_kind=object_kind,
        probe_kind=refine_probe or "fixed",
        refine_positions=bool(refine_positions),
        energy_ev=float(energy_ev),
        semiangle_mrad=float(semiangle or 0.0),
        double=bool(double),
        device=device,
        compressed=basis,
    )
    scale = _counts_scale(measured, probe_k, geometry)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    train = rng.random(len(positions)) >= holdout_fraction
    engine = _Engine(measured, spec, win, scale, train, client, detector_transpose)
    aperture = None
    if regularization and semiangle is not None:
        alpha, _ = optics.polar_angles(geometry.window_px, geometry.sampling_A, energy_ev)
        aperture = np.asarray(alpha <= semiangle * 1e-3)
    regular = (dict(regularization or {}), object_kind, aperture)

    steps = {
        "object": step if step is not None else ("auto" if optimizer == "gd" else ADAM_STEPS["object"]),
        "probe": probe_step or ADAM_STEPS["aberrations" if refine_probe == "aberrations" else "probe"],
        "offsets": position_step or ADAM_STEPS["offsets"],
    }
    state = _initial_state(spec, win, probe_k, aberrations, n_slices)
    opt = Optimizer(optimizer)
    if checkpoint is not None:
        found = load_checkpoint(checkpoint)
        if found is not None:
            state = _state_from_checkpoint(*found, opt)
    try:
        state = _run(
            engine, state, opt, steps, iterations, batch_size, seed, checkpoint, checkpoint_every, progress, regular
        )
    finally:
        engine.close()
    final = state["best"] if holdout_fraction > 0 and state["best"] is not None else state
    result = result_dataset(
        final,
        state,
        geometry=geometry,
        win=win,
        spec=spec,
        probe_is_aberrations=refine_probe == "aberrations",
        timings=engine.timings,
        params={
            "loss": loss,
            "regions": regions,
            "optimizer": optimizer,
            "object_step": state["mu"],
            "iterations": iterations,
            "batch_size": batch_size,
            "holdout_fraction": holdout_fraction,
            "seed": seed,
            "n_modes": int(probe_k.shape[0]),
            "n_slices": n_slices,
            "n_shards": len(engine.blocks),
            "energy_ev": float(energy_ev),
        },
    )
    result.attrs.update(engine.traffic_attrs())
    return result


def _counts_scale(data: xr.DataArray, probe_k: np.ndarray, geometry: ModelGeometry) -> np.ndarray:
    """Counts per unit model probability of each pattern (Leidl et al. Sec. 3); 1 for probabilities."""
    n = data.shape[0] * data.shape[1]
    if data.attrs.get("units") != "counts":
        return np.ones(n)
    dose = data.attrs.get("dose_e_per_pattern")
    if dose is not None:
        return np.full(n, float(dose))
    # the recorded counts over the probability that the (vacuum) probe lands on the detector
    iy, ix = geometry.scan.detector_index_px()
    power = (np.abs(probe_k) ** 2).sum(0) / (probe_k.shape[-1] * probe_k.shape[-2])
    on_detector = float(power[iy[:, None], ix[None, :]].sum())
    totals = np.asarray(dask_data(data).sum(axis=(2, 3)).compute(), dtype=np.float64).ravel()
    return totals / on_detector


def _initial_state(
    spec: ModelSpec, win: Any, probe_k: np.ndarray, aberrations: Mapping[str, float] | None, n_slices: int
) -> dict[str, Any]:
    shape = (n_slices, *win.field_shape_px)
    obj = np.ones(shape, np.complex128) if spec.object_kind == "complex" else np.zeros(shape)
    probe: Any = probe_k
    if spec.probe_kind == "aberrations":
        probe = {k: float(v) for k, v in optics.polar_coefficients(aberrations).items() if k in _keys(aberrations)}
    return {
        "iteration": 0,
        "object": obj,
        "probe": probe,
        "offsets": win.offsets_A.copy(),
        "loss": [],
        "holdout": [],
        "mu": None,
        "best": None,
        "best_iteration": None,
    }


def _keys(aberrations: Mapping[str, float] | None) -> set[str]:
    """The polar symbols that ``aberrations`` sets (``defocus`` is ``C10``)."""
    out = set()
    for key in aberrations or {}:
        coeffs = optics.polar_coefficients({key: 1.0})
        out |= {k for k, v in coeffs.items() if v != 0.0}
    return out


class _Engine:
    """The shards, on the workers of a client or in this process, and one gradient step over them."""

    def __init__(
        self,
        data: xr.DataArray,
        spec: ModelSpec,
        win: Any,
        scale: np.ndarray,
        train: np.ndarray,
        client: Any,
        transpose: bool,
    ) -> None:
        import dask

        self.spec, self.client = spec, client
        arr = dask_data(data)
        if any(len(c) != 1 for c in arr.chunks[2:]):
            arr = arr.rechunk({a: -1 for a in range(2, arr.ndim)})
        nx = data.shape[1]
        my, mx = spec.geometry.window_px
        self.blocks: list[tuple[tuple[int, int, int, int], np.ndarray]] = []
        delayed_blocks = arr.to_delayed()
        shards: list[tuple[Any, tuple[Any, ...]]] = []
        y_edges = np.cumsum((0,) + arr.chunks[0])
        x_edges = np.cumsum((0,) + arr.chunks[1])
        for i in range(len(arr.chunks[0])):
            for j in range(len(arr.chunks[1])):
                yy, xx = np.meshgrid(
                    np.arange(y_edges[i], y_edges[i + 1]), np.arange(x_edges[j], x_edges[j + 1]), indexing="ij"
                )
                ids = (yy * nx + xx).ravel()
                corners = win.corners_px[ids]
                box = (
                    int(corners[:, 0].min()),
                    int(corners[:, 0].max()) + my,
                    int(corners[:, 1].min()),
                    int(corners[:, 1].max()) + mx,
                )
                self.blocks.append((box, ids))
                args = (len(shards), ids, corners, box, scale[ids], train[ids], spec, transpose)
                shards.append((delayed_blocks[(i, j) + (0,) * (arr.ndim - 2)], args))
        self.timings: list[tuple[float, float]] = []
        self.traffic: list[tuple[int, int]] = []
        #: per step: CPU seconds of the shard steps (this thread's; on a cluster the busiest worker's)
        self.cpu: list[float] = []
        self.data_bytes = int(np.prod(arr.shape)) * (8 if spec.double else 4)
        if client is None:
            self.shards: list[Any] = [load_shard(np.asarray(dask.compute(b)[0]), *args) for b, args in shards]
        else:
            tasks = [dask.delayed(load_shard, pure=False)(b, *args) for b, args in shards]
            # futures: each shard stays on its worker; lost with a worker, it is rebuilt from the store
            self.shards = client.compute(tasks)
            # built before the first step (reading the store, importing torch there): not in the step times
            from distributed import wait

            wait(self.shards)

    def step(
        self, obj: np.ndarray, probe: Any, offsets: np.ndarray, batch: np.ndarray | None
    ) -> tuple[float, float, np.ndarray, Any, np.ndarray | None]:
        """Sum of the shards' losses and gradients for the positions ``batch`` (global ids) or all."""
        t0 = time.perf_counter()
        calls = []
        for k, (box, ids) in enumerate(self.blocks):
            local = None
            if batch is not None:
                local = np.nonzero(np.isin(ids, batch))[0]
                if local.size == 0:
                    continue
            patch = self._wire(obj[:, box[0] : box[1], box[2] : box[3]])
            calls.append((k, (patch, self._wire(probe), offsets[ids], self.spec, local)))
        sent = sum(_nbytes(args[:3]) + _nbytes(args[4]) for _, args in calls)
        if self.client is None:
            results = []
            compute, cpu = 0.0, time.thread_time()
            for k, args in calls:
                c0 = time.perf_counter()
                results.append(shard_step(self.shards[k], *args))
                compute += time.perf_counter() - c0  # in turn: the shards' compute adds up
            self.cpu.append(time.thread_time() - cpu)
        else:
            futures = [
                self.client.submit(_timed_step, self.shards[k], *args, key=f"ptycho-shard-step-{k}-{time.time_ns()}")
                for k, args in calls
            ]
            results = self.client.gather(futures)
            # a worker runs its shards in turn: the critical path is the busiest worker's sum
            per_worker: dict[str, float] = {}
            cpu_per_worker: dict[str, float] = {}
            for r in results:
                per_worker[r["worker"]] = per_worker.get(r["worker"], 0.0) + r["seconds"]
                cpu_per_worker[r["worker"]] = cpu_per_worker.get(r["worker"], 0.0) + r["cpu_seconds"]
            compute = max(per_worker.values())
            self.cpu.append(max(cpu_per_worker.values()))
        # the reduction, in shard order whatever the number of workers
        grad_obj = np.zeros_like(obj)
        grad_off = np.zeros_like(offsets) if self.spec.refine_positions else None
        grad_probe: Any = None
        total, holdout = 0.0, 0.0
        for (k, _), r in zip(calls, results):
            box, ids = self.blocks[k]
            grad_obj[:, box[0] : box[1], box[2] : box[3]] += r["object"]
            total += r["loss"]
            holdout += r["holdout"]
            if r["probe"] is not None:
                if isinstance(r["probe"], dict):
                    grad_probe = {n: (grad_probe or {}).get(n, 0.0) + g for n, g in r["probe"].items()}
                else:
                    grad_probe = r["probe"] if grad_probe is None else grad_probe + r["probe"]
            if grad_off is not None and r["offsets"] is not None:
                grad_off[ids] += r["offsets"]
        self.timings.append((time.perf_counter() - t0, compute))
        received = sum(_nbytes((r["object"], r["probe"], r["offsets"])) for r in results)
        self.traffic.append((sent, received))
        return total, holdout, grad_obj, grad_probe, grad_off

    def _wire(self, value: Any) -> Any:
        """An array in the shards' precision (complex64 / float32 unless ``double``): half the bytes to send."""
        if self.spec.double or not isinstance(value, np.ndarray):
            return value
        return value.astype(np.complex64 if np.iscomplexobj(value) else np.float32)

    def traffic_attrs(self) -> dict[str, float]:
        """Median bytes sent to and received from the shards per step, against the data's bytes.

        Also the median over steps of the CPU seconds of the shard steps
        (``compute_cpu_seconds_median``: in this process their sum, on a
        cluster the busiest worker's).
        """
        sent = [t[0] for t in self.traffic] or [0]
        received = [t[1] for t in self.traffic] or [0]
        out = {
            "sent_bytes_per_step_median": float(np.median(sent)),
            "received_bytes_per_step_median": float(np.median(received)),
            "data_bytes": float(self.data_bytes),
        }
        if self.cpu:
            # CPU seconds do not grow when other processes take the cores: a load-independent critical path
            out["compute_cpu_seconds_median"] = float(np.median(self.cpu))
        return out

    def close(self) -> None:
        if self.client is not None:
            for f in self.shards:
                f.release()


def _nbytes(values: Any) -> int:
    """Bytes of the arrays among ``values`` (a tuple of arrays, dicts of floats, None)."""
    if values is None:
        return 0
    if isinstance(values, np.ndarray):
        return int(values.nbytes)
    if isinstance(values, dict):
        return 8 * len(values)
    if isinstance(values, (tuple, list)):
        return sum(_nbytes(v) for v in values)
    return 0


def _timed_step(shard: Any, *args: Any) -> dict[str, Any]:
    """:func:`shard_step` on a worker, timed, with torch's threads matched to the worker's."""
    _match_threads()
    keep_freed_memory()
    t0, c0 = time.perf_counter(), time.thread_time()
    out = shard_step(shard, *args)
    out["seconds"] = time.perf_counter() - t0
    out["cpu_seconds"] = time.thread_time() - c0
    from distributed import get_worker

    out["worker"] = get_worker().address
    return out


def _match_threads() -> None:
    """One torch thread per dask thread on a worker (``OMP_NUM_THREADS`` when set, as dask's nanny sets it).

    Torch's default (every core) on each of a worker's threads, or on each
    of several workers of one machine, oversubscribes the cores.
    """
    import os

    import torch

    want = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)


def _batches(n: int, batch_size: int | None, seed: int, iteration: int) -> list[np.ndarray | None]:
    if batch_size is None:
        return [None]
    order = np.random.default_rng(np.random.SeedSequence([seed, 2, iteration])).permutation(n)
    return [order[i : i + batch_size] for i in range(0, order.size, batch_size)]


def _run(
    engine: _Engine,
    state: dict[str, Any],
    opt: Optimizer,
    steps: dict[str, Any],
    iterations: int,
    batch_size: int | None,
    seed: int,
    checkpoint: str | None,
    checkpoint_every: int,
    progress: bool,
    regular: tuple[dict[str, float], str, np.ndarray | None],
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    n = sum(ids.size for _, ids in engine.blocks)
    bar = tqdm(range(state["iteration"], iterations), disable=not progress, desc="ptychography")
    for it in bar:
        before = {k: _copy(state[k]) for k in ("object", "probe", "offsets")}
        epoch_loss, epoch_holdout = 0.0, 0.0
        for batch in _batches(n, batch_size, seed, it):
            total, holdout, g_obj, g_probe, g_off = engine.step(
                state["object"], state["probe"], state["offsets"], batch
            )
            if any(regular[0].values()):
                value, r_obj, r_probe = regularization_terms(
                    state["object"], state["probe"], regular[0], object_kind=regular[1], aperture=regular[2]
                )
                total += value
                if r_obj is not None:
                    g_obj = g_obj + r_obj
                if r_probe is not None and g_probe is not None:
                    g_probe = g_probe + r_probe
            epoch_loss += total
            epoch_holdout += holdout
            if state["mu"] is None:
                if steps["object"] == "auto":
                    peak = float(np.abs(g_obj).max())
                    state["mu"] = FIRST_STEP_CHANGE / peak if peak > 0 else 1.0
                else:
                    state["mu"] = float(steps["object"])
            state["object"] = opt.update("object", state["object"], g_obj, state["mu"])
            if g_probe is not None:
                if isinstance(g_probe, dict):
                    names = sorted(g_probe)
                    vec = opt.update(
                        "probe",
                        np.array([state["probe"][k] for k in names]),
                        np.array([g_probe[k] for k in names]),
                        steps["probe"],
                    )
                    state["probe"] = {k: float(v) for k, v in zip(names, vec)}
                else:
                    state["probe"] = _orthogonal(opt.update("probe", state["probe"], g_probe, steps["probe"]))
            if g_off is not None:
                state["offsets"] = opt.update("offsets", state["offsets"], g_off, steps["offsets"])
        state["loss"].append(epoch_loss)
        state["holdout"].append(epoch_holdout)
        state["iteration"] = it + 1
        if state["best"] is None or epoch_holdout < min(state["holdout"][:-1], default=math.inf):
            # this epoch's hold-out loss is that of the state before its updates
            state["best"] = before
            state["best_iteration"] = it
        bar.set_postfix(loss=f"{epoch_loss:.6g}")
        if checkpoint is not None and (state["iteration"] % checkpoint_every == 0 or state["iteration"] == iterations):
            arrays, attrs = _state_to_checkpoint(state, opt)
            save_checkpoint(checkpoint, arrays, attrs)
    return state


def _copy(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else np.array(value, copy=True)


def _orthogonal(modes: np.ndarray) -> np.ndarray:
    """Orthogonalised probe modes (SVD), strongest first; one mode is returned as it is."""
    if modes.shape[0] == 1:
        return modes
    flat = modes.reshape(modes.shape[0], -1)
    _, s, vh = np.linalg.svd(flat, full_matrices=False)
    return (s[:, None] * vh).reshape(modes.shape)


def _state_to_checkpoint(state: dict[str, Any], opt: Optimizer) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays = {"object": state["object"], "offsets": state["offsets"]}
    attrs: dict[str, Any] = {
        "iteration": state["iteration"],
        "loss": state["loss"],
        "holdout": state["holdout"],
        "mu": state["mu"],
        "best_iteration": state["best_iteration"],
    }
    for prefix, part in (("", state), ("best/", state["best"])):
        if part is None:
            continue
        if prefix:
            arrays["best/object"] = part["object"]
            arrays["best/offsets"] = part["offsets"]
        if isinstance(part["probe"], dict):
            attrs[f"{prefix}aberrations"] = part["probe"]
        else:
            arrays[f"{prefix}probe"] = part["probe"]
    for name, value in opt.arrays().items():
        arrays[f"optimizer/{name}"] = value
    return arrays, attrs


def _state_from_checkpoint(arrays: dict[str, np.ndarray], attrs: dict[str, Any], opt: Optimizer) -> dict[str, Any]:
    state: dict[str, Any] = {
        "iteration": int(attrs["iteration"]),
        "object": arrays["object"],
        "offsets": arrays["offsets"],
        "probe": attrs["aberrations"] if "aberrations" in attrs else arrays["probe"],
        "loss": list(attrs["loss"]),
        "holdout": list(attrs["holdout"]),
        "mu": attrs["mu"],
        "best_iteration": attrs["best_iteration"],
        "best": None,
    }
    if "best/object" in arrays:
        state["best"] = {
            "object": arrays["best/object"],
            "offsets": arrays["best/offsets"],
            "probe": attrs["best/aberrations"] if "best/aberrations" in attrs else arrays["best/probe"],
        }
    opt.load({k[len("optimizer/") :]: v for k, v in arrays.items() if k.startswith("optimizer/")})
    return state


def probe_real_space(probe_k: np.ndarray) -> np.ndarray:
    """Probe modes in real space centred on their grid, from their spectra (FFT order)."""
    import torch

    psi = fft2(torch.as_tensor(probe_k), inverse=True).numpy()
    return np.fft.fftshift(psi, axes=(-2, -1))
