"""Counted datasets through the one imaging engine, and the O(counts) operations, equal the dense path exactly."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import stemdask
import stemdask.events as ev
from stemdask import imaging
from stemdask.errors import InvalidArgumentError
from stemdask.events.block import EventBlock
from stemdask.events.ops import gather_block, gather_block_vectorised

SPARSITIES = [0.005, 0.05, 0.5, 3.0]


def make(rate: float, shape=(6, 8, 12, 10), chunks=(4, 3), seed=0):
    dense = np.random.default_rng(seed).poisson(rate, shape).astype(np.uint16)
    data = stemdask.from_array(
        dense, chunks=chunks, detector_pixel_mrad=1.5, scan_step_A=0.4, energy_ev=300e3, beam_center_px=(5.5, 4.0)
    )
    return dense, data, ev.from_dense(data)


def as_masks(values, data):
    """Plain weights (mask, k_y, k_x) as a mask stack with the dataset's detector coordinates."""
    values = np.asarray(values)
    dims = ("k_y", "k_x") if values.ndim == 2 else ("mask", "k_y", "k_x")
    return xr.DataArray(values, dims=dims, coords={"k_y": data.k_y, "k_x": data.k_x})


@pytest.mark.parametrize("rate", SPARSITIES)
def test_projection_and_virtual_detectors_equal_dense(rate):
    dense, data, counted = make(rate)
    masks = as_masks(np.random.default_rng(1).integers(-2, 3, (3, 12, 10)), data)
    want = np.einsum("abij,mij->abm", dense.astype(np.int64), masks.values)
    got = imaging.project(counted, masks)
    # one engine: the same result type as the dense path, exact integer values in float64
    assert got.dims == ("scan_y", "scan_x", "mask") and got.dtype == np.float64
    np.testing.assert_array_equal(got.values, want)
    assert "representation" not in got.attrs
    fmask = as_masks(np.random.default_rng(2).random((12, 10)), data)
    img = imaging.virtual_image(counted, fmask)
    assert img.dims == ("scan_y", "scan_x")
    np.testing.assert_allclose(img.values, np.einsum("abij,ij->ab", dense, fmask.values), rtol=1e-12)
    np.testing.assert_allclose(img.values, imaging.virtual_image(data, fmask).values, rtol=1e-12)
    # the imaging engine on events: exactly the dense engine's result
    stack = imaging.detectors.stack(imaging.detectors.disk(data, 4.0), imaging.detectors.annulus(data, 4.0, 9.0))
    xr.testing.assert_equal(imaging.project(counted, stack).compute(), imaging.project(data, stack).compute())


@pytest.mark.parametrize("rate", SPARSITIES)
def test_sums_com_radial_equal_dense(rate):
    dense, data, counted = make(rate)
    np.testing.assert_array_equal(ev.frame_sum(counted).values, dense.sum((0, 1)))
    for reduce, want in (("sum", dense.sum((0, 1))), ("mean", dense.mean((0, 1))), ("max", dense.max((0, 1)))):
        got = imaging.pacbed(counted, reduce)
        np.testing.assert_allclose(got.values, want, rtol=1e-12)
        assert got.dtype == imaging.pacbed(data, reduce).dtype
    np.testing.assert_array_equal(ev.total_counts(counted).values, dense.sum((2, 3)))
    np.testing.assert_array_equal(ev.events_per_frame(counted).values, dense.sum((2, 3)))
    com = imaging.center_of_mass(counted).compute()
    ky, kx = data.k_y.values, data.k_x.values
    total = dense.sum((2, 3)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        want_y = (dense * ky[:, None]).sum((2, 3)) / total
        want_x = (dense * kx[None, :]).sum((2, 3)) / total
    np.testing.assert_allclose(com.sel(component="y").values, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(com.sel(component="x").values, want_x, rtol=1e-12, atol=1e-12)
    xr.testing.assert_allclose(com, imaging.center_of_mass(data).compute(), rtol=1e-12, atol=1e-12)
    assert com.attrs["units"] == "mrad"
    r = np.hypot(ky[:, None], kx[None, :])
    bins = np.floor(r / 1.5).astype(int)
    radial = ev.radial_sum(counted)
    want = np.stack([(dense * (bins == i)).sum((2, 3)) for i in range(bins.max() + 1)], axis=-1)
    np.testing.assert_array_equal(radial.values, want)
    assert int(radial.sum()) == int(dense.sum())  # nothing dropped by default
    ranged = ev.radial_sum(counted, bin_width=3.0, n_bins=2).values
    np.testing.assert_array_equal(
        ranged, np.stack([(dense * (np.floor(r / 3) == i)).sum((2, 3)) for i in range(2)], axis=-1)
    )


@pytest.mark.parametrize("rate", [0.05, 0.5])
def test_binning_and_cropping_equal_dense(rate):
    dense, data, counted = make(rate)
    binned = ev.bin_detector(counted, 2)
    assert ev.is_counted(binned)
    np.testing.assert_array_equal(ev.to_dense(binned).values, dense.reshape(6, 8, 6, 2, 5, 2).sum((3, 5)))
    coarse = data.coarsen(k_y=2, k_x=2).sum()
    np.testing.assert_allclose(binned.k_y.values, coarse.k_y.values)
    np.testing.assert_allclose(binned.k_x.values, coarse.k_x.values)
    assert binned.attrs["detector_pixel_mrad"] == [3.0, 3.0]
    stemdask.validate(binned)
    scan = ev.bin_scan(counted, 2)
    np.testing.assert_array_equal(ev.to_dense(scan).values, dense.reshape(3, 2, 4, 2, 12, 10).sum((1, 3)))
    assert scan.attrs["scan_step_A"] == [0.8, 0.8]
    np.testing.assert_allclose(scan.scan_x.values, data.coarsen(scan_x=2).mean().scan_x.values)
    stemdask.validate(scan)
    cropped = ev.crop(counted, k_y=slice(2, 9), k_x=slice(1, 10))
    np.testing.assert_array_equal(ev.to_dense(cropped).values, dense[:, :, 2:9, 1:10])
    assert cropped.attrs["beam_center_px"] == [3.5, 3.0]
    assert counted.attrs["beam_center_px"] == [5.5, 4.0]  # the input is untouched
    np.testing.assert_array_equal(cropped.k_y.values, data.k_y.values[2:9])
    stemdask.validate(cropped)
    np.testing.assert_array_equal(ev.to_dense(ev.scan_crop(counted, scan_x=slice(1, 6))).values, dense[:, 1:6])
    with pytest.raises(InvalidArgumentError, match="divisor of k_x=10"):
        ev.bin_detector(counted, 4)
    with pytest.raises(InvalidArgumentError, match="step 1"):
        ev.crop(counted, k_y=slice(0, 8, 2))


def test_gather_kernels_agree():
    dense = np.random.default_rng(4).poisson(0.3, (3, 5, 6, 7)).astype(np.uint16)
    block = EventBlock.from_dense(dense)
    w = np.random.default_rng(5).random((42, 4))
    np.testing.assert_allclose(gather_block(block, w), gather_block_vectorised(block, w), rtol=1e-12)
    np.testing.assert_allclose(gather_block(block, w), np.einsum("abp,pm->abm", dense.reshape(3, 5, 42), w), rtol=1e-12)


def test_masks_are_checked_as_for_dense_data():
    _, data, counted = make(0.1)
    with pytest.raises(InvalidArgumentError, match="detector shape"):
        imaging.project(counted, xr.DataArray(np.ones((2, 5, 5)), dims=("mask", "k_y", "k_x")))
    with pytest.raises(InvalidArgumentError, match="finite"):
        imaging.project(counted, as_masks(np.full((12, 10), np.nan), data))
    with pytest.raises(InvalidArgumentError, match="zero everywhere"):
        imaging.virtual_image(counted, as_masks(np.zeros((12, 10)), data))
    other = stemdask.from_array(np.zeros((2, 2, 12, 10), np.uint16), detector_pixel_mrad=0.5)
    with pytest.raises(InvalidArgumentError, match="coordinates"):
        imaging.project(counted, imaging.detectors.disk(other, 2.0))
    with pytest.raises(InvalidArgumentError, match="counted dataset"):
        ev.frame_sum(stemdask.from_array(np.zeros((2, 2, 3, 3), np.uint16)))


def test_operations_on_local_cluster(local_client):
    dense, data, counted = make(0.05, shape=(8, 8, 16, 16), chunks=(4, 4), seed=7)
    masks = as_masks(np.random.default_rng(8).integers(0, 2, (2, 16, 16)), data)
    got_proj, got_sum, got_total, got_bin = local_client.compute(
        [
            imaging.project(counted, masks),
            ev.frame_sum(counted),
            ev.total_counts(counted),
            ev.to_dense(ev.bin_scan(counted, 2)),
        ],
        sync=True,
    )
    np.testing.assert_array_equal(got_proj.values, np.einsum("abij,mij->abm", dense.astype(np.int64), masks.values))
    np.testing.assert_array_equal(got_sum.values, dense.sum((0, 1)))
    np.testing.assert_array_equal(got_total.values, dense.sum((2, 3)))
    np.testing.assert_array_equal(got_bin.values, dense.reshape(4, 2, 4, 2, 16, 16).sum((1, 3)))
    raw = stemdask.from_array(dense.astype(np.float32) * 2 + 5, chunks=(4, 4))
    counted2 = ev.count_electrons(raw, threshold=0.5, dark=5.0, gain=0.5)
    np.testing.assert_array_equal(local_client.compute(ev.to_dense(counted2), sync=True).values, dense)


@pytest.mark.gpu
def test_operations_on_gpu_blocks():
    import cupy

    dense = np.random.default_rng(9).poisson(0.05, (4, 6, 16, 16)).astype(np.uint16)
    gpu_block = EventBlock.from_dense(cupy.asarray(dense))
    assert gpu_block.xp is cupy
    np.testing.assert_array_equal(cupy.asnumpy(gpu_block.to_dense()), dense)
    w = np.random.default_rng(10).integers(0, 3, (256, 3)).astype(np.float64)
    np.testing.assert_array_equal(
        cupy.asnumpy(gather_block(gpu_block, cupy.asarray(w))),
        np.einsum("abp,pm->abm", dense.reshape(4, 6, 256).astype(float), w),
    )
    np.testing.assert_array_equal(cupy.asnumpy(np.sum(gpu_block, axis=(0, 1))), dense.sum((0, 1)))
    np.testing.assert_array_equal(cupy.asnumpy(gpu_block[1:3, :, 2:9].to_dense()), dense[1:3, :, 2:9])
    data = stemdask.from_array(cupy.asarray(dense), chunks=(2, 3))
    counted = ev.from_dense(data)
    np.testing.assert_array_equal(cupy.asnumpy(ev.frame_sum(counted).data.compute()), dense.sum((0, 1)))
    masks = as_masks(np.random.default_rng(11).integers(0, 2, (2, 16, 16)), data)
    got = imaging.project(counted, masks).data.compute()
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(got), np.einsum("abij,mij->abm", dense.astype(np.int64), masks.values))
    np.testing.assert_array_equal(cupy.asnumpy(imaging.pacbed(counted, "max").data.compute()), dense.max((0, 1)))


@pytest.mark.parametrize("name", ["001_4x2_6bit.mib", "002_merlin_test_roi_sig256x128_nav4x2_hot_pixel_52x_39y.mib"])
def test_real_merlin_counts_as_events(shared_data, name):
    """Real counting-detector frames (dense 6-bit counts; a sparse 12-bit scan with a hot pixel)."""
    data = stemdask.open_dataset(shared_data / "merlin" / name)
    dense = data.values
    counted = ev.from_dense(data)
    np.testing.assert_array_equal(ev.to_dense(counted).values, dense)
    np.testing.assert_array_equal(ev.frame_sum(counted).values, dense.sum((0, 1), dtype=np.int64))
    recount = ev.count_electrons(data, threshold=1)
    np.testing.assert_array_equal(ev.to_dense(recount).values, dense)
    rle = ev.rle_decode(ev.rle_encode(counted.data.compute()))
    np.testing.assert_array_equal(rle.to_dense(), dense)
    masks = imaging.detectors.stack(imaging.detectors.disk(data, 20.0), imaging.detectors.annulus(data, 20.0, 60.0))
    xr.testing.assert_equal(imaging.project(counted, masks).compute(), imaging.project(data, masks).compute())
