"""Event blocks in the imaging engine: ``stemdask.imaging.project`` on counted data.

Registers :class:`~stemdask.events.block.EventBlock` with the engine's
per-block kernel ``project_block`` (a ``dask.utils.Dispatch``), so that every
virtual image, CoM, PACBED, radial profile and mask basis of
:mod:`stemdask.imaging` runs on electron events by gather in O(counts), with
results equal to the dense path (float64 accumulation is exact for integer
counts and integer weights). This is the only projection path for events.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..imaging.project import BATCH_BYTES, MaskWeights, project_block
from .block import EventBlock
from .ops import gather_block, moments_block

#: integer weights up to this bound are gathered as int64 (no overflow for < 2**31 electrons a frame)
_INT_GATHER_BOUND = 2.0**31


@project_block.register(EventBlock)
def _project_events(
    block: EventBlock, weights: MaskWeights, *, dtype: Any = np.float64, batch_bytes: int = BATCH_BYTES
) -> Any:
    """``(scan_y, scan_x, n_masks)`` sums of the mask weights of every electron.

    Three exact paths by the kind of masks, fastest first: affine masks (CoM)
    from the integer moments of each frame; integer masks (boolean detectors)
    by an int64 gather (an integer add chain is several times faster than a
    float one), converted once; any other weights by a gather in ``dtype``.
    """
    xp = block.xp
    if weights.affine is not None and np.dtype(dtype).kind == "f":
        moments = moments_block(block).reshape(block.n_frames, 3)
        coef = (
            weights.affine
            if xp is np
            else weights.on_device("cupy-affine", np.float64, lambda: xp.asarray(weights.affine))
        )
        out = moments.astype(np.float64) @ coef
        return out.astype(dtype, copy=False).reshape(*block.scan_shape, weights.n_masks)
    exact_int = weights.integer_bound is not None and weights.integer_bound < _INT_GATHER_BOUND
    gather_dtype = np.int64 if exact_int and np.dtype(dtype).kind in "fc" else dtype
    if xp is np:
        matrix = weights.dense(gather_dtype)
    else:
        matrix = weights.on_device("cupy-dense", gather_dtype, lambda: xp.asarray(weights.dense(gather_dtype)))
    return gather_block(block, matrix, gather_dtype).astype(dtype, copy=False)
