"""The result of an iterative reconstruction as an xarray Dataset."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from .. import optics
from ..multislice import fft2
from .forward import ModelGeometry, Windows
from .shards import ModelSpec


def _probe_spectrum(probe: Any, spec: ModelSpec) -> np.ndarray:
    if isinstance(probe, dict):
        return optics.probe_fourier(
            spec.geometry.window_px,
            spec.geometry.sampling_A,
            energy_ev=spec.energy_ev,
            semiangle_mrad=spec.semiangle_mrad,
            aberrations=probe,
            dtype=np.complex128,
        )[None]
    return np.asarray(probe)


def result_dataset(
    final: dict[str, Any],
    state: dict[str, Any],
    *,
    geometry: ModelGeometry,
    win: Windows,
    spec: ModelSpec,
    probe_is_aberrations: bool,
    timings: list[tuple[float, float]],
    params: dict[str, Any],
) -> xr.Dataset:
    """Object (per slice and summed), probe modes, positions and loss history of a reconstruction.

    Variables: ``object`` (slice, y, x) complex transmission; ``phase`` and
    ``amplitude`` per slice; ``phase_total`` (sum over slices) and
    ``amplitude_total`` (product); ``probe`` (mode, probe_y, probe_x) in real
    space, centred, ``Σ |ψ|² = 1`` over all modes; ``probe_mode_weight``;
    ``position_y``/``position_x`` (Å, refined when asked, in the detector's
    frame as the object); ``loss`` and ``holdout_loss`` (iteration). The
    object coordinates ``y``, ``x`` are in Å in the frame of the scan
    coordinates (rotated into the detector's frame). Attrs: the parameters,
    ``best_iteration`` (the epoch returned), the refined aberrations and
    the per-step timings (``step_seconds_median``, ``compute_seconds_median``,
    ``overhead_seconds_median``: wall time less the shards' compute — the busiest
    worker's (the sum of its shards') on workers, their sum in this process).
    """
    obj_param = np.asarray(final["object"])
    obj = obj_param if spec.object_kind == "complex" else np.exp(1j * obj_param)
    d = geometry.sampling_A
    y = (win.field_origin_px[0] + np.arange(obj.shape[1])) * d[0]
    x = (win.field_origin_px[1] + np.arange(obj.shape[2])) * d[1]
    probe_k = _probe_spectrum(final["probe"], spec)
    import torch

    probe = np.fft.fftshift(fft2(torch.as_tensor(probe_k), inverse=True).numpy(), axes=(-2, -1))
    my, mx = probe.shape[-2:]
    weights = (np.abs(probe) ** 2).sum((-2, -1))
    corner = win.corners_px + np.array(win.field_origin_px)
    pos = corner * np.array(d) + np.asarray(final["offsets"])
    steps = np.array([t[0] for t in timings]) if timings else np.zeros(1)
    compute = np.array([t[1] for t in timings]) if timings else np.zeros(1)
    attrs = dict(params)
    attrs.update(
        {
            "best_iteration": state.get("best_iteration") if params.get("holdout_fraction") else state["iteration"],
            "sampling_A": list(d),
            "step_seconds_median": float(np.median(steps)),
            "compute_seconds_median": float(np.median(compute)),
            "overhead_seconds_median": float(np.median(steps - compute)),
        }
    )
    if probe_is_aberrations:
        attrs["aberrations"] = dict(final["probe"])
    coords = {
        "slice": np.arange(obj.shape[0]),
        "y": xr.Variable("y", y, {"units": "Å"}),
        "x": xr.Variable("x", x, {"units": "Å"}),
        "mode": np.arange(probe.shape[0]),
        "probe_y": xr.Variable("probe_y", (np.arange(my) - my // 2) * d[0], {"units": "Å"}),
        "probe_x": xr.Variable("probe_x", (np.arange(mx) - mx // 2) * d[1], {"units": "Å"}),
        "position": np.arange(pos.shape[0]),
        "iteration": np.arange(1, len(state["loss"]) + 1),
    }
    data = {
        "object": (("slice", "y", "x"), obj, {"long_name": "transmission function of each slice"}),
        "phase": (("slice", "y", "x"), np.angle(obj), {"units": "rad"}),
        "amplitude": (("slice", "y", "x"), np.abs(obj), {}),
        "phase_total": (("y", "x"), np.angle(obj).sum(0), {"units": "rad", "long_name": "phase summed over slices"}),
        "amplitude_total": (("y", "x"), np.abs(obj).prod(0), {"long_name": "amplitude product over slices"}),
        "probe": (("mode", "probe_y", "probe_x"), probe, {"long_name": "probe modes, sum over modes of sum |ψ|² = 1"}),
        "probe_mode_weight": (("mode",), weights, {}),
        "position_y": (("position",), pos[:, 0], {"units": "Å"}),
        "position_x": (("position",), pos[:, 1], {"units": "Å"}),
        "loss": (("iteration",), np.asarray(state["loss"], dtype=np.float64), {"long_name": "training loss"}),
        "holdout_loss": (("iteration",), np.asarray(state["holdout"], dtype=np.float64), {}),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def plot_loss(result: xr.Dataset, path: str | None = None) -> Any:
    """Plot the loss curve (and the hold-out loss when there is one); save to ``path`` if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(result["iteration"], result["loss"], label="training")
    if float(np.abs(result["holdout_loss"]).sum()) > 0:
        ax2 = ax.twinx()
        ax2.plot(result["iteration"], result["holdout_loss"], "C1", label="held out")
        ax2.set_ylabel("held-out loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"{result.attrs.get('loss', '')} loss")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
