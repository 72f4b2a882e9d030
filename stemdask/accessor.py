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

    # -- imaging -----------------------------------------------------------
    def project(self, masks: Any, **kwargs: Any) -> xr.DataArray:
        """See :func:`stemdask.imaging.project`."""
        from .imaging import project

        return project(self._data, masks, **kwargs)

    def virtual_image(self, detector: Any, **kwargs: Any) -> xr.DataArray:
        """See :func:`stemdask.imaging.virtual_image`."""
        from .imaging import virtual_image

        return virtual_image(self._data, detector, **kwargs)

    def pacbed(self, reduce: str = "mean") -> xr.DataArray:
        """See :func:`stemdask.imaging.pacbed`."""
        from .imaging import pacbed

        return pacbed(self._data, reduce)

    def radial_profile(self, bins_mrad: Any, **kwargs: Any) -> xr.DataArray:
        """See :func:`stemdask.imaging.radial_profile`."""
        from .imaging import radial_profile

        return radial_profile(self._data, bins_mrad, **kwargs)

    def beam_center(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`stemdask.imaging.beam_center`."""
        from .imaging import beam_center

        return beam_center(self._data, **kwargs)

    def center_of_mass(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`stemdask.imaging.center_of_mass`."""
        from .imaging import center_of_mass

        return center_of_mass(self._data, **kwargs)

    def dpc(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`stemdask.imaging.dpc`."""
        from .imaging import dpc

        return dpc(self._data, **kwargs)

    def icom(self, **kwargs: Any) -> xr.DataArray:
        """CoM, descan/rotation correction and integration in one call.

        ``data.stem.icom(lowpass=..., highpass=..., correct={...})`` is
        ``icom(correct_com(center_of_mass(data), **correct), ...)``; see
        :func:`stemdask.imaging.icom` and :func:`stemdask.imaging.correct_com`.
        """
        from .imaging import center_of_mass, correct_com, icom

        correct = kwargs.pop("correct", {})
        mask = kwargs.pop("mask", None)
        return icom(correct_com(center_of_mass(self._data, mask=mask), **correct), **kwargs)

    # -- electron events -----------------------------------------------------
    @property
    def is_counted(self) -> bool:
        """True when the data are electron events (see :mod:`stemdask.events`)."""
        from .events import is_counted

        return is_counted(self._data)

    def to_events(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`stemdask.events.from_dense`."""
        from .events import from_dense

        return from_dense(self._data, **kwargs)

    def to_dense(self) -> xr.DataArray:
        """See :func:`stemdask.events.to_dense`."""
        from .events import to_dense

        return to_dense(self._data)

    def count_electrons(self, **kwargs: Any) -> xr.DataArray:
        """See :func:`stemdask.events.count_electrons`."""
        from .events import count_electrons

        return count_electrons(self._data, **kwargs)
