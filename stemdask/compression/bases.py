"""Orthonormal mask bases for lossy compression (Diederichs et al., Sec. 2.2.2 and App. C).

Every builder returns an :class:`xarray.DataArray` ``(basis, k_y, k_x)`` of
float64 masks, orthonormal on the pixel grid (``sum_k m_i[k] m_j[k] =
delta_ij``) and zero outside their region, with coordinates ``basis`` (int),
``basis_region`` (``"bf"``/``"df"`` per mask), the dataset's ``k_y``/``k_x``
(mrad) and the boolean ``bf_region``/``df_region`` of
:func:`~stemdask.compression.regions.detector_regions`. Its attrs say how it
was made: ``basis_kind`` and the builder's parameters (sizes, seed, sampled
positions, source scan).

* :func:`binning`: square tiles of ``size_px`` pixels (cut to the region),
  each scaled to unit l2 norm;
* :func:`zernike`: Zernike polynomials in the **OSA/ANSI** convention (index
  ``j = (n (n + 2) + m) / 2``, normalisation ``sqrt(2 (n + 1) / (1 + delta_m0))``,
  ``m < 0`` the sine terms) on the BF disc, and on the DF annulus the annular
  Zernike polynomials (the circle polynomials of the outer radius made
  orthonormal over the annulus, Mahajan 1981); both orthonormalised on the
  pixel grid by a QR decomposition (Householder: Gram-Schmidt's result,
  numerically stable); ``m0_only`` keeps the azimuthally symmetric ones;
* :func:`data_basis`: patterns sampled at random (seeded) from a scan,
  restricted to the BF and orthonormalised by the same QR, in the order drawn;
* :func:`pca`: principal directions of a random sample (dask's randomised SVD
  for large samples);
* :func:`dark_field_mean`: one DF mask, the mean dark-field signal.

:func:`combine` joins a BF and a DF basis; :func:`make_basis` builds the usual
pairs by name (what ``stemdask compress --basis`` uses), the sampled ones
from the scan itself or from another scan of the same detector
(``samples=``, ``--basis-from``: the paper's patterns recorded before the
acquisition).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..backend import to_numpy
from ..checks import integer
from ..dataset import DETECTOR_DIMS, SCAN_DIMS, dask_data, require_whole_frames
from ..errors import bad_type, bad_value
from .regions import (
    REGIONS,
    detector_regions,
    polar_mrad,
    region_mask,
    require_calibrated_detector,
    require_same_detector_as,
)

#: the Zernike index convention of this module
ZERNIKE_CONVENTION = "OSA/ANSI"
#: a sample whose part orthogonal to the earlier ones is below this fraction of its norm is dependent
RANK_RTOL = 1e-9
#: sample matrices larger than this (values) go through dask's randomised SVD
RANDOMIZED_SVD_VALUES = 2**24
MODES = ("amplitude", "intensity")


# ----------------------------------------------------------------------------
# shared pieces
# ----------------------------------------------------------------------------
def check_mode(mode: Any) -> str:
    """``"amplitude"`` (project sqrt(I)) or ``"intensity"`` (project I)."""
    if mode not in MODES:
        raise bad_value("mode", mode, f"one of {MODES}")
    return str(mode)


def orthonormalise(vectors: np.ndarray, *, name: str = "vectors", rtol: float = RANK_RTOL) -> np.ndarray:
    """Orthonormal rows spanning ``vectors`` ``(n, pixels)``, in their order: a stable Gram-Schmidt.

    A Householder QR of ``vectors.T`` gives Gram-Schmidt's result (row ``i`` is
    the part of vector ``i`` orthogonal to the earlier ones, normalised, signs
    chosen so) without its loss of orthogonality.

    Raises
    ------
    InvalidArgumentError
        Naming ``name`` when the vectors are linearly dependent (rank below
        ``n``), with the dependent rows and the rank.
    """
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] == 0:
        raise bad_value(name, f"<array of shape {v.shape}>", "a non-empty (n, pixels) stack")
    if v.shape[0] > v.shape[1]:
        raise bad_value(name, f"<{v.shape[0]} vectors>", f"at most as many vectors as pixels ({v.shape[1]})")
    q, r = np.linalg.qr(v.T)
    diag = np.diag(r)
    norms = np.linalg.norm(v, axis=1)
    dependent = np.flatnonzero(np.abs(diag) <= rtol * np.maximum(norms, np.finfo(float).tiny))
    if dependent.size:
        rank = int(np.linalg.matrix_rank(v))
        raise bad_value(
            name,
            f"<{v.shape[0]} vectors of rank {rank}>",
            f"linearly independent vectors; numbers {dependent.tolist()[:10]} lie in the span of the earlier ones "
            f"(zero, repeated or too alike): ask for at most {rank} masks, or sample other patterns (another seed)",
        )
    return (q * np.sign(diag)).T


def _basis_array(
    values: np.ndarray, regions: xr.Dataset, labels: Sequence[str], attrs: dict[str, Any], name: str = "basis"
) -> xr.DataArray:
    n = values.shape[0]
    return xr.DataArray(
        np.ascontiguousarray(values, dtype=np.float64),
        dims=("basis", *DETECTOR_DIMS),
        coords={
            "basis": np.arange(n),
            "basis_region": ("basis", np.asarray(list(labels), dtype=str)),
            "k_y": regions.coords["k_y"],
            "k_x": regions.coords["k_x"],
            "bf_region": (DETECTOR_DIMS, regions["bf_region"].values),
            "df_region": (DETECTOR_DIMS, regions["df_region"].values),
        },
        attrs={**attrs, "regions": dict(regions.attrs)},
        name=name,
    )


def _region_pixels(regions: xr.Dataset, region: str, n_masks: int, argument: str) -> np.ndarray:
    mask = region_mask(regions, region)
    count = int(mask.sum())
    if n_masks > count:
        raise bad_value(argument, n_masks, f"at most the {count} pixels of the {region.upper()} region")
    return mask


def _regions_of(data: Any, regions: xr.Dataset | None) -> xr.Dataset:
    require_calibrated_detector(data)
    if regions is None:
        return detector_regions(data)
    if not isinstance(regions, xr.Dataset) or "bf_region" not in regions or "df_region" not in regions:
        raise bad_type("regions", regions, "the xarray.Dataset of stemdask.compression.detector_regions")
    return regions


# ----------------------------------------------------------------------------
# binning
# ----------------------------------------------------------------------------
def _tiles(regions: xr.Dataset, size: int) -> np.ndarray:
    """Tile number ``(k_y, k_x)`` of every pixel for square tiles of ``size`` pixels, a corner at the centre."""
    ky = np.asarray(regions.coords["k_y"].values, dtype=np.float64)
    kx = np.asarray(regions.coords["k_x"].values, dtype=np.float64)
    step_y = abs(float(ky[1] - ky[0])) if ky.size > 1 else 1.0
    step_x = abs(float(kx[1] - kx[0])) if kx.size > 1 else 1.0
    cy, cx = regions.attrs.get("center_mrad", [0.0, 0.0])
    ty = np.floor((ky - cy) / step_y / size + 1e-9).astype(np.int64)
    tx = np.floor((kx - cx) / step_x / size + 1e-9).astype(np.int64)
    return (ty[:, None] - ty.min()) * (tx.max() - tx.min() + 1) + (tx[None, :] - tx.min())


def binning(data: Any, size_px: int, *, region: str = "bf", regions: xr.Dataset | None = None) -> xr.DataArray:
    """Square binning masks of ``size_px`` x ``size_px`` pixels on a region, each of unit l2 norm.

    The tiles are aligned with a corner at the beam centre, cut to the region
    (so the masks do not overlap and are orthonormal) and ordered by the
    distance of their centre from the beam centre.

    Parameters
    ----------
    data : xarray.DataArray
        The calibrated dataset (or its detector coordinates).
    size_px : int
        Tile edge in detector pixels.
    region : {"bf", "df"}
    regions : xarray.Dataset, optional
        From :func:`~stemdask.compression.detector_regions` (default: its defaults).
    """
    regions = _regions_of(data, regions)
    size = integer("size_px", size_px)
    mask = region_mask(regions, region)
    r, _ = polar_mrad(regions)
    tile = _tiles(regions, size)
    ids, inverse, counts = np.unique(tile[mask], return_inverse=True, return_counts=True)
    if ids.size == 0:
        raise bad_value("region", region, "a region with pixels")
    distance = np.bincount(inverse, weights=r[mask]) / counts
    order = np.argsort(distance, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    values = np.zeros((ids.size, mask.size))
    pixels = np.flatnonzero(mask.ravel())
    values[rank[inverse], pixels] = 1.0 / np.sqrt(counts[inverse])
    attrs = {"basis_kind": "binning", "size_px": size, "region": region}
    return _basis_array(values.reshape(ids.size, *mask.shape), regions, [region] * ids.size, attrs, f"binning_{region}")


def binning_size_for(data: Any, n_masks: int, *, region: str = "bf", regions: xr.Dataset | None = None) -> int:
    """The smallest tile size whose :func:`binning` of ``region`` has at most ``n_masks`` masks."""
    regions = _regions_of(data, regions)
    n = integer("n_masks", n_masks)
    mask = region_mask(regions, region)
    largest = max(regions.sizes["k_y"], regions.sizes["k_x"])
    for size in range(1, largest + 1):
        if np.unique(_tiles(regions, size)[mask]).size <= n:
            return size
    return largest


# ----------------------------------------------------------------------------
# Zernike polynomials (OSA/ANSI)
# ----------------------------------------------------------------------------
def osa_index(j: int) -> tuple[int, int]:
    """Radial order ``n`` and azimuthal frequency ``m`` of the OSA/ANSI single index ``j``.

    >>> [osa_index(j) for j in range(6)]
    [(0, 0), (1, -1), (1, 1), (2, -2), (2, 0), (2, 2)]
    """
    j = integer("j", j, minimum=0)
    n = int(math.ceil((-3 + math.sqrt(9 + 8 * j)) / 2))
    m = 2 * j - n * (n + 2)
    return n, m


def zernike_polynomial(n: int, m: int, rho: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """The OSA/ANSI-normalised Zernike polynomial ``Z_n^m(rho, phi)`` on the unit disc (Eqs. 14-16).

    ``Z_n^m = N R_n^|m|(rho) cos(m phi)`` for ``m >= 0`` and ``N R_n^|m| sin(|m| phi)``
    for ``m < 0``, with ``N = sqrt(2 (n + 1) / (1 + delta_m0))``, so that the
    polynomials are orthonormal under the mean over the unit disc.

    >>> float(zernike_polynomial(2, 0, np.array(1.0), np.array(0.0)))
    1.7320508075688772
    """
    n = integer("n", n, minimum=0)
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or abs(m) > n or (n - abs(m)) % 2:
        raise bad_value("m", m, f"an integer with |m| <= n={n} and n - |m| even")
    am = abs(int(m))
    rho = np.asarray(rho, dtype=np.float64)
    radial = np.zeros_like(rho)
    for k in range((n - am) // 2 + 1):
        coef = (-1) ** k * math.factorial(n - k)
        coef /= math.factorial(k) * math.factorial((n + am) // 2 - k) * math.factorial((n - am) // 2 - k)
        radial = radial + coef * rho ** (n - 2 * k)
    norm = math.sqrt(2 * (n + 1) / (1 + (m == 0)))
    angular = np.cos(am * np.asarray(phi)) if m >= 0 else np.sin(am * np.asarray(phi))
    return norm * radial * angular


def zernike_indices(n_masks: int, *, m0_only: bool = False) -> list[tuple[int, int]]:
    """The first ``n_masks`` (n, m) pairs in OSA/ANSI order (only ``m = 0`` when ``m0_only``)."""
    n_masks = integer("n_masks", n_masks)
    if m0_only:
        return [(2 * i, 0) for i in range(n_masks)]
    return [osa_index(j) for j in range(n_masks)]


def zernike(
    data: Any,
    n_masks: int,
    *,
    region: str = "bf",
    m0_only: bool = False,
    regions: xr.Dataset | None = None,
) -> xr.DataArray:
    """Zernike masks on the BF disc, or annular Zernike masks on the DF annulus.

    ``rho`` is the angle over the BF radius (BF) or over the largest angle of
    the DF region (DF, so the annulus is ``eps < rho <= 1`` with ``eps`` the BF
    radius over it). The polynomials of :func:`zernike_indices` are sampled at
    the region's pixel centres and orthonormalised on that grid by QR, in
    index order: on the DF this is the annular Zernike set.

    Parameters
    ----------
    data : xarray.DataArray
        The calibrated dataset (or its detector coordinates).
    n_masks : int
        Number of masks (the first ones in OSA/ANSI order).
    region : {"bf", "df"}
    m0_only : bool
        Only azimuthally symmetric polynomials (``m = 0``).
    regions : xarray.Dataset, optional
        From :func:`~stemdask.compression.detector_regions`.
    """
    regions = _regions_of(data, regions)
    n_masks = integer("n_masks", n_masks)
    mask = _region_pixels(regions, region, n_masks, "n_masks")
    r, phi = polar_mrad(regions)
    radius = float(regions.attrs["bf_radius_mrad"]) if region == "bf" else float(r[mask].max())
    rho, ang = r[mask] / radius, phi[mask]
    indices = zernike_indices(n_masks, m0_only=m0_only)
    samples = np.stack([zernike_polynomial(n, m, rho, ang) for n, m in indices])
    ortho = orthonormalise(samples, name="n_masks")
    values = np.zeros((n_masks, *mask.shape))
    values[:, mask] = ortho
    attrs = {
        "basis_kind": "zernike" if region == "bf" else "annular_zernike",
        "convention": ZERNIKE_CONVENTION,
        "zernike_nm": [list(p) for p in indices],
        "m0_only": bool(m0_only),
        "rho_radius_mrad": radius,
        "region": region,
    }
    return _basis_array(values, regions, [region] * n_masks, attrs, name=f"zernike_{region}")


# ----------------------------------------------------------------------------
# bases from sampled patterns
# ----------------------------------------------------------------------------
def sample_positions(data: xr.DataArray, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` distinct probe positions ``(n, 2)`` (y, x) drawn at random with ``seed``."""
    ny, nx = (int(data.sizes[d]) for d in SCAN_DIMS)
    n = integer("n_samples", n)
    if n > ny * nx:
        raise bad_value("n_samples", n, f"at most the {ny * nx} probe positions of the scan")
    flat = np.random.default_rng(seed).choice(ny * nx, size=n, replace=False)
    return np.stack(np.divmod(flat, nx), axis=1)


def sample_patterns(data: xr.DataArray, positions: np.ndarray, *, mode: str = "amplitude") -> np.ndarray:
    """The patterns at ``positions`` ``(n, k_y, k_x)`` as float64, sqrt(I) in amplitude mode.

    Works on dense and counted data (one frame per task; an event frame is
    densified alone).
    """
    mode = check_mode(mode)
    arr = dask_data(data)
    require_whole_frames(arr, "sampling patterns")
    frames = [arr[int(y) : int(y) + 1, int(x) : int(x) + 1] for y, x in positions]
    values = dask.compute(*frames)
    out = np.stack([np.asarray(to_numpy(np.asarray(v)), dtype=np.float64)[0, 0] for v in values])
    if np.any(out < 0) and mode == "amplitude":
        raise bad_value("data", "<patterns with negative values>", "non-negative intensities for amplitude mode")
    return np.sqrt(out) if mode == "amplitude" else out


def _source(data: xr.DataArray) -> str:
    return str(data.attrs.get("source", data.name or "dataset"))


def require_same_detector(samples: Any, data: xr.DataArray, *, name: str = "samples") -> xr.DataArray:
    """``samples`` when it is a 4D-STEM scan on ``data``'s detector (shape, ``k_y``/``k_x`` and their units).

    Raises
    ------
    InvalidArgumentError
        Naming ``name`` when ``samples`` is not a scan of that detector and
        calibration (a basis drawn from it would not fit ``data``'s pixels).
    """
    if not isinstance(samples, xr.DataArray) or any(d not in samples.dims for d in (*SCAN_DIMS, *DETECTOR_DIMS)):
        raise bad_type(name, samples, "a (scan_y, scan_x, k_y, k_x) xarray.DataArray of the same detector")
    require_calibrated_detector(samples)
    require_same_detector_as(
        name,
        samples,
        data,
        kind="scan",
        shape_expected="a scan of data's",
        coords_expected="data's",
        hint="patterns recorded with the same calibration and beam centre",
    )
    return samples


def data_basis(
    data: xr.DataArray,
    n_masks: int,
    *,
    mode: str = "amplitude",
    seed: int = 0,
    region: str = "bf",
    regions: xr.Dataset | None = None,
) -> xr.DataArray:
    """The data basis: ``n_masks`` patterns drawn at random, restricted to a region, orthonormalised.

    The patterns (sqrt(I) in amplitude mode, as they will be projected) are
    drawn from ``data`` (this scan or a quick prior one of the same
    detector), cut to the region and orthonormalised by QR in the order
    drawn (Diederichs et al., Sec. 2.2.2).

    Raises
    ------
    InvalidArgumentError
        When the drawn patterns are linearly dependent (e.g. empty or repeated
        frames), naming ``n_masks`` and the rank found.
    """
    regions = _regions_of(data, regions)
    n_masks = integer("n_masks", n_masks)
    mask = _region_pixels(regions, region, n_masks, "n_masks")
    positions = sample_positions(data, n_masks, seed=seed)
    samples = sample_patterns(data, positions, mode=mode)[:, mask]
    ortho = orthonormalise(samples, name="n_masks")
    values = np.zeros((n_masks, *mask.shape))
    values[:, mask] = ortho
    attrs = {
        "basis_kind": "data",
        "sample_mode": check_mode(mode),
        "seed": int(seed),
        "positions": positions.tolist(),
        "source": _source(data),
        "region": region,
    }
    return _basis_array(values, regions, [region] * n_masks, attrs, name=f"data_{region}")


def principal_directions(samples: np.ndarray, n: int, *, randomized: bool | None = None, seed: int = 0) -> np.ndarray:
    """The ``n`` leading right singular vectors ``(n, pixels)`` of ``samples`` ``(n_samples, pixels)``.

    Uncentred: the projections are of the patterns themselves, so these
    directions minimise the summed squared residual of the samples. Signs make
    each vector's sum positive (or its largest entry, when the sum is 0).
    ``randomized`` (default: for more than ``RANDOMIZED_SVD_VALUES`` values) uses
    :func:`dask.array.linalg.svd_compressed` on row blocks of the sample.
    """
    x = np.asarray(samples, dtype=np.float64)
    if randomized is None:
        randomized = x.size > RANDOMIZED_SVD_VALUES
    if randomized:
        rows = max(1, min(x.shape[0], 2**22 // max(x.shape[1], 1)))
        _, _, vt_lazy = da.linalg.svd_compressed(
            da.from_array(x, chunks=(rows, -1)), k=n, n_power_iter=4, seed=seed, compute=False
        )
        vt = np.asarray(vt_lazy.compute())
    else:
        vt = np.linalg.svd(x, full_matrices=False)[2][:n]
    sums = vt.sum(axis=1)
    peaks = vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)]
    signs = np.where(np.abs(sums) > 1e-12, np.sign(sums), np.sign(peaks))
    return vt * signs[:, None]


def pca(
    data: xr.DataArray,
    n_masks: int,
    *,
    n_samples: int = 320,
    mode: str = "amplitude",
    seed: int = 0,
    region: str = "bf",
    randomized: bool | None = None,
    regions: xr.Dataset | None = None,
) -> xr.DataArray:
    """A PCA basis: the leading principal directions of ``n_samples`` random patterns on a region.

    ``n_samples`` patterns (320 in the paper's App. C) are drawn as for
    :func:`data_basis`; the masks are the ``n_masks`` leading (uncentred) right
    singular vectors of the sample matrix (see :func:`principal_directions`),
    re-orthonormalised by QR against rounding.
    """
    regions = _regions_of(data, regions)
    n_masks = integer("n_masks", n_masks)
    mask = _region_pixels(regions, region, n_masks, "n_masks")
    n_samples = integer("n_samples", n_samples)
    if n_samples < n_masks:
        raise bad_value("n_samples", n_samples, f"at least n_masks={n_masks} patterns")
    positions = sample_positions(data, n_samples, seed=seed)
    samples = sample_patterns(data, positions, mode=mode)[:, mask]
    rank = int(np.linalg.matrix_rank(samples))
    if rank < n_masks:
        raise bad_value(
            "n_masks", n_masks, f"at most the rank {rank} of the {n_samples} sampled patterns (sample more patterns)"
        )
    vt = principal_directions(samples, n_masks, randomized=randomized, seed=seed)
    ortho = orthonormalise(vt, name="n_masks")
    values = np.zeros((n_masks, *mask.shape))
    values[:, mask] = ortho
    attrs = {
        "basis_kind": "pca",
        "sample_mode": check_mode(mode),
        "seed": int(seed),
        "n_samples": n_samples,
        "centered": False,
        "source": _source(data),
        "region": region,
    }
    return _basis_array(values, regions, [region] * n_masks, attrs, name=f"pca_{region}")


def dark_field_mean(data: Any, *, regions: xr.Dataset | None = None) -> xr.DataArray:
    """One DF mask of unit l2 norm: its coefficient is the mean DF signal times sqrt(pixels)."""
    regions = _regions_of(data, regions)
    mask = region_mask(regions, "df")
    values = (mask / math.sqrt(mask.sum()))[None]
    return _basis_array(values, regions, ["df"], {"basis_kind": "df_mean", "region": "df"}, name="df_mean")


# ----------------------------------------------------------------------------
# combining
# ----------------------------------------------------------------------------
def basis_regions(basis: xr.DataArray) -> xr.Dataset:
    """The regions a basis was built on (its ``bf_region``/``df_region`` coordinates) as a Dataset."""
    if not isinstance(basis, xr.DataArray) or "bf_region" not in basis.coords or "df_region" not in basis.coords:
        raise bad_type("basis", basis, "a (basis, k_y, k_x) DataArray from stemdask.compression.bases")
    bf = np.asarray(basis.coords["bf_region"].values, dtype=bool)
    df = np.asarray(basis.coords["df_region"].values, dtype=bool)
    return xr.Dataset(
        {
            "bf_region": (DETECTOR_DIMS, bf),
            "df_region": (DETECTOR_DIMS, df),
            "unmeasured_region": (DETECTOR_DIMS, ~(bf | df)),
        },
        coords={d: basis.coords[d].variable for d in DETECTOR_DIMS},
        attrs=dict(basis.attrs.get("regions", {})),
    )


def combine(*parts: xr.DataArray) -> xr.DataArray:
    """Join bases of one detector (a BF and a DF part, say) into one basis ``(basis, k_y, k_x)``.

    The parts must share the detector coordinates and regions; their attrs go
    to ``attrs["parts"]`` and ``basis_kind`` joins their kinds with ``+``.
    """
    if not parts:
        raise bad_value("parts", parts, "at least one basis")
    for i, p in enumerate(parts):
        if not isinstance(p, xr.DataArray) or tuple(p.dims) != ("basis", *DETECTOR_DIMS):
            raise bad_type(f"parts[{i}]", p, "a (basis, k_y, k_x) DataArray from stemdask.compression.bases")
        if p.shape[1:] != parts[0].shape[1:] or not all(
            np.array_equal(p.coords[c].values, parts[0].coords[c].values) for c in ("k_y", "k_x", "bf_region")
        ):
            raise bad_value(f"parts[{i}]", f"<basis of detector {p.shape[1:]}>", "the detector and regions of parts[0]")
    values = np.concatenate([p.values for p in parts])
    labels = [str(v) for p in parts for v in p.coords["basis_region"].values]
    regions = basis_regions(parts[0])
    attrs = {
        "basis_kind": "+".join(str(p.attrs.get("basis_kind", "custom")) for p in parts),
        "parts": [{k: v for k, v in p.attrs.items() if k != "regions"} for p in parts],
    }
    return _basis_array(values, regions, labels, attrs)


BASIS_KINDS = ("data", "pca", "zernike", "binning")
#: the kinds whose masks are made from sampled patterns
SAMPLED_KINDS = ("data", "pca")


def make_basis(
    data: xr.DataArray,
    kind: str,
    *,
    n_bf: int = 15,
    n_df: int = 1,
    mode: str = "amplitude",
    seed: int = 0,
    n_samples: int = 320,
    regions: xr.Dataset | None = None,
    samples: xr.DataArray | None = None,
) -> xr.DataArray:
    """A BF basis of ``kind`` plus a DF basis, the way ``stemdask compress`` builds them.

    ``kind`` is ``"data"``, ``"pca"``, ``"zernike"`` or ``"binning"`` (the
    tile size the smallest whose count is at most ``n_bf``, so a binning basis
    may have fewer masks). PCA draws ``n_samples`` patterns (at most the
    scan's). The DF part is :func:`dark_field_mean` for
    ``n_df = 1``; for more, annular Zernike masks (binning tiles for
    ``"binning"``); ``n_df = 0`` stores no DF mask (its norm is still c_perp_df).

    ``samples`` (``"data"`` and ``"pca"`` only) is the scan the patterns are
    drawn from when it is not ``data`` itself: Diederichs et al. make the
    masks from patterns recorded *before* the main acquisition (a quick scan
    of the same or an adjacent area), so a low-dose acquisition need not
    build its masks from its own noisy patterns. It must be recorded on
    ``data``'s detector with ``data``'s calibration (same ``k_y``/``k_x``);
    the regions are ``data``'s (or ``regions``), and the basis attrs name the
    source (``samples_from``: ``"data"`` or ``"samples"``).
    """
    if kind not in BASIS_KINDS:
        raise bad_value("basis", kind, f"one of {BASIS_KINDS}")
    regions = _regions_of(data, regions)
    n_bf = integer("n_bf", n_bf)
    n_df = integer("n_df", n_df, minimum=0)
    if samples is not None and kind not in SAMPLED_KINDS:
        raise bad_value(
            "samples", "<a dataset>", f"None for basis {kind!r} (patterns are sampled only for {SAMPLED_KINDS})"
        )
    source = data if samples is None else require_same_detector(samples, data)
    if kind == "data":
        bf = data_basis(source, n_bf, mode=mode, seed=seed, regions=regions)
    elif kind == "pca":
        positions = int(source.sizes["scan_y"]) * int(source.sizes["scan_x"])
        draw = max(min(integer("n_samples", n_samples), positions), n_bf)
        bf = pca(source, n_bf, n_samples=draw, mode=mode, seed=seed, regions=regions)
    elif kind == "zernike":
        bf = zernike(data, n_bf, regions=regions)
    else:
        bf = binning(data, binning_size_for(data, n_bf, regions=regions), regions=regions)
    if kind in SAMPLED_KINDS:
        bf.attrs["samples_from"] = "data" if samples is None else "samples"
    parts = [bf]
    if n_df == 1:
        parts.append(dark_field_mean(data, regions=regions))
    elif n_df > 1 and kind == "binning":
        parts.append(
            binning(data, binning_size_for(data, n_df, region="df", regions=regions), region="df", regions=regions)
        )
    elif n_df > 1:
        parts.append(zernike(data, n_df, region="df", regions=regions))
    return combine(*parts)


__all__ = [
    "BASIS_KINDS",
    "MODES",
    "REGIONS",
    "SAMPLED_KINDS",
    "ZERNIKE_CONVENTION",
    "binning",
    "basis_regions",
    "binning_size_for",
    "check_mode",
    "combine",
    "dark_field_mean",
    "data_basis",
    "make_basis",
    "orthonormalise",
    "osa_index",
    "pca",
    "principal_directions",
    "require_same_detector",
    "sample_patterns",
    "sample_positions",
    "zernike",
    "zernike_indices",
    "zernike_polynomial",
]
