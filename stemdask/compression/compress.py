"""Compress patterns onto an orthonormal basis, and decompress, through the projection engine.

``compress(data, basis)`` is one lazy pass over the data (Diederichs et al.,
Eqs. 8 and 11): per chunk of frames, ``d = sqrt(I)`` (amplitude mode) or
``d = I`` (intensity mode) is projected onto the basis masks by the engine's
forward operator (:meth:`stemdask.imaging.project.MaskWeights.forward`), and
``|d|^2`` onto an indicator mask of each region (``I`` itself in amplitude
mode: an exact integer projection). By Pythagoras the part of ``d`` that the
basis does not capture in a region has norm
``c_perp = sqrt(max(|d_region|^2 - sum_{i in region} c_i^2, 0))``.

The per-block kernel :data:`compress_block` is a :class:`dask.utils.Dispatch`
on the block type, as the engine's ``project_block``: numpy and cupy frames
here (converted a few MiB at a time, never a whole chunk; uint8/uint16
counts by one compiled pass that sums the regions' ``|d|^2`` exactly in
integers, gathers ``d`` on the pixels of the masks that vary over their
region and, where there are masks constant on their region (the mean-DF
mask), sums ``d`` over each region; those masks come from the sums, the
others from the engine's forward operator on the gathered ``d``; the split
is :class:`~stemdask.compression.plan.BasisOperator`), electron-event blocks in
:mod:`stemdask.compression.counted` (sqrt of each frame's per-pixel counts
from the event indices, never a dense frame).

Precision (``precision="mixed"``, the default): ``d`` on the pixels of the
masks that vary over their region (the BF masks) is made in float64 as the
integers are read, and every product, sum and Eq. 11 is float64; only the
whole-frame ``d`` whose region sums give the masks constant on their region
(the mean-DF mask) is made in float32 (and summed in float64). A float32
*product* would not do: its accumulated rounding, ~3e-7 of ``|d|`` per coefficient, is
multiplied by ``|d|^2 / c_perp^2`` in Eq. 11 (errors up to 2.5 % in
``c_perp`` measured, docs/compression.md). ``precision="float64"`` makes that
whole-frame ``d`` in float64 too. ``dtype`` is only the stored dtype.

``decompress(compressed)`` applies the adjoint (:func:`stemdask.imaging.back_project`).
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numba
import numpy as np
import xarray as xr
from dask.utils import Dispatch

from ..backend import array_module, to_numpy
from ..dataset import CALIBRATION_ATTRS, DETECTOR_DIMS, SCAN_DIMS, dask_data, require_whole_frames, validate
from ..errors import bad_type, bad_value
from ..imaging.project import BATCH_BYTES, back_project, block_meta, resolve_dtype, whole_frames
from .bases import basis_regions, check_mode
from .plan import BasisOperator
from .regions import REGIONS, require_calibrated_detector, require_same_detector_as

#: largest |M M^T - I| a basis may have
ORTHONORMAL_ATOL = 1e-6
#: precision of the whole-frame conversion whose region sums give the region-constant masks
PRECISIONS = {"mixed": np.float32, "float64": np.float64}
#: the names every compressed Dataset carries (see COMPRESSED_CONTRACT in the docs)
COMPRESSED_VARS = ("coefficients", "c_perp_bf", "c_perp_df", "masks", "bf_region", "df_region")


# ----------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------
def check_basis(basis: Any, data: xr.DataArray | None = None) -> xr.DataArray:
    """Check a basis ``(basis, k_y, k_x)`` (orthonormal, in its regions, of ``data``'s detector); return it."""
    if not isinstance(basis, xr.DataArray) or tuple(basis.dims) != ("basis", *DETECTOR_DIMS):
        raise bad_type("basis", basis, "a (basis, k_y, k_x) DataArray from stemdask.compression.bases")
    for coord in ("basis_region", "bf_region", "df_region", *DETECTOR_DIMS):
        if coord not in basis.coords:
            raise bad_value("basis", f"<basis without coordinate {coord!r}>", "a basis from stemdask.compression.bases")
    if data is not None:
        require_same_detector_as(
            "basis",
            basis,
            data,
            kind="basis",
            shape_expected="the dataset's",
            coords_expected="the dataset's",
            hint="a basis made for another calibration or beam centre; build it from this dataset",
        )
    values = np.asarray(to_numpy(basis.values), dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise bad_value("basis", "<basis with non-finite weights>", "finite weights")
    labels = [str(v) for v in basis.coords["basis_region"].values]
    if any(label not in REGIONS for label in labels):
        raise bad_value("basis.coords['basis_region']", labels, f"labels among {REGIONS}")
    n, pixels = values.shape[0], values.shape[1] * values.shape[2]
    if n > pixels:
        raise bad_value("basis", f"<{n} masks>", f"at most as many masks as detector pixels ({pixels})")
    flat = values.reshape(n, -1)
    for region in REGIONS:
        inside = np.asarray(basis.coords[f"{region}_region"].values, dtype=bool)
        mine = np.array([label == region for label in labels])
        if mine.sum() > inside.sum():
            raise bad_value(
                "basis", f"<{int(mine.sum())} {region} masks>", f"at most the {int(inside.sum())} pixels of the region"
            )
        # sum of |weight| off the region per mask (one BLAS pass; zero exactly when every weight there is zero)
        if not np.any(np.abs(flat[mine]) @ (~inside).ravel().astype(np.float64)):
            continue
        outside = np.abs(values[mine][:, ~inside]).max(initial=0.0)
        if outside > 0:
            raise bad_value(
                "basis", f"<{region} masks with weights up to {outside:.3g} outside the {region} region>", "zero there"
            )
    error = float(np.abs(flat @ flat.T - np.eye(n)).max())
    if error > ORTHONORMAL_ATOL:
        raise bad_value(
            "basis",
            f"<basis with max |M M^T - I| = {error:.3g}>",
            f"orthonormal masks (to {ORTHONORMAL_ATOL}); orthonormalise with stemdask.compression.orthonormalise",
        )
    return basis


def require_compressed(compressed: Any, name: str = "compressed") -> xr.Dataset:
    """Check that ``compressed`` is a Dataset from :func:`compress` (or a compressed store); return it."""
    if not isinstance(compressed, xr.Dataset):
        raise bad_type(name, compressed, "an xarray.Dataset from stemdask.compression.compress")
    missing = [v for v in COMPRESSED_VARS if v not in compressed.variables]
    if missing or "compression_mode" not in compressed.attrs:
        raise bad_value(
            name, f"<Dataset without {missing or ['compression_mode']}>", "a Dataset from stemdask.compression.compress"
        )
    return compressed


# ----------------------------------------------------------------------------
# the per-block kernel
# ----------------------------------------------------------------------------
_COMPRESS_BLOCK_DOC = """Compress one block of whole frames.

    Call as ``compress_block(block, op, *, amplitude, dtype, batch_bytes)`` with ``op`` a
    :class:`~stemdask.compression.plan.BasisOperator`.

    Returns float64 ``(scan_y, scan_x, n_basis + 2)`` on the block's backend:
    the coefficients ``<m_i, d>`` then ``|d|^2`` summed over the BF and the DF
    region. ``dtype`` is the precision of the whole-frame ``d`` whose region
    sums give the masks constant on their region (float32: mixed precision);
    every product and sum is float64.
    """


class _CompressDispatch(Dispatch):
    def __call__(self, arg: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            meth = self.dispatch(type(arg))
        except TypeError:
            raise bad_type("block", arg, "a numpy or cupy array of frames or an event block") from None
        return meth(arg, *args, **kwargs)

    @property
    def __doc__(self) -> str:  # type: ignore[override]
        return _COMPRESS_BLOCK_DOC


compress_block = _CompressDispatch("compress_block")


@numba.njit(cache=True, nogil=True)
def _fused_batch(raw, region_id, support, amplitude, sums, out_d, out_support, out_norm, out_sum):  # pragma: no cover
    # small-integer frames: exact integer region sums of d**2, d in float64 on the support pixels of the
    # non-constant masks (gathered while the frame is in cache) and, with ``sums``, the whole-frame d (sqrt
    # or the counts, in out_d's dtype) and its region sums; simple loops per frame, so that they vectorise
    n, p = raw.shape
    for f in range(n):
        row = raw[f]
        if sums:
            dr = out_d[f]
            for k in range(p):
                dr[k] = row[k]
                if amplitude:
                    dr[k] = np.sqrt(dr[k])
            _region_sums(dr, region_id, out_sum[f])
        s0 = np.int64(0)
        s1 = np.int64(0)
        for k in range(p):
            w = np.int64(row[k])
            if not amplitude:
                w = w * w
            r = region_id[k]
            s0 += w * (r == 0)
            s1 += w * (r == 1)
        out_norm[f, 0] = s0
        out_norm[f, 1] = s1
        ds = out_support[f]
        for q in range(support.shape[0]):
            ds[q] = np.float64(row[support[q]])
            if amplitude:
                ds[q] = np.sqrt(ds[q])


@numba.njit(cache=True, nogil=True, fastmath=True)
def _region_sums(dr, region_id, out):  # pragma: no cover - compiled
    # branch-free and reassociable (fastmath), so the two sums vectorise; in their own function,
    # so the square roots above stay exact IEEE operations
    t0 = 0.0
    t1 = 0.0
    for k in range(dr.shape[0]):
        r = region_id[k]
        t0 += dr[k] * (r == 0)
        t1 += dr[k] * (r == 1)
    out[0] = t0
    out[1] = t1


def _dense_block(
    block: Any,
    op: BasisOperator,
    *,
    amplitude: bool,
    dtype: Any = np.float64,
    batch_bytes: int = BATCH_BYTES,
) -> Any:
    """Dense frames: ``d`` in ``dtype`` a batch at a time, then the engine's forward operator, in float64."""
    xp = array_module(block)
    ny, nx, ky, kx = (int(s) for s in block.shape)
    frames = block.reshape(1, ny * nx, ky, kx)
    n = op.n_masks
    out = xp.empty((ny * nx, n + 2), dtype=np.float64)
    step = max(1, int(batch_bytes) // max(ky * kx * np.dtype(dtype).itemsize, 1))
    fused = xp is np and np.dtype(block.dtype).kind == "u" and np.dtype(block.dtype).itemsize <= 2
    if fused:  # uint8/uint16 counts: one compiled pass gives d and the region norms (no second conversion)
        flat = np.ascontiguousarray(block.reshape(ny * nx, ky * kx))
        rows = min(step, ny * nx)
        need = bool(op.const_index.size)  # the whole-frame d only for masks constant on their region
        scratch = np.empty((rows, ky * kx) if need else (rows, 0), dtype=dtype)
        on_support = np.empty((rows, op.support.size), dtype=np.float64)
        norms = np.empty((rows, 2), dtype=np.float64)
        sums = np.empty((rows, 2), dtype=np.float64)
    for a in range(0, ny * nx, step):
        b = min(a + step, ny * nx)
        if fused:
            m = b - a
            d, ds = scratch[:m], on_support[:m]
            _fused_batch(flat[a:b], op.region_id, op.support, amplitude, need, d, ds, norms[:m], sums[:m])
            if op.general is not None:  # float64 d on the support through the engine's operator
                out[a:b, op.general_index] = op.general.forward(
                    ds.reshape(m, 1, -1), precision="float64", batch_bytes=batch_bytes
                )
            if op.const_index.size:
                out[a:b, op.const_index] = sums[:m][:, op.const_region] * op.const_value
            out[a:b, n:] = norms[:m]
            continue
        raw = frames[0, a:b].reshape(b - a, ky * kx)
        if op.general is not None:  # float64 d on the support of the non-constant masks, as the fused pass
            index = op.general.on_device("support-" + xp.__name__, np.int64, lambda: xp.asarray(op.support))
            ds = xp.take(raw, index, axis=1).astype(np.float64)
            if amplitude:
                xp.sqrt(ds, out=ds)
            out[a:b, op.general_index] = op.general.forward(
                ds.reshape(b - a, 1, -1), precision="float64", batch_bytes=batch_bytes
            )
        if op.const_index.size:  # the region sums of d, in dtype (float32: mixed precision), summed in float64
            d = raw.astype(dtype, copy=True)
            if amplitude:
                xp.sqrt(d, out=d)
            sums = op.regions.forward(d.reshape(b - a, ky, kx), precision="float64", batch_bytes=batch_bytes)
            out[a:b, op.const_index] = sums[:, op.const_region] * xp.asarray(op.const_value)
        if amplitude:
            squared = raw
        else:  # |I|^2 from the data themselves, in float64 (not an integer square, which could overflow)
            squared = raw.astype(np.float64)
            squared *= squared
        out[a:b, n:] = op.regions.forward(squared.reshape(b - a, ky, kx), precision="float64", batch_bytes=batch_bytes)
    return out.reshape(ny, nx, n + 2)


compress_block.register(np.ndarray, _dense_block)


@compress_block.register_lazy("cupy")
def _register_cupy() -> None:
    import cupy

    compress_block.register(cupy.ndarray, _dense_block)


def _kernel(block: Any, op: BasisOperator, amplitude: bool, dtype: Any, batch: int, out_dtype: Any) -> Any:
    """One block: the coefficients, then c_perp of each region by Eq. 11, in ``out_dtype``.

    Eq. 11 runs here on the float64 sums, before anything is rounded to the
    stored dtype: c_perp is a small difference of large squares, so the
    rounding of a float32 coefficient alone would be amplified.
    """
    out = compress_block(whole_frames(block), op, amplitude=amplitude, dtype=dtype, batch_bytes=batch)
    xp = array_module(out)
    n = op.n_masks
    for i, region in enumerate(REGIONS):
        inside = np.flatnonzero(op.labels == region)
        captured = (out[..., inside] ** 2).sum(axis=-1) if inside.size else 0.0
        out[..., n + i] = xp.sqrt(xp.maximum(out[..., n + i] - captured, 0))
    return out.astype(out_dtype, copy=False)


def _jsonable_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    from ..io.zarr_store import jsonable

    return dict(jsonable(attrs))


# ----------------------------------------------------------------------------
# compress / decompress
# ----------------------------------------------------------------------------
def compress(
    data: xr.DataArray,
    basis: xr.DataArray,
    *,
    mode: str = "amplitude",
    dtype: Any = "float64",
    precision: str = "mixed",
    batch_bytes: int = BATCH_BYTES,
) -> xr.Dataset:
    """Compress every pattern of a dataset onto an orthonormal basis (lazy, chunk-parallel).

    Parameters
    ----------
    data : xarray.DataArray
        A calibrated stemdask dataset (``k`` in mrad), dense or counted
        (electron events), chunked in whole frames.
    basis : xarray.DataArray
        Orthonormal masks ``(basis, k_y, k_x)`` built for this dataset's
        detector (:mod:`stemdask.compression.bases`).
    mode : {"amplitude", "intensity"}
        Project ``d = sqrt(I)`` (the paper's choice for ptychography) or
        ``d = I``. Negative intensities give NaN in amplitude mode.
    dtype : {"float64", "float32"}
        dtype of the stored coefficients and ``c_perp`` (rounded once, at
        the end: Eq. 11 is evaluated in float64 before).
    precision : {"mixed", "float64"}
        ``"mixed"`` (default): ``d`` on the pixels of the masks that vary
        over their region (the BF masks), every product, every sum and the
        region norms are float64; only the whole-frame ``d`` whose region sums
        give the masks constant on their region (the mean-DF mask) is made in
        float32 (summed in float64), which costs those coefficients a
        relative error below ~1e-7. ``"float64"``: that ``d`` in float64 too.
        Errors and throughput of both: docs/compression.md.
    batch_bytes : int
        Bytes of frames converted to floating point at a time.

    Returns
    -------
    xarray.Dataset
        Lazy ``coefficients`` ``(scan_y, scan_x, basis)``, ``c_perp_bf`` and
        ``c_perp_df`` ``(scan_y, scan_x)``, the ``masks``, ``bf_region`` and
        ``df_region``; the dataset's scan and detector coordinates, ``basis``
        and ``basis_region``; attrs: the calibration, ``compression_mode``,
        ``compression_precision``, ``basis_kind``, ``basis_attrs``,
        ``source_shape`` and ``source_dtype``.

    Raises
    ------
    MissingCalibrationError
        For an uncalibrated detector.
    InvalidArgumentError
        For a basis of another detector shape or calibration, or one that is
        not orthonormal or reaches outside its regions.

    Examples
    --------
    >>> import numpy as np, stemdask
    >>> from stemdask.compression import bases, compress
    >>> data = stemdask.from_array(np.ones((2, 2, 16, 16), "uint16"), detector_pixel_mrad=1.0, semiangle_mrad=4.0)
    >>> c = compress(data, bases.make_basis(data, "zernike", n_bf=3), mode="intensity")
    >>> c.coefficients.shape
    (2, 2, 4)
    """
    validate(data)
    require_calibrated_detector(data)
    mode = check_mode(mode)
    dtype = np.dtype(resolve_dtype(dtype))
    if not (isinstance(precision, str) and precision in PRECISIONS):
        raise bad_value("precision", precision, f"one of {list(PRECISIONS)}")
    convert = np.dtype(PRECISIONS[precision])
    if not (isinstance(batch_bytes, (int, np.integer)) and batch_bytes > 0):
        raise bad_value("batch_bytes", batch_bytes, "a positive number of bytes")
    basis = check_basis(basis, data)
    arr = dask_data(data)
    require_whole_frames(arr, "compression")
    if np.dtype(data.dtype).kind == "c":
        raise bad_value("data", f"<dataset of dtype {data.dtype}>", "real intensities")
    labels = np.asarray([str(v) for v in basis.coords["basis_region"].values])
    op = BasisOperator(
        np.asarray(basis.values, np.float64),
        labels,
        np.asarray(basis.coords["bf_region"].values, bool),
        np.asarray(basis.coords["df_region"].values, bool),
    )
    n = op.n_masks
    w = dask.delayed(op, pure=True, traverse=False)
    # blockwise with concatenate=False, as the engine's project_array: the kernel gets the chunk
    # itself (map_blocks(drop_axis=...) would first copy every chunk through dask's concatenate)
    out = da.blockwise(
        _kernel,
        "yxm",
        arr,
        "yxkl",
        w,
        None,
        mode == "amplitude",
        None,
        convert,
        None,
        int(batch_bytes),
        None,
        dtype,
        None,
        new_axes={"m": n + 2},
        concatenate=False,
        dtype=dtype,
        meta=block_meta(arr, 3, dtype),
        name="compress-" + dask.base.tokenize(arr, w, mode, convert, batch_bytes, dtype),
    )
    coefficients = out[..., :n]
    perp = {region: out[..., n + i] for i, region in enumerate(REGIONS)}
    coords: dict[str, Any] = {d: data.coords[d] for d in (*SCAN_DIMS, *DETECTOR_DIMS)}
    coords["basis"] = np.arange(n)
    coords["basis_region"] = ("basis", labels)
    attrs: dict[str, Any] = {k: data.attrs[k] for k in CALIBRATION_ATTRS if k in data.attrs}
    basis_attrs = {k: v for k, v in basis.attrs.items() if k != "regions"}
    attrs.update(
        {
            "compression_mode": mode,
            "compression_precision": precision,
            "basis_kind": str(basis.attrs.get("basis_kind", "custom")),
            "basis_attrs": _jsonable_attrs(basis_attrs),
            "regions": _jsonable_attrs(dict(basis.attrs.get("regions", {}))),
            "source_shape": [int(s) for s in data.shape],
            "source_dtype": str(np.dtype(data.dtype)),
            "source": str(data.attrs.get("source", data.name or "dataset")),
            "units": data.attrs.get("units", "counts"),
        }
    )
    unit = "sqrt(counts)" if mode == "amplitude" else data.attrs.get("units", "counts")
    scan_vars = (*SCAN_DIMS, "basis")
    return xr.Dataset(
        {
            "coefficients": (scan_vars, coefficients, {"long_name": "mask coefficients <m_i, d>", "units": unit}),
            "c_perp_bf": (SCAN_DIMS, perp["bf"], {"long_name": "BF part not in the basis (Eq. 11)", "units": unit}),
            "c_perp_df": (SCAN_DIMS, perp["df"], {"long_name": "DF part not in the basis (Eq. 11)", "units": unit}),
            "masks": (("basis", *DETECTOR_DIMS), np.asarray(basis.values, np.float64), {"long_name": "basis masks"}),
            "bf_region": (DETECTOR_DIMS, np.asarray(basis.coords["bf_region"].values, bool)),
            "df_region": (DETECTOR_DIMS, np.asarray(basis.coords["df_region"].values, bool)),
        },
        coords=coords,
        attrs=attrs,
    )


def basis_of(compressed: xr.Dataset) -> xr.DataArray:
    """The basis ``(basis, k_y, k_x)`` of a compressed Dataset, as :mod:`bases` builds them."""
    compressed = require_compressed(compressed)
    masks = compressed["masks"]
    values = masks.values
    out = xr.DataArray(
        np.asarray(values, np.float64),
        dims=("basis", *DETECTOR_DIMS),
        coords={
            "basis": compressed.coords["basis"].values,
            "basis_region": ("basis", np.asarray(compressed.coords["basis_region"].values, dtype=str)),
            "k_y": compressed.coords["k_y"],
            "k_x": compressed.coords["k_x"],
            "bf_region": (DETECTOR_DIMS, np.asarray(compressed["bf_region"].values, bool)),
            "df_region": (DETECTOR_DIMS, np.asarray(compressed["df_region"].values, bool)),
        },
        attrs={**dict(compressed.attrs.get("basis_attrs", {})), "regions": dict(compressed.attrs.get("regions", {}))},
        name="basis",
    )
    basis_regions(out)  # a check that the regions are there
    return out


def decompress(compressed: xr.Dataset, *, output: str = "intensity") -> xr.DataArray:
    """Approximate patterns from a compressed Dataset, lazily, through the engine's adjoint.

    ``d_hat = sum_i c_i m_i`` (the least-squares approximation of ``d`` in the
    span of the orthonormal basis; zero in the unmeasured region).

    Parameters
    ----------
    compressed : xarray.Dataset
        From :func:`compress` or a ``"compressed"`` store.
    output : {"intensity", "projected"}
        ``"intensity"``: patterns comparable with the data (``d_hat**2`` in
        amplitude mode, ``d_hat`` in intensity mode); ``"projected"``:
        ``d_hat`` itself.

    Returns
    -------
    xarray.DataArray
        Lazy ``(scan_y, scan_x, k_y, k_x)`` float dataset with the source's
        coordinates and calibration.
    """
    compressed = require_compressed(compressed)
    if output not in ("intensity", "projected"):
        raise bad_value("output", output, "'intensity' or 'projected'")
    coefficients = compressed["coefficients"].rename(basis="mask").drop_vars(["basis_region"], errors="ignore")
    masks = compressed["masks"].rename(basis="mask").drop_vars(["basis_region"], errors="ignore")
    patterns = back_project(coefficients, masks)
    if output == "intensity" and compressed.attrs["compression_mode"] == "amplitude":
        patterns = patterns**2
    attrs = {k: compressed.attrs[k] for k in CALIBRATION_ATTRS if k in compressed.attrs}
    attrs["units"] = compressed.attrs.get("units", "counts") if output == "intensity" else "sqrt(counts)"
    attrs["source"] = f"decompressed from {compressed.attrs.get('source', 'a compressed dataset')}"
    attrs["long_name"] = "patterns from compressed coefficients"
    out = xr.DataArray(patterns.data, dims=patterns.dims, coords=patterns.coords, attrs=attrs, name="intensity")
    return validate(out)


__all__ = [
    "COMPRESSED_VARS",
    "ORTHONORMAL_ATOL",
    "basis_of",
    "check_basis",
    "compress",
    "compress_block",
    "decompress",
    "require_compressed",
]
