"""Electron events in files: the ``"events"`` zarr v3 store layout and the stempy wrappers.

zarr v3 layout (a group; registered as the layout ``"events"`` with
:mod:`stemdask.io.layouts`, so ``stemdask.save`` and ``stemdask.open_dataset``
route counted data and event stores here)::

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

Writing runs on the workers in two passes of dask tasks, because a block's
place in ``indices`` is known only once the blocks before it are counted,
and a shard of ``indices`` may hold events of several blocks:

1. one task per block computes it and stages its (encoded) indices and
   offsets as ``.npy`` files in the temporary store, returning its event
   count and checksum (a few bytes) to the client;
2. the client sums the counts into block offsets (O(blocks)), creates the
   arrays, and one task per ``indices`` shard and per ``offsets`` chunk
   copies its range from the staged files, so no file is written by two
   tasks.

The client writes only metadata, the checksums and the completion marker.

The stempy / 4D Camera HDF5 format is read and written by
:mod:`stemdask.io.stempy`; :func:`open_stempy` and :func:`write_stempy` here
turn its arrays into event blocks and back.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from ..dataset import DIMS, MODEL_ATTRS, from_array
from ..errors import (
    FileFormatError,
    IncompleteStoreError,
    InvalidArgumentError,
    bad_type,
    bad_value,
)
from ..io import stempy as stempy_format
from ..io.layouts import FileReader, Layout, register_file_reader, register_layout
from ..io.publish import (
    COMPLETE_ATTR,
    LAYOUT_ATTR,
    atomic_path,
    check_header,
    compute_writes,
    create_guard,
    header,
    mark_complete,
    write_guard,
)
from ..io.zarr_store import for_writing, jsonable
from .array import (
    REPRESENTATION_ATTR,
    event_meta,
    is_counted,
    require_counted,
    wrap_events,
)
from .block import EventBlock, index_dtype

#: format version of event stores (the on-disk layout above)
FORMAT_VERSION = 1
LAYOUT = "events"

#: electrons per inner zarr chunk of ``indices`` (~2 MiB of uint16)
INNER_EVENTS = 2**20
#: inner chunks per shard (one shard file, ~16 MiB of uint16, written by one task): small
#: enough that the shards of a scan are copied by several workers at once
SHARD_CHUNKS = 8
#: frame offsets per chunk of ``offsets`` (one file, written by one task)
OFFSET_CHUNK = 2**20
#: blocks computed at once while writing a stempy file (HDF5: one writer)
WRITE_BATCH = 8
#: staged blocks inside a temporary store (removed before it is published)
STAGING = ".staging"


def _array(group: zarr.Group, name: str, store: Any) -> zarr.Array:
    """The array ``name`` of an event store's group (a group of that name is a format error)."""
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise FileFormatError(f"event store {str(store)!r}: {name!r} is a group, not an array")
    return node


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
    return [
        (int(ys[i]), int(chunks[0][i]), int(xs[j]), int(chunks[1][j]))
        for i in range(len(chunks[0]))
        for j in range(len(chunks[1]))
    ]


# ----------------------------------------------------------------------------
# zarr v3: writing
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
    base = (
        np.where(offsets[:-1] > 0, running[np.maximum(offsets[:-1] - 1, 0)], 0)
        if running.size
        else np.zeros(counts.size, np.int64)
    )
    return running - np.repeat(base, counts)


def save_events(
    counted: xr.DataArray,
    store: str | os.PathLike,
    *,
    overwrite: bool = False,
    codec: str = "delta-blosc",
    progress: bool = False,
) -> str:
    """Write a counted dataset to a sharded zarr v3 store, atomically, from dask tasks.

    Each dask block is computed once, on a worker, by the task that stages
    it; the events are then copied into the store's shards by one task per
    shard (see the module docstring). The store is written under a
    temporary name, marked complete, then renamed into place.

    Parameters
    ----------
    counted : xarray.DataArray
        Counted dataset (event chunks); its dask blocks become the store's
        blocks.
    store : path
        Local destination directory (on a file system the workers share).
    overwrite : bool
        Replace an existing store (only once the new one is complete).
    codec : {"delta-blosc", "blosc", "zstd", "none"}
        Compression of the events: ``"delta-blosc"`` (default) stores each
        index as the gap from the previous electron of its frame, then
        bit-shuffled zstd (blosc); ``"blosc"`` the same without gaps;
        ``"zstd"``; ``"none"``. See docs/events.md for bytes per electron.
    progress : bool
        Show a progress bar for each pass.

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
    with atomic_path(store, overwrite=overwrite) as (tmp, final):
        _write_store(counted, tmp, codec, progress, final.name)
    return str(final)


def _stage_block(block: EventBlock, root: str, number: int, rows: int, cols: int, deltas: bool) -> tuple[int, int]:
    """Pass 1, one task per block: stage its stored indices and offsets; return (events, checksum)."""
    block = block.to_backend(np)
    if block.scan_shape != (rows, cols):
        raise FileFormatError(f"block {number} has scan shape {block.scan_shape}, expected {(rows, cols)}")
    stored = frame_deltas(block) if deltas else block.indices
    with write_guard(root) as alive:
        if alive:
            staging = Path(root) / STAGING
            np.save(staging / f"{number}.indices.npy", stored)
            np.save(staging / f"{number}.offsets.npy", np.asarray(block.offsets, np.int64))
    return int(stored.size), _checksum(stored)


def _staged(root: str, number: int, kind: str) -> np.ndarray:
    # memory-mapped: a copy task reads only the part of a block its range needs
    return np.load(Path(root) / STAGING / f"{number}.{kind}.npy", mmap_mode="r")


def _copy_indices(root: str, lo: int, hi: int, event_starts: np.ndarray, blocks: range, dtype: str) -> int:
    """Pass 2: write ``indices[lo:hi]`` (one whole shard) from the staged blocks it overlaps."""
    parts = []
    for b in blocks:
        start = int(event_starts[b])
        values = _staged(root, b, "indices")
        parts.append(values[max(lo - start, 0) : max(min(hi - start, values.size), 0)])
    with write_guard(root) as alive:
        if alive:
            for_writing(zarr.open_array(root, path="indices", mode="r+", zarr_format=3))[lo:hi] = np.concatenate(
                parts
            ).astype(dtype, copy=False)
    return hi - lo


def _copy_offsets(
    root: str, lo: int, hi: int, frame_starts: np.ndarray, event_starts: np.ndarray, blocks: range, n_events: int
) -> int:
    """Pass 2: write ``offsets[lo:hi]`` (one chunk) from the staged blocks it overlaps."""
    out = np.empty(hi - lo, np.int64)
    for b in blocks:
        f0 = int(frame_starts[b])
        local = _staged(root, b, "offsets")[:-1]  # the last one is the next block's first
        a, z = max(lo, f0), min(hi, f0 + local.size)
        out[a - lo : z - lo] = local[a - f0 : z - f0] + int(event_starts[b])
    if hi == int(frame_starts[-1]) + 1:
        out[-1] = n_events  # the end of the last frame
    with write_guard(root) as alive:
        if alive:
            for_writing(zarr.open_array(root, path="offsets", mode="r+", zarr_format=3))[lo:hi] = out
    return hi - lo


def _overlapping(starts: np.ndarray, lo: int, hi: int) -> range:
    """Blocks whose range [starts[b], starts[b + 1]) meets [lo, hi) (``starts`` has n + 1 entries)."""
    first = int(np.searchsorted(starts, lo, side="right")) - 1
    last = int(np.searchsorted(starts, hi, side="left"))
    return range(max(first, 0), min(last, starts.size - 1))


def _write_store(counted: xr.DataArray, path: Path, codec: str, progress: bool, label: str) -> None:
    arr = counted.data
    ny, nx, ky, kx = (int(s) for s in arr.shape)
    idx_dtype = index_dtype(ky * kx)
    deltas = codec == "delta-blosc"
    group = zarr.open_group(path, mode="w-", zarr_format=3)
    group.attrs.update(header(LAYOUT, FORMAT_VERSION))
    create_guard(path)
    (path / STAGING).mkdir()
    root = str(path)
    grid = _block_grid(arr.chunks[:2])

    # pass 1: one task per block, on the workers
    stage = dask.delayed(_stage_block, pure=False)
    tasks = [
        stage(block, root, b, rows, cols, deltas)
        for b, (block, (_, rows, _, cols)) in enumerate(zip(arr.to_delayed().ravel(), grid))
    ]
    staged = compute_writes(tasks, progress=progress, description=f"counting blocks of {label}")
    counts = np.array([n for n, _ in staged], np.int64)
    checksums = np.array([c for _, c in staged], np.uint64)
    event_starts = np.concatenate([[0], np.cumsum(counts)])
    frame_starts = np.concatenate([[0], np.cumsum([rows * cols for _, rows, _, cols in grid])]).astype(np.int64)
    n_events, n_frames = int(event_starts[-1]), ny * nx

    # the arrays (metadata only), then pass 2: one task per shard / chunk
    shard = INNER_EVENTS * SHARD_CHUNKS
    group.create_array(
        "indices",
        shape=(n_events,),
        dtype=idx_dtype,
        chunks=(INNER_EVENTS,),
        shards=(shard,),
        compressors=_compressors(codec),
        fill_value=0,
    )
    off_chunk = min(max(n_frames + 1, 1), OFFSET_CHUNK)
    group.create_array(
        "offsets", shape=(n_frames + 1,), dtype=np.int64, chunks=(off_chunk,), compressors=_compressors(codec)
    )
    copy_indices = dask.delayed(_copy_indices, pure=False)
    copy_offsets = dask.delayed(_copy_offsets, pure=False)
    copies = [
        copy_indices(
            root,
            lo,
            min(lo + shard, n_events),
            event_starts,
            _overlapping(event_starts, lo, min(lo + shard, n_events)),
            idx_dtype.str,
        )
        for lo in range(0, n_events, shard)
    ]
    copies += [
        copy_offsets(
            root,
            lo,
            min(lo + off_chunk, n_frames + 1),
            frame_starts,
            event_starts,
            _overlapping(frame_starts, lo, min(lo + off_chunk, n_frames)),
            n_events,
        )
        for lo in range(0, n_frames + 1, off_chunk)
    ]
    compute_writes(copies, progress=progress, description=f"writing {label}")
    shutil.rmtree(path / STAGING)

    chk = group.create_array(
        "checksums", shape=checksums.shape, dtype=np.uint64, chunks=(max(checksums.size, 1),), compressors=None
    )
    chk[...] = checksums
    for dim in DIMS:
        coord = counted.coords[dim]
        c = group.create_array(
            dim,
            shape=coord.shape,
            dtype=np.float64,
            chunks=(max(coord.size, 1),),
            dimension_names=(dim,),
            compressors=None,
            attributes=jsonable(dict(coord.attrs)),
        )
        c[...] = np.asarray(coord.values, np.float64)
    attrs = {k: v for k, v in counted.attrs.items() if k != REPRESENTATION_ATTR}
    group.attrs.update(
        {
            "shape": [ny, nx, ky, kx],
            "dtype": str(np.dtype(counted.dtype)),
            "chunks": [list(arr.chunks[0]), list(arr.chunks[1])],
            "n_events": n_events,
            "name": str(counted.name or "intensity"),
            "dataset_attrs": jsonable(attrs),
            "codec": codec,
            "index_encoding": "frame-delta" if deltas else "linear",
        }
    )
    mark_complete(path)


# ----------------------------------------------------------------------------
# zarr v3: reading
# ----------------------------------------------------------------------------
def _read_block(
    path: str,
    frame0: int,
    rows: int,
    cols: int,
    frame_shape: tuple[int, int],
    dtype: str,
    checksum: int,
    block_no: int,
    deltas: bool,
) -> EventBlock:
    try:
        group = zarr.open_group(path, mode="r", zarr_format=3)
        offsets = np.asarray(_array(group, "offsets", path)[frame0 : frame0 + rows * cols + 1], np.int64)
        if offsets.size != rows * cols + 1:
            raise FileFormatError(f"store {path!r} is truncated: offsets of block {block_no} are missing")
        start, stop = int(offsets[0]), int(offsets[-1])
        indices_arr = _array(group, "indices", path)
        if stop > indices_arr.shape[0] or start > stop:
            raise FileFormatError(
                f"store {path!r} is truncated or corrupt: block {block_no} needs "
                f"events {start}..{stop} of {indices_arr.shape[0]}"
            )
        indices = np.asarray(indices_arr[start:stop])
    except FileFormatError:
        raise
    except Exception as err:
        raise FileFormatError(f"cannot read block {block_no} of event store {path!r}: {err}") from err
    if _checksum(indices) != checksum:
        raise FileFormatError(
            f"store {path!r} is truncated or corrupt: the events of block {block_no} "
            f"do not match their checksum (a missing or damaged shard)"
        )
    offsets = offsets - start
    if deltas:
        if offsets.size > 1 and np.any(offsets[1:] < offsets[:-1]):
            frame = int(np.argmax(offsets[1:] < offsets[:-1]))
            raise FileFormatError(
                f"store {path!r}, block {block_no}: malformed events: frame offsets decrease at frame {frame}"
            )
        indices = undo_frame_deltas(indices, offsets)
    try:
        return EventBlock(indices, offsets, (rows, cols), frame_shape, dtype)
    except InvalidArgumentError as err:
        raise FileFormatError(f"store {path!r}, block {block_no}: malformed events: {err}") from err


def open_event_store(
    store: str | os.PathLike, *, chunks: Sequence[int] | None = None, allow_incomplete: bool = False, **kwargs: Any
) -> xr.DataArray:
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
        raise bad_value(
            "kwargs",
            sorted(kwargs),
            "no other keywords for an event store (calibrate the result with stemdask.calibrate)",
        )
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
        raise bad_value(
            "allow_incomplete", allow_incomplete, "False: an incomplete event store has no frame offsets to read"
        )
    if attrs.get(LAYOUT_ATTR) != LAYOUT:
        raise FileFormatError(f"store {str(store)!r} has layout {attrs.get(LAYOUT_ATTR)!r}, not 'events'")
    check_header(store, attrs, FORMAT_VERSION)
    return _open_events(path, group, attrs, chunks, store)


def _open_layout(
    store: Any, attrs: dict[str, Any], *, chunks: Sequence[int] | None = None, allow_incomplete: bool = False
) -> xr.DataArray:
    """The ``"events"`` layout's opener (header already checked by ``open_zarr``)."""
    if not isinstance(store, (str, os.PathLike)):
        raise bad_type("store", store, "a local store path for an event store")
    if not attrs.get(COMPLETE_ATTR, False):
        # allow_incomplete cannot help: the frame offsets are written last
        raise IncompleteStoreError(
            f"event store {str(store)!r} was not completely written "
            f"({COMPLETE_ATTR} is false) and cannot be read even with "
            f"allow_incomplete=True: it has no frame offsets yet"
        )
    path = str(Path(store).expanduser().absolute())
    return _open_events(path, zarr.open_group(path, mode="r", zarr_format=3), attrs, chunks, store)


def _open_events(
    path: str, group: zarr.Group, attrs: dict[str, Any], chunks: Sequence[int] | None, store: Any
) -> xr.DataArray:
    """A lazy counted dataset of the checked event store at ``path``."""
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
        n_indices = _array(group, "indices", store).shape[0]
        n_offsets = _array(group, "offsets", store).shape[0]
        checksums = np.asarray(_array(group, "checksums", store)[...])
        coords = {}
        for dim in DIMS:
            c = _array(group, dim, store)
            coords[dim] = xr.Variable(dim, np.asarray(c[...]), dict(c.attrs))
    except FileFormatError:
        raise
    except Exception as err:
        raise FileFormatError(f"event store {str(store)!r} is malformed or truncated: {err}") from err
    if n_indices != n_events or n_offsets != ny * nx + 1:
        raise FileFormatError(
            f"event store {str(store)!r} is truncated: {n_indices} of {n_events} events "
            f"and {n_offsets} of {ny * nx + 1} frame offsets"
        )
    if sum(block_chunks[0]) != ny or sum(block_chunks[1]) != nx:
        raise FileFormatError(
            f"event store {str(store)!r}: block chunks {block_chunks} do not tile the scan {(ny, nx)}"
        )
    grid = _block_grid(block_chunks)
    if checksums.shape[0] != len(grid):
        raise FileFormatError(
            f"event store {str(store)!r} has {checksums.shape[0]} block checksums for {len(grid)} blocks"
        )
    name = "events-" + dask.base.tokenize(path, attrs.get("n_events"), block_chunks, os.path.getmtime(path))
    graph = {}
    frame0 = 0
    n_bx = len(block_chunks[1])
    for b, (_, rows, _, cols) in enumerate(grid):
        i, j = divmod(b, n_bx)
        graph[(name, i, j, 0, 0)] = (
            _read_block,
            path,
            frame0,
            rows,
            cols,
            (ky, kx),
            dtype.str,
            int(checksums[b]),
            b,
            encoding == "frame-delta",
        )
        frame0 += rows * cols
    events = da.Array(
        graph,
        name,
        chunks=(block_chunks[0], block_chunks[1], (ky,), (kx,)),
        dtype=dtype,
        meta=event_meta((ky, kx), dtype),
    )
    if chunks is not None:
        tile = tuple(chunks)[:2]
        events = events.rechunk((tile[0], tile[1], -1, -1))
    ds_attrs = dict(attrs.get("dataset_attrs", {}))
    return wrap_events(events, coords=coords, attrs=ds_attrs, name=attrs.get("name", "intensity"))


# ----------------------------------------------------------------------------
# stempy / 4D Camera HDF5 (the format itself: stemdask.io.stempy)
# ----------------------------------------------------------------------------
STEMPY_VERSION = stempy_format.STEMPY_VERSION


def _computed_tiles(arr: da.Array) -> Iterator[stempy_format.Tile]:
    """The blocks of ``arr`` as stempy tiles, computed ``WRITE_BATCH`` at a time."""
    grid = _block_grid(arr.chunks[:2])
    blocks = arr.to_delayed().ravel()
    for start in range(0, len(grid), WRITE_BATCH):
        for b, block in enumerate(dask.compute(*blocks[start : start + WRITE_BATCH])):
            block = block.to_backend(np)
            yield grid[start + b], block.indices, block.offsets


def write_stempy(counted: xr.DataArray, path: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Write a counted dataset in the stempy sparse HDF5 layout (version 3).

    ``electron_events/frames`` gets one variable-length ``uint32`` array of
    linear indices per scan position (C order), ``electron_events/scan_positions``
    the position numbers with attrs ``Nx`` (scan width) and ``Ny`` (height).
    Calibration attrs are kept as JSON in the root attr ``stemdask_attrs``.
    HDF5 has one writer, so blocks are computed a few at a time and written
    by this process (see :func:`stemdask.io.stempy.write_file`).
    """
    counted = require_counted(counted, "counted")
    ny, nx, ky, kx = (int(s) for s in counted.shape)
    attrs = jsonable({k: v for k, v in counted.attrs.items() if k != REPRESENTATION_ATTR})
    return stempy_format.write_file(
        path, (ny, nx), (ky, kx), _computed_tiles(counted.data), attrs=attrs, overwrite=overwrite
    )


def _stempy_block(
    path: str,
    y0: int,
    rows: int,
    x0: int,
    cols: int,
    nx: int,
    per_position: int,
    frame_shape: tuple[int, int],
    dtype: str,
) -> EventBlock:
    indices, offsets = stempy_format.read_tile(path, y0, rows, x0, cols, nx, per_position)
    try:
        return EventBlock(indices, offsets, (rows, cols), frame_shape, dtype)
    except InvalidArgumentError as err:
        raise FileFormatError(f"{path!r}, scan rows {y0}..{y0 + rows - 1}: malformed events: {err}") from err


def open_stempy(
    path: str | os.PathLike,
    *,
    chunks: Sequence[int] | None = None,
    frame_shape: Sequence[int] | None = None,
    scan_shape: Sequence[int] | None = None,
    dtype: Any = np.uint16,
    **calibration: Any,
) -> xr.DataArray:
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
    path = stempy_format.file_exists(path)
    meta = stempy_format.read_meta(path)
    scan = stempy_format.resolve_shape("scan_shape", scan_shape, meta["scan"], path)
    frame = stempy_format.resolve_shape("frame_shape", frame_shape, meta["frame"], path)
    ny, nx = scan
    ky, kx = frame
    dtype = np.dtype(dtype)
    if meta["version"] >= 3:
        if ny * nx == 0 or meta["n_frames"] % (ny * nx):
            raise FileFormatError(
                f"{path!r} holds {meta['n_frames']} frames, not a multiple of the {ny}x{nx} scan positions (truncated?)"
            )
        per_position = meta["n_frames"] // (ny * nx)
        tile = stempy_format.scan_tile(chunks, scan)
        ch = (stempy_format.split(ny, tile[0]), stempy_format.split(nx, tile[1]))
        name = "stempy-" + dask.base.tokenize(path, os.path.getmtime(path), ch, frame, dtype.str)
        graph = {}
        for b, (y0, rows, x0, cols) in enumerate(_block_grid(ch)):
            i, j = divmod(b, len(ch[1]))
            graph[(name, i, j, 0, 0)] = (_stempy_block, path, y0, rows, x0, cols, nx, per_position, frame, dtype.str)
        events = da.Array(graph, name, chunks=(*ch, (ky,), (kx,)), dtype=dtype, meta=event_meta(frame, dtype))
    else:
        indices, offsets = stempy_format.read_placed(path, scan)
        try:
            whole = EventBlock(indices, offsets, scan, frame, dtype)
        except InvalidArgumentError as err:
            raise FileFormatError(f"{path!r}: malformed events: {err}") from err
        events = da.from_array(whole, chunks=-1, asarray=False)
        if chunks is not None:
            tile = stempy_format.scan_tile(chunks, scan)
            events = events.rechunk((tile[0], tile[1], -1, -1))
    stored = dict(meta["attrs"])
    kw = {k: stored.pop(k) for k in MODEL_ATTRS if k in stored and k != "source"}
    kw.update(calibration)
    stored.pop("source", None)
    data = from_array(events, chunks=events.chunks, source=path, attrs=stored, **kw)
    data.attrs[REPRESENTATION_ATTR] = "events"
    return data


# ----------------------------------------------------------------------------
# registration with stemdask.io (io never imports events)
# ----------------------------------------------------------------------------


def _claims(data: Any) -> bool:
    return isinstance(data, xr.DataArray) and is_counted(data)


def _write_layout(
    data: xr.DataArray,
    store: Any,
    *,
    codec: Any = None,
    chunks: Any = None,
    shards: Any = None,
    overwrite: bool = False,
    progress: bool = False,
) -> str:
    """The ``"events"`` layout's writer: :func:`save_events` with ``stemdask.save``'s options."""
    # electron events keep their own layout (indices + offsets), never densified
    if chunks is not None or shards not in (None, True):
        raise bad_value(
            "chunks/shards", (chunks, shards), "None for counted data: its event blocks are its storage units"
        )
    return save_events(
        data, store, overwrite=overwrite, progress=progress, **({"codec": codec} if codec is not None else {})
    )


register_layout(Layout(LAYOUT, version=FORMAT_VERSION, claims=_claims, write=_write_layout, open=_open_layout))
register_file_reader(
    FileReader(
        "stempy", suffixes=(".h5", ".hdf5", ".hdf", ".nxs", ".emd"), detect=stempy_format.is_stempy, open=open_stempy
    )
)

__all__ = ["open_event_store", "open_stempy", "save_events", "write_stempy"]
