"""The mask-projection engine against a plain NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import stemdask
from stemdask.errors import InvalidArgumentError, InvalidTypeError
from stemdask.imaging import detectors, project, project_block
from stemdask.imaging.project import MaskWeights, mask_weights

DTYPES = ["uint8", "uint16", "uint32", "int16", "int32", "int64", "float32", "float64"]


def _data(rng, dtype, shape=(7, 11, 13, 10), chunks=(3, 4)):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        lo = max(info.min, -1000)
        arr = rng.integers(lo, info.max, size=shape, dtype=dtype, endpoint=True)
    else:
        arr = (rng.standard_normal(shape) * 100).astype(dtype)
    return arr, stemdask.from_array(arr, chunks=chunks, detector_pixel_mrad=(0.7, 0.9), energy_ev=200e3)


def _masks(data, rng):
    weights = rng.random((4, *data.shape[2:]))
    weights[1] = weights[1] > 0.5
    weights[2] = 0
    weights[2, 3:7, 2:5] = -1.5  # negative weights are allowed
    return detectors.stack(detectors.disk(data, 3.0), detectors.custom(data, weights, name="w"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_project_matches_numpy_on_cluster(local_client, rng, dtype):
    arr, data = _data(rng, dtype)
    masks = _masks(data, rng)
    out = project(data, masks)
    assert out.dims == ("scan_y", "scan_x", "mask")
    assert out.chunks[:2] == data.chunks[:2]
    got = out.compute()
    ref = np.einsum("abkl,mkl->abm", arr.astype(np.float64), masks.values.astype(np.float64))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got.values, ref, rtol=1e-12, atol=1e-9 * np.abs(ref).max())
    assert list(got.coords["mask"].values) == list(masks.coords["mask"].values)


def test_uint32_sums_are_exact_beyond_float32(rng):
    # every pixel at the maximum: a float32 or int32 accumulator would be wrong
    arr = np.full((3, 5, 33, 31), np.iinfo(np.uint32).max, dtype=np.uint32)
    arr[1, 2, 4, 4] -= 1
    data = stemdask.from_array(arr, chunks=(2, 2))
    ones = detectors.custom(data, np.ones(arr.shape[2:], bool))
    got = project(data, ones).values[..., 0]
    ref = np.full((3, 5), int(np.iinfo(np.uint32).max) * 33 * 31)
    ref[1, 2] -= 1
    assert np.array_equal(got.astype(np.int64), ref)


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("batch_bytes", [1, 700, 2**23])
def test_sparse_dense_and_batches_agree(rng, sparse, batch_bytes):
    arr, data = _data(rng, "uint16", shape=(5, 6, 24, 20), chunks=(2, 5))
    rings = detectors.rings(data, np.arange(0, 9, 1.0))
    ref = np.einsum("abkl,mkl->abm", arr.astype(np.float64), rings.values.astype(np.float64))
    got = project(data, rings, sparse=sparse, batch_bytes=batch_bytes).values
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_sparse_product_path_used_for_many_small_masks(rng):
    arr, data = _data(rng, "uint16", shape=(3, 4, 20, 20), chunks=(3, 4))
    # one mask per pixel pair: nnz is tiny relative to support x masks -> the sparse product
    weights = np.zeros((100, 20, 20))
    for i in range(100):
        weights[i].flat[4 * i] = 1
        weights[i].flat[4 * i + 1] = 2
    masks = detectors.custom(data, weights)
    w = mask_weights(masks, sparse=True)
    assert w.use_sparse_product
    got = project(data, masks, sparse=True).values
    ref = np.einsum("abkl,mkl->abm", arr.astype(np.float64), weights)
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_float32_on_request(rng):
    arr, data = _data(rng, "uint8")
    masks = _masks(data, rng)
    got = project(data, masks, dtype="float32").compute()
    assert got.dtype == np.float32
    ref = np.einsum("abkl,mkl->abm", arr.astype(np.float64), masks.values.astype(np.float64))
    np.testing.assert_allclose(got.values, ref, rtol=1e-5, atol=1e-3)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        project(data, masks, dtype="int32")


def test_project_is_lazy(rng):
    _, data = _data(rng, "uint16")
    out = project(data, _masks(data, rng))
    assert hasattr(out.data, "dask")


def test_bad_masks_raise_clear_errors(rng):
    _, data = _data(rng, "uint16", shape=(3, 4, 12, 10))
    ok = detectors.disk(data, 2.0)
    with pytest.raises(InvalidArgumentError, match="detector shape"):
        project(data, xr.DataArray(np.ones((1, 11, 10)), dims=("mask", "k_y", "k_x")))
    with pytest.raises(InvalidArgumentError, match="non-finite"):
        bad = ok.astype(float).copy()
        bad.values[0, 5, 5] = np.nan
        project(data, bad)
    with pytest.raises(InvalidArgumentError, match="zero everywhere"):
        project(data, xr.DataArray(np.zeros((2, 12, 10)), dims=("mask", "k_y", "k_x"), coords={"mask": ["a", "b"]}))
    with pytest.raises(InvalidArgumentError, match="at least one mask"):
        project(data, xr.DataArray(np.zeros((0, 12, 10)), dims=("mask", "k_y", "k_x")))
    with pytest.raises(InvalidArgumentError, match="dims"):
        project(data, xr.DataArray(np.ones((12, 10, 1)), dims=("k_y", "k_x", "mask")))
    with pytest.raises(InvalidTypeError, match="masks"):
        project(data, np.ones((1, 12, 10)))
    other = stemdask.from_array(np.zeros((2, 2, 12, 10)), detector_pixel_mrad=0.5)
    with pytest.raises(InvalidArgumentError, match="coordinates"):
        project(data, detectors.disk(other, 2.0))


class _EventBlock:
    """A toy block type: dense frames stored transposed, to prove dispatch works."""

    def __init__(self, frames):
        self.frames = frames


def test_project_block_dispatch_can_be_extended(rng):
    frames = rng.integers(0, 9, (2, 3, 6, 5)).astype(np.uint16)
    weights = MaskWeights(rng.random((30, 2)), n_masks=2, n_pixels=30)

    @project_block.register(_EventBlock)
    def _(block, w, *, dtype=np.float64, batch_bytes=0):
        flat = block.frames.reshape(6, 30).astype(dtype)
        return (flat @ w.dense(dtype)).reshape(2, 3, 2)

    got = project_block(_EventBlock(frames), weights)
    np.testing.assert_allclose(got, project_block(frames, weights))
    with pytest.raises(InvalidTypeError, match="block"):
        project_block([1, 2, 3], weights)


@pytest.mark.gpu
def test_project_cupy_matches_numpy(rng):
    import cupy

    arr, data = _data(rng, "uint16")
    gpu = stemdask.from_array(cupy.asarray(arr), chunks=(3, 4), detector_pixel_mrad=(0.7, 0.9))
    masks = _masks(data, rng)
    for sparse in (False, True):
        got = project(gpu, masks, sparse=sparse).compute()
        ref = np.einsum("abkl,mkl->abm", arr.astype(np.float64), masks.values.astype(np.float64))
        np.testing.assert_allclose(cupy.asnumpy(got.data), ref, rtol=1e-10)


@pytest.mark.parametrize("dtype", ["uint16", "int32", "uint32"])
def test_exact_float32_path_blocks_partial_sums(rng, dtype):
    # full-range values force short float32 partial sums (or the float64 fallback); results stay exact
    info = np.iinfo(dtype)
    lo, hi = (0, 65535) if dtype == "uint16" else (-(2**20), 2**20) if dtype == "int32" else (0, 2**31)
    arr = rng.integers(lo, hi, size=(4, 5, 40, 44), endpoint=True).astype(dtype)
    data = stemdask.from_array(arr, chunks=(3, 2))
    weights = rng.integers(-3, 4, size=(3, 40, 44))
    weights[0] = 1
    masks = detectors.custom(data, weights)
    got = project(data, masks).values
    ref = np.einsum("abkl,mkl->abm", arr.astype(object), weights.astype(object)).astype(np.float64)
    assert np.array_equal(got, ref), (info, np.abs(got - ref).max())


def test_kernels_run_with_one_blas_thread_and_restore_it(rng):
    import threading

    from stemdask.imaging import _blas

    controls = _blas.blas_controls()
    if not controls:
        pytest.skip("no OpenBLAS thread control found in this process (another BLAS or OS)")
    get0, put0 = controls[0]
    before = [get() for get, _ in controls]
    put0(2)
    seen = []
    barrier = threading.Barrier(2)

    def kernel():
        with _blas.single_blas_thread():
            barrier.wait()  # both inside at once: the count must stay at 1 until both leave
            seen.append(get0())
            barrier.wait()

    threads = [threading.Thread(target=kernel) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [1, 1]
    assert get0() == 2  # restored once the last kernel left
    arr, data = _data(rng, "uint16")
    project(data, _masks(data, rng)).compute(scheduler="threads", num_workers=2)
    assert get0() == 2
    put0(before[0])


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "int16", "int64", "float32", "float64"])
def test_marginal_masks_use_row_column_sums_and_match_numpy(rng, dtype):
    """Masks that vary along one detector axis (CoM: k_y, k_x, 1) take the one-pass kernel."""
    arr, data = _data(rng, dtype)
    ky = data.k_y.values[:, None] * np.ones((1, data.sizes["k_x"]))
    kx = np.ones((data.sizes["k_y"], 1)) * data.k_x.values[None, :]
    band = np.zeros_like(ky)
    band[3:7] = 2.0  # a horizontal band with integer weight: a function of the row
    weights = np.stack([ky, kx, np.ones_like(ky), band])
    masks = detectors.custom(data, weights)
    assert mask_weights(masks).marginal is not None
    ref = np.einsum("abkl,mkl->abm", arr.astype(np.float64), weights)
    got = project(data, masks).values  # int64 data (no int64 row sums: they could overflow) take BLAS
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-9 * np.abs(ref).max())
    if np.dtype(dtype).kind in "iu" and np.dtype(dtype).itemsize <= 4:  # integer weights, counts: exact
        np.testing.assert_array_equal(got[..., 2], arr.sum(axis=(2, 3), dtype=np.int64))
        np.testing.assert_array_equal(got[..., 3], 2 * arr[:, :, 3:7].sum(axis=(2, 3), dtype=np.int64))


def test_masks_varying_along_both_axes_are_not_marginal(rng):
    arr, data = _data(rng, "uint16")
    disk = detectors.disk(data, 3.0)
    assert mask_weights(disk).marginal is None
    ky = data.k_y.values[:, None] * np.ones((1, data.sizes["k_x"]))
    masked_com = detectors.custom(data, np.stack([ky * disk.values[0], disk.values[0]]))
    assert mask_weights(masked_com).marginal is None
