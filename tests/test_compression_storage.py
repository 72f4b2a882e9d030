"""Compressed stores: save/open round trip, the streaming writer, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

import stemdask
from stemdask import cli
from stemdask.compression import CompressedWriter, bases, basis_of, compress, decompress
from stemdask.errors import IncompleteStoreError, InvalidArgumentError
from stemdask.events import from_dense

CAL = dict(detector_pixel_mrad=1.0, semiangle_mrad=5.0, scan_step_A=0.5, energy_ev=80e3, beam_center_px=(11.5, 11.5))


def _values(seed=0, scan=(6, 8), det=24):
    rng = np.random.default_rng(seed)
    ky, kx = np.mgrid[:det, :det] - (det / 2 - 0.5)
    r = np.hypot(ky, kx)
    out = np.empty((*scan, det, det), np.uint16)
    for i in np.ndindex(*scan):
        shift = rng.normal(0, 0.7, 2)
        rr = np.hypot(ky - shift[0], kx - shift[1])
        out[i] = rng.poisson(15.0 * (rr <= 5) + 2.0 * np.exp(-r / 6) + 0.3)
    return out


def _reference(values, masks, mode="amplitude"):
    d = np.sqrt(values.astype(float)) if mode == "amplitude" else values.astype(float)
    return np.einsum("yxij,nij->yxn", d, masks)


def test_save_and_open_round_trip(tmp_path):
    data = stemdask.from_array(_values(), chunks=(2, 8), **CAL)
    basis = bases.make_basis(data, "data", n_bf=6, n_df=1, seed=2)
    c = compress(data, basis, dtype="float32")
    path = stemdask.save(c, tmp_path / "c.zarr")
    assert zarr.open_group(path, mode="r").attrs["stemdask_layout"] == "compressed"
    back = stemdask.open_dataset(path)
    assert set(["coefficients", "c_perp_bf", "c_perp_df", "masks", "bf_region", "df_region"]) <= set(back.variables)
    # float32: errors of order 1e-7 of the pattern norm (~40 here)
    np.testing.assert_allclose(back.coefficients.values, _reference(data.values, basis.values), rtol=1e-6, atol=2e-5)
    computed = c.compute()
    for name in ("coefficients", "c_perp_bf", "c_perp_df", "masks", "bf_region", "df_region"):
        np.testing.assert_array_equal(back[name].values, computed[name].values)
    assert list(back.basis_region.values) == ["bf"] * 6 + ["df"]
    assert back.attrs["compression_mode"] == "amplitude" and back.attrs["scan_step_A"] == [0.5, 0.5]
    assert back.coords["k_x"].attrs["units"] == "mrad" and back.coords["scan_y"].attrs["units"] == "Å"
    assert basis_of(back).attrs["basis_kind"] == "data+df_mean"
    np.testing.assert_allclose(decompress(back).values, decompress(computed).values, rtol=1e-6, atol=1e-6)
    # the per-pattern arrays hold 9 float32 values a pattern, never a frame (576 uint16 pixels)
    per_pattern = sum(stemdask.io.store_nbytes(f"{path}/{name}") for name in ("coefficients", "c_perp_bf", "c_perp_df"))
    assert per_pattern < data.nbytes / 8
    with pytest.raises(InvalidArgumentError, match="shards"):
        stemdask.save(c, tmp_path / "d.zarr", shards=(2, 2))


def test_counted_data_compress_into_a_store(tmp_path):
    data = stemdask.from_array(_values(1), chunks=(3, 4), **CAL)
    basis = bases.make_basis(data, "zernike", n_bf=10, n_df=3)
    path = stemdask.save(compress(from_dense(data), basis), tmp_path / "e.zarr")
    back = stemdask.open_dataset(path)
    np.testing.assert_allclose(back.coefficients.values, _reference(data.values, basis.values), rtol=1e-12)


def test_writer_compresses_rows_as_they_arrive(tmp_path):
    values = _values(2, scan=(10, 8))
    store = tmp_path / "live.zarr"
    with CompressedWriter(
        store, scan_x=8, detector_shape=(24, 24), basis="data", n_bf=6, n_first=24, seed=1, precision="float64", **CAL
    ) as w:
        for row in values:
            w.append(row[None])
            if w.rows == 0:  # still buffering the first patterns for the basis
                assert not store.exists() or not zarr.open_group(store, mode="r").attrs.get("stemdask_complete")
        with pytest.raises(InvalidArgumentError, match="rows"):
            w.append(values[0])
    back = stemdask.open_dataset(store)
    assert back.sizes["scan_y"] == 10
    masks = back.masks.values
    np.testing.assert_allclose(back.coefficients.values, _reference(values, masks), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(back.scan_y.values, np.arange(10) * 0.5)
    positions = np.array(back.attrs["basis_attrs"]["parts"][0]["positions"])
    assert positions[:, 0].max() < 3  # drawn among the first 24 patterns (3 rows of 8)
    # a prior basis: nothing buffered; an unfinished writer leaves an incomplete store
    prior = basis_of(back)
    w = CompressedWriter(tmp_path / "cut.zarr", scan_x=8, detector_shape=(24, 24), basis=prior, **CAL)
    w.append(values[:2])
    with pytest.raises(IncompleteStoreError):
        stemdask.open_dataset(tmp_path / "cut.zarr")


def test_cli_compress_and_info(tmp_path, capsys):
    data = stemdask.from_array(_values(3), **CAL)
    src = stemdask.save(data, tmp_path / "in.zarr")
    out = tmp_path / "out.zarr"
    assert cli.main(["compress", src, str(out), "--basis", "pca", "--bf", "5", "--df", "1", "--samples", "20"]) == 0
    assert "ratio C" in capsys.readouterr().out
    assert cli.main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_bright"] == 5 and info["n_dark"] == 1 and info["basis_kind"] == "pca+df_mean"
    assert info["ratio_C"] == pytest.approx(24 * 24 / 8)
    assert info["bytes_on_disk"] == stemdask.io.store_nbytes(out)
    assert cli.main(["info", str(out)]) == 0
    assert "ratio C (Eq. 17): 72.0" in capsys.readouterr().out
    assert cli.main(["compress", src, str(out), "--basis", "zernike", "--bf", "500", "--quiet"]) == 2
    assert "n_masks" in capsys.readouterr().err
    # --basis-from: the data masks drawn from a prior scan's patterns (make_basis(samples=))
    prior = stemdask.from_array(_values(9, scan=(3, 4)), **CAL)
    prior_src = stemdask.save(prior, tmp_path / "prior.zarr")
    from_prior = tmp_path / "from_prior.zarr"
    assert cli.main(["compress", src, str(from_prior), "--bf", "5", "--basis-from", prior_src, "--quiet"]) == 0
    back = stemdask.open_dataset(from_prior)
    want = bases.make_basis(data, "data", n_bf=5, n_df=1, samples=prior)
    np.testing.assert_allclose(back.masks.values, want.values, atol=1e-12)
    assert back.attrs["basis_attrs"]["parts"][0]["samples_from"] == "samples"
    # (rtol: the mean-DF coefficient sums a float32 d in the default mixed precision)
    np.testing.assert_allclose(back.coefficients.values, _reference(_values(3), want.values), rtol=1e-7)
    # stored dtype and arithmetic are separate flags, as in compress(dtype=, precision=)
    out32 = tmp_path / "out32.zarr"
    args = ["compress", src, str(out32), "--basis", "pca", "--bf", "5", "--samples", "20", "--quiet"]
    assert cli.main([*args, "--coefficient-dtype", "float32", "--precision", "float64"]) == 0
    back = stemdask.open_dataset(out32)
    assert back["coefficients"].dtype == np.float32
    ref = stemdask.open_dataset(out)
    np.testing.assert_allclose(back["coefficients"].values, ref["coefficients"].values, rtol=1e-6, atol=1e-6)
