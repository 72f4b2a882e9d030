"""Ptychography: direct single-side-band (SSB) with aberration correction, and iterative
reconstruction (torch, sharded over dask workers), on the shared optics, scan geometry and multislice step."""

from . import preprocess
from .reconstruct import reconstruct
from .ssb import SSB, ssb

__all__ = ["SSB", "preprocess", "reconstruct", "ssb"]
