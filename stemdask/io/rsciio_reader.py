"""Every 4D-STEM format that RosettaSciIO reads (Merlin .mib, EMPAD, DM4, ...)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ..checks import tile as check_tile
from ..dataset import from_array
from ..errors import FileFormatError, bad_value
from .calibration import detector_axis, scan_axis
from .sources import frames_to_scan

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


def merlin_frames(path: Path) -> tuple[int | None, int, int, int]:
    """Frames of a Merlin ``.mib``: (``.hdr`` count or None, whole frames in the file, bytes left, frame bytes)."""
    from rsciio.quantumdetector._api import MIBProperties, parse_hdr_file

    props = MIBProperties()
    try:
        props.parse_file(str(path))
    except (ValueError, IndexError, OSError) as err:
        raise FileFormatError(f"Merlin file {str(path)!r} has no valid frame header: {err}") from err
    frame = int(props.head_size) + int(np.prod(props.merlin_size)) * np.dtype(props.dtype).itemsize
    size = path.stat().st_size
    expected = None
    hdr = path.with_suffix(".hdr")
    if hdr.is_file():
        try:
            expected = int(parse_hdr_file(str(hdr))["Frames in Acquisition (Number)"]) or None
        except (KeyError, ValueError):
            expected = None
    return expected, size // frame, size % frame, frame


def _check_merlin(path: Path, scan_shape: tuple[int, int] | None) -> int:
    """Refuse a ``.mib`` cut short or longer than its ``.hdr`` says; return its number of frames."""
    expected, found, extra, frame = merlin_frames(path)
    partial = f" and {extra} bytes of a partial frame" if extra else ""
    if expected is not None and (found < expected or (found == expected and extra)):
        raise FileFormatError(
            f"Merlin file {str(path)!r} is truncated: its .hdr says {expected} frames of {frame} bytes, "
            f"the file holds {found} whole frames{partial} ({expected * frame - path.stat().st_size} bytes missing)"
        )
    if expected is not None and found > expected:
        raise FileFormatError(
            f"Merlin file {str(path)!r} is longer than its .hdr says: {expected} frames expected, "
            f"{found} found{partial} (the .hdr belongs to another acquisition?)"
        )
    if expected is None and extra:
        raise FileFormatError(
            f"Merlin file {str(path)!r} is truncated: it holds {found} whole frames of {frame} bytes{partial}"
        )
    if scan_shape is not None and scan_shape[0] * scan_shape[1] != found:
        raise bad_value("scan_shape", scan_shape, f"a (scan_y, scan_x) scan of the {found} frames in {str(path)!r}")
    return found


def open_rsciio(
    path: str | os.PathLike,
    *,
    chunks: Any = None,
    scan_shape: Sequence[int] | None = None,
    plugin: dict | None = None,
    reader_kwargs: dict | None = None,
    **calibration: Any,
) -> xr.DataArray:
    """Open a file through RosettaSciIO, lazily, with the calibration it carries.

    Calibration keywords (``energy_ev``, ``scan_step_A`` ...) fill in or
    override what the file carries. ``scan_shape=(scan_y, scan_x)`` gives the
    scan of a frame stack (or replaces the scan the file says). A Merlin
    ``.mib`` is checked against its ``.hdr``: a cut or over-long file is a
    :class:`~stemdask.errors.FileFormatError` that says so. ``reader_kwargs``
    go to the rsciio reader.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {str(path)!r}")
    plugin = plugin or rsciio_plugin(path)
    if plugin is None:
        raise FileFormatError(f"no RosettaSciIO reader for {path.suffix!r} files ({str(path)!r})")
    scan = None if scan_shape is None else check_tile("scan_shape", scan_shape, expected="(scan_y, scan_x) sizes")
    reader_kwargs = dict(reader_kwargs or {})
    if plugin["name"] == "QuantumDetector":
        _check_merlin(path, scan)
        if scan is not None:
            reader_kwargs.setdefault("navigation_shape", (scan[1], scan[0]))  # rsciio's order is (x, y)
    reader = importlib.import_module(plugin["api"]).file_reader
    try:
        signals = reader(str(path), lazy=True, **(reader_kwargs or {}))
    except (ValueError, OSError, KeyError, IndexError) as err:
        raise FileFormatError(f"RosettaSciIO ({plugin['name']}) could not read {str(path)!r}: {err}") from err
    four_d = [s for s in signals if getattr(s["data"], "ndim", 0) == 4]
    stacks = [s for s in signals if getattr(s["data"], "ndim", 0) == 3]
    if scan is not None and not four_d and stacks:
        four_d = [_stack_to_scan(stacks[0], scan, path)]
    elif scan is not None and four_d and tuple(four_d[0]["data"].shape[:2]) != scan:
        raise bad_value(
            "scan_shape", scan_shape, f"the scan {tuple(four_d[0]['data'].shape[:2])} that {str(path)!r} holds"
        )
    if not four_d:
        shapes = [tuple(s["data"].shape) for s in signals]
        raise FileFormatError(
            f"{str(path)!r} holds no 4-D dataset (found shapes {shapes}); "
            f"for a frame stack pass scan_shape=(scan_y, scan_x)"
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


def _stack_to_scan(signal: dict, scan: tuple[int, int], path: Path) -> dict:
    """A frame-stack signal (n, k_y, k_x) reshaped to the scan ``scan`` (navigation axes in pixels)."""
    data = signal["data"]
    if scan[0] * scan[1] != data.shape[0]:
        raise bad_value("scan_shape", scan, f"a (scan_y, scan_x) scan of the {data.shape[0]} frames in {str(path)!r}")
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(min(1024, data.shape[0]), -1, -1))
    axes = sorted(signal["axes"], key=lambda a: a.get("index_in_array", 0))
    nav = [{"size": n, "scale": 1.0, "offset": 0.0, "units": None, "navigate": True} for n in scan]
    return {**signal, "data": frames_to_scan(data, scan), "axes": nav + [dict(a, navigate=False) for a in axes[1:]]}
