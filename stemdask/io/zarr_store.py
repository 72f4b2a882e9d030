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
and :func:`open_zarr` refuses a store where it is false. The header, the
publish and the write tasks are shared with every layout
(:mod:`stemdask.io.publish`); :func:`save` and :func:`open_zarr` pick the
layout from the registry (:mod:`stemdask.io.layouts`), where this module
registers ``"dense"``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from ..checks import tile as check_tile
from ..codecs import resolve_codec, with_checksum
from ..dataset import DIMS, dask_data, default_chunks, from_array, validate
from ..errors import FileFormatError, IncompleteStoreError, bad_type, bad_value
from ..worker_memory import keep_freed_memory
from .checked import CheckedZarrSource
from .layouts import Layout, get_layout, layout_for, register_layout
from .publish import (
    LAYOUT_ATTR,
    atomic_directory,
    atomic_path,
    check_header,
    compute_writes,
    create_guard,
    describe_interrupted,
    header,
    is_local,
    is_stemdask_store,
    mark_complete,
    write_guard,
)

if TYPE_CHECKING:
    from zarr.core.array_spec import ArrayConfigParams

#: format version of dense stores
FORMAT_VERSION = 1
LAYOUT = "dense"

#: bytes of one inner (compressed, randomly readable) chunk
INNER_CHUNK_BYTES = 8 * 2**20
#: bytes of one shard (one file; one dask task writes one shard)
SHARD_BYTES = 128 * 2**20
#: zarr per-array settings of every write (``save``/``convert`` tasks and :class:`DatasetWriter`).
#: ``write_empty_chunks`` True: with zarr's default (False) every inner chunk and then every whole
#: shard is compared with the fill value before it is encoded (``np.array_equal`` on a broadcast,
#: a full pass with a boolean temporary each time), which took half the time of a shard write
#: (docs/storage.md, "Where the time goes"). All chunks are then stored, all-zero ones too (a few bytes
#: compressed), so every shard file exists and the manifest names every one.
WRITE_ARRAY_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}


def for_writing(array: zarr.Array) -> zarr.Array:
    """``array`` with :data:`WRITE_ARRAY_CONFIG` (every chunk stored; no fill-value pass before encoding).

    ``open_array(config=...)`` is ignored for an existing array (zarr 3.1), hence ``with_config``.
    On a dask worker it also sets the process's malloc thresholds
    (:func:`stemdask.worker_memory.keep_freed_memory`): a write's chunk copies and encoded chunks
    are large temporaries.
    """
    keep_freed_memory()
    return array.with_config(WRITE_ARRAY_CONFIG)


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
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
    return check_tile(name, value, expected="(scan_y, scan_x) positive integer tile sizes (frames stay whole)")


def storage_layout(
    shape: Sequence[int],
    itemsize: int,
    chunks: Sequence[int] | None = None,
    shards: Sequence[int] | bool | None = None,
    *,
    min_chunk_frames: int = 1,
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
    inner, shard = storage_layout(
        data.shape, data.dtype.itemsize, chunks, shards, min_chunk_frames=choice.min_chunk_frames
    )
    # every inner chunk carries a crc32c (verified on read), whatever the codec
    enc: dict[str, Any] = {"chunks": inner, "compressors": list(with_checksum(choice.compressors))}
    if shard is not None:
        enc["shards"] = shard
    if choice.serializer != "auto":
        enc["serializer"] = choice.serializer
    return {name: enc}, (shard or inner)


# ----------------------------------------------------------------------------
# save / open
# ----------------------------------------------------------------------------
def save(
    data: xr.DataArray | Any,
    store: str | os.PathLike | Any,
    *,
    codec: Any = None,
    chunks: Sequence[int] | None = None,
    shards: Sequence[int] | bool | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> str | Any:
    """Write a dataset to a sharded zarr v3 store, atomically.

    The layout is the registered one that claims ``data``
    (:func:`stemdask.io.layouts.layout_for`): ``"dense"`` for a stemdask
    DataArray, ``"events"`` for counted data. The data are written by dask
    tasks (on the workers of a ``distributed`` client); the client writes
    only metadata and, last, the completion marker.

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
        A name from ``stemdask.codecs.CODECS`` (``"blosc-lz4"`` by default; ``"blosc"`` is zstd,
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
    layout = layout_for(data)
    return layout.write(data, store, codec=codec, chunks=chunks, shards=shards, overwrite=overwrite, progress=progress)


def write_tile(
    data: xr.DataArray, *, codec: Any = None, chunks: Sequence[int] | None = None, shards: Any = None
) -> tuple[int, int] | None:
    """The (scan_y, scan_x) tile of one write task of :func:`save` (a shard), or None for a non-dense layout.

    Data whose dask blocks are this tile are written without a rechunk (no copy, no transfer between
    workers); :func:`open_for_save` opens a file that way.
    """
    if layout_for(data).name != LAYOUT:
        return None
    return _encoding(data, str(data.name or "intensity"), codec, chunks, shards)[1][:2]


def open_for_save(
    path: str | os.PathLike | Any,
    *,
    codec: Any = None,
    chunks: Sequence[int] | None = None,
    shards: Sequence[int] | bool | None = None,
    **reader_options: Any,
) -> xr.DataArray:
    """Open a file to convert it with :func:`save`: its dask blocks are the store's shards.

    ``stemdask convert`` reads this way. With the reader's own blocks (64 MiB) every shard of the
    store (128 MiB) was a rechunk of two reads, often from two workers: a copy and a transfer. On a
    2-worker LocalCluster reading in shards wrote 10-30 % more MB per worker-CPU-second in most runs
    with the default codec (within the noise in two of seven), 30-110 % more uncompressed
    (docs/storage.md, "Write path").

    Parameters
    ----------
    path : path or zarr store
        Any file :func:`stemdask.open_dataset` reads.
    codec, chunks, shards
        As they will be passed to :func:`save` (they set the shard tile).
    **reader_options
        Passed to :func:`stemdask.open_dataset` (calibration, ``dataset=``, ``shape=`` ...; the
        dask blocks are chosen here: use :func:`stemdask.open_dataset` for others).
    """
    from . import open_dataset  # the package imports this module

    data = open_dataset(path, **reader_options)
    if not isinstance(data.data, da.Array):
        return data
    tile = write_tile(data, codec=codec, chunks=chunks, shards=shards)
    if tile is None or all(set(c[:-1]) <= {t} and c[-1] <= t for c, t in zip(data.data.chunks[:2], tile)):
        return data  # not dense, or already in whole shards
    return open_dataset(path, chunks=tile, **reader_options)


def _to_host(block: Any) -> np.ndarray:
    # zarr encodes host buffers; a cupy block (GPU worker) is copied to the host here
    return block.get() if hasattr(block, "__cuda_array_interface__") else np.asarray(block)


def _write_region(
    block: Any, store: Any, path: str, region: tuple[slice, ...], guard: str | None, config: dict[str, Any]
) -> int:
    """One write task: store one shard-aligned block; return the bytes written (0 if abandoned).

    ``config`` is the zarr array config of the write (:data:`WRITE_ARRAY_CONFIG`, read on the
    client when the graph is built).
    """
    # the inner chunks zarr copies out of the block and the encoded chunks are 8 MiB temporaries: on a
    # worker (nanny's MALLOC_TRIM_THRESHOLD_) each was a fresh mmap whose pages were faulted in, a
    # third of the write's CPU as system time (docs/storage.md, "Write path")
    keep_freed_memory()
    with write_guard(guard) as alive:
        if not alive:
            return 0
        # with_config: open_array(config=...) is ignored for an existing array (zarr 3.1)
        array = zarr.open_array(store, path=path, mode="r+", zarr_format=3).with_config(config)
        array[region] = _to_host(block)
        return int(block.nbytes)


def _block_regions(chunks: tuple[tuple[int, ...], ...]) -> list[tuple[slice, ...]]:
    """Region of every block of a dask array, in the C order of ``to_delayed().ravel()``."""
    edges = [np.cumsum((0,) + c) for c in chunks]
    return [
        tuple(slice(int(e[i]), int(e[i + 1])) for e, i in zip(edges, index))
        for index in np.ndindex(*(len(c) for c in chunks))
    ]


def write_blocks(
    arr: da.Array,
    store: Any,
    path: str,
    guard: str | os.PathLike | None,
    *,
    progress: bool = False,
    description: str = "writing",
) -> int:
    """Write every block of ``arr`` into the existing zarr array ``path`` of ``store``, one task each.

    Blocks must be whole shards (or inner chunks when unsharded) so no two
    tasks touch one file. Returns the bytes written.
    """
    guard = None if guard is None else str(guard)
    write = dask.delayed(_write_region, pure=False)
    config = dict(WRITE_ARRAY_CONFIG)
    tasks = [
        write(block, store, path, region, guard, config)
        for block, region in zip(arr.to_delayed().ravel(), _block_regions(arr.chunks))
    ]
    return sum(compute_writes(tasks, progress=progress, description=description))


def _write_dense(
    data: xr.DataArray,
    store: str | os.PathLike | Any,
    *,
    codec: Any = None,
    chunks: Sequence[int] | None = None,
    shards: Sequence[int] | bool | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> str | Any:
    """The ``"dense"`` layout's writer (see :func:`save`)."""
    validate(data)
    name = str(data.name or "intensity")
    if name in DIMS:
        raise bad_value("data.name", name, f"a name other than the dims {DIMS}")
    encoding, write_tile = _encoding(data, name, codec, chunks, shards)
    # one dask task per shard: shards must never be written by two tasks
    arr = dask_data(data)
    arr = arr.rechunk(write_tile)
    ds = xr.Dataset(
        {name: (DIMS, arr, jsonable(dict(data.attrs)))},
        coords={d: data.coords[d].variable.copy(deep=False) for d in DIMS},
    )
    for d in DIMS:
        ds[d].attrs = jsonable(dict(data.coords[d].attrs))
    ds.attrs = {**header(LAYOUT, FORMAT_VERSION), "stemdask_variable": name}

    def write(target: Any, mode: str, guard: Path | None, description: str) -> None:
        # xarray writes the metadata and the coordinates now; the returned
        # delayed write is dropped: our tasks write the data under the guard
        ds.to_zarr(target, mode=mode, zarr_format=3, consolidated=False, encoding=encoding, compute=False)
        if guard is not None:
            create_guard(guard)
        write_blocks(
            arr, str(target) if guard is not None else target, name, guard, progress=progress, description=description
        )
        mark_complete(target)

    if is_local(store):
        with atomic_path(store, overwrite=overwrite) as (tmp, final):
            write(tmp, "w-", tmp, f"writing {final.name}")
        return str(final)
    write(store, "w" if overwrite else "w-", None, "writing store")
    return store


def read_group_attrs(store: Any) -> dict[str, Any]:
    """The root attrs of a zarr store (``{}`` for a bare array)."""
    try:
        node = zarr.open(store, mode="r")
    except FileNotFoundError:
        if is_local(store) and Path(store).is_dir():
            hint = describe_interrupted(store)
            raise FileFormatError(
                f"{str(store)!r} is a folder without zarr.json: not a zarr v3 store (or an empty one)"
                + (f"; {hint}" if hint else "")
            ) from None
        raise  # not a format problem: let it through unchanged
    except Exception as err:  # zarr raises several types for a non-zarr path
        raise FileFormatError(f"{str(store)!r} is not a readable zarr store: {_bad_metadata(store, err)}") from err
    return dict(node.attrs) if isinstance(node, zarr.Group) else {}


def _bad_metadata(store: Any, err: Exception) -> str:
    """The reason a store's metadata did not load, naming the zarr.json file that is not JSON."""
    if isinstance(err, json.JSONDecodeError) and is_local(store):
        for meta in sorted(Path(store).rglob("zarr.json")):
            try:
                json.loads(meta.read_text())
            except (ValueError, OSError) as bad:
                return f"metadata file {str(meta)!r} is not valid JSON ({bad})"
    return str(err)


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
    if is_local(store) and not Path(store).exists():
        raise FileNotFoundError(f"no zarr store at {str(store)!r}")
    attrs = read_group_attrs(store)
    try:
        return _open_store(store, attrs, chunks, allow_incomplete, variable, calibration)
    except json.JSONDecodeError as err:
        raise FileFormatError(f"store {str(store)!r} cannot be read: {_bad_metadata(store, err)}") from err


def _open_store(
    store: Any, attrs: dict, chunks: Any, allow_incomplete: bool, variable: str | None, calibration: dict
) -> xr.DataArray:
    if is_stemdask_store(attrs):
        # the layout first: a format version means something only for a known layout
        layout = get_layout(attrs.get(LAYOUT_ATTR, LAYOUT), store)
        check_header(store, attrs, layout.version, allow_incomplete=allow_incomplete)
        if calibration:
            raise bad_value(
                "calibration",
                sorted(calibration),
                "no calibration keywords for a store written by stemdask (use stemdask.calibrate on the result)",
            )
        return layout.open(store, attrs, chunks=chunks, allow_incomplete=allow_incomplete)
    return _open_foreign_store(store, chunks, variable, calibration)


def _open_dense(
    store: Any, attrs: dict, *, chunks: Sequence[int] | None = None, allow_incomplete: bool = False
) -> xr.DataArray:
    """The ``"dense"`` layout's opener (header already checked by :func:`open_zarr`)."""
    name = attrs.get("stemdask_variable", "intensity")
    array = zarr.open_array(store, path=name, mode="r")
    tile = _scan_tile("chunks", chunks, array.shape[:2]) or _read_tile(array)
    ds = xr.open_zarr(
        store, zarr_format=3, consolidated=False, chunks={"scan_y": tile[0], "scan_x": tile[1], "k_y": -1, "k_x": -1}
    )
    # reads through CheckedZarrSource: a bad chunk is an error naming the store, array and chunk
    source = CheckedZarrSource(store, name, tuple(array.shape), array.dtype)
    lazy = da.from_array(source, chunks=(*tile, -1, -1), asarray=False, meta=np.empty((0,) * 4, array.dtype))
    out = ds[name].copy(data=lazy)
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
                f"store {str(store)!r} holds {len(arrays)} 4-D arrays {sorted(arrays)}: choose one with variable=..."
            )
    if array.ndim != 4:
        raise FileFormatError(
            f"array in {str(store)!r} has shape {array.shape}: expected 4-D (scan_y, scan_x, k_y, k_x)"
        )
    lazy = da.from_zarr(array)
    return from_array(lazy, chunks=chunks, source=str(store), **calibration)


# ----------------------------------------------------------------------------
# incremental writes (an acquisition stored row by row)
# ----------------------------------------------------------------------------
#: pending writes a :class:`DatasetWriter` with ``client=`` allows per worker thread before it
#: waits for the oldest (each holds its frames in worker memory)
PENDING_WRITES_PER_THREAD = 2


def _write_frames(frames: np.ndarray, path: str, name: str, region: tuple[slice, slice], after: Any) -> int:
    """One :class:`DatasetWriter` write task (on a worker): store ``frames`` at ``region``; return its bytes.

    ``after`` (the results of the previous writes to the same shards) is ignored: it only makes the
    scheduler run this task after them, so no two writes read-modify-write one shard at once.
    """
    del after
    array = for_writing(zarr.open_array(path, path=name, mode="r+", zarr_format=3))
    array[region] = frames
    return int(frames.nbytes)


def _check_client(client: Any) -> Any:
    if client is None:
        return None
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        Client = None
    if Client is None or not isinstance(client, Client):
        raise bad_type("client", client, "a distributed.Client (or None to write from this process)")
    return client


def _describe(region: tuple[slice, slice]) -> str:
    ys, xs = region
    return f"scan_y {ys.start}:{ys.stop}, scan_x {xs.start}:{xs.stop}"


class DatasetWriter:
    """Write a dataset into a zarr v3 store piece by piece, as it is acquired.

    The store is created up front with its calibration and coordinates and
    marked incomplete; :meth:`write` stores frames at a scan region,
    :meth:`append` adds scan rows at the end (the store grows), and
    :meth:`close` marks it complete. A writer that is never closed (a crashed
    acquisition) leaves a store that :func:`open_zarr` refuses.

    With ``client=`` each write is encoded and stored on a worker by one task
    (the frames are scattered to a worker, directly unless the client has
    ``direct_to_workers=False``, when :meth:`write`/:meth:`append` is called,
    so the caller may reuse its buffer). Writes touching the same
    shard run one after the other, in the order they were made (zarr
    read-modify-writes a shard); writes to different shards run in parallel.
    At most :data:`PENDING_WRITES_PER_THREAD` writes per worker thread are in
    flight: a further write waits for the oldest. :meth:`close` waits for all
    of them and raises the first failure (naming its scan region); the store
    then stays incomplete.

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
    client : distributed.Client, optional
        Write on this client's workers instead of in this process (default).
    **calibration
        Keywords of :func:`stemdask.from_array` (energy_ev, scan_step_A, ...).

    Notes
    -----
    Measured (docs/storage.md, "Write path"; ``bench_storage.py --quick
    --parts write``, 537 MB, 16 rows per append, default codec, 2-worker
    LocalCluster on a shared 2-core machine, load 1.0-2.2): in-process
    1392 MB/s with 567 ms of client CPU; ``client=`` 920 MB/s with 222 ms
    (the frames cross to the worker processes, which costs them as much CPU
    as the encode).

    Examples
    --------
    >>> with DatasetWriter(path, scan_shape=(0, 64), detector_shape=(128, 128),
    ...                    dtype="uint16", scan_step_A=0.4) as writer:  # doctest: +SKIP
    ...     for row in acquisition:
    ...         writer.append(row[np.newaxis])
    """

    def __init__(
        self,
        store: str | os.PathLike,
        *,
        scan_shape: Sequence[int],
        detector_shape: Sequence[int],
        dtype: Any,
        codec: Any = None,
        chunks: Sequence[int] | None = None,
        shards: Sequence[int] | bool | None = None,
        overwrite: bool = False,
        name: str = "intensity",
        client: Any = None,
        **calibration: Any,
    ):
        self._client = _check_client(client)
        if not is_local(store):
            raise bad_type("store", store, "a local path for incremental writes")
        self.path = Path(store).expanduser().absolute()
        if self.path.exists():
            if not overwrite:
                raise FileExistsError(f"store {str(self.path)!r} exists: pass overwrite=True to replace it")
            shutil.rmtree(self.path)
        ny, nx = (int(s) for s in scan_shape)
        ky, kx = (int(s) for s in detector_shape)
        if ny < 0 or nx < 1 or ky < 1 or kx < 1:
            raise bad_value(
                "scan_shape/detector_shape", (scan_shape, detector_shape), "scan_y >= 0 and positive scan_x, k_y, k_x"
            )
        self.dtype = np.dtype(dtype)
        self.name = name
        template = from_array(
            da.zeros((max(ny, 1), nx, ky, kx), dtype=self.dtype, chunks=(1, nx, ky, kx)),
            name=name,
            source=str(self.path),
            **calibration,
        )
        self._step_y = template.attrs.get("scan_step_A", [None])[0]
        self.attrs = dict(template.attrs)
        chunks = chunks or (1, nx)
        encoding, _ = _encoding(template, name, codec, chunks, shards)
        enc = encoding[name]
        # zarr directly: rows arrive one at a time, so shards are read-modify-written in order
        group = zarr.open_group(self.path, mode="w-", zarr_format=3)
        group.attrs.update({**header(LAYOUT, FORMAT_VERSION), "stemdask_variable": name})
        self._array = group.create_array(
            name,
            shape=(ny, nx, ky, kx),
            dtype=self.dtype,
            chunks=enc["chunks"],
            shards=enc.get("shards"),
            compressors=enc["compressors"],
            serializer=enc.get("serializer", "auto"),
            dimension_names=DIMS,
            attributes=jsonable(self.attrs),
            fill_value=0,
            config=dict(WRITE_ARRAY_CONFIG),
        )
        for dim in DIMS:
            coord = template.coords[dim]
            values = coord.values if dim != "scan_y" else coord.values[:ny]
            arr = group.create_array(
                dim,
                shape=values.shape,
                dtype="float64",
                chunks=(max(values.size, 1024),),
                dimension_names=(dim,),
                attributes=jsonable(dict(coord.attrs)),
                compressors=None,
            )
            arr[...] = values
        self._scan_y = group[DIMS[0]]
        self._group = group
        self.closed = False
        # client=: the writes in flight (oldest first), the last write to each shard, the first failure
        self._pending: deque[tuple[tuple[slice, slice], Any]] = deque()
        self._last: dict[tuple[int, ...], Any] = {}
        self._error: tuple[tuple[slice, slice], BaseException] | None = None
        if self._client is not None:
            self._max_pending = PENDING_WRITES_PER_THREAD * max(1, sum(self._client.nthreads().values()))

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
                raise bad_value(
                    "frames",
                    f"<array of dtype {frames.dtype}>",
                    f"dtype {self.dtype} (or one that casts to it without loss)",
                )
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
        frames = self._check(frames, (ys, xs))
        if self._client is None:
            self._array[ys, xs] = frames
        else:
            self._submit(frames, (ys, xs))

    def _shards(self, region: tuple[slice, slice]) -> list[tuple[int, ...]]:
        """Grid indices of the shards (inner chunks when unsharded) that ``region`` touches."""
        tile = self._array.shards or self._array.chunks
        full = (*region, *(slice(0, n) for n in self.shape[2:]))
        return list(itertools.product(*(range(s.start // t, (s.stop - 1) // t + 1) for s, t in zip(full, tile))))

    def _submit(self, frames: np.ndarray, region: tuple[slice, slice]) -> None:
        """Write ``frames`` at ``region`` on a worker, after the pending writes to the same shards."""
        client = self._client
        shards = self._shards(region)
        after = list({id(f): f for f in (self._last.get(s) for s in shards) if f is not None}.values())
        # straight to a worker (half the client CPU of a scatter through the scheduler, measured),
        # unless the client was made with direct_to_workers=False
        data = client.scatter(frames, hash=False, direct=client.direct_to_workers is not False)
        future = client.submit(_write_frames, data, str(self.path), self.name, region, after, pure=False)
        for s in shards:
            self._last[s] = future
        self._pending.append((region, future))
        while len(self._pending) > self._max_pending:
            self._settle()

    def _settle(self) -> None:
        """Wait for the oldest pending write; remember it if it is the first that failed."""
        from distributed import wait

        region, future = self._pending.popleft()
        wait(future)
        if future.status == "finished":
            # later writes to these shards need not wait for it any more
            self._last = {s: f for s, f in self._last.items() if f is not future}
        elif self._error is None:
            self._error = (region, future.exception())

    def append(self, rows: Any) -> None:
        """Add whole scan rows ``(n_rows, scan_x, k_y, k_x)`` at the end of the scan."""
        rows = np.asarray(rows)
        ny = self.shape[0]
        n = rows.shape[0] if rows.ndim == 4 else -1
        if n < 1:
            raise bad_value(
                "rows", f"<array of shape {rows.shape}>", f"shape (n_rows, {', '.join(map(str, self.shape[1:]))})"
            )
        self._array.resize((ny + n, *self.shape[1:]))
        self._scan_y.resize((ny + n,))
        step = self._step_y if self._step_y is not None else 1.0
        self._scan_y[ny:] = np.arange(ny, ny + n, dtype=np.float64) * step
        self.write(rows, slice(ny, ny + n))

    def close(self) -> None:
        """Mark the store complete (it now opens with :func:`open_zarr`).

        With ``client=``, first wait for every pending write.

        Raises
        ------
        IncompleteStoreError
            A write on a worker failed (the first one is named and chained);
            the store is left incomplete.
        """
        if self.closed:
            return
        while self._pending:
            self._settle()
        if self._error is not None:
            region, err = self._error
            raise IncompleteStoreError(
                f"store {str(self.path)!r}: the write of {_describe(region)} on a worker failed "
                f"({type(err).__name__}: {err}); the store stays incomplete"
            ) from err
        mark_complete(self.path)  # the manifest, then the completion marker
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


register_layout(
    Layout(
        LAYOUT,
        version=FORMAT_VERSION,
        claims=lambda data: isinstance(data, xr.DataArray),
        write=_write_dense,
        open=_open_dense,
    )
)

__all__ = [
    "DatasetWriter",
    "atomic_directory",
    "atomic_path",
    "jsonable",
    "open_for_save",
    "open_zarr",
    "read_group_attrs",
    "save",
    "storage_layout",
    "store_nbytes",
    "write_blocks",
    "write_tile",
]
