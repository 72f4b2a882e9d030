"""Picklable, lazily opened file-backed arrays for ``dask.array.from_array``.

An open h5py dataset or numpy memmap cannot travel to dask workers. These
small objects hold only a path and a layout; each read opens the file in the
worker, reads the requested block and converts it to native byte order (numba
and CuPy need it; the values are unchanged).

Raw and ``.npy`` files are memory-mapped once per process (each dask worker
process has its own map, shared by its threads) and the map is kept for
later reads: a fresh map faults its pages in again on every compute. The map
is keyed by the file's identity (path, device, inode, size, ``st_mtime_ns``),
checked with one ``os.stat`` per read, so a file rewritten or replaced is
mapped afresh, never read stale.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np


def _native(block: np.ndarray) -> np.ndarray:
    if not block.dtype.isnative:
        return block.astype(block.dtype.newbyteorder("="))
    return block


#: memory maps kept per process: (file identity, layout) -> mapped array, most recently used last
_MAPS: OrderedDict[tuple, np.ndarray] = OrderedDict()
#: how many maps one process keeps (each holds its file open; the pages stay in the page cache)
MAX_MAPS = 32
_MAPS_LOCK = threading.Lock()


def _reset_lock_after_fork() -> None:
    global _MAPS_LOCK
    _MAPS_LOCK = threading.Lock()  # a thread of the parent may have held it at the fork


os.register_at_fork(after_in_child=_reset_lock_after_fork)


def file_identity(path: str) -> tuple[str, int, int, int, int]:
    """``(path, st_dev, st_ino, st_size, st_mtime_ns)`` of ``path`` now: changes when the file is rewritten."""
    st = os.stat(path)
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def clear_map_cache() -> None:
    """Drop every memory map this process keeps (they close once no block refers to them)."""
    with _MAPS_LOCK:
        _MAPS.clear()


class _NativeSource:
    """What dask needs of an array-like: a native-endian dtype and ndim."""

    shape: tuple[int, ...]
    file_dtype: np.dtype

    @property
    def dtype(self) -> np.dtype:
        return self.file_dtype.newbyteorder("=")

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class RawSource(_NativeSource):
    """Frames in a raw binary file: ``header_bytes``, then frames, each after
    an optional ``frame_header_bytes`` header.

    Reads return native-endian arrays of shape ``shape[index]``: for a
    native-endian file a memory-mapped view (zero copy; measured 20-30 %
    faster on a LocalCluster than reading into fresh buffers), else a
    converted copy.
    """

    path: str
    shape: tuple[int, ...]
    file_dtype: np.dtype
    header_bytes: int = 0
    frame_header_bytes: int = 0

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.shape[-2], self.shape[-1])

    @property
    def n_frames(self) -> int:
        return int(np.prod(self.shape[:-2]))

    def expected_bytes(self) -> int:
        frame = int(np.prod(self.frame_shape)) * self.file_dtype.itemsize + self.frame_header_bytes
        return self.header_bytes + self.n_frames * frame

    def _memmap(self) -> np.ndarray:
        """The whole file as an array of ``shape``, mapped once per process and file version."""
        key = (file_identity(self.path), self.shape, self.file_dtype.str, self.header_bytes, self.frame_header_bytes)
        with _MAPS_LOCK:
            frames = _MAPS.get(key)
            if frames is not None:
                _MAPS.move_to_end(key)
                return frames
        frames = self._map_file()
        with _MAPS_LOCK:
            for old in [k for k in _MAPS if k[0][0] == self.path and k[0] != key[0]]:
                del _MAPS[old]  # an older version of this file
            frames = _MAPS.setdefault(key, frames)  # another thread may have mapped it meanwhile
            while len(_MAPS) > MAX_MAPS:
                _MAPS.popitem(last=False)
        return frames

    def _map_file(self) -> np.ndarray:
        frame_dtype = (
            np.dtype([("header", f"V{self.frame_header_bytes}"), ("frame", self.file_dtype, self.frame_shape)])
            if self.frame_header_bytes
            else np.dtype((self.file_dtype, self.frame_shape))
        )
        mm = np.memmap(self.path, dtype=frame_dtype, mode="r", offset=self.header_bytes, shape=(self.n_frames,))
        frames = mm["frame"] if self.frame_header_bytes else mm
        return frames.reshape(self.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        block = self._memmap()[index]
        if self.file_dtype.isnative:
            # a view of the page cache, no copy: the kernels convert it in small batches
            return block
        return block.astype(self.dtype)  # one copy, to native byte order


@dataclass(frozen=True)
class HDF5Source(_NativeSource):
    """A dataset in an HDF5 file (external links and compression filters included)."""

    path: str
    dataset: str
    shape: tuple[int, ...]
    file_dtype: np.dtype

    def __getitem__(self, index: Any) -> np.ndarray:
        import h5py
        import hdf5plugin  # noqa: F401  (registers bitshuffle/LZ4 and friends)

        with h5py.File(self.path, "r") as f:
            return _native(np.asarray(f[self.dataset][index]))


def frames_to_scan(frames: Any, scan_shape: tuple[int, int]) -> Any:
    """Reshape a lazy frame stack ``(n, k_y, k_x)`` to ``(scan_y, scan_x, k_y, k_x)``.

    Rechunks to whole scan rows first so the reshape stays blockwise.
    """
    import dask.array as da

    ny, nx = scan_shape
    rows = max(1, (64 * 2**20) // max(nx * frames.shape[1] * frames.shape[2] * frames.dtype.itemsize, 1))
    frames = frames.rechunk((min(rows, ny) * nx, -1, -1))
    return da.reshape(frames, (ny, nx, *frames.shape[1:]), merge_chunks=False)


def file_size(path: str | os.PathLike) -> int:
    return os.stat(path).st_size
