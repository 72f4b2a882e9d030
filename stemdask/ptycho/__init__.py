"""Ptychography: direct single-side-band (SSB) reconstruction with aberration correction."""

from . import preprocess
from .ssb import SSB, ssb

__all__ = ["SSB", "preprocess", "ssb"]
