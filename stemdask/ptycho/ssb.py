"""Single-side-band (SSB) ptychography with aberration correction, distributed over detector pixels.

Pelz et al., IEEE Signal Processing Magazine 39(1), 2022 (Eqs. 1–3), after
Rodenburg et al. (1993). With the probe ``A(k) = |A(k)| exp(-i χ(k))``
(:mod:`stemdask.optics`, abTEM's χ) and a weak object ``T = 1 + t``, the
Fourier transform over the scan of the patterns, ``G(k, K) = F_R→K I(k, R)``
(numpy's sign, ``exp(-2πi K·R)``), is for ``K ≠ 0``::

    G(k, K) = A*(k) A(k - K) t̃(K) + A(k) A*(k + K) t̃*(-K)

(Eq. 2 of the paper, whose sign of the second term follows its own
Fourier convention). In the double-overlap region ``D+(K)`` (``k`` and
``k - K`` in the bright-field disk, ``k + K`` outside) only the first term
is left, in ``D-(K)`` (``k`` and ``k + K`` inside, ``k - K`` outside) only
the second. For a weak phase object (``t = iφ``, ``t̃*(-K) = -t̃(K)``) both
sidebands estimate ``t̃(K)``, the second with the opposite sign::

    D+:  t̃(K) =  G(k, K) A(k) A*(k - K)       (the "right" sideband)
    D-:  t̃(K) = -G(k, K) A*(k) A(k + K)       (the "left" sideband)

which are averaged over the region's pixels (``normalise="overlap"``) or
summed as in Eq. 3 (``normalise="sum"``, divided by the number of
bright-field pixels). Intensities are divided by the mean bright-field
intensity, so the result is the transmission ``T = 1 + F⁻¹{t̃}`` itself;
the phase is ``angle(T)``: a positive projected potential gives a positive
phase, as in :mod:`stemdask.simulate` (``exp(iσV)``). The support of the
regions ends at ``|K| = 2α/λ``: the reconstruction is band-limited to twice
the aperture by construction.

Layout. The binned patterns (:func:`~stemdask.ptycho.preprocess.bright_field`)
are rechunked so that each chunk holds every probe position for a subset of
the bright-field pixels; each chunk is Fourier transformed over the scan on
its worker and only its values on the double-overlap support are kept
(``G`` is zero-weighted elsewhere), with the geometry of every pair
``(k, K)``: ``_Pairs``. Those blocks are persisted on the workers (GPU
memory when the chunks are CuPy arrays) and never gathered; a refocus maps
the reduction over them and tree-sums the ``(scan_y · scan_x)`` partial
spectra. Memory: the full ``G`` of 256² positions × 32² pixels is 512 MiB in
complex64; kept are only the bright-field pixels (π/4 of a disk-sized crop)
and, of those, the pairs in a double-overlap region, at 24 bytes a pair
(value, K index, pixel index, the angle and azimuth of the other disk
point): :attr:`SSB.nbytes` reports it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask
import numba
import numpy as np
import xarray as xr

from ..backend import array_module, to_numpy
from ..checks import integer, number
from ..dataset import SCAN_DIMS, dask_data
from ..errors import bad_value
from ..optics import aberration_function, polar_coefficients
from ..physics import wavelength_A
from .preprocess import bright_field

SIDEBANDS = ("both", "right", "left")
NORMALISATIONS = ("overlap", "sum")

#: target bytes of G per detector chunk (complex64 over the whole scan)
CHUNK_BYTES = 32 * 2**20
#: default upper bound on the number of detector chunks
MAX_CHUNKS = 8


@dataclass
class _Pairs:
    """One detector chunk's share of G on the double-overlap support (right pairs first, then left)."""

    g: Any  # complex G(k, K) of each pair (-G for the left sideband)
    K: Any  # flat index of K on the scan-frequency grid, plus scan_y · scan_x for the left sideband
    k: Any  # index of k among the chunk's pixels
    alpha_q: Any  # scattering angle (rad) of the other disk point k ∓ K
    phi_q: Any  # its azimuth (rad), scan frame
    alpha_k: Any  # the chunk's pixels: angle (rad)
    phi_k: Any  # and azimuth (rad), scan frame
    n_right: int
    bf_sum: float  # Σ_k G(k, 0) over the chunk's pixels

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self.g, self.K, self.k, self.alpha_q, self.phi_q)))

    @property
    def n_pairs(self) -> int:
        return int(self.g.shape[0])


def _build_pairs(
    block: Any,
    ky: np.ndarray,
    kx: np.ndarray,
    Ky: np.ndarray,
    Kx: np.ndarray,
    candidates: np.ndarray,
    k0: float,
    lam: float,
    n_K: int,
) -> _Pairs:
    """FFT one chunk ``(scan_y, scan_x, pixels)`` over the scan and keep its double-overlap pairs."""
    xp = array_module(block)
    ny, nx, p = block.shape
    g = xp.fft.fft2(block, axes=(0, 1)).reshape(ny * nx, p)
    cand = xp.asarray(candidates)
    Ky_c, Kx_c = xp.asarray(Ky), xp.asarray(Kx)
    ky_c, kx_c = xp.asarray(ky)[:, None], xp.asarray(kx)[:, None]
    k2 = k0 * k0
    inside_minus = (ky_c - Ky_c) ** 2 + (kx_c - Kx_c) ** 2 <= k2  # k - K in the disk
    inside_plus = (ky_c + Ky_c) ** 2 + (kx_c + Kx_c) ** 2 <= k2  # k + K in the disk
    parts = []
    for region, sign in ((inside_minus & ~inside_plus, -1.0), (inside_plus & ~inside_minus, 1.0)):
        j, c = xp.nonzero(region)
        qy = ky_c[j, 0] + sign * Ky_c[c]
        qx = kx_c[j, 0] + sign * Kx_c[c]
        K = cand[c]
        # the left sideband's sign is folded into its stored values (-G), its bins follow the right's
        index = K if sign < 0 else K + n_K
        parts.append((sign * -g[K, j], index, j, lam * xp.sqrt(qy * qy + qx * qx), xp.arctan2(qy, qx)))
    right, left = parts
    cat = [xp.concatenate([a, b]) for a, b in zip(right, left)]
    return _Pairs(
        g=cat[0].astype(xp.complex64),
        K=cat[1].astype(xp.int32),
        k=cat[2].astype(xp.int32),
        alpha_q=cat[3].astype(xp.float32),
        phi_q=cat[4].astype(xp.float32),
        alpha_k=(lam * xp.sqrt(ky_c[:, 0] ** 2 + kx_c[:, 0] ** 2)).astype(xp.float32),
        phi_k=xp.arctan2(ky_c[:, 0], kx_c[:, 0]).astype(xp.float32),
        n_right=int(right[0].shape[0]),
        bf_sum=float(g[0].real.sum()),
    )


def _counts(pairs: _Pairs, n_K: int) -> dict[str, Any]:
    """Pairs per K of each sideband (right, then left) and the chunk's bright-field sum (host arrays)."""
    xp = array_module(pairs.K)
    return {
        "counts": to_numpy(xp.bincount(pairs.K, minlength=2 * n_K)).astype(np.int64),
        "bf_sum": pairs.bf_sum,
        "pixels": int(pairs.alpha_k.shape[0]),
        "nbytes": pairs.nbytes,
    }


@numba.njit(cache=True, nogil=True)
def _accumulate(g, K, k, chi_q, chi_k, n_right, out):  # pragma: no cover - compiled
    """``out[K] += G exp(±i (χ(q) - χ(k)))`` over the pairs: one pass (the CPU kernel of :func:`_reduce`)."""
    for i in range(g.shape[0]):
        phase = chi_q[i] - chi_k[k[i]]
        if i >= n_right:
            phase = -phase
        out[K[i]] += g[i] * complex(math.cos(phase), math.sin(phase))


def _reduce(pairs: _Pairs, energy_ev: float, aberrations: dict[str, float], n_K: int) -> Any:
    """Σ over this chunk's pairs of ``G · conj(overlap phase)`` per K: right sums, then left (complex128)."""
    xp = array_module(pairs.g)
    chi_k = aberration_function(pairs.alpha_k, pairs.phi_k, energy_ev, aberrations)
    chi_q = aberration_function(pairs.alpha_q, pairs.phi_q, energy_ev, aberrations)
    # right (D+): t̃ = G A(k) A*(k - K) = G exp(i (χ(k - K) - χ(k))); left (D-): -G exp(i (χ(k) - χ(k + K)))
    if xp is np:
        out = np.zeros(2 * n_K, np.complex128)
        _accumulate(pairs.g, pairs.K, pairs.k, chi_q, chi_k, pairs.n_right, out)
        return out
    phase = chi_q - chi_k[pairs.k]
    phase[pairs.n_right :] *= -1
    # G · exp(i phase) by real arithmetic: a complex exp is several times slower than cos and sin
    c, s = xp.cos(phase), xp.sin(phase)
    gr, gi = pairs.g.real, pairs.g.imag
    real = xp.bincount(pairs.K, weights=gr * c - gi * s, minlength=2 * n_K)
    return real + 1j * xp.bincount(pairs.K, weights=gr * s + gi * c, minlength=2 * n_K)


def _half_plane(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Scan frequencies computed (``K_y > 0``, or ``K_y = 0`` and ``K_x > 0``, by FFT index) and each K's mirror -K.

    ``G(k, -K) = conj G(k, K)`` (real intensities) maps the right sideband at
    ``-K`` onto the left one at ``K``: ``t̃_right(-K) = -conj t̃_left(K)``, so
    half of the plane gives all of it (and half of G is kept).
    """
    ny, nx = shape
    iy, ix = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    my, mx = (-iy) % ny, (-ix) % nx
    mirror = (my * nx + mx).ravel()
    fy, fx = np.fft.fftfreq(ny)[:, None] + 0 * ix, np.fft.fftfreq(nx)[None, :] + 0 * iy
    row_self, col_self = iy == my, ix == mx  # rows 0 and ny/2 (even ny) are their own mirror, likewise columns
    half = (~row_self & (fy > 0)) | (row_self & (fx > 0)) | (row_self & col_self)
    return half.ravel(), mirror


def _full_plane(sums: np.ndarray, half: np.ndarray, mirror: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right and left sideband sums (or counts) on the whole K plane from those on the half plane."""
    n_K = half.size
    right, left = sums[:n_K].copy(), sums[n_K:].copy()
    fill = ~half & half[mirror]
    if np.iscomplexobj(sums):
        right[fill] = -np.conj(sums[n_K:][mirror[fill]])
        left[fill] = -np.conj(sums[:n_K][mirror[fill]])
    else:  # pair counts: D+(-K) is D-(K)
        right[fill] = sums[n_K:][mirror[fill]]
        left[fill] = sums[:n_K][mirror[fill]]
    return right, left


def _tree_sum(parts: list[Any], combine: Any = None, split_every: int = 4) -> Any:
    """A tree of delayed ``combine`` calls over ``parts`` (``split_every`` inputs per node)."""
    node = dask.delayed(combine or _add, pure=False)
    while len(parts) > 1:
        groups = [parts[i : i + split_every] for i in range(0, len(parts), split_every)]
        parts = [node(*g) if len(g) > 1 else g[0] for g in groups]
    return parts[0]


def _add(*arrays: Any) -> Any:
    out = arrays[0]
    for a in arrays[1:]:
        out = out + a
    return out


def _add_counts(*summaries: dict[str, Any]) -> dict[str, Any]:
    return {key: _add(*(s[key] for s in summaries)) for key in summaries[0]}


def _scan_frame(ky: np.ndarray, kx: np.ndarray, rotation_deg: float, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Detector-frame frequencies in the scan frame: ``y -> -y`` when ``flip``, then a rotation (as rotate_com)."""
    t = math.radians(rotation_deg)
    y = -ky if flip else ky
    return math.sin(t) * kx + math.cos(t) * y, math.cos(t) * kx - math.sin(t) * y


class SSB:
    """Direct SSB ptychography whose ``G`` stays on the workers, for fast refocusing.

    Construction pre-processes the data (bright-field crop and binning),
    transforms every detector chunk over the scan and persists the
    double-overlap part of ``G`` on the workers (the threaded scheduler's
    memory, or a distributed cluster's when a client is active). Each
    :meth:`reconstruct` runs only the reduction.

    Parameters
    ----------
    data : xarray.DataArray
        A calibrated stemdask dataset, dense or counted, with ``energy_ev``,
        ``semiangle_mrad``, ``scan_step_A`` and ``detector_pixel_mrad``,
        whose detector holds the bright-field disk. Any chunking.
    rotation_deg : float, optional
        Scan rotation: detector vectors are turned into the scan frame as in
        :func:`~stemdask.imaging.rotate_com` (``y -> -y`` when ``flip``, then
        this rotation). Default: the dataset's ``scan_rotation_deg`` (0).
    flip : bool
        Detector handedness (``y -> -y`` before the rotation).
    sideband : {"both", "right", "left"}
        Default sidebands of :meth:`reconstruct`.
    normalise : {"overlap", "sum"}
        Default normalisation: the mean over each K's double-overlap pixels
        (flat transfer up to 2α), or their sum as in Eq. 3 divided by the
        number of bright-field pixels (transfer = overlap area fraction).
    margin, max_pixels, center
        Pre-processing, see :func:`~stemdask.ptycho.preprocess.bright_field`
        (crop ``±(1 + margin) α``, at most ``max_pixels`` binned pixels a side).
    detector_chunk : int, optional
        Bright-field pixels per chunk; default about 32 MiB of ``G`` per chunk
        but at most 8 chunks.

    Attributes
    ----------
    nbytes : int
        Bytes of ``G`` and its pair geometry kept on the workers.
    full_nbytes : int
        Bytes the full complex64 ``G`` of the binned crop would take.

    Examples
    --------
    >>> from stemdask.simulate import simulate_4dstem, samples
    >>> from stemdask.ptycho import SSB
    >>> data, _ = simulate_4dstem(samples.weak_phase_object((64, 64), sampling_A=0.2), energy_ev=80e3,
    ...                           semiangle_mrad=20, scan_shape=(16, 16), scan_step_A=0.8, scan_origin_A=(0, 0),
    ...                           detector_shape=32, max_angle_mrad=40)
    >>> ssb = SSB(data)
    >>> ssb.reconstruct(defocus_A=0.0)["phase"].shape
    (16, 16)
    """

    def __init__(
        self,
        data: xr.DataArray,
        *,
        rotation_deg: float | None = None,
        flip: bool = False,
        sideband: str = "both",
        normalise: str = "overlap",
        margin: float = 0.25,
        max_pixels: int = 32,
        center: str = "calibrated",
        detector_chunk: int | None = None,
    ) -> None:
        self.sideband = _choice("sideband", sideband, SIDEBANDS)
        self.normalise = _choice("normalise", normalise, NORMALISATIONS)
        if not isinstance(flip, (bool, np.bool_)):
            raise bad_value("flip", flip, "True or False")
        binned = bright_field(data, margin=margin, max_pixels=max_pixels, center=center)
        attrs = binned.attrs
        rotation = float(attrs.get("scan_rotation_deg", 0.0)) if rotation_deg is None else rotation_deg
        rotation = number("rotation_deg", rotation, signed=True, expected="a finite angle in degrees")
        self.energy_ev = float(attrs["energy_ev"])
        self.semiangle_mrad = float(attrs["semiangle_mrad"])
        self.rotation_deg, self.flip = rotation, bool(flip)
        lam = wavelength_A(self.energy_ev)
        k0 = self.semiangle_mrad * 1e-3 / lam
        # bright-field pixels (centres in the disk), frequencies in 1/Å, scan frame
        ky_d = np.asarray(binned.coords["k_y"].values, np.float64)[:, None] * 1e-3 / lam
        kx_d = np.asarray(binned.coords["k_x"].values, np.float64)[None, :] * 1e-3 / lam
        ky_d, kx_d = np.broadcast_arrays(ky_d, kx_d)
        inside = np.flatnonzero((ky_d**2 + kx_d**2).ravel() <= k0 * k0)
        ky, kx = _scan_frame(ky_d.ravel()[inside], kx_d.ravel()[inside], rotation, self.flip)
        ny, nx = (int(binned.sizes[d]) for d in SCAN_DIMS)
        steps = [float(s) for s in attrs["scan_step_A"]]
        self.scan_shape = (ny, nx)
        Ky = np.fft.fftfreq(ny, steps[0])[:, None] + np.zeros((1, nx))
        Kx = np.fft.fftfreq(nx, steps[1])[None, :] + np.zeros((ny, 1))
        self._K_mrad = 1e3 * lam * np.hypot(Ky, Kx)
        self._half, self._mirror = _half_plane((ny, nx))
        n_K = ny * nx
        # K on the half plane inside the support |K| <= 2 k0 (K = 0 carries no phase)
        candidates = np.flatnonzero(((Ky**2 + Kx**2).ravel() <= 4 * k0 * k0 * (1 + 1e-9)) & self._half)
        candidates = candidates[candidates != 0]
        arr = dask_data(binned)
        arr = arr.reshape(ny, nx, -1)[:, :, inside]
        n_pix = inside.size
        if detector_chunk is None:
            # about CHUNK_BYTES of G per chunk, but at most MAX_CHUNKS chunks: every chunk returns a
            # whole (2 · scan_y · scan_x) spectrum to the tree sum, which dominates a refocus of big scans
            detector_chunk = max(1, CHUNK_BYTES // (8 * ny * nx), -(-n_pix // MAX_CHUNKS))
        detector_chunk = integer("detector_chunk", detector_chunk, expected="a positive number of pixels per chunk")
        arr = arr.rechunk({0: -1, 1: -1, 2: detector_chunk})
        bounds = np.cumsum((0, *arr.chunks[2]))
        build = dask.delayed(_build_pairs, pure=True)
        blocks = arr.to_delayed().ravel()
        pairs = [
            build(b, ky[lo:hi], kx[lo:hi], Ky.ravel()[candidates], Kx.ravel()[candidates], candidates, k0, lam, n_K)
            for b, lo, hi in zip(blocks, bounds[:-1], bounds[1:])
        ]
        self._pairs = list(dask.persist(*pairs))
        self._n_K = n_K
        counts = _tree_sum([dask.delayed(_counts, pure=True)(p, n_K) for p in self._pairs], _add_counts)
        summary = dask.compute(counts)[0]
        self._n_right, self._n_left = _full_plane(summary["counts"], self._half, self._mirror)
        self.n_pairs = int(summary["counts"].sum())
        self.n_pixels = int(summary["pixels"])
        self.nbytes = int(summary["nbytes"])
        self.full_nbytes = int(8 * ny * nx * binned.sizes["k_y"] * binned.sizes["k_x"])
        self.detector_shape = (int(binned.sizes["k_y"]), int(binned.sizes["k_x"]))
        self.detector_pixel_mrad = [float(p) for p in attrs["detector_pixel_mrad"]]
        # Σ_k G(k, 0) / (pixels · positions): the mean bright-field intensity of a pixel
        self._intensity = float(summary["bf_sum"]) / max(n_pix * ny * nx, 1)
        self._coords = xr.Coordinates({d: binned.coords[d].variable for d in SCAN_DIMS})
        self._attrs = {k: attrs[k] for k in ("energy_ev", "semiangle_mrad", "scan_step_A") if k in attrs}

    # ------------------------------------------------------------------
    def _sums(self, aberrations: dict[str, float], sideband: str) -> np.ndarray:
        """Σ over every chunk's pairs per K (host complex128), tree-summed on the workers."""
        # pure=False: keys without hashing the arguments (a refocus is never the same computation twice)
        reduce = dask.delayed(_reduce, pure=False)
        parts = [reduce(p, self.energy_ev, aberrations, self._n_K) for p in self._pairs]
        right, left = _full_plane(to_numpy(dask.compute(_tree_sum(parts))[0]), self._half, self._mirror)
        if sideband == "right":
            return right
        if sideband == "left":
            return left
        return right + left

    def _counts_for(self, sideband: str) -> np.ndarray:
        if sideband == "right":
            return self._n_right
        if sideband == "left":
            return self._n_left
        return self._n_right + self._n_left

    def _aberrations(self, defocus_A: float | None, aberrations: Mapping[str, Any] | None) -> dict[str, float]:
        given = dict(aberrations or {})
        if defocus_A is not None:
            given["defocus"] = number("defocus_A", defocus_A, signed=True, expected="a finite defocus in Å")
        return {k: float(v) for k, v in polar_coefficients(given).items()}

    def reconstruct(
        self,
        defocus_A: float | None = None,
        aberrations: Mapping[str, Any] | None = None,
        *,
        sideband: str | None = None,
        normalise: str | None = None,
        lowpass_mrad: float | None = None,
    ) -> xr.Dataset:
        """The object for a probe with these aberrations: the reduction only.

        Parameters
        ----------
        defocus_A : float, optional
            Defocus in Å (abTEM's sign, ``C10 = -defocus``).
        aberrations : mapping, optional
            Polar coefficients (Å, rad) by symbol or abTEM alias, see
            :func:`stemdask.optics.polar_coefficients`; angles in the scan frame.
        sideband : {"both", "right", "left"}, optional
            Default: the constructor's.
        normalise : {"overlap", "sum"}, optional
            Default: the constructor's.
        lowpass_mrad : float, optional
            Keep scan frequencies up to this scattering angle (mrad); the
            support ends at ``2 semiangle_mrad`` anyway.

        Returns
        -------
        xarray.Dataset
            ``object`` (complex transmission ``1 + t``), ``phase`` (rad) and
            ``amplitude`` on the scan grid (``scan_y``, ``scan_x`` in Å).
        """
        sideband = self.sideband if sideband is None else _choice("sideband", sideband, SIDEBANDS)
        normalise = self.normalise if normalise is None else _choice("normalise", normalise, NORMALISATIONS)
        coefficients = self._aberrations(defocus_A, aberrations)
        spectrum = self._spectrum(self._sums(coefficients, sideband), sideband, normalise)
        if lowpass_mrad is not None:
            cut = number("lowpass_mrad", lowpass_mrad, expected="a positive scattering angle in mrad")
            spectrum = np.where(self._K_mrad.ravel() <= cut, spectrum, 0.0)
        obj = 1.0 + np.fft.ifft2(spectrum.reshape(self.scan_shape))
        return self._dataset(obj, coefficients, sideband, normalise)

    def _spectrum(self, sums: np.ndarray, sideband: str, normalise: str) -> np.ndarray:
        counts = self._counts_for(sideband)
        if normalise == "overlap":
            out = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
        else:
            out = sums / max(self.n_pixels, 1)
        return out / self._intensity

    def _dataset(self, obj: np.ndarray, coefficients: dict[str, float], sideband: str, normalise: str) -> xr.Dataset:
        attrs = dict(
            self._attrs,
            aberrations={k: v for k, v in coefficients.items() if v != 0.0},
            sideband=sideband,
            normalise=normalise,
            rotation_deg=self.rotation_deg,
            flip=self.flip,
        )
        dims = SCAN_DIMS
        variables = {
            "object": xr.Variable(dims, obj, {"long_name": "transmission 1 + t (weak object)"}),
            "phase": xr.Variable(dims, np.angle(obj), {"units": "rad", "long_name": "SSB phase"}),
            "amplitude": xr.Variable(dims, np.abs(obj), {"long_name": "SSB amplitude"}),
        }
        # prebuilt Coordinates: building the scan indexes again would cost more than the reduction
        return xr.Dataset(variables, coords=self._coords, attrs=attrs)

    def focal_series(
        self, defoci_A: Sequence[float], aberrations: Mapping[str, Any] | None = None, **options: Any
    ) -> xr.Dataset:
        """:meth:`reconstruct` for each defocus (Å), stacked along ``defocus_A``."""
        values = [number("defoci_A", float(d), signed=True, expected="finite defoci in Å") for d in defoci_A]
        if not values:
            raise bad_value("defoci_A", defoci_A, "at least one defocus in Å")
        parts = [self.reconstruct(d, aberrations, **options) for d in values]
        out = xr.concat([p.drop_attrs(deep=False) for p in parts], dim="defocus_A", combine_attrs="drop")
        out = out.assign_coords(defocus_A=("defocus_A", values, {"units": "Å"}))
        out.attrs = {k: v for k, v in parts[0].attrs.items() if k != "aberrations"}
        return out

    def coherence(self, defocus_A: float | None = None, aberrations: Mapping[str, Any] | None = None) -> float:
        """The fit criterion: ``Σ_K |Σ_pairs G · conj(phase)|² / N(K)`` over both sidebands.

        The least-squares residual of Eq. 2 on the double-overlap data,
        ``Σ |G - t̃(K) A*(k) A(k - K)|²`` minimised over ``t̃``, equals
        ``Σ |G|²`` minus this quantity: the larger it is, the better the
        aberrations explain the measured overlap phases.
        """
        sums = self._sums(self._aberrations(defocus_A, aberrations), "both")
        counts = self._n_right + self._n_left
        return float(np.sum(np.abs(sums[counts > 0]) ** 2 / counts[counts > 0]))

    def fit_aberrations(
        self,
        *,
        defocus_range_A: tuple[float, float] = (-500.0, 500.0),
        astigmatism: bool = True,
    ) -> dict[str, float]:
        """Defocus and twofold astigmatism that minimise the double-overlap residual.

        Criterion: the least-squares residual of the SSB model (Eq. 2) on the
        double-overlap pixels, i.e. the maximum of :meth:`coherence`. It uses
        the data themselves rather than a property of the image (a sharpness
        or variance measure depends on the specimen and rewards noise or
        over-correction), is computed by the same reduction as a
        reconstruction, and is sign-sensitive (a wrong sign of the defocus
        decorrelates the overlap phases).

        Search: a grid over ``defocus_range_A`` with a step of half the
        depth of field ``1 / (λ k0²)``, then Nelder–Mead over (``C10``,
        ``C12 cos 2φ12``, ``C12 sin 2φ12``) from the best grid point.

        Returns
        -------
        dict
            ``{"defocus": Å, "C12": Å, "phi12": rad}`` (``phi12`` in the scan
            frame, in ``(-π/2, π/2]``), to pass as ``aberrations=``.
        """
        from scipy.optimize import minimize

        lo, hi = (float(v) for v in defocus_range_A)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise bad_value("defocus_range_A", defocus_range_A, "(low, high) defoci in Å with low < high")
        lam = wavelength_A(self.energy_ev)
        k0 = self.semiangle_mrad * 1e-3 / lam
        step = 0.5 / (lam * k0 * k0)
        grid = np.arange(lo, hi + 0.5 * step, step)
        scores = [self.coherence(float(d)) for d in grid]
        best = float(grid[int(np.argmax(scores))])
        scale = max(scores)

        def loss(x: np.ndarray) -> float:
            ab = {"C10": -float(x[0])}
            if astigmatism:
                ab.update(C12=float(math.hypot(x[1], x[2])), phi12=0.5 * math.atan2(x[2], x[1]))
            return -self.coherence(None, ab) / scale

        x0 = np.array([best, 0.0, 0.0] if astigmatism else [best])
        simplex = np.vstack([x0] + [x0 + step * np.eye(x0.size)[i] for i in range(x0.size)])
        res = minimize(
            loss, x0, method="Nelder-Mead", options={"initial_simplex": simplex, "xatol": 0.5, "fatol": 1e-6}
        )
        out = {"defocus": float(res.x[0]), "C12": 0.0, "phi12": 0.0}
        if astigmatism:
            out["C12"] = float(math.hypot(res.x[1], res.x[2]))
            out["phi12"] = float(0.5 * math.atan2(res.x[2], res.x[1]))
        return out


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise bad_value(name, value, " or ".join(repr(o) for o in options))
    return str(value)


def ssb(
    data: xr.DataArray, defocus_A: float | None = None, aberrations: Mapping[str, Any] | None = None, **options: Any
) -> xr.Dataset:
    """One SSB reconstruction: ``SSB(data, **options).reconstruct(defocus_A, aberrations)``."""
    return SSB(data, **options).reconstruct(defocus_A, aberrations)


__all__ = ["SSB", "ssb"]
