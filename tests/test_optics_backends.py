"""One optics implementation on numpy, torch and cupy: agreement with numpy, autograd, errors."""

from __future__ import annotations

import numpy as np
import pytest

from stemdask import optics
from stemdask.backend import to_numpy
from stemdask.errors import InvalidArgumentError, InvalidTypeError
from stemdask.physics import wavelength_A

torch = pytest.importorskip("torch")

E = 200e3
SHAPE, SAMPLING = (48, 40), (0.09, 0.11)
ABERRATIONS = {
    "defocus": 60.0,
    "C12": 12.0,
    "phi12": 0.4,
    "C21": 900.0,
    "phi21": -0.7,
    "C23": 400.0,
    "phi23": 1.2,
    "Cs": 3e4,
    "C32": 2e3,
    "phi32": 0.3,
    "C50": 2e6,
}

BACKENDS = [
    pytest.param(("torch", "cpu"), id="torch-cpu"),
    pytest.param(("torch", "cuda"), id="torch-cuda", marks=pytest.mark.gpu),
    pytest.param(("cupy", None), id="cupy", marks=pytest.mark.gpu),
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """(module, device) of a backend other than numpy."""
    name, device = request.param
    if name == "cupy":
        cupy = pytest.importorskip("cupy")
        return cupy, None
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("torch was built without CUDA or sees no GPU")
    return torch, device


def _close(ours, reference, atol=1e-6):
    ours = to_numpy(ours)
    assert ours.shape == np.shape(reference)
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=atol)


def test_grids_and_angles_agree_with_numpy(backend):
    xp, device = backend
    for a, b in zip(
        optics.spatial_frequencies(SHAPE, SAMPLING, xp, device=device), optics.spatial_frequencies(SHAPE, SAMPLING)
    ):
        _close(a, b)
    alpha, phi = optics.polar_angles(SHAPE, SAMPLING, E, xp, device=device)
    alpha_np, phi_np = optics.polar_angles(SHAPE, SAMPLING, E)
    _close(alpha, alpha_np, atol=1e-12)
    _close(phi, phi_np)
    assert str(alpha.dtype).endswith("float64")


def test_apertures_and_chi_agree_with_numpy(backend):
    xp, device = backend
    alpha, phi = optics.polar_angles(SHAPE, SAMPLING, E, xp, device=device)
    alpha_np, phi_np = optics.polar_angles(SHAPE, SAMPLING, E)
    pixel = 1e3 * wavelength_A(E) / (SHAPE[1] * SAMPLING[1])
    _close(optics.aperture(alpha, 25.0), optics.aperture(alpha_np, 25.0))
    _close(
        optics.aperture(alpha, 25.0, soft=True, angular_sampling_mrad=pixel),
        optics.aperture(alpha_np, 25.0, soft=True, angular_sampling_mrad=pixel),
    )
    chi = optics.aberration_function(alpha, phi, E, ABERRATIONS)
    chi_np = optics.aberration_function(alpha_np, phi_np, E, ABERRATIONS)
    # χ reaches hundreds of rad: relative agreement
    _close(chi, chi_np, atol=1e-6 * np.abs(chi_np).max())


@pytest.mark.parametrize("soft", [False, True])
def test_aberrated_probe_agrees_with_numpy(backend, soft):
    xp, device = backend
    kw = dict(energy_ev=E, semiangle_mrad=22.0, aberrations=ABERRATIONS, soft=soft)
    for dtype in (np.complex128, np.complex64):
        tol = 1e-6 if dtype == np.complex128 else 2e-4
        ours_k = optics.probe_fourier(SHAPE, SAMPLING, xp=xp, device=device, dtype=dtype, **kw)
        ref_k = optics.probe_fourier(SHAPE, SAMPLING, dtype=dtype, **kw)
        _close(ours_k, ref_k, atol=tol * np.abs(ref_k).max())
        ours = optics.probe(SHAPE, SAMPLING, xp=xp, device=device, dtype=dtype, **kw)
        ref = optics.probe(SHAPE, SAMPLING, dtype=dtype, **kw)
        assert to_numpy(ours).dtype == np.dtype(dtype)
        _close(ours, ref, atol=tol * np.abs(ref).max())


def test_shift_propagator_and_bandlimit_agree_with_numpy(backend):
    xp, device = backend
    shifts = np.array([[0.3, -1.1], [2.5, 0.07], [-0.4, 0.9]])
    _close(optics.shift_phase(SHAPE, SAMPLING, shifts, xp, device=device), optics.shift_phase(SHAPE, SAMPLING, shifts))
    for dtype in (np.complex128, np.complex64):
        _close(
            optics.fresnel_propagator(SHAPE, SAMPLING, E, 7.5, xp, device=device, dtype=dtype),
            optics.fresnel_propagator(SHAPE, SAMPLING, E, 7.5, dtype=dtype),
        )
    _close(optics.bandlimit(SHAPE, xp=xp, device=device), optics.bandlimit(SHAPE), atol=0)
    _close(optics.bandlimit((33, 20), 0.5, xp=xp, device=device), optics.bandlimit((33, 20), 0.5), atol=0)


def test_torch_dtype_and_array_api_namespace_are_accepted():
    import array_api_compat.numpy as compat_numpy

    ours = optics.probe(SHAPE, SAMPLING, energy_ev=E, semiangle_mrad=20, xp=torch, dtype=torch.complex64)
    assert ours.dtype == torch.complex64
    via_namespace = optics.probe(SHAPE, SAMPLING, energy_ev=E, semiangle_mrad=20, xp=compat_numpy)
    assert isinstance(via_namespace, np.ndarray)
    np.testing.assert_allclose(via_namespace, optics.probe(SHAPE, SAMPLING, energy_ev=E, semiangle_mrad=20))


# -- autograd --------------------------------------------------------------------------


def _loss_numpy(defocus, c12, target):
    psi = optics.probe(
        SHAPE,
        SAMPLING,
        energy_ev=E,
        semiangle_mrad=22.0,
        aberrations={"defocus": defocus, "C12": c12, "phi12": 0.4, "Cs": 3e4},
    )
    return float(np.sum(np.abs(psi - target) ** 2))


@pytest.mark.parametrize("defocus, c12", [(50.0, 8.0), (50.0, 0.0)])
def test_gradient_wrt_defocus_and_c12_matches_finite_differences(defocus, c12):
    # C12 = 0 as a tensor: its term must stay in χ, else its gradient would be lost
    target = optics.probe(
        SHAPE, SAMPLING, energy_ev=E, semiangle_mrad=22.0, aberrations={"defocus": 30.0, "C12": 15.0, "phi12": -0.2}
    )
    d = torch.tensor(defocus, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(c12, dtype=torch.float64, requires_grad=True)
    psi = optics.probe(
        SHAPE,
        SAMPLING,
        energy_ev=E,
        semiangle_mrad=22.0,
        xp=torch,
        aberrations={"defocus": d, "C12": c, "phi12": 0.4, "Cs": 3e4},
    )
    loss = torch.sum(torch.abs(psi - torch.as_tensor(target)) ** 2)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(_loss_numpy(defocus, c12, target), rel=1e-10)
    h = 1e-3  # Å; the loss is smooth on the scale of λ/α² ≫ h
    fd_defocus = (_loss_numpy(defocus + h, c12, target) - _loss_numpy(defocus - h, c12, target)) / (2 * h)
    fd_c12 = (_loss_numpy(defocus, c12 + h, target) - _loss_numpy(defocus, c12 - h, target)) / (2 * h)
    assert abs(fd_defocus) > 1e-4 and abs(fd_c12) > 1e-4
    assert float(d.grad) == pytest.approx(fd_defocus, rel=1e-5)
    assert float(c.grad) == pytest.approx(fd_c12, rel=1e-5)


def test_float32_leaf_tensor_gets_a_gradient():
    # the brief's example: a default (float32) tensor as defocus
    d = torch.tensor(50.0, requires_grad=True)
    chi = optics.aberration_function(*optics.polar_angles(SHAPE, SAMPLING, E, torch), E, {"defocus": d})
    chi.sum().backward()
    alpha, _ = optics.polar_angles(SHAPE, SAMPLING, E)
    # dχ/d(defocus) = -2π/λ Σ α²/2
    expected = -(2 * np.pi / wavelength_A(E)) * np.sum(alpha**2 / 2)
    assert d.grad.dtype == torch.float32
    assert float(d.grad) == pytest.approx(expected, rel=1e-5)


def test_polar_coefficients_keep_tensors():
    d = torch.tensor(50.0, requires_grad=True)
    p = optics.polar_coefficients({"defocus": d, "Cs": 1e4})
    assert isinstance(p["C10"], torch.Tensor) and p["C10"].requires_grad
    assert float(p["C10"].detach()) == -50.0 and p["C30"] == 1e4 and p["C12"] == 0.0
    # 0-d numpy arrays are numbers
    assert optics.polar_coefficients({"C12": np.array(3.0)})["C12"] == 3.0


@pytest.mark.parametrize(
    "value, match",
    [
        (torch.tensor([1.0, 2.0]), "scalar"),
        (torch.tensor(float("nan")), "finite"),
        (np.array([1.0, 2.0]), "scalar"),
    ],
)
def test_bad_tensor_coefficients_raise(value, match):
    with pytest.raises(InvalidArgumentError, match=rf"aberrations\['C10'\].*{match}"):
        optics.polar_coefficients({"C10": value})


def test_bad_backend_and_arguments_raise():
    import math

    with pytest.raises(InvalidTypeError, match="xp.*numpy, cupy, torch"):
        optics.spatial_frequencies((8, 8), 0.1, math)
    with pytest.raises(InvalidArgumentError, match="shift_A"):
        optics.shift_phase((8, 8), 0.1, [1.0, 2.0, 3.0])
    with pytest.raises(InvalidArgumentError, match="fraction"):
        optics.bandlimit((8, 8), 1.5)
    with pytest.raises(InvalidArgumentError, match="dz_A"):
        optics.fresnel_propagator((8, 8), 0.1, E, float("inf"))
