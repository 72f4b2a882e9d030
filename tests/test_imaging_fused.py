"""The engine's fused one-pass kernels (integer frames, one or two masks, affine masks) against exact references."""

from __future__ import annotations

import numpy as np
import pytest

import stemdask
from stemdask.imaging import center_of_mass, detectors, project
from stemdask.imaging.project import _project_fused, mask_weights

INT_DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32"]


def _frames(rng, dtype, shape=(5, 6, 17, 12)):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)  # the full range


def _exact(arr, weights):
    """Sums in Python integers (no rounding anywhere)."""
    return np.einsum("abkl,mkl->abm", arr.astype(np.int64).astype(object), weights.astype(object))


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("n_masks", [1, 4])
def test_fused_dot_is_exact_for_integer_weights(rng, dtype, n_masks):
    arr = _frames(rng, dtype)
    data = stemdask.from_array(arr, chunks=(2, 4), detector_pixel_mrad=1.0)
    weights = rng.integers(-3, 4, size=(n_masks, *arr.shape[2:]))
    weights[0, 0, 0] = 3  # no mask is zero everywhere
    masks = detectors.custom(data, weights)
    block = arr[:2, :4]
    assert _project_fused(block, mask_weights(masks), np.float64) is not None  # the fused kernel applies
    got = project(data, masks).values
    assert got.dtype == np.float64
    assert np.array_equal(got, _exact(arr, weights).astype(np.float64))
    np.testing.assert_array_equal(project(data, masks, dtype="float32").values, got.astype(np.float32))


@pytest.mark.parametrize("n_frames", [1, 7, 8, 9, 16, 21])
def test_fused_dot_groups_and_remainder_frames(rng, n_frames):
    """Frames go through the kernel 8 at a time, the rest one by one: every frame of every count is exact."""
    from stemdask.imaging._fused import dot_masks

    frames = rng.integers(0, 65535, size=(n_frames, 40), dtype=np.uint16, endpoint=True)
    weights = rng.integers(-5, 6, size=(3, 40))
    exact = (frames.astype(object) @ weights.T.astype(object)).astype(np.float64)
    assert np.array_equal(dot_masks(frames, weights.astype(np.float64)), exact)


def test_fused_dot_with_real_weights_matches_float64_reference(rng):
    arr = _frames(rng, "uint16")
    data = stemdask.from_array(arr, chunks=(3, 3), detector_pixel_mrad=1.0)
    weights = rng.standard_normal((2, *arr.shape[2:]))
    got = project(data, detectors.custom(data, weights)).values
    ref = np.einsum("abkl,mkl->abm", arr.astype(np.float64), weights)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


def test_weights_beyond_the_exact_bound_leave_the_fused_kernel(rng):
    # uint32 pixels of up to 2**32 times weights of 2**21 on 204 pixels can exceed 2**53
    arr = _frames(rng, "uint32")
    data = stemdask.from_array(arr, chunks=(2, 4), detector_pixel_mrad=1.0)
    weights = 2.0**21 * (rng.random(arr.shape[2:]) < 0.8)  # not affine: no moments path either
    masks = detectors.custom(data, weights)
    assert _project_fused(arr[:2, :4], mask_weights(masks), np.float64) is None
    ref = np.einsum("abkl,kl->ab", arr.astype(np.float64), weights)
    np.testing.assert_allclose(project(data, masks).values[..., 0], ref, rtol=1e-13)


def test_five_masks_and_float_frames_take_the_other_paths(rng):
    arr = _frames(rng, "uint16")
    data = stemdask.from_array(arr, detector_pixel_mrad=1.0)
    five = detectors.custom(data, rng.integers(0, 2, size=(5, *arr.shape[2:])))
    assert _project_fused(arr, mask_weights(five), np.float64) is None
    one = detectors.disk(data, 4.0)
    assert _project_fused(arr.astype(np.float32), mask_weights(one), np.float64) is None


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "uint32"])
def test_affine_moments_give_the_exact_centre_of_mass_sums(rng, dtype):
    arr = _frames(rng, dtype, shape=(4, 7, 23, 19))
    if dtype == "uint16":
        arr[0, 0] = 65535  # a frame at the maximum everywhere
    data = stemdask.from_array(arr, chunks=(3, 5), detector_pixel_mrad=(0.7, 0.9))
    rows, cols = np.mgrid[: arr.shape[2], : arr.shape[3]]
    # integer affine weights: total, 3 * row - 2, col + 5 (exact integer sums expected)
    weights = np.stack([np.ones_like(rows), 3 * rows - 2, cols + 5])
    masks = detectors.custom(data, weights)
    assert mask_weights(masks).affine is not None
    assert _project_fused(arr[:3, :5], mask_weights(masks), np.float64) is not None
    assert np.array_equal(project(data, masks).values, _exact(arr, weights).astype(np.float64))
    # the centre of mass itself: mrad weights, against a float64 reference
    com = center_of_mass(data).values
    ky, kx = data.k_y.values, data.k_x.values
    a = arr.astype(np.float64)
    total = a.sum(axis=(2, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = np.stack([(a * ky[:, None]).sum(axis=(2, 3)) / total, (a * kx[None, :]).sum(axis=(2, 3)) / total], -1)
    np.testing.assert_allclose(com, ref, rtol=1e-12, atol=1e-12 * np.nanmax(np.abs(ref)))
