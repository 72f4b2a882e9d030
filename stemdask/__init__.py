"""stemdask: distributed, dask-based 4D-STEM analysis.

The public API; see ``docs/architecture.md`` for the data model.
"""

from __future__ import annotations

from . import accessor as _accessor  # noqa: F401  (registers the .stem accessor)
from . import cluster, codecs, compression, errors, events, imaging, io, metrics, montage, optics, physics, simulate
from .dataset import DIMS, calibrate, describe, from_array, validate
from .io import DatasetWriter, open_dataset, save

__version__ = "0.1.0"

__all__ = [
    "DIMS",
    "DatasetWriter",
    "calibrate",
    "cluster",
    "codecs",
    "compression",
    "describe",
    "errors",
    "events",
    "from_array",
    "imaging",
    "io",
    "metrics",
    "montage",
    "open_dataset",
    "optics",
    "physics",
    "save",
    "simulate",
    "validate",
]
