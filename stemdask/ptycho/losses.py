"""Losses between model and recorded patterns, with their closed-form Wirtinger gradients.

The four losses of Leidl et al. (Ultramicroscopy 2024, Eqs. 2-5), summed over
pixels and positions, ``Î`` the model and ``I`` the recorded intensity:

* ``"l1"``: ``Σ |Î - I|``
* ``"mse"``: ``Σ (Î - I)²``
* ``"amplitude"``: ``Σ (√Î - √I)²``
* ``"poisson"``: ``Σ Î - I ln(Î + ε)`` (the negative log-likelihood of counts)

Each has the outer factor ``∂L/∂Î`` of the paper's Eqs. 7-10
(:func:`outer_factor`): ``sign(Î - I)`` (Eq. 7 writes half of it, a constant
the step absorbs), ``2 (Î - I)``, ``1 - √I/√Î`` and ``1 - I/(Î + ε)``. The
Wirtinger gradient with respect to the object is that factor carried back
through the model (Eq. 11, :func:`single_slice_gradient` in closed form);
:class:`DetectorLoss` puts the closed-form factor into torch's autograd so
the same factor serves multislice, probe and position gradients.

The loss may see only part of the detector (:func:`detector_regions`): the
bright field pixel by pixel (``"bf"``), or the bright field pixel by pixel and
the dark field as the sums over rings (virtual annular detectors,
``"bf+rings"``), as in the paper's Sec. 4.3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..checks import integer
from ..errors import bad_value

#: the loss names :func:`loss_value` knows
LOSSES: tuple[str, ...] = ("l1", "mse", "amplitude", "poisson")
#: the detector variants of :func:`detector_regions`
REGIONS: tuple[str, ...] = ("full", "bf", "bf+rings")
#: floor of Î under the square root of the amplitude loss (its factor diverges at 0)
AMPLITUDE_FLOOR = 1e-12


def check_loss(loss: str) -> str:
    """``loss`` if it is one of :data:`LOSSES`, else an InvalidArgumentError."""
    if loss not in LOSSES:
        raise bad_value("loss", loss, f"one of {', '.join(map(repr, LOSSES))}")
    return loss


def loss_value(model: Any, measured: Any, loss: str, eps: float = 1e-4) -> Any:
    """The loss ``L(Î, I)`` summed over every element (torch or numpy)."""
    if loss == "l1":
        return abs(model - measured).sum()
    if loss == "mse":
        return ((model - measured) ** 2).sum()
    if loss == "amplitude":
        return ((_sqrt(model + AMPLITUDE_FLOOR) - _sqrt(measured)) ** 2).sum()
    if loss == "poisson":
        return (model - measured * _log(model + eps)).sum()
    raise bad_value("loss", loss, f"one of {', '.join(map(repr, LOSSES))}")


def outer_factor(model: Any, measured: Any, loss: str, eps: float = 1e-4) -> Any:
    """``∂L/∂Î`` element-wise: the factor of Leidl et al.'s Eqs. 7-10."""
    if loss == "l1":
        diff = model - measured
        return diff.sign() if hasattr(diff, "sign") else np.sign(diff)
    if loss == "mse":
        return 2 * (model - measured)
    if loss == "amplitude":
        return 1 - _sqrt(measured) / _sqrt(model + AMPLITUDE_FLOOR)
    if loss == "poisson":
        return 1 - measured / (model + eps)
    raise bad_value("loss", loss, f"one of {', '.join(map(repr, LOSSES))}")


def _sqrt(a: Any) -> Any:
    return a.sqrt() if hasattr(a, "sqrt") else np.sqrt(a)


def _log(a: Any) -> Any:
    return a.log() if hasattr(a, "log") else np.log(a)


@dataclass(frozen=True)
class Regions:
    """Which detector pixels a loss compares, and how.

    Attributes
    ----------
    pixels : (Ny, Nx) bool array
        Pixels compared one by one.
    rings : (n_rings, Ny, Nx) bool array
        Pixels summed into each virtual ring detector (may be empty).
    """

    pixels: np.ndarray
    rings: np.ndarray


def detector_regions(
    k_y_mrad: Any, k_x_mrad: Any, semiangle_mrad: float, variant: str = "full", n_rings: int = 4
) -> Regions:
    """The pixels a loss compares: the whole detector, the bright field, or the bright field and DF rings.

    Parameters
    ----------
    k_y_mrad, k_x_mrad : 1-d arrays
        Detector pixel angles in mrad (the dataset's coordinates).
    semiangle_mrad : float
        Probe semi-angle: the bright field is ``|k| <= semiangle``.
    variant : {"full", "bf", "bf+rings"}
        Which pixels enter the loss.
    n_rings : int
        Rings of equal width from the bright field to the detector's corner
        (``"bf+rings"`` only).
    """
    if variant not in REGIONS:
        raise bad_value("regions", variant, f"one of {', '.join(map(repr, REGIONS))}")
    ky = np.asarray(k_y_mrad, dtype=np.float64)[:, None]
    kx = np.asarray(k_x_mrad, dtype=np.float64)[None, :]
    radius = np.sqrt(ky**2 + kx**2)
    bf = radius <= semiangle_mrad
    empty = np.zeros((0, *radius.shape), dtype=bool)
    if variant == "full":
        return Regions(np.ones_like(bf), empty)
    if variant == "bf":
        return Regions(bf, empty)
    n_rings = integer("n_rings", n_rings)
    edges = np.linspace(semiangle_mrad, radius.max() * (1 + 1e-9), n_rings + 1)
    rings = np.stack([(radius > edges[i]) & (radius <= edges[i + 1]) for i in range(n_rings)])
    return Regions(bf, rings)


class DetectorLoss:
    """A loss over chosen detector regions whose backward pass is the closed-form factor.

    Parameters
    ----------
    loss : str
        One of :data:`LOSSES`.
    regions : Regions, optional
        What to compare (default: every pixel).
    eps : float
        ε of the Poisson loss.
    """

    def __init__(self, loss: str, regions: Regions | None = None, eps: float = 1e-4) -> None:
        self.loss = check_loss(loss)
        self.regions = regions
        if not eps > 0:
            raise bad_value("eps", eps, "a positive number (ε keeps ln(Î + ε) finite)")
        self.eps = float(eps)

    def __call__(self, model: Any, measured: Any) -> Any:
        """The loss of model patterns ``(B, Ny, Nx)`` against recorded ones (a 0-d tensor)."""
        measured = measured.to(model.dtype)
        if self.regions is None:
            return _closed_form(model, measured, self.loss, self.eps)
        import torch

        pixels = torch.as_tensor(self.regions.pixels, device=model.device)
        total = _closed_form(model[:, pixels], measured[:, pixels], self.loss, self.eps)
        if self.regions.rings.shape[0]:
            rings = torch.as_tensor(self.regions.rings, device=model.device, dtype=model.dtype).flatten(1)
            model_rings = model.flatten(1) @ rings.T
            measured_rings = measured.flatten(1) @ rings.T
            total = total + _closed_form(model_rings, measured_rings, self.loss, self.eps)
        return total

    def factor(self, model: Any, measured: Any) -> Any:
        """``∂L/∂Î`` per pixel ``(B, Ny, Nx)`` (rings: the ring's factor on each of its pixels)."""
        measured = measured.to(model.dtype)
        if self.regions is None:
            return outer_factor(model, measured, self.loss, self.eps)
        import torch

        pixels = torch.as_tensor(self.regions.pixels, device=model.device, dtype=model.dtype)
        out = outer_factor(model, measured, self.loss, self.eps) * pixels
        if self.regions.rings.shape[0]:
            rings = torch.as_tensor(self.regions.rings, device=model.device, dtype=model.dtype).flatten(1)
            f = outer_factor(model.flatten(1) @ rings.T, measured.flatten(1) @ rings.T, self.loss, self.eps)
            out = out + (f @ rings).reshape(model.shape)
        return out


def _closed_form(model: Any, measured: Any, loss: str, eps: float) -> Any:
    import torch

    class _Loss(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, m: Any) -> Any:
            ctx.save_for_backward(m)
            return loss_value(m, measured, loss, eps)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            (m,) = ctx.saved_tensors
            return grad * outer_factor(m, measured, loss, eps)

    return _Loss.apply(model)


#: bytes of the exit waves one block of positions works on in :func:`single_slice_gradient`
#: (a few MB: the block's FFTs and element-wise products stay in the CPU's cache)
BLOCK_BYTES = 8 * 2**20


def single_slice_gradient(
    obj: Any,
    probes: Any,
    corners_px: Any,
    measured: Any,
    ops: Any,
    criterion: DetectorLoss,
    scale: Any = 1.0,
    bin_factor: int = 1,
) -> tuple[Any, Any]:
    """Loss and ``∂L/∂O*`` of a single-slice object in closed form (Leidl et al. Eq. 11).

    ``∂L/∂O*(r) = Σ_{R, m} ψ_m*(r - R) · M F⁻¹[B · (s/M) f(Î) · Φ_m]`` with
    ``Φ_m = B F[ψ_m(r - R) O(r)]``, ``Î = s Σ_m |Φ_m|² / M`` on the detector
    and ``f = ∂L/∂Î`` (:meth:`DetectorLoss.factor`), added over the windows.
    Equals half of torch's autograd gradient of a complex tensor.

    The positions are taken in blocks of :data:`BLOCK_BYTES` of exit waves
    (one batched FFT per block, the working set in cache); the windows are
    cut and added back with slices, the detector with its contiguous runs,
    and the band limit and the loss act on the detector pixels only.

    Parameters
    ----------
    obj : complex tensor (1, Fy, Fx)
        Object field.
    probes : complex tensor (B, K, My, Mx)
        Shifted probe modes (:func:`stemdask.ptycho.forward.shifted_probes`).
    corners_px : int tensor (B, 2)
        Window corners.
    measured : tensor (B, Ny, Nx)
        Recorded patterns.
    ops : Operators
        :func:`stemdask.ptycho.forward.operators`.
    criterion : DetectorLoss
        The loss.
    scale : float or tensor (B,)
        Counts per unit probability of each pattern (``Î = s · probability``).
    bin_factor : int
        Model pixels per recorded pixel.

    Returns
    -------
    loss : 0-d tensor
    gradient : complex tensor (1, Fy, Fx)
    """
    import torch

    from .forward import crop_detector, place_detector

    field = obj[0]
    n, k, my, mx = probes.shape
    window = my * mx
    grad = torch.zeros_like(field)
    s_all = torch.as_tensor(scale, dtype=ops.ky.dtype, device=obj.device).reshape(-1)
    s_all = s_all.expand(n) if s_all.numel() == 1 else s_all
    mask = ops.detector_mask
    corners = [(int(c[0]), int(c[1])) for c in torch.as_tensor(corners_px).tolist()]
    block = max(1, BLOCK_BYTES // (k * window * probes.element_size()))
    loss = torch.zeros((), dtype=ops.ky.dtype, device=obj.device)
    for start in range(0, n, block):
        stop = min(n, start + block)
        where = corners[start:stop]
        patch = torch.stack([field[cy : cy + my, cx : cx + mx] for cy, cx in where])
        p = probes[start:stop]
        cut = crop_detector(torch.fft.fft2(p * patch[:, None]), ops) * mask  # Φ on the detector
        s = s_all[start:stop].reshape(-1, 1, 1)
        intensity = (cut.real**2 + cut.imag**2).sum(1) / window
        if bin_factor > 1:
            b, ny, nx = intensity.shape
            intensity = intensity.reshape(b, ny // bin_factor, bin_factor, nx // bin_factor, bin_factor).sum((2, 4))
        model = s * intensity
        loss = loss + criterion(model, measured[start:stop])
        factor = criterion.factor(model, measured[start:stop]) * (s / window)
        if bin_factor > 1:
            factor = factor.repeat_interleave(bin_factor, -2).repeat_interleave(bin_factor, -1)
        # M F⁻¹ B (f Φ): the adjoint of the unnormalised FFT (norm="forward": no 1/M) and the band limit
        back = torch.fft.ifft2(place_detector(cut * (factor * mask)[:, None], ops), norm="forward")
        grad_patch = (p.conj() * back).sum(1)
        for (cy, cx), g in zip(where, grad_patch):
            grad[cy : cy + my, cx : cx + mx] += g
    return loss, grad[None]
