"""The projection engine as a linear operator pair: forward (patterns -> coefficients) and adjoint.

Dot-product tests <F d, c> = <d, F* c> on each backend (as tike's operator
tests do), with real and complex weights, against NumPy references.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import stemdask
import stemdask.events as ev
from stemdask import imaging
from stemdask.errors import InvalidArgumentError
from stemdask.imaging.project import MaskWeights, mask_weights, project_block


def _masks(values, ky=6, kx=5):
    return xr.DataArray(
        values, dims=("mask", "k_y", "k_x"), coords={"k_y": np.arange(ky) - ky // 2, "k_x": np.arange(kx) - kx // 2}
    )


def _weights(rng, complex_: bool, n=4, ky=6, kx=5) -> MaskWeights:
    w = rng.standard_normal((n, ky, kx))
    if complex_:
        w = w + 1j * rng.standard_normal((n, ky, kx))
    return mask_weights(_masks(w, ky, kx))


def _random(rng, shape, complex_: bool):
    out = rng.standard_normal(shape)
    return out + 1j * rng.standard_normal(shape) if complex_ else out


@pytest.mark.parametrize("complex_weights", [False, True])
@pytest.mark.parametrize("complex_data", [False, True])
def test_dot_product_numpy(rng, complex_weights, complex_data):
    op = _weights(rng, complex_weights)
    d = _random(rng, (3, 2, 6, 5), complex_data)
    c = _random(rng, (3, 2, 4), complex_data or complex_weights)
    fd = op.forward(d)
    fc = op.adjoint(c)
    assert fd.shape == (3, 2, 4) and fc.shape == (3, 2, 6, 5)
    assert fd.dtype == np.result_type(d.dtype, op.dtype)
    assert fc.dtype == np.result_type(c.dtype, op.dtype)
    np.testing.assert_allclose(np.vdot(fd, c), np.vdot(d, fc), rtol=1e-12)
    # against the matrix written out
    w = op.dense(op.dtype)
    np.testing.assert_allclose(fd, np.einsum("abp,pm->abm", d.reshape(3, 2, 30), w), rtol=1e-12)
    np.testing.assert_allclose(fc.reshape(3, 2, 30), np.einsum("abm,pm->abp", c, w.conj()), rtol=1e-12)


def test_forward_takes_any_leading_shape_and_checks_sizes(rng):
    op = _weights(rng, False)
    d = rng.standard_normal((7, 6, 5))
    np.testing.assert_allclose(op.forward(d), np.einsum("np,pm->nm", d.reshape(7, 30), op.dense()), rtol=1e-12)
    np.testing.assert_allclose(op.forward(d[0]), op.forward(d)[0], rtol=1e-12)
    with pytest.raises(InvalidArgumentError, match="patterns"):
        op.forward(rng.standard_normal((7, 5, 5)))
    with pytest.raises(InvalidArgumentError, match="coefficients"):
        op.adjoint(rng.standard_normal((7, 3)))


def test_dot_product_event_blocks(rng):
    """Counted data: the forward operator by gather equals the dense one; the adjoint is dense."""
    op = _weights(rng, True)
    counts = rng.poisson(0.4, (3, 4, 6, 5)).astype(np.uint16)
    block = ev.EventBlock.from_dense(counts)
    c = _random(rng, (3, 4, 4), True)
    fd = op.forward(block)
    np.testing.assert_allclose(fd, op.forward(counts), rtol=1e-12)
    np.testing.assert_allclose(np.vdot(fd, c), np.vdot(counts.astype(np.complex128), op.adjoint(c)), rtol=1e-12)


def test_lazy_project_and_back_project_are_adjoint(rng):
    dense = rng.poisson(3.0, (4, 6, 8, 8)).astype(np.uint16)
    data = stemdask.from_array(dense, chunks=(2, 3), detector_pixel_mrad=1.0, scan_step_A=0.5)
    rings = imaging.detectors.rings(data, [0, 1.5, 3, 4.5])
    coeffs = imaging.project(data, rings)
    back = imaging.back_project(coeffs, rings)
    assert back.dims == stemdask.DIMS and back.chunks[:2] == data.chunks[:2]
    xr.testing.assert_equal(back.k_y, data.k_y)
    c = rng.standard_normal(coeffs.shape)
    lhs = float((coeffs.values * c).sum())
    rhs = float((dense * imaging.back_project(coeffs.copy(data=c), rings).values).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12)
    # orthonormal masks: back-projection then projection is the identity on coefficients
    m = rings.values.astype(float)
    unit = rings.copy(data=m / np.sqrt((m**2).sum((1, 2)))[:, None, None])
    again = imaging.project(imaging.back_project(imaging.project(data, unit), unit), unit)
    np.testing.assert_allclose(again.values, imaging.project(data, unit).values, rtol=1e-12)


def test_complex_masks_and_complex_data_through_project(rng):
    values = rng.standard_normal((4, 4, 6, 5)) + 1j * rng.standard_normal((4, 4, 6, 5))
    # from_array refuses complex intensities; the engine itself takes complex frames (a wave field)
    data = stemdask.from_array(values.real, chunks=(2, 2)).copy(data=da.from_array(values, chunks=(2, 2, -1, -1)))
    masks = _masks(rng.standard_normal((2, 6, 5)) + 1j * rng.standard_normal((2, 6, 5)))
    masks = masks.assign_coords(k_y=data.k_y, k_x=data.k_x)
    got = imaging.project(data, masks)
    assert got.dtype == np.complex128
    np.testing.assert_allclose(got.values, np.einsum("abij,mij->abm", values, masks.values), rtol=1e-12)
    real = imaging.project(data, masks.real, dtype="float32")
    assert real.dtype == np.complex64  # complex data keep their imaginary part
    np.testing.assert_allclose(real.values, np.einsum("abij,mij->abm", values, masks.values.real), rtol=1e-5)


def test_block_dispatch_names_what_it_accepts():
    op = MaskWeights(np.ones((4, 1)), n_masks=1, n_pixels=4, frame_shape=(2, 2))
    with pytest.raises(TypeError, match="block"):
        project_block([[1, 2], [3, 4]], op)


@pytest.mark.gpu
@pytest.mark.parametrize("complex_weights", [False, True])
def test_dot_product_cupy(rng, complex_weights):
    import cupy

    op = _weights(rng, complex_weights)
    d = rng.standard_normal((3, 2, 6, 5))
    c = _random(rng, (3, 2, 4), True)
    fd = op.forward(cupy.asarray(d))
    fc = op.adjoint(cupy.asarray(c))
    assert isinstance(fd, cupy.ndarray) and isinstance(fc, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(fd), op.forward(d), rtol=1e-10)
    np.testing.assert_allclose(
        complex(cupy.vdot(fd, cupy.asarray(c))), complex(cupy.vdot(cupy.asarray(d), fc)), rtol=1e-10
    )


def test_affine_masks_are_recognised_for_the_moment_kernel():
    """CoM masks (k_y, k_x, 1) are affine in the pixel position; a disk is not; the coefficients are exact."""
    data = stemdask.from_array(
        np.ones((2, 2, 6, 5), np.uint16), detector_pixel_mrad=(0.5, 0.25), beam_center_px=(2.5, 1.0)
    )
    from stemdask.imaging.com import _com_masks

    op = mask_weights(_com_masks(data, None))
    assert op.affine is not None
    rows, cols = np.meshgrid(np.arange(6), np.arange(5), indexing="ij")
    basis = np.stack([np.ones(30), rows.ravel(), cols.ravel()], axis=1)
    np.testing.assert_allclose(basis @ op.affine, op.dense(), rtol=0, atol=1e-12)
    assert mask_weights(imaging.detectors.disk(data, 0.6)).affine is None
