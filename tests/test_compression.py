"""Lossy compression by mask projection: bases, compress/decompress, against NumPy references."""

from __future__ import annotations

import math

import numpy as np
import pytest

import stemdask
from stemdask.compression import bases, compress, decompress, detector_regions
from stemdask.compression.counted import runs_vectorised
from stemdask.errors import InvalidArgumentError, InvalidTypeError, MissingCalibrationError
from stemdask.events import from_dense


def _patterns(rng, scan=(4, 5), det=32, radius_px=6.0, center=None):
    """Poisson patterns: a BF disc whose intensity and position vary per pattern, plus a DF halo."""
    c = (det / 2 - 0.5) if center is None else center
    ky, kx = np.mgrid[:det, :det] - c
    out = np.empty((*scan, det, det), np.uint16)
    for y in range(scan[0]):
        for x in range(scan[1]):
            sy, sx = rng.normal(0, 1.0, 2)
            r = np.hypot(ky - sy, kx - sx)
            lam = 20.0 * (1 + 0.3 * rng.random()) * (r <= radius_px) + 3.0 * np.exp(-r / (det / 4)) + 0.5
            out[y, x] = rng.poisson(lam)
    return out


def _dataset(rng, scan=(4, 5), det=32, chunks=None, pixel=1.0, semiangle=6.0):
    values = _patterns(rng, scan, det, radius_px=semiangle / pixel)
    return stemdask.from_array(
        values,
        chunks=chunks,
        detector_pixel_mrad=pixel,
        semiangle_mrad=semiangle,
        beam_center_px=(det / 2 - 0.5, det / 2 - 0.5),
        scan_step_A=0.5,
        energy_ev=80e3,
    )


def _orthonormal(basis, atol=1e-6):
    m = basis.values.reshape(basis.sizes["basis"], -1)
    assert np.abs(m @ m.T - np.eye(m.shape[0])).max() < atol
    for region in ("bf", "df"):
        mine = basis.coords["basis_region"].values == region
        outside = ~basis.coords[f"{region}_region"].values
        assert not np.any(basis.values[mine][:, outside])


# ----------------------------------------------------------------------------
# bases
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("det", [128, 256])
def test_every_basis_is_orthonormal(det):
    rng = np.random.default_rng(det)
    data = _dataset(rng, scan=(4, 5), det=det, semiangle=det / 8)
    regions = detector_regions(data)
    built = [
        bases.binning(data, 8, regions=regions),
        bases.binning(data, det // 8, region="df", regions=regions),
        bases.zernike(data, 21, regions=regions),
        bases.zernike(data, 12, region="df", regions=regions),
        bases.zernike(data, 6, region="df", m0_only=True, regions=regions),
        bases.data_basis(data, 15, seed=1, regions=regions),
        bases.pca(data, 8, n_samples=20, seed=2, regions=regions),
        bases.dark_field_mean(data, regions=regions),
    ]
    for basis in built:
        _orthonormal(basis)
        assert basis.attrs["basis_kind"]
    for kind in bases.BASIS_KINDS:
        _orthonormal(bases.make_basis(data, kind, n_bf=10, n_df=3, seed=0, n_samples=20))


def test_zernike_polynomials_match_closed_forms():
    rho = np.linspace(0, 1, 7)[:, None] * np.ones((1, 5))
    phi = np.linspace(-3, 3, 5)[None, :] * np.ones((7, 1))
    closed = {
        (0, 0): np.ones_like(rho),
        (1, -1): 2 * rho * np.sin(phi),
        (1, 1): 2 * rho * np.cos(phi),
        (2, -2): math.sqrt(6) * rho**2 * np.sin(2 * phi),
        (2, 0): math.sqrt(3) * (2 * rho**2 - 1),
        (2, 2): math.sqrt(6) * rho**2 * np.cos(2 * phi),
        (3, -1): math.sqrt(8) * (3 * rho**3 - 2 * rho) * np.sin(phi),
        (3, 3): math.sqrt(8) * rho**3 * np.cos(3 * phi),
        (4, 0): math.sqrt(5) * (6 * rho**4 - 6 * rho**2 + 1),
    }
    for (n, m), expected in closed.items():
        np.testing.assert_allclose(bases.zernike_polynomial(n, m, rho, phi), expected, atol=1e-12)
    assert [bases.osa_index(j) for j in (0, 1, 2, 4, 12)] == [(0, 0), (1, -1), (1, 1), (2, 0), (4, 0)]
    with pytest.raises(InvalidArgumentError, match="m="):
        bases.zernike_polynomial(2, 1, rho, phi)


def test_low_order_zernike_masks_are_piston_and_tilts():
    data = _dataset(np.random.default_rng(0), det=32)  # symmetric grid: k = (i - 15.5) mrad
    basis = bases.zernike(data, 3)
    bf = basis.coords["bf_region"].values
    ky, kx = np.meshgrid(data.k_y.values, data.k_x.values, indexing="ij")
    for mask, expected in zip(basis.values, (np.ones_like(ky), ky, kx)):  # OSA j = 0, 1 (sin: y), 2 (cos: x)
        ref = np.where(bf, expected, 0.0)
        np.testing.assert_allclose(mask, ref / np.linalg.norm(ref), atol=1e-12)


def test_pca_matches_numpy_svd():
    rng = np.random.default_rng(3)
    data = _dataset(rng, scan=(5, 6), det=32)
    basis = bases.pca(data, 5, n_samples=30, seed=4)
    regions = detector_regions(data)
    bf = regions.bf_region.values
    positions = bases.sample_positions(data, 30, seed=4)
    x = np.sqrt(np.stack([data.values[y, x_][bf] for y, x_ in positions]).astype(float))
    vt = np.linalg.svd(x, full_matrices=False)[2][:5]
    for mask, ref in zip(basis.values, vt):
        got = mask[bf]
        assert abs(abs(got @ ref) - 1) < 1e-9  # the same direction (sign free)
        assert got.sum() > 0
    # dask's randomised SVD on a low-rank sample gives the same directions as numpy's
    low = rng.normal(size=(200, 4)) @ rng.normal(size=(4, 300))
    fast = bases.principal_directions(low, 4, randomized=True, seed=1)
    exact = np.linalg.svd(low, full_matrices=False)[2][:4]
    np.testing.assert_allclose(np.abs(np.sum(fast * exact, axis=1)), 1, atol=1e-8)


def test_data_basis_spans_its_samples_and_theta_is_zero_there():
    rng = np.random.default_rng(5)
    data = _dataset(rng, scan=(4, 5), det=32)
    basis = bases.combine(bases.data_basis(data, 6, seed=7), bases.dark_field_mean(data))
    c = compress(data, basis).compute()
    theta = stemdask.metrics.theta(c)
    for y, x in basis.attrs["parts"][0]["positions"]:
        assert float(theta.theta_bright[y, x]) < 1e-6
        assert float(c.c_perp_bf[y, x]) < 1e-6 * float(np.sqrt(data.values[y, x].sum()))
    assert float(theta.theta_bright.max()) > 1e-3  # patterns not drawn are not in the span


def test_rank_deficient_samples_are_named():
    frame = _patterns(np.random.default_rng(0), (1, 1), 32)[0, 0]
    data = stemdask.from_array(np.broadcast_to(frame, (3, 3, 32, 32)).copy(), detector_pixel_mrad=1.0, semiangle_mrad=6)
    with pytest.raises(InvalidArgumentError, match=r"n_masks=.*rank 1"):
        bases.data_basis(data, 3)
    with pytest.raises(InvalidArgumentError, match=r"n_masks=.*rank 1"):
        bases.pca(data, 2, n_samples=9)


@pytest.mark.parametrize("mode", ["amplitude", "intensity"])
def test_data_basis_from_a_prior_scan(mode):
    # Diederichs et al.: masks from patterns recorded before the main acquisition, on the same detector
    rng = np.random.default_rng(11)
    data = _dataset(rng, scan=(4, 5), det=32)
    prior = _dataset(rng, scan=(3, 3), det=32)  # another scan: other patterns, other scan shape
    basis = bases.make_basis(data, "data", n_bf=6, n_df=1, mode=mode, seed=4, samples=prior)
    bf = basis.attrs["parts"][0]
    assert bf["samples_from"] == "samples" and bf["sample_mode"] == mode
    # NumPy reference: the drawn prior patterns on the BF, Gram-Schmidt by QR, in the order drawn
    regions = detector_regions(data)
    inside = regions["bf_region"].values
    positions = bases.sample_positions(prior, 6, seed=4)
    np.testing.assert_array_equal(np.array(bf["positions"]), positions)
    frames = prior.values[positions[:, 0], positions[:, 1]].astype(float)
    d = (np.sqrt(frames) if mode == "amplitude" else frames)[:, inside]
    q, r = np.linalg.qr(d.T)
    want = (q * np.sign(np.diag(r))).T
    np.testing.assert_allclose(basis.values[:6][:, inside], want, atol=1e-12)
    assert not np.any(basis.values[:6][:, ~inside])
    _orthonormal(basis)
    np.testing.assert_array_equal(basis.coords["bf_region"].values, inside)  # the regions are data's
    # compressing the prior itself on it: its drawn patterns lie in the span (c_perp_bf = 0 there) ...
    on_prior = compress(prior, basis, mode=mode).compute()
    for y, x in positions:
        assert float(on_prior.c_perp_bf[y, x]) < 1e-6 * float(np.abs(d).sum())
    # ... and data's patterns are compressed on it like on any basis of their detector
    c = compress(data, basis, mode=mode, precision="float64").compute()
    dd = np.sqrt(data.values.astype(float)) if mode == "amplitude" else data.values.astype(float)
    np.testing.assert_allclose(c.coefficients.values, np.einsum("yxij,nij->yxn", dd, basis.values), rtol=1e-9)
    same = bases.make_basis(data, "data", n_bf=6, n_df=1, mode=mode, seed=4)
    assert same.attrs["parts"][0]["samples_from"] == "data"
    assert not np.allclose(same.values, basis.values)


def test_prior_scan_must_share_the_detector():
    rng = np.random.default_rng(12)
    data = _dataset(rng, scan=(3, 3), det=32)
    with pytest.raises(InvalidArgumentError, match="samples=.*detector shape"):
        bases.make_basis(data, "data", n_bf=4, samples=_dataset(rng, scan=(3, 3), det=16, semiangle=3.0))
    with pytest.raises(InvalidArgumentError, match=r"samples\.coords\['k_y'\]"):
        bases.make_basis(data, "pca", n_bf=4, samples=stemdask.calibrate(data, detector_pixel_mrad=0.5))
    with pytest.raises(InvalidArgumentError, match="samples=.*'data', 'pca'"):
        bases.make_basis(data, "zernike", n_bf=4, samples=data)
    with pytest.raises(InvalidTypeError, match="samples"):
        bases.make_basis(data, "data", n_bf=4, samples=data.values)
    # PCA draws at most the prior's positions (9 here), not data's
    prior = _dataset(rng, scan=(3, 3), det=32)
    pca = bases.make_basis(data, "pca", n_bf=4, n_samples=320, samples=prior)
    assert pca.attrs["parts"][0]["n_samples"] == 9


# ----------------------------------------------------------------------------
# compress / decompress
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["float64", "mixed"])
@pytest.mark.parametrize("mode", ["amplitude", "intensity"])
@pytest.mark.parametrize("kind, n_df", [("zernike", 4), ("data", 1)])  # n_df=1: the mean-DF mask from region sums
def test_coefficients_and_c_perp_against_numpy(mode, kind, n_df, precision):
    rng = np.random.default_rng(6)
    data = _dataset(rng, scan=(3, 4), det=32, chunks=(2, 3))
    basis = bases.make_basis(data, kind, n_bf=10, n_df=n_df)
    c = compress(data, basis, mode=mode, precision=precision).compute()
    d = data.values.astype(float)
    d = np.sqrt(d) if mode == "amplitude" else d
    m = basis.values
    ref = np.einsum("yxij,nij->yxn", d, m)
    # mixed: the mean-DF mask (constant on its region) comes from float32 d summed in float64; the rest is float64
    const = (basis.coords["basis_region"].values == "df") & (n_df == 1)
    rtol = np.where(const, 1e-7 if precision == "mixed" else 1e-12, 1e-12)
    assert np.all(np.abs(c.coefficients.values - ref) <= rtol * np.abs(ref) + 1e-12)
    for region in ("bf", "df"):
        inside = basis.coords[f"{region}_region"].values
        mine = basis.coords["basis_region"].values == region
        approx = np.einsum("yxn,nij->yxij", ref[..., mine], m[mine])
        residual = np.where(inside, d - approx, 0.0)
        # Pythagoras (Eq. 11) has an absolute error ~sqrt(eps) |d|: ~1e-6 where the span holds d (data basis)
        np.testing.assert_allclose(
            c[f"c_perp_{region}"].values, np.sqrt((residual**2).sum(axis=(2, 3))), rtol=1e-6, atol=1e-5
        )
    assert c.attrs["compression_mode"] == mode and c.attrs["energy_ev"] == 80e3
    assert c.attrs["compression_precision"] == precision
    assert c.coords["k_y"].attrs["units"] == "mrad" and c.coords["scan_y"].attrs["units"] == "Å"


def _near_span_patterns(rng, scan, det, dtype):
    """Patterns close to a 12-dimensional span (c_perp a few % of |d|): where Eq. 11 cancels most."""
    ky, kx = np.mgrid[:det, :det] - (det / 2 - 0.5)
    r = np.hypot(ky, kx)
    disc = r <= det / 8
    templates = [disc * (1 + 0.3 * np.cos(kx * f / 5 + f) * np.sin(ky * f / 7)) for f in range(12)]
    weights = rng.random((*scan, len(templates))) ** 2
    lam = 200.0 * np.einsum("yxt,tij->yxij", weights, np.array(templates)) + 2.0 * np.exp(-r / (det / 4))
    values = rng.poisson(lam) if dtype == np.uint16 else lam * (1 + 0.03 * rng.standard_normal(lam.shape))
    return values.astype(dtype)


@pytest.mark.parametrize("source", [np.uint16, np.float32])  # the fused integer pass, the float path
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mixed_precision_c_perp_against_float64_numpy(source, dtype):
    """15 data masks + 1 DF on a 256^2 detector: c_perp (Eq. 11) against the residual norm in float64 NumPy."""
    rng = np.random.default_rng(21)
    det = 256
    values = _near_span_patterns(rng, (6, 8), det, source)
    data = stemdask.from_array(values, chunks=(2, 3), detector_pixel_mrad=1.0, semiangle_mrad=det / 8)
    basis = bases.make_basis(data, "data", n_bf=15, n_df=1, seed=2)
    c = compress(data, basis, dtype=dtype).compute()  # precision="mixed", the default
    d = np.sqrt(values.astype(np.float64)).reshape(*values.shape[:2], -1)
    m = basis.values.reshape(basis.sizes["basis"], -1)
    coef = d @ m.T
    bf = basis.coords["bf_region"].values.ravel()
    mine = basis.coords["basis_region"].values == "bf"
    perp = np.linalg.norm((d - coef[..., mine] @ m[mine]) * bf, axis=-1)
    norm = np.linalg.norm(d * bf, axis=-1)
    drawn = drawn_positions(basis, values.shape[:2])
    assert np.median(perp[~drawn] / norm[~drawn]) < 0.05  # the basis holds most of each pattern: Eq. 11 cancels
    got = c.c_perp_bf.values.astype(np.float64)
    rel = np.abs(got - perp)[~drawn] / perp[~drawn]
    assert rel.max() < (2e-7 if dtype == "float32" else 1e-9)  # float32: the stored value's rounding only
    assert np.all(np.abs(got - perp)[drawn] < 1e-6 * norm[drawn])  # in the span: c_perp ~ 0
    np.testing.assert_allclose(c.coefficients.values, coef, rtol=2e-7 if dtype == "float32" else 1e-7, atol=1e-9)
    assert c.coefficients.dtype == np.dtype(dtype) and c.c_perp_bf.dtype == np.dtype(dtype)


def drawn_positions(basis, shape):
    """Boolean scan image of the patterns a data basis was drawn from."""
    out = np.zeros(shape, bool)
    for part in basis.attrs.get("parts", [basis.attrs]):
        for y, x in part.get("positions", []):
            out[y, x] = True
    return out


@pytest.mark.parametrize("mode", ["amplitude", "intensity"])
def test_complete_basis_reconstructs_exactly(mode):
    data = _dataset(np.random.default_rng(8), scan=(2, 3), det=16, semiangle=4.0)
    basis = bases.combine(bases.binning(data, 1), bases.binning(data, 1, region="df"))  # every pixel
    c = compress(data, basis, mode=mode)
    np.testing.assert_allclose(decompress(c).values, data.values, rtol=1e-12, atol=1e-10)
    assert float(c.c_perp_bf.max()) < 1e-6 and float(c.c_perp_df.max()) < 1e-6
    assert stemdask.validate(decompress(c)) is not None


@pytest.mark.parametrize("mode", ["amplitude", "intensity"])
def test_events_give_the_dense_coefficients(mode):
    data = _dataset(np.random.default_rng(9), scan=(3, 4), det=32, chunks=(2, 2))
    counted = from_dense(data)
    basis = bases.make_basis(data, "data", n_bf=8, n_df=3, seed=3)
    dense = compress(data, basis, mode=mode).compute()
    events = compress(counted, basis, mode=mode).compute()
    np.testing.assert_allclose(events.coefficients.values, dense.coefficients.values, rtol=1e-12, atol=1e-10)
    for name in ("c_perp_bf", "c_perp_df"):  # sqrt of a difference of squares: ~1e-6 where the span holds d
        np.testing.assert_allclose(events[name].values, dense[name].values, rtol=1e-9, atol=1e-5)
    # the array-operation path (CuPy's) gives the same sums on numpy blocks
    block = counted.data.blocks[0, 0].compute()
    regions = np.stack([basis.coords["bf_region"].values, basis.coords["df_region"].values]).reshape(2, -1).T
    vec = runs_vectorised(block, basis.values.reshape(basis.sizes["basis"], -1).T, regions, mode == "amplitude", float)
    np.testing.assert_allclose(
        vec[:, : basis.sizes["basis"]].reshape(2, 2, -1), dense.coefficients.values[:2, :2], rtol=1e-12, atol=1e-10
    )


def test_results_do_not_depend_on_chunking():
    values = _patterns(np.random.default_rng(10), (5, 6), 32)
    cal = dict(detector_pixel_mrad=1.0, semiangle_mrad=6.0)
    a = stemdask.from_array(values, chunks=(1, 6), **cal)
    b = stemdask.from_array(values, chunks=(3, 4), **cal)
    basis = bases.make_basis(a, "binning", n_bf=12, n_df=1)
    ca, cb = compress(a, basis).compute(), compress(b, basis, batch_bytes=4096).compute()
    for name in ("coefficients", "c_perp_bf", "c_perp_df"):
        np.testing.assert_allclose(ca[name].values, cb[name].values, rtol=1e-12, atol=1e-9)


def test_bad_inputs_name_the_argument():
    rng = np.random.default_rng(11)
    data = _dataset(rng, det=32)
    with pytest.raises(InvalidArgumentError, match="bf_radius_mrad"):
        detector_regions(data, bf_radius_mrad=0.1)  # no pixel centre within 0.1 mrad: outside the grid
    with pytest.raises(InvalidArgumentError, match="df_outer_mrad"):
        detector_regions(data, bf_radius_mrad=40.0)  # BF covers the whole detector: no DF left
    with pytest.raises(InvalidArgumentError, match="n_masks"):
        bases.zernike(data, 500)  # more masks than BF pixels
    with pytest.raises(InvalidArgumentError, match="mode"):
        compress(data, bases.make_basis(data, "zernike", n_bf=3), mode="phase")
    for precision in ("float32", ["mixed"], None):
        with pytest.raises(InvalidArgumentError, match=r"precision=.*'mixed', 'float64'"):
            compress(data, bases.make_basis(data, "zernike", n_bf=3), precision=precision)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        compress(data, bases.make_basis(data, "zernike", n_bf=3), dtype="float16")
    other = _dataset(rng, det=16, semiangle=3.0)
    with pytest.raises(InvalidArgumentError, match="basis=.*detector shape"):
        compress(other, bases.make_basis(data, "zernike", n_bf=3))
    recal = stemdask.calibrate(data, detector_pixel_mrad=0.5)
    with pytest.raises(InvalidArgumentError, match=r"basis\.coords\['k_y'\]"):
        compress(recal, bases.make_basis(data, "zernike", n_bf=3))
    skewed = bases.make_basis(data, "zernike", n_bf=3) * 2.0
    with pytest.raises(InvalidArgumentError, match="orthonormal"):
        compress(data, skewed)
    with pytest.raises(InvalidTypeError, match="basis"):
        compress(data, np.zeros((3, 32, 32)))
    raw = stemdask.from_array(data.values, semiangle_mrad=6.0)  # detector in pixels
    with pytest.raises(MissingCalibrationError, match="detector_pixel_mrad"):
        bases.make_basis(raw, "zernike", n_bf=3)
    with pytest.raises(MissingCalibrationError, match="semiangle_mrad"):
        detector_regions(stemdask.from_array(data.values, detector_pixel_mrad=1.0))


def test_precision_only_touches_region_constant_masks():
    """Without a region-constant mask (here: Zernike on the DF) mixed and float64 are the same arithmetic."""
    data = _dataset(np.random.default_rng(12), scan=(3, 4), det=32, chunks=(2, 2))
    basis = bases.make_basis(data, "zernike", n_bf=8, n_df=4)
    mixed, full = compress(data, basis).compute(), compress(data, basis, precision="float64").compute()
    for name in ("coefficients", "c_perp_bf", "c_perp_df"):
        np.testing.assert_array_equal(mixed[name].values, full[name].values)
    with_mean_df = bases.make_basis(data, "zernike", n_bf=8, n_df=1)  # the mean-DF mask: float32 d in mixed
    a = compress(data, with_mean_df).compute().coefficients.values[..., -1]
    b = compress(data, with_mean_df, precision="float64").compute().coefficients.values[..., -1]
    assert 0 < np.abs(a / b - 1).max() < 1e-7


def test_bright_field_disc_of_the_benchmark_finds_a_disc():
    """The benchmark's BF finder (mean-pattern threshold) on Poisson patterns of a known disc."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_compression.py"
    spec = importlib.util.spec_from_file_location("bench_compression", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(13)
    ky, kx = np.mgrid[:128, :128]
    lam = 40.0 * (np.hypot(ky - 70.3, kx - 50.8) <= 21.0) + 1.0
    disc = bench.bright_field_disc(rng.poisson(lam, size=(6, 128, 128)).mean(axis=0))
    assert abs(disc["center_px"][0] - 70.3) < 0.3 and abs(disc["center_px"][1] - 50.8) < 0.3
    assert abs(disc["radius_px"] - 21.0) < 0.5 and disc["overlap_iou"] > 0.95


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["mixed", "float64"])
def test_cupy_blocks_give_the_numpy_coefficients(precision):
    import cupy

    values = _patterns(np.random.default_rng(14), (3, 4), 32)
    cal = dict(detector_pixel_mrad=1.0, semiangle_mrad=6.0)
    data = stemdask.from_array(values, chunks=(2, 2), **cal)
    gpu = stemdask.from_array(cupy.asarray(values), chunks=(2, 2), **cal)
    basis = bases.make_basis(data, "data", n_bf=8, n_df=1, seed=3)  # the mean-DF mask: the region-sum path too
    ref = compress(data, basis, precision="float64").compute()
    got = compress(gpu, basis, precision=precision).compute()
    rtol = 1e-7 if precision == "mixed" else 1e-10
    for name in ("coefficients", "c_perp_bf", "c_perp_df"):
        np.testing.assert_allclose(cupy.asnumpy(got[name].data), ref[name].values, rtol=rtol, atol=1e-6)
