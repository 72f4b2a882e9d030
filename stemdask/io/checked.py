"""Reads of stored arrays that name the chunk when one is bad.

zarr verifies every inner chunk's crc32c (and the codec's own checks) but its
errors say neither which store, nor which array, nor which chunk. A
:class:`CheckedZarrSource` reads a region for dask; when the read fails it
reads the region's inner chunks one by one to find the bad ones and raises
:class:`~stemdask.errors.CorruptChunkError` naming the store, the array, the
chunk indices and the file (shard) that holds each.

zarr decodes chunks concurrently on its own event loop; when one fails the
others are dropped, and asyncio logs "Task was destroyed but it is pending!"
for each of them. :func:`quiet_zarr_loop` filters exactly that message out on
zarr's loop (the error itself is raised as usual).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from ..errors import CorruptChunkError
from ..worker_memory import keep_freed_memory
from .local_read import reading_store, resolve_reader

#: chunks named in one error message (the count is always given)
_NAMED = 8


def quiet_zarr_loop() -> None:
    """Drop asyncio's "Task was destroyed but it is pending!" reports on zarr's I/O loop."""
    from zarr.core.sync import _get_loop

    loop = _get_loop()
    if getattr(loop, "_stemdask_quiet", False):
        return
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith("Task was destroyed but it is pending"):
            return  # a sibling of a chunk read that failed: the failure is raised already
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    loop._stemdask_quiet = True  # type: ignore[attr-defined]


def chunk_file(array: zarr.Array, chunk: tuple[int, ...]) -> str:
    """Key (path inside the store) of the file that holds inner chunk ``chunk``."""
    shards = array.shards
    inner = array.chunks
    if shards is None:
        coords = chunk
    else:
        per = [s // c for s, c in zip(shards, inner)]
        coords = tuple(i // p for i, p in zip(chunk, per))
    return f"{array.path}/{array.metadata.encode_chunk_key(coords)}"


def chunks_in(array: zarr.Array, region: tuple[slice, ...]) -> list[tuple[int, ...]]:
    """Inner-chunk indices that ``region`` (slices with start/stop) touches."""
    ranges = []
    for sl, size, c in zip(region, array.shape, array.chunks):
        start, stop, _ = sl.indices(size)
        ranges.append(range(start // c, max(start, stop - 1) // c + 1))
    return list(itertools.product(*ranges))


def read_chunk(array: zarr.Array, chunk: tuple[int, ...]) -> np.ndarray:
    """Read (and so verify) one inner chunk."""
    region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(chunk, array.chunks, array.shape))
    return np.asarray(array[region])


def describe_bad(store: Any, array: zarr.Array, bad: list[tuple[tuple[int, ...], str]]) -> str:
    """The message for bad chunks: store, array, chunk indices, files and reasons."""
    named = "; ".join(f"chunk {c} (file {chunk_file(array, c)!r}): {why.rstrip('.')}" for c, why in bad[:_NAMED])
    more = f"; and {len(bad) - _NAMED} more" if len(bad) > _NAMED else ""
    return (
        f"store {str(store)!r}, array {array.path!r}: {len(bad)} corrupt chunk(s) "
        f"(checksum or decoding failed): {named}{more}. Run `stemdask verify {store}` for a full report"
    )


def locate_bad(array: zarr.Array, region: tuple[slice, ...]) -> list[tuple[tuple[int, ...], str]]:
    """The inner chunks of ``region`` that fail to read, with the reason for each."""
    bad = []
    for chunk in chunks_in(array, region):
        try:
            read_chunk(array, chunk)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as err:
            bad.append((chunk, f"{type(err).__name__}: {err}"))
    return bad


@dataclass
class CheckedZarrSource:
    """A stored array for ``dask.array.from_array``: reads that name a bad chunk.

    Picklable (holds the store and the array path; the zarr array is opened
    once per process on first read). A local store is read through the zarr
    store of ``reader`` (:mod:`stemdask.io.local_read`; chosen where the
    source is made, so workers read as the client chose).
    """

    store: Any
    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    reader: str = field(default_factory=resolve_reader)
    _array: Any = field(default=None, repr=False, compare=False)
    _pipeline: str | None = field(default=None, repr=False, compare=False)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None, "_pipeline": None}

    def __dask_tokenize__(self) -> tuple:
        stamp = None
        if isinstance(self.store, (str, os.PathLike)) and os.path.exists(os.path.join(self.store, self.path)):
            stamp = os.stat(os.path.join(self.store, self.path, "zarr.json")).st_mtime_ns
        return ("stemdask-checked-zarr", str(self.store), self.path, self.shape, str(self.dtype), stamp)

    def array(self) -> zarr.Array:
        """The zarr array, opened once per process and again when zarr's codec pipeline setting changed."""
        pipeline = str(zarr.config.get("codec_pipeline.path"))
        if self._array is None or self._pipeline != pipeline:
            store = reading_store(self.store, self.reader)
            self._array = zarr.open_array(store, path=self.path, mode="r", zarr_format=3)
            self._pipeline = pipeline
        return self._array

    def __getitem__(self, index: Any) -> np.ndarray:
        keep_freed_memory()  # decoded chunks are large temporaries (stemdask.worker_memory)
        array = self.array()
        quiet_zarr_loop()
        try:
            return np.asarray(array[index])
        except (MemoryError, KeyboardInterrupt, OSError):
            raise  # not the data's fault (or an OSError that names its file)
        except Exception as err:
            region = index if isinstance(index, tuple) and all(isinstance(i, slice) for i in index) else None
            bad = locate_bad(array, region) if region is not None and len(region) == array.ndim else []
            if not bad:
                raise
            raise CorruptChunkError(describe_bad(self.store, array, bad)) from err
        finally:
            release = getattr(array.store, "release_pages", None)
            if release is not None:
                release()  # kept file maps out of the resident memory (io/local_read)


__all__ = [
    "CheckedZarrSource",
    "chunk_file",
    "chunks_in",
    "describe_bad",
    "locate_bad",
    "quiet_zarr_loop",
    "read_chunk",
]
