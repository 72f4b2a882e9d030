"""Row and column sums of frames in one pass (numba): the kernel for marginal masks.

A mask that depends on the row only (``k_y``, a horizontal band) or on the
column only (``k_x``, a constant) contracts a frame through its row or column
sums. Centre of mass (masks ``k_y``, ``k_x``, ``1``) is the everyday case:
one pass over the frames that sums each row and each column, instead of
converting every pixel to floating point for a matrix product. Integer frames
are summed in int64 (exact), float frames in float64.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _row_col_sums(frames, rows, cols):  # pragma: no cover - compiled
    n, ky, kx = frames.shape
    for i in range(n):
        for x in range(kx):
            cols[i, x] = 0
        for y in range(ky):
            s = rows.dtype.type(0)
            for x in range(kx):
                v = frames[i, y, x]
                s += v
                cols[i, x] += v
            rows[i, y] = s


def row_col_sums(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows (n, k_y), cols (n, k_x))`` sums of frames ``(n, k_y, k_x)``.

    int64 for integer frames (exact), float64 otherwise.
    """
    acc = np.int64 if frames.dtype.kind in "iub" else np.float64
    n, ky, kx = frames.shape
    rows = np.empty((n, ky), dtype=acc)
    cols = np.empty((n, kx), dtype=acc)
    _row_col_sums(frames.view(np.uint8) if frames.dtype == np.bool_ else frames, rows, cols)
    return rows, cols
