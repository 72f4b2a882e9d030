"""The loss of a reconstruction from compressed patterns (Diederichs et al. 2024, Eq. 13).

A compressed dataset (``stemdask.compression.compress``, schema in the
compression module) stores per probe position the coefficients
``c_n = <m_n, d>`` of the pattern ``d`` (``√I`` in amplitude mode, ``I`` in
intensity mode) in an orthonormal basis of masks ``m_n``, and the norms
``c⊥`` of what the bright-field and dark-field masks miss (Eq. 11). The
model pattern ``Î`` is projected on the same masks and compared:

``L = w_c Σ_n (ĉ_n - c_n)² + w_bf |ĉ⊥,bf² - c⊥,bf²| + w_df |ĉ⊥,df² - c⊥,df²| + w_edge Σ_{k ∉ BF ∪ DF} Î_k``

with ``ĉ⊥² = Σ_{region} d̂² - Σ_{n ∈ region} ĉ_n²``. The probe-aperture
constraint and the object's total variation and phase l1 norm (the other
terms of Eq. 13) depend on the probe or the whole object, not on a shard:
:func:`regularization` adds them on the driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from ..errors import DatasetContractError, bad_value

#: the weights of Eq. 13 computed per position, and their defaults (the perpendicular
#: terms, squared norms of counts, small as in the paper's Table 1)
COMPRESSED_WEIGHTS = {"coefficients": 1.0, "perp_bf": 1e-3, "perp_df": 1e-3, "edge": 1.0}
#: the driver-side terms of Eq. 13 (and their defaults: off)
REGULARIZATION = {"probe_aperture": 0.0, "tv": 0.0, "phase_l1": 0.0}
#: the variables a compressed dataset must hold
REQUIRED = ("coefficients", "c_perp_bf", "c_perp_df", "masks", "bf_region", "df_region", "basis_region")
#: floor under the square root of a model intensity (amplitude mode)
FLOOR = 1e-12


@dataclass(frozen=True, eq=False)
class CompressedBasis:
    """Masks and regions of a compressed dataset (numpy; small, sent with each step).

    Attributes
    ----------
    masks : (n, Ny, Nx) float64
    in_bf : (n,) bool
        Masks of the bright-field region (else dark field).
    bf, df : (Ny, Nx) bool
    amplitude : bool
        ``d = √I`` (else ``d = I``).
    weights : dict
        Weights of the four per-position terms.
    """

    masks: np.ndarray
    in_bf: np.ndarray
    bf: np.ndarray
    df: np.ndarray
    amplitude: bool
    weights: dict[str, float]


def compressed_basis(ds: xr.Dataset, weights: Mapping[str, float] | None = None) -> CompressedBasis:
    """Check a compressed dataset's basis and return it (InvalidArgumentError when it lacks one)."""
    missing = [name for name in REQUIRED if name not in ds.variables]
    if missing:
        raise DatasetContractError(
            f"a compressed dataset needs its basis and perpendicular norms, but {missing} are missing; "
            "pass the Dataset returned by stemdask.compression.compress (it carries masks, regions and c_perp)"
        )
    mode = ds.attrs.get("compression_mode")
    if mode not in ("amplitude", "intensity"):
        raise bad_value("data.attrs['compression_mode']", mode, "'amplitude' or 'intensity'")
    w = dict(COMPRESSED_WEIGHTS)
    for key, value in (weights or {}).items():
        if key not in COMPRESSED_WEIGHTS:
            raise bad_value("compressed_weights", {key: value}, f"keys among {sorted(COMPRESSED_WEIGHTS)}")
        if not value >= 0:
            raise bad_value(f"compressed_weights[{key!r}]", value, "a non-negative weight")
        w[key] = float(value)
    masks = np.asarray(ds["masks"].transpose("basis", "k_y", "k_x").values, dtype=np.float64)
    return CompressedBasis(
        masks=masks,
        in_bf=np.asarray(ds["basis_region"].values).astype(str) == "bf",
        bf=np.asarray(ds["bf_region"].values, dtype=bool),
        df=np.asarray(ds["df_region"].values, dtype=bool),
        amplitude=mode == "amplitude",
        weights=w,
    )


def measured_vectors(ds: xr.Dataset) -> xr.DataArray:
    """Per position ``[c_0 … c_{n-1}, c⊥,bf, c⊥,df]``: ``(scan_y, scan_x, value)``, lazy when the data are."""
    # the basis coordinates (``basis``, and ``basis_region`` of stemdask.compression.compress) name masks,
    # which the two perpendicular norms appended here are not
    coeff = ds["coefficients"].transpose("scan_y", "scan_x", "basis")
    coeff = coeff.drop_vars([n for n in coeff.coords if "basis" in coeff[n].dims])
    perp = xr.concat([ds["c_perp_bf"], ds["c_perp_df"]], dim="basis").transpose("scan_y", "scan_x", "basis")
    return xr.concat([coeff, perp], dim="basis")


class CompressedLoss:
    """The per-position terms of Eq. 13 for model patterns ``(B, Ny, Nx)`` and measured vectors ``(B, n + 2)``."""

    def __init__(self, basis: CompressedBasis) -> None:
        self.basis = basis

    def __call__(self, model: Any, measured: Any) -> Any:
        import torch

        b = self.basis
        dev, dt = model.device, model.dtype
        masks = torch.as_tensor(b.masks, device=dev, dtype=dt).flatten(1)
        in_bf = torch.as_tensor(b.in_bf, device=dev)
        flat = model.flatten(1)
        d = (flat + FLOOR).sqrt() if b.amplitude else flat
        c = d @ masks.T
        n = masks.shape[0]
        measured = measured.to(dt)
        w = b.weights
        total = w["coefficients"] * ((c - measured[:, :n]) ** 2).sum()
        for key, region, sel, col in (("perp_bf", b.bf, in_bf, n), ("perp_df", b.df, ~in_bf, n + 1)):
            if w[key] == 0:
                continue
            inside = torch.as_tensor(region.ravel(), device=dev)
            perp2 = (d[:, inside] ** 2).sum(1) - (c[:, sel] ** 2).sum(1)
            total = total + w[key] * (perp2 - measured[:, col] ** 2).abs().sum()
        if w["edge"]:
            outside = torch.as_tensor(~(b.bf | b.df).ravel(), device=dev)
            total = total + w["edge"] * flat[:, outside].sum()
        return total


def regularization(
    object_param: np.ndarray,
    probe: Any,
    weights: Mapping[str, float],
    *,
    object_kind: str,
    aperture: np.ndarray | None,
) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    """The driver-side terms of Eq. 13: probe aperture, total variation, phase l1 (values and gradients).

    Returns the value and the Wirtinger gradients of the object (``∂/∂O*``,
    or ``∂/∂φ`` for a phase object) and of the probe modes (or None where a
    weight is 0 or the probe is not pixelated).
    """
    import torch

    w = {**REGULARIZATION, **dict(weights)}
    obj = torch.as_tensor(np.asarray(object_param)).requires_grad_(True)
    t = torch.polar(torch.ones_like(obj), obj) if object_kind == "phase" else obj
    value = torch.zeros((), dtype=torch.float64)
    if w["tv"]:
        # isotropic TV with a small floor (differentiable at flat regions)
        gy = t[:, 1:, :-1] - t[:, :-1, :-1]
        gx = t[:, :-1, 1:] - t[:, :-1, :-1]
        value = value + w["tv"] * (gy.abs() ** 2 + gx.abs() ** 2 + 1e-12).sqrt().sum()
    if w["phase_l1"]:
        phase = obj if object_kind == "phase" else torch.angle(t)
        value = value + w["phase_l1"] * phase.abs().sum()
    grad_obj = None
    if value.requires_grad:
        (g,) = torch.autograd.grad(value, obj)
        grad_obj = (g / 2 if g.is_complex() else g).numpy()
    grad_probe = None
    if w["probe_aperture"] and aperture is not None and isinstance(probe, np.ndarray):
        outside = ~aperture
        m = probe.shape[-1] * probe.shape[-2]
        value = value + w["probe_aperture"] * float((np.abs(probe[:, outside]) ** 2).sum() / m)
        grad_probe = np.where(outside, w["probe_aperture"] * probe / m, 0)
    return float(value.detach()), grad_obj, grad_probe
