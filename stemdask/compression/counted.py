"""Compression of electron-event blocks: sqrt of each frame's per-pixel counts, from the indices.

Registers :class:`~stemdask.events.block.EventBlock` with
:data:`stemdask.compression.compress.compress_block`. A frame's events are
sorted (a frame is a set of hits), so the electrons in one pixel are a run;
each run of ``c`` electrons in pixel ``p`` adds ``f(c) * W[p, :]`` to the
coefficients (``f(c) = sqrt(c)`` in amplitude mode, ``c`` in intensity mode)
and ``g(c) * R[p, :]`` to the region norms (``g(c) = c``, resp. ``c**2``). So
the cost is O(electrons x masks) and no dense frame is ever made. On CuPy
blocks the same sums come from array operations (unique frame-pixel keys with
their counts, then a scatter-add).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from ..events.block import EventBlock
from ..imaging.project import BATCH_BYTES
from .compress import compress_block
from .plan import BasisOperator


@numba.njit(cache=True, nogil=True)
def _runs_kernel(indices, offsets, weights, regions, amplitude, out):  # pragma: no cover - compiled
    n = weights.shape[1]
    n_regions = regions.shape[1]
    for f in range(offsets.shape[0] - 1):
        a = offsets[f]
        b = offsets[f + 1]
        if b <= a:
            continue
        frame = np.sort(indices[a:b])
        i = 0
        k = frame.shape[0]
        while i < k:
            p = frame[i]
            j = i + 1
            while j < k and frame[j] == p:
                j += 1
            c = float(j - i)
            v = np.sqrt(c) if amplitude else c
            v2 = c if amplitude else c * c
            for m in range(n):
                out[f, m] += v * weights[p, m]
            for r in range(n_regions):
                out[f, n + r] += v2 * regions[p, r]
            i = j


def runs_vectorised(block: EventBlock, weights: Any, regions: Any, amplitude: bool, dtype: Any) -> Any:
    """The same sums with array operations (numpy or cupy): unique (frame, pixel) keys and counts."""
    xp = block.xp
    n, n_regions = weights.shape[1], regions.shape[1]
    out = xp.zeros((block.n_frames, n + n_regions), dtype=dtype)
    if block.n_events:
        key = block.frame_ids().astype(np.int64) * block.n_pixels + block.indices.astype(np.int64)
        unique, counts = xp.unique(key, return_counts=True)
        frame, pixel = unique // block.n_pixels, unique % block.n_pixels
        c = counts.astype(dtype)
        v = xp.sqrt(c) if amplitude else c
        v2 = c if amplitude else c * c
        w = xp.asarray(weights, dtype=dtype)
        rg = xp.asarray(regions, dtype=dtype)
        values = xp.concatenate([v[:, None] * w[pixel], v2[:, None] * rg[pixel]], axis=1)
        if xp is np:
            np.add.at(out, frame, values)
        else:
            import cupyx

            cupyx.scatter_add(out, frame, values)
    return out


@compress_block.register(EventBlock)
def _compress_events(
    block: EventBlock,
    op: BasisOperator,
    *,
    amplitude: bool,
    dtype: Any = np.float64,
    batch_bytes: int = BATCH_BYTES,
) -> Any:
    """float64 ``(scan_y, scan_x, n_basis + 2)`` from the events of a block (see the module docstring).

    ``dtype`` is accepted for the kernel's common signature: counts are exact,
    and every product and sum here is float64.
    """
    basis, regions = op.weights, op.regions
    n = basis.n_masks + regions.n_masks
    if block.xp is not np:
        f64 = np.float64
        weights = basis.on_device("cupy-dense", f64, lambda: block.xp.asarray(basis.dense(f64)))
        region_w = regions.on_device("cupy-dense", f64, lambda: block.xp.asarray(regions.dense(f64)))
        out = runs_vectorised(block, weights, region_w, amplitude, f64)
    else:
        out = np.zeros((block.n_frames, n), dtype=np.float64)
        if block.n_events:
            _runs_kernel(
                block.indices, np.asarray(block.offsets, np.int64), basis.dense(), regions.dense(), amplitude, out
            )
    return out.reshape(*block.scan_shape, n)


__all__ = ["runs_vectorised"]
