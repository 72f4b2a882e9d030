"""Shards of probe positions and the per-shard gradient step that runs where a shard lives.

A shard is one chunk of the dataset (contiguous probe positions): its
recorded patterns as a torch tensor, each position's window on the object
field, the patch of the field those windows cover and the counts scale.
Built once per reconstruction (:func:`load_shard`, a dask task whose result
stays on its worker, or in GPU memory on a dask-cuda worker), then
:func:`shard_step` runs every step: it gets the object patch, the probe
parameters and its positions' offsets, and returns the loss and the
gradients of those (never the data), so the traffic per step is the size of
the object patch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import optics
from .compressed import CompressedBasis, CompressedLoss
from .forward import ModelGeometry, Operators, detector_intensity, exit_spectra, operators, shifted_probes
from .losses import DetectorLoss, Regions, single_slice_gradient


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """What every shard step needs to know besides the arrays (small, sent with each task).

    Attributes
    ----------
    geometry : ModelGeometry
    loss : str
    eps : float
    regions : Regions or None
    object_kind : {"complex", "phase"}
    probe_kind : {"fixed", "pixelated", "aberrations"}
    refine_positions : bool
    energy_ev, semiangle_mrad : float
        For an aberration-parameterised probe.
    double : bool
        float64/complex128 instead of float32/complex64.
    device : str
        Torch device of the shard ("cpu", "cuda:0", ... or "worker": the
        worker's GPU when it has one).
    """

    geometry: ModelGeometry
    loss: str = "poisson"
    eps: float = 1e-4
    regions: Regions | None = None
    object_kind: str = "complex"
    probe_kind: str = "fixed"
    refine_positions: bool = False
    energy_ev: float = 0.0
    semiangle_mrad: float = 0.0
    double: bool = False
    device: str = "cpu"
    compressed: CompressedBasis | None = None


@dataclass
class Shard:
    """Recorded patterns of one chunk of positions and where their windows lie.

    Attributes
    ----------
    index : int
        Shard number (the chunk's place in C order).
    position_ids : (P,) int64 array
        Global (flattened scan) indices of the positions.
    measured : tensor (P, Ny, Nx)
        Recorded patterns (counts or probabilities).
    corners : tensor (P, 2)
        Window corners relative to the patch.
    box : (int, int, int, int)
        The patch ``[y0:y1, x0:x1]`` of the object field.
    scale : tensor (P,)
        Counts per unit probability.
    train : tensor (P,) bool
        Positions that enter the gradient (False: held out for early stopping).
    """

    index: int
    position_ids: np.ndarray
    measured: Any
    corners: Any
    box: tuple[int, int, int, int]
    scale: Any
    train: Any
    nbytes: int = field(default=0)
    #: the fixed probe moved to every position, kept between steps: (fingerprint, tensor (P, K, My, Mx))
    probe_cache: tuple[bytes, Any] | None = field(default=None, repr=False)


#: largest fixed-probe cache kept on one shard (bytes); larger shards shift the probe every step
PROBE_CACHE_BYTES = 2**30


def _device(spec: ModelSpec) -> Any:
    import torch

    if spec.device == "worker":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(spec.device)


@functools.lru_cache(maxsize=8)
def _operators(geometry: ModelGeometry, device: str, double: bool) -> Operators:
    import torch

    return operators(geometry, device=device, dtype=torch.complex128 if double else torch.complex64)


def load_shard(
    block: np.ndarray,
    index: int,
    position_ids: np.ndarray,
    corners_px: np.ndarray,
    box: tuple[int, int, int, int],
    scale: np.ndarray,
    train: np.ndarray,
    spec: ModelSpec,
    transpose: bool = False,
) -> Shard:
    """Make a shard from a chunk ``(cy, cx, Ny, Nx)`` of the dataset (runs on a worker)."""
    import torch

    device = _device(spec)
    rdtype = torch.float64 if spec.double else torch.float32
    # (cy, cx, Ny, Nx) patterns, or (cy, cx, n) vectors of a compressed dataset
    patterns = np.asarray(block).reshape(-1, *block.shape[2:])
    if transpose and patterns.ndim == 3:
        patterns = patterns.transpose(0, 2, 1)
    measured = torch.as_tensor(np.ascontiguousarray(patterns), device=device).to(rdtype)
    corners = np.asarray(corners_px) - np.array([box[0], box[2]])
    return Shard(
        index=int(index),
        position_ids=np.asarray(position_ids),
        measured=measured,
        corners=torch.as_tensor(corners, device=device),
        box=box,
        scale=torch.as_tensor(np.asarray(scale), device=device, dtype=rdtype),
        train=torch.as_tensor(np.asarray(train, dtype=bool), device=device),
        nbytes=int(measured.element_size() * measured.nelement()),
    )


def probe_spectrum(probe_param: Any, spec: ModelSpec, ops: Operators) -> Any:
    """Probe modes ``(K, My, Mx)`` from the probe parameters (a tensor of modes, or aberrations)."""
    import torch

    if spec.probe_kind == "aberrations":
        cdtype = torch.complex128 if spec.double else torch.complex64
        p = optics.probe_fourier(
            spec.geometry.window_px,
            spec.geometry.sampling_A,
            energy_ev=spec.energy_ev,
            semiangle_mrad=spec.semiangle_mrad,
            aberrations=probe_param,
            xp=torch,
            device=ops.ky.device,
            dtype=cdtype,
        )
        return p[None]
    return probe_param


def transmission(object_param: Any, spec: ModelSpec) -> Any:
    """The transmission function from the object parameter (complex, or phase in rad)."""
    import torch

    if spec.object_kind == "phase":
        return torch.polar(torch.ones_like(object_param), object_param)
    return object_param


def shard_step(
    shard: Shard,
    object_patch: np.ndarray,
    probe_param: Any,
    offsets_A: np.ndarray,
    spec: ModelSpec,
    batch: np.ndarray | None = None,
) -> dict[str, Any]:
    """Loss and gradients of one shard (the positions ``batch`` of it, or all).

    Parameters
    ----------
    shard : Shard
    object_patch : array (S, h, w)
        The object parameter on the shard's patch (complex or phase).
    probe_param : array (K, My, Mx) or dict of floats
        Probe modes in Fourier space, or aberration coefficients.
    offsets_A : array (P, 2)
        Sub-pixel offsets of the shard's positions.
    spec : ModelSpec
    batch : int array, optional
        Local indices of the positions of this mini-batch.

    Returns
    -------
    dict
        ``loss`` (float, training positions), ``holdout`` (float, held-out
        positions), ``object`` (gradient patch, numpy, ``∂L/∂O*`` for a complex
        object, ``∂L/∂φ`` for a phase), ``probe`` (gradient or None),
        ``offsets`` (``(P, 2)`` gradient or None).
    """
    import torch

    device = _device(spec)
    ops = _operators(spec.geometry, str(device), spec.double)
    cdtype = torch.complex128 if spec.double else torch.complex64
    rdtype = torch.float64 if spec.double else torch.float32
    criterion: Any = (
        DetectorLoss(spec.loss, spec.regions, spec.eps) if spec.compressed is None else CompressedLoss(spec.compressed)
    )
    pdtype = cdtype if spec.object_kind == "complex" else rdtype
    param = torch.as_tensor(np.asarray(object_patch), device=device).to(pdtype)
    local = np.arange(len(shard.position_ids)) if batch is None else np.asarray(batch, dtype=np.int64)
    sel = torch.as_tensor(local, device=device)
    if batch is None:  # every position: no copies
        measured, corners, scale, train = shard.measured, shard.corners, shard.scale, shard.train
    else:
        measured, corners, scale, train = (shard.measured[sel], shard.corners[sel], shard.scale[sel], shard.train[sel])
    offsets = torch.as_tensor(np.asarray(offsets_A)[local], device=device).to(rdtype)
    bin_factor = spec.geometry.bin_factor

    if spec.probe_kind == "aberrations":
        probe_in: Any = {
            k: torch.tensor(float(v), dtype=torch.float64, requires_grad=True) for k, v in dict(probe_param).items()
        }
    else:
        probe_in = torch.as_tensor(np.asarray(probe_param), device=device).to(cdtype)
        probe_in.requires_grad_(spec.probe_kind == "pixelated")
    closed_form = (
        spec.geometry.n_slices == 1
        and spec.object_kind == "complex"
        and spec.probe_kind == "fixed"
        and not spec.refine_positions
        and spec.compressed is None
    )
    held = ~train
    if closed_form:
        with torch.no_grad():
            probes = _fixed_probes(shard, probe_param, offsets_A, probe_in, ops)
            if batch is not None:
                probes = probes[sel]
            fit = slice(None) if bool(train.all()) else train
            loss, grad = single_slice_gradient(
                param, probes[fit], corners[fit], measured[fit], ops, criterion, scale[fit], bin_factor
            )
            holdout = _holdout(param, probes[held], corners[held], measured[held], scale[held], ops, criterion, spec)
        return {"loss": float(loss), "holdout": holdout, "object": grad.cpu().numpy(), "probe": None, "offsets": None}

    param.requires_grad_(True)
    if spec.refine_positions:
        offsets.requires_grad_(True)
    obj = transmission(param, spec)
    probe_k = probe_spectrum(probe_in, spec, ops)
    probes = shifted_probes(probe_k, offsets, ops)
    model = scale[train, None, None] * detector_intensity(
        exit_spectra(obj, probes[train], corners[train], ops), ops, bin_factor
    )
    loss = criterion(model, measured[train])
    leaves = [param] + _leaves(probe_in, spec) + ([offsets] if spec.refine_positions else [])
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    with torch.no_grad():
        holdout = _holdout(
            obj.detach(), probes[held].detach(), corners[held], measured[held], scale[held], ops, criterion, spec
        )

    def wirtinger(g: Any, like: Any) -> Any:
        # torch's gradient of a complex leaf is 2 ∂L/∂z*; report ∂L/∂z* (real leaves: ∂L/∂x)
        g = torch.zeros_like(like) if g is None else g
        return (g / 2 if g.is_complex() else g).detach().cpu().numpy()

    out: dict[str, Any] = {"loss": float(loss.detach()), "holdout": holdout, "object": wirtinger(grads[0], param)}
    rest = list(grads[1:])
    if spec.probe_kind == "pixelated":
        out["probe"] = wirtinger(rest.pop(0), probe_in)
    elif spec.probe_kind == "aberrations":
        out["probe"] = {k: float(0.0 if g is None else g) for k, g in zip(probe_in, rest[: len(probe_in)])}
        rest = rest[len(probe_in) :]
    else:
        out["probe"] = None
    if spec.refine_positions:
        full = np.zeros((len(shard.position_ids), 2))
        full[local] = wirtinger(rest.pop(0), offsets)
        out["offsets"] = full
    else:
        out["offsets"] = None
    return out


def _fixed_probes(shard: Shard, probe_param: Any, offsets_A: Any, probe_k: Any, ops: Operators) -> Any:
    """The fixed probe moved to every position of the shard ``(P, K, My, Mx)``, computed once and kept.

    The cache is keyed by the bytes of the probe and the offsets, so a new
    probe or new offsets (another reconstruction on the same shard) recompute it.
    Above :data:`PROBE_CACHE_BYTES` the probes are recomputed every step
    instead of kept.
    """
    import hashlib

    n_bytes = len(offsets_A) * probe_k.nelement() * probe_k.element_size()
    if n_bytes > PROBE_CACHE_BYTES:
        import torch

        offsets = torch.as_tensor(np.asarray(offsets_A), device=probe_k.device).to(ops.ky.dtype)
        return shifted_probes(probe_k, offsets, ops)
    key = hashlib.blake2b(np.ascontiguousarray(probe_param).tobytes(), digest_size=16)
    key.update(np.ascontiguousarray(offsets_A).tobytes())
    digest = key.digest()
    if shard.probe_cache is None or shard.probe_cache[0] != digest:
        import torch

        offsets = torch.as_tensor(np.asarray(offsets_A), device=probe_k.device).to(ops.ky.dtype)
        shard.probe_cache = (digest, shifted_probes(probe_k, offsets, ops))
    return shard.probe_cache[1]


def _leaves(probe_in: Any, spec: ModelSpec) -> list[Any]:
    if spec.probe_kind == "pixelated":
        return [probe_in]
    if spec.probe_kind == "aberrations":
        return list(probe_in.values())
    return []


def _holdout(
    obj: Any,
    probes: Any,
    corners: Any,
    measured: Any,
    scale: Any,
    ops: Operators,
    criterion: Any,
    spec: ModelSpec,
) -> float:
    """Loss of the held-out positions (no gradient): the early-stopping criterion."""
    if probes.shape[0] == 0:
        return 0.0
    if spec.object_kind == "phase" and not obj.is_complex():
        obj = transmission(obj, spec)
    model = scale[:, None, None] * detector_intensity(
        exit_spectra(obj, probes, corners, ops), ops, spec.geometry.bin_factor
    )
    return float(criterion(model, measured))
