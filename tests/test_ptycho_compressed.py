"""Reconstruction from compressed patterns (Diederichs et al. Eq. 13) on a NumPy-built compressed Dataset."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

torch = pytest.importorskip("torch")

from ptycho_data import tiny_mos2  # noqa: E402

from stemdask.errors import DatasetContractError  # noqa: E402
from stemdask.ptycho import reconstruct  # noqa: E402
from stemdask.ptycho.compressed import CompressedLoss, compressed_basis, regularization  # noqa: E402


def _compress(data: xr.DataArray, n_bf: int = 15) -> xr.Dataset:
    """The compressed-dataset schema by hand: orthonormal BF masks (QR of blocks), one DF mask, amplitude mode."""
    ky, kx = data.k_y.values, data.k_x.values
    radius = np.hypot(ky[:, None], kx[None, :])
    bf = radius <= data.attrs["semiangle_mrad"]
    df = ~bf
    rng = np.random.default_rng(0)
    idx = np.nonzero(bf.ravel())[0]
    q, _ = np.linalg.qr(rng.standard_normal((idx.size, n_bf)))
    masks = np.zeros((n_bf + 1, bf.size))
    masks[:n_bf, idx] = q.T
    masks[n_bf, df.ravel()] = 1 / np.sqrt(df.sum())
    d = np.sqrt(data.values.reshape(*data.shape[:2], -1).astype(np.float64))
    c = d @ masks.T
    perp = {}
    for name, region, sel in (("bf", bf, slice(0, n_bf)), ("df", df, slice(n_bf, None))):
        perp[name] = np.sqrt(np.maximum((d[..., region.ravel()] ** 2).sum(-1) - (c[..., sel] ** 2).sum(-1), 0))
    dims = ("scan_y", "scan_x")
    return xr.Dataset(
        {
            "coefficients": (dims + ("basis",), c),
            "c_perp_bf": (dims, perp["bf"]),
            "c_perp_df": (dims, perp["df"]),
            "masks": (("basis", "k_y", "k_x"), masks.reshape(-1, *bf.shape)),
            "bf_region": (("k_y", "k_x"), bf),
            "df_region": (("k_y", "k_x"), df),
            "basis_region": (("basis",), np.array(["bf"] * n_bf + ["df"])),
        },
        coords={
            "scan_y": data.scan_y,
            "scan_x": data.scan_x,
            "k_y": data.k_y,
            "k_x": data.k_x,
            "basis": np.arange(n_bf + 1),
        },
        attrs={**data.attrs, "compression_mode": "amplitude", "basis_kind": "random"},
    ).chunk({"scan_y": 4})


@pytest.fixture(scope="module")
def compressed():
    data, truth = tiny_mos2(dose_e_per_pattern=1e5)
    data = data.compute()
    return data, _compress(data)


def test_compressed_loss_terms_against_numpy(compressed):
    data, ds = compressed
    basis = compressed_basis(ds, {"perp_bf": 1.0, "perp_df": 1.0})
    rng = np.random.default_rng(1)
    model = rng.uniform(0, 50, (3, 24, 24))
    measured = np.concatenate(
        [ds.coefficients.values[0, :3], ds.c_perp_bf.values[0, :3, None], ds.c_perp_df.values[0, :3, None]], -1
    )
    got = float(CompressedLoss(basis)(torch.as_tensor(model), torch.as_tensor(measured)))
    d = np.sqrt(model.reshape(3, -1) + 1e-12)
    m = ds.masks.values.reshape(16, -1)
    c = d @ m.T
    bf, df = ds.bf_region.values.ravel(), ds.df_region.values.ravel()
    want = ((c - measured[:, :16]) ** 2).sum()
    want += np.abs((d[:, bf] ** 2).sum(1) - (c[:, :15] ** 2).sum(1) - measured[:, 16] ** 2).sum()
    want += np.abs((d[:, df] ** 2).sum(1) - (c[:, 15:] ** 2).sum(1) - measured[:, 17] ** 2).sum()
    assert got == pytest.approx(want, rel=1e-10)


def test_reconstruction_from_compressed_data_decreases_the_loss(compressed):
    data, ds = compressed
    res = reconstruct(ds, iterations=6, step=0.05, regularization={"tv": 1e-3, "phase_l1": 1e-4})
    assert res.loss.values[-1] < 0.5 * res.loss.values[0]
    # the full-data reconstruction of the same positions: the phases agree in pattern
    full = reconstruct(data, iterations=6, step=0.05, loss="amplitude")
    a, b = res.phase_total.values[20:-20, 20:-20], full.phase_total.values[20:-20, 20:-20]
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.7


def test_regularization_gradients_against_autograd():
    rng = np.random.default_rng(2)
    obj = np.exp(1j * rng.uniform(-0.5, 0.5, (1, 6, 7)))
    value, grad, _ = regularization(obj, None, {"tv": 1.0, "phase_l1": 0.5}, object_kind="complex", aperture=None)
    h = 1e-6
    # finite differences of the value: ∂L/∂O* = (∂L/∂Re + i ∂L/∂Im) / 2
    for idx in [(0, 2, 3), (0, 0, 0)]:
        e = np.zeros_like(obj)
        e[idx] = h
        dre = (
            regularization(obj + e, None, {"tv": 1.0, "phase_l1": 0.5}, object_kind="complex", aperture=None)[0] - value
        ) / h
        dim = (
            regularization(obj + 1j * e, None, {"tv": 1.0, "phase_l1": 0.5}, object_kind="complex", aperture=None)[0]
            - value
        ) / h
        assert grad[idx] == pytest.approx((dre + 1j * dim) / 2, rel=1e-3, abs=1e-5)


def test_compressed_dataset_without_basis_is_refused(compressed):
    _, ds = compressed
    with pytest.raises(DatasetContractError, match="masks"):
        reconstruct(ds.drop_vars("masks"), iterations=1)
