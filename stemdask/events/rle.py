"""Run-length encoding of electron events, with a repeat code.

Within a frame the hit pixels are visited in increasing linear index. Every
hit pixel ``p`` with ``n`` electrons is written as one code
``(gap << 1) | (n > 1)``, where ``gap = p - previous_p - 1`` is the number of
empty pixels skipped since the previous hit pixel (``previous_p = -1`` at the
start of a frame); when the low bit (the repeat flag) is set, the next code is
``n``. Frame ``f`` owns ``codes[offsets[f]:offsets[f + 1]]``. Codes are
``uint16`` when the detector has at most 32768 pixels, else ``uint32``.

Encoding and decoding are single passes over the events, O(counts) (Pelz et
al. 2022, Table I); events that are not sorted within their frames are
sorted first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from ..backend import to_numpy
from ..errors import FileFormatError, bad_type, bad_value
from .block import EventBlock, index_dtype


def code_dtype(n_pixels: int) -> np.dtype:
    """Smallest unsigned dtype that holds ``2 * gap + 1`` for a frame of ``n_pixels``."""
    return np.dtype(np.uint16) if 2 * n_pixels <= 2**16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class RunLengthEvents:
    """Run-length encoded electron events of a tile of frames.

    Attributes
    ----------
    codes : numpy.ndarray
        Gap codes (see the module docstring), uint16 or uint32.
    offsets : numpy.ndarray
        ``F + 1`` int64 positions of each frame's codes.
    scan_shape, frame_shape : (int, int)
        Scan positions and detector shape of the block.
    dtype : numpy.dtype
        Integer dtype of the dense counts.
    """

    codes: np.ndarray
    offsets: np.ndarray
    scan_shape: tuple[int, int]
    frame_shape: tuple[int, int]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.offsets.nbytes)


@numba.njit(cache=True, nogil=True)
def _sorted_within_frames(indices, offsets):  # pragma: no cover - compiled
    for f in range(offsets.shape[0] - 1):
        for i in range(offsets[f] + 1, offsets[f + 1]):
            if indices[i] < indices[i - 1]:
                return False
    return True


@numba.njit(cache=True, nogil=True)
def _encode(indices, offsets, codes, code_offsets, limit):  # pragma: no cover - compiled
    pos = 0
    for f in range(offsets.shape[0] - 1):
        code_offsets[f] = pos
        prev = -1
        i = offsets[f]
        end = offsets[f + 1]
        while i < end:
            p = np.int64(indices[i])
            n = 1
            while i + n < end and indices[i + n] == p:
                n += 1
            gap = p - prev - 1
            if n > 1:
                if n > limit:
                    return -p - 1
                codes[pos] = gap * 2 + 1
                codes[pos + 1] = n
                pos += 2
            else:
                codes[pos] = gap * 2
                pos += 1
            prev = p
            i += n
    code_offsets[offsets.shape[0] - 1] = pos
    return pos


@numba.njit(cache=True, nogil=True)
def _decoded_sizes(codes, offsets, n_pixels, sizes):  # pragma: no cover - compiled
    """Electrons per frame; -(frame + 1) for a frame whose codes are malformed."""
    for f in range(offsets.shape[0] - 1):
        prev = -1
        total = 0
        i = offsets[f]
        end = offsets[f + 1]
        while i < end:
            c = np.int64(codes[i])
            p = prev + 1 + (c >> 1)
            if p >= n_pixels:
                return -(f + 1)
            if c & 1:
                if i + 1 >= end or codes[i + 1] < 2:
                    return -(f + 1)
                total += np.int64(codes[i + 1])
                i += 2
            else:
                total += 1
                i += 1
            prev = p
        sizes[f] = total
    return 0


@numba.njit(cache=True, nogil=True)
def _decode(codes, offsets, out):  # pragma: no cover - compiled
    pos = 0
    for f in range(offsets.shape[0] - 1):
        prev = -1
        i = offsets[f]
        end = offsets[f + 1]
        while i < end:
            c = np.int64(codes[i])
            p = prev + 1 + (c >> 1)
            n = 1
            if c & 1:
                n = np.int64(codes[i + 1])
                i += 2
            else:
                i += 1
            for _ in range(n):
                out[pos] = p
                pos += 1
            prev = p


def rle_encode(block: EventBlock) -> RunLengthEvents:
    """Run-length encode an event block in O(counts) (CPU; cupy blocks are copied)."""
    if not isinstance(block, EventBlock):
        raise bad_type("block", block, "an EventBlock")
    indices = np.ascontiguousarray(to_numpy(block.indices))
    offsets = np.ascontiguousarray(to_numpy(block.offsets))
    if not _sorted_within_frames(indices, offsets):
        order = np.lexsort((indices, block.frame_ids() if block.xp is np else to_numpy(block.frame_ids())))
        indices = indices[order]
    ctype = code_dtype(block.n_pixels)
    codes = np.empty(2 * indices.shape[0], ctype)  # at most a code and a count per electron
    code_offsets = np.empty(offsets.shape[0], np.int64)
    n = _encode(indices, offsets, codes, code_offsets, np.iinfo(ctype).max)
    if n < 0:
        raise bad_value(
            "block",
            f"<pixel {-n - 1} with more electrons in one frame than {ctype} holds>",
            f"at most {np.iinfo(ctype).max} electrons per pixel per frame",
        )
    return RunLengthEvents(codes[:n].copy(), code_offsets, block.scan_shape, block.frame_shape, block.dtype)


def rle_decode(rle: RunLengthEvents) -> EventBlock:
    """Linear-index events of run-length encoded ones in O(counts).

    Raises
    ------
    FileFormatError
        For decreasing offsets, a gap that runs past the end of the frame or
        a repeat flag without its count.
    """
    if not isinstance(rle, RunLengthEvents):
        raise bad_type("rle", rle, "a RunLengthEvents")
    codes = np.ascontiguousarray(rle.codes)
    offsets = np.ascontiguousarray(rle.offsets, dtype=np.int64)
    n_frames = rle.scan_shape[0] * rle.scan_shape[1]
    if offsets.shape != (n_frames + 1,) or offsets[0] != 0 or offsets[-1] != codes.shape[0]:
        raise FileFormatError(
            f"run-length offsets must be {n_frames + 1} values from 0 to the "
            f"{codes.shape[0]} codes; got {offsets.shape[0]} from "
            f"{offsets[:1].tolist()} to {offsets[-1:].tolist()}"
        )
    if np.any(np.diff(offsets) < 0):
        frame = int(np.argmax(np.diff(offsets) < 0))
        raise FileFormatError(f"run-length offsets decrease at frame {frame}")
    n_pixels = rle.frame_shape[0] * rle.frame_shape[1]
    sizes = np.zeros(n_frames, np.int64)
    bad = _decoded_sizes(codes, offsets, n_pixels, sizes)
    if bad < 0:
        raise FileFormatError(
            f"run-length codes of frame {-bad - 1} are malformed: a gap runs past the "
            f"{n_pixels} pixels of the frame or a repeat flag lacks its count"
        )
    out = np.empty(int(sizes.sum()), np.int64)
    _decode(codes, offsets, out)
    event_offsets = np.concatenate([[0], np.cumsum(sizes)])
    return EventBlock(
        out.astype(index_dtype(n_pixels)), event_offsets, rle.scan_shape, rle.frame_shape, rle.dtype, check=False
    )


def rle_nbytes(block: Any) -> int:
    """Bytes of the run-length codes of ``block`` (without offsets)."""
    return int(rle_encode(block).codes.nbytes)
