"""Electron event representation of counted 4D-STEM data (Pelz et al. 2022).

A counted dataset is a stemdask DataArray (same dims, coords and attrs as a
dense one) whose dask chunks are :class:`EventBlock` s: linear detector
indices of every electron plus per-frame offsets. Operations here cost
O(electrons), not O(pixels); see ``docs/events.md``. Mask projections
(virtual images, CoM, PACBED, radial profiles) are the functions of
:mod:`stemdask.imaging`, which take counted data as they take dense data.
"""

from . import project as _project_registration  # noqa: F401  (EventBlock in the imaging engine)
from .array import events_per_frame, from_dense, is_counted, to_dense
from .block import EventBlock, index_dtype
from .choose import CROSSOVER_E_PER_PIXEL, as_representation, choose_representation, electrons_per_pixel
from .count import count_electrons
from .histogram_store import open_histogram_events
from .ops import (
    bin_detector,
    bin_scan,
    crop,
    frame_sum,
    radial_sum,
    scan_crop,
    total_counts,
)
from .rle import RunLengthEvents, rle_decode, rle_encode
from .storage import open_event_store, open_stempy, save_events, write_stempy

__all__ = [
    "CROSSOVER_E_PER_PIXEL",
    "EventBlock",
    "RunLengthEvents",
    "as_representation",
    "bin_detector",
    "bin_scan",
    "choose_representation",
    "count_electrons",
    "crop",
    "electrons_per_pixel",
    "events_per_frame",
    "frame_sum",
    "from_dense",
    "index_dtype",
    "is_counted",
    "open_event_store",
    "open_histogram_events",
    "open_stempy",
    "radial_sum",
    "rle_decode",
    "rle_encode",
    "save_events",
    "scan_crop",
    "to_dense",
    "total_counts",
    "write_stempy",
]
