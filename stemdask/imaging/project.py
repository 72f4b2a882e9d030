"""The mask-projection engine: every virtual image, CoM and mask basis goes through here.

``project(data, masks)`` contracts each diffraction pattern with a stack of
detector masks: for a chunk of frames it is one matrix product
``frames (n_frames, pixels) @ weights (pixels, n_masks)`` (BLAS on the CPU,
cuBLAS through CuPy on a GPU), done a few MiB of frames at a time so that a
chunk is never converted to floating point as a whole (that halves the
throughput and multiplies the memory of a chunk by up to 8).

Sums are accumulated in float64 by default, exact for integer counts up to
2**53, so uint8/16/32 input can neither overflow nor lose a count. For integer
frames and integer weights (boolean masks) the product still runs through
float32 BLAS, twice as fast, in runs of pixels short enough that every float32
partial sum is an exact integer (below 2**24), added up in float64. float32
output is used when asked for. Masks that each vary along one detector axis
only (centre of mass: ``k_y``, ``k_x``, ``1``) skip the matrix product: one
pass of exact row and column sums (``_marginals.py``), then tiny products.

The per-block kernel :func:`project_block` is a ``functools.singledispatch``
function so that other block types (electron-event lists, ...) can plug into
the same engine::

    @project_block.register(MyEventBlock)
    def _(block, weights, *, dtype=np.float64, batch_bytes=BATCH_BYTES):
        ...  # return an array (scan_y, scan_x, n_masks) of ``dtype``

``weights`` is a :class:`MaskWeights`; ``weights.dense()`` is the full
``(pixels, n_masks)`` matrix and ``weights.support``/``weights.on_support``
the pixels any mask touches and their weights.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..backend import is_cupy
from ..dataset import DETECTOR_DIMS, SCAN_DIMS, validate
from ..errors import bad_type, bad_value
from ._blas import single_blas_thread

#: bytes of frames converted to floating point at a time (measured optimum on 128x128 frames)
BATCH_BYTES = 4 * 2**20
#: use the pixels-any-mask-touches subset when it is at most this fraction of the frame
SUPPORT_FRACTION = 0.5
#: use a sparse product when stored non-zeros are below this fraction of the dense size
SPARSE_FRACTION = 0.02

_DTYPES = {"float64": np.float64, "float32": np.float32}


def resolve_dtype(dtype: Any) -> type:
    """The accumulation dtype: ``"float64"`` (default, exact counts) or ``"float32"``."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        raise bad_value("dtype", dtype, "'float64' or 'float32'") from None
    if name not in _DTYPES:
        raise bad_value("dtype", dtype, "'float64' (exact integer sums) or 'float32' (faster)")
    return _DTYPES[name]


def _marginal_weights(matrix: np.ndarray, frame_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Row/column weight profiles when each mask varies along one detector axis only."""
    ky, kx = (int(v) for v in frame_shape)
    if ky * kx != matrix.shape[0]:
        return None
    w = matrix.reshape(ky, kx, -1)
    by_row = np.all(w == w[:, :1, :], axis=(0, 1))  # constant along each row: a function of k_y
    by_col = np.all(w == w[:1, :, :], axis=(0, 1))
    if not np.all(by_row | by_col):
        return None
    rows = np.where(by_row, w[:, 0, :], 0.0)
    cols = np.where(by_row, 0.0, w[0, :, :])
    return np.ascontiguousarray(rows, dtype=np.float64), np.ascontiguousarray(cols, dtype=np.float64)


class MaskWeights:
    """Detector masks flattened to a ``(pixels, n_masks)`` matrix, ready for a kernel.

    Holds the matrix in the forms the kernels need: the full matrix (dense
    numpy or ``scipy.sparse``), the pixels any mask touches (``support``) and
    the dense weights on them (``on_support``), converted once per dtype and
    backend.
    """

    def __init__(self, matrix: Any, *, n_masks: int, n_pixels: int, sparse: bool = False,
                 frame_shape: tuple[int, int] | None = None):
        self.n_masks = int(n_masks)
        self.n_pixels = int(n_pixels)
        self.sparse = bool(sparse)
        self._matrix = matrix
        #: (row weights (k_y, n_masks), column weights (k_x, n_masks)) when every mask depends
        #: on the row only or on the column only (CoM: k_y, k_x, 1), else None
        self.marginal = None if sparse or frame_shape is None else _marginal_weights(matrix, frame_shape)
        self._cache: dict[Any, Any] = {}
        self._lock = threading.RLock()
        if sparse:
            csr = matrix.tocsr()
            self.support = np.flatnonzero(np.diff(csr.indptr) > 0)  # rows = pixels
            self.nnz = int(csr.nnz)
        else:
            self.support = np.flatnonzero(np.any(matrix != 0, axis=1))
            self.nnz = int(np.count_nonzero(matrix))
        values = csr.data if sparse else matrix
        #: max |weight| when every weight is an integer (exact float32 products), else None
        self.integer_bound: float | None = None
        if values.size and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            self.integer_bound = float(max(np.abs(values).max(), 1.0))

    def __dask_tokenize__(self) -> Any:
        from dask.base import tokenize

        m = self._matrix
        parts = (m.indptr, m.indices, m.data, m.shape) if self.sparse else (m,)
        return ("MaskWeights", tokenize(*parts), self.sparse)

    def __getstate__(self) -> dict[str, Any]:
        # the cache (converted / device copies) and the lock stay behind
        return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = {}
        self._lock = threading.RLock()

    def _cached(self, key: Any, make: Any) -> Any:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def dense(self, dtype: Any = np.float64) -> np.ndarray:
        """The full ``(pixels, n_masks)`` matrix as a C-contiguous numpy array."""
        def make():
            m = self._matrix.toarray() if self.sparse else self._matrix
            return np.ascontiguousarray(m, dtype=dtype)
        return self._cached(("dense", np.dtype(dtype).name), make)

    @property
    def use_support(self) -> bool:
        """True when gathering the support pixels first is cheaper than the full product."""
        return self.support.size <= SUPPORT_FRACTION * self.n_pixels

    @property
    def use_sparse_product(self) -> bool:
        """True when the masks are sparse and a sparse product beats a dense one."""
        return self.sparse and self.nnz < SPARSE_FRACTION * self.support.size * self.n_masks

    def on_support(self, dtype: Any = np.float64) -> np.ndarray:
        """Dense weights of the support pixels, ``(support.size, n_masks)``."""
        return self._cached(("support", np.dtype(dtype).name),
                            lambda: np.ascontiguousarray(self.dense(dtype)[self.support]))

    def sparse_transposed(self, dtype: Any = np.float64) -> Any:
        """``scipy.sparse`` CSR matrix ``(n_masks, pixels)``."""
        import scipy.sparse as sp

        return self._cached(("sparseT", np.dtype(dtype).name),
                            lambda: sp.csr_matrix(self._matrix.T, dtype=dtype))

    def on_device(self, kind: str, dtype: Any, make: Any) -> Any:
        """A backend-specific copy (e.g. cupy arrays), built once by ``make()``."""
        return self._cached((kind, np.dtype(dtype).name), make)


def _batches(n_frames: int, frame_bytes: int, batch_bytes: int):
    step = max(1, int(batch_bytes // max(frame_bytes, 1)))
    for start in range(0, n_frames, step):
        yield start, min(start + step, n_frames)


@functools.singledispatch
def project_block(block: Any, weights: MaskWeights, *, dtype: Any = np.float64,
                  batch_bytes: int = BATCH_BYTES) -> Any:
    """Project one block of frames onto the masks.

    Parameters
    ----------
    block : array (scan_y, scan_x, k_y, k_x)
        One chunk of whole frames (numpy or cupy; other block types register
        their own implementation with ``project_block.register``).
    weights : MaskWeights
        The masks as a ``(pixels, n_masks)`` matrix.
    dtype : numpy dtype
        Accumulation and output dtype (float64 or float32).
    batch_bytes : int
        Bytes of frames converted to ``dtype`` at a time.

    Returns
    -------
    array (scan_y, scan_x, n_masks)
        Same backend as ``block``.
    """
    if is_cupy(block):
        import cupy

        project_block.register(cupy.ndarray, _project_cupy)
        return _project_cupy(block, weights, dtype=dtype, batch_bytes=batch_bytes)
    raise bad_type("block", block, "a numpy or cupy array of frames (or a registered block type)")


#: float32 represents every integer up to 2**24 exactly
_F32_EXACT = 2 ** 24


def _exact_f32_step(batch: np.ndarray, weight_bound: float | None) -> int:
    """Pixels per float32 product that keep every partial sum an exact integer (0: not possible).

    Integer frames times integer weights give integer products; a float32
    sum of them is exact while every partial sum stays below 2**24 in
    magnitude, which ``step * max|frame| * max|weight| <= 2**24`` guarantees.
    """
    if weight_bound is None or batch.dtype.kind not in "iu" or batch.size == 0:
        return 0
    vmax = int(batch.max()) if batch.dtype.kind == "u" else max(int(batch.max()), -int(batch.min()))
    bound = max(vmax, 1) * weight_bound
    return int(_F32_EXACT // bound) if bound <= _F32_EXACT else 0


def _matmul_exact(frames: np.ndarray, w32: np.ndarray, w64: np.ndarray, out: np.ndarray,
                  weight_bound: float | None, buf32: np.ndarray) -> None:
    """``out = frames @ w`` in float64 precision, through float32 BLAS where that is exact.

    ``buf32`` is scratch of at least ``frames.shape`` float32 elements, reused
    across batches (see :func:`_project_numpy_body`).
    """
    step = _exact_f32_step(frames, weight_bound)
    n, p = frames.shape
    if step == 0:
        np.matmul(frames.astype(np.float64), w64, out=out)
        return
    if step >= p:
        f32 = buf32[:n * p].reshape(n, p)
        f32[...] = frames
        out[:] = f32 @ w32
        return
    out[:] = 0.0
    for k in range(0, p, step):  # exact float32 partial sums, added in float64
        width = min(step, p - k)
        f32 = buf32[:n * width].reshape(n, width)
        f32[...] = frames[:, k:k + width]
        out += f32 @ w32[k:k + width]


@project_block.register(np.ndarray)
def _project_numpy(block: np.ndarray, weights: MaskWeights, *, dtype: Any = np.float64,
                   batch_bytes: int = BATCH_BYTES) -> np.ndarray:
    with single_blas_thread():  # this kernel is one of several dask threads: no BLAS threads on top
        return _project_numpy_body(block, weights, dtype, batch_bytes)


def _project_numpy_body(block: np.ndarray, weights: MaskWeights, dtype: Any, batch_bytes: int) -> np.ndarray:
    ny, nx = block.shape[:2]
    # int64 row sums cannot overflow for integers of up to 32 bits (2**32 * 2**31 pixels < 2**63)
    summable = block.dtype.kind == "f" or (block.dtype.kind in "iub" and block.dtype.itemsize <= 4)
    if weights.marginal is not None and summable:
        # masks of one axis each (CoM): exact row/column sums in one pass, then tiny products
        from ._marginals import row_col_sums

        row_w, col_w = weights.marginal
        rows, cols = row_col_sums(block.reshape(ny * nx, *block.shape[2:]))
        out = rows.astype(np.float64) @ row_w + cols.astype(np.float64) @ col_w
        return out.astype(dtype, copy=False).reshape(ny, nx, weights.n_masks)
    frames = block.reshape(ny * nx, -1)
    out = np.empty((frames.shape[0], weights.n_masks), dtype=dtype)
    # float64 results from integer data and integer weights: exact float32 BLAS, twice as fast
    exact32 = (np.dtype(dtype) == np.float64 and block.dtype.kind in "iu"
               and weights.integer_bound is not None and not weights.use_sparse_product)
    itemsize = 4 if exact32 else np.dtype(dtype).itemsize
    # Conversion scratch is allocated once per block and reused by every batch: a fresh
    # multi-MiB temporary per batch is returned to the OS and faulted in again each time
    # (dask workers set MALLOC_TRIM_THRESHOLD_), which made the kernel 2-4x slower there.
    width = weights.support.size if weights.use_support and not weights.use_sparse_product else frames.shape[1]
    rows = max(1, int(batch_bytes // max(width * itemsize, 1)))
    buf = np.empty(min(rows, frames.shape[0]) * width, dtype=np.float32 if exact32 else dtype)
    if weights.use_sparse_product:
        mt = weights.sparse_transposed(dtype)
        for a, b in _batches(frames.shape[0], frames.shape[1] * itemsize, batch_bytes):
            converted = buf[:(b - a) * width].reshape(b - a, width)
            converted[...] = frames[a:b]
            out[a:b] = (mt @ converted.T).T
    elif weights.use_support:
        idx = weights.support
        gathered = np.empty(min(rows, frames.shape[0]) * idx.size, dtype=frames.dtype)
        if exact32:
            w32, w64 = weights.on_support(np.float32), weights.on_support(np.float64)
        else:
            w = weights.on_support(dtype)
        for a, b in _batches(frames.shape[0], idx.size * itemsize, batch_bytes):
            picked = gathered[:(b - a) * idx.size].reshape(b - a, idx.size)
            np.take(frames[a:b], idx, axis=1, out=picked)
            if exact32:
                _matmul_exact(picked, w32, w64, out[a:b], weights.integer_bound, buf)
            else:
                converted = buf[:picked.size].reshape(picked.shape)
                converted[...] = picked
                np.matmul(converted, w, out=out[a:b])
    else:
        if exact32:
            w32, w64 = weights.dense(np.float32), weights.dense(np.float64)
            for a, b in _batches(frames.shape[0], frames.shape[1] * itemsize, batch_bytes):
                _matmul_exact(frames[a:b], w32, w64, out[a:b], weights.integer_bound, buf)
        else:
            w = weights.dense(dtype)
            for a, b in _batches(frames.shape[0], frames.shape[1] * itemsize, batch_bytes):
                if frames.dtype == np.dtype(dtype):
                    np.matmul(frames[a:b], w, out=out[a:b])
                    continue
                converted = buf[:(b - a) * width].reshape(b - a, width)
                converted[...] = frames[a:b]
                np.matmul(converted, w, out=out[a:b])
    return out.reshape(ny, nx, weights.n_masks)


def _project_cupy(block: Any, weights: MaskWeights, *, dtype: Any = np.float64,
                  batch_bytes: int = BATCH_BYTES) -> Any:
    import cupy

    ny, nx = block.shape[:2]
    frames = block.reshape(ny * nx, -1)
    out = cupy.empty((frames.shape[0], weights.n_masks), dtype=dtype)
    itemsize = np.dtype(dtype).itemsize
    if weights.use_sparse_product:
        import cupyx.scipy.sparse as csp

        mt = weights.on_device("cupy-sparseT", dtype,
                               lambda: csp.csr_matrix(weights.sparse_transposed(dtype)))
        for a, b in _batches(frames.shape[0], frames.shape[1] * itemsize, batch_bytes):
            out[a:b] = (mt @ frames[a:b].astype(dtype).T).T
    else:
        w = weights.on_device("cupy-dense", dtype, lambda: cupy.asarray(weights.dense(dtype)))
        for a, b in _batches(frames.shape[0], frames.shape[1] * itemsize, batch_bytes):
            cupy.matmul(frames[a:b].astype(dtype, copy=False), w, out=out[a:b])
    return out.reshape(ny, nx, weights.n_masks)


# ----------------------------------------------------------------------------
# mask checks
# ----------------------------------------------------------------------------
def check_masks(masks: Any, data: xr.DataArray | None = None) -> xr.DataArray:
    """Check a mask stack ``(mask, k_y, k_x)`` against a dataset; return it.

    Raises a clear error for a wrong type, dims or shape, non-finite weights,
    an empty stack, a mask that is zero everywhere, or detector coordinates
    that differ from the dataset's (a mask made for another calibration).
    """
    if not isinstance(masks, xr.DataArray):
        raise bad_type("masks", masks, "an xarray.DataArray with dims ('mask', 'k_y', 'k_x') "
                                       "(see stemdask.imaging.detectors)")
    if masks.ndim == 2 and tuple(masks.dims) == DETECTOR_DIMS:
        masks = masks.expand_dims("mask")
    if tuple(masks.dims) != ("mask", *DETECTOR_DIMS):
        raise bad_value("masks", f"<DataArray with dims {tuple(masks.dims)}>",
                        "dims ('mask', 'k_y', 'k_x') in this order")
    if masks.sizes["mask"] == 0:
        raise bad_value("masks", "<DataArray with 0 masks>", "at least one mask")
    if data is not None:
        want = tuple(int(data.sizes[d]) for d in DETECTOR_DIMS)
        have = tuple(int(masks.sizes[d]) for d in DETECTOR_DIMS)
        if want != have:
            raise bad_value("masks", f"<masks of detector shape {have}>",
                            f"the dataset's detector shape {want}")
        for dim in DETECTOR_DIMS:
            if dim in masks.coords and dim in data.coords:
                mu = masks.coords[dim].attrs.get("units")
                du = data.coords[dim].attrs.get("units")
                same_units = mu is None or du is None or mu == du
                if not same_units or not np.allclose(masks.coords[dim].values,
                                                     data.coords[dim].values, rtol=1e-6, atol=1e-9):
                    raise bad_value(f"masks.coords[{dim!r}]", f"<{mu} {masks.coords[dim].values[:3]}...>",
                                    f"the dataset's coordinates ({du} {data.coords[dim].values[:3]}...): "
                                    "build masks from the same dataset (its calibration and beam centre)")
    values = masks.data
    if isinstance(values, da.Array):
        values = values.compute()
    kind = np.asarray(values[:0]).dtype.kind if not is_cupy(values) else values.dtype.kind
    if kind not in "biuf":
        raise bad_value("masks", f"<masks of dtype {values.dtype}>", "boolean or real-valued weights")
    host = np.asarray(values.get() if is_cupy(values) else values)
    if kind == "f" and not np.all(np.isfinite(host)):
        bad = int(np.count_nonzero(~np.isfinite(host)))
        raise bad_value("masks", f"<masks with {bad} non-finite weights>", "finite weights (no NaN/inf)")
    empty = [str(n) for n, m in zip(masks.coords["mask"].values if "mask" in masks.coords
                                     else range(host.shape[0]), host) if not np.any(m)]
    if empty:
        raise bad_value("masks", f"<masks {empty} are zero everywhere>",
                        "every mask to cover at least one detector pixel (check radii against the "
                        "detector's angular range)")
    return masks


def mask_weights(masks: xr.DataArray, *, sparse: bool | None = None) -> MaskWeights:
    """Flatten a checked mask stack to :class:`MaskWeights`.

    ``sparse=None`` uses ``masks.attrs["sparse"]`` when set, else a dense
    matrix (the engine still restricts the product to the pixels the masks
    touch). ``sparse=True`` stores a ``scipy.sparse`` matrix, which wins for
    many masks that each touch few pixels.
    """
    values = masks.data
    if isinstance(values, da.Array):
        values = values.compute()
    host = np.asarray(values.get() if is_cupy(values) else values, dtype=np.float64)
    n_masks = host.shape[0]
    matrix = host.reshape(n_masks, -1).T
    if sparse is None:
        sparse = bool(masks.attrs.get("sparse", False))
    if sparse:
        import scipy.sparse as sp

        return MaskWeights(sp.csc_matrix(matrix), n_masks=n_masks, n_pixels=matrix.shape[0], sparse=True)
    return MaskWeights(np.ascontiguousarray(matrix), n_masks=n_masks, n_pixels=matrix.shape[0],
                       frame_shape=host.shape[1:])


def _block_kernel(block: Any, weights: MaskWeights, dtype: Any, batch_bytes: int) -> Any:
    return project_block(block, weights, dtype=dtype, batch_bytes=batch_bytes)


def project_array(arr: da.Array, weights: MaskWeights, *, dtype: Any = np.float64,
                  batch_bytes: int = BATCH_BYTES) -> da.Array:
    """Lazy ``(scan_y, scan_x, n_masks)`` projection of a 4-D dask array of frames.

    The weights travel to the workers once (one graph key), not once per task.
    """
    if arr.ndim != 4 or len(arr.chunks[2]) != 1 or len(arr.chunks[3]) != 1:
        raise bad_value("data", f"<array of shape {arr.shape} chunks {arr.chunks}>",
                        "4-D (scan_y, scan_x, k_y, k_x) chunked in whole frames")
    if arr.shape[2] * arr.shape[3] != weights.n_pixels:
        raise bad_value("masks", f"<{weights.n_pixels} pixels per mask>",
                        f"{arr.shape[2] * arr.shape[3]} pixels per frame")
    w = dask.delayed(weights, pure=True, traverse=False)
    meta = arr._meta
    try:
        out_meta = meta.reshape(0, 0, 0).astype(dtype)
    except Exception:  # pragma: no cover - exotic metas
        out_meta = np.empty((0, 0, 0), dtype=dtype)
    return da.map_blocks(
        _block_kernel, arr, w, dtype, int(batch_bytes),
        drop_axis=(2, 3), new_axis=2,
        chunks=(arr.chunks[0], arr.chunks[1], (weights.n_masks,)),
        dtype=dtype, meta=out_meta, name="project-" + dask.base.tokenize(arr, w, dtype, batch_bytes),
    )


def project(data: xr.DataArray, masks: xr.DataArray, *, dtype: Any = "float64",
            sparse: bool | None = None, batch_bytes: int = BATCH_BYTES) -> xr.DataArray:
    """Project every diffraction pattern onto a stack of masks (lazy).

    ``out[y, x, m] = sum_k data[y, x, k] * masks[m, k]`` per chunk as one
    matrix product, a few hundred frames at a time.

    Parameters
    ----------
    data : xarray.DataArray
        A stemdask dataset ``(scan_y, scan_x, k_y, k_x)`` (numpy or cupy chunks).
    masks : xarray.DataArray
        Weights ``(mask, k_y, k_x)`` (boolean or real), e.g. from
        :mod:`stemdask.imaging.detectors`; a single ``(k_y, k_x)`` mask is
        accepted. Its ``k_y``/``k_x`` coordinates, when present, must equal the
        dataset's.
    dtype : {"float64", "float32"}
        Accumulation and output dtype. float64 (default) is exact for integer
        counts; float32 is faster with many masks.
    sparse : bool, optional
        Store the masks as ``scipy.sparse`` (``cupyx`` on a GPU); default from
        ``masks.attrs["sparse"]``, else dense.
    batch_bytes : int
        Bytes of frames converted to ``dtype`` at a time.

    Returns
    -------
    xarray.DataArray
        Lazy ``(scan_y, scan_x, mask)`` array with the dataset's scan
        coordinates and attrs, ``units`` = the data's units (weighted sums).

    Examples
    --------
    >>> import numpy as np, stemdask
    >>> from stemdask.imaging import project, detectors
    >>> data = stemdask.from_array(np.ones((4, 4, 16, 16), "uint16"), detector_pixel_mrad=1.0)
    >>> project(data, detectors.disk(data, 3.0)).values[0, 0]
    array([29.])
    """
    validate(data)
    masks = check_masks(masks, data)
    out_dtype = resolve_dtype(dtype)
    if not (isinstance(batch_bytes, (int, np.integer)) and batch_bytes > 0):
        raise bad_value("batch_bytes", batch_bytes, "a positive number of bytes")
    weights = mask_weights(masks, sparse=sparse)
    arr = data.data if isinstance(data.data, da.Array) else da.from_array(data.data, chunks=-1, asarray=False)
    out = project_array(arr, weights, dtype=out_dtype, batch_bytes=batch_bytes)
    coords = {d: data.coords[d] for d in SCAN_DIMS}
    coords["mask"] = masks.coords["mask"] if "mask" in masks.coords else np.arange(weights.n_masks)
    attrs = dict(data.attrs)
    attrs["units"] = data.attrs.get("units", "counts")
    attrs["long_name"] = "mask projection"
    return xr.DataArray(out, dims=(*SCAN_DIMS, "mask"), coords=coords, attrs=attrs,
                        name=masks.name or "projection")


__all__ = ["BATCH_BYTES", "MaskWeights", "check_masks", "mask_weights",
           "project", "project_array", "project_block", "resolve_dtype"]
