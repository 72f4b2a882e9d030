"""Montages of tiles as a DataTree with the ``.stem`` accessor."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import stemdask
from stemdask import imaging
from stemdask.errors import DatasetContractError


def _tile(rng, origin, shape=(3, 4, 8, 8), step=0.5, pixel=1.0):
    counts = rng.poisson(2.0, shape).astype(np.uint16)
    return counts, stemdask.from_array(
        counts, scan_step_A=step, scan_origin_A=origin, detector_pixel_mrad=pixel, energy_ev=200e3, chunks=(2, 2)
    )


def test_montage_of_tiles_validates_describes_and_maps(rng):
    (_, a), (b_np, b) = _tile(rng, (0.0, 0.0)), _tile(rng, (0.0, 1.75))
    tree = stemdask.montage.from_tiles({"left": a, "right": b})
    assert set(tree.stem.tiles) == {"/left", "/right"}
    np.testing.assert_array_equal(tree.stem.scan_origins_A.sel(tile="/right").values, [0.0, 1.75])
    assert tree.stem.extent_A == ((0.0, 1.0), (0.0, 1.75 + 1.5))
    disk = imaging.detectors.disk(a, 2.5)
    images = tree.stem.map(imaging.virtual_image, disk)
    mask = disk.values.reshape(8, 8).astype(np.int64)
    np.testing.assert_array_equal(
        images["right"].dataset[disk.name or "virtual_image"].values,
        np.einsum("abij,ij->ab", b_np.astype(np.int64), mask),
    )
    left = images["left"].dataset
    assert left[next(iter(left.data_vars))].attrs["scan_origin_A"] == [0.0, 0.0]


def test_montage_refuses_tiles_that_do_not_fit(rng):
    _, a = _tile(rng, (0.0, 0.0))
    _, other_detector = _tile(rng, (5.0, 0.0), pixel=2.0)
    with pytest.raises(DatasetContractError, match="another detector"):
        stemdask.montage.from_tiles({"a": a, "b": other_detector})
    no_origin = stemdask.from_array(
        np.zeros((3, 4, 8, 8), np.uint16), scan_step_A=0.5, detector_pixel_mrad=1.0, energy_ev=200e3
    )
    with pytest.raises(DatasetContractError, match="stage position"):
        stemdask.montage.from_tiles({"a": a, "b": no_origin})
    other_energy = stemdask.calibrate(a, energy_ev=300e3, scan_origin_A=(9.0, 9.0))
    with pytest.raises(DatasetContractError, match="energy_ev"):
        stemdask.montage.from_tiles({"a": a, "b": other_energy})
    with pytest.raises(DatasetContractError, match="no tile"):
        xr.DataTree().stem.validate()
