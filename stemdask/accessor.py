"""The ``.stem`` accessor: stemdask operations as methods of a DataArray.

Each method is the module-level function of the same name with the dataset
bound as its first argument, so ``data.stem.save(store)`` is
``stemdask.save(data, store)``; ``help(data.stem.virtual_image)`` shows the
function's real signature (without ``data``) and its docstring, since the
functions hold the documentation and the logic.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

import xarray as xr

from . import dataset as _dataset
from .physics import wavelength_A


class _Delegate:
    """A method that calls ``stemdask.<module>.<name>(data, ...)``, imported on first use."""

    def __init__(self, module: str, name: str | None = None):
        self.module = module
        self.target = name

    def __set_name__(self, owner: type, name: str) -> None:
        self.target = self.target or name

    def function(self) -> Any:
        return getattr(importlib.import_module(self.module, __package__), str(self.target))

    def __get__(self, accessor: Any, owner: type | None = None) -> Any:
        func = self.function()
        if accessor is None:
            return func
        data = accessor._data

        @functools.wraps(func)
        def method(*args: Any, **kwargs: Any) -> Any:
            return func(data, *args, **kwargs)

        signature = inspect.signature(func)
        method.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=list(signature.parameters.values())[1:]
        )
        del method.__wrapped__  # help() and inspect show the signature above, without ``data``
        return method


@xr.register_dataarray_accessor("stem")
class StemAccessor:
    """4D-STEM operations on a stemdask dataset (``data.stem.<method>``)."""

    def __init__(self, data: xr.DataArray):
        self._data = data

    # -- description -------------------------------------------------------
    @property
    def scan_shape(self) -> tuple[int, int]:
        """Number of probe positions (scan_y, scan_x)."""
        sy, sx = (int(self._data.sizes[d]) for d in _dataset.SCAN_DIMS)
        return sy, sx

    @property
    def detector_shape(self) -> tuple[int, int]:
        """Detector frame shape (k_y, k_x) in pixels."""
        ky, kx = (int(self._data.sizes[d]) for d in _dataset.DETECTOR_DIMS)
        return ky, kx

    @property
    def calibration(self) -> dict[str, Any]:
        """Calibration attrs, None where unknown."""
        return {k: self._data.attrs.get(k) for k in _dataset.CALIBRATION_ATTRS}

    @property
    def wavelength_A(self) -> float:
        """Relativistic electron wavelength in Å (needs ``energy_ev``)."""
        (energy,) = _dataset.require(self._data, "energy_ev")
        return wavelength_A(energy)

    validate = _Delegate(".dataset")
    describe = _Delegate(".dataset")
    calibrate = _Delegate(".dataset")

    # -- storage -----------------------------------------------------------
    save = _Delegate(".io")

    # -- imaging -----------------------------------------------------------
    project = _Delegate(".imaging")
    virtual_image = _Delegate(".imaging")
    pacbed = _Delegate(".imaging")
    radial_profile = _Delegate(".imaging")
    beam_center = _Delegate(".imaging")
    center_of_mass = _Delegate(".imaging")
    dpc = _Delegate(".imaging")

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

    to_events = _Delegate(".events", "from_dense")
    to_dense = _Delegate(".events")
    count_electrons = _Delegate(".events")
