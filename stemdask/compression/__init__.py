"""Lossy compression by mask projection (Diederichs et al.): regions, bases, compress, store, stream.

A compressed dataset is an :class:`xarray.Dataset` of per-pattern
coefficients on an orthonormal basis of detector masks (BF and DF regions),
the norms of what the basis misses (``c_perp_bf``, ``c_perp_df``), the masks
and the calibration. It is made by the imaging engine's forward operator
(:func:`compress`), read back by its adjoint (:func:`decompress`), stored as
the ``"compressed"`` store layout (``stemdask.save`` / ``stemdask.open_dataset``)
and written as an acquisition arrives (:class:`CompressedWriter`). Quality
measures are in :mod:`stemdask.metrics`. See ``docs/compression.md``.
"""

from __future__ import annotations

from . import bases
from . import counted as _counted_registration  # noqa: F401  (event blocks in compress_block)
from . import storage as _storage_registration  # noqa: F401  (the "compressed" store layout)
from .bases import (
    binning,
    combine,
    dark_field_mean,
    data_basis,
    make_basis,
    orthonormalise,
    pca,
    zernike,
)
from .compress import basis_of, check_basis, compress, compress_block, decompress, require_compressed
from .regions import detector_regions
from .storage import open_compressed, save_compressed
from .writer import CompressedWriter

__all__ = [
    "CompressedWriter",
    "bases",
    "basis_of",
    "binning",
    "check_basis",
    "combine",
    "compress",
    "compress_block",
    "dark_field_mean",
    "data_basis",
    "decompress",
    "detector_regions",
    "make_basis",
    "open_compressed",
    "orthonormalise",
    "pca",
    "require_compressed",
    "save_compressed",
    "zernike",
]
