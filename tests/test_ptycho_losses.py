"""The four losses' closed-form Wirtinger gradients (Leidl et al. Eqs. 7-11) against torch autograd."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stemdask import optics  # noqa: E402
from stemdask.errors import InvalidArgumentError  # noqa: E402
from stemdask.ptycho import forward, losses  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    geo = forward.model_geometry(80e3, (16, 16), (4.0, 4.0), bin_factor=2)
    rng = np.random.default_rng(1)
    win = forward.windows(geo, rng.uniform(0, 3, (5, 2)))
    ops = forward.operators(geo, dtype=torch.complex128)
    pk = optics.probe_fourier(
        geo.window_px, geo.sampling_A, energy_ev=80e3, semiangle_mrad=20, xp=torch, dtype=torch.complex128
    )
    modes = forward.initial_modes(pk, 2)
    shape = (1, *win.field_shape_px)
    obj = torch.as_tensor(np.exp(0.5j * rng.random(shape)) * (1 + 0.1 * rng.random(shape)))
    truth = obj * torch.as_tensor(np.exp(0.3j * rng.random(shape)))
    corners, offsets = torch.as_tensor(win.corners_px), torch.as_tensor(win.offsets_A)
    measured = torch.as_tensor(
        rng.poisson(100 * forward.model_patterns(truth, modes, corners, offsets, ops, 2).numpy()).astype(float)
    )
    k = (np.arange(16) - 8) * 4.0
    return geo, ops, modes, obj, corners, offsets, measured, k


def _plain_loss(model, measured, loss, regions):
    """The loss written out without the closed-form backward: autograd differentiates it."""
    if regions is None:
        return losses.loss_value(model, measured, loss)
    pix = torch.as_tensor(regions.pixels)
    value = losses.loss_value(model[:, pix], measured[:, pix], loss)
    if regions.rings.shape[0]:
        rings = torch.as_tensor(regions.rings, dtype=model.dtype).flatten(1)
        value = value + losses.loss_value(model.flatten(1) @ rings.T, measured.flatten(1) @ rings.T, loss)
    return value


@pytest.mark.parametrize("variant", ["full", "bf", "bf+rings"])
@pytest.mark.parametrize("loss", losses.LOSSES)
def test_closed_form_gradients_match_autograd(setup, loss, variant):
    geo, ops, modes, obj, corners, offsets, measured, k = setup
    regions = None if variant == "full" else losses.detector_regions(k, k, 20.0, variant, n_rings=3)
    criterion = losses.DetectorLoss(loss, regions)
    o = obj.clone().requires_grad_(True)
    _plain_loss(100 * forward.model_patterns(o, modes, corners, offsets, ops, 2), measured, loss, regions).backward()
    reference = o.grad / 2  # torch's gradient of a complex leaf is 2 ∂L/∂z*
    # the closed-form outer factor inside autograd (Eqs. 7-10)
    o2 = obj.clone().requires_grad_(True)
    value = criterion(100 * forward.model_patterns(o2, modes, corners, offsets, ops, 2), measured)
    value.backward()
    np.testing.assert_allclose(o2.grad.numpy() / 2, reference.numpy(), rtol=1e-10, atol=1e-12 * reference.abs().max())
    # the whole gradient in closed form (Eq. 11)
    probes = forward.shifted_probes(modes, offsets, ops)
    value3, grad = losses.single_slice_gradient(obj, probes, corners, measured, ops, criterion, 100.0, 2)
    assert float(value3) == pytest.approx(float(value), rel=1e-12)
    np.testing.assert_allclose(grad.numpy(), reference.numpy(), rtol=1e-9, atol=1e-11 * reference.abs().max())


def test_outer_factors_are_the_papers():
    model = np.array([0.5, 2.0, 4.0])
    measured = np.array([1.0, 1.0, 4.0])
    np.testing.assert_allclose(losses.outer_factor(model, measured, "l1"), [-1, 1, 0])
    np.testing.assert_allclose(losses.outer_factor(model, measured, "mse"), 2 * (model - measured))
    np.testing.assert_allclose(
        losses.outer_factor(model, measured, "amplitude"), 1 - np.sqrt(measured / model), atol=1e-12
    )
    np.testing.assert_allclose(losses.outer_factor(model, measured, "poisson", eps=1e-4), 1 - measured / (model + 1e-4))


def test_regions():
    k = np.arange(-8, 8) * 4.0
    reg = losses.detector_regions(k, k, 20.0, "bf+rings", n_rings=2)
    radius = np.hypot(k[:, None], k[None, :])
    np.testing.assert_array_equal(reg.pixels, radius <= 20)
    # the rings tile the dark field
    np.testing.assert_array_equal(reg.rings.sum(0), radius > 20)
    with pytest.raises(InvalidArgumentError, match="regions"):
        losses.detector_regions(k, k, 20.0, "df")
    with pytest.raises(InvalidArgumentError, match="loss"):
        losses.DetectorLoss("huber")
