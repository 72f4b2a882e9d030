"""HDF5 files: a dataset by path, EMD 1.0 / py4DSTEM files, and DECTRIS ARINA masters.

Datasets are read lazily through :class:`~stemdask.io.sources.HDF5Source`, so
nothing is loaded until a chunk is computed, on whichever worker computes it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..dataset import default_chunks, from_array
from ..errors import FileFormatError, bad_value
from .calibration import detector_axis, scan_axis
from .sources import HDF5Source, frames_to_scan


def _h5py():
    import h5py
    import hdf5plugin  # noqa: F401  (compression filters used by detectors)

    return h5py


def _lazy(path: Path, name: str, dset: Any, frame_stack: bool = False) -> da.Array:
    source = HDF5Source(str(path), name, tuple(dset.shape), dset.dtype)
    if frame_stack:
        n = max(1, (64 * 2**20) // max(int(np.prod(dset.shape[1:])) * dset.dtype.itemsize, 1))
        chunks: Any = (n, -1, -1)
    else:
        chunks = default_chunks(dset.shape, dset.dtype.itemsize)
    return da.from_array(
        source,
        chunks=chunks,
        asarray=False,
        meta=np.empty((0,) * dset.ndim, source.dtype),
        name=f"h5-{path.name}-{name}-{os.stat(path).st_mtime_ns}",
    )


def _datasets(f: Any) -> dict[str, Any]:
    h5py = _h5py()
    found: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found[name] = obj

    f.visititems(visit)
    return found


def is_arina_master(f: Any) -> bool:
    """True for a DECTRIS master file: /entry/data holds data_NNNNNN links."""
    group = f.get("entry/data")
    return group is not None and len(group) > 0 and all(k.startswith("data_") for k in group.keys())


def _emd_groups(f: Any) -> list[str]:
    h5py = _h5py()
    groups: list[str] = []

    def visit(name: str, obj: Any) -> None:
        tag = obj.attrs.get("emd_group_type") if isinstance(obj, h5py.Group) else None
        if tag is not None and "data" in obj:
            tag = tag.decode() if isinstance(tag, bytes) else tag
            if str(tag) in ("1", "array"):
                groups.append(name)

    f.visititems(visit)
    return groups


def open_hdf5(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    scan_shape: Any = None,
    chunks: Any = None,
    **calibration: Any,
) -> xr.DataArray:
    """Open 4D-STEM data in an HDF5 file lazily.

    Parameters
    ----------
    path : path
    dataset : str, optional
        Path of the dataset inside the file. Default: an ARINA master's
        frames, the 4-D array of an EMD 1.0 (py4DSTEM) file, or the only 4-D
        dataset in the file.
    scan_shape : (int, int), optional
        Scan of a 3-D frame stack (ARINA files default to a square scan, or
        the shape in the acquisition's metadata file).
    **calibration
        Keywords of :func:`stemdask.from_array`; they override the file's.
    """
    h5py = _h5py()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no HDF5 file at {str(path)!r}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise FileFormatError(f"{str(path)!r} is not a readable HDF5 file: {err}") from err
    with f:
        if dataset is None and is_arina_master(f):
            return _open_arina(path, f, scan_shape, chunks, calibration)
        if dataset is None:
            emd = _emd_groups(f)
            four = [g for g in emd if f[g]["data"].ndim == 4]
            if four:
                return _open_emd(path, f, four[0], chunks, calibration)
            candidates = {k: v for k, v in _datasets(f).items() if v.ndim == 4}
            if len(candidates) != 1:
                shapes = {k: v.shape for k, v in _datasets(f).items() if v.ndim >= 2}
                raise FileFormatError(
                    f"{str(path)!r} holds {len(candidates)} 4-D datasets; pass dataset=... (datasets found: {shapes})"
                )
            dataset = next(iter(candidates))
        if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
            raise bad_value("dataset", dataset, f"a dataset path inside {str(path)!r}")
        dset = f[dataset]
        if dset.ndim == 3 and scan_shape is not None:
            lazy = frames_to_scan(_lazy(path, dataset, dset, frame_stack=True), _scan_shape(scan_shape, dset.shape[0]))
        elif dset.ndim != 4:
            raise FileFormatError(
                f"dataset {dataset!r} in {str(path)!r} has shape {dset.shape} ({dset.ndim}-D): expected "
                f"4-D (scan_y, scan_x, k_y, k_x), or a 3-D frame stack with scan_shape=..."
            )
        else:
            lazy = _lazy(path, dataset, dset)
        if dset.dtype.kind not in "uif":
            raise FileFormatError(f"dataset {dataset!r} has dtype {dset.dtype}: expected numeric pixels")
    calibration.setdefault("source", f"{path}:{dataset}")
    return from_array(lazy, chunks=chunks, **calibration)


def _scan_shape(scan_shape: Any, n_frames: int) -> tuple[int, int]:
    try:
        ny, nx = (int(s) for s in scan_shape)
    except (TypeError, ValueError):
        raise bad_value("scan_shape", scan_shape, "(scan_y, scan_x)") from None
    if ny * nx != n_frames or ny < 1:
        raise bad_value("scan_shape", scan_shape, f"a scan of exactly {n_frames} positions")
    return ny, nx


def _attr(obj: Any, key: str) -> Any:
    value = obj.attrs.get(key)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.size == 1:
        return value.item()
    return value


def _open_emd(path: Path, f: Any, group: str, chunks: Any, calibration: dict) -> xr.DataArray:
    """EMD 1.0 (and py4DSTEM/emdfile): ``data`` plus ``dim1..dim4`` vectors."""
    node = f[group]
    found: dict[str, Any] = {}
    dims = []
    for i in range(1, 5):
        vec = node.get(f"dim{i}")
        if vec is None or vec.ndim != 1 or vec.shape[0] < 1:
            dims.append(None)
            continue
        values = np.asarray(vec[()], dtype=np.float64)
        scale = float(values[1] - values[0]) if values.size > 1 else float("nan")
        dims.append((scale, float(values[0]), _attr(vec, "units")))
    steps = [scan_axis(d[0], d[2]) if d else None for d in dims[:2]]
    if all(s is not None for s in steps):
        found["scan_step_A"] = steps
    energy = calibration.get("energy_ev")
    det = [detector_axis(d[0], d[1], d[2], energy) if d else (None, None) for d in dims[2:]]
    if all(p is not None for p, _ in det):
        found["detector_pixel_mrad"] = [p for p, _ in det]
        if all(c is not None and math.isfinite(c) for _, c in det):
            found["beam_center_px"] = [c for _, c in det]
    found["source"] = f"{path}:{group}/data"
    found.update(calibration)
    return from_array(
        _lazy(path, f"{group}/data", node["data"]), chunks=chunks, attrs={"file_format": "EMD 1.0"}, **found
    )


def _open_arina(path: Path, f: Any, scan_shape: Any, chunks: Any, calibration: dict) -> xr.DataArray:
    """A DECTRIS ARINA master file and its linked data files (bitshuffle-LZ4)."""
    names = sorted(f["entry/data"].keys())
    stacks = [_lazy(path, f"entry/data/{n}", f[f"entry/data/{n}"], frame_stack=True) for n in names]
    frames = da.concatenate(stacks, axis=0) if len(stacks) > 1 else stacks[0]
    found: dict[str, Any] = {}
    meta = _arina_metadata(path)
    det = f.get("entry/instrument/detector")
    if meta:
        if scan_shape is None and meta.get("scan_shape") and math.prod(meta["scan_shape"]) == frames.shape[0]:
            scan_shape = meta["scan_shape"]
        found.update({k: v for k, v in meta.items() if k != "scan_shape"})
        length = meta.get("camera_length_m")
        if length and det is not None and "x_pixel_size" in det:
            found.pop("camera_length_m")
            pixel_m = [float(det["y_pixel_size"][()]), float(det["x_pixel_size"][()])]
            found["detector_pixel_mrad"] = [p / length * 1e3 for p in pixel_m]
        found.pop("camera_length_m", None)
    if scan_shape is None:
        side = math.isqrt(frames.shape[0])
        if side * side != frames.shape[0]:
            raise bad_value(
                "scan_shape", None, f"the (scan_y, scan_x) of the {frames.shape[0]} frames (not a square number)"
            )
        scan_shape = (side, side)
    data = frames_to_scan(frames, _scan_shape(scan_shape, frames.shape[0]))
    found["source"] = str(path)
    found.update(calibration)
    return from_array(data, chunks=chunks, attrs={"file_format": "DECTRIS ARINA"}, **found)


def _arina_metadata(master: Path) -> dict[str, Any]:
    """Calibration from the acquisition's ``<name>.h5`` "STEM Metadata" next to the master."""
    h5py = _h5py()
    meta_path = master.with_name(master.name.replace("_master.h5", ".h5"))
    if meta_path == master or not meta_path.is_file():
        return {}
    with h5py.File(meta_path, "r") as f:
        if "STEM Metadata" not in f:
            return {}
        a = f["STEM Metadata"].attrs

        def scalar(key: str) -> float | None:
            if key not in a:
                return None
            value = float(np.asarray(a[key]).ravel()[0])
            return value if math.isfinite(value) and value > 0 else None

        out: dict[str, Any] = {}
        if "NumPixelsY" in a and "NumPixelsX" in a:
            out["scan_shape"] = (
                int(np.asarray(a["NumPixelsY"]).ravel()[0]),
                int(np.asarray(a["NumPixelsX"]).ravel()[0]),
            )
        if scalar("High Tension"):
            out["energy_ev"] = scalar("High Tension")
        if scalar("Pixel Size"):
            out["scan_step_A"] = scalar("Pixel Size") * 10.0  # nm -> Å
        if scalar("Camera Length"):
            out["camera_length_m"] = scalar("Camera Length")
        if "Rotation" in a:
            out["scan_rotation_deg"] = float(np.asarray(a["Rotation"]).ravel()[0])
        return out


def linked_files(path: str | os.PathLike) -> list[Path]:
    """The files that external links of an HDF5 file point to (that exist), e.g. ARINA's data files.

    A master file holds metadata; its frames are in these files, so they are
    what a dataset occupies on disk.
    """
    h5py = _h5py()
    path = Path(path)
    found: dict[Path, None] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str) -> None:
            link = f.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                target = Path(link.filename)
                target = target if target.is_absolute() else path.parent / target
                if target.is_file():
                    found[target.resolve()] = None

        f.visit_links(visit)
    return list(found)
