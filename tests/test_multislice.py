"""The multislice step: numpy/torch/cupy agreement, projection limit, propagation, autograd."""

from __future__ import annotations

import numpy as np
import pytest

from stemdask import optics
from stemdask.backend import to_numpy
from stemdask.errors import InvalidArgumentError
from stemdask.multislice import fft2, multislice_step, propagation_kernel
from stemdask.physics import wavelength_A

E = 200e3
SHAPE, D = (40, 48), (0.1, 0.09)


def _waves(rng, n=3, shape=SHAPE):
    return rng.normal(size=(n, *shape)) + 1j * rng.normal(size=(n, *shape))


def _transmission(rng, n=None, shape=SHAPE, strength=0.4):
    size = shape if n is None else (n, *shape)
    return np.exp(1j * strength * rng.normal(size=size)) * (1 - 0.1 * rng.uniform(size=size))


def _reference_step(psi, t, kernel, spectrum=False):
    """Independent numpy.fft version of F⁻¹[K F[t ψ]]."""
    out = np.fft.fft2(psi * t) * kernel
    return out if spectrum else np.fft.ifft2(out)


def test_numpy_step_matches_a_direct_numpy_fft_and_keeps_its_input(rng):
    psi, t = _waves(rng), _transmission(rng, 3)
    kernel = propagation_kernel(SHAPE, D, E, 2.5, dtype=np.complex128)
    np.testing.assert_allclose(
        kernel, optics.fresnel_propagator(SHAPE, D, E, 2.5, dtype=np.complex128) * optics.bandlimit(SHAPE)
    )
    before = psi.copy()
    for spectrum in (False, True):
        ref = _reference_step(psi, t, kernel, spectrum)
        np.testing.assert_allclose(multislice_step(psi, t, kernel, return_spectrum=spectrum), ref, atol=1e-10)
        # the per-wave sequence form (windows as views) and the in-place form give the same
        np.testing.assert_allclose(multislice_step(psi, list(t), kernel, return_spectrum=spectrum), ref, atol=1e-10)
        np.testing.assert_array_equal(psi, before)
        work = psi.copy()
        np.testing.assert_allclose(
            multislice_step(work, t, kernel, overwrite=True, return_spectrum=spectrum), ref, atol=1e-10
        )


def test_one_slice_is_the_projection_approximation(rng):
    # a band-limited probe and a weak smooth phase object: their product is inside the band
    # limit, so a step without propagation is ψ·t, and its spectrum is B F[ψ t]
    shape = (96, 96)
    psi = np.fft.ifft2(optics.probe_fourier(shape, (0.1, 0.1), energy_ev=E, semiangle_mrad=20))
    y, x = np.indices(shape)
    t = np.exp(0.2j * np.cos(2 * np.pi * 3 * x / 96) * np.cos(2 * np.pi * 2 * y / 96))
    exit_wave = multislice_step(psi, t, propagation_kernel(shape, (0.1, 0.1), E, 0.0, dtype=np.complex128))
    np.testing.assert_allclose(exit_wave, psi * t, atol=1e-8 * np.abs(psi).max())
    mask = optics.bandlimit(shape)
    spectrum = multislice_step(psi, t, mask, return_spectrum=True)
    np.testing.assert_allclose(
        np.abs(spectrum) ** 2, np.abs(np.fft.fft2(psi * t)) ** 2, atol=1e-7 * np.abs(np.fft.fft2(psi * t)).max() ** 2
    )


def test_free_propagation_over_dz1_then_dz2_is_one_over_their_sum(rng):
    psi = _waves(rng, 2)
    k = {dz: propagation_kernel(SHAPE, D, E, dz, dtype=np.complex128) for dz in (3.0, 4.5, 7.5)}
    two = multislice_step(multislice_step(psi, 1.0, k[3.0]), 1.0, k[4.5])
    one = multislice_step(psi, 1.0, k[7.5])
    np.testing.assert_allclose(two, one, atol=1e-12 * np.abs(one).max())
    # and the propagator is the analytic exp(-iπλΔz k²) inside the band limit
    ky, kx = optics.spatial_frequencies(SHAPE, D)
    lam = wavelength_A(E)
    inside = optics.bandlimit(SHAPE) > 0
    analytic = np.exp(-1j * np.pi * lam * 7.5 * (ky**2 + kx**2))
    np.testing.assert_allclose(k[7.5][inside], analytic[inside], atol=1e-12)
    assert np.all(k[7.5][~inside] == 0)


def test_sequence_of_the_wrong_length_raises(rng):
    psi = _waves(rng, 3)
    with pytest.raises(InvalidArgumentError, match="transmission.*one \\(ny, nx\\) transmission per wave"):
        multislice_step(psi, [np.ones(SHAPE)] * 2, optics.bandlimit(SHAPE))


# -- torch ------------------------------------------------------------------------------

torch_params = [
    pytest.param("cpu", id="torch-cpu"),
    pytest.param("cuda", id="torch-cuda", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device", torch_params)
def test_torch_step_agrees_with_numpy(rng, device):
    torch = pytest.importorskip("torch")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    psi, t = _waves(rng), _transmission(rng, 3)
    kernel_np = propagation_kernel(SHAPE, D, E, 2.0, dtype=np.complex128)
    kernel = propagation_kernel(SHAPE, D, E, 2.0, torch, device=device, dtype=torch.complex128)
    psi_t = torch.as_tensor(psi, device=device)
    t_t = torch.as_tensor(t, device=device)
    for spectrum in (False, True):
        ref = multislice_step(psi, t, kernel_np, return_spectrum=spectrum)
        ours = multislice_step(psi_t, t_t, kernel, return_spectrum=spectrum)
        np.testing.assert_allclose(to_numpy(ours), ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
        ours_seq = multislice_step(psi_t, list(t_t), kernel, return_spectrum=spectrum)
        np.testing.assert_allclose(to_numpy(ours_seq), ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_allclose(to_numpy(fft2(psi_t, inverse=True)), np.fft.ifft2(psi), atol=1e-12)


@pytest.mark.gpu
def test_cupy_step_agrees_with_numpy(rng):
    cupy = pytest.importorskip("cupy")
    psi, t = _waves(rng), _transmission(rng, 3)
    kernel_np = propagation_kernel(SHAPE, D, E, 2.0, dtype=np.complex128)
    kernel = propagation_kernel(SHAPE, D, E, 2.0, cupy, dtype=np.complex128)
    for spectrum in (False, True):
        ref = multislice_step(psi, t, kernel_np, return_spectrum=spectrum)
        ours = multislice_step(
            cupy.asarray(psi), [cupy.asarray(a) for a in t], kernel, overwrite=True, return_spectrum=spectrum
        )
        assert type(ours).__module__.startswith("cupy")
        np.testing.assert_allclose(to_numpy(ours), ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_torch_gradient_wrt_the_transmission_matches_finite_differences(rng):
    torch = pytest.importorskip("torch")
    shape = (16, 20)
    psi = _waves(rng, 2, shape)
    t = _transmission(rng, None, shape)
    weight = rng.uniform(size=shape)
    k1 = propagation_kernel(shape, D, E, 3.0, dtype=np.complex128)
    mask = optics.bandlimit(shape, dtype=np.float64)

    def loss_numpy(t_np):
        # two slices of the same object, then the detector: Σ w |B F[t ψ]|²
        spectrum = multislice_step(multislice_step(psi, t_np, k1), t_np, mask, return_spectrum=True)
        return float(np.sum(weight * np.abs(spectrum) ** 2))

    t_t = torch.tensor(t, requires_grad=True)
    spectrum = multislice_step(
        multislice_step(torch.as_tensor(psi), t_t, torch.as_tensor(k1)),
        t_t,
        torch.as_tensor(mask),
        return_spectrum=True,
    )
    loss = torch.sum(torch.as_tensor(weight) * torch.abs(spectrum) ** 2)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(loss_numpy(t), rel=1e-12)
    grad = t_t.grad.numpy()  # torch: ∂L/∂Re t + i ∂L/∂Im t for a real loss
    h = 1e-6
    for iy, ix in [(0, 0), (3, 7), (15, 19), (8, 2)]:
        for unit in (1.0, 1j):
            up, down = t.copy(), t.copy()
            up[iy, ix] += h * unit
            down[iy, ix] -= h * unit
            fd = (loss_numpy(up) - loss_numpy(down)) / (2 * h)
            ours = grad[iy, ix].real if unit == 1.0 else grad[iy, ix].imag
            assert ours == pytest.approx(fd, rel=1e-6, abs=1e-6 * np.abs(grad).max())
