"""Picklable, lazily opened file-backed arrays for ``dask.array.from_array``.

An open h5py dataset or numpy memmap cannot travel to dask workers. These
small objects hold only a path and a layout; each read opens the file in the
worker, reads the requested block and converts it to native byte order (numba
and CuPy need it; the values are unchanged).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np


def _native(block: np.ndarray) -> np.ndarray:
    if not block.dtype.isnative:
        return block.astype(block.dtype.newbyteorder("="))
    return block


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

    Reads return native-endian arrays of shape ``shape[index]``.
    """

    path: str
    shape: tuple[int, ...]
    file_dtype: np.dtype
    header_bytes: int = 0
    frame_header_bytes: int = 0

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.shape[-2:]

    @property
    def n_frames(self) -> int:
        return int(np.prod(self.shape[:-2]))

    def expected_bytes(self) -> int:
        frame = int(np.prod(self.frame_shape)) * self.file_dtype.itemsize + self.frame_header_bytes
        return self.header_bytes + self.n_frames * frame

    def _memmap(self) -> np.ndarray:
        frame_dtype = np.dtype([("header", f"V{self.frame_header_bytes}"),
                                ("frame", self.file_dtype, self.frame_shape)]) \
            if self.frame_header_bytes else np.dtype((self.file_dtype, self.frame_shape))
        mm = np.memmap(self.path, dtype=frame_dtype, mode="r", offset=self.header_bytes,
                       shape=(self.n_frames,))
        frames = mm["frame"] if self.frame_header_bytes else mm
        return frames.reshape(self.shape)

    def _frame_runs(self, index: tuple[slice, ...]) -> list[tuple[int, int]] | None:
        """Contiguous runs of frames ``[start, stop)`` that make up ``index``, or None."""
        lead = self.shape[:-2]
        if len(index) != len(self.shape) or any(
                not isinstance(s, slice) or s.indices(n)[2] != 1 for s, n in zip(index, self.shape)):
            return None
        if any(s.indices(n)[:2] != (0, n) for s, n in zip(index[-2:], self.shape[-2:])):
            return None  # a part of each frame: let the memory map pick it
        ranges = [range(*s.indices(n)) for s, n in zip(index[:-2], lead)]
        if len(lead) == 1:
            return [(ranges[0].start, ranges[0].stop)] if len(ranges[0]) else []
        ys, xs = ranges
        nx = lead[1]
        if len(xs) == nx:  # whole rows: one run
            return [(ys.start * nx, ys.stop * nx)] if len(ys) else []
        return [(y * nx + xs.start, y * nx + xs.stop) for y in ys] if len(xs) else []

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        runs = self._frame_runs(index) if not self.frame_header_bytes else None
        if runs is None:
            return _native(np.array(self._memmap()[index]))
        # plain reads into one buffer: faster than faulting pages of a memory map in
        out_shape = tuple(len(range(*s.indices(n))) for s, n in zip(index, self.shape))
        out = np.empty(out_shape, dtype=self.file_dtype)
        frame_bytes = int(np.prod(self.frame_shape)) * self.file_dtype.itemsize
        flat = memoryview(out.reshape(-1).view(np.uint8))
        pos = 0
        with open(self.path, "rb", buffering=0) as f:
            for start, stop in runs:
                f.seek(self.header_bytes + start * frame_bytes)
                want = (stop - start) * frame_bytes
                got = f.readinto(flat[pos:pos + want])
                if got != want:
                    raise OSError(f"{self.path!r} ended early: read {got} of {want} bytes at frame {start} "
                                  f"(was the file truncated after it was opened?)")
                pos += want
        return _native(out)


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
