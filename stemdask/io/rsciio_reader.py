"""Every 4D-STEM format that RosettaSciIO reads (Merlin .mib, EMPAD, DM4, ...)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..dataset import from_array
from ..errors import FileFormatError
from .calibration import detector_axis, scan_axis

#: rsciio plugins that hold frames of 4D-STEM data; the HDF5 family is handled in hdf5.py
_SKIP = {"Arina", "USID", "HSPY", "NeXus"}


def rsciio_plugin(path: str | os.PathLike) -> dict | None:
    """The RosettaSciIO plugin that reads ``path`` (by extension), or None."""
    import rsciio

    ext = Path(path).suffix.lstrip(".").lower()
    for plugin in rsciio.IO_PLUGINS:
        if plugin["name"] in _SKIP:
            continue
        if ext in (e.lower() for e in plugin["file_extensions"]):
            return plugin
    return None


def _get(mapping: dict, *keys: str) -> Any:
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


def open_rsciio(
    path: str | os.PathLike,
    *,
    chunks: Any = None,
    plugin: dict | None = None,
    reader_kwargs: dict | None = None,
    **calibration: Any,
) -> xr.DataArray:
    """Open a file through RosettaSciIO, lazily, with the calibration it carries.

    Calibration keywords (``energy_ev``, ``scan_step_A`` ...) fill in or
    override what the file carries. ``reader_kwargs`` go to the rsciio reader.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {str(path)!r}")
    plugin = plugin or rsciio_plugin(path)
    if plugin is None:
        raise FileFormatError(f"no RosettaSciIO reader for {path.suffix!r} files ({str(path)!r})")
    reader = importlib.import_module(plugin["api"]).file_reader
    try:
        signals = reader(str(path), lazy=True, **(reader_kwargs or {}))
    except (ValueError, OSError, KeyError, IndexError) as err:
        raise FileFormatError(f"RosettaSciIO ({plugin['name']}) could not read {str(path)!r}: {err}") from err
    four_d = [s for s in signals if getattr(s["data"], "ndim", 0) == 4]
    if not four_d:
        shapes = [tuple(s["data"].shape) for s in signals]
        raise FileFormatError(
            f"{str(path)!r} holds no 4-D dataset (found shapes {shapes}); "
            f"for a frame stack pass reader_kwargs with the scan shape"
        )
    signal = four_d[0]
    data = signal["data"]
    axes = sorted(signal["axes"], key=lambda a: a.get("index_in_array", 0))
    # navigation axes first, in array order (hyperspy puts them first already)
    order = [i for i, a in enumerate(axes) if a.get("navigate", i < 2)] + [
        i for i, a in enumerate(axes) if not a.get("navigate", i < 2)
    ]
    if order != [0, 1, 2, 3]:
        data = data.transpose(order)
        axes = [axes[i] for i in order]
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=-1)
    metadata = signal.get("metadata", {}) or {}
    energy_kev = _get(metadata, "Acquisition_instrument", "TEM", "beam_energy")
    semiangle = _get(metadata, "Acquisition_instrument", "TEM", "convergence_angle")
    found: dict[str, Any] = {}
    if energy_kev:
        found["energy_ev"] = float(energy_kev) * 1e3
    if semiangle:
        found["semiangle_mrad"] = float(semiangle)
    energy = calibration.get("energy_ev", found.get("energy_ev"))
    steps = [scan_axis(a.get("scale", 1.0), a.get("units")) for a in axes[:2]]
    if all(s is not None for s in steps):
        found["scan_step_A"] = steps
    det = [detector_axis(a.get("scale", 1.0), a.get("offset", 0.0), a.get("units"), energy) for a in axes[2:]]
    if all(p is not None for p, _ in det):
        found["detector_pixel_mrad"] = [p for p, _ in det]
        if all(c is not None for _, c in det):
            found["beam_center_px"] = [c for _, c in det]
    found["source"] = str(path)
    found.update(calibration)
    extra = {"file_format": plugin["name"], "file_metadata": metadata}
    return from_array(data, chunks=chunks, attrs=extra, **found)
