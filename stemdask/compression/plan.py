"""A checked basis as the engine's operators, split the way the compress kernels apply it.

:class:`BasisOperator` is what every ``compress_block`` receives: built once
on the client per :func:`~stemdask.compression.compress` call and sent to the
workers as one graph key. It holds

* ``const_*``: the masks constant on their whole region (the mean-DF mask),
  which the fused integer pass gets from its region sums of ``d``;
* ``general`` and ``support``: the other masks restricted to the pixels they
  touch, as one :class:`~stemdask.imaging.project.MaskWeights` (the engine's
  forward operator: one float64 BLAS product on frames of those pixels,
  which the fused integer pass gathers in float64 as it reads a frame);
* ``weights`` and ``regions``: the whole basis and the region indicators as
  ``MaskWeights``, for the paths that project every mask (float or cupy
  frames, electron events); made on first use, since the fused path on
  uint8/uint16 counts needs neither;
* ``region_id``: the region of every pixel (0 BF, 1 DF, 2 neither).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from ..imaging.project import MaskWeights
from .regions import REGIONS


def _weights(matrix: np.ndarray, frame_shape: tuple[int, int]) -> MaskWeights:
    return MaskWeights(
        np.ascontiguousarray(matrix), n_masks=matrix.shape[1], n_pixels=matrix.shape[0], frame_shape=frame_shape
    )


class BasisOperator:
    """An orthonormal basis split for the compress kernels (see the module docstring).

    Parameters
    ----------
    values : numpy.ndarray
        ``(n, k_y, k_x)`` float64 masks, already checked
        (:func:`~stemdask.compression.compress.check_basis`).
    labels : sequence of str
        The region of each mask (``"bf"`` or ``"df"``).
    bf_region, df_region : numpy.ndarray
        ``(k_y, k_x)`` boolean regions.
    """

    def __init__(self, values: np.ndarray, labels: Any, bf_region: np.ndarray, df_region: np.ndarray):
        n, ky, kx = values.shape
        self.n_masks = int(n)
        self.frame_shape = (int(ky), int(kx))
        self.labels = np.asarray([str(v) for v in labels])
        #: (n, pixels) float64, one row per mask
        self.rows = np.ascontiguousarray(values.reshape(n, -1), dtype=np.float64)
        bf, df = np.asarray(bf_region, bool).ravel(), np.asarray(df_region, bool).ravel()
        self.region_id = np.where(bf, 0, np.where(df, 1, 2)).astype(np.int8)
        const, const_value, const_region = [], [], []
        for j, label in enumerate(self.labels):
            inside = bf if label == "bf" else df
            lo = self.rows[j].min(where=inside, initial=np.inf)
            hi = self.rows[j].max(where=inside, initial=-np.inf)
            if lo == hi and lo != 0:  # one non-zero value on every pixel of its region (zero outside: checked)
                const.append(j)
                const_value.append(float(lo))
                const_region.append(REGIONS.index(str(label)))
        self.const_index = np.array(const, dtype=np.int64)
        self.const_region = np.array(const_region, dtype=np.int64)
        self.const_value = np.array(const_value, dtype=np.float64)
        self.general_index = np.setdiff1d(np.arange(n), self.const_index)
        general = self.rows[self.general_index]
        #: the pixels the non-constant masks touch (sorted flat indices)
        self.support = np.flatnonzero(np.any(general != 0, axis=0)).astype(np.int64)
        #: the non-constant masks on those pixels as the engine's operator, ``(support pixels, n_general)``;
        #: its patterns are the frames' values there, ``(..., 1, support.size)`` (None: no such masks)
        self.general = (
            MaskWeights(
                np.ascontiguousarray(general[:, self.support].T), n_masks=general.shape[0], n_pixels=self.support.size
            )
            if self.general_index.size
            else None
        )
        self._lazy: dict[str, MaskWeights] = {}
        self._lock = threading.Lock()

    def __dask_tokenize__(self) -> Any:
        from dask.base import tokenize

        return ("BasisOperator", tokenize(self.rows, self.region_id, self.labels.tolist()))

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lazy", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lazy = {}
        self._lock = threading.Lock()

    def _get(self, name: str, matrix: Callable[[], np.ndarray]) -> MaskWeights:
        with self._lock:
            if name not in self._lazy:
                self._lazy[name] = _weights(matrix(), self.frame_shape)
            return self._lazy[name]

    @property
    def weights(self) -> MaskWeights:
        """Every mask as one ``MaskWeights`` (made on first use)."""
        return self._get("weights", lambda: self.rows.T)

    @property
    def regions(self) -> MaskWeights:
        """The BF and DF indicators as a two-mask ``MaskWeights`` (made on first use)."""
        return self._get(
            "regions", lambda: np.stack([self.region_id == 0, self.region_id == 1], axis=1).astype(np.float64)
        )


__all__ = ["BasisOperator"]
