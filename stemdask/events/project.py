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
from .ops import gather_block


@project_block.register(EventBlock)
def _project_events(block: EventBlock, weights: MaskWeights, *, dtype: Any = np.float64,
                    batch_bytes: int = BATCH_BYTES) -> Any:
    """``(scan_y, scan_x, n_masks)`` sums of the mask weights of every electron."""
    if block.xp is np:
        matrix = weights.dense(dtype)
    else:
        matrix = weights.on_device("cupy-dense", dtype, lambda: block.xp.asarray(weights.dense(dtype)))
    return gather_block(block, matrix, dtype)
