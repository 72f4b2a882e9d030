"""Storage of electron events: stemdask zarr v3 stores and the stempy HDF5 layout.

zarr v3 layout (a group; ``open_dataset`` routes it here through the group
attr ``stemdask_layout == "events"``)::

    store/
      zarr.json        attrs: stemdask_format, stemdask_layout="events",
                       stemdask_complete (set last), shape, dtype, block
                       (scan tile of one dask block), n_events, name,
                       dataset_attrs (the calibration)
      indices/         1-D uint16/uint32: every electron's linear detector
                       index, block after block (blocks in C order of the
                       block grid, frames in C order inside a block); with
                       index_encoding "frame-delta" (the default) each value
                       is the gap from the previous electron of its frame
                       (frames sorted), which compresses 1.5-3x better;
                       sharded, blosc zstd with bit shuffling
      offsets/         1-D int64, one more than the frames, in the same
                       frame order: frame f owns indices[offsets[f]:offsets[f+1]]
      checksums/       1-D uint64 per block: sum of its indices and their
                       positions, so a missing or truncated shard (which zarr
                       would read as zeros) is caught when read
      scan_y, scan_x, k_y, k_x   coordinates with their units

A dask task reads one block: its slice of ``offsets``, then its run of
``indices`` (zarr reads only the inner chunks it needs).

The stempy / 4D Camera layout (``electron_events/frames``, a variable-length
``uint32`` dataset of the linear indices of each frame, and
``electron_events/scan_positions`` with attrs ``Nx``/``Ny`` = scan width and
height; ``frames`` attrs ``Nx``/``Ny`` hold ``frame_shape[0]``/``[1]`` as
stempy writes them; root attr ``version``) is read lazily by
:func:`open_stempy` and written by :func:`write_stempy`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from ..dataset import DIMS, from_array
from ..errors import FileFormatError, IncompleteStoreError, InvalidArgumentError, bad_type, bad_value
from ..io.zarr_store import COMPLETE_ATTR, FORMAT_ATTR, LAYOUT_ATTR, atomic_directory, jsonable
from .array import REPRESENTATION_ATTR, event_meta, require_counted, wrap_events
from .block import EventBlock, index_dtype

FORMAT_VERSION = 1
LAYOUT = "events"

#: electrons per inner zarr chunk of ``indices`` (~2 MiB of uint16)
INNER_EVENTS = 2**20
#: inner chunks per shard (one shard file holds this many inner chunks)
SHARD_CHUNKS = 32
#: blocks computed at once while writing
WRITE_BATCH = 8


def _checksum(indices: np.ndarray) -> int:
    """Order-sensitive sum of a block's indices (wraps modulo 2**64)."""
    if indices.size == 0:
        return 0
    pos = np.arange(1, indices.size + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return int((indices.astype(np.uint64) * pos).sum(dtype=np.uint64) + np.uint64(indices.size))


def _block_grid(chunks: tuple[tuple[int, ...], ...]) -> list[tuple[int, int, int, int]]:
    """(row0, rows, col0, cols) of every block in C order of the block grid."""
    ys = np.cumsum((0,) + chunks[0])
    xs = np.cumsum((0,) + chunks[1])
    return [(int(ys[i]), int(chunks[0][i]), int(xs[j]), int(chunks[1][j]))
            for i in range(len(chunks[0])) for j in range(len(chunks[1]))]


# ----------------------------------------------------------------------------
# zarr v3
# ----------------------------------------------------------------------------
def _compressors(name: str) -> list:
    """Bytes-to-bytes codecs of the stored event arrays for a codec name."""
    if name in ("delta-blosc", "blosc"):
        return [zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle=zarr.codecs.BloscShuffle.bitshuffle)]
    if name == "zstd":
        return [zarr.codecs.ZstdCodec(level=3)]
    return []


#: codec names save_events accepts (measured in benchmarks/bench_events.py)
EVENT_CODECS = ("delta-blosc", "blosc", "zstd", "none")


def frame_deltas(block: EventBlock) -> np.ndarray:
    """Indices as gaps from the previous electron of the same frame (first: the index).

    Events are sorted within their frames first (a frame is a set of hits,
    their order carries nothing), so the gaps are small non-negative numbers
    that compress far better than the indices (O(counts) when sorted).
    """
    from .rle import _sorted_within_frames

    indices = block.indices
    if not _sorted_within_frames(indices, block.offsets):
        indices = indices[np.lexsort((indices, block.frame_ids()))]
    deltas = np.empty_like(indices)
    if indices.size:
        deltas[0] = indices[0]
        np.subtract(indices[1:], indices[:-1], out=deltas[1:])
        starts = block.offsets[:-1][block.counts_per_frame() > 0]
        deltas[starts] = indices[starts]
    return deltas


def undo_frame_deltas(deltas: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Indices of :func:`frame_deltas` output (offsets relative to the block), O(counts)."""
    running = np.cumsum(deltas, dtype=np.int64)
    counts = offsets[1:] - offsets[:-1]
    base = np.where(offsets[:-1] > 0, running[np.maximum(offsets[:-1] - 1, 0)], 0) if running.size \
        else np.zeros(counts.size, np.int64)
    return running - np.repeat(base, counts)


def save_events(counted: xr.DataArray, store: str | os.PathLike, *, overwrite: bool = False,
                codec: str = "delta-blosc") -> str:
    """Write a counted dataset to a sharded zarr v3 store, atomically.

    Blocks are computed a few at a time and appended in order, so memory
    holds only a few blocks of events. The store is written under a
    temporary name, marked complete, then renamed into place.

    Parameters
    ----------
    counted : xarray.DataArray
        Counted dataset (event chunks); its dask blocks become the store's
        blocks.
    store : path
        Local destination directory.
    overwrite : bool
        Replace an existing store (only once the new one is complete).
    codec : {"delta-blosc", "blosc", "zstd", "none"}
        Compression of the events: ``"delta-blosc"`` (default) stores each
        index as the gap from the previous electron of its frame, then
        bit-shuffled zstd (blosc); ``"blosc"`` the same without gaps;
        ``"zstd"``; ``"none"``. See docs/events.md for bytes per electron.

    Returns
    -------
    str
        The store path.
    """
    counted = require_counted(counted, "counted")
    if codec not in EVENT_CODECS:
        raise bad_value("codec", codec, f"one of {EVENT_CODECS}")
    if not isinstance(store, (str, os.PathLike)) or "://" in str(store):
        raise bad_type("store", store, "a local directory path")
    with atomic_directory(store, overwrite=overwrite) as (tmp, final):
        _write_store(counted, tmp, codec)
    return str(final)


def _write_store(counted: xr.DataArray, path: Path, codec: str) -> None:
    arr = counted.data
    ny, nx, ky, kx = (int(s) for s in arr.shape)
    idx_dtype = index_dtype(ky * kx)
    group = zarr.open_group(path, mode="w-", zarr_format=3)
    group.attrs.update({FORMAT_ATTR: FORMAT_VERSION, LAYOUT_ATTR: LAYOUT, COMPLETE_ATTR: False})
    shard = INNER_EVENTS * SHARD_CHUNKS
    indices = group.create_array("indices", shape=(0,), dtype=idx_dtype, chunks=(INNER_EVENTS,),
                                 shards=(shard,), compressors=_compressors(codec), fill_value=0)
    deltas = codec == "delta-blosc"
    n_blocks = len(arr.chunks[0]) * len(arr.chunks[1])
    offsets = np.zeros(ny * nx + 1, np.int64)
    checksums = np.zeros(n_blocks, np.uint64)
    grid = _block_grid(arr.chunks[:2])
    blocks = arr.to_delayed().ravel()
    frame_pos, event_pos = 0, 0
    pending = np.zeros(0, idx_dtype)
    for start in range(0, n_blocks, WRITE_BATCH):
        computed = dask.compute(*blocks[start:start + WRITE_BATCH])
        for b, block in enumerate(computed):
            block = block.to_backend(np)
            _, rows, _, cols = grid[start + b]
            if block.scan_shape != (rows, cols):
                raise FileFormatError(f"block {start + b} has scan shape {block.scan_shape}, "
                                      f"expected {(rows, cols)}")
            f = block.n_frames
            offsets[frame_pos + 1:frame_pos + f + 1] = block.offsets[1:] + event_pos
            stored = frame_deltas(block) if deltas else block.indices
            checksums[start + b] = _checksum(stored)
            frame_pos += f
            event_pos += block.n_events
            pending = np.concatenate([pending, stored])
        # append whole shards only, so no shard is rewritten
        full = (pending.size // shard) * shard
        if full:
            _append(indices, pending[:full])
            pending = pending[full:]
    _append(indices, pending)
    off = group.create_array("offsets", shape=offsets.shape, dtype=np.int64,
                             chunks=(min(max(offsets.size, 1), 2**20),), compressors=_compressors(codec))
    off[...] = offsets
    chk = group.create_array("checksums", shape=checksums.shape, dtype=np.uint64,
                             chunks=(max(checksums.size, 1),), compressors=None)
    chk[...] = checksums
    for dim in DIMS:
        coord = counted.coords[dim]
        c = group.create_array(dim, shape=coord.shape, dtype=np.float64, chunks=(max(coord.size, 1),),
                               dimension_names=(dim,), compressors=None,
                               attributes=jsonable(dict(coord.attrs)))
        c[...] = np.asarray(coord.values, np.float64)
    attrs = {k: v for k, v in counted.attrs.items() if k != REPRESENTATION_ATTR}
    group.attrs.update({
        "shape": [ny, nx, ky, kx], "dtype": str(np.dtype(counted.dtype)),
        "chunks": [list(arr.chunks[0]), list(arr.chunks[1])], "n_events": int(event_pos),
        "name": str(counted.name or "intensity"), "dataset_attrs": jsonable(attrs), "codec": codec,
        "index_encoding": "frame-delta" if deltas else "linear",
    })
    group.attrs[COMPLETE_ATTR] = True


def _append(array: zarr.Array, values: np.ndarray) -> None:
    if values.size == 0:
        return
    start = array.shape[0]
    array.resize((start + values.size,))
    array[start:] = values


def _read_block(path: str, frame0: int, rows: int, cols: int, frame_shape: tuple[int, int],
                dtype: str, checksum: int, block_no: int, deltas: bool) -> EventBlock:
    try:
        group = zarr.open_group(path, mode="r", zarr_format=3)
        offsets = np.asarray(group["offsets"][frame0:frame0 + rows * cols + 1], np.int64)
        if offsets.size != rows * cols + 1:
            raise FileFormatError(f"store {path!r} is truncated: offsets of block {block_no} are missing")
        start, stop = int(offsets[0]), int(offsets[-1])
        indices_arr = group["indices"]
        if stop > indices_arr.shape[0] or start > stop:
            raise FileFormatError(f"store {path!r} is truncated or corrupt: block {block_no} needs "
                                  f"events {start}..{stop} of {indices_arr.shape[0]}")
        indices = np.asarray(indices_arr[start:stop])
    except FileFormatError:
        raise
    except Exception as err:
        raise FileFormatError(f"cannot read block {block_no} of event store {path!r}: {err}") from err
    if _checksum(indices) != checksum:
        raise FileFormatError(f"store {path!r} is truncated or corrupt: the events of block {block_no} "
                              f"do not match their checksum (a missing or damaged shard)")
    offsets = offsets - start
    if deltas:
        if offsets.size > 1 and np.any(offsets[1:] < offsets[:-1]):
            frame = int(np.argmax(offsets[1:] < offsets[:-1]))
            raise FileFormatError(f"store {path!r}, block {block_no}: malformed events: frame offsets "
                                  f"decrease at frame {frame}")
        indices = undo_frame_deltas(indices, offsets)
    try:
        return EventBlock(indices, offsets, (rows, cols), frame_shape, dtype)
    except InvalidArgumentError as err:
        raise FileFormatError(f"store {path!r}, block {block_no}: malformed events: {err}") from err


def open_event_store(store: str | os.PathLike, *, chunks: Sequence[int] | None = None,
                     allow_incomplete: bool = False, **kwargs: Any) -> xr.DataArray:
    """Open a zarr v3 event store as a lazy counted dataset.

    Parameters
    ----------
    store : path
        A store written by :func:`save_events`.
    chunks : (int, int), optional
        Scan tile of the dask blocks; default the blocks the store was
        written with (blocks are joined or split without densifying).
    allow_incomplete : bool
        Must stay False: an incomplete event store has no frame offsets.

    Raises
    ------
    IncompleteStoreError
        When the write did not finish.
    FileFormatError
        For a store that is not an event store, a missing or truncated part,
        or malformed events (when read).
    """
    if kwargs:
        raise bad_value("kwargs", sorted(kwargs), "no other keywords for an event store "
                        "(calibrate the result with stemdask.calibrate)")
    if not isinstance(store, (str, os.PathLike)):
        raise bad_type("store", store, "a local store path")
    path = str(Path(store).expanduser().absolute())
    if not Path(path).exists():
        raise FileNotFoundError(f"no event store at {str(store)!r}")
    try:
        group = zarr.open_group(path, mode="r", zarr_format=3)
        attrs = dict(group.attrs)
    except Exception as err:
        raise FileFormatError(f"{str(store)!r} is not a readable zarr v3 group: {err}") from err
    if allow_incomplete:
        raise bad_value("allow_incomplete", allow_incomplete,
                        "False: an incomplete event store has no frame offsets to read")
    if attrs.get(LAYOUT_ATTR) != LAYOUT:
        raise FileFormatError(f"store {str(store)!r} has layout {attrs.get(LAYOUT_ATTR)!r}, not 'events'")
    if not attrs.get(COMPLETE_ATTR, False):
        raise IncompleteStoreError(f"event store {str(store)!r} was not completely written "
                                   f"({COMPLETE_ATTR} is false)")
    if attrs.get(FORMAT_ATTR, 0) > FORMAT_VERSION:
        raise FileFormatError(f"event store {str(store)!r} has format {attrs[FORMAT_ATTR]}, newer "
                              f"than this stemdask reads ({FORMAT_VERSION})")
    try:
        ny, nx, ky, kx = (int(s) for s in attrs["shape"])
        dtype = np.dtype(attrs["dtype"])
        block_chunks = tuple(tuple(int(c) for c in cs) for cs in attrs["chunks"])
        n_events = int(attrs["n_events"])
        encoding = attrs.get("index_encoding", "linear")
        if encoding not in ("linear", "frame-delta"):
            raise FileFormatError(f"event store {str(store)!r} has an unknown index encoding {encoding!r}")
        names = set(group.array_keys())
        missing = {"indices", "offsets", "checksums", *DIMS} - names
        if missing:
            raise FileFormatError(f"event store {str(store)!r} lacks the arrays {sorted(missing)}")
        n_indices = group["indices"].shape[0]
        n_offsets = group["offsets"].shape[0]
        checksums = np.asarray(group["checksums"][...])
        coords = {}
        for dim in DIMS:
            c = group[dim]
            coords[dim] = xr.Variable(dim, np.asarray(c[...]), dict(c.attrs))
    except FileFormatError:
        raise
    except Exception as err:
        raise FileFormatError(f"event store {str(store)!r} is malformed or truncated: {err}") from err
    if n_indices != n_events or n_offsets != ny * nx + 1:
        raise FileFormatError(f"event store {str(store)!r} is truncated: {n_indices} of {n_events} events "
                              f"and {n_offsets} of {ny * nx + 1} frame offsets")
    if sum(block_chunks[0]) != ny or sum(block_chunks[1]) != nx:
        raise FileFormatError(f"event store {str(store)!r}: block chunks {block_chunks} do not tile the "
                              f"scan {(ny, nx)}")
    grid = _block_grid(block_chunks)
    if checksums.shape[0] != len(grid):
        raise FileFormatError(f"event store {str(store)!r} has {checksums.shape[0]} block checksums for "
                              f"{len(grid)} blocks")
    name = "events-" + dask.base.tokenize(path, attrs.get("n_events"), block_chunks, os.path.getmtime(path))
    graph = {}
    frame0 = 0
    n_bx = len(block_chunks[1])
    for b, (_, rows, _, cols) in enumerate(grid):
        i, j = divmod(b, n_bx)
        graph[(name, i, j, 0, 0)] = (_read_block, path, frame0, rows, cols, (ky, kx), dtype.str,
                                     int(checksums[b]), b, encoding == "frame-delta")
        frame0 += rows * cols
    events = da.Array(graph, name, chunks=(block_chunks[0], block_chunks[1], (ky,), (kx,)),
                      dtype=dtype, meta=event_meta((ky, kx), dtype))
    if chunks is not None:
        tile = tuple(chunks)[:2]
        events = events.rechunk((tile[0], tile[1], -1, -1))
    ds_attrs = dict(attrs.get("dataset_attrs", {}))
    return wrap_events(events, coords=coords, attrs=ds_attrs, name=attrs.get("name", "intensity"))


# ----------------------------------------------------------------------------
# stempy / 4D Camera HDF5
# ----------------------------------------------------------------------------
STEMPY_VERSION = 3


def write_stempy(counted: xr.DataArray, path: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Write a counted dataset in the stempy sparse HDF5 layout (version 3).

    ``electron_events/frames`` gets one variable-length ``uint32`` array of
    linear indices per scan position (C order), ``electron_events/scan_positions``
    the position numbers with attrs ``Nx`` (scan width) and ``Ny`` (height).
    Calibration attrs are kept as JSON in the root attr ``stemdask_attrs``.
    """
    import h5py

    counted = require_counted(counted, "counted")
    p = Path(path).expanduser()
    if p.exists() and not overwrite:
        raise FileExistsError(f"{str(p)!r} exists: pass overwrite=True to replace it")
    arr = counted.data
    ny, nx, ky, kx = (int(s) for s in arr.shape)
    tmp = p.with_name(f".{p.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["version"] = STEMPY_VERSION
            attrs = {k: v for k, v in counted.attrs.items() if k != REPRESENTATION_ATTR}
            f.attrs["stemdask_attrs"] = json.dumps(jsonable(attrs))
            group = f.create_group("electron_events")
            positions = group.create_dataset("scan_positions", data=np.arange(ny * nx, dtype=np.int32))
            positions.attrs["Nx"] = nx
            positions.attrs["Ny"] = ny
            frames = group.create_dataset("frames", (ny * nx,), dtype=h5py.vlen_dtype(np.uint32))
            frames.attrs["Nx"] = ky
            frames.attrs["Ny"] = kx
            grid = _block_grid(arr.chunks[:2])
            blocks = arr.to_delayed().ravel()
            for start in range(0, len(grid), WRITE_BATCH):
                for b, block in enumerate(dask.compute(*blocks[start:start + WRITE_BATCH])):
                    block = block.to_backend(np)
                    y0, rows, x0, cols = grid[start + b]
                    ind = block.indices.astype(np.uint32)
                    off = block.offsets
                    for r in range(rows):
                        first = (y0 + r) * nx + x0
                        for c in range(cols):
                            fr = r * cols + c
                            # one element at a time: h5py would broadcast a row of equal-length arrays
                            frames[first + c] = ind[off[fr]:off[fr + 1]]
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return str(p)


def _stempy_meta(path: str) -> dict[str, Any]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "electron_events/frames" not in f or "electron_events/scan_positions" not in f:
                raise FileFormatError(f"{path!r} has no electron_events/frames and scan_positions "
                                      f"(not a stempy sparse file)")
            frames = f["electron_events/frames"]
            positions = f["electron_events/scan_positions"]
            if frames.ndim != 1 or frames.dtype.kind != "O":
                raise FileFormatError(f"{path!r}: electron_events/frames is {frames.dtype} of shape "
                                      f"{frames.shape}, expected 1-D variable-length integers")
            meta = {
                "version": int(f.attrs.get("version", 1)),
                "scan": (int(positions.attrs["Ny"]), int(positions.attrs["Nx"]))
                if "Nx" in positions.attrs and "Ny" in positions.attrs else None,
                "frame": (int(frames.attrs["Nx"]), int(frames.attrs["Ny"]))
                if "Nx" in frames.attrs and "Ny" in frames.attrs else None,
                "n_frames": int(frames.shape[0]),
                "n_positions": int(positions.shape[0]),
                "attrs": json.loads(f.attrs["stemdask_attrs"]) if "stemdask_attrs" in f.attrs else {},
            }
    except FileFormatError:
        raise
    except OSError as err:
        raise FileFormatError(f"cannot read {path!r} as HDF5: {err}") from err
    return meta


def _stempy_block(path: str, y0: int, rows: int, x0: int, cols: int, nx: int, per_position: int,
                  frame_shape: tuple[int, int], dtype: str) -> EventBlock:
    import h5py

    parts, counts = [], []
    try:
        with h5py.File(path, "r") as f:
            frames = f["electron_events/frames"]
            for r in range(rows):
                first = ((y0 + r) * nx + x0) * per_position
                row = frames[first:first + cols * per_position]
                if len(row) != cols * per_position:
                    raise FileFormatError(f"{path!r} is truncated: scan row {y0 + r} lacks frames")
                for c in range(cols):
                    group = row[c * per_position:(c + 1) * per_position]
                    n = 0
                    for events in group:
                        parts.append(np.asarray(events))
                        n += len(events)
                    counts.append(n)
    except FileFormatError:
        raise
    except OSError as err:
        raise FileFormatError(f"cannot read events of {path!r}: {err}") from err
    indices = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
    if indices.dtype.kind not in "ui":
        raise FileFormatError(f"{path!r}: electron events of dtype {indices.dtype}, expected integers")
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    try:
        return EventBlock(indices, offsets, (rows, cols), frame_shape, dtype)
    except InvalidArgumentError as err:
        raise FileFormatError(f"{path!r}, scan rows {y0}..{y0 + rows - 1}: malformed events: {err}") from err


def open_stempy(path: str | os.PathLike, *, chunks: Sequence[int] | None = None,
                frame_shape: Sequence[int] | None = None, scan_shape: Sequence[int] | None = None,
                dtype: Any = np.uint16, **calibration: Any) -> xr.DataArray:
    """Open a stempy / 4D Camera sparse HDF5 file as a lazy counted dataset.

    Version 3 files (``frames`` holds ``frames_per_position`` frames per scan
    position, in C order) are read lazily, a tile of scan rows per task;
    several frames at one position are summed (their events joined). Older
    files (one frame per entry, placed by ``scan_positions``) are read at
    once.

    Parameters
    ----------
    path : path
        The HDF5 file.
    chunks : (int, int), optional
        Scan tile of a dask block; default about 1024 positions of whole rows.
    frame_shape, scan_shape : (int, int), optional
        Detector and scan shapes when the file lacks the ``Nx``/``Ny`` attrs
        (or to check them).
    dtype : integer dtype
        dtype of the dense counts.
    **calibration
        Keywords of :func:`stemdask.from_array` (``energy_ev``,
        ``scan_step_A``, ``detector_pixel_mrad`` ...); they override what the
        file carries.
    """
    path = str(Path(path).expanduser().absolute())
    if not Path(path).exists():
        raise FileNotFoundError(f"no file at {path!r}")
    meta = _stempy_meta(path)
    scan = _resolve_shape("scan_shape", scan_shape, meta["scan"], path)
    frame = _resolve_shape("frame_shape", frame_shape, meta["frame"], path)
    ny, nx = scan
    ky, kx = frame
    dtype = np.dtype(dtype)
    if meta["version"] >= 3:
        if ny * nx == 0 or meta["n_frames"] % (ny * nx):
            raise FileFormatError(f"{path!r} holds {meta['n_frames']} frames, not a multiple of the "
                                  f"{ny}x{nx} scan positions (truncated?)")
        per_position = meta["n_frames"] // (ny * nx)
        tile = _tile(chunks, scan)
        ch = (_split(ny, tile[0]), _split(nx, tile[1]))
        name = "stempy-" + dask.base.tokenize(path, os.path.getmtime(path), ch, frame, dtype.str)
        graph = {}
        for b, (y0, rows, x0, cols) in enumerate(_block_grid(ch)):
            i, j = divmod(b, len(ch[1]))
            graph[(name, i, j, 0, 0)] = (_stempy_block, path, y0, rows, x0, cols, nx, per_position,
                                         frame, dtype.str)
        events = da.Array(graph, name, chunks=(*ch, (ky,), (kx,)), dtype=dtype, meta=event_meta(frame, dtype))
    else:
        events = da.from_array(_read_old_stempy(path, scan, frame, dtype), chunks=-1, asarray=False)
        if chunks is not None:
            tile = _tile(chunks, scan)
            events = events.rechunk((tile[0], tile[1], -1, -1))
    stored = dict(meta["attrs"])
    keys = ("energy_ev", "semiangle_mrad", "scan_step_A", "detector_pixel_mrad", "beam_center_px",
            "scan_rotation_deg", "dose_e_per_pattern", "units")
    kw = {k: stored.pop(k) for k in keys if k in stored}
    kw.update(calibration)
    stored.pop("source", None)
    data = from_array(events, chunks=events.chunks, source=path, attrs=stored, **kw)
    data.attrs[REPRESENTATION_ATTR] = "events"
    return data


def _read_old_stempy(path: str, scan: tuple[int, int], frame: tuple[int, int], dtype: np.dtype) -> EventBlock:
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
    counts = np.bincount(positions, weights=[len(e) for e in frames], minlength=n).astype(np.int64) \
        if frames.size else np.zeros(n, np.int64)
    parts = [np.asarray(frames[i]) for i in order]
    indices = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    try:
        return EventBlock(indices, offsets, scan, frame, dtype)
    except InvalidArgumentError as err:
        raise FileFormatError(f"{path!r}: malformed events: {err}") from err


def _resolve_shape(name: str, given: Any, stored: Any, path: str) -> tuple[int, int]:
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


def _tile(chunks: Any, scan: tuple[int, int]) -> tuple[int, int]:
    if chunks is None:
        ny, nx = scan
        rows = max(1, min(ny, 1024 // max(nx, 1)))
        return (rows, nx) if nx <= 1024 else (1, 1024)
    tile = tuple(chunks)[:2]
    if len(tile) != 2 or any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1 for t in tile):
        raise bad_value("chunks", chunks, "(scan_y, scan_x) positive integer tile sizes")
    return int(tile[0]), int(tile[1])


def _split(n: int, step: int) -> tuple[int, ...]:
    step = min(step, n)
    return tuple([step] * (n // step) + ([n % step] if n % step else []))


__all__ = ["open_event_store", "open_stempy", "save_events", "write_stempy"]
