"""The ptychographic forward model against the simulator's patterns, and the probe modes."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stemdask import optics  # noqa: E402
from stemdask.ptycho import forward  # noqa: E402
from stemdask.simulate import samples, simulate_4dstem  # noqa: E402


@pytest.mark.parametrize("slice_thickness_A", [None, 1.6])
def test_forward_model_matches_simulator(slice_thickness_A):
    aberrations = {"defocus": 20.0, "C12": 5.0, "phi12": 0.3}
    data, truth = simulate_4dstem(
        samples.mos2((2, 3)),
        energy_ev=80e3,
        semiangle_mrad=25,
        aberrations=aberrations,
        scan_shape=(5, 6),
        scan_step_A=0.37,
        detector_shape=32,
        max_angle_mrad=60,
        slice_thickness_A=slice_thickness_A,
    )
    geo = forward.model_geometry(
        80e3,
        (32, 32),
        data.attrs["detector_pixel_mrad"],
        n_slices=truth.sizes["slice"],
        slice_thickness_A=truth.attrs.get("slice_thickness_A"),
    )
    yy, xx = np.meshgrid(truth.probe_position_y.values, truth.probe_position_x.values, indexing="ij")
    win = forward.windows(geo, np.stack([yy.ravel(), xx.ravel()], -1))
    # the simulator's field is the one the model builds from the same positions
    assert win.field_shape_px == truth.transmission.shape[1:]
    assert np.isclose(win.field_origin_px[0] * geo.sampling_A[0], truth.y.values[0])
    ops = forward.operators(geo, dtype=torch.complex128)
    probe_k = optics.probe_fourier(
        geo.window_px,
        geo.sampling_A,
        energy_ev=80e3,
        semiangle_mrad=25,
        aberrations=aberrations,
        xp=torch,
        dtype=torch.complex128,
    )
    obj = torch.as_tensor(truth.transmission.values).to(torch.complex128)
    model = forward.model_patterns(
        obj, probe_k[None], torch.as_tensor(win.corners_px), torch.as_tensor(win.offsets_A), ops
    ).numpy()
    ref = data.values.reshape(model.shape)
    assert np.corrcoef(model.ravel(), ref.ravel())[0, 1] >= 0.9999
    np.testing.assert_allclose(model, ref, atol=2e-5 * ref.max())


def test_binning_sums_model_pixels():
    geo2 = forward.model_geometry(80e3, (8, 8), (8.0, 8.0), bin_factor=2)
    geo1 = forward.model_geometry(80e3, (16, 16), (4.0, 4.0))
    assert geo2.window_px == geo1.window_px and geo2.detector_shape_px == (8, 8)
    ops = forward.operators(geo1, dtype=torch.complex128)
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 2, (3, 2))
    win = forward.windows(geo1, pos)
    obj = torch.exp(1j * torch.as_tensor(rng.uniform(0, 0.5, (1, *win.field_shape_px))))
    pk = optics.probe_fourier(geo1.window_px, geo1.sampling_A, energy_ev=80e3, semiangle_mrad=20, xp=torch)
    args = (obj, pk[None], torch.as_tensor(win.corners_px), torch.as_tensor(win.offsets_A), ops)
    fine = forward.model_patterns(*args).numpy()
    coarse = forward.model_patterns(*args, bin_factor=2).numpy()
    np.testing.assert_allclose(coarse, fine.reshape(3, 8, 2, 8, 2).sum((2, 4)), rtol=1e-12)


def test_initial_modes_orthogonal_and_normalised():
    pk = optics.probe_fourier((32, 32), 0.2, energy_ev=80e3, semiangle_mrad=25, xp=torch, dtype=torch.complex128)
    modes = forward.initial_modes(pk, 3, fraction=0.2)
    flat = modes.reshape(3, -1)
    gram = (flat @ flat.conj().T).numpy() / (32 * 32)
    np.testing.assert_allclose(np.diag(gram).real, [0.8, 0.1, 0.1], rtol=1e-10)
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-12)
    # the first mode is the probe itself, scaled
    np.testing.assert_allclose(modes[0].numpy(), np.sqrt(0.8) * pk.numpy(), atol=1e-10)
    # orthogonalising keeps the density matrix, so the incoherent sum of any pattern
    mixed = forward.orthogonalize_modes(modes + 0.3 * modes.roll(1, 0))
    rho = lambda m: (m.reshape(3, -1).T @ m.reshape(3, -1).conj()).numpy()  # noqa: E731
    np.testing.assert_allclose(rho(mixed), rho(modes + 0.3 * modes.roll(1, 0)), atol=1e-9)


def test_positions_rotated_into_detector_frame():
    pos = forward.positions_in_detector_frame(np.array([0.0, 1.0]), np.array([1.0, 0.0]), 90.0)
    np.testing.assert_allclose(pos, [[1.0, 0.0], [0.0, -1.0]], atol=1e-12)
