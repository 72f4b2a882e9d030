"""The ``.stem`` accessor: stemdask operations as methods of a DataArray.

Each method is a thin call of the module-level function of the same name, so
``data.stem.save(store)`` is ``stemdask.save(data, store)``; the functions
hold the documentation and the logic.
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from . import dataset as _dataset
from .physics import wavelength_A


@xr.register_dataarray_accessor("stem")
class StemAccessor:
    """4D-STEM operations on a stemdask dataset (``data.stem.<method>``)."""

    def __init__(self, data: xr.DataArray):
        self._data = data

    # -- description -------------------------------------------------------
    @property
    def scan_shape(self) -> tuple[int, int]:
        """Number of probe positions (scan_y, scan_x)."""
        return tuple(int(self._data.sizes[d]) for d in _dataset.SCAN_DIMS)

    @property
    def detector_shape(self) -> tuple[int, int]:
        """Detector frame shape (k_y, k_x) in pixels."""
        return tuple(int(self._data.sizes[d]) for d in _dataset.DETECTOR_DIMS)

    @property
    def calibration(self) -> dict[str, Any]:
        """Calibration attrs, None where unknown."""
        info = _dataset.describe(self._data)
        return {k: info[k] for k in ("energy_ev", "semiangle_mrad", "scan_step_A",
                                     "detector_pixel_mrad", "beam_center_px",
                                     "scan_rotation_deg", "dose_e_per_pattern")}

    @property
    def wavelength_A(self) -> float:
        """Relativistic electron wavelength in Å (needs ``energy_ev``)."""
        (energy,) = _dataset.require(self._data, "energy_ev")
        return wavelength_A(energy)

    def validate(self) -> xr.DataArray:
        """See :func:`stemdask.validate`."""
        return _dataset.validate(self._data)

    def describe(self) -> dict[str, Any]:
        """See :func:`stemdask.dataset.describe`."""
        return _dataset.describe(self._data)

    def calibrate(self, **calibration: Any) -> xr.DataArray:
        """See :func:`stemdask.calibrate`."""
        return _dataset.calibrate(self._data, **calibration)

    # -- storage -----------------------------------------------------------
    def save(self, store: Any, **kwargs: Any) -> Any:
        """See :func:`stemdask.save`."""
        from .io.zarr_store import save

        return save(self._data, store, **kwargs)
