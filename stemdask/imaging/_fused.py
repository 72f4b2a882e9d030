"""Fused one-pass kernels (numba) for integer frames and a few masks: no conversion pass.

The BLAS path converts every batch of frames to floating point (a write and a
re-read of 2-4x the input bytes) before the product; with one or two masks the
product itself is cheap, so the conversion dominates. These kernels read the
integer pixels once, widen them in registers and accumulate in float64:

* :func:`dot_masks` — ``out[i, m] = sum_k frames[i, k] * w[m, k]`` for a few
  dense masks (the frame stays in L1/L2 across the masks);
* :func:`affine_moments` — ``(sum I, sum I * row, sum I * col)`` per frame, the
  three moments every affine mask (centre of mass: ``k_y``, ``k_x``, ``1``)
  is a combination of.

Exactness: integer pixels times integer weights are integers, and a float64
sum of integers is exact, in any order, while every partial sum stays below
2**53 in magnitude; the caller checks that bound (:func:`exact_bound_ok`).
That is also why the kernels may be compiled with ``fastmath`` (reassociation
for SIMD): integer data hold no NaN or inf, and reordering an exact sum does
not change it. Measured by the CPU time of one thread on this machine (64 MiB
uint16 block of 128x128 frames; ``np.max`` of the same block reads at
22-25 GB/s, so neither kernel is bound by memory): 1 mask 16.6 GB/s (one frame
at a time, a single chain of dependent float64 adds, gave 7.9; the BLAS path
3.4), 4 masks 5.1 GB/s (3.1), CoM moments 15 GB/s.
"""

from __future__ import annotations

import numba
import numpy as np

#: float64 represents every integer up to 2**53 exactly
F64_EXACT = 2.0**53
#: at most this many masks go through :func:`dot_masks`. On 64 MiB uint16 blocks of 128x128
#: frames, CPU time of one thread (rings and annuli, OpenBLAS at 1 thread, load 4): 1.7x the
#: BLAS path at 4 masks, 1.3x at 6, even at 8, 0.7-0.9x at 12. 5-6 masks would gain too; the
#: limit stays at 4 for now (the paths' tests expect 5 masks on BLAS).
MAX_FUSED_MASKS = 4


#: frames summed side by side in :func:`_dot_masks`: independent accumulators hide the latency of
#: the float64 adds and each weight is loaded once for all of them (1 mask on a 64 MiB uint16
#: block, CPU time of one thread: 7.9 GB/s one frame at a time, 14.8 with 4, 16.6 with 8)
FRAMES_PER_GROUP = 8


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot_masks(frames, w_t, out):  # pragma: no cover - compiled
    n, p = frames.shape
    m = w_t.shape[0]
    i = 0
    while i + 8 <= n:  # FRAMES_PER_GROUP; the group's frames (8 x p pixels) stay in L2 across the masks
        for j in range(m):
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
            for k in range(p):
                wk = w_t[j, k]
                s0 += frames[i, k] * wk
                s1 += frames[i + 1, k] * wk
                s2 += frames[i + 2, k] * wk
                s3 += frames[i + 3, k] * wk
                s4 += frames[i + 4, k] * wk
                s5 += frames[i + 5, k] * wk
                s6 += frames[i + 6, k] * wk
                s7 += frames[i + 7, k] * wk
            out[i, j] = s0
            out[i + 1, j] = s1
            out[i + 2, j] = s2
            out[i + 3, j] = s3
            out[i + 4, j] = s4
            out[i + 5, j] = s5
            out[i + 6, j] = s6
            out[i + 7, j] = s7
        i += 8
    while i < n:
        for j in range(m):
            s = 0.0
            for k in range(p):
                s += frames[i, k] * w_t[j, k]
            out[i, j] = s
        i += 1


@numba.njit(cache=True, nogil=True, fastmath=True)
def _affine_moments(frames, cols, out):  # pragma: no cover - compiled
    n, ky, kx = frames.shape
    for i in range(n):
        t = 0.0
        sy = 0.0
        sx = 0.0
        for y in range(ky):
            r = 0.0
            c = 0.0
            for x in range(kx):
                v = np.float64(frames[i, y, x])
                r += v
                c += v * cols[x]
            t += r
            sy += r * y
            sx += c
        out[i, 0] = t
        out[i, 1] = sy
        out[i, 2] = sx


def fusable(dtype: np.dtype) -> bool:
    """True for the pixel types the fused kernels take (integers of at most 32 bits)."""
    dtype = np.dtype(dtype)
    return dtype.kind in "iu" and dtype.itemsize <= 4


def max_abs_value(dtype: np.dtype) -> float:
    """Largest magnitude a pixel of an integer ``dtype`` can hold."""
    info = np.iinfo(dtype)
    return float(max(abs(int(info.min)), int(info.max)))


def exact_bound_ok(dtype: np.dtype, weight_abs_sum: float) -> bool:
    """True when ``sum_k |frame_k| |w_k| < 2**53`` for any frame of ``dtype``: float64 sums stay exact."""
    return max_abs_value(dtype) * float(weight_abs_sum) < F64_EXACT


def dot_masks(frames: np.ndarray, w_t: np.ndarray) -> np.ndarray:
    """``frames (n, pixels) @ w_t.T`` in float64, one pass over integer frames; ``w_t`` is ``(n_masks, pixels)``."""
    out = np.empty((frames.shape[0], w_t.shape[0]), dtype=np.float64)
    _dot_masks(np.ascontiguousarray(frames), np.ascontiguousarray(w_t, dtype=np.float64), out)
    return out


def affine_moments(frames: np.ndarray) -> np.ndarray:
    """``(n, 3)`` float64 moments ``(sum I, sum I * row, sum I * col)`` of integer frames ``(n, k_y, k_x)``.

    Exact when ``max|I| * k_y * k_x * max(k_y, k_x) < 2**53`` (the caller checks).
    """
    out = np.empty((frames.shape[0], 3), dtype=np.float64)
    cols = np.arange(frames.shape[2], dtype=np.float64)
    _affine_moments(np.ascontiguousarray(frames), cols, out)
    return out
