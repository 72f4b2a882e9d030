"""Datasets as zarr v3 stores: save, open, and write an acquisition as it arrives.

Layout of a store written by stemdask (a zarr v3 group)::

    store/
      zarr.json            group attrs: stemdask_format, stemdask_layout,
                           stemdask_complete (True only once fully written)
      intensity/           the 4-D array, sharded: each shard is one file
                           holding many compressed inner chunks
      scan_y, scan_x,      coordinates (Å / mrad, with units attrs)
      k_y, k_x

A write never leaves a store that opens as complete unless it finished:
local stores are written under a temporary sibling name and renamed into
place (atomic on POSIX); every store carries ``stemdask_complete``, set last,
and :func:`open_zarr` refuses a store where it is false.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from ..codecs import resolve_codec
from ..dataset import DIMS, default_chunks, from_array, validate
from ..errors import FileFormatError, IncompleteStoreError, bad_type, bad_value

FORMAT_VERSION = 1
COMPLETE_ATTR = "stemdask_complete"
LAYOUT_ATTR = "stemdask_layout"
FORMAT_ATTR = "stemdask_format"

#: bytes of one inner (compressed, randomly readable) chunk
INNER_CHUNK_BYTES = 8 * 2**20
#: bytes of one shard (one file; one dask task writes one shard)
SHARD_BYTES = 128 * 2**20


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def _is_local(store: Any) -> bool:
    return isinstance(store, (str, os.PathLike)) and "://" not in str(store)


def jsonable(value: Any) -> Any:
    """Attrs as plain JSON types (numpy scalars and arrays, tuples, nested dicts)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _scan_tile(name: str, value: Sequence[int] | None, scan_shape: tuple[int, int]) -> tuple[int, int] | None:
    if value is None:
        return None
    tile = tuple(value)
    if len(tile) == 4:
        tile = tile[:2]
    if len(tile) != 2 or any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1 for t in tile):
        raise bad_value(name, value, "(scan_y, scan_x) positive integer tile sizes (frames stay whole)")
    return int(tile[0]), int(tile[1])


def storage_layout(
    shape: Sequence[int], itemsize: int, chunks: Sequence[int] | None = None,
    shards: Sequence[int] | bool | None = None, *, min_chunk_frames: int = 1,
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int] | None]:
    """Inner-chunk and shard shapes (4-D) for a dataset of ``shape``.

    Inner chunks are whole frames, tiles of about 8 MiB (or of at least
    ``min_chunk_frames`` frames, as a codec asks); shards group inner chunks
    into files of about 128 MiB (``shards=False`` disables sharding). A shard
    is a whole number of inner chunks.
    """
    ny, nx, ky, kx = (int(s) for s in shape)
    target = max(INNER_CHUNK_BYTES, min_chunk_frames * ky * kx * itemsize)
    inner = _scan_tile("chunks", chunks, (ny, nx)) or default_chunks(shape, itemsize, target)[:2]
    inner = (min(inner[0], ny), min(inner[1], nx))
    if shards is False:
        return (*inner, ky, kx), None
    if shards is None or shards is True:
        per_chunk = inner[0] * inner[1] * ky * kx * itemsize
        n = max(SHARD_BYTES // max(per_chunk, 1), 1)
        # grow along scan_x first (contiguous rows), then scan_y
        mx = min(n, math.ceil(nx / inner[1]))
        my = min(max(n // mx, 1), math.ceil(ny / inner[0]))
        shard = (inner[0] * my, inner[1] * mx)
    else:
        shard = _scan_tile("shards", shards, (ny, nx))
        if shard[0] % inner[0] or shard[1] % inner[1]:
            raise bad_value("shards", shards, f"multiples of the inner chunks {inner}")
    return (*inner, ky, kx), (*shard, ky, kx)


def _encoding(data: xr.DataArray, name: str, codec: Any, chunks: Any, shards: Any) -> tuple[dict, tuple]:
    choice = resolve_codec(codec)
    inner, shard = storage_layout(data.shape, data.dtype.itemsize, chunks, shards,
                                  min_chunk_frames=choice.min_chunk_frames)
    enc: dict[str, Any] = {"chunks": inner, "compressors": list(choice.compressors) or None}
    if shard is not None:
        enc["shards"] = shard
    if choice.serializer != "auto":
        enc["serializer"] = choice.serializer
    return {name: enc}, (shard or inner)


def _publish(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move a finished store into place, replacing an old one only now."""
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"store {str(final)!r} exists: pass overwrite=True to replace it")
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def _remove_partial(tmp: Path) -> None:
    """Remove a failed write's temporary store.

    Tasks already running when another one failed may still be writing
    shards for a moment after the exception reaches us, so retry briefly.
    The temporary name never opens as a dataset either way.
    """
    for _ in range(20):
        shutil.rmtree(tmp, ignore_errors=True)
        time.sleep(0.05)
        if not tmp.exists():
            return


@contextmanager
def atomic_directory(store: str | os.PathLike, *, overwrite: bool = False) -> Iterator[tuple[Path, Path]]:
    """Write a local store under a temporary sibling name; publish it only on success.

    Yields ``(tmp, final)``: write everything into ``tmp``. When the block
    ends normally ``tmp`` is renamed to ``final`` (an existing store there is
    replaced only now, when ``overwrite``); on any exception ``tmp`` is
    removed and ``final`` is untouched.
    """
    final = Path(store).expanduser().absolute()
    if final.exists() and not overwrite:
        raise FileExistsError(f"store {str(final)!r} exists: pass overwrite=True to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp, final
        _publish(tmp, final, overwrite)
    except BaseException:
        _remove_partial(tmp)
        raise


def _mark(store: Any, **attrs: Any) -> None:
    group = zarr.open_group(store, mode="r+", zarr_format=3)
    group.attrs.update(attrs)


# ----------------------------------------------------------------------------
# save / open
# ----------------------------------------------------------------------------
def save(
    data: xr.DataArray,
    store: str | os.PathLike | Any,
    *,
    codec: Any = None,
    chunks: Sequence[int] | None = None,
    shards: Sequence[int] | bool | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> str | Any:
    """Write a dataset to a sharded zarr v3 store, atomically.

    Parameters
    ----------
    data : xarray.DataArray
        A stemdask dataset (see :func:`stemdask.validate`). Counted data
        (electron events) are written as an event store
        (:func:`stemdask.events.save_events`; ``codec`` then names an event
        codec).
    store : path or zarr store
        Destination. A local path is written under a temporary name and
        renamed into place when complete.
    codec : str, zarr codec or list of codecs, optional
        A name from ``stemdask.codecs.CODECS`` (``"blosc"`` by default,
        ``"zstd"``, ``"gzip"``, ``"none"``, ``"histogram"`` ...) or zarr v3
        codec objects.
    chunks : (int, int), optional
        Inner chunk tile (scan_y, scan_x) in probe positions; frames stay
        whole. Default: about 8 MiB per chunk.
    shards : (int, int) or False, optional
        Shard tile in probe positions (a multiple of ``chunks``); each shard
        is one file. Default: about 128 MiB per shard. ``False``: no sharding.
    overwrite : bool
        Replace an existing store (only once the new one is complete).
    progress : bool
        Show a progress bar while writing.

    Returns
    -------
    The store (path as str for local stores).
    """
    validate(data)
    from ..events.array import is_counted

    if is_counted(data):
        # electron events keep their own layout (indices + offsets), never densified
        if chunks is not None or shards not in (None, True):
            raise bad_value("chunks/shards", (chunks, shards),
                            "None for counted data: its event blocks are its storage units")
        from ..events.storage import save_events

        return save_events(data, store, overwrite=overwrite,
                           **({"codec": codec} if codec is not None else {}))
    name = str(data.name or "intensity")
    if name in DIMS:
        raise bad_value("data.name", name, f"a name other than the dims {DIMS}")
    encoding, write_tile = _encoding(data, name, codec, chunks, shards)
    # one dask task per shard: shards must never be written by two tasks
    arr = data.data if isinstance(data.data, da.Array) else da.from_array(data.data, chunks=-1)
    arr = arr.rechunk(write_tile)
    ds = xr.Dataset({name: (DIMS, arr, jsonable(dict(data.attrs)))},
                    coords={d: data.coords[d].variable.copy(deep=False) for d in DIMS})
    for d in DIMS:
        ds[d].attrs = jsonable(dict(data.coords[d].attrs))
    ds.attrs = {FORMAT_ATTR: FORMAT_VERSION, LAYOUT_ATTR: "dense", COMPLETE_ATTR: False,
                "stemdask_variable": name}

    from ..progress import compute_with_progress

    if _is_local(store):
        with atomic_directory(store, overwrite=overwrite) as (tmp, final):
            delayed = ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False,
                                 encoding=encoding, compute=False)
            compute_with_progress(delayed, progress=progress, description=f"writing {final.name}")
            _mark(tmp, **{COMPLETE_ATTR: True})
        return str(final)
    delayed = ds.to_zarr(store, mode="w" if overwrite else "w-", zarr_format=3, consolidated=False,
                         encoding=encoding, compute=False)
    compute_with_progress(delayed, progress=progress, description="writing store")
    _mark(store, **{COMPLETE_ATTR: True})
    return store


def read_group_attrs(store: Any) -> dict[str, Any]:
    """The root attrs of a zarr store (``{}`` for a bare array)."""
    try:
        node = zarr.open(store, mode="r")
    except FileNotFoundError:
        raise  # not a format problem: let it through unchanged
    except Exception as err:  # zarr raises several types for a non-zarr path
        raise FileFormatError(f"{store!r} is not a readable zarr store: {err}") from err
    return dict(node.attrs) if isinstance(node, zarr.Group) else {}


def open_zarr(
    store: Any,
    *,
    chunks: Sequence[int] | None = None,
    allow_incomplete: bool = False,
    variable: str | None = None,
    **calibration: Any,
) -> xr.DataArray:
    """Open a zarr store as a lazy stemdask dataset.

    Parameters
    ----------
    store : path or zarr store
    chunks : (int, int), optional
        Dask tile (scan_y, scan_x); default one shard (or inner chunk).
    allow_incomplete : bool
        Open a store whose write did not finish (its missing chunks read as
        the fill value). Only for recovery.
    variable : str, optional
        Array to open in a store not written by stemdask (default: the only
        4-D array).
    **calibration
        For stores not written by stemdask: calibration passed to
        :func:`stemdask.from_array`.

    Raises
    ------
    IncompleteStoreError
        When the store's write did not complete.
    """
    if _is_local(store) and not Path(store).exists():
        raise FileNotFoundError(f"no zarr store at {str(store)!r}")
    attrs = read_group_attrs(store)
    if LAYOUT_ATTR in attrs or COMPLETE_ATTR in attrs:
        if not attrs.get(COMPLETE_ATTR, False) and not allow_incomplete:
            raise IncompleteStoreError(
                f"store {str(store)!r} was not completely written (interrupted or failed write; "
                f"{COMPLETE_ATTR} is false); pass allow_incomplete=True to read what is there")
        if attrs.get(FORMAT_ATTR, 0) > FORMAT_VERSION:
            raise FileFormatError(
                f"store {str(store)!r} has stemdask format {attrs[FORMAT_ATTR]}, newer than this "
                f"stemdask reads ({FORMAT_VERSION}): upgrade stemdask")
        if calibration:
            raise bad_value("calibration", sorted(calibration),
                            "no calibration keywords for a store written by stemdask "
                            "(use stemdask.calibrate on the result)")
        return _open_stemdask_store(store, attrs, chunks)
    return _open_foreign_store(store, chunks, variable, calibration)


def _open_stemdask_store(store: Any, attrs: dict, chunks: Sequence[int] | None) -> xr.DataArray:
    layout = attrs.get(LAYOUT_ATTR, "dense")
    if layout == "events":
        from ..events.storage import open_event_store

        return open_event_store(store, chunks=chunks)
    if layout != "dense":
        raise FileFormatError(f"store {str(store)!r} has layout {layout!r}, which this stemdask does not "
                              f"know (known: 'dense', 'events'): upgrade stemdask")
    name = attrs.get("stemdask_variable", "intensity")
    array = zarr.open_array(store, path=name, mode="r")
    tile = _scan_tile("chunks", chunks, array.shape[:2]) or _read_tile(array)
    ds = xr.open_zarr(store, zarr_format=3, consolidated=False,
                      chunks={"scan_y": tile[0], "scan_x": tile[1], "k_y": -1, "k_x": -1})
    out = ds[name]
    out.attrs = dict(out.attrs)
    out.encoding = {}
    return validate(out)


def _read_tile(array: zarr.Array) -> tuple[int, int]:
    """Default dask tile for reading: whole inner chunks, about one default chunk of data.

    Reads need not follow shards (zarr reads the inner chunks a task asks
    for), so a shard is split over several tasks and workers.
    """
    inner = array.chunks[:2]
    want = default_chunks(array.shape, array.dtype.itemsize)[:2]
    return (max(1, want[0] // inner[0]) * inner[0], max(1, want[1] // inner[1]) * inner[1])


def _open_foreign_store(store: Any, chunks: Any, variable: str | None, calibration: dict) -> xr.DataArray:
    node = zarr.open(store, mode="r")
    if isinstance(node, zarr.Array):
        array = node
    else:
        arrays = {k: v for k, v in node.arrays() if v.ndim == 4}
        if variable is not None:
            if variable not in arrays:
                raise bad_value("variable", variable, f"one of the 4-D arrays {sorted(arrays)}")
            array = arrays[variable]
        elif len(arrays) == 1:
            array = next(iter(arrays.values()))
        else:
            raise FileFormatError(
                f"store {str(store)!r} holds {len(arrays)} 4-D arrays {sorted(arrays)}: "
                f"choose one with variable=...")
    if array.ndim != 4:
        raise FileFormatError(f"array in {str(store)!r} has shape {array.shape}: expected 4-D "
                              f"(scan_y, scan_x, k_y, k_x)")
    lazy = da.from_zarr(array)
    return from_array(lazy, chunks=chunks, source=str(store), **calibration)


# ----------------------------------------------------------------------------
# incremental writes (an acquisition stored row by row)
# ----------------------------------------------------------------------------
class DatasetWriter:
    """Write a dataset into a zarr v3 store piece by piece, as it is acquired.

    The store is created up front with its calibration and coordinates and
    marked incomplete; :meth:`write` stores frames at a scan region,
    :meth:`append` adds scan rows at the end (the store grows), and
    :meth:`close` marks it complete. A writer that is never closed (a crashed
    acquisition) leaves a store that :func:`open_zarr` refuses.

    Parameters
    ----------
    store : path
        Destination (must not exist unless ``overwrite``).
    scan_shape : (int, int)
        Probe positions (scan_y, scan_x); ``scan_y`` may be 0 when rows will
        be appended.
    detector_shape : (int, int)
        Frame shape in pixels.
    dtype : numpy dtype
    codec, chunks, shards
        As for :func:`save`; ``chunks`` defaults to one scan row.
    **calibration
        Keywords of :func:`stemdask.from_array` (energy_ev, scan_step_A, ...).

    Examples
    --------
    >>> with DatasetWriter(path, scan_shape=(0, 64), detector_shape=(128, 128),
    ...                    dtype="uint16", scan_step_A=0.4) as writer:  # doctest: +SKIP
    ...     for row in acquisition:
    ...         writer.append(row[np.newaxis])
    """

    def __init__(self, store: str | os.PathLike, *, scan_shape: Sequence[int],
                 detector_shape: Sequence[int], dtype: Any, codec: Any = None,
                 chunks: Sequence[int] | None = None, shards: Sequence[int] | bool | None = None,
                 overwrite: bool = False, name: str = "intensity", **calibration: Any):
        if not _is_local(store):
            raise bad_type("store", store, "a local path for incremental writes")
        self.path = Path(store).expanduser().absolute()
        if self.path.exists():
            if not overwrite:
                raise FileExistsError(f"store {str(self.path)!r} exists: pass overwrite=True to replace it")
            shutil.rmtree(self.path)
        ny, nx = (int(s) for s in scan_shape)
        ky, kx = (int(s) for s in detector_shape)
        if ny < 0 or nx < 1 or ky < 1 or kx < 1:
            raise bad_value("scan_shape/detector_shape", (scan_shape, detector_shape),
                            "scan_y >= 0 and positive scan_x, k_y, k_x")
        self.dtype = np.dtype(dtype)
        self.name = name
        template = from_array(da.zeros((max(ny, 1), nx, ky, kx), dtype=self.dtype, chunks=(1, nx, ky, kx)),
                              name=name, source=str(self.path), **calibration)
        self._step_y = template.attrs.get("scan_step_A", [None])[0]
        self.attrs = dict(template.attrs)
        chunks = chunks or (1, nx)
        encoding, _ = _encoding(template, name, codec, chunks, shards)
        enc = encoding[name]
        # zarr directly: rows arrive one at a time, so shards are read-modify-written in order
        group = zarr.open_group(self.path, mode="w-", zarr_format=3)
        group.attrs.update({FORMAT_ATTR: FORMAT_VERSION, LAYOUT_ATTR: "dense", COMPLETE_ATTR: False,
                            "stemdask_variable": name})
        self._array = group.create_array(
            name, shape=(ny, nx, ky, kx), dtype=self.dtype, chunks=enc["chunks"], shards=enc.get("shards"),
            compressors=enc["compressors"], serializer=enc.get("serializer", "auto"),
            dimension_names=DIMS, attributes=jsonable(self.attrs), fill_value=0)
        for dim in DIMS:
            coord = template.coords[dim]
            values = coord.values if dim != "scan_y" else coord.values[:ny]
            arr = group.create_array(dim, shape=values.shape, dtype="float64",
                                     chunks=(max(values.size, 1024),), dimension_names=(dim,),
                                     attributes=jsonable(dict(coord.attrs)), compressors=None)
            arr[...] = values
        self._scan_y = group[DIMS[0]]
        self._group = group
        self.closed = False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array.shape)

    def _check(self, frames: Any, region: tuple[slice, slice]) -> np.ndarray:
        if self.closed:
            raise IncompleteStoreError(f"writer for {str(self.path)!r} is closed")
        frames = np.asarray(frames)
        expected = (region[0].stop - region[0].start, region[1].stop - region[1].start, *self.shape[2:])
        if frames.shape != expected:
            raise bad_value("frames", f"<array of shape {frames.shape}>", f"shape {expected}")
        if frames.dtype != self.dtype:
            if not np.can_cast(frames.dtype, self.dtype, casting="safe"):
                raise bad_value("frames", f"<array of dtype {frames.dtype}>",
                                f"dtype {self.dtype} (or one that casts to it without loss)")
            frames = frames.astype(self.dtype)
        return frames

    def write(self, frames: Any, scan_y: int | slice, scan_x: slice | None = None) -> None:
        """Store ``frames`` (scan_y, scan_x, k_y, k_x) at a scan region.

        ``scan_y`` is a row index or a slice; ``scan_x`` a slice (default
        the whole row).
        """
        ny, nx = self.shape[:2]
        ys = slice(scan_y, scan_y + 1) if isinstance(scan_y, (int, np.integer)) else scan_y
        xs = scan_x if scan_x is not None else slice(0, nx)
        ys = slice(*ys.indices(ny))
        xs = slice(*xs.indices(nx))
        if ys.step != 1 or xs.step != 1 or ys.stop <= ys.start or xs.stop <= xs.start:
            raise bad_value("scan region", (scan_y, scan_x), f"a non-empty contiguous region inside {(ny, nx)}")
        self._array[ys, xs] = self._check(frames, (ys, xs))

    def append(self, rows: Any) -> None:
        """Add whole scan rows ``(n_rows, scan_x, k_y, k_x)`` at the end of the scan."""
        rows = np.asarray(rows)
        ny = self.shape[0]
        n = rows.shape[0] if rows.ndim == 4 else -1
        if n < 1:
            raise bad_value("rows", f"<array of shape {rows.shape}>", f"shape (n_rows, {', '.join(map(str, self.shape[1:]))})")
        self._array.resize((ny + n, *self.shape[1:]))
        self._scan_y.resize((ny + n,))
        step = self._step_y if self._step_y is not None else 1.0
        self._scan_y[ny:] = np.arange(ny, ny + n, dtype=np.float64) * step
        self.write(rows, slice(ny, ny + n))

    def close(self) -> None:
        """Mark the store complete (it now opens with :func:`open_zarr`)."""
        if not self.closed:
            self._group.attrs.update({COMPLETE_ATTR: True})
            self.closed = True

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # a failed acquisition stays marked incomplete
        if exc_type is None:
            self.close()


def store_nbytes(path: str | os.PathLike) -> int:
    """Bytes a local store occupies on disk (all files)."""
    root = Path(path)
    if root.is_file():
        return root.stat().st_size
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


__all__ = ["DatasetWriter", "atomic_directory", "jsonable", "open_zarr", "read_group_attrs", "save", "storage_layout", "store_nbytes"]
