"""The stempy / 4D Camera sparse HDF5 format: reading and writing its electron events.

Layout (as stempy writes it)::

    file.h5
      attrs: version (3), stemdask_attrs (JSON calibration, ignored by stempy)
      electron_events/
        frames           1-D variable-length uint32: the linear detector indices
                         of each frame, C order of the scan; version 3 holds
                         frames_per_position frames per position; attrs
                         Nx/Ny = frame_shape[0]/[1]
        scan_positions   position number of each frame; attrs Nx (scan width),
                         Ny (scan height)

This module deals in plain arrays (a tile's ``indices`` and per-frame
``offsets``) so that ``io`` does not depend on ``stemdask.events``;
``stemdask.events.open_stempy`` / ``write_stempy`` wrap them as event blocks
and register the format with :func:`stemdask.io.layouts.register_file_reader`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..checks import tile as check_tile
from ..errors import FileFormatError, bad_value
from .publish import atomic_path

STEMPY_VERSION = 3

#: one tile's events: (y0, rows, x0, cols), linear indices, per-frame offsets (rows * cols + 1)
Tile = tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]


def is_stempy(path: str | os.PathLike) -> bool:
    """True for an HDF5 file with an ``electron_events`` group."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "electron_events" in f
    except OSError:
        return False  # the HDF5 reader reports what is wrong with the file


def read_meta(path: str) -> dict[str, Any]:
    """Version, scan and frame shapes (None when not recorded), frame count and stored attrs."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "electron_events/frames" not in f or "electron_events/scan_positions" not in f:
                raise FileFormatError(
                    f"{path!r} has no electron_events/frames and scan_positions (not a stempy sparse file)"
                )
            frames = f["electron_events/frames"]
            positions = f["electron_events/scan_positions"]
            if frames.ndim != 1 or frames.dtype.kind != "O":
                raise FileFormatError(
                    f"{path!r}: electron_events/frames is {frames.dtype} of shape "
                    f"{frames.shape}, expected 1-D variable-length integers"
                )
            return {
                "version": int(f.attrs.get("version", 1)),
                "scan": (int(positions.attrs["Ny"]), int(positions.attrs["Nx"]))
                if "Nx" in positions.attrs and "Ny" in positions.attrs
                else None,
                "frame": (int(frames.attrs["Nx"]), int(frames.attrs["Ny"]))
                if "Nx" in frames.attrs and "Ny" in frames.attrs
                else None,
                "n_frames": int(frames.shape[0]),
                "n_positions": int(positions.shape[0]),
                "attrs": json.loads(f.attrs["stemdask_attrs"]) if "stemdask_attrs" in f.attrs else {},
            }
    except FileFormatError:
        raise
    except OSError as err:
        raise FileFormatError(f"cannot read {path!r} as HDF5: {err}") from err


def _integers(path: str, indices: np.ndarray) -> np.ndarray:
    if indices.dtype.kind not in "ui":
        raise FileFormatError(f"{path!r}: electron events of dtype {indices.dtype}, expected integers")
    return indices


def read_tile(
    path: str, y0: int, rows: int, x0: int, cols: int, nx: int, per_position: int
) -> tuple[np.ndarray, np.ndarray]:
    """Events of a scan tile of a version-3 file: ``(indices, offsets)``.

    Several frames at one position are joined (their counts add).
    """
    import h5py

    parts, counts = [], []
    try:
        with h5py.File(path, "r") as f:
            frames = f["electron_events/frames"]
            for r in range(rows):
                first = ((y0 + r) * nx + x0) * per_position
                row = frames[first : first + cols * per_position]
                if len(row) != cols * per_position:
                    raise FileFormatError(f"{path!r} is truncated: scan row {y0 + r} lacks frames")
                for c in range(cols):
                    n = 0
                    for events in row[c * per_position : (c + 1) * per_position]:
                        parts.append(np.asarray(events))
                        n += len(events)
                    counts.append(n)
    except FileFormatError:
        raise
    except OSError as err:
        raise FileFormatError(f"cannot read events of {path!r}: {err}") from err
    indices = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
    return _integers(path, indices), np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])


def read_placed(path: str, scan: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Events of an older file (frames placed by ``scan_positions``), all at once, in scan order."""
    import h5py

    with h5py.File(path, "r") as f:
        frames = f["electron_events/frames"][...]
        positions = np.asarray(f["electron_events/scan_positions"][...], np.int64)
    n = scan[0] * scan[1]
    if positions.shape[0] != frames.shape[0]:
        raise FileFormatError(f"{path!r}: {frames.shape[0]} frames but {positions.shape[0]} scan positions")
    if positions.size and (positions.min() < 0 or positions.max() >= n):
        raise FileFormatError(f"{path!r}: scan positions outside the {scan} scan")
    order = np.argsort(positions, kind="stable")
    counts = (
        np.bincount(positions, weights=[len(e) for e in frames], minlength=n).astype(np.int64)
        if frames.size
        else np.zeros(n, np.int64)
    )
    parts = [np.asarray(frames[i]) for i in order]
    indices = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
    return _integers(path, indices), np.concatenate([[0], np.cumsum(counts)])


def write_file(
    path: str | os.PathLike,
    scan_shape: tuple[int, int],
    frame_shape: tuple[int, int],
    tiles: Iterable[Tile],
    *,
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> str:
    """Write events tile by tile as a version-3 stempy file, atomically.

    HDF5 files cannot be written by several processes at once, so the tiles
    arrive here (an iterator computing them a few at a time keeps memory
    bounded); the file is written under a temporary name and renamed into
    place when complete.
    """
    import h5py

    ny, nx = (int(s) for s in scan_shape)
    ky, kx = (int(s) for s in frame_shape)
    with atomic_path(path, overwrite=overwrite) as (tmp, final), h5py.File(tmp, "w") as f:
        f.attrs["version"] = STEMPY_VERSION
        f.attrs["stemdask_attrs"] = json.dumps(attrs or {})
        group = f.create_group("electron_events")
        positions = group.create_dataset("scan_positions", data=np.arange(ny * nx, dtype=np.int32))
        positions.attrs["Nx"] = nx
        positions.attrs["Ny"] = ny
        frames = group.create_dataset("frames", (ny * nx,), dtype=h5py.vlen_dtype(np.uint32))
        frames.attrs["Nx"] = ky
        frames.attrs["Ny"] = kx
        for (y0, rows, x0, cols), indices, offsets in tiles:
            indices = np.asarray(indices).astype(np.uint32)
            for r in range(rows):
                first = (y0 + r) * nx + x0
                for c in range(cols):
                    fr = r * cols + c
                    # one element at a time: h5py would broadcast a row of equal-length arrays
                    frames[first + c] = indices[offsets[fr] : offsets[fr + 1]]
    return str(final)


def resolve_shape(name: str, given: Any, stored: Any, path: str) -> tuple[int, int]:
    """A (y, x) shape: the one given (checked against the file's), else the file's."""
    if given is not None:
        shape = tuple(int(s) for s in given)
        if len(shape) != 2 or min(shape) < 1:
            raise bad_value(name, given, "a (y, x) pair of positive integers")
        if stored is not None and tuple(stored) != shape:
            raise bad_value(name, given, f"the {name} {tuple(stored)} the file {path!r} records")
        return shape
    if stored is None:
        raise FileFormatError(f"{path!r} does not record its {name} (Nx/Ny attrs): pass {name}=(y, x)")
    return tuple(stored)


def scan_tile(chunks: Any, scan: tuple[int, int]) -> tuple[int, int]:
    """Scan tile of one read task: ``chunks``, or about 1024 positions of whole rows."""
    if chunks is None:
        ny, nx = scan
        rows = max(1, min(ny, 1024 // max(nx, 1)))
        return (rows, nx) if nx <= 1024 else (1, 1024)
    return check_tile("chunks", chunks)


def split(n: int, step: int) -> tuple[int, ...]:
    """Chunk sizes of ``n`` in steps of ``step`` (the last one shorter)."""
    step = min(step, n)
    return tuple([step] * (n // step) + ([n % step] if n % step else []))


def file_exists(path: str | os.PathLike) -> str:
    """The absolute path of an existing file (FileNotFoundError otherwise)."""
    p = str(Path(path).expanduser().absolute())
    if not Path(p).exists():
        raise FileNotFoundError(f"no file at {p!r}")
    return p


__all__ = [
    "STEMPY_VERSION",
    "is_stempy",
    "read_meta",
    "read_placed",
    "read_tile",
    "resolve_shape",
    "scan_tile",
    "split",
    "write_file",
]
