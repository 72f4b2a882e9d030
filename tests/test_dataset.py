"""The data-model contract: from_array, validate, calibrate, the accessor."""

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import stemdask
from stemdask.errors import DatasetContractError, InvalidArgumentError, InvalidTypeError, MissingCalibrationError

CAL = dict(energy_ev=300e3, semiangle_mrad=20.0, scan_step_A=(0.4, 0.5), detector_pixel_mrad=1.25)


def make(shape=(3, 4, 8, 10), dtype="uint16", **kw):
    arr = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    return arr, stemdask.from_array(arr, **{**CAL, **kw})


def test_dims_coords_attrs_follow_the_contract():
    arr, data = make()
    assert data.dims == ("scan_y", "scan_x", "k_y", "k_x")
    assert isinstance(data.data, da.Array)
    np.testing.assert_allclose(data.scan_y, [0.0, 0.4, 0.8])
    np.testing.assert_allclose(data.scan_x, [0.0, 0.5, 1.0, 1.5])
    # detector coords in mrad, zero at the beam centre (FFT centre by default)
    np.testing.assert_allclose(data.k_y, (np.arange(8) - 4) * 1.25)
    np.testing.assert_allclose(data.k_x, (np.arange(10) - 5) * 1.25)
    assert data.scan_y.attrs["units"] == "Å" and data.k_x.attrs["units"] == "mrad"
    assert data.attrs["scan_step_A"] == [0.4, 0.5]
    assert data.attrs["detector_pixel_mrad"] == [1.25, 1.25]
    assert data.attrs["energy_ev"] == 300e3 and data.attrs["units"] == "counts"
    np.testing.assert_array_equal(data.values, arr)
    assert stemdask.validate(data) is data


def test_beam_center_moves_the_zero_of_k():
    _, data = make(beam_center_px=(2.5, 7.0))
    assert data.k_y.values[0] == pytest.approx(-2.5 * 1.25)
    assert data.k_x.sel(k_x=0.0).item() == 0.0


def test_big_endian_becomes_native_with_same_values():
    arr = np.arange(2 * 2 * 4 * 4, dtype=">u2").reshape(2, 2, 4, 4)
    data = stemdask.from_array(arr)
    assert data.dtype.isnative and data.dtype == np.uint16
    np.testing.assert_array_equal(data.values, arr.astype("<u2"))


def test_uncalibrated_axes_are_pixels():
    data = stemdask.from_array(np.zeros((2, 3, 4, 4), "uint8"))
    assert data.scan_x.attrs["units"] == "px" and data.k_y.attrs["units"] == "px"
    assert "detector_pixel_mrad" not in data.attrs
    stemdask.validate(data)
    with pytest.raises(MissingCalibrationError, match="energy_ev"):
        data.stem.wavelength_A


def test_chunks_keep_whole_frames():
    _, data = make(shape=(7, 9, 6, 6), chunks=(2, 4))
    assert data.chunks[0] == (2, 2, 2, 1) and data.chunks[1] == (4, 4, 1)
    assert data.chunks[2] == (6,) and data.chunks[3] == (6,)
    split = xr.DataArray(data.data.rechunk((2, 4, 3, 6)), dims=data.dims, coords=data.coords, attrs=data.attrs)
    with pytest.raises(DatasetContractError, match="whole"):
        stemdask.dataset.require_whole_frames(split)


def test_detector_split_layout_is_a_valid_dataset_and_frame_kernels_refuse_it():
    """All probe positions x a subset of detector pixels (the SSB layout) passes validate."""
    dense, data = make(shape=(4, 6, 8, 10), chunks=(2, 3))
    transposed = data.chunk({"scan_y": -1, "scan_x": -1, "k_y": 4, "k_x": 5})
    assert stemdask.validate(transposed) is transposed
    recal = stemdask.calibrate(transposed, energy_ev=200e3)
    assert recal.chunks == transposed.chunks and recal.attrs["energy_ev"] == 200e3
    # reductions over scan positions accept it; frame-wise kernels say what they need
    np.testing.assert_allclose(stemdask.imaging.pacbed(transposed, "sum").values, dense.sum((0, 1)))
    with pytest.raises(DatasetContractError, match="whole detector frames"):
        stemdask.imaging.virtual_image(transposed, stemdask.imaging.detectors.disk(transposed, 3.0))
    with pytest.raises(DatasetContractError, match="whole detector frames"):
        stemdask.events.from_dense(transposed)


def test_scan_origin_sets_the_coordinates_and_survives_calibrate_and_save(tmp_path):
    dense = np.arange(3 * 4 * 5 * 6, dtype=np.uint16).reshape(3, 4, 5, 6)
    data = stemdask.from_array(dense, scan_step_A=(0.5, 0.25), scan_origin_A=(-10.0, 2.5), detector_pixel_mrad=1.0)
    assert data.attrs["scan_origin_A"] == [-10.0, 2.5]
    np.testing.assert_allclose(data.scan_y.values, -10.0 + 0.5 * np.arange(3))
    np.testing.assert_allclose(data.scan_x.values, 2.5 + 0.25 * np.arange(4))
    recal = stemdask.calibrate(data, scan_step_A=1.0)
    np.testing.assert_allclose(recal.scan_x.values, 2.5 + np.arange(4))
    assert stemdask.describe(recal)["scan_origin_A"] == [-10.0, 2.5]
    stemdask.save(data, tmp_path / "s.zarr")
    back = stemdask.open_dataset(tmp_path / "s.zarr")
    assert back.attrs["scan_origin_A"] == [-10.0, 2.5]
    np.testing.assert_allclose(back.scan_y.values, data.scan_y.values)
    # results carry it
    img = stemdask.imaging.virtual_image(data, stemdask.imaging.detectors.disk(data, 2.0))
    assert img.attrs["scan_origin_A"] == [-10.0, 2.5]
    with pytest.raises(InvalidArgumentError, match="scan_origin_A"):
        stemdask.from_array(dense, scan_origin_A=(np.nan, 0.0))


def test_accessor_describes():
    _, data = make()
    assert data.stem.scan_shape == (3, 4) and data.stem.detector_shape == (8, 10)
    assert data.stem.calibration["semiangle_mrad"] == 20.0
    assert data.stem.wavelength_A == pytest.approx(0.019687, rel=1e-4)


def test_calibrate_updates_attrs_and_coords():
    data = stemdask.from_array(np.zeros((2, 3, 4, 4), "uint8"))
    cal = stemdask.calibrate(data, detector_pixel_mrad=2.0, energy_ev=200e3)
    assert cal.k_x.attrs["units"] == "mrad" and cal.attrs["energy_ev"] == 200e3
    np.testing.assert_allclose(cal.k_x, (np.arange(4) - 2) * 2.0)
    with pytest.raises(InvalidArgumentError, match="calibration"):
        stemdask.calibrate(data, focal_length=3)


@pytest.mark.parametrize("shape", [(4, 4, 4), (2, 2, 2, 2, 2), (5,)])
def test_wrong_number_of_dimensions(shape):
    with pytest.raises(InvalidArgumentError, match="4-D"):
        stemdask.from_array(np.zeros(shape))


@pytest.mark.parametrize(
    "key, value",
    [
        ("energy_ev", -300e3),
        ("energy_ev", float("nan")),
        ("semiangle_mrad", 0.0),
        ("scan_step_A", -0.5),
        ("scan_step_A", (0.5, float("nan"))),
        ("detector_pixel_mrad", float("inf")),
        ("dose_e_per_pattern", -1.0),
        ("scan_step_A", (1.0, 2.0, 3.0)),
    ],
)
def test_negative_or_nan_calibration_is_named(key, value):
    with pytest.raises(InvalidArgumentError, match=key):
        stemdask.from_array(np.zeros((2, 2, 4, 4)), **{key: value})


def test_non_numeric_and_non_array_inputs():
    with pytest.raises(InvalidTypeError, match="array"):
        stemdask.from_array([[1, 2]])
    with pytest.raises(InvalidArgumentError, match="dtype"):
        stemdask.from_array(np.zeros((2, 2, 2, 2), dtype=bool))
    with pytest.raises(InvalidTypeError, match="energy_ev"):
        stemdask.from_array(np.zeros((2, 2, 2, 2)), energy_ev="300 kV")


def test_validate_rejects_mismatched_coordinates():
    _, data = make()
    shifted = data.assign_coords(k_x=data.k_x * 2)
    with pytest.raises(DatasetContractError, match="k_x"):
        stemdask.validate(shifted)
    wrong_units = data.copy()
    wrong_units.coords["scan_y"].attrs["units"] = "nm"
    with pytest.raises(DatasetContractError, match="scan_y"):
        stemdask.validate(wrong_units)
    transposed = data.transpose("scan_x", "scan_y", "k_y", "k_x")
    with pytest.raises(DatasetContractError, match="order"):
        stemdask.validate(transposed)
    bad_attr = data.copy()
    bad_attr.attrs["energy_ev"] = float("nan")
    with pytest.raises(DatasetContractError, match="energy_ev"):
        stemdask.validate(bad_attr)
    with pytest.raises(InvalidTypeError):
        stemdask.validate(np.zeros((2, 2, 2, 2)))
    no_coord = data.drop_vars("k_y")
    with pytest.raises(DatasetContractError, match="k_y"):
        stemdask.validate(no_coord)


def test_lazy_input_keeps_its_scan_chunks():
    lazy = da.zeros((8, 6, 4, 4), dtype="uint16", chunks=(3, 2, 2, 4))
    data = stemdask.from_array(lazy)
    assert data.chunks == ((3, 3, 2), (2, 2, 2), (4,), (4,))
    assert stemdask.from_array(lazy, chunks=(4, 6)).chunks[:2] == ((4, 4), (6,))


def test_scan_origin_survives_event_stores_stempy_and_event_operations(tmp_path):
    dense = np.random.default_rng(3).poisson(0.2, (4, 6, 8, 8)).astype(np.uint16)
    data = stemdask.from_array(dense, scan_step_A=0.5, scan_origin_A=(3.0, -1.0), detector_pixel_mrad=1.0)
    counted = stemdask.events.from_dense(data)
    for back in (
        stemdask.open_dataset(stemdask.save(counted, tmp_path / "e.zarr")),
        stemdask.events.open_stempy(stemdask.events.write_stempy(counted, tmp_path / "e.h5")),
    ):
        assert back.attrs["scan_origin_A"] == [3.0, -1.0]
        np.testing.assert_allclose(back.scan_y.values, data.scan_y.values)
        np.testing.assert_allclose(back.scan_x.values, data.scan_x.values)
    binned = stemdask.events.bin_scan(counted, 2)
    assert binned.attrs["scan_origin_A"] == [3.25, -0.75]  # centre of the first 2 x 2 positions
    stemdask.validate(binned)
    cropped = stemdask.events.scan_crop(counted, scan_y=slice(1, 3), scan_x=slice(2, 5))
    assert cropped.attrs["scan_origin_A"] == [3.5, 0.0]
    assert counted.attrs["scan_origin_A"] == [3.0, -1.0]
