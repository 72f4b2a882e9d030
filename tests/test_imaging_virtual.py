"""Detectors, virtual images, PACBED, radial profiles and the beam centre."""

from __future__ import annotations

import numpy as np
import pytest

import stemdask
from stemdask.errors import InvalidArgumentError
from stemdask.imaging import beam_center, detectors, pacbed, radial_profile, virtual_image

PIX = (0.8, 0.6)  # mrad per pixel (y, x): non-square on purpose


def _dataset(rng, dtype="uint16", shape=(6, 7, 21, 24), chunks=(4, 3), center=(10.0, 11.5)):
    arr = rng.integers(0, 1000, size=shape).astype(dtype)
    data = stemdask.from_array(
        arr,
        chunks=chunks,
        detector_pixel_mrad=PIX,
        beam_center_px=center,
        energy_ev=300e3,
        semiangle_mrad=4.0,
        scan_step_A=0.4,
    )
    return arr, data


def _radius_grid(shape, center=(10.0, 11.5), offset=(0.0, 0.0)):
    iy, ix = np.indices(shape, dtype=np.float64)
    ky = (iy - center[0]) * PIX[0] - offset[0]
    kx = (ix - center[1]) * PIX[1] - offset[1]
    return ky, kx, np.hypot(ky, kx)


def test_shapes_follow_their_definitions(rng):
    _, data = _dataset(rng)
    ky, kx, r = _radius_grid(data.shape[2:])
    assert np.array_equal(detectors.disk(data, 3.0).values[0], r <= 3.0)
    assert np.array_equal(detectors.annulus(data, 2.0, 5.0).values[0], (r > 2.0) & (r <= 5.0))
    assert np.array_equal(detectors.annulus(data, 2.0, np.inf).values[0], r > 2.0)
    rect = detectors.rectangle(data, (-1.0, 2.0), (0.5, 3.0)).values[0]
    assert np.array_equal(rect, (ky >= -1) & (ky < 2) & (kx >= 0.5) & (kx < 3))
    quads = detectors.segments(data, 4, inner_mrad=1.0, outer_mrad=6.0, rotation_deg=45).values
    phi = np.degrees(np.arctan2(ky, kx))
    for i in range(4):
        lo = 45 + 90 * i
        inside = ((phi - lo) % 360 < 90) & (r > 1.0) & (r <= 6.0)
        assert np.array_equal(quads[i], inside)


def test_rings_tile_and_disk_plus_annulus_is_a_disk(rng):
    _, data = _dataset(rng)
    edges = [0.0, 1.5, 3.0, 4.5, 6.0]
    rings = detectors.rings(data, edges).values
    assert rings.sum(0).max() == 1  # no overlap
    assert np.array_equal(rings.any(0), detectors.disk(data, 6.0).values[0])
    both = detectors.disk(data, 3.0).values[0].astype(int) + detectors.annulus(data, 3.0, 6.0).values[0]
    assert np.array_equal(both, detectors.disk(data, 6.0).values[0])


def test_centre_and_shifted_redraw(rng):
    _, data = _dataset(rng)
    _, _, r = _radius_grid(data.shape[2:], offset=(1.6, -1.2))
    moved = detectors.disk(data, 3.0, center_mrad=(1.6, -1.2))
    assert np.array_equal(moved.values[0], r <= 3.0)
    redrawn = detectors.shifted(detectors.disk(data, 3.0), (1.6, -1.2))
    assert np.array_equal(redrawn[0] > 0, moved.values[0])
    # custom masks shift by interpolation: a whole-pixel shift is exact
    custom = detectors.custom(data, detectors.disk(data, 3.0).values[0])
    shifted = detectors.shifted(custom, (2 * PIX[0], -3 * PIX[1]))[0]
    np.testing.assert_allclose(shifted, np.roll(np.roll(custom.values[0], 2, 0), -3, 1), atol=1e-9)


def test_bad_detectors_raise(rng):
    _, data = _dataset(rng)
    with pytest.raises(InvalidArgumentError, match="radius_mrad"):
        detectors.disk(data, -1.0)
    with pytest.raises(InvalidArgumentError, match="outer_mrad"):
        detectors.annulus(data, 4.0, 3.0)
    with pytest.raises(InvalidArgumentError, match="cover"):
        detectors.annulus(data, 50.0, 60.0)  # beyond the detector: empty
    with pytest.raises(InvalidArgumentError, match="edges_mrad"):
        detectors.rings(data, [0, 2, 1])
    with pytest.raises(InvalidArgumentError, match="shape"):
        detectors.custom(data, np.ones((5, 5)))
    with pytest.raises(InvalidArgumentError, match="finite"):
        detectors.custom(data, np.full(data.shape[2:], np.nan))
    with pytest.raises(InvalidArgumentError, match="center_mrad"):
        detectors.disk(data, 2.0, center_mrad=(np.nan, 0))
    with pytest.raises(InvalidArgumentError, match="labels"):
        detectors.stack(detectors.disk(data, 2.0), detectors.disk(data, 3.0))


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "int32", "float32", "float64"])
def test_virtual_images_match_numpy(local_client, rng, dtype):
    arr, data = _dataset(rng, dtype)
    det = detectors.stack(
        detectors.disk(data, 4.0),
        detectors.annulus(data, 4.0, 8.0),
        detectors.segments(data, 4, outer_mrad=4.0, name="q"),
    )
    got = virtual_image(data, det).compute()
    ref = np.einsum("abkl,mkl->abm", arr.astype(np.float64), det.values)
    np.testing.assert_allclose(got.values, ref, rtol=1e-12)
    single = virtual_image(data, detectors.annulus(data, 4.0, 8.0))
    assert single.dims == ("scan_y", "scan_x")
    np.testing.assert_allclose(single.values, ref[..., 1], rtol=1e-12)
    # the accessor is the same function
    np.testing.assert_allclose(data.stem.virtual_image(det).values, ref, rtol=1e-12)


def test_virtual_image_with_per_pattern_shifts(rng):
    arr, data = _dataset(rng, shape=(5, 6, 21, 24), chunks=(2, 4))
    yy, xx = np.meshgrid(np.arange(5), np.arange(6), indexing="ij")
    # a descan plane, in whole quarter pixels so the reference needs no rounding
    sy = 0.25 * PIX[0] * np.round(yy * 1.5)
    sx = -0.25 * PIX[1] * np.round(xx * 2.0)
    import xarray as xr

    shifts = xr.DataArray(
        np.stack([sy, sx], -1), dims=("scan_y", "scan_x", "component"), coords={"component": ["y", "x"]}
    )
    det = detectors.annulus(data, 2.0, 5.0)
    got = virtual_image(data, det, shifts=shifts).values
    ref = np.empty((5, 6))
    for i in range(5):
        for j in range(6):
            m = detectors.annulus(data, 2.0, 5.0, center_mrad=(sy[i, j], sx[i, j])).values[0]
            ref[i, j] = (arr[i, j].astype(np.float64) * m).sum()
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    # electron events: the masks follow the beam in the same engine, frames selected without densifying
    counts = rng.poisson(0.3, arr.shape).astype(np.uint16)
    counted = stemdask.events.from_dense(data.copy(data=counts).chunk({"scan_y": 2, "scan_x": 4}))
    ref_counts = np.array(
        [
            [
                (counts[i, j] * detectors.annulus(data, 2.0, 5.0, center_mrad=(sy[i, j], sx[i, j])).values[0]).sum()
                for j in range(6)
            ]
            for i in range(5)
        ]
    )
    np.testing.assert_array_equal(virtual_image(counted, det, shifts=shifts).values, ref_counts)
    with pytest.raises(InvalidArgumentError, match="shifts"):
        virtual_image(data, det, shifts=shifts.isel(scan_y=slice(0, 3)))


def test_pacbed_reductions(rng):
    arr, data = _dataset(rng, "uint8")
    np.testing.assert_allclose(pacbed(data).values, arr.astype(np.float64).mean((0, 1)), rtol=1e-12)
    assert pacbed(data, "sum").values.sum() == arr.astype(np.int64).sum()
    mx = pacbed(data, "max").compute()
    assert mx.dtype == np.uint8 and np.array_equal(mx.values, arr.max((0, 1)))
    assert np.array_equal(data.stem.pacbed("max").values, arr.max((0, 1)))
    with pytest.raises(InvalidArgumentError, match="reduce"):
        pacbed(data, "median")


def test_radial_profile_matches_numpy(rng):
    arr, data = _dataset(rng)
    edges = np.array([0.0, 1.0, 2.5, 4.0, 6.5])
    prof = radial_profile(data, edges)
    assert prof.dims == ("scan_y", "scan_x", "k_r")
    _, _, r = _radius_grid(data.shape[2:])
    ref = np.stack(
        [
            arr[..., (r > lo if lo > 0 else r >= 0) & (r <= hi)].astype(np.float64).mean(-1)
            for lo, hi in zip(edges[:-1], edges[1:])
        ],
        -1,
    )
    np.testing.assert_allclose(prof.values, ref, rtol=1e-12)
    np.testing.assert_allclose(prof.coords["k_r"].values, 0.5 * (edges[:-1] + edges[1:]))
    summed = radial_profile(pacbed(data, "sum"), edges, statistic="sum")
    np.testing.assert_allclose(summed.values, (ref * prof.coords["pixels"].values).sum((0, 1)), rtol=1e-10)
    assert radial_profile(data, 5).sizes["k_r"] == 5


def test_beam_center_finds_a_displaced_disk():
    shape = (4, 5, 40, 44)
    iy, ix = np.indices(shape[2:], dtype=np.float64)
    true_px = (17.3, 24.6)
    disk = (np.hypot(iy - true_px[0], ix - true_px[1]) <= 7).astype(np.float64)
    arr = np.broadcast_to(1000 * disk + 3.0, shape).copy()  # weak dark-field background
    data = stemdask.from_array(arr, detector_pixel_mrad=PIX, chunks=(2, 5))
    got = beam_center(data).values
    expect = ((true_px[0] - 20) * PIX[0], (true_px[1] - 22) * PIX[1])
    np.testing.assert_allclose(got, expect, atol=0.05 * max(PIX))
    # a disk detector centred there covers the disk exactly
    det = detectors.disk(data, 7 * min(PIX) * 0.9, center_mrad=got)
    assert virtual_image(data, det).values.min() == pytest.approx(1003 * det.values.sum())


@pytest.mark.gpu
def test_virtual_image_and_com_on_cupy(rng):
    import cupy

    from stemdask.imaging import center_of_mass

    arr, data = _dataset(rng)
    gpu = stemdask.from_array(cupy.asarray(arr), chunks=(4, 3), detector_pixel_mrad=PIX, beam_center_px=(10.0, 11.5))
    det = detectors.stack(detectors.disk(data, 4.0), detectors.annulus(data, 4.0, 8.0))
    got = virtual_image(gpu, det).compute()
    ref = np.einsum("abkl,mkl->abm", arr.astype(np.float64), det.values)
    np.testing.assert_allclose(cupy.asnumpy(got.data), ref, rtol=1e-10)
    com_gpu = center_of_mass(gpu).compute()
    com_cpu = center_of_mass(data).compute()
    np.testing.assert_allclose(cupy.asnumpy(com_gpu.data), com_cpu.values, rtol=1e-10)
