"""The 4D-STEM simulator: potentials, samples, multislice, geometry, dose, chunking, bad input."""

from __future__ import annotations

import math

import dask
import numpy as np
import pytest
import xarray as xr
from scipy import integrate, ndimage, special

import stemdask
from stemdask import optics
from stemdask.errors import InvalidArgumentError, InvalidTypeError
from stemdask.multislice import multislice_step
from stemdask.optics import bandlimit, fresnel_propagator
from stemdask.physics import interaction_constant, wavelength_A
from stemdask.simulate import PhaseObject, potentials, samples, simulate_4dstem

E = 80e3
LAM = wavelength_A(E)

# Kirkland (2010), Advanced Computing in Electron Microscopy, Table C.4: f_e(q) =
# Σ a_i / (q² + b_i) + c_i exp(-d_i q²), q in 1/Å -- an independent published fit
KIRKLAND = {
    "C": (
        [2.12080767e-01, 1.99811865e-01, 1.68254385e-01],
        [2.08605417e-01, 2.08610186e-01, 5.57870773e00],
        [1.42048360e-01, 3.63830672e-01, 8.35012044e-04],
        [1.33311887e00, 3.80800263e00, 4.03982620e-02],
    ),
    "Si": (
        [1.06543892e00, 1.20143691e-01, 1.80915263e-01],
        [1.04118455e00, 6.87113368e01, 8.87533926e-02],
        [1.12065620e00, 3.05452816e-02, 1.59963502e00],
        [3.70062619e00, 2.14097897e-01, 9.99096638e00],
    ),
}


def _kirkland_projected(element: str, r: float) -> float:
    a, b, c, d = KIRKLAND[element]
    k = potentials.BOHR_A * potentials.COULOMB_V_A
    return 4 * math.pi**2 * k * sum(
        ai * special.k0(2 * math.pi * r * math.sqrt(bi)) for ai, bi in zip(a, b)
    ) + 2 * math.pi**2 * k * sum(ci / di * math.exp(-(math.pi**2) * r * r / di) for ci, di in zip(c, d))


# -- potentials ---------------------------------------------------------------


@pytest.mark.parametrize("element", ["C", "S", "Mo", "Au"])
def test_projected_potential_closed_form_is_the_z_integral_of_the_3d_potential(element):
    for r in (0.1, 0.5, 1.2):
        numeric = (
            2
            * integrate.quad(lambda z: potentials.potential(element, math.hypot(r, z)), 0, 60, limit=400, epsabs=1e-10)[
                0
            ]
        )
        assert potentials.projected_potential(element, r) == pytest.approx(numeric, rel=1e-7)


@pytest.mark.parametrize("element", ["H", "Si", "Sr", "U"])
def test_projected_potential_integrates_to_the_forward_scattering_factor(element):
    # ∫ v_z d²R = 2π a0 e f_e(0), f_e(0) = 2 Σ a_i
    total = integrate.quad(lambda r: 2 * math.pi * r * potentials.projected_potential(element, r), 0, 80, limit=500)[0]
    a, _ = potentials.parameters(element)
    assert total == pytest.approx(potentials.KAPPA_V_A2 * 2 * a.sum(), rel=1e-6)


@pytest.mark.parametrize("element", ["C", "Si"])
def test_lobato_agrees_with_kirklands_published_parameterisation(element):
    for r in (0.1, 0.3, 0.6, 1.0):
        assert potentials.projected_potential(element, r) == pytest.approx(_kirkland_projected(element, r), rel=0.01)
    # forward scattering factor of carbon: 2.51 Å in both fits
    a, b, c, _ = KIRKLAND[element]
    kirkland_f0 = sum(ai / bi for ai, bi in zip(a, b)) + sum(c)
    assert float(potentials.scattering_factor(element, 0.0)) == pytest.approx(kirkland_f0, rel=0.005)


def test_the_table_covers_h_to_u_and_unknown_elements_raise():
    assert potentials.atomic_number("H") == 1 and potentials.atomic_number("U") == 92
    assert potentials.symbol(42) == "Mo"
    for bad in ("Xx", "mo", "Np"):
        with pytest.raises(InvalidArgumentError, match="element"):
            potentials.atomic_number(bad)
    for bad in (0, 93):
        with pytest.raises(InvalidArgumentError, match="element"):
            potentials.atomic_number(bad)
    with pytest.raises(InvalidArgumentError, match="element"):
        samples.AtomicSample([6, 118], [[0, 0, 0], [1, 1, 1]], (5, 5, 5))


def test_slice_potential_on_a_grid_matches_the_closed_form():
    d = 0.02
    n = 400
    grid = potentials.slice_potentials(
        [42], np.array([[4.0, 4.0, 1.0]]), origin_A=(0.0, 0.0), shape=(n, n), sampling_A=(d, d), slice_edges_A=[0, 2]
    )[0]
    for r in (0.2, 0.5, 1.0, 2.0):
        i = int(round(r / d))
        assert grid[200, 200 + i] == pytest.approx(potentials.projected_potential("Mo", i * d), rel=0.01)
    # sub-pixel positions are exact translations: an atom moved by a third of a pixel along +x
    moved = potentials.slice_potentials(
        [42],
        np.array([[4.0 + d / 3, 4.0, 1.0]]),
        origin_A=(0.0, 0.0),
        shape=(n, n),
        sampling_A=(d, d),
        slice_edges_A=[0, 2],
    )[0]
    shifted = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(grid), (0.0, 1 / 3))).real
    np.testing.assert_allclose(moved, shifted, atol=1e-9 * grid.max())
    assert np.argmax(moved[200]) == 200 and moved[200, 201] > moved[200, 199]


def test_phase_factors_equal_the_direct_exponentials():
    rng = np.random.default_rng(5)
    for n in (7, 8, 96):
        y = rng.uniform(-30, 60, 40)
        k = np.fft.fftfreq(n, 0.11)
        np.testing.assert_allclose(
            potentials.phase_factors(y, n, 0.11), np.exp(-2j * np.pi * k[None, :] * y[:, None]), atol=1e-11
        )


# -- samples -------------------------------------------------------------------


def test_mos2_graphene_and_vacancy():
    s = samples.mos2((2, 3))
    assert len(s.numbers) == 6 * 6 and np.sum(s.numbers == 42) == 12
    assert s.cell_A[0] == pytest.approx(3 * 3.16) and s.cell_A[1] == pytest.approx(2 * 3.16 * math.sqrt(3))
    v = samples.mos2((2, 3), vacancy="S")
    assert len(v.numbers) == 35 and np.sum(v.numbers == 16) == 23
    assert v.info["vacancy_element"] == 16
    g = samples.graphene((2, 2))
    xy = g.positions_A[:, :2]
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    assert np.min(dist[dist > 0]) == pytest.approx(1.42, abs=0.005)


def test_silicon_110_and_srtio3_structures():
    si = samples.silicon_110((1, 1), 2)
    a = 5.431
    assert len(si.numbers) == 8
    assert np.prod(si.cell_A) == pytest.approx(2 * a**3 / 2)  # 8 atoms per a³
    # dumbbells: projected neighbours 1.36 Å apart along [001] (x)
    xy = si.positions_A[:, :2]
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    assert np.min(dist[dist > 1e-6]) == pytest.approx(a / 4, abs=1e-6)
    sto = samples.srtio3_001((1, 1), 1)
    assert sorted(sto.numbers.tolist()) == [8, 8, 8, 22, 38]


def test_ase_atoms_are_accepted_and_non_orthorhombic_cells_rejected():
    pytest.importorskip("ase")
    atoms = samples.mos2((1, 1)).to_ase()
    back = samples.as_sample(atoms)
    np.testing.assert_allclose(back.positions_A, samples.mos2((1, 1)).positions_A, atol=1e-9)
    from ase.build import bulk

    with pytest.raises(InvalidArgumentError, match="orthorhombic"):
        samples.as_sample(bulk("Si", "diamond", a=5.431))
    with pytest.raises(InvalidTypeError, match="sample"):
        samples.as_sample("MoS2")
    # an ase crystal goes straight into the simulator
    si = bulk("Si", "diamond", a=5.431, cubic=True).repeat((2, 2, 1))
    data, truth = simulate_4dstem(
        si, energy_ev=E, semiangle_mrad=20, scan_shape=(2, 2), scan_step_A=0.5, detector_shape=32, max_angle_mrad=50
    )
    assert truth.attrs["sample"] == "Si32" and data.shape == (2, 2, 32, 32)


# -- multislice ------------------------------------------------------------------


def exit_spectrum(psi, transmissions, propagator, mask):
    """``B F[t_N ψ_N]`` by repeated multislice steps (``B P`` between slices, ``B`` after the last)."""
    *middle, last = transmissions
    for t in middle:
        psi = multislice_step(psi, t, propagator * mask)
    return multislice_step(psi, last, mask, return_spectrum=True)


def test_propagation_conserves_intensity_and_vacuum_slices_change_nothing():
    shape, d = (96, 96), (0.1, 0.1)
    psi = np.fft.ifft2(optics.probe_fourier(shape, d, energy_ev=E, semiangle_mrad=25))
    prop = fresnel_propagator(shape, d, E, 2.0)
    mask = bandlimit(shape)
    vacuum = exit_spectrum(psi, [np.ones(shape)] * 6, prop, mask)
    np.testing.assert_allclose(np.abs(vacuum), np.abs(np.fft.fft2(psi)), atol=1e-5)
    # a smooth pure-phase object (band-limited transmission): intensity kept slice after slice
    y, x = np.indices(shape)
    t = np.exp(0.3j * np.cos(2 * np.pi * 3 * x / 96) * np.cos(2 * np.pi * 2 * y / 96))
    out = exit_spectrum(psi, [t] * 20, prop, mask)
    assert np.sum(np.abs(out) ** 2) / np.prod(shape) == pytest.approx(1.0, abs=1e-5)


def test_intensity_is_conserved_in_a_thick_multislice_simulation():
    data, truth = simulate_4dstem(
        samples.silicon_110((2, 2), 6),
        energy_ev=200e3,
        semiangle_mrad=20,
        scan_shape=(3, 3),
        scan_step_A=0.5,
        detector_shape=48,
        max_angle_mrad=90,
        slice_thickness_A=5.431 / math.sqrt(8),
    )
    assert truth.sizes["slice"] == 12
    # band-limiting exp(iσv) leaves |t| = 1 up to a little Gibbs ringing
    assert np.abs(np.abs(truth.transmission.values) - 1).mean() < 2e-3
    total = data.sum(("k_y", "k_x")).values
    # 12 slices: only what scatters beyond the 90 mrad band limit is lost
    assert np.all(total <= 1 + 1e-3) and np.all(total > 0.95)


def test_patterns_match_an_independent_periodic_reference():
    # window = object: the simulator's windowed multislice equals a direct one on the periodic object
    obj = samples.weak_phase_object((96, 96), sampling_A=0.12, phase_std_rad=0.2, seed=4)
    n = 64
    max_angle = 1e3 * n * LAM / (2 * 96 * 0.12)
    data, truth = simulate_4dstem(
        obj,
        energy_ev=E,
        semiangle_mrad=20,
        scan_shape=(3, 4),
        scan_step_A=(0.37, 0.41),
        scan_origin_A=(3.1, 5.3),
        detector_shape=n,
        max_angle_mrad=max_angle,
        aberrations={"defocus": 20.0, "C12": 5.0, "phi12": 0.4},
    )
    ours = data.compute().values
    shape, d = (96, 96), (0.12, 0.12)
    mask = bandlimit(shape)
    t = np.fft.ifft2(np.fft.fft2(np.exp(1j * obj.phase_rad[0])) * mask)
    psi_k = optics.probe_fourier(
        shape, d, energy_ev=E, semiangle_mrad=20, aberrations={"defocus": 20.0, "C12": 5.0, "phi12": 0.4}
    )
    ky, kx = optics.spatial_frequencies(shape, d)
    for i, y in enumerate(3.1 + 0.37 * np.arange(3)):
        for j, x in enumerate(5.3 + 0.41 * np.arange(4)):
            psi = np.fft.ifft2(psi_k * np.exp(-2j * np.pi * (ky * y + kx * x)))
            pattern = np.abs(np.fft.fftshift(np.fft.fft2(psi * t) * mask)) ** 2 / psi.size
            ref = pattern[48 - n // 2 : 48 + n // 2, 48 - n // 2 : 48 + n // 2]
            np.testing.assert_allclose(ours[i, j], ref, atol=2e-6 * ref.max())


def test_geometry_calibration_and_beam_centre():
    obj = PhaseObject(np.zeros((64, 64)), (0.1, 0.1))  # vacuum
    data, truth = simulate_4dstem(
        obj,
        energy_ev=E,
        semiangle_mrad=20,
        scan_shape=(2, 2),
        scan_step_A=0.3,
        detector_shape=(40, 32),
        max_angle_mrad=(60, 50),
    )
    stemdask.validate(data)
    assert data.attrs["beam_center_px"] == [20.0, 16.0]
    pattern = data.values[0, 0]
    # the bright-field disc is centred on beam_center_px and has the semi-angle's radius
    cy, cx = ndimage.center_of_mass(pattern)
    assert (cy, cx) == (pytest.approx(20.0, abs=1e-6), pytest.approx(16.0, abs=1e-6))
    k = np.hypot(data.k_y.values[:, None], data.k_x.values[None, :])
    assert np.all(pattern[k > 20.0 + 1e-9] < 1e-12) and np.all(pattern[k < 19.0] > 1e-4)
    assert pattern.sum() == pytest.approx(1.0, rel=1e-5)
    pixel = data.attrs["detector_pixel_mrad"]
    assert pixel[0] == pytest.approx(1e3 * LAM / (truth.attrs["window_px"][0] * 0.1))
    assert pixel[1] == pytest.approx(1e3 * LAM / (truth.attrs["window_px"][1] * 0.1))
    # the probe in the truth is normalised and every attr is there
    assert float((np.abs(truth.probe) ** 2).sum()) == pytest.approx(1.0, rel=1e-5)
    assert truth.attrs["energy_ev"] == E and truth.attrs["semiangle_mrad"] == 20


def test_defocus_sign_in_the_simulation_matches_propagation():
    # a probe with defocus Δ reaching a layer Δ below the entrance surface is in focus there:
    # equal to the in-focus probe on a layer at the surface (same ADF contrast)
    base = samples.graphene((3, 3))
    layer_deep = samples.AtomicSample(
        base.numbers, base.positions_A + [0, 0, 30.0], (base.cell_A[0], base.cell_A[1], 34.0)
    )
    kw = dict(energy_ev=E, semiangle_mrad=25, scan_shape=(2, 2), scan_step_A=0.4, detector_shape=32, max_angle_mrad=60)
    # the layer (z = 32 Å) is in slice 16 of 2 Å: it is reached after 16 propagations, 32 Å
    deep, _ = simulate_4dstem(layer_deep, aberrations={"defocus": 32.0}, slice_thickness_A=2.0, **kw)
    shallow, _ = simulate_4dstem(
        samples.AtomicSample(base.numbers, base.positions_A - [0, 0, 1.0], (base.cell_A[0], base.cell_A[1], 34.0)),
        slice_thickness_A=2.0,
        **kw,
    )
    wrong, _ = simulate_4dstem(layer_deep, aberrations={"defocus": -32.0}, slice_thickness_A=2.0, **kw)
    np.testing.assert_allclose(deep.values, shallow.values, atol=1e-4 * shallow.values.max())
    assert np.abs(wrong.values - shallow.values).max() > 1e-2 * shallow.values.max()


# -- dose, source size, chunking -----------------------------------------------------


def _mos2_case(**kw):
    args = dict(
        energy_ev=E, semiangle_mrad=25, scan_shape=(6, 7), scan_step_A=0.3, detector_shape=32, max_angle_mrad=50
    )
    args.update(kw)
    return simulate_4dstem(samples.mos2((3, 3)), **args)


def test_poisson_dose_mean_and_integer_counts():
    clean, _ = _mos2_case()
    noisy, _ = _mos2_case(dose_e_per_pattern=2000.0, seed=7)
    assert noisy.dtype == np.uint16 and noisy.attrs["units"] == "counts"
    assert noisy.attrs["dose_e_per_pattern"] == 2000.0
    counts = noisy.values.astype(np.float64)
    expected = 2000.0 * clean.values
    totals = counts.sum((2, 3))
    # totals: Poisson with mean 2000 Σ I; their mean within 4 standard errors
    n = totals.size
    assert abs(totals.mean() - expected.sum((2, 3)).mean()) < 4 * math.sqrt(2000.0 / n)
    # pixel-wise: Poisson variance equals the mean (pooled over the whole scan)
    z = (counts - expected)[expected > 5] / np.sqrt(expected[expected > 5])
    assert abs(z.mean()) < 0.05 and abs(z.var() - 1) < 0.05
    per_a2, _ = _mos2_case(dose_e_per_A2=2000.0 / 0.09, seed=7)
    assert per_a2.attrs["dose_e_per_pattern"] == pytest.approx(2000.0)
    np.testing.assert_array_equal(per_a2.values, noisy.values)


def test_results_do_not_depend_on_the_chunking_or_the_scheduler(local_client, monkeypatch):
    kw = dict(dose_e_per_pattern=500.0, seed=11, source_size_A=0.25)
    a, _ = _mos2_case(chunks=(6, 7), **kw)
    b, _ = _mos2_case(chunks=(4, 3), **kw)
    assert b.data.chunks[:2] == ((4, 2), (3, 3, 1))
    with dask.config.set(scheduler="sync"):
        ref = a.values
    np.testing.assert_array_equal(b.compute().values, ref)  # on the LocalCluster
    # a big specimen is cut into per-chunk regions instead of one shared key: same result
    from stemdask.simulate import stem

    monkeypatch.setattr(stem, "SHARED_FIELD_BYTES", 0)
    c, _ = _mos2_case(chunks=(5, 2), **kw)
    np.testing.assert_array_equal(c.compute().values, ref)
    other_seed, _ = _mos2_case(chunks=(4, 3), dose_e_per_pattern=500.0, seed=12, source_size_A=0.25)
    assert np.any(other_seed.values != ref)


def test_source_size_is_a_gaussian_convolution_over_probe_positions():
    sigma = 0.3
    blurred, _ = _mos2_case(source_size_A=sigma, chunks=(3, 4))
    m = int(4 * sigma / 0.3 + 0.5)
    # coherent simulation of a scan bigger by the kernel radius, blurred and cropped by hand
    origin = (3.0, 3.0)
    wide, _ = _mos2_case(scan_shape=(6 + 2 * m, 7 + 2 * m), scan_origin_A=(origin[0] - m * 0.3, origin[1] - m * 0.3))
    ref = wide.values.astype(np.float64)
    kernel = np.exp(-0.5 * (np.arange(-m, m + 1) * 0.3 / sigma) ** 2)
    kernel /= kernel.sum()
    ref = ndimage.convolve1d(ndimage.convolve1d(ref, kernel, axis=0), kernel, axis=1)[m:-m, m:-m]
    ours, _ = _mos2_case(source_size_A=sigma, scan_origin_A=origin)
    np.testing.assert_allclose(ours.values, ref, atol=1e-5 * ref.max())
    assert blurred.attrs["simulation"]["source_size_A"] == sigma


def test_dataset_is_lazy_and_chunked_by_scan_tiles():
    data, truth = _mos2_case(chunks=(2, 7))
    assert isinstance(data.data, dask.array.Array)
    assert data.data.chunks == ((2, 2, 2), (7,), (32,), (32,))
    assert isinstance(truth, xr.Dataset)
    assert truth.transmission.dtype == np.complex64
    expected = np.exp(1j * interaction_constant(E) * truth.potential.values)
    # the stored transmission is the band-limited exp(iσv): close to it where v is smooth
    assert np.abs(np.angle(truth.transmission.values / expected)).mean() < 0.05


def test_frozen_phonons_average_displaced_configurations():
    # (slices of 1.9 Å: no atom sits on a slice boundary, where a tiny move changes its slice)
    static, truth0 = _mos2_case(slice_thickness_A=1.9)
    # vanishing vibrations: the average of two configurations is the static result
    tiny, truth_tiny = _mos2_case(slice_thickness_A=1.9, frozen_phonons=2, vibration_A=1e-6)
    assert truth_tiny.transmission_configurations.shape == (2, *truth0.transmission.shape)
    np.testing.assert_allclose(tiny.values, static.values, atol=1e-5 * static.values.max())
    # real vibrations (per element): different configurations, deterministic for a seed
    kw = dict(slice_thickness_A=1.9, frozen_phonons=3, vibration_A={"Mo": 0.05, "S": 0.08}, seed=3)
    hot, truth = _mos2_case(**kw)
    again, _ = _mos2_case(**kw)
    np.testing.assert_array_equal(hot.values, again.values)
    configs = truth.transmission_configurations.values
    assert np.abs(configs[0] - configs[1]).max() > 0.05
    assert not np.allclose(hot.values, static.values, atol=1e-3 * static.values.max())
    # the static ground truth is kept apart from the configurations
    np.testing.assert_array_equal(truth.transmission.values, truth0.transmission.values)
    assert truth.attrs["vibration_A"] == {"S": 0.08, "Mo": 0.05} and truth.attrs["frozen_phonons"] == 3
    # intensity still conserved up to what leaves the band limit
    total = hot.sum(("k_y", "k_x")).values
    assert np.all(total <= 1 + 1e-3) and np.all(total > 0.9)


@pytest.mark.gpu
def test_cupy_backend_matches_numpy():
    ref, _ = _mos2_case(slice_thickness_A=2.0)
    gpu, _ = _mos2_case(slice_thickness_A=2.0, backend="cupy")
    np.testing.assert_allclose(gpu.values, ref.values, atol=1e-6 * ref.values.max())


# -- bad input ----------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(InvalidArgumentError, match="dose_e_per_pattern=-5"):
        _mos2_case(dose_e_per_pattern=-5)
    with pytest.raises(InvalidArgumentError, match="dose_e_per_A2"):
        _mos2_case(dose_e_per_A2=float("nan"))
    with pytest.raises(InvalidArgumentError, match="max_angle_mrad.*band-limits"):
        _mos2_case(sampling_A=0.3)  # supports only λ / (3 · 0.3 Å) = 46 mrad
    coarse = samples.weak_phase_object((64, 64), sampling_A=0.5)
    with pytest.raises(InvalidArgumentError, match="max_angle_mrad"):
        simulate_4dstem(
            coarse,
            energy_ev=E,
            semiangle_mrad=10,
            scan_shape=(2, 2),
            scan_step_A=0.5,
            detector_shape=32,
            max_angle_mrad=40,
        )
    with pytest.raises(InvalidArgumentError, match="scan inside the sample"):
        _mos2_case(scan_shape=(100, 7))
    with pytest.raises(InvalidArgumentError, match="scan inside the sample"):
        _mos2_case(scan_origin_A=(-1.0, 0.0))
    with pytest.raises(InvalidArgumentError, match="window larger than the probe"):
        _mos2_case(aberrations={"defocus": 2000.0})
    with pytest.raises(InvalidArgumentError, match="element"):
        simulate_4dstem(
            samples.AtomicSample([0], [[0, 0, 0]], (5, 5, 5)),
            energy_ev=E,
            semiangle_mrad=25,
            scan_shape=(2, 2),
            scan_step_A=0.3,
            detector_shape=32,
            max_angle_mrad=50,
        )
    with pytest.raises(InvalidArgumentError, match="semiangle_mrad"):
        _mos2_case(semiangle_mrad=60)
    with pytest.raises(InvalidArgumentError, match="aberrations"):
        _mos2_case(aberrations={"Cq": 1.0})
    with pytest.raises(InvalidArgumentError, match="energy_ev"):
        _mos2_case(energy_ev=-1.0)
    with pytest.raises(InvalidArgumentError, match="scan_shape"):
        _mos2_case(scan_shape=(2.5, 3))
    with pytest.raises(InvalidArgumentError, match="backend"):
        _mos2_case(backend="torch")
    with pytest.raises(InvalidArgumentError, match="frozen_phonons"):
        _mos2_case(frozen_phonons=4)  # no vibration
    with pytest.raises(InvalidArgumentError, match="vibration_A"):
        _mos2_case(frozen_phonons=2, vibration_A={"Mo": 0.05})  # S missing
    with pytest.raises(InvalidArgumentError, match="vibration_A"):
        simulate_4dstem(
            samples.weak_phase_object((64, 64)),
            energy_ev=E,
            semiangle_mrad=20,
            scan_shape=(2, 2),
            scan_step_A=0.5,
            detector_shape=32,
            max_angle_mrad=50,
            vibration_A=0.1,
        )
    with pytest.raises(InvalidTypeError, match="sample"):
        simulate_4dstem(
            np.zeros((4, 4)),
            energy_ev=E,
            semiangle_mrad=25,
            scan_shape=(2, 2),
            scan_step_A=0.3,
            detector_shape=32,
            max_angle_mrad=50,
        )
