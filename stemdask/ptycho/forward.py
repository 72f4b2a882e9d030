"""The ptychographic forward model in torch: probe modes → exit waves → detector intensities.

For probe position ``R`` the model is the simulator's (:mod:`stemdask.simulate.stem`):

1. the probe spectrum ``P_m(k)`` of each mode ``m`` (FFT order, unnormalised
   so that ``Σ_m Σ_r |ψ_m|² = 1``) is moved to ``R`` by the phase ramp
   ``exp(-2πi k·δ)``, ``δ`` the sub-pixel place of ``R`` in its window
   (:meth:`stemdask.scan_geometry.ScanGeometry.windows`), and ``ψ_m = F⁻¹ P_m``;
2. the window of the object field at the integer corner of ``R`` is cut from
   each slice and the wave is passed through the slices with
   :func:`stemdask.multislice.multislice_step` (Fresnel propagator times the
   2/3 band limit between slices, the band limit alone after the last);
3. the far-field intensity is the incoherent sum over the modes
   ``Σ_m |B F[t ψ_m]|² / M`` (``M`` the window's pixels, so a pattern is the
   probability per detector pixel), cut to the central detector pixels
   (beam on ``N // 2``) and summed in ``bin × bin`` blocks when the model
   detector is finer than the recorded one.

The detector's flip (its axes transposed against the scan's) and the scan
rotation are handled where they are exact: the data are transposed and the
probe positions are rotated into the detector frame
(:func:`positions_in_detector_frame`), so the object is reconstructed in the
detector's frame and no pattern is interpolated.

Every operation is differentiable (autograd) in the object, the probe
spectrum, the aberration coefficients and the sub-pixel offsets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..checks import integer
from ..errors import bad_value
from ..multislice import fft2, multislice_step, propagation_kernel
from ..optics import bandlimit, spatial_frequencies
from ..scan_geometry import ScanGeometry


@dataclass(frozen=True)
class ModelGeometry:
    """The numbers the forward model needs, from a :class:`ScanGeometry`.

    Attributes
    ----------
    scan : ScanGeometry
        Window, sampling and detector of the (model) detector.
    bin_factor : int
        Model detector pixels per recorded pixel along each axis.
    n_slices : int
        Slices of the object (1: projection approximation).
    slice_thickness_A : float
        Distance between slices in Å (unused for one slice).
    """

    scan: ScanGeometry
    bin_factor: int = 1
    n_slices: int = 1
    slice_thickness_A: float = 0.0

    @property
    def window_px(self) -> tuple[int, int]:
        return self.scan.window_px

    @property
    def sampling_A(self) -> tuple[float, float]:
        assert self.scan.sampling_A is not None
        return self.scan.sampling_A

    @property
    def detector_shape_px(self) -> tuple[int, int]:
        """Recorded detector pixels (the model's divided by ``bin_factor``)."""
        ny, nx = self.scan.detector_shape_px
        return ny // self.bin_factor, nx // self.bin_factor


def model_geometry(
    energy_ev: float,
    detector_shape_px: Sequence[int],
    detector_pixel_mrad: Sequence[float],
    *,
    bin_factor: int = 1,
    n_slices: int = 1,
    slice_thickness_A: float | None = None,
) -> ModelGeometry:
    """The model geometry for a recorded detector (pixels and pixel size in mrad).

    The object sampling follows from the detector's maximum angle
    (``ScanGeometry``); with ``bin_factor > 1`` the model computes patterns
    on a detector ``bin_factor`` times finer and sums them in blocks.
    """
    bin_factor = integer("bin_factor", bin_factor)
    n_slices = integer("n_slices", n_slices)
    if n_slices > 1 and (slice_thickness_A is None or not slice_thickness_A > 0):
        raise bad_value("slice_thickness_A", slice_thickness_A, "a positive thickness in Å for more than one slice")
    ny, nx = (int(n) for n in detector_shape_px)
    max_angle = (ny * detector_pixel_mrad[0] / 2, nx * detector_pixel_mrad[1] / 2)
    scan = ScanGeometry(energy_ev, (ny * bin_factor, nx * bin_factor), max_angle)
    return ModelGeometry(scan, bin_factor, n_slices, float(slice_thickness_A or 0.0))


def positions_in_detector_frame(y_A: np.ndarray, x_A: np.ndarray, scan_rotation_deg: float) -> np.ndarray:
    """Probe positions ``(P, 2)`` (y, x) in Å rotated by the scan rotation into the detector's frame.

    A scan rotated by ``θ`` against the detector moves the probe along
    ``(cos θ, sin θ)`` for a step in x: the object is then reconstructed in the
    detector's frame, where the patterns need no interpolation.
    """
    theta = math.radians(float(scan_rotation_deg))
    c, s = math.cos(theta), math.sin(theta)
    y = np.asarray(y_A, dtype=np.float64)
    x = np.asarray(x_A, dtype=np.float64)
    return np.stack([c * y + s * x, -s * y + c * x], axis=-1)


@dataclass(frozen=True)
class Windows:
    """Where each probe position's window lies on the object field.

    Attributes
    ----------
    field_origin_px : (int, int)
        Pixel of the sampling grid where the object field starts.
    field_shape_px : (int, int)
        Object field size (y, x).
    corners_px : (P, 2) int64 array
        First pixel of each window in the field.
    offsets_A : (P, 2) float64 array
        Probe centre in its window from the corner, in Å.
    """

    field_origin_px: tuple[int, int]
    field_shape_px: tuple[int, int]
    corners_px: np.ndarray
    offsets_A: np.ndarray


def windows(geometry: ModelGeometry, positions_A: np.ndarray, *, padding_px: int = 0) -> Windows:
    """The object field covering every window of ``positions_A`` ``(P, 2)``, and each position's window.

    ``padding_px`` adds pixels around the field (room for position refinement).
    """
    pos = np.asarray(positions_A, dtype=np.float64)
    origin, shape = geometry.scan.field_px(pos[:, 0], pos[:, 1])
    origin = (origin[0] - padding_px, origin[1] - padding_px)
    shape = (shape[0] + 2 * padding_px, shape[1] + 2 * padding_px)
    (cy, cx), (oy, ox) = geometry.scan.windows(pos[:, 0], pos[:, 1], origin)
    return Windows(origin, shape, np.stack([cy, cx], -1), np.stack([oy, ox], -1))


@dataclass
class Operators:
    """Arrays the model reuses at every call (on the model's device)."""

    ky: Any
    kx: Any
    kernel: Any
    mask: Any
    detector_y: Any
    detector_x: Any
    window_y: Any
    window_x: Any
    #: the band limit on the detector pixels ``(Ny, Nx)`` (model detector)
    detector_mask: Any = None
    #: the detector crop as contiguous runs per axis (:meth:`ScanGeometry.detector_runs`)
    detector_runs: tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]] = ([], [])


def operators(geometry: ModelGeometry, *, device: Any = None, dtype: Any = None) -> Operators:
    """Frequencies, propagation kernel, band limit and detector indices as torch tensors."""
    import torch

    cdtype = dtype or torch.complex64
    rdtype = torch.float32 if cdtype == torch.complex64 else torch.float64
    shape, d = geometry.window_px, geometry.sampling_A
    ky, kx = spatial_frequencies(shape, d, torch, device=device, dtype=rdtype)
    kernel = propagation_kernel(
        shape, d, geometry.scan.energy_ev, geometry.slice_thickness_A, torch, device=device, dtype=cdtype
    )
    mask = bandlimit(shape, xp=torch, device=device, dtype=rdtype)
    iy, ix = geometry.scan.detector_index_px()
    detector_y, detector_x = torch.as_tensor(iy, device=device), torch.as_tensor(ix, device=device)
    return Operators(
        ky=ky[:, 0],
        kx=kx[0],
        kernel=kernel,
        mask=mask,
        detector_y=detector_y,
        detector_x=detector_x,
        window_y=torch.arange(shape[0], device=device),
        window_x=torch.arange(shape[1], device=device),
        detector_mask=mask.index_select(0, detector_y).index_select(1, detector_x),
        detector_runs=geometry.scan.detector_runs(),
    )


def shifted_probes(probe_k: Any, offsets_A: Any, ops: Operators) -> Any:
    """Real-space probe modes moved to each offset: ``(B, K, My, Mx)`` from ``probe_k`` ``(K, My, Mx)``.

    ``offsets_A`` ``(B, 2)`` (a tensor that may require grad) are the probe
    centres in their windows (Å); the shift is the exact Fourier phase ramp.
    """
    import torch

    offsets = torch.as_tensor(offsets_A, dtype=ops.ky.dtype, device=ops.ky.device)
    # separable ramps exp(-2πi k_y δ_y) exp(-2πi k_x δ_x), computed in the probe's precision
    ramp_y = torch.polar(torch.ones_like(ops.ky), -2 * math.pi * offsets[:, :1] * ops.ky[None, :])
    ramp_x = torch.polar(torch.ones_like(ops.kx), -2 * math.pi * offsets[:, 1:] * ops.kx[None, :])
    spectra = probe_k[None] * ramp_y[:, None, :, None] * ramp_x[:, None, None, :]
    return fft2(spectra, inverse=True)


def object_windows(obj: Any, corners_px: Any, ops: Operators) -> Any:
    """The window of every position cut from each slice: ``(S, B, My, Mx)`` from ``obj`` ``(S, Fy, Fx)``.

    A gather (differentiable: its adjoint adds the windows' gradients back
    into the field where they overlap).
    """
    import torch

    corners = torch.as_tensor(corners_px, device=obj.device)
    iy = corners[:, 0, None] + ops.window_y[None, :]  # (B, My)
    ix = corners[:, 1, None] + ops.window_x[None, :]  # (B, Mx)
    return obj[:, iy[:, :, None], ix[:, None, :]]


def exit_spectra(obj: Any, probes: Any, corners_px: Any, ops: Operators) -> Any:
    """Band-limited far-field spectra ``B F[ψ_exit]`` ``(B, K, My, Mx)`` (FFT order, unnormalised).

    ``probes`` ``(B, K, My, Mx)`` from :func:`shifted_probes`; ``obj`` the
    transmission of every slice ``(S, Fy, Fx)``.
    """
    patches = object_windows(obj, corners_px, ops)
    psi = probes
    n_slices = patches.shape[0]
    for s in range(n_slices):
        last = s == n_slices - 1
        psi = multislice_step(psi, patches[s][:, None], ops.mask if last else ops.kernel, return_spectrum=last)
    return psi


def crop_detector(spectra: Any, ops: Operators) -> Any:
    """The detector pixels ``(..., Ny, Nx)`` of spectra ``(..., My, Mx)`` (FFT order), beam on ``N // 2``.

    Cut with slices (:attr:`Operators.detector_runs`): at most four
    contiguous blocks, no gather.
    """
    import torch

    runs_y, runs_x = ops.detector_runs
    rows = torch.cat([spectra[..., a:b, :] for _, a, b in runs_y], -2)
    return torch.cat([rows[..., a:b] for _, a, b in runs_x], -1)


def place_detector(values: Any, ops: Operators) -> Any:
    """The adjoint of :func:`crop_detector`: ``values`` ``(..., Ny, Nx)`` on a zero spectrum ``(..., My, Mx)``."""
    import torch

    my, mx = ops.window_y.shape[0], ops.window_x.shape[0]
    full = torch.zeros((*values.shape[:-2], my, mx), dtype=values.dtype, device=values.device)
    runs_y, runs_x = ops.detector_runs
    for dy, ay, by in runs_y:
        for dx, ax, bx in runs_x:
            full[..., ay:by, ax:bx] = values[..., dy : dy + by - ay, dx : dx + bx - ax]
    return full


def detector_intensity(spectra: Any, ops: Operators, bin_factor: int = 1) -> Any:
    """Patterns ``(B, Ny, Nx)``: ``Σ_modes |spectrum|² / M`` on the detector pixels, binned.

    The probability per recorded pixel of an electron of the beam
    (``Σ |ψ|² = 1``).
    """
    window = spectra.shape[-1] * spectra.shape[-2]
    cut = crop_detector(spectra, ops)
    intensity = (cut.real**2 + cut.imag**2).sum(1) / window
    if bin_factor > 1:
        b, ny, nx = intensity.shape
        intensity = intensity.reshape(b, ny // bin_factor, bin_factor, nx // bin_factor, bin_factor).sum((2, 4))
    return intensity


def model_patterns(obj: Any, probe_k: Any, corners_px: Any, offsets_A: Any, ops: Operators, bin_factor: int = 1) -> Any:
    """The forward model: patterns ``(B, Ny, Nx)`` of probe modes ``probe_k`` on object ``obj``.

    Parameters
    ----------
    obj : complex tensor (S, Fy, Fx)
        Transmission function of each slice on the object field.
    probe_k : complex tensor (K, My, Mx)
        Probe modes in Fourier space (FFT order, see :func:`stemdask.optics.probe_fourier`).
    corners_px : int tensor (B, 2)
        Window corners in the field.
    offsets_A : tensor (B, 2)
        Probe centres in the windows (Å).
    ops : Operators
        From :func:`operators`.
    bin_factor : int
        Model pixels per recorded pixel.
    """
    probes = shifted_probes(probe_k, offsets_A, ops)
    return detector_intensity(exit_spectra(obj, probes, corners_px, ops), ops, bin_factor)


def orthogonalize_modes(probe_k: Any) -> Any:
    """Orthogonal probe modes with the same density matrix, strongest first (SVD of the mode matrix).

    The incoherent sum over modes (and so every pattern) is unchanged.
    """
    import torch

    k = probe_k.shape[0]
    flat = probe_k.reshape(k, -1)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    return (s[:, None].to(vh.dtype) * vh).reshape(probe_k.shape)


def initial_modes(probe_k: Any, n_modes: int, *, fraction: float = 0.1) -> Any:
    """``n_modes`` orthogonal modes from one probe: the probe and its x/y-weighted variants.

    The extra modes (the probe times ``x``, ``y``, ``xy``, ... in real space)
    carry ``fraction`` of the intensity in total; the sum over all modes is 1.
    """
    import torch

    n_modes = integer("n_modes", n_modes)
    if n_modes == 1:
        return probe_k[None] if probe_k.ndim == 2 else probe_k[:1]
    base = probe_k if probe_k.ndim == 2 else probe_k[0]
    my, mx = base.shape
    psi = fft2(base, inverse=True)
    y = torch.fft.fftfreq(my, device=base.device).to(base.real.dtype)[:, None] * my
    x = torch.fft.fftfreq(mx, device=base.device).to(base.real.dtype)[None, :] * mx
    powers = [(1, 0), (0, 1), (1, 1), (2, 0), (0, 2), (2, 1), (1, 2), (3, 0), (0, 3)]
    extra = []
    for m in range(n_modes - 1):
        py, px = powers[m % len(powers)]
        extra.append(fft2(psi * (y**py * x**px), inverse=False))
    modes = torch.stack([base, *extra]).reshape(n_modes, -1)
    # QR: orthonormal modes whose first is the given probe (up to the phase of R[0, 0], undone)
    q, r = torch.linalg.qr(modes.T)
    phase = r[0, 0] / r[0, 0].abs()
    total = modes[0].abs().pow(2).sum()
    weights = torch.tensor(
        [1 - fraction] + [fraction / (n_modes - 1)] * (n_modes - 1), device=base.device, dtype=base.real.dtype
    )
    scale = (weights.to(total.dtype) * total).sqrt().to(q.dtype)
    return (q.T * phase * scale[:, None]).reshape(n_modes, my, mx)
