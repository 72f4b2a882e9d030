"""How the bytes of a local zarr store are read: zarr's ``LocalStore`` or a zarr store that avoids its copies.

zarr-python's ``LocalStore.get`` reads a file (or a byte range of a shard)
into a new ``bytes`` object. For a large read those are freshly mapped
4 KiB pages that the kernel faults in one by one while copying: 1.6-2.0 GB
per CPU-second on the development machine, where the same read into a
NumPy array (which asks for transparent huge pages) runs at 9-11 GB/s and
a crc32c over a memory map of the page cache at 14-15 GB/s (docs/storage.md,
"One uncompressed shard"). For an uncompressed store that copy was the
largest part of the read.

The readers here are zarr ``Store`` classes (``LocalStore`` subclasses whose
``get`` returns a zarr ``Buffer``), so the whole of zarr's codec pipeline
still runs: every inner chunk's crc32c is verified by zarr's
``Crc32cCodec`` as before, and stores stay plain zarr v3. Only where the
bytes come from changes:

``"zarr"``
    zarr's own ``LocalStore``.
``"numpy"``
    reads each file or byte range with ``readinto`` into a new NumPy array.
``"mmap"`` (the default)
    returns a read-only view of a memory map of the file (no copy of the
    file). Each process keeps the maps of the files it read last, up to
    :data:`MAP_CACHE_BYTES` (128 MiB; the last file read is kept even when
    larger; environment variable ``STEMDASK_ZARR_MAP_CACHE_BYTES``, ``0``
    keeps none). After each read of a dense store the kept maps' pages are
    taken out of the process's resident memory (:func:`release_pages`), so
    they do not count against a dask worker's memory limit. A file is
    mapped afresh when its inode, size or modification
    time changed. A file truncated in place by another process while a
    read of it is under way ends the reader with ``SIGBUS``; zarr and
    stemdask replace files by renaming, which leaves a map valid.

The setting is the environment variable ``STEMDASK_ZARR_READER`` (default
``"mmap"``), read when a store is opened (``stemdask.open_dataset``): the
opened dataset's reads use that reader in every process, workers included.
:func:`use_reader` sets it in this process and, given a ``distributed``
client, on its workers. It changes only the speed: every reader returns the
same bytes (``tests/test_local_read.py``).
"""

from __future__ import annotations

import asyncio
import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.buffer import Buffer, BufferPrototype
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.buffer import default_buffer_prototype
from zarr.storage import LocalStore

from ..errors import bad_value

#: environment variable naming the reader of local stores (a key of :data:`READERS`)
ENV_VAR = "STEMDASK_ZARR_READER"
#: reader used when neither an argument nor :data:`ENV_VAR` chooses one
DEFAULT_READER = "mmap"


def _span(size: int, byte_range: ByteRequest | None) -> tuple[int, int]:
    """``(start, stop)`` of ``byte_range`` in a file of ``size`` bytes, clipped to the file as ``LocalStore`` does."""
    if byte_range is None:
        return 0, size
    if isinstance(byte_range, RangeByteRequest):
        start, stop = byte_range.start, byte_range.end
    elif isinstance(byte_range, OffsetByteRequest):
        start, stop = byte_range.offset, size
    elif isinstance(byte_range, SuffixByteRequest):
        start, stop = max(0, size - byte_range.suffix), size
    else:
        raise TypeError(f"Unexpected byte_range, got {byte_range}.")
    start = min(max(start, 0), size)
    return start, min(max(stop, start), size)


def _read_numpy(path: Path, prototype: BufferPrototype, byte_range: ByteRequest | None) -> Buffer:
    with open(path, "rb", buffering=0) as f:
        start, stop = _span(os.fstat(f.fileno()).st_size, byte_range)
        out = np.empty(stop - start, dtype=np.uint8)
        f.seek(start)
        done = 0
        view = out.data
        while done < out.size:
            n = f.readinto(view[done:])
            if not n:  # the file shrank since fstat
                out = out[:done]
                break
            done += n
    return prototype.buffer.from_array_like(out)


#: bytes of file maps kept per process by the ``"mmap"`` reader (least recently used dropped first;
#: the last file read is kept even when larger); environment variable :data:`MAP_CACHE_ENV` overrides it
MAP_CACHE_BYTES = 128 * 2**20
#: environment variable: bytes of file maps to keep per process, ``0`` to map each read afresh
MAP_CACHE_ENV = "STEMDASK_ZARR_MAP_CACHE_BYTES"
_maps: OrderedDict[str, tuple[tuple[int, int, int], np.ndarray, mmap.mmap]] = OrderedDict()
_maps_lock = threading.Lock()


def _mapped(path: Path) -> np.ndarray:
    """The whole file ``path`` as a read-only uint8 array over one memory map, kept while the file is unchanged.

    One map per file and process, reused by every read of it: mapping and
    unmapping per chunk serialises the threads of a process on the kernel's
    lock of its address space (measured: 1.7 instead of 3.1 GB per CPU-s
    with two threads). A file is known by its inode, size and modification
    time; when any changes it is mapped afresh.
    """
    key = os.fspath(path)
    with open(path, "rb", buffering=0) as f:
        st = os.fstat(f.fileno())
        ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        with _maps_lock:
            hit = _maps.get(key)
            if hit is not None and hit[0] == ident:
                _maps.move_to_end(key)
                return hit[1]
        if st.st_size == 0:
            return np.empty(0, dtype=np.uint8)
        # the array holds the map; it is unmapped when the last view of it goes
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = np.frombuffer(mapped, dtype=np.uint8)
    budget = _map_cache_bytes()
    with _maps_lock:
        if budget <= 0:
            _maps.clear()
            return view
        _maps[key] = (ident, view, mapped)
        _maps.move_to_end(key)
        total = sum(entry[1].nbytes for entry in _maps.values())
        while total > budget and len(_maps) > 1:
            total -= _maps.popitem(last=False)[1][1].nbytes
    return view


def release_pages() -> None:
    """Take the pages of the kept maps out of this process's resident memory (they stay in the page cache).

    ``madvise(MADV_DONTNEED)`` on each kept map: the map stays, its next read
    faults the pages back in from the page cache. Called after every read
    of a dense store (``CheckedZarrSource``), so that the kept maps do not
    count as the worker's memory: dask's memory monitor counts resident
    file pages, and without this a worker with a small memory limit paused
    on them (``bench_imaging.py --ooc``). Safe while another thread reads
    the same map: a read-only shared map loses nothing.
    """
    with _maps_lock:
        kept = [entry[2] for entry in _maps.values()]
    for mapped in kept:
        try:
            mapped.madvise(mmap.MADV_DONTNEED)
        except (ValueError, OSError, AttributeError):  # closed, or no madvise on this platform
            pass


def _map_cache_bytes() -> int:
    text = os.environ.get(MAP_CACHE_ENV)
    if text is None:
        return MAP_CACHE_BYTES
    try:
        return int(text)
    except ValueError:
        raise bad_value(MAP_CACHE_ENV, text, "a whole number of bytes (0: keep no maps)") from None


def clear_maps() -> None:
    """Drop the file maps kept by the ``"mmap"`` reader in this process."""
    with _maps_lock:
        _maps.clear()


def _read_mmap(path: Path, prototype: BufferPrototype, byte_range: ByteRequest | None) -> Buffer:
    whole = _mapped(path)
    start, stop = _span(whole.size, byte_range)
    return prototype.buffer.from_array_like(whole[start:stop])


class _ReadingLocalStore(LocalStore):
    """A ``LocalStore`` whose reads go through ``_read`` (a function like zarr's ``_get``)."""

    _read: Any = None

    async def get(
        self, key: str, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if prototype is None:
            prototype = default_buffer_prototype()
        if not self._is_open:
            await self._open()
        try:
            return await asyncio.to_thread(type(self)._read, self.root / key, prototype, byte_range)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, byte_range) for key, byte_range in key_ranges)))


class NumpyReadLocalStore(_ReadingLocalStore):
    """``LocalStore`` that reads each file or byte range into a new NumPy array (``readinto``)."""

    _read = staticmethod(_read_numpy)


class MmapLocalStore(_ReadingLocalStore):
    """``LocalStore`` whose reads are read-only views of a memory map of the file."""

    _read = staticmethod(_read_mmap)

    def release_pages(self) -> None:
        """:func:`release_pages`: called by ``CheckedZarrSource`` when a read is done."""
        release_pages()


#: reader name -> zarr store class for a local directory
READERS: dict[str, type[LocalStore]] = {
    "zarr": LocalStore,
    "numpy": NumpyReadLocalStore,
    "mmap": MmapLocalStore,
}


def resolve_reader(reader: str | None = None) -> str:
    """The reader to use: ``reader`` if given, else :data:`ENV_VAR`, else :data:`DEFAULT_READER`.

    Raises
    ------
    InvalidArgumentError
        For a name that is not a key of :data:`READERS`.
    """
    name = reader if reader is not None else os.environ.get(ENV_VAR, DEFAULT_READER)
    if name not in READERS:
        where = "reader" if reader is not None else ENV_VAR
        raise bad_value(where, name, f"one of {sorted(READERS)}")
    return name


#: zarr-python's own codec pipeline: the one that reads through a store's ``get`` (and so through these readers)
ZARR_PIPELINE = "zarr.core.codec_pipeline.BatchedCodecPipeline"


def reading_store(store: Any, reader: str | None = None) -> Any:
    """A read-only zarr store for ``store`` read by ``reader``: a local path becomes that reader's store.

    Anything else (a zarr store object, a URL) is returned unchanged. Under
    another codec pipeline than zarr-python's (``zarrs``, which reads local
    files with its own Rust store and falls back to zarr-python's pipeline,
    silently, for a store class it does not know) a local path becomes
    zarr's own ``LocalStore`` whatever ``reader`` says.
    """
    name = resolve_reader(reader)
    if isinstance(store, (str, os.PathLike)) and "://" not in str(store):
        if str(zarr.config.get("codec_pipeline.path")) != ZARR_PIPELINE:
            name = "zarr"
        return READERS[name](os.fspath(store), read_only=True)
    return store


def use_reader(name: str, *, client: Any | None = None) -> str:
    """Read local zarr stores opened from now on with reader ``name``; return the previous name.

    Sets :data:`ENV_VAR` in this process and, given a ``distributed`` client,
    on each of its workers (for stores opened there).

    Raises
    ------
    InvalidArgumentError
        For a name that is not a key of :data:`READERS`.
    """
    previous = resolve_reader()
    resolve_reader(name)
    os.environ[ENV_VAR] = name
    if client is not None:
        client.run(os.environ.__setitem__, ENV_VAR, name)
    return previous


__all__ = [
    "DEFAULT_READER",
    "ENV_VAR",
    "MAP_CACHE_BYTES",
    "MAP_CACHE_ENV",
    "READERS",
    "ZARR_PIPELINE",
    "MmapLocalStore",
    "NumpyReadLocalStore",
    "clear_maps",
    "release_pages",
    "reading_store",
    "resolve_reader",
    "use_reader",
]
