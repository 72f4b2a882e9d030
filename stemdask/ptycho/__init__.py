"""Ptychography: iterative reconstruction (torch, sharded over dask workers) on the shared optics."""

from .reconstruct import reconstruct

__all__ = ["reconstruct"]
