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

The per-block kernel :func:`project_block` is a :class:`dask.utils.Dispatch`
on the block's type, as dask's own ``concatenate_lookup`` and friends: numpy is
registered here, cupy lazily (``register_lazy("cupy")``: nothing imports cupy
until a cupy block arrives) and electron-event blocks by
``events/project.py``::

    @project_block.register(MyEventBlock)
    def _(block, weights, *, dtype=np.float64, batch_bytes=BATCH_BYTES):
        ...  # return an array (scan_y, scan_x, n_masks) of ``dtype``

``weights`` is a :class:`MaskWeights`; ``weights.dense()`` is the full
``(pixels, n_masks)`` matrix and ``weights.support``/``weights.on_support``
the pixels any mask touches and their weights.

The engine is a linear operator pair: :meth:`MaskWeights.forward` (patterns
-> coefficients, ``d @ W``) and :meth:`MaskWeights.adjoint` (coefficients ->
patterns, ``c @ W^H``, which is ``c @ W^T`` for real masks), lazily over a
dataset as :func:`project` and :func:`back_project`. Output dtypes follow
``np.result_type`` of data and weights (complex weights give complex results).
"""

from __future__ import annotations

import threading
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.utils import Dispatch

from ..backend import array_module, to_numpy
from ..checks import close
from ..dataset import DETECTOR_DIMS, SCAN_DIMS, dask_data, require_whole_frames, validate
from ..errors import bad_type, bad_value
from . import _fused
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


def output_dtype(precision: Any, data_dtype: Any, weights_dtype: Any) -> np.dtype:
    """Result dtype of a projection: ``precision`` (float64/float32), complex when either side is.

    This is ``np.result_type`` of data and weights with the real precision the
    caller chose (integer counts never set it: their sums are floats).
    """
    real = np.dtype(resolve_dtype(precision))
    if np.dtype(data_dtype).kind == "c" or np.dtype(weights_dtype).kind == "c":
        return np.result_type(real, np.complex64)
    return real


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


def _affine_weights(marginal: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray | None:
    """``(3, n_masks)`` coefficients ``c`` with ``mask = c0 + c1 row + c2 col`` when every mask is affine.

    Affine masks (centre of mass without a mask, a uniform detector) reduce
    to three exact integer moments per frame (electrons, sum of rows, sum of
    columns), which is what the event kernel computes instead of a gather.
    """
    if marginal is None:
        return None
    rows, cols = marginal
    coef = np.zeros((3, rows.shape[1]))
    for profile, slot in ((rows, 1), (cols, 2)):
        index = np.arange(profile.shape[0], dtype=np.float64)
        for m in range(profile.shape[1]):
            p = profile[:, m]
            slope = (p[-1] - p[0]) / (index[-1] if index[-1] else 1.0)
            fitted = p[0] + slope * index
            if not np.allclose(p, fitted, rtol=1e-12, atol=1e-12 * max(float(np.abs(p).max()), 1.0)):
                return None
            coef[0, m] += p[0]
            coef[slot, m] = slope
    return coef


class MaskWeights:
    """Detector masks flattened to a ``(pixels, n_masks)`` matrix: the projection operator.

    Holds the matrix in the forms the kernels need: the full matrix (dense
    numpy or ``scipy.sparse``), the pixels any mask touches (``support``) and
    the dense weights on them (``on_support``), converted once per dtype and
    backend. :meth:`forward` and :meth:`adjoint` apply the operator and its
    adjoint to a block of patterns or coefficients.
    """

    def __init__(
        self,
        matrix: Any,
        *,
        n_masks: int,
        n_pixels: int,
        sparse: bool = False,
        frame_shape: tuple[int, int] | None = None,
    ):
        self.n_masks = int(n_masks)
        self.n_pixels = int(n_pixels)
        self.sparse = bool(sparse)
        self._matrix = matrix
        #: float64 for real masks, complex128 for complex ones
        self.dtype = np.dtype(np.complex128 if np.dtype(matrix.dtype).kind == "c" else np.float64)
        #: detector shape (k_y, k_x) of one mask, when known
        self.frame_shape = None if frame_shape is None else tuple(int(v) for v in frame_shape)
        #: (row weights (k_y, n_masks), column weights (k_x, n_masks)) when every mask depends
        #: on the row only or on the column only (CoM: k_y, k_x, 1), else None
        self.marginal = (
            None if sparse or frame_shape is None or self.dtype.kind == "c" else _marginal_weights(matrix, frame_shape)
        )
        #: (3, n_masks) coefficients on (1, row index, column index) when every mask is an
        #: affine function of the pixel position (CoM: k_y, k_x, 1), else None
        self.affine = _affine_weights(self.marginal)
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
        #: largest sum of |weight| over the pixels of one mask (bounds every projected sum)
        self.abs_sum = float(abs(csr).sum(axis=0).max()) if sparse else float(np.abs(matrix).sum(axis=0).max())
        #: max |weight| when every weight is a real integer (exact float32 products), else None
        self.integer_bound: float | None = None
        if (
            values.size
            and self.dtype.kind == "f"
            and np.all(np.isfinite(values))
            and np.all(values == np.round(values))
        ):
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

    def dense_transposed(self) -> np.ndarray:
        """The ``(n_masks, pixels)`` float64 matrix, C-contiguous (one row per mask)."""
        return self._cached(("denseT", "float64"), lambda: np.ascontiguousarray(self.dense(np.float64).T))

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
        return self._cached(
            ("support", np.dtype(dtype).name), lambda: np.ascontiguousarray(self.dense(dtype)[self.support])
        )

    def sparse_transposed(self, dtype: Any = np.float64) -> Any:
        """``scipy.sparse`` CSR matrix ``(n_masks, pixels)``."""
        import scipy.sparse as sp

        return self._cached(("sparseT", np.dtype(dtype).name), lambda: sp.csr_matrix(self._matrix.T, dtype=dtype))

    def on_device(self, kind: str, dtype: Any, make: Any) -> Any:
        """A backend-specific copy (e.g. cupy arrays), built once by ``make()``."""
        return self._cached((kind, np.dtype(dtype).name), make)

    def result_dtype(self, data_dtype: Any, precision: Any = "float64") -> np.dtype:
        """dtype of ``forward`` on data of ``data_dtype`` (see :func:`output_dtype`)."""
        return output_dtype(precision, data_dtype, self.dtype)

    def forward(self, patterns: Any, *, precision: Any = "float64", batch_bytes: int = BATCH_BYTES) -> Any:
        """Apply the operator: patterns ``(..., k_y, k_x)`` -> coefficients ``(..., n_masks)``.

        ``coefficients[..., m] = sum_k patterns[..., k] * W[k, m]`` through the
        engine's block kernel (numpy, cupy or an event block), so it is exactly
        what :func:`project` computes. The dtype is :meth:`result_dtype`.
        """
        shape = tuple(patterns.shape)
        if len(shape) < 2 or shape[-2] * shape[-1] != self.n_pixels:
            raise bad_value(
                "patterns", f"<array of shape {shape}>", f"(..., k_y, k_x) with k_y * k_x = {self.n_pixels} pixels"
            )
        lead = shape[:-2]
        dtype = self.result_dtype(patterns.dtype, precision)
        if len(lead) == 2:
            return project_block(patterns, self, dtype=dtype, batch_bytes=batch_bytes)
        n = int(np.prod(lead)) if lead else 1
        block = patterns.reshape(1, n, *shape[-2:])
        return project_block(block, self, dtype=dtype, batch_bytes=batch_bytes).reshape(*lead, self.n_masks)

    def adjoint(self, coefficients: Any) -> Any:
        """Apply the adjoint: coefficients ``(..., n_masks)`` -> patterns ``(..., k_y, k_x)``.

        ``patterns = coefficients @ W^H`` (``W^T`` for real masks), on the
        backend of ``coefficients`` (numpy or cupy), dtype ``np.result_type``
        of coefficients and weights. For orthonormal masks this is the
        least-squares reconstruction of the patterns from their coefficients.
        """
        shape = tuple(coefficients.shape)
        if not shape or shape[-1] != self.n_masks:
            raise bad_value("coefficients", f"<array of shape {shape}>", f"(..., {self.n_masks}) coefficients")
        xp = array_module(coefficients)
        dtype = np.result_type(coefficients.dtype, self.dtype)
        if xp is np:
            wh = self._cached(("adjoint", dtype.name), lambda: np.ascontiguousarray(self.dense(dtype).conj().T))
        else:
            wh = self.on_device(
                "adjoint-" + xp.__name__, dtype, lambda: xp.asarray(np.ascontiguousarray(self.dense(dtype).conj().T))
            )
        flat = coefficients.reshape(-1, self.n_masks).astype(dtype, copy=False)
        out = flat @ wh
        frame = self.frame_shape if self.frame_shape is not None else (self.n_pixels,)
        return out.reshape(*shape[:-1], *frame)


def _batches(n_frames: int, frame_bytes: int, batch_bytes: int):
    step = max(1, int(batch_bytes // max(frame_bytes, 1)))
    for start in range(0, n_frames, step):
        yield start, min(start + step, n_frames)


_PROJECT_BLOCK_DOC = """Project one block of frames onto the masks.

    Call as ``project_block(block, weights, *, dtype=np.float64, batch_bytes=BATCH_BYTES)``.

    Parameters
    ----------
    block : array (scan_y, scan_x, k_y, k_x)
        One chunk of whole frames (numpy or cupy; other block types register
        their own implementation with ``project_block.register``).
    weights : MaskWeights
        The masks as a ``(pixels, n_masks)`` matrix.
    dtype : numpy dtype
        Accumulation and output dtype (float64/float32, or complex for
        complex data or weights).
    batch_bytes : int
        Bytes of frames converted to ``dtype`` at a time.

    Returns
    -------
    array (scan_y, scan_x, n_masks)
        Same backend as ``block``.
    """


class _BlockDispatch(Dispatch):
    """``dask.utils.Dispatch`` whose miss names the argument and what it accepts."""

    def __call__(self, arg: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            meth = self.dispatch(type(arg))
        except TypeError:
            raise bad_type("block", arg, "a numpy or cupy array of frames (or a registered block type)") from None
        return meth(arg, *args, **kwargs)

    @property
    def __doc__(self) -> str:  # type: ignore[override]
        return _PROJECT_BLOCK_DOC


project_block = _BlockDispatch("project_block")


#: float32 represents every integer up to 2**24 exactly
_F32_EXACT = 2**24


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


def _matmul_exact(
    frames: np.ndarray, w32: np.ndarray, w64: np.ndarray, out: np.ndarray, weight_bound: float | None, buf32: np.ndarray
) -> None:
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
        f32 = buf32[: n * p].reshape(n, p)
        f32[...] = frames
        out[:] = f32 @ w32
        return
    out[:] = 0.0
    for k in range(0, p, step):  # exact float32 partial sums, added in float64
        width = min(step, p - k)
        f32 = buf32[: n * width].reshape(n, width)
        f32[...] = frames[:, k : k + width]
        out += f32 @ w32[k : k + width]


@project_block.register(np.ndarray)
def _project_numpy(
    block: np.ndarray, weights: MaskWeights, *, dtype: Any = np.float64, batch_bytes: int = BATCH_BYTES
) -> np.ndarray:
    with single_blas_thread():  # this kernel is one of several dask threads: no BLAS threads on top
        return _project_numpy_body(block, weights, dtype, batch_bytes)


def _project_fused(block: np.ndarray, weights: MaskWeights, dtype: Any) -> np.ndarray | None:
    """One pass over integer frames with no conversion (``_fused.py``), or None when it does not apply.

    Affine masks (CoM) become three exact moments per frame; up to four real
    masks a float64 dot product per frame. Both are exact for integer weights
    while every sum stays below 2**53, which the pixel type and the weights bound.
    """
    if not _fused.fusable(block.dtype) or weights.dtype.kind != "f" or weights.use_sparse_product:
        return None
    ny, nx, ky, kx = block.shape
    if weights.affine is not None and _fused.exact_bound_ok(block.dtype, ky * kx * max(ky, kx, 1)):
        moments = _fused.affine_moments(block.reshape(ny * nx, ky, kx))
        return (moments @ weights.affine).astype(dtype, copy=False).reshape(ny, nx, weights.n_masks)
    exact = weights.integer_bound is None or _fused.exact_bound_ok(block.dtype, weights.abs_sum)
    if weights.n_masks <= _fused.MAX_FUSED_MASKS and exact:
        out = _fused.dot_masks(block.reshape(ny * nx, ky * kx), weights.dense_transposed())
        return out.astype(dtype, copy=False).reshape(ny, nx, weights.n_masks)
    return None


def _project_numpy_body(block: np.ndarray, weights: MaskWeights, dtype: Any, batch_bytes: int) -> np.ndarray:
    ny, nx = block.shape[:2]
    if block.ndim == 4 and np.dtype(dtype).kind == "f":
        fused = _project_fused(block, weights, dtype)
        if fused is not None:
            return fused
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
    exact32 = (
        np.dtype(dtype) == np.float64
        and block.dtype.kind in "iu"
        and weights.integer_bound is not None
        and not weights.use_sparse_product
    )
    itemsize = 4 if exact32 else np.dtype(dtype).itemsize
    # Conversion scratch is allocated once per block and reused by every batch: a fresh
    # multi-MiB temporary per batch is returned to the OS and faulted in again each time
    # (dask workers set MALLOC_TRIM_THRESHOLD_), which made the kernel 2-4x slower there.
    width = int(weights.support.size if weights.use_support and not weights.use_sparse_product else frames.shape[1])
    n_frames = int(frames.shape[0])
    batch_rows = max(1, int(batch_bytes) // max(width * int(itemsize), 1))
    buf = np.empty(min(batch_rows, n_frames) * width, dtype=np.float32 if exact32 else dtype)
    if weights.use_sparse_product:
        mt = weights.sparse_transposed(dtype)
        for a, b in _batches(frames.shape[0], frames.shape[1] * itemsize, batch_bytes):
            converted = buf[: (b - a) * width].reshape(b - a, width)
            converted[...] = frames[a:b]
            out[a:b] = (mt @ converted.T).T
    elif weights.use_support:
        idx = weights.support
        gathered = np.empty(min(batch_rows, n_frames) * int(idx.size), dtype=frames.dtype)
        if exact32:
            w32, w64 = weights.on_support(np.float32), weights.on_support(np.float64)
        else:
            w = weights.on_support(dtype)
        for a, b in _batches(frames.shape[0], idx.size * itemsize, batch_bytes):
            picked = gathered[: (b - a) * idx.size].reshape(b - a, idx.size)
            np.take(frames[a:b], idx, axis=1, out=picked)
            if exact32:
                _matmul_exact(picked, w32, w64, out[a:b], weights.integer_bound, buf)
            else:
                converted = buf[: picked.size].reshape(picked.shape)
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
                converted = buf[: (b - a) * width].reshape(b - a, width)
                converted[...] = frames[a:b]
                np.matmul(converted, w, out=out[a:b])
    return out.reshape(ny, nx, weights.n_masks)


@project_block.register_lazy("cupy")
def _register_cupy() -> None:
    import cupy

    project_block.register(cupy.ndarray, _project_cupy)


def _project_cupy(block: Any, weights: MaskWeights, *, dtype: Any = np.float64, batch_bytes: int = BATCH_BYTES) -> Any:
    import cupy

    ny, nx = block.shape[:2]
    frames = block.reshape(ny * nx, -1)
    out = cupy.empty((frames.shape[0], weights.n_masks), dtype=dtype)
    itemsize = np.dtype(dtype).itemsize
    if weights.use_sparse_product:
        import cupyx.scipy.sparse as csp

        mt = weights.on_device("cupy-sparseT", dtype, lambda: csp.csr_matrix(weights.sparse_transposed(dtype)))
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
    Weights may be boolean, real or complex.
    """
    if not isinstance(masks, xr.DataArray):
        raise bad_type(
            "masks", masks, "an xarray.DataArray with dims ('mask', 'k_y', 'k_x') (see stemdask.imaging.detectors)"
        )
    if masks.ndim == 2 and tuple(masks.dims) == DETECTOR_DIMS:
        masks = masks.expand_dims("mask")
    if tuple(masks.dims) != ("mask", *DETECTOR_DIMS):
        raise bad_value(
            "masks", f"<DataArray with dims {tuple(masks.dims)}>", "dims ('mask', 'k_y', 'k_x') in this order"
        )
    if masks.sizes["mask"] == 0:
        raise bad_value("masks", "<DataArray with 0 masks>", "at least one mask")
    if data is not None:
        want = tuple(int(data.sizes[d]) for d in DETECTOR_DIMS)
        have = tuple(int(masks.sizes[d]) for d in DETECTOR_DIMS)
        if want != have:
            raise bad_value("masks", f"<masks of detector shape {have}>", f"the dataset's detector shape {want}")
        for dim in DETECTOR_DIMS:
            if dim in masks.coords and dim in data.coords:
                mu = masks.coords[dim].attrs.get("units")
                du = data.coords[dim].attrs.get("units")
                same_units = mu is None or du is None or mu == du
                if not same_units or not close(masks.coords[dim].values, data.coords[dim].values, rtol=1e-6, atol=1e-9):
                    raise bad_value(
                        f"masks.coords[{dim!r}]",
                        f"<{mu} {masks.coords[dim].values[:3]}...>",
                        f"the dataset's coordinates ({du} {data.coords[dim].values[:3]}...): "
                        "build masks from the same dataset (its calibration and beam centre)",
                    )
    values = masks.data
    if isinstance(values, da.Array):
        values = values.compute()
    host = np.asarray(to_numpy(values))
    kind = host.dtype.kind
    if kind not in "biufc":
        raise bad_value("masks", f"<masks of dtype {host.dtype}>", "boolean, real or complex weights")
    if kind in "fc" and not np.all(np.isfinite(host)):
        bad = int(np.count_nonzero(~np.isfinite(host)))
        raise bad_value("masks", f"<masks with {bad} non-finite weights>", "finite weights (no NaN/inf)")
    empty = [
        str(n)
        for n, m in zip(masks.coords["mask"].values if "mask" in masks.coords else range(host.shape[0]), host)
        if not np.any(m)
    ]
    if empty:
        raise bad_value(
            "masks",
            f"<masks {empty} are zero everywhere>",
            "every mask to cover at least one detector pixel (check radii against the detector's angular range)",
        )
    return masks


def mask_weights(masks: xr.DataArray, *, sparse: bool | None = None) -> MaskWeights:
    """Flatten a checked mask stack to :class:`MaskWeights`.

    ``sparse=None`` uses ``masks.attrs["sparse"]`` when set, else a dense
    matrix (the engine still restricts the product to the pixels the masks
    touch). ``sparse=True`` stores a ``scipy.sparse`` matrix, which wins for
    many masks that each touch few pixels. Real masks become float64,
    complex ones complex128.
    """
    values = masks.data
    if isinstance(values, da.Array):
        values = values.compute()
    host = np.asarray(to_numpy(values))
    host = host.astype(np.complex128 if host.dtype.kind == "c" else np.float64)
    n_masks = host.shape[0]
    matrix = host.reshape(n_masks, -1).T
    if sparse is None:
        sparse = bool(masks.attrs.get("sparse", False))
    if sparse:
        import scipy.sparse as sp

        return MaskWeights(
            sp.csc_matrix(matrix), n_masks=n_masks, n_pixels=matrix.shape[0], sparse=True, frame_shape=host.shape[1:]
        )
    return MaskWeights(
        np.ascontiguousarray(matrix), n_masks=n_masks, n_pixels=matrix.shape[0], frame_shape=host.shape[1:]
    )


def whole_frames(blocks: Any) -> Any:
    """The one block of whole frames that ``blockwise(..., concatenate=False)`` hands over as ``[[block]]``."""
    while isinstance(blocks, list):
        (blocks,) = blocks  # one chunk along k_y and k_x (require_whole_frames)
    return blocks


def _block_kernel(block: Any, weights: MaskWeights, dtype: Any, batch_bytes: int) -> Any:
    return project_block(whole_frames(block), weights, dtype=dtype, batch_bytes=batch_bytes)


def block_meta(arr: da.Array, ndim: int, dtype: Any) -> Any:
    """An empty array of the input's backend (numpy or cupy) for dask's ``meta``."""
    try:
        return arr._meta.reshape((0,) * ndim).astype(dtype)
    except Exception:  # an event-block meta or another duck array: results are numpy/cupy arrays
        xp = getattr(arr._meta, "xp", np)
        return xp.empty((0,) * ndim, dtype=dtype)


def _single_mask_kernel(block: Any, weights: MaskWeights, dtype: Any, batch_bytes: int) -> Any:
    return project_block(whole_frames(block), weights, dtype=dtype, batch_bytes=batch_bytes)[..., 0]


def project_array(
    arr: da.Array,
    weights: MaskWeights,
    *,
    dtype: Any = np.float64,
    batch_bytes: int = BATCH_BYTES,
    squeeze: bool = False,
) -> da.Array:
    """Lazy ``(scan_y, scan_x, n_masks)`` projection of a 4-D dask array of frames (the forward operator).

    The weights travel to the workers once (one graph key), not once per task.
    ``squeeze`` with a single mask gives ``(scan_y, scan_x)`` from the same
    tasks (no extra selection layer: on sparse data a virtual image costs
    little more than the graph).
    """
    if arr.ndim != 4:
        raise bad_value("data", f"<array of shape {arr.shape}>", "4-D (scan_y, scan_x, k_y, k_x)")
    require_whole_frames(arr, "a mask projection")
    if arr.shape[2] * arr.shape[3] != weights.n_pixels:
        raise bad_value(
            "masks", f"<{weights.n_pixels} pixels per mask>", f"{arr.shape[2] * arr.shape[3]} pixels per frame"
        )
    w = dask.delayed(weights, pure=True, traverse=False)
    single = squeeze and weights.n_masks == 1
    # blockwise over the scan axes with the detector axes contracted and concatenate=False: the
    # kernel gets the chunk itself. (map_blocks(drop_axis=...) concatenates the blocks along the
    # dropped axes first, and dask's concatenate copies even a single block: a copy of every
    # chunk that cost as much as the 1-mask kernel itself.)
    name = "project-" + dask.base.tokenize(arr, w, dtype, batch_bytes, single)
    graph_args: list[Any] = [arr, "yxkl", w, None, dtype, None, int(batch_bytes), None]
    if single:
        return da.blockwise(
            _single_mask_kernel,
            "yx",
            *graph_args,
            concatenate=False,
            dtype=dtype,
            meta=block_meta(arr, 2, dtype),
            name=name,
        )
    return da.blockwise(
        _block_kernel,
        "yxm",
        *graph_args,
        new_axes={"m": weights.n_masks},
        concatenate=False,
        dtype=dtype,
        meta=block_meta(arr, 3, dtype),
        name=name,
    )


def _adjoint_kernel(block: Any, weights: MaskWeights) -> Any:
    return weights.adjoint(block)


def adjoint_array(coefficients: da.Array, weights: MaskWeights) -> da.Array:
    """Lazy patterns ``(scan_y, scan_x, k_y, k_x)`` from coefficients ``(scan_y, scan_x, n_masks)``.

    The adjoint of :func:`project_array`: ``c @ W^H`` per chunk of probe
    positions (whole frames out).
    """
    if coefficients.ndim != 3 or coefficients.shape[2] != weights.n_masks:
        raise bad_value(
            "coefficients", f"<array of shape {coefficients.shape}>", f"(scan_y, scan_x, {weights.n_masks})"
        )
    if weights.frame_shape is None:
        raise bad_value("weights", "<MaskWeights without frame_shape>", "masks built by mask_weights()")
    coefficients = coefficients.rechunk({2: -1})
    dtype = np.result_type(coefficients.dtype, weights.dtype)
    w = dask.delayed(weights, pure=True, traverse=False)
    ky, kx = weights.frame_shape
    return da.map_blocks(
        _adjoint_kernel,
        coefficients,
        w,
        drop_axis=2,
        new_axis=(2, 3),
        chunks=(coefficients.chunks[0], coefficients.chunks[1], (ky,), (kx,)),
        dtype=dtype,
        meta=block_meta(coefficients, 4, dtype),
        name="adjoint-" + dask.base.tokenize(coefficients, w),
    )


def project_checked(
    data: xr.DataArray,
    masks: xr.DataArray,
    *,
    dtype: Any = "float64",
    sparse: bool | None = None,
    batch_bytes: int = BATCH_BYTES,
    squeeze: bool = False,
    long_name: str = "mask projection",
    name: str | None = None,
) -> xr.DataArray:
    """:func:`project` for a dataset and masks that the caller has validated and checked.

    The public functions (:func:`project`, ``virtual_image``, ``center_of_mass``,
    ...) validate their input once and then call this. ``squeeze`` drops the
    ``mask`` dim of a single mask (kept as a scalar coordinate).
    """
    if not (isinstance(batch_bytes, (int, np.integer)) and batch_bytes > 0):
        raise bad_value("batch_bytes", batch_bytes, "a positive number of bytes")
    weights = mask_weights(masks, sparse=sparse)
    out_dtype = weights.result_dtype(data.dtype, dtype)
    single = squeeze and weights.n_masks == 1
    out = project_array(dask_data(data), weights, dtype=out_dtype, batch_bytes=batch_bytes, squeeze=single)
    coords = {d: data.coords[d] for d in SCAN_DIMS}
    labels = masks.coords["mask"] if "mask" in masks.coords else np.arange(weights.n_masks)
    coords["mask"] = labels[0] if single else labels
    attrs = {k: v for k, v in data.attrs.items() if k != "representation"}
    attrs["units"] = data.attrs.get("units", "counts")
    attrs["long_name"] = long_name
    dims = SCAN_DIMS if single else (*SCAN_DIMS, "mask")
    return xr.DataArray(out, dims=dims, coords=coords, attrs=attrs, name=name or masks.name or "projection")


def project(
    data: xr.DataArray,
    masks: xr.DataArray,
    *,
    dtype: Any = "float64",
    sparse: bool | None = None,
    batch_bytes: int = BATCH_BYTES,
) -> xr.DataArray:
    """Project every diffraction pattern onto a stack of masks (lazy): the forward operator.

    ``out[y, x, m] = sum_k data[y, x, k] * masks[m, k]`` per chunk as one
    matrix product, a few hundred frames at a time. Dense (numpy, cupy) and
    counted (electron-event) datasets go through the same engine and give
    the same result (for events a gather of the weights of every electron,
    O(counts)); float64 sums of integer counts and integer weights are exact.

    Parameters
    ----------
    data : xarray.DataArray
        A stemdask dataset ``(scan_y, scan_x, k_y, k_x)`` (numpy or cupy
        chunks, or electron events) chunked in whole frames.
    masks : xarray.DataArray
        Weights ``(mask, k_y, k_x)`` (boolean, real or complex), e.g. from
        :mod:`stemdask.imaging.detectors`; a single ``(k_y, k_x)`` mask is
        accepted. Its ``k_y``/``k_x`` coordinates, when present, must equal
        the dataset's.
    dtype : {"float64", "float32"}
        Accumulation precision. float64 (default) is exact for integer
        counts; float32 is faster with many masks. Complex data or weights
        give the complex dtype of that precision.
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
    resolve_dtype(dtype)
    return project_checked(data, check_masks(masks, data), dtype=dtype, sparse=sparse, batch_bytes=batch_bytes)


def back_project(coefficients: xr.DataArray, masks: Any) -> xr.DataArray:
    """Patterns from mask coefficients (lazy): the adjoint of :func:`project`.

    ``out[y, x, k] = sum_m coefficients[y, x, m] * conj(masks[m, k])``. For an
    orthonormal mask basis this is the least-squares approximation of the
    patterns the coefficients were projected from (lossy decompression).

    Parameters
    ----------
    coefficients : xarray.DataArray
        ``(scan_y, scan_x, mask)``, e.g. the output of :func:`project`.
    masks : xarray.DataArray
        The masks ``(mask, k_y, k_x)`` with detector coordinates (a
        ``detectors`` stack or a basis), as many as ``coefficients`` has.

    Returns
    -------
    xarray.DataArray
        Lazy ``(scan_y, scan_x, k_y, k_x)`` with the masks' detector
        coordinates and the coefficients' scan coordinates and attrs.

    Examples
    --------
    >>> import numpy as np, stemdask
    >>> from stemdask.imaging import back_project, detectors, project
    >>> data = stemdask.from_array(np.ones((2, 2, 8, 8)), detector_pixel_mrad=1.0)
    >>> disk = detectors.disk(data, 2.0)
    >>> float(back_project(project(data, disk), disk).values[0, 0, 4, 4])
    13.0
    """
    if not isinstance(coefficients, xr.DataArray) or tuple(coefficients.dims) != (*SCAN_DIMS, "mask"):
        raise bad_type("coefficients", coefficients, "a (scan_y, scan_x, mask) DataArray (from project)")
    masks = check_masks(masks)
    if masks.sizes["mask"] != coefficients.sizes["mask"]:
        raise bad_value(
            "masks",
            f"<{masks.sizes['mask']} masks>",
            f"as many masks as the coefficients have ({coefficients.sizes['mask']})",
        )
    weights = mask_weights(masks)
    out = adjoint_array(dask_data(coefficients), weights)
    coords: dict[str, Any] = {d: coefficients.coords[d] for d in SCAN_DIMS}
    for d in DETECTOR_DIMS:
        coords[d] = masks.coords[d] if d in masks.coords else np.arange(masks.sizes[d])
    attrs = dict(coefficients.attrs)
    attrs["long_name"] = "patterns from mask coefficients (adjoint projection)"
    return xr.DataArray(
        out, dims=(*SCAN_DIMS, *DETECTOR_DIMS), coords=coords, attrs=attrs, name=coefficients.name or "patterns"
    )


__all__ = [
    "BATCH_BYTES",
    "MaskWeights",
    "adjoint_array",
    "back_project",
    "check_masks",
    "mask_weights",
    "output_dtype",
    "project",
    "project_array",
    "project_block",
    "project_checked",
    "resolve_dtype",
]
