"""Readers: real detector files against an independent decode, HDF5, npy, raw, bad files."""

import h5py
import hdf5plugin
import numpy as np
import pytest

import stemdask
from stemdask.errors import FileFormatError, InvalidArgumentError


def decode_mib(path):
    """Independent Merlin .mib decoder: per-frame ASCII headers, then raw pixels.

    Merlin writes detector rows bottom-up; like RosettaSciIO (and the
    detector's own viewer) stemdask shows frames top-down, so rows are
    flipped here.
    """
    raw = path.read_bytes()
    fields = raw[:200].split(b",")
    header_bytes, width, height = int(fields[2]), int(fields[4]), int(fields[5])
    dtype = {b"U08": np.dtype("u1"), b"U16": np.dtype(">u2"), b"U32": np.dtype(">u4")}[fields[6]]
    frame_bytes = header_bytes + width * height * dtype.itemsize
    assert len(raw) % frame_bytes == 0
    frames = [
        np.frombuffer(raw, dtype, width * height, offset=i * frame_bytes + header_bytes)
        for i in range(len(raw) // frame_bytes)
    ]
    return np.stack(frames).reshape(-1, height, width)[:, ::-1, :]


MERLIN = [
    ("001_4x2_6bit.mib", (2, 4, 256, 256), np.uint8),
    ("002_4x2_6bit_roi128.mib", (2, 4, 128, 256), np.uint8),
    ("002_merlin_test_roi_sig256x128_nav4x2_hot_pixel_52x_39y.mib", (2, 4, 128, 256), np.uint16),
]


@pytest.mark.parametrize("name, shape, dtype", MERLIN)
def test_merlin_files_match_an_independent_decode(shared_data, name, shape, dtype):
    path = shared_data / "merlin" / name
    data = stemdask.open_dataset(path)
    stemdask.validate(data)
    assert data.shape == shape and data.dtype == dtype and data.dtype.isnative
    expected = decode_mib(path)
    np.testing.assert_array_equal(data.values.reshape(-1, *shape[2:]), expected)
    assert data.attrs["file_format"] == "QuantumDetector"
    assert data.k_x.attrs["units"] == "px"  # Merlin files carry no angular calibration


def test_merlin_6bit_statistics_and_hot_pixel(shared_data):
    data = stemdask.open_dataset(shared_data / "merlin" / "001_4x2_6bit.mib").values
    assert data.max() <= 63  # 6-bit counter
    assert data.mean() == pytest.approx(6.9, abs=0.3)
    hot = stemdask.open_dataset(
        shared_data / "merlin" / "002_merlin_test_roi_sig256x128_nav4x2_hot_pixel_52x_39y.mib"
    ).values
    frame_sum = hot.sum(axis=(0, 1)).astype(np.int64)
    # the file's name counts the hot pixel's row (y=39) in the detector's bottom-up row order
    assert np.unravel_index(frame_sum.argmax(), frame_sum.shape) == (128 - 1 - 39, 52)


def test_merlin_with_calibration_supplied(shared_data):
    data = stemdask.open_dataset(
        shared_data / "merlin" / "001_4x2_6bit.mib", detector_pixel_mrad=0.5, energy_ev=300e3, scan_step_A=2.0
    )
    assert data.k_x.attrs["units"] == "mrad"
    assert data.k_x.values[0] == pytest.approx(-128 * 0.5)
    assert data.stem.wavelength_A == pytest.approx(0.0196875, rel=1e-5)


def test_arina_master_reads_lazily_with_metadata(shared_data):
    path = shared_data / "arina" / "test_00_master.h5"
    data = stemdask.open_dataset(path)
    assert data.shape == (4, 4, 192, 192)
    with h5py.File(shared_data / "arina" / "test_00_data_000001.h5") as f:
        frames = f["entry/data/data"][()]
    assert data.dtype == frames.dtype  # no silent narrowing of uint32
    np.testing.assert_array_equal(data.values.reshape(16, 192, 192), frames)
    assert data.attrs["energy_ev"] == 300e3
    assert data.attrs["scan_step_A"][0] == pytest.approx(1.3915206)
    stemdask.validate(data)


def test_info_and_convert_real_merlin(shared_data, tmp_path):
    path = shared_data / "merlin" / "001_4x2_6bit.mib"
    out = stemdask.save(stemdask.open_dataset(path), tmp_path / "m.zarr", codec="zstd")
    np.testing.assert_array_equal(stemdask.open_dataset(out).values.reshape(-1, 256, 256), decode_mib(path))


# --- HDF5 -----------------------------------------------------------------
def test_hdf5_dataset_by_path_and_auto(tmp_path, rng):
    arr = rng.integers(0, 1000, size=(3, 4, 6, 5), dtype="uint16")
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("meta/frame", data=np.zeros((6, 5)))
        f.create_dataset(
            "entry/scan", data=arr.astype(">u2"), chunks=(1, 4, 6, 5), **hdf5plugin.Bitshuffle(nelems=0, cname="lz4")
        )
    data = stemdask.open_dataset(path, scan_step_A=0.5)
    assert data.dtype == np.uint16 and data.dtype.isnative
    np.testing.assert_array_equal(data.values, arr)
    np.testing.assert_array_equal(stemdask.open_dataset(path, dataset="entry/scan").values, arr)


def test_hdf5_frame_stack_with_scan_shape(tmp_path, rng):
    arr = rng.integers(0, 9, size=(12, 4, 4), dtype="uint8")
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as f:
        f["frames"] = arr
    data = stemdask.open_dataset(path, dataset="frames", scan_shape=(3, 4))
    np.testing.assert_array_equal(data.values, arr.reshape(3, 4, 4, 4))
    with pytest.raises(InvalidArgumentError, match="scan_shape"):
        stemdask.open_dataset(path, dataset="frames", scan_shape=(5, 4))


def test_hdf5_not_4d_is_a_clear_error(tmp_path):
    path = tmp_path / "img.h5"
    with h5py.File(path, "w") as f:
        f["image"] = np.zeros((8, 8))
    with pytest.raises(FileFormatError, match=r"shape \(8, 8\)"):
        stemdask.open_dataset(path, dataset="image")
    with pytest.raises(FileFormatError, match="0 4-D datasets"):
        stemdask.open_dataset(path)
    with pytest.raises(InvalidArgumentError, match="dataset='nope'"):
        stemdask.open_dataset(path, dataset="nope")


def test_emd_1_0_file_with_calibrated_dims(tmp_path, rng):
    """An EMD 1.0 file as py4DSTEM writes it: data plus dim1..dim4 vectors with units."""
    arr = rng.integers(0, 50, size=(4, 3, 8, 8), dtype="uint16")
    path = tmp_path / "py4d.h5"
    with h5py.File(path, "w") as f:
        f.attrs["version_major"], f.attrs["version_minor"] = 1, 0
        g = f.create_group("4DSTEM_experiment/data/datacubes/datacube_0")
        g.attrs["emd_group_type"] = 1
        g["data"] = arr
        for i, (values, units) in enumerate(
            [
                (np.arange(4) * 0.05, "nm"),
                (np.arange(3) * 0.05, "nm"),
                ((np.arange(8) - 3) * 0.8, "mrad"),
                ((np.arange(8) - 4) * 0.8, "mrad"),
            ]
        ):
            g[f"dim{i + 1}"] = values
            g[f"dim{i + 1}"].attrs["units"] = units
    data = stemdask.open_dataset(path)
    np.testing.assert_array_equal(data.values, arr)
    assert data.attrs["scan_step_A"] == pytest.approx([0.5, 0.5])
    assert data.attrs["detector_pixel_mrad"] == pytest.approx([0.8, 0.8])
    assert data.attrs["beam_center_px"] == pytest.approx([3.0, 4.0])
    assert data.k_x.sel(k_x=0.0, method="nearest").item() == pytest.approx(0.0)


# --- npy and raw -----------------------------------------------------------
def test_npy_and_raw(tmp_path, rng):
    arr = rng.integers(0, 4000, size=(3, 5, 7, 6)).astype(">u2")
    np.save(tmp_path / "a.npy", arr)
    data = stemdask.open_dataset(tmp_path / "a.npy", energy_ev=80e3)
    assert data.dtype.isnative
    np.testing.assert_array_equal(data.values, arr)
    header = b"HEADER" * 10
    (tmp_path / "a.raw").write_bytes(header + arr.tobytes())
    raw = stemdask.open_dataset(
        tmp_path / "a.raw", shape=arr.shape, dtype="uint16", byte_order="big", header_bytes=len(header)
    )
    np.testing.assert_array_equal(raw.values, arr)


def test_raw_with_frame_headers(tmp_path, rng):
    arr = rng.integers(0, 255, size=(2, 3, 4, 4), dtype="uint8")
    blob = b"".join(b"\xff" * 16 + frame.tobytes() for frame in arr.reshape(6, 4, 4))
    (tmp_path / "f.bin").write_bytes(blob)
    data = stemdask.open_dataset(
        tmp_path / "f.bin", shape=(6, 4, 4), scan_shape=(2, 3), dtype="uint8", frame_header_bytes=16
    )
    np.testing.assert_array_equal(data.values, arr)


def test_truncated_raw_file_is_named(tmp_path):
    (tmp_path / "t.raw").write_bytes(np.zeros(2 * 2 * 4 * 4 - 3, "uint16").tobytes())
    with pytest.raises(FileFormatError, match="truncated.*6 missing"):
        stemdask.open_dataset(tmp_path / "t.raw", shape=(2, 2, 4, 4), dtype="uint16")
    with pytest.raises(InvalidArgumentError, match="byte_order"):
        stemdask.open_dataset(tmp_path / "t.raw", shape=(2, 2, 4, 4), dtype="uint16", byte_order="middle")


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mib"):
        stemdask.open_dataset(tmp_path / "nope.mib")
    (tmp_path / "notes.xyz").write_text("hello")
    with pytest.raises(FileFormatError, match="cannot tell the format"):
        stemdask.open_dataset(tmp_path / "notes.xyz")
    (tmp_path / "bad.h5").write_text("not hdf5")
    with pytest.raises(FileFormatError, match="not a readable HDF5"):
        stemdask.open_dataset(tmp_path / "bad.h5")


def test_readers_compute_on_a_local_cluster(local_client, shared_data, tmp_path, rng):
    """File-backed chunks travel to worker processes (picklable sources)."""
    arr = rng.integers(0, 100, size=(4, 4, 8, 8), dtype="uint16")
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["d"] = arr
    np.save(tmp_path / "c.npy", arr)
    for path in (tmp_path / "c.h5", tmp_path / "c.npy"):
        data = stemdask.open_dataset(path, chunks=(2, 2))
        assert int(data.sum().compute()) == int(arr.sum())
    mib = shared_data / "merlin" / "001_4x2_6bit.mib"
    assert int(stemdask.open_dataset(mib).sum().compute()) == int(decode_mib(mib).sum(dtype=np.int64))


@pytest.mark.parametrize(
    "index",
    [
        (slice(0, 3), slice(0, 5)),
        (slice(1, 2), slice(2, 4)),
        (slice(0, 3), slice(4, 5)),
        (slice(2, 3), slice(0, 5), slice(1, 3)),
        (1, slice(None)),
        (slice(0, 3, 2), slice(None)),
    ],
)
def test_raw_source_reads_any_block_like_numpy(tmp_path, rng, index):
    from stemdask.io.sources import RawSource

    arr = rng.integers(0, 60000, size=(3, 5, 4, 6), dtype="uint16").astype(">u2")
    (tmp_path / "b.raw").write_bytes(b"H" * 7 + arr.tobytes())
    source = RawSource(str(tmp_path / "b.raw"), arr.shape, arr.dtype, header_bytes=7)
    block = source[index]
    assert block.dtype.isnative
    np.testing.assert_array_equal(block, arr[index])
