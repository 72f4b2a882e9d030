"""SSB ptychography on simulated weak phase objects: truth, refocus, aberration fit, layouts, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import stemdask
from stemdask.errors import InvalidArgumentError, MissingCalibrationError
from stemdask.physics import wavelength_A
from stemdask.ptycho import SSB, preprocess
from stemdask.simulate import samples, simulate_4dstem

E_EV = 80e3
ALPHA = 25.0
N = 32
STEP = 0.4
SAMPLING = 0.2
LAM = wavelength_A(E_EV)
K_2ALPHA = 2 * ALPHA * 1e-3 / LAM


def _phase_field(seed: int = 1) -> np.ndarray:
    """A smooth random phase (0.05 rad rms) on the cell of the scan, band-limited below 2α."""
    m = int(round(N * STEP / SAMPLING))
    rng = np.random.default_rng(seed)
    spec = np.fft.fft2(rng.normal(size=(m, m)))
    q = np.hypot(*np.meshgrid(np.fft.fftfreq(m, SAMPLING), np.fft.fftfreq(m, SAMPLING), indexing="ij"))
    spec[q > 0.9 * K_2ALPHA] = 0
    phase = np.fft.ifft2(spec).real
    return 0.05 * phase / phase.std()


def _on_scan(field: np.ndarray) -> np.ndarray:
    """The field low-passed to 2α and sampled at the probe positions (a periodic scan of the cell)."""
    m = field.shape[0]
    q = np.hypot(*np.meshgrid(np.fft.fftfreq(m, SAMPLING), np.fft.fftfreq(m, SAMPLING), indexing="ij"))
    spec = np.fft.fft2(field)
    spec[q > K_2ALPHA] = 0
    f = m // N
    return np.fft.ifft2(spec).real[::f, ::f]


def _simulate(field: np.ndarray, aberrations=None, dose=None, chunks=None):
    data, _ = simulate_4dstem(
        samples.PhaseObject(field, (SAMPLING, SAMPLING)),
        energy_ev=E_EV,
        semiangle_mrad=ALPHA,
        aberrations=aberrations,
        scan_shape=(N, N),
        scan_step_A=STEP,
        scan_origin_A=(0, 0),
        detector_shape=48,
        max_angle_mrad=48,
        dose_e_per_pattern=dose,
        chunks=chunks,
    )
    return data.persist(scheduler="threads")


def _r(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.fixture(scope="module")
def field():
    return _phase_field()


@pytest.fixture(scope="module")
def focused(field):
    return _simulate(field)


@pytest.fixture(scope="module")
def defocused(field):
    return _simulate(field, {"defocus": 120.0})


@pytest.fixture(scope="module")
def focused_result(focused):
    return SSB(focused).reconstruct(defocus_A=0.0)


def test_weak_phase_object_matches_band_limited_truth(field, focused_result):
    phase = focused_result["phase"]
    assert phase.dims == ("scan_y", "scan_x")
    assert phase.coords["scan_x"].attrs["units"] == "Å"
    # positive correlation: a positive phase of the specimen is a positive SSB phase
    assert _r(phase.values, _on_scan(field)) >= 0.95
    np.testing.assert_allclose(focused_result["amplitude"].values, np.abs(focused_result["object"].values))


def test_positive_potential_gives_positive_phase():
    # one Gaussian bump of positive phase (the simulator's exp(iσV) of a positive potential)
    m = int(round(N * STEP / SAMPLING))
    y, x = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    bump = 0.05 * np.exp(-((y - m / 2) ** 2 + (x - m / 2) ** 2) / (2 * 3.0**2))
    phase = SSB(_simulate(bump)).reconstruct()["phase"].values
    peak = np.unravel_index(np.argmax(np.abs(phase)), phase.shape)
    assert phase[peak] > 0
    assert abs(peak[0] - N // 2) <= 1 and abs(peak[1] - N // 2) <= 1


def test_positive_projected_potential_of_atoms_gives_positive_phase():
    data, truth = simulate_4dstem(
        samples.graphene((2, 2)),
        energy_ev=E_EV,
        semiangle_mrad=ALPHA,
        scan_shape=(16, 28),
        scan_step_A=(4.26 / 16, 4.92 / 28),
        scan_origin_A=(0, 0),
        detector_shape=48,
        max_angle_mrad=48,
    )
    phase = SSB(data).reconstruct()["phase"].values
    pot = truth["projected_potential"].interp(
        y=truth["probe_position_y"].values, x=truth["probe_position_x"].values, method="nearest"
    )
    assert _r(phase, pot.values.T if pot.dims == ("x", "y") else pot.values) > 0.8


def test_defocus_is_corrected_by_the_reduction(focused_result, defocused):
    ssb = SSB(defocused)
    corrected = ssb.reconstruct(defocus_A=120.0)["phase"].values
    uncorrected = ssb.reconstruct(defocus_A=0.0)["phase"].values
    reference = focused_result["phase"].values
    assert _r(corrected, reference) >= 0.95
    assert _r(uncorrected, reference) < 0.8
    # the wrong sign of the defocus is no correction
    assert _r(ssb.reconstruct(defocus_A=-120.0)["phase"].values, reference) < 0.5


def test_focal_series_stacks_reconstructions(defocused):
    ssb = SSB(defocused)
    series = ssb.focal_series([0.0, 60.0, 120.0])
    assert series["phase"].dims == ("defocus_A", "scan_y", "scan_x")
    assert list(series.coords["defocus_A"].values) == [0.0, 60.0, 120.0]
    np.testing.assert_allclose(series["object"].sel(defocus_A=60.0).values, ssb.reconstruct(60.0)["object"].values)


def test_fit_aberrations_finds_defocus_and_astigmatism(field, defocused):
    fit = SSB(defocused).fit_aberrations()
    assert abs(fit["defocus"] - 120.0) <= 12.0
    assert fit["C12"] < 10.0
    astig = _simulate(field, {"defocus": 60.0, "C12": 40.0, "phi12": 0.4})
    fit = SSB(astig).fit_aberrations()
    assert abs(fit["defocus"] - 60.0) <= 6.0
    assert abs(fit["C12"] - 40.0) <= 4.0
    assert abs(fit["phi12"] - 0.4) <= 0.1


def _reference(binned, defocus_A: float, sideband: str) -> np.ndarray:
    """A direct NumPy SSB (loops over K, χ of pure defocus written out) on the binned patterns."""
    intensity = np.asarray(binned.values, np.float64)
    ny, nx = intensity.shape[:2]
    k_y = binned.coords["k_y"].values * 1e-3 / LAM
    k_x = binned.coords["k_x"].values * 1e-3 / LAM
    py, px = np.meshgrid(k_y, k_x, indexing="ij")
    bf = py**2 + px**2 <= (ALPHA * 1e-3 / LAM) ** 2
    g = np.fft.fft2(intensity, axes=(0, 1))
    mean = intensity[:, :, bf].mean()
    k0sq = (ALPHA * 1e-3 / LAM) ** 2

    def chi(qy, qx):  # abTEM: χ = π λ C10 |k|², C10 = -defocus
        return -math.pi * LAM * defocus_A * (qy**2 + qx**2)

    spectrum = np.zeros((ny, nx), complex)
    for iy in range(ny):
        for ix in range(nx):
            Ky, Kx = np.fft.fftfreq(ny, STEP)[iy], np.fft.fftfreq(nx, STEP)[ix]
            minus = (py - Ky) ** 2 + (px - Kx) ** 2 <= k0sq
            plus = (py + Ky) ** 2 + (px + Kx) ** 2 <= k0sq
            total, count = 0j, 0
            if sideband in ("both", "right"):
                sel = bf & minus & ~plus
                total += np.sum(g[iy, ix][sel] * np.exp(1j * (chi(py - Ky, px - Kx) - chi(py, px))[sel]))
                count += sel.sum()
            if sideband in ("both", "left"):
                sel = bf & plus & ~minus
                total -= np.sum(g[iy, ix][sel] * np.exp(1j * (chi(py, px) - chi(py + Ky, px + Kx))[sel]))
                count += sel.sum()
            spectrum[iy, ix] = total / count / mean if count else 0.0
    return 1 + np.fft.ifft2(spectrum)


@pytest.mark.parametrize("sideband", ["both", "right", "left"])
def test_agrees_with_a_direct_numpy_reference(defocused, sideband):
    binned = preprocess.bright_field(defocused).compute()
    expected = _reference(binned, 80.0, sideband)
    got = SSB(defocused, sideband=sideband).reconstruct(defocus_A=80.0)["object"].values
    np.testing.assert_allclose(got, expected, atol=2e-4 * np.abs(expected - 1).max())


def test_events_give_the_dense_result(field):
    counts = _simulate(field, dose=2000.0)
    events = stemdask.events.from_dense(counts)
    dense = SSB(counts).reconstruct(defocus_A=0.0)["object"].values
    counted = SSB(events).reconstruct(defocus_A=0.0)["object"].values
    np.testing.assert_allclose(counted, dense, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(
        preprocess.bright_field(events).values, preprocess.bright_field(counts).values.astype(np.float32)
    )


def test_chunking_does_not_change_the_result(defocused):
    reference = SSB(defocused).reconstruct(defocus_A=120.0)["object"].values
    rechunked = defocused.chunk({"scan_y": 8, "scan_x": 16})
    other = SSB(rechunked, detector_chunk=7).reconstruct(defocus_A=120.0)["object"].values
    np.testing.assert_allclose(other, reference, rtol=0, atol=1e-6)


def test_one_and_two_workers_agree(defocused, local_client):
    from distributed import Client, LocalCluster, futures_of

    data = defocused.compute()  # plain numpy: the cluster computes everything from here
    two = SSB(data, detector_chunk=16)
    kept = [f for p in two._pairs for f in futures_of(p)]
    assert len(kept) == len(two._pairs) > 1  # G is held on the workers, one future per detector chunk
    assert all(local_client.who_has(kept)[f.key] for f in kept)
    on_two = two.reconstruct(defocus_A=120.0)["object"].values
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster, set_as_default=False) as one_client:
            with one_client.as_current():
                import dask

                with dask.config.set(scheduler=one_client):
                    on_one = SSB(data, detector_chunk=16).reconstruct(defocus_A=120.0)["object"].values
    np.testing.assert_allclose(on_one, on_two, rtol=0, atol=1e-6)


def test_scan_rotation_and_flip(focused, focused_result):
    # unbinned (a binning grid is not mirror-symmetric about the beam), so the pixels map one to one
    reference = SSB(focused, max_pixels=64).reconstruct()["object"].values
    # k_y reversed; the beam centre moves to keep k = 0 on the same pattern pixel
    flipped = stemdask.calibrate(focused.copy(data=focused.data[:, :, ::-1, :]), beam_center_px=[23.0, 24.0])
    np.testing.assert_allclose(
        SSB(flipped, flip=True, max_pixels=64).reconstruct()["object"].values, reference, atol=1e-6
    )
    assert _r(SSB(flipped).reconstruct()["phase"].values, focused_result["phase"].values) < 0.5
    # the detector turned by 90°: old (k_y, k_x) = new (k_x, -k_y), the rotation of rotate_com by +90°
    turned = focused.copy(data=focused.data.transpose(0, 1, 3, 2)[:, :, ::-1, :])
    turned = stemdask.calibrate(turned, beam_center_px=[23.0, 24.0])
    np.testing.assert_allclose(
        SSB(turned, rotation_deg=90.0, max_pixels=64).reconstruct()["object"].values, reference, atol=1e-6
    )
    assert _r(SSB(turned, rotation_deg=-90.0).reconstruct()["phase"].values, focused_result["phase"].values) < 0.5


def test_bright_field_crop_and_binning(focused):
    binned = preprocess.bright_field(focused, max_pixels=8)
    assert binned.sizes["k_y"] <= 8 and binned.sizes["k_x"] <= 8
    stemdask.validate(binned)
    # ±1.25 α = ±31.25 mrad is 33 pixels of 2 mrad: the smallest factor that gives <= 8 bins is 5
    assert binned.attrs["detector_pixel_mrad"][0] == pytest.approx(focused.attrs["detector_pixel_mrad"][0] * 5)
    # the binned patterns hold the whole bright field (nothing dropped)
    total = float(focused.sum(("k_y", "k_x")).mean())
    assert float(binned.sum(("k_y", "k_x")).mean()) == pytest.approx(total, rel=0.05)
    assert float(np.abs(binned.coords["k_x"]).min()) < binned.attrs["detector_pixel_mrad"][1]


@pytest.mark.parametrize(
    "missing", ["energy_ev", "semiangle_mrad", "scan_step_A", "detector_pixel_mrad"], ids=lambda m: m
)
def test_missing_calibration_is_named(focused, missing):
    arr = np.zeros((4, 4, 16, 16), np.float32)
    calibration = dict(energy_ev=80e3, semiangle_mrad=10.0, scan_step_A=0.5, detector_pixel_mrad=2.0)
    del calibration[missing]
    data = stemdask.from_array(arr, **calibration)
    with pytest.raises(MissingCalibrationError, match=missing):
        SSB(data)


def test_detector_without_the_bright_field_is_refused():
    data = stemdask.from_array(
        np.zeros((4, 4, 16, 16), np.float32), energy_ev=80e3, semiangle_mrad=30.0, scan_step_A=0.5,
        detector_pixel_mrad=2.0,
    )  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="bright-field"):
        SSB(data)


def test_bad_options_are_named(focused):
    with pytest.raises(InvalidArgumentError, match="sideband"):
        SSB(focused, sideband="upper")
    ssb = SSB(focused)
    with pytest.raises(InvalidArgumentError, match="normalise"):
        ssb.reconstruct(normalise="max")
    with pytest.raises(InvalidArgumentError, match="aberrations"):
        ssb.reconstruct(defocus_A=10.0, aberrations={"C10": 3.0})


def test_sum_normalisation_is_a_low_pass(focused, field, focused_result):
    summed = SSB(focused, normalise="sum").reconstruct()["phase"].values
    truth = _on_scan(field)
    assert _r(summed, truth) > 0.8
    assert np.std(summed) < np.std(focused_result["phase"].values)


@pytest.mark.gpu
def test_cupy_chunks_give_the_numpy_result(focused, focused_result):
    import cupy

    on_gpu = focused.copy(data=focused.data.map_blocks(cupy.asarray))
    result = SSB(on_gpu).reconstruct(defocus_A=0.0)
    np.testing.assert_allclose(result["object"].values, focused_result["object"].values, atol=1e-5)


def test_interactive_example_updates_the_image_from_the_sliders(defocused):
    import importlib.util
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    path = Path(__file__).resolve().parents[1] / "examples" / "ssb_interactive.py"
    spec = importlib.util.spec_from_file_location("ssb_interactive", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    ssb = SSB(defocused)
    box = example.refocus_widget(ssb)
    box.sliders["defocus"].value = 120.0
    box.sliders["C12"].value = 5.0
    assert len(box.times_s) == 2
    expected = ssb.reconstruct(aberrations={"defocus": 120.0, "C12": 5.0, "phi12": 0.0})["phase"].values
    image = matplotlib.pyplot.gcf().axes[0].images[0]  # the figure shown in the widget's Output
    np.testing.assert_allclose(image.get_array(), expected)
