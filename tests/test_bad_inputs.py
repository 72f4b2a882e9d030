"""Bad inputs, one case per line: each must raise a stemdask (or OS) error of the expected type whose
message names the argument or the file, never a traceback from deep inside dask, zarr or numpy.

API cases call the Python functions; CLI cases call ``stemdask.cli.main`` in-process (its exit code and
stderr are what a user sees), plus a few true subprocess runs at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import xarray as xr
import zarr

import stemdask
import stemdask.events as ev
from stemdask import cli, cluster
from stemdask.errors import (
    CorruptChunkError,
    DatasetContractError,
    FileFormatError,
    IncompleteStoreError,
    InvalidArgumentError,
    InvalidTypeError,
    MissingChunkError,
)
from stemdask.imaging import center_of_mass, detectors, pacbed, virtual_image
from stemdask.io import DatasetWriter

IAE, ITE, FFE = InvalidArgumentError, InvalidTypeError, FileFormatError
ValueOrType = (InvalidArgumentError, InvalidTypeError)


@pytest.fixture(scope="module")
def f(tmp_path_factory):
    """Small files and a dataset for the cases (built once)."""
    d = tmp_path_factory.mktemp("bad")
    a = np.arange(2 * 3 * 8 * 8, dtype="uint16").reshape(2, 3, 8, 8) % 50
    data = stemdask.from_array(a, energy_ev=3e5, semiangle_mrad=20, scan_step_A=0.5, detector_pixel_mrad=1.0)
    np.save(d / "a.npy", a)
    np.save(d / "stack.npy", a.reshape(6, 8, 8))
    np.save(d / "flat.npy", a.reshape(6, 64))
    (d / "a.raw").write_bytes(a.tobytes())
    (d / "file.txt").write_text("not a folder")
    (d / "scan.xyz").write_text("unknown format")
    (d / "empty.zarr").mkdir()
    (d / "plain").mkdir()
    store = stemdask.save(data, d / "s.zarr", chunks=(1, 3), shards=(2, 3))
    shutil.copytree(store, d / "badjson.zarr")
    (d / "badjson.zarr" / "zarr.json").write_text("{not json")
    shutil.copytree(store, d / "incomplete.zarr")
    zarr.open_group(d / "incomplete.zarr", mode="r+").attrs["stemdask_complete"] = False
    shutil.copytree(store, d / "flipped.zarr")
    shard = d / "flipped.zarr" / "intensity" / "c" / "0" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    shutil.copytree(store, d / "deleted.zarr")
    (d / "deleted.zarr" / "intensity" / "c" / "0" / "0" / "0" / "0").unlink()
    foreign = zarr.open_group(d / "foreign.zarr", mode="w", zarr_format=3)
    for name in ("x", "y"):
        foreign.create_array(name, shape=a.shape, dtype=a.dtype)[...] = a
    with h5py.File(d / "two.h5", "w") as h5:
        h5["one"] = a
        h5["two"] = a
    return SimpleNamespace(
        d=d,
        a=a,
        data=data,
        store=store,
        npy=d / "a.npy",
        stack=d / "stack.npy",
        flat=d / "flat.npy",
        raw=d / "a.raw",
        file=d / "file.txt",
    )


# (id, call, error type(s), text the message must contain: the argument or the file)
API = [
    # from_array: the array
    ("array list", lambda f: stemdask.from_array([1, 2, 3]), ITE, "array"),
    ("array str", lambda f: stemdask.from_array("data"), ITE, "array"),
    ("array None", lambda f: stemdask.from_array(None), ITE, "array"),
    ("array 3-D", lambda f: stemdask.from_array(np.ones((2, 8, 8))), IAE, "array"),
    ("array 5-D", lambda f: stemdask.from_array(np.ones((1, 2, 2, 8, 8))), IAE, "array"),
    ("array complex", lambda f: stemdask.from_array(np.ones((2, 2, 4, 4), complex)), IAE, "array"),
    ("array complex64", lambda f: stemdask.from_array(np.ones((2, 2, 4, 4), np.complex64)), IAE, "complex"),
    ("array bool", lambda f: stemdask.from_array(np.ones((2, 2, 4, 4), bool)), IAE, "array"),
    ("array object", lambda f: stemdask.from_array(np.empty((2, 2, 4, 4), object)), IAE, "array"),
    ("array strings", lambda f: stemdask.from_array(np.full((2, 2, 4, 4), "a")), IAE, "array"),
    ("array empty scan", lambda f: stemdask.from_array(np.ones((0, 4, 16, 16))), IAE, "array"),
    ("array empty frame", lambda f: stemdask.from_array(np.ones((2, 2, 0, 4))), IAE, "array"),
    # from_array: chunks
    ("chunks zero", lambda f: stemdask.from_array(f.a, chunks=(0, 1)), IAE, "chunks"),
    ("chunks negative", lambda f: stemdask.from_array(f.a, chunks=(-2, 1)), IAE, "chunks"),
    ("chunks float", lambda f: stemdask.from_array(f.a, chunks=(1.5, 1)), IAE, "chunks"),
    ("chunks str", lambda f: stemdask.from_array(f.a, chunks="big"), IAE, "chunks"),
    ("chunks int", lambda f: stemdask.from_array(f.a, chunks=4), IAE, "chunks"),
    ("chunks 1 item", lambda f: stemdask.from_array(f.a, chunks=(1,)), IAE, "chunks"),
    ("chunks 3 items", lambda f: stemdask.from_array(f.a, chunks=(1, 2, 3)), IAE, "chunks"),
    ("chunks bool", lambda f: stemdask.from_array(f.a, chunks=(True, 1)), IAE, "chunks"),
    ("chunks 4-D zero", lambda f: stemdask.from_array(f.a, chunks=(1, 1, 0, 8)), IAE, "chunks"),
    # from_array: calibration
    ("energy negative", lambda f: stemdask.from_array(f.a, energy_ev=-1), IAE, "energy_ev"),
    ("energy zero", lambda f: stemdask.from_array(f.a, energy_ev=0), IAE, "energy_ev"),
    ("energy nan", lambda f: stemdask.from_array(f.a, energy_ev=float("nan")), IAE, "energy_ev"),
    ("energy inf", lambda f: stemdask.from_array(f.a, energy_ev=float("inf")), IAE, "energy_ev"),
    ("energy str", lambda f: stemdask.from_array(f.a, energy_ev="300kV"), ITE, "energy_ev"),
    ("energy bool", lambda f: stemdask.from_array(f.a, energy_ev=True), ITE, "energy_ev"),
    ("energy list", lambda f: stemdask.from_array(f.a, energy_ev=[3e5]), ITE, "energy_ev"),
    ("semiangle negative", lambda f: stemdask.from_array(f.a, semiangle_mrad=-20), IAE, "semiangle_mrad"),
    ("semiangle zero", lambda f: stemdask.from_array(f.a, semiangle_mrad=0), IAE, "semiangle_mrad"),
    ("semiangle str", lambda f: stemdask.from_array(f.a, semiangle_mrad="20"), ITE, "semiangle_mrad"),
    ("scan step zero", lambda f: stemdask.from_array(f.a, scan_step_A=0), IAE, "scan_step_A"),
    ("scan step negative", lambda f: stemdask.from_array(f.a, scan_step_A=-0.5), IAE, "scan_step_A"),
    ("scan step 3 items", lambda f: stemdask.from_array(f.a, scan_step_A=(1, 2, 3)), IAE, "scan_step_A"),
    ("scan step str", lambda f: stemdask.from_array(f.a, scan_step_A="0.5"), ITE, "scan_step_A"),
    ("scan step nan", lambda f: stemdask.from_array(f.a, scan_step_A=(1, float("nan"))), IAE, "scan_step_A"),
    ("pixel zero", lambda f: stemdask.from_array(f.a, detector_pixel_mrad=0), IAE, "detector_pixel_mrad"),
    ("pixel negative", lambda f: stemdask.from_array(f.a, detector_pixel_mrad=-1), IAE, "detector_pixel_mrad"),
    ("pixel 3 items", lambda f: stemdask.from_array(f.a, detector_pixel_mrad=[1, 2, 3]), IAE, "detector_pixel_mrad"),
    ("pixel dict", lambda f: stemdask.from_array(f.a, detector_pixel_mrad={"y": 1}), ITE, "detector_pixel_mrad"),
    ("center nan", lambda f: stemdask.from_array(f.a, beam_center_px=(float("nan"), 1)), IAE, "beam_center_px"),
    ("center str", lambda f: stemdask.from_array(f.a, beam_center_px="middle"), ITE, "beam_center_px"),
    ("center 3 items", lambda f: stemdask.from_array(f.a, beam_center_px=(1, 2, 3)), IAE, "beam_center_px"),
    ("origin inf", lambda f: stemdask.from_array(f.a, scan_origin_A=float("inf")), IAE, "scan_origin_A"),
    ("origin str", lambda f: stemdask.from_array(f.a, scan_origin_A="0"), ITE, "scan_origin_A"),
    ("rotation str", lambda f: stemdask.from_array(f.a, scan_rotation_deg="x"), ITE, "scan_rotation_deg"),
    ("rotation nan", lambda f: stemdask.from_array(f.a, scan_rotation_deg=float("nan")), IAE, "scan_rotation_deg"),
    ("rotation inf", lambda f: stemdask.from_array(f.a, scan_rotation_deg=float("inf")), IAE, "scan_rotation_deg"),
    ("rotation None", lambda f: stemdask.from_array(f.a, scan_rotation_deg=None), ITE, "scan_rotation_deg"),
    ("dose zero", lambda f: stemdask.from_array(f.a, dose_e_per_pattern=0), IAE, "dose_e_per_pattern"),
    ("dose negative", lambda f: stemdask.from_array(f.a, dose_e_per_pattern=-5), IAE, "dose_e_per_pattern"),
    ("units empty", lambda f: stemdask.from_array(f.a, units=""), IAE, "units"),
    ("units number", lambda f: stemdask.from_array(f.a, units=3), IAE, "units"),
    # validate / calibrate
    ("validate ndarray", lambda f: stemdask.validate(f.a), ITE, "data"),
    ("validate 3-D", lambda f: stemdask.validate(xr.DataArray(np.ones((2, 2, 2)))), DatasetContractError, "dims"),
    ("validate dims", lambda f: stemdask.validate(f.data.rename(k_x="kx")), DatasetContractError, "dims"),
    ("validate transposed", lambda f: stemdask.validate(f.data.transpose("k_y", ...)), DatasetContractError, "dims"),
    (
        "validate bad attr",
        lambda f: stemdask.validate(f.data.assign_attrs(energy_ev=-1)),
        DatasetContractError,
        "energy_ev",
    ),
    ("calibrate energy", lambda f: stemdask.calibrate(f.data, energy_ev=-1), IAE, "energy_ev"),
    ("calibrate step", lambda f: stemdask.calibrate(f.data, scan_step_A=0), IAE, "scan_step_A"),
    ("calibrate rotation", lambda f: stemdask.calibrate(f.data, scan_rotation_deg="x"), ITE, "scan_rotation_deg"),
    # save
    ("save ndarray", lambda f: stemdask.save(f.a, f.d / "x1.zarr"), (ITE, IAE, TypeError), "data"),
    ("save codec unknown", lambda f: stemdask.save(f.data, f.d / "x2.zarr", codec="lzma9"), IAE, "codec"),
    ("save codec type", lambda f: stemdask.save(f.data, f.d / "x3.zarr", codec=42), ITE, "codec"),
    ("save chunks zero", lambda f: stemdask.save(f.data, f.d / "x4.zarr", chunks=(0, 1)), IAE, "chunks"),
    ("save chunks str", lambda f: stemdask.save(f.data, f.d / "x5.zarr", chunks="auto"), IAE, "chunks"),
    (
        "save shards not multiple",
        lambda f: stemdask.save(f.data, f.d / "x6.zarr", chunks=(2, 2), shards=(3, 3)),
        IAE,
        "shards",
    ),
    ("save shards zero", lambda f: stemdask.save(f.data, f.d / "x7.zarr", shards=(0, 1)), IAE, "shards"),
    ("save exists", lambda f: stemdask.save(f.data, f.store), FileExistsError, "overwrite"),
    ("save under a file", lambda f: stemdask.save(f.data, f.file / "x.zarr"), NotADirectoryError, "file.txt"),
    (
        "save unwritable",
        lambda f: stemdask.save(f.data, "/proc/stemdask-test.zarr"),
        OSError,
        "/proc/stemdask-test.zarr",
    ),
    ("save name is a dim", lambda f: stemdask.save(f.data.rename("k_x"), f.d / "x8.zarr"), IAE, "data.name"),
    # open_dataset: paths and stores
    ("open missing", lambda f: stemdask.open_dataset(f.d / "missing.mib"), FileNotFoundError, "missing.mib"),
    ("open empty zarr", lambda f: stemdask.open_dataset(f.d / "empty.zarr"), FFE, "empty.zarr"),
    ("open plain folder", lambda f: stemdask.open_dataset(f.d / "plain"), FFE, "plain"),
    ("open corrupt zarr.json", lambda f: stemdask.open_dataset(f.d / "badjson.zarr"), FFE, "zarr.json"),
    ("open unknown suffix", lambda f: stemdask.open_dataset(f.d / "scan.xyz"), FFE, "scan.xyz"),
    ("open text file", lambda f: stemdask.open_dataset(f.file), FFE, "file.txt"),
    (
        "open incomplete",
        lambda f: stemdask.open_dataset(f.d / "incomplete.zarr"),
        IncompleteStoreError,
        "allow_incomplete",
    ),
    (
        "open deleted shard",
        lambda f: stemdask.open_dataset(f.d / "deleted.zarr"),
        MissingChunkError,
        "intensity/c/0/0/0/0",
    ),
    (
        "read flipped chunk",
        lambda f: stemdask.open_dataset(f.d / "flipped.zarr").values,
        CorruptChunkError,
        "chunk (0, ",
    ),
    ("open store calibration", lambda f: stemdask.open_dataset(f.store, energy_ev=1e5), IAE, "calibration"),
    ("open store bad keyword", lambda f: stemdask.open_dataset(f.store, energy_eV=1e5), IAE, "energy_eV"),
    ("open store chunks", lambda f: stemdask.open_dataset(f.store, chunks=(0, 1)), IAE, "chunks"),
    ("open foreign two arrays", lambda f: stemdask.open_dataset(f.d / "foreign.zarr"), FFE, "variable"),
    ("open foreign variable", lambda f: stemdask.open_dataset(f.d / "foreign.zarr", variable="z"), IAE, "variable"),
    ("open representation", lambda f: stemdask.open_dataset(f.store, representation="sparse"), IAE, "representation"),
    ("open h5 two datasets", lambda f: stemdask.open_dataset(f.d / "two.h5"), ValueOrType + (FFE,), "dataset"),
    (
        "open h5 wrong dataset",
        lambda f: stemdask.open_dataset(f.d / "two.h5", dataset="three"),
        ValueOrType + (FFE, KeyError),
        "three",
    ),
    # open_dataset: .npy and raw
    ("npy bad keyword", lambda f: stemdask.open_dataset(f.npy, energy_eV=3e5), IAE, "energy_eV"),
    ("npy stack no scan", lambda f: stemdask.open_dataset(f.stack), IAE, "scan_shape"),
    ("npy stack wrong scan", lambda f: stemdask.open_dataset(f.stack, scan_shape=(4, 4)), IAE, "scan_shape"),
    ("npy 2-D", lambda f: stemdask.open_dataset(f.flat), FFE, "flat.npy"),
    ("npy bad energy", lambda f: stemdask.open_dataset(f.npy, energy_ev=-1), IAE, "energy_ev"),
    ("raw no shape", lambda f: stemdask.open_dataset(f.raw), IAE, "shape"),
    ("raw no dtype", lambda f: stemdask.open_dataset(f.raw, shape=(2, 3, 8, 8)), IAE, "dtype"),
    ("raw bad shape", lambda f: stemdask.open_dataset(f.raw, shape=(2, 3), dtype="uint16"), IAE, "shape"),
    ("raw shape str", lambda f: stemdask.open_dataset(f.raw, shape="2x3", dtype="uint16"), IAE, "shape"),
    ("raw bad dtype", lambda f: stemdask.open_dataset(f.raw, shape=(2, 3, 8, 8), dtype="pixels"), IAE, "dtype"),
    ("raw complex dtype", lambda f: stemdask.open_dataset(f.raw, shape=(1, 3, 8, 8), dtype="complex64"), IAE, "dtype"),
    ("raw truncated", lambda f: stemdask.open_dataset(f.raw, shape=(4, 3, 8, 8), dtype="uint16"), FFE, "truncated"),
    (
        "raw too long",
        lambda f: stemdask.open_dataset(f.raw, shape=(1, 3, 8, 8), dtype="uint16"),
        FFE,
        "allow_trailing_bytes",
    ),
    (
        "raw byte order",
        lambda f: stemdask.open_dataset(f.raw, shape=(2, 3, 8, 8), dtype="u2", byte_order="middle"),
        IAE,
        "byte_order",
    ),
    (
        "raw header negative",
        lambda f: stemdask.open_dataset(f.raw, shape=(2, 3, 8, 8), dtype="u2", header_bytes=-1),
        IAE,
        "header_bytes",
    ),
    (
        "raw stack scan",
        lambda f: stemdask.open_dataset(f.raw, shape=(6, 8, 8), dtype="u2", scan_shape=(5, 5)),
        IAE,
        "scan_shape",
    ),
    (
        "raw keyword",
        lambda f: stemdask.open_dataset(f.raw, shape=(2, 3, 8, 8), dtype="u2", dataset="x"),
        IAE,
        "dataset",
    ),
    # cluster
    ("cluster kind", lambda f: cluster.start("cloud"), IAE, "kind"),
    ("cluster zero workers", lambda f: cluster.start("local", n_workers=0), IAE, "n_workers"),
    ("cluster negative workers", lambda f: cluster.start("local", n_workers=-3), IAE, "n_workers"),
    ("cluster float workers", lambda f: cluster.start("local", n_workers=1.5), IAE, "n_workers"),
    ("cluster bool workers", lambda f: cluster.start("local", n_workers=True), IAE, "n_workers"),
    ("cluster str workers", lambda f: cluster.start("local", n_workers="2"), IAE, "n_workers"),
    ("connect empty", lambda f: cluster.connect(""), IAE, "address"),
    ("connect number", lambda f: cluster.connect(8786), IAE, "address"),
    # DatasetWriter
    (
        "writer exists",
        lambda f: DatasetWriter(f.store, scan_shape=(1, 2), detector_shape=(4, 4), dtype="u2"),
        FileExistsError,
        "overwrite",
    ),
    (
        "writer scan zero",
        lambda f: DatasetWriter(f.d / "w1.zarr", scan_shape=(1, 0), detector_shape=(4, 4), dtype="u2"),
        IAE,
        "scan_shape",
    ),
    (
        "writer frame zero",
        lambda f: DatasetWriter(f.d / "w2.zarr", scan_shape=(1, 2), detector_shape=(0, 4), dtype="u2"),
        IAE,
        "detector_shape",
    ),
    (
        "writer store object",
        lambda f: DatasetWriter(zarr.storage.MemoryStore(), scan_shape=(1, 2), detector_shape=(4, 4), dtype="u2"),
        ITE,
        "store",
    ),
    (
        "writer client address",
        lambda f: DatasetWriter(
            f.d / "w3.zarr", scan_shape=(1, 2), detector_shape=(4, 4), dtype="u2", client="tcp://127.0.0.1:8786"
        ),
        ITE,
        "client",
    ),
    # verify
    ("verify missing", lambda f: stemdask.verify(f.d / "nothing.zarr"), FileNotFoundError, "nothing.zarr"),
    ("verify folder", lambda f: stemdask.verify(f.d / "plain"), FFE, "plain"),
    # imaging entry points
    ("virtual_image ndarray", lambda f: virtual_image(f.a, detectors.disk(f.data, 2)), ITE, "data"),
    ("pacbed ndarray", lambda f: pacbed(f.a), ITE, "data"),
    ("pacbed reduce", lambda f: pacbed(f.data, reduce="median"), IAE, "reduce"),
    ("com ndarray", lambda f: center_of_mass(f.a), ITE, "data"),
    ("disk negative", lambda f: detectors.disk(f.data, -1), IAE, "radius_mrad"),
    ("disk str", lambda f: detectors.disk(f.data, "big"), ValueOrType, "radius_mrad"),
    ("annulus reversed", lambda f: detectors.annulus(f.data, 5, 2), IAE, "outer"),
    ("events float data", lambda f: ev.from_dense(stemdask.from_array(f.a + 0.5)), ValueOrType, "data"),
]


@pytest.mark.parametrize("call, error, named", [pytest.param(c, e, n, id=i) for i, c, e, n in API])
def test_api_bad_input(f, call, error, named):
    with pytest.raises(error) as info:
        call(f)
    assert named in str(info.value), str(info.value)


def _writer_frames(f, frames):
    writer = DatasetWriter(
        f.d / f"w-{frames.shape}-{frames.dtype}.zarr",
        scan_shape=(1, 3),
        detector_shape=(8, 8),
        dtype="u2",
        overwrite=True,
    )
    writer.write(frames, 0)


WRITER = [
    ("frames shape", np.zeros((1, 2, 8, 8), "u2"), "frames"),
    ("frames dtype", np.zeros((1, 3, 8, 8), "f8"), "frames"),
    ("frames frame shape", np.zeros((1, 3, 4, 4), "u2"), "frames"),
]


@pytest.mark.parametrize("frames, named", [pytest.param(fr, n, id=i) for i, fr, n in WRITER])
def test_writer_bad_frames(f, frames, named):
    with pytest.raises(IAE, match=named):
        _writer_frames(f, frames)


def test_counts():
    """The suite is as large as the issue's list of bad inputs tried (110 API, 27 CLI)."""
    assert len(API) + len(WRITER) >= 110 and len(CLI) >= 27


# ----------------------------------------------------------------------------
# the command line, in-process
# ----------------------------------------------------------------------------
# (id, arguments (with {d} for the folder of files), exit code, text stderr must contain)
CLI = [
    ("info missing", "info {d}/missing.mib", 2, "missing.mib"),
    ("info empty zarr", "info {d}/empty.zarr", 2, "empty.zarr"),
    ("info plain folder", "info {d}/plain", 2, "plain"),
    ("info corrupt json", "info {d}/badjson.zarr", 2, "zarr.json"),
    ("info unknown suffix", "info {d}/scan.xyz", 2, "scan.xyz"),
    ("info incomplete", "info {d}/incomplete.zarr", 2, "--allow-incomplete"),
    ("info deleted shard", "info {d}/deleted.zarr", 2, "intensity/c/0/0/0/0"),
    ("info raw no shape", "info {d}/a.raw", 2, "--shape"),
    ("info raw no dtype", "info {d}/a.raw --shape 2 3 8 8", 2, "--dtype"),
    ("info raw bad dtype", "info {d}/a.raw --shape 2 3 8 8 --dtype pixels", 2, "--dtype"),
    ("info raw truncated", "info {d}/a.raw --shape 4 3 8 8 --dtype uint16", 2, "truncated"),
    ("info stack no scan", "info {d}/stack.npy", 2, "--scan-shape"),
    ("info stack wrong scan", "info {d}/stack.npy --scan-shape 4 4", 2, "--scan-shape"),
    ("info h5 two datasets", "info {d}/two.h5", 2, "--dataset"),
    ("info bad energy", "info {d}/a.npy --energy-ev -1", 2, "--energy-ev"),
    ("info energy not a number", "info {d}/a.npy --energy-ev high", 2, "--energy-ev"),
    ("info no path", "info", 2, "path"),
    ("convert exists", "convert {d}/a.npy {d}/s.zarr", 2, "--overwrite"),
    ("convert missing input", "convert {d}/none.npy {d}/c1.zarr", 2, "none.npy"),
    ("convert under a file", "convert {d}/a.npy {d}/file.txt/c.zarr", 2, "file.txt"),
    ("convert codec", "convert {d}/a.npy {d}/c2.zarr --codec lzma9", 2, "--codec"),
    ("convert chunks zero", "convert {d}/a.npy {d}/c3.zarr --chunks 0 1", 2, "--chunks"),
    ("convert shards", "convert {d}/a.npy {d}/c4.zarr --chunks 2 2 --shards 3 3", 2, "--shards"),
    ("convert workers zero", "convert {d}/a.npy {d}/c5.zarr --cluster --workers 0", 2, "--workers"),
    ("convert workers negative", "convert {d}/a.npy {d}/c6.zarr --cluster --workers -3", 2, "--workers"),
    ("convert workers word", "convert {d}/a.npy {d}/c7.zarr --cluster --workers two", 2, "--workers"),
    ("convert incomplete", "convert {d}/incomplete.zarr {d}/c8.zarr", 2, "--allow-incomplete"),
    ("convert deleted shard", "convert {d}/deleted.zarr {d}/c9.zarr", 2, "intensity/c/0/0/0/0"),
    (
        "convert byte order",
        "convert {d}/a.raw {d}/c10.zarr --shape 2 3 8 8 --dtype u2 --byte-order middle",
        2,
        "--byte-order",
    ),
    ("verify missing", "verify {d}/nothing.zarr", 2, "nothing.zarr"),
    ("verify folder", "verify {d}/plain", 2, "plain"),
    ("verify flipped", "verify {d}/flipped.zarr --quiet", 1, "corrupt"),
    ("verify deleted", "verify {d}/deleted.zarr --quiet", 1, "missing"),
    ("demo workers zero", "demo --workers 0", 2, "--workers"),
    ("unknown command", "repair {d}/s.zarr", 2, "repair"),
]


@pytest.mark.parametrize("argv, code, named", [pytest.param(a, c, n, id=i) for i, a, c, n in CLI])
def test_cli_bad_input(f, capsys, argv, code, named):
    args = argv.format(d=f.d).split()
    try:
        got = cli.main(args)
    except SystemExit as exit_:  # argparse refuses the arguments themselves
        got = exit_.code
    out, err = capsys.readouterr()
    assert got == code, (out, err)
    text = err if code == 2 else out
    assert named in text, text
    assert "Traceback" not in err
    # CLI advice, never Python's ("pass overwrite=True", "allow_incomplete=True", "scan_shape=...")
    assert not re.search(r"(?<![\w-])(overwrite|allow_incomplete|scan_shape|dataset|shape|dtype|n_workers)=", err), err


# ----------------------------------------------------------------------------
# true subprocess runs: what a shell user sees
# ----------------------------------------------------------------------------
def _stemdask(*args: str, **kw):
    return subprocess.run(
        [sys.executable, "-m", "stemdask.cli", *args], capture_output=True, text=True, timeout=120, **kw
    )


def test_subprocess_error_is_one_line(f):
    proc = _stemdask("convert", str(f.npy), str(f.store))
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and "Traceback" not in proc.stderr


def test_subprocess_info_into_a_closed_pipe(f):
    # `stemdask info X | head -1`: the reader leaves early; no BrokenPipeError traceback
    shell = f"{sys.executable} -m stemdask.cli info {f.store} | head -1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == str(f.store) and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_subprocess_info_json_ends_with_a_newline(f):
    proc = _stemdask("info", "--json", str(f.store))
    assert proc.returncode == 0 and proc.stdout.endswith("}\n")
    info = json.loads(proc.stdout)
    assert info["stored_chunks"] == [1, 3, 8, 8] and info["stored_shards"] == [2, 3, 8, 8]


def test_help_imports_nothing_heavy():
    # `stemdask --help` is fast because the package imports its modules on first use
    code = (
        "import sys, stemdask.cli; stemdask.cli.build_parser(); print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    mods = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=os.environ)
    loaded = set(eval(mods.stdout))
    assert not loaded & {"dask", "xarray", "zarr", "numba", "distributed", "numpy"}, loaded
