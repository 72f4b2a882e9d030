"""stemdask.metrics: ratio C, Θ, mean-Θ curves and FSC against direct NumPy computations."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import stemdask  # noqa: E402
from stemdask import metrics  # noqa: E402
from stemdask.compression import bases, compress  # noqa: E402
from stemdask.errors import InvalidArgumentError  # noqa: E402


def _data(seed=0):
    rng = np.random.default_rng(seed)
    ky, kx = np.mgrid[:20, :20] - 9.5
    r = np.hypot(ky, kx)
    values = rng.poisson(10.0 * (r <= 4) + 1.0 * np.exp(-r / 5), size=(4, 5, 20, 20)).astype(np.uint16)
    return stemdask.from_array(values, detector_pixel_mrad=1.0, semiangle_mrad=4.0, beam_center_px=(9.5, 9.5))


def test_ratio():
    assert metrics.compression_ratio(65536, 15, 1) == pytest.approx(65536 / 18)
    assert metrics.compression_ratio(65536, 15, 1, perpendicular=False) == 4096
    with pytest.raises(InvalidArgumentError, match="n_bright"):
        metrics.compression_ratio(100, -1, 1)
    data = _data()
    c = compress(data, bases.make_basis(data, "zernike", n_bf=6, n_df=1))
    summary = metrics.storage_summary(c)
    assert summary["ratio_C"] == pytest.approx(400 / 9) and summary["raw_bytes"] == data.nbytes


def test_theta_against_numpy():
    data = _data(1)
    basis = bases.make_basis(data, "zernike", n_bf=6, n_df=3)
    c = compress(data, basis).compute()
    th = metrics.theta(c)
    d = np.sqrt(data.values.astype(float))
    for region, name in (("bf", "theta_bright"), ("df", "theta_dark")):
        inside = basis.coords[f"{region}_region"].values
        mine = basis.coords["basis_region"].values == region
        coef = np.einsum("yxij,nij->yxn", d, basis.values[mine])
        ref = np.arccos(np.sqrt((coef**2).sum(-1) / (d**2 * inside).sum(axis=(2, 3))))
        np.testing.assert_allclose(th[name].values, ref, atol=1e-7)
        assert th[name].attrs["units"] == "rad"
    curve = metrics.mean_theta_curve(c, "bf")
    assert list(curve.n_masks.values) == list(range(1, 7))
    assert np.all(np.diff(curve.values) <= 1e-12)  # more masks never describe a pattern worse
    assert curve.values[-1] == pytest.approx(metrics.mean_theta(c, "bf"))
    assert metrics.theta_from_norms(np.array(4.0), np.array(4.0)) == 0
    assert metrics.theta_from_norms(np.array(0.0), np.array(4.0)) == pytest.approx(np.pi / 2)
    ax = metrics.plot_theta_curves({"zernike": curve, "again": curve})
    assert len(ax.lines) == 2


def test_fsc():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(32, 32))
    same = metrics.fourier_shell_correlation(image, image)
    np.testing.assert_allclose(same.fsc.values, 1.0)
    np.testing.assert_allclose(metrics.fourier_shell_correlation(image, -image).fsc.values, -1.0)
    other = rng.normal(size=(32, 32))
    fsc = metrics.fourier_shell_correlation(image, other, n_shells=8)
    # reference: the ring of |q| in [q_lo, q_hi) in cycles/pixel
    fa, fb = np.fft.fft2(image), np.fft.fft2(other)
    q = np.hypot(*np.meshgrid(np.fft.fftfreq(32), np.fft.fftfreq(32), indexing="ij"))
    ring = (q >= 0.5 * 3 / 8) & (q < 0.5 * 4 / 8)
    ref = (np.conj(fa) * fb).real[ring].sum() / np.sqrt((abs(fa[ring]) ** 2).sum() * (abs(fb[ring]) ** 2).sum())
    assert fsc.fsc.values[3] == pytest.approx(ref)
    assert int(fsc.n_pixels.values[3]) == int(ring.sum())
    assert np.all(np.abs(fsc.fsc.values[2:]) < 0.5)
    assert metrics.half_bit_threshold(1) == pytest.approx(1.0, abs=1e-4)
    assert metrics.half_bit_threshold(1e12) == pytest.approx(0.2071 / 1.2071, abs=1e-5)
    with pytest.raises(InvalidArgumentError, match="image2"):
        metrics.fourier_shell_correlation(image, image[:16])
