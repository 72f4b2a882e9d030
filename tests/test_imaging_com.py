"""Centre of mass, descan, rotation/flip, iCoM and segmented DPC."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

import stemdask
from stemdask.errors import InvalidArgumentError, InvalidTypeError, MissingCalibrationError
from stemdask.imaging import (
    center_of_mass,
    correct_com,
    detectors,
    dpc,
    electric_field,
    find_rotation,
    fit_descan,
    icom,
    remove_descan,
    rotate_com,
)
from stemdask.physics import wavelength_A

ENERGY = 200e3
ALPHA = 25.0  # mrad


# ----------------------------------------------------------------------------
# an explicit single-slice forward model: probe from an aperture, psi exp(i phi), |FFT|^2
# ----------------------------------------------------------------------------
def _phase_object(n, dx, rng, n_atoms=14, sigma_A=0.35, peak_rad=0.25):
    """Periodic weak phase object: Gaussian 'atoms' (positive phase), shape (n, n)."""
    yy, xx = np.indices((n, n)) * dx
    size = n * dx
    phi = np.zeros((n, n))
    for y0, x0 in rng.random((n_atoms, 2)) * size:
        dy = (yy - y0 + size / 2) % size - size / 2
        dx_ = (xx - x0 + size / 2) % size - size / 2
        phi += peak_rad * np.exp(-(dy**2 + dx_**2) / (2 * sigma_A**2))
    return phi


def _simulate(rng, n_scan=32, step_px=2, window=64, dx=0.1, aberrations=None):
    lam = wavelength_A(ENERGY)
    n_obj = n_scan * step_px
    phi = _phase_object(n_obj, dx, rng)
    q = np.fft.fftfreq(window, dx)
    qy, qx = q[:, None] + 0 * q[None, :], 0 * q[:, None] + q[None, :]
    aperture = np.hypot(qy, qx) <= ALPHA * 1e-3 / lam
    chi = stemdask.optics.aberration_function(lam * np.hypot(qy, qx), np.arctan2(qy, qx), ENERGY, aberrations)
    probe = np.fft.fftshift(np.fft.ifft2(aperture * np.exp(-1j * chi)))  # centred at window // 2
    obj = np.exp(1j * phi)
    idx = np.arange(window) - window // 2
    frames = np.empty((n_scan, n_scan, window, window))
    for iy in range(n_scan):
        rows = (iy * step_px + idx) % n_obj
        for ix in range(n_scan):
            cols = (ix * step_px + idx) % n_obj
            exit_wave = probe * obj[np.ix_(rows, cols)]
            frames[iy, ix] = np.abs(np.fft.fftshift(np.fft.fft2(exit_wave))) ** 2
    frames *= 1e4 / frames[0, 0].sum()
    data = stemdask.from_array(
        frames,
        chunks=(8, 8),
        energy_ev=ENERGY,
        semiangle_mrad=ALPHA,
        scan_step_A=step_px * dx,
        detector_pixel_mrad=lam / (window * dx) * 1e3,
    )
    return data, phi[::step_px, ::step_px], phi


def _lowpass(image, step_A, q_cut):
    qy = np.fft.fftfreq(image.shape[0], step_A)[:, None]
    qx = np.fft.fftfreq(image.shape[1], step_A)[None, :]
    return np.fft.ifft2(np.fft.fft2(image) * (np.hypot(qy, qx) <= q_cut)).real


def _corr(a, b):
    return np.corrcoef(a.ravel(), b.ravel())[0, 1]


@pytest.fixture(scope="module")
def simulated():
    return _simulate(np.random.default_rng(7))


@pytest.mark.parametrize("method", ["fourier", "iterative"])
def test_icom_of_weak_phase_object_correlates_with_true_phase(simulated, method):
    data, truth, _ = simulated
    q_ap = ALPHA * 1e-3 / wavelength_A(ENERGY)
    com = correct_com(center_of_mass(data), descan=None, rotation_deg=None)
    phase = icom(com, lowpass=q_ap, method=method, n_iter=40)
    assert phase.dims == ("scan_y", "scan_x") and phase.attrs["units"] == "rad"
    ref = _lowpass(truth, 0.2, q_ap)
    r = _corr(phase.values, ref)
    print(f"iCoM ({method}) vs low-passed true phase: r = {r:.4f}")
    assert r >= 0.95, r
    # positive phase at atoms: same sign, not inverted
    assert np.sum(phase.values * (ref - ref.mean())) > 0


def test_icom_recovers_an_exact_gradient_field(rng):
    n, step = 40, 0.25
    phi = _phase_object(n, step, rng, sigma_A=0.6)
    q = np.fft.fftfreq(n, step)
    f = np.fft.fft2(phi)
    gy = np.fft.ifft2(2j * np.pi * q[:, None] * f).real
    gx = np.fft.ifft2(2j * np.pi * q[None, :] * f).real
    lam = wavelength_A(ENERGY)
    com = xr.DataArray(
        np.stack([gy, gx], -1) * lam / (2 * np.pi) * 1e3,
        dims=("scan_y", "scan_x", "component"),
        coords={
            "scan_y": ("scan_y", np.arange(n) * step, {"units": "Å"}),
            "scan_x": ("scan_x", np.arange(n) * step, {"units": "Å"}),
            "component": ["y", "x"],
        },
        attrs={"units": "mrad", "energy_ev": ENERGY},
    )
    exact = icom(com, method="fourier").values  # a periodic field: the Fourier integration is exact
    np.testing.assert_allclose(exact, phi - phi.mean(), atol=1e-10)
    # the iterated, padded solver converges to the same field up to boundary effects
    it = icom(com, method="iterative", n_iter=200, pad=2).values
    assert _corr(it, phi) > 0.99
    # a high-pass removes the slowly varying part: the result has less low-frequency power
    hp = icom(com, method="fourier", highpass=1.0).values
    assert np.abs(np.fft.fft2(hp))[0, 1] < np.abs(np.fft.fft2(exact))[0, 1]
    with pytest.raises(InvalidArgumentError, match="lowpass"):
        icom(com, lowpass=-1)
    with pytest.raises(InvalidArgumentError, match="method"):
        icom(com, method="magic")
    with pytest.raises(MissingCalibrationError, match="energy_ev"):
        icom(xr.DataArray(com.values, dims=com.dims, coords=com.coords, attrs={"units": "mrad"}))


def _window_of_periodic_field(rng, tilt=(0.3, -0.2)):
    """A CoM field cut from a larger periodic one (real, non-periodic edges) plus a mean tilt, and its phase."""
    n, m, step = 128, 48, 0.3
    q = np.fft.fftfreq(n, step)
    spec = np.fft.fft2(rng.normal(size=(n, n))) * np.exp(-((np.hypot(q[:, None], q[None, :]) / 0.6) ** 2))
    phi = np.fft.ifft2(spec).real
    phi /= phi.std()
    f = np.fft.fft2(phi)
    gy = np.fft.ifft2(2j * np.pi * q[:, None] * f).real[20 : 20 + m, 37 : 37 + m] + tilt[0]
    gx = np.fft.ifft2(2j * np.pi * q[None, :] * f).real[20 : 20 + m, 37 : 37 + m] + tilt[1]
    y, x = np.meshgrid(np.arange(m) * step, np.arange(m) * step, indexing="ij")
    ideal = phi[20 : 20 + m, 37 : 37 + m] + tilt[0] * y + tilt[1] * x
    lam = wavelength_A(ENERGY)
    com = xr.DataArray(
        np.stack([gy, gx], -1) * lam / (2 * np.pi) * 1e3,
        dims=("scan_y", "scan_x", "component"),
        coords={
            "scan_y": ("scan_y", np.arange(m) * step, {"units": "Å"}),
            "scan_x": ("scan_x", np.arange(m) * step, {"units": "Å"}),
            "component": ["y", "x"],
        },
        attrs={"units": "mrad", "energy_ev": ENERGY},
    )
    return com, ideal - ideal.mean()


def test_icom_of_a_non_periodic_scan_with_a_tilt(rng):
    com, ideal = _window_of_periodic_field(rng)
    default = icom(com)
    assert default.attrs["method"] == "neumann"
    assert _corr(default.values, ideal) >= 0.995
    # spectral accuracy: the discrete Laplacian's sin(pi q h) eigenvalues left 3.4 % of the ideal's std
    assert np.std(default.values - ideal) < 0.02 * np.std(ideal)
    # the iterated solver integrates the mean gradient as a ramp, not into a smooth background
    iterated = icom(com, method="iterative").values
    assert _corr(iterated, ideal) >= 0.995
    assert np.std(iterated - ideal) < 0.05 * np.std(ideal)
    # the periodic Fourier integration wraps the tilt and the edges around
    assert _corr(icom(com, method="fourier").values, ideal) < 0.9
    # both solvers take the same regularisation: a low-pass removes fine detail alike
    smooth_n = icom(com, lowpass=0.3).values
    smooth_i = icom(com, method="iterative", lowpass=0.3).values
    assert np.std(smooth_n) < np.std(default.values)
    assert _corr(smooth_n, smooth_i) > 0.98


def test_probe_intensity_transfer_is_the_aperture_autocorrelation():
    from stemdask.imaging.phase import probe_intensity_transfer

    lam = wavelength_A(ENERGY)
    ka = ALPHA * 1e-3 / lam
    q = np.linspace(0, 2.3 * ka, 40)
    s = np.clip(q / (2 * ka), 0, 1)
    overlap = (2 / np.pi) * (np.arccos(s) - s * np.sqrt(1 - s * s))  # two discs of radius ka, |q| apart
    t = probe_intensity_transfer(q * np.sin(0.3), q * np.cos(0.3), energy_ev=ENERGY, semiangle_mrad=ALPHA)
    np.testing.assert_allclose(t.real, overlap, atol=3e-3)
    np.testing.assert_allclose(t.imag, 0, atol=1e-6)
    # with defocus and astigmatism: the overlap integral of A exp(-i chi), summed directly on a fine k grid
    ab = {"C10": -80.0, "C12": 30.0, "phi12": 0.4}
    dk = ka / 60
    k = np.arange(-70, 71) * dk
    ky, kx = np.meshgrid(k, k, indexing="ij")

    def psi(ky, kx):
        a = lam * np.hypot(ky, kx)
        chi = stemdask.optics.aberration_function(a, np.arctan2(ky, kx), ENERGY, ab)
        return (a <= ALPHA * 1e-3) * np.exp(-1j * chi)

    p0 = psi(ky, kx)
    for qy, qx in [(0.3 * ka, 0.1 * ka), (-0.7 * ka, 0.9 * ka), (1.5 * ka, 0.2 * ka)]:
        direct = np.sum(p0 * np.conj(psi(ky + qy, kx + qx))) / np.sum(np.abs(p0) ** 2)
        got = probe_intensity_transfer(
            np.array(qy), np.array(qx), energy_ev=ENERGY, semiangle_mrad=ALPHA, aberrations=ab
        )
        assert abs(got - direct) < 0.02, (qy, qx, got, direct)


def test_icom_deconvolve_probe_with_an_aberrated_probe():
    # coma makes |P|^2 asymmetric: the iCoM is a correlation with it, and only the right sign of the
    # transfer (conj T) undoes it
    ab = {"C10": -60.0, "C12": 40.0, "phi12": 0.5, "C21": 2000.0, "phi21": 0.3}
    data, truth, _ = _simulate(np.random.default_rng(7), aberrations=ab)
    com = correct_com(center_of_mass(data), descan=None, rotation_deg=None).compute()
    ref = _lowpass(truth, 0.2, 2 * ALPHA * 1e-3 / wavelength_A(ENERGY))
    plain = _corr(icom(com, method="fourier").values, ref)
    right = _corr(icom(com, method="fourier", deconvolve_probe=0.01, aberrations=ab).values, ref)
    mirrored = _corr(
        icom(com, method="fourier", deconvolve_probe=0.01, aberrations={**ab, "phi21": 0.3 + math.pi}).values, ref
    )
    assert plain < 0.5 and right > 0.8 and mirrored < 0.5, (plain, right, mirrored)


def test_icom_deconvolve_probe_recovers_the_2alpha_band(simulated):
    data, truth, _ = simulated
    com = correct_com(center_of_mass(data), descan=None, rotation_deg=None).compute()
    ref = _lowpass(truth, 0.2, 2 * ALPHA * 1e-3 / wavelength_A(ENERGY))
    # periodic scan over the whole object: the Wiener filter is all there is to it
    plain = icom(com, method="fourier").values
    sharp = icom(com, method="fourier", deconvolve_probe=0.01)
    assert sharp.attrs["deconvolve_probe_eps"] == 0.01
    assert _corr(plain, ref) < 0.99 and _corr(sharp.values, ref) > 0.999
    # a window with real edges: the masked Tikhonov problem, edges left free
    win = com.isel(scan_y=slice(3, 27), scan_x=slice(5, 29))
    ref_w = ref[3:27, 5:29]
    plain_w = icom(win).values
    sharp_w = icom(win, deconvolve_probe=0.01).values
    assert _corr(sharp_w, ref_w) > _corr(plain_w, ref_w) + 0.004
    inner = (slice(4, -4), slice(4, -4))
    assert _corr(sharp_w[inner], ref_w[inner]) > 0.998 > _corr(plain_w[inner], ref_w[inner]) + 0.005
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(InvalidArgumentError, match="deconvolve_probe"):
            icom(win, deconvolve_probe=bad)
    for bad in ("0.1", True):
        with pytest.raises(InvalidTypeError, match="deconvolve_probe"):
            icom(win, deconvolve_probe=bad)
    no_alpha = win.copy()
    no_alpha.attrs = {k: v for k, v in win.attrs.items() if k != "semiangle_mrad"}
    with pytest.raises(MissingCalibrationError, match="semiangle_mrad"):
        icom(no_alpha, deconvolve_probe=0.01)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "int32", "float32", "float64"])
def test_center_of_mass_matches_numpy(local_client, rng, dtype):
    arr = rng.integers(0, 200, size=(5, 9, 13, 16)).astype(dtype)
    arr[2, 3] = 0  # an empty pattern: CoM undefined -> NaN
    data = stemdask.from_array(
        arr, chunks=(2, 4), detector_pixel_mrad=(0.5, 0.7), beam_center_px=(6.2, 7.9), energy_ev=ENERGY
    )
    com = center_of_mass(data).compute()
    ky = (np.arange(13) - 6.2) * 0.5
    kx = (np.arange(16) - 7.9) * 0.7
    a = arr.astype(np.float64)
    tot = a.sum((2, 3))
    with np.errstate(invalid="ignore"):
        ref = np.stack([(a * ky[:, None]).sum((2, 3)) / tot, (a * kx[None, :]).sum((2, 3)) / tot], -1)
    np.testing.assert_allclose(com.values, ref, rtol=1e-10, atol=1e-12)
    assert np.isnan(com.values[2, 3]).all()
    assert com.attrs["units"] == "mrad"
    # masked CoM: only the pixels in a disk count
    disk = detectors.disk(data, 2.0)
    w = disk.values[0]
    with np.errstate(invalid="ignore"):
        ref_m = np.stack(
            [
                (a * w * ky[:, None]).sum((2, 3)) / (a * w).sum((2, 3)),
                (a * w * kx[None, :]).sum((2, 3)) / (a * w).sum((2, 3)),
            ],
            -1,
        )
    np.testing.assert_allclose(center_of_mass(data, mask=disk).values, ref_m, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(data.stem.center_of_mass().values, ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(InvalidArgumentError, match="single mask"):
        center_of_mass(data, mask=detectors.rings(data, [0, 1, 2]))


def test_descan_plane_is_removed(rng):
    ny, nx = 12, 15
    yy, xx = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    plane = np.stack([0.3 + 0.8 * yy - 0.2 * xx, -0.5 + 0.1 * yy + 0.6 * xx], -1)
    com = xr.DataArray(
        plane.copy(), dims=("scan_y", "scan_x", "component"), coords={"component": ["y", "x"]}, attrs={"units": "mrad"}
    )
    com.values[3, 4] = np.nan  # ignored by the fit
    np.testing.assert_allclose(fit_descan(com).values, plane, atol=1e-12)
    resid = remove_descan(com).values
    assert np.nanmax(np.abs(resid)) < 1e-12
    np.testing.assert_allclose(fit_descan(com, order=0).values[0, 0], np.nanmean(com.values, (0, 1)))


def _atom_field(rng, n=48):
    """CoM-like field in the scan frame: gradient of a positive 'atom' phase (points to atoms)."""
    phi = _phase_object(n, 0.2, rng, n_atoms=25, sigma_A=0.4)
    gy, gx = np.gradient(phi)
    return np.stack([gy, gx], -1)


@pytest.mark.parametrize(
    "rotation,flip", [(0.0, False), (37.0, False), (-128.0, True), (163.5, False), (-12.3, True), (90.0, True)]
)
def test_rotation_and_flip_are_recovered(rng, rotation, flip):
    true = _atom_field(rng)
    t = math.radians(rotation)
    # the detector sees the inverse transform: rotate by -t, then flip y
    y, x = true[..., 0], true[..., 1]
    my = math.sin(-t) * x + math.cos(-t) * y
    mx = math.cos(-t) * x - math.sin(-t) * y
    measured = np.stack([-my if flip else my, mx], -1)
    com = xr.DataArray(
        measured, dims=("scan_y", "scan_x", "component"), coords={"component": ["y", "x"]}, attrs={"units": "mrad"}
    )
    found = find_rotation(com)
    assert bool(found["flip"]) == flip
    err = (float(found["rotation_deg"]) - rotation + 180) % 360 - 180
    assert abs(err) < 1.0, (float(found["rotation_deg"]), rotation)
    fixed = correct_com(com, descan=None).values
    np.testing.assert_allclose(fixed, true, atol=1e-9 * np.abs(true).max())
    # py4DSTEM's convention: the angle modulo 180 degrees
    half = float(find_rotation(com, resolve_180=False)["rotation_deg"])
    assert -90 < half <= 90 and abs((half - rotation + 90) % 180 - 90) < 1.0


def test_rotate_com_convention():
    com = xr.DataArray(
        np.array([[[0.0, 1.0]]] * 1), dims=("scan_y", "scan_x", "component"), coords={"component": ["y", "x"]}
    )  # a vector along +x
    out = rotate_com(com, 90.0).values[0, 0]
    np.testing.assert_allclose(out, [1.0, 0.0], atol=1e-12)  # +x -> +y
    np.testing.assert_allclose(rotate_com(com, 0.0, flip=True).values[0, 0], [-0.0, 1.0])


def test_electric_field_units(simulated):
    data, _, _ = simulated
    com = center_of_mass(data)
    field = electric_field(com)
    assert field.attrs["units"] == "V"
    # 200 keV: lambda = 0.025079 Å, sigma = 7.2884e-4 rad/(V Å): 2 pi 1e-3 / (lambda sigma) = 343.7 V/mrad
    np.testing.assert_allclose(com.attrs["field_V_per_mrad"], -343.7, rtol=2e-4)
    np.testing.assert_allclose(field.values, -343.7 * com.values, rtol=2e-4)


def _disk_patterns(shifts_mrad, n=128, pix=0.5, alpha=10.0):
    k = (np.arange(n) - n // 2) * pix
    frames = []
    for sy, sx in shifts_mrad:
        frames.append((np.hypot(k[:, None] - sy, k[None, :] - sx) <= alpha).astype(np.float64))
    return np.asarray(frames)


def test_segmented_dpc_measures_small_shifts():
    shifts = [(0.0, 0.0), (0.3, 0.0), (0.0, -0.4), (0.25, 0.2)]
    frames = _disk_patterns(shifts).reshape(2, 2, 128, 128)
    data = stemdask.from_array(frames, detector_pixel_mrad=0.5, semiangle_mrad=10.0, energy_ev=ENERGY)
    for n in (4, 6):
        got = dpc(data, n_segments=n, inner_mrad=3.0, outer_mrad=15.0).values.reshape(4, 2)
        np.testing.assert_allclose(got, shifts, atol=0.04)
    with pytest.raises(InvalidArgumentError, match="n_segments"):
        dpc(data, n_segments=2)
    with pytest.raises(InvalidArgumentError, match="semiangle"):
        dpc(data, inner_mrad=12.0, outer_mrad=15.0)


def test_accessor_icom_pipeline(simulated):
    data, truth, _ = simulated
    q_ap = ALPHA * 1e-3 / wavelength_A(ENERGY)
    phase = data.stem.icom(lowpass=q_ap, correct={"descan": 0, "rotation_deg": None})
    assert _corr(phase.values, _lowpass(truth, 0.2, q_ap)) >= 0.95
