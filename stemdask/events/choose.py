"""Choosing between the dense and the electron event representation.

The measured crossover (``benchmarks/bench_events.py``, ``docs/events.md``,
64x64 scan of 128x128 frames on 2 cores, run 4): dense wins first for CoM,
at about 0.8 e-/px/frame, then for frame sums (1.0) and virtual detectors
(1.5). Below :data:`CROSSOVER_E_PER_PIXEL` the event representation is
faster for all three and stores no more bytes than blosc-compressed dense
frames (which it matches from about 0.5 e-/px/frame up).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from ..checks import integer
from ..errors import bad_type, bad_value
from ..io.layouts import register_representation
from .array import from_dense, is_counted, to_dense

#: electrons per pixel per frame where dense starts to win (benchmarks/bench_events.py)
CROSSOVER_E_PER_PIXEL = 0.7

REPRESENTATIONS = ("auto", "events", "dense")


def electrons_per_pixel(data: xr.DataArray, *, sample_blocks: int | None = 1) -> float:
    """Mean counts per pixel per frame, from the first ``sample_blocks`` dask blocks.

    ``sample_blocks=None`` uses every block (reads the whole dataset).
    """
    if not isinstance(data, xr.DataArray):
        raise bad_type("data", data, "a stemdask DataArray")
    arr = data.data
    if not hasattr(arr, "blocks"):
        import dask.array as da

        arr = da.from_array(arr, chunks=-1, asarray=False)
    blocks = [b for b in np.ndindex(arr.numblocks)]
    if sample_blocks is not None:
        blocks = blocks[: integer("sample_blocks", sample_blocks, expected="a positive integer or None")]
    total, pixels = 0.0, 0
    for idx in blocks:
        part = arr.blocks[idx]
        total += float(part.sum(dtype=np.float64).compute())
        pixels += int(np.prod(part.shape))
    return total / max(pixels, 1)


def choose_representation(
    data_or_stats: Any, *, crossover: float = CROSSOVER_E_PER_PIXEL, sample_blocks: int | None = 1
) -> str:
    """``"events"`` or ``"dense"``: the cheaper representation for this sparsity.

    Parameters
    ----------
    data_or_stats : xarray.DataArray or float
        A dataset (dense or counted; its first blocks are sampled) or the
        mean electrons per pixel per frame.
    crossover : float
        Electrons per pixel per frame above which dense is cheaper.
    sample_blocks : int or None
        Blocks sampled to estimate the sparsity of a dataset.

    Returns
    -------
    str
        ``"events"`` below the crossover (and only for integer counts; raw
        float frames must be counted first), else ``"dense"``.
    """
    if isinstance(crossover, bool) or not isinstance(crossover, (int, float)) or not crossover > 0:
        raise bad_value("crossover", crossover, "a positive number of electrons per pixel per frame")
    if isinstance(data_or_stats, xr.DataArray):
        if not is_counted(data_or_stats) and data_or_stats.dtype.kind not in "ui":
            return "dense"
        rate = electrons_per_pixel(data_or_stats, sample_blocks=sample_blocks)
    elif isinstance(data_or_stats, (int, float, np.integer, np.floating)) and not isinstance(data_or_stats, bool):
        rate = float(data_or_stats)
        if not math.isfinite(rate) or rate < 0:
            raise bad_value("data_or_stats", data_or_stats, "a non-negative number of electrons per pixel")
    else:
        raise bad_type("data_or_stats", data_or_stats, "a DataArray or electrons per pixel per frame")
    return "events" if rate < crossover else "dense"


def as_representation(data: xr.DataArray, representation: str = "auto", **kwargs: Any) -> xr.DataArray:
    """``data`` in the requested representation (``"auto"`` picks the cheaper one).

    What :func:`stemdask.open_dataset` calls for ``representation=``;
    ``kwargs`` go to :func:`choose_representation`.
    """
    if representation not in REPRESENTATIONS:
        raise bad_value("representation", representation, f"one of {REPRESENTATIONS}")
    if representation == "auto":
        representation = choose_representation(data, **kwargs)
    if representation == "events":
        if is_counted(data):
            return data
        if isinstance(data, xr.DataArray) and data.dtype.kind not in "ui":
            raise bad_value(
                "representation",
                representation,
                f"'dense' or None for data of dtype {data.dtype} (source {data.attrs.get('source', '?')!r}): "
                "electron events need integer counts (a histogram-coded store of counts decodes straight "
                "to events; count raw frames with stemdask.events.count_electrons)",
            )
        return from_dense(data)
    return to_dense(data)


def _register(name: str) -> None:
    register_representation(name, lambda data: as_representation(data, name))


# open_dataset(representation=...) reaches these through stemdask.io.layouts (io never imports events)
for _name in REPRESENTATIONS:
    _register(_name)
