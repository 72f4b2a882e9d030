"""Raw binary and ``.npy`` files as lazy datasets (memory-mapped per chunk)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..dataset import from_array
from ..errors import FileFormatError, bad_value
from .sources import RawSource, file_size, frames_to_scan

_BYTE_ORDERS = {"native": "=", "=": "=", "little": "<", "<": "<", "big": ">", ">": ">"}


def _shape(shape: Any) -> tuple[int, ...]:
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise bad_value("shape", shape, "a tuple of positive integers") from None
    if len(dims) not in (3, 4) or any(s < 1 for s in dims):
        raise bad_value("shape", shape, "(scan_y, scan_x, k_y, k_x) or (n_frames, k_y, k_x) positive sizes")
    return dims


def open_raw(
    path: str | os.PathLike,
    *,
    shape: Sequence[int] | None = None,
    dtype: Any = None,
    byte_order: str = "native",
    header_bytes: int = 0,
    frame_header_bytes: int = 0,
    scan_shape: Sequence[int] | None = None,
    chunks: Any = None,
    allow_trailing_bytes: bool = False,
    **calibration: Any,
) -> xr.DataArray:
    """Open a raw binary file of frames as a lazy dataset.

    Parameters
    ----------
    path : path
    shape : (scan_y, scan_x, k_y, k_x) or (n_frames, k_y, k_x)
        Layout of the data in the file (with ``scan_shape`` for a stack).
    dtype : numpy dtype
        Pixel type as stored, e.g. ``"uint16"``.
    byte_order : {"native", "little", "big", "<", ">", "="}
        Byte order of the file; data become native-endian.
    header_bytes : int
        Bytes before the first frame.
    frame_header_bytes : int
        Bytes of a header before every frame.
    scan_shape : (int, int), optional
        For a frame stack: the scan it was recorded on.
    allow_trailing_bytes : bool
        Accept bytes after the last frame (otherwise the size must match).
    **calibration
        Keywords of :func:`stemdask.from_array`.

    Raises
    ------
    FileFormatError
        When the file is shorter (truncated) or longer than the layout says.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no raw file at {str(path)!r}")
    if shape is None or dtype is None:
        missing = "shape" if shape is None else "dtype"
        raise bad_value(
            missing,
            None,
            f"the layout of the raw file {str(path)!r}: shape=(scan_y, scan_x, k_y, k_x) (or (n_frames, k_y, k_x) "
            f"with scan_shape=(scan_y, scan_x)) and dtype=, e.g. 'uint16' (a raw file does not say)",
        )
    dims = _shape(shape)
    if byte_order not in _BYTE_ORDERS:
        raise bad_value("byte_order", byte_order, f"one of {sorted(_BYTE_ORDERS)}")
    try:
        file_dtype = np.dtype(dtype).newbyteorder(_BYTE_ORDERS[byte_order])
    except TypeError:
        raise bad_value("dtype", dtype, "a numpy dtype such as 'uint16'") from None
    if file_dtype.kind not in "uif":
        raise bad_value("dtype", dtype, "an integer or floating-point pixel type")
    for name, value in (("header_bytes", header_bytes), ("frame_header_bytes", frame_header_bytes)):
        if int(value) != value or value < 0:
            raise bad_value(name, value, "a non-negative integer number of bytes")
    source = RawSource(str(path), dims, file_dtype, int(header_bytes), int(frame_header_bytes))
    expected, actual = source.expected_bytes(), file_size(path)
    if actual < expected:
        raise FileFormatError(
            f"raw file {str(path)!r} is truncated: the layout shape={dims}, dtype={file_dtype.str}, "
            f"header_bytes={header_bytes}, frame_header_bytes={frame_header_bytes} needs {expected} bytes "
            f"but the file has {actual} ({(expected - actual)} missing)"
        )
    if actual > expected and not allow_trailing_bytes:
        raise FileFormatError(
            f"raw file {str(path)!r} has {actual} bytes but the layout shape={dims}, dtype={file_dtype.str}, "
            f"header_bytes={header_bytes} describes {expected}; check the layout or pass "
            f"allow_trailing_bytes=True"
        )
    lazy = da.from_array(source, chunks=(-1,) * len(dims), asarray=False, meta=np.empty((0,) * len(dims), source.dtype))
    if len(dims) == 3:
        if scan_shape is None:
            raise bad_value("scan_shape", None, f"the (scan_y, scan_x) of the {dims[0]} frames")
        ny, nx = (int(s) for s in scan_shape)
        if ny * nx != dims[0]:
            raise bad_value("scan_shape", scan_shape, f"a scan of {dims[0]} positions")
        lazy = frames_to_scan(
            da.from_array(source, chunks=(1024, -1, -1), asarray=False, meta=np.empty((0, 0, 0), source.dtype)),
            (ny, nx),
        )
    else:
        lazy = da.from_array(
            source, chunks=_frame_chunks(dims, source.dtype), asarray=False, meta=np.empty((0,) * 4, source.dtype)
        )
    calibration.setdefault("source", str(path))
    return from_array(lazy, chunks=chunks, **calibration)


def _frame_chunks(dims: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    from ..dataset import default_chunks

    return default_chunks(dims, dtype.itemsize)


def open_npy(
    path: str | os.PathLike, *, chunks: Any = None, scan_shape: Sequence[int] | None = None, **calibration: Any
) -> xr.DataArray:
    """Open a ``.npy`` file lazily (memory-mapped per chunk).

    A 3-D frame stack needs ``scan_shape=(scan_y, scan_x)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no .npy file at {str(path)!r}")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
        except ValueError as err:
            raise FileFormatError(f"{str(path)!r} is not a valid .npy file: {err}") from err
        offset = f.tell()
    if fortran:
        raise FileFormatError(f"{str(path)!r} is Fortran-ordered; save it C-ordered (np.ascontiguousarray)")
    if len(shape) not in (3, 4):
        raise FileFormatError(
            f"{str(path)!r} holds an array of shape {shape}: expected 4-D "
            f"(scan_y, scan_x, k_y, k_x) or a 3-D frame stack"
        )
    order = {"<": "little", ">": "big", "=": "native", "|": "native"}[dtype.byteorder]
    return open_raw(
        path,
        shape=shape,
        dtype=dtype.newbyteorder("="),
        byte_order=order,
        header_bytes=offset,
        chunks=chunks,
        scan_shape=scan_shape,
        **calibration,
    )
