"""Readers and writers: every supported file opens as a lazy stemdask dataset.

:func:`open_dataset` picks the reader from the path:

===========================  ==============================================
path                         reader
===========================  ==============================================
zarr store (directory)       :func:`stemdask.io.zarr_store.open_zarr`, which opens
                             the store's layout from :mod:`stemdask.io.layouts`
                             (``"dense"``; ``"events"``: :func:`stemdask.events.open_event_store`)
``.h5``/``.hdf5``/``.emd``   a registered file reader that recognises the file
                             (4D Camera sparse: :func:`stemdask.events.open_stempy`,
                             format in :mod:`stemdask.io.stempy`), else
                             :func:`stemdask.io.hdf5.open_hdf5` (dataset path,
                             EMD 1.0 / py4DSTEM, DECTRIS ARINA master)
``.npy``                     :func:`stemdask.io.raw.open_npy`
``.raw``/``.bin``/``.dat``   :func:`stemdask.io.raw.open_raw` (needs shape, dtype)
anything RosettaSciIO reads  :func:`stemdask.io.rsciio_reader.open_rsciio`
(``.mib``, ``.dm4``, EMPAD
``.xml``, ...)
===========================  ==============================================

``representation=`` first asks the readers registered with
:func:`stemdask.io.layouts.register_store_reader` whether one opens the store
straight into that representation (a histogram-coded dense store of counts
decodes into electron events chunk by chunk, never dense); otherwise the
stored representation is opened and converted lazily.

``io`` imports nothing from ``stemdask.events``: the event store, the stempy
reader and the representations are registered by ``stemdask.events`` through
:mod:`stemdask.io.layouts`.
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Any

import xarray as xr

from ..errors import FileFormatError, InvalidArgumentError
from .hdf5 import open_hdf5
from .layouts import convert_representation, file_reader_for, get_layout, store_reader_for
from .publish import LAYOUT_ATTR, check_header, describe_interrupted, is_stemdask_store
from .raw import open_npy, open_raw
from .rsciio_reader import open_rsciio, rsciio_plugin
from .zarr_store import LAYOUT as DENSE_LAYOUT
from .zarr_store import DatasetWriter, open_zarr, read_group_attrs, save, store_nbytes

_HDF5 = {".h5", ".hdf5", ".hdf", ".nxs"}
_RAW = {".raw", ".bin", ".dat"}


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and ((path / "zarr.json").is_file() or path.suffix == ".zarr")


def open_dataset(path: str | os.PathLike | Any, *, representation: str | None = None, **kwargs: Any) -> xr.DataArray:
    """Open a 4D-STEM dataset lazily, whatever its format.

    Parameters
    ----------
    path : path or zarr store
        File or store to open (see the module docstring for formats).
    representation : {None, "dense", "events", "auto"}
        None keeps the stored representation; ``"dense"`` or ``"events"``
        converts lazily (events need integer counts); ``"auto"`` picks the
        cheaper one from the measured sparsity (see
        :func:`stemdask.events.choose_representation`). A store coded with
        the histogram codec opens as ``"events"`` without being dense: each
        inner chunk decodes straight into an event block (with ``"auto"`` too,
        when the first tile, decoded dense to measure the sparsity, is below
        the crossover).
    **kwargs
        Passed to the reader: ``chunks`` for all; calibration keywords
        (``energy_ev``, ``semiangle_mrad``, ``scan_step_A``,
        ``detector_pixel_mrad``...) to fill in or override what a file
        carries; ``dataset=`` for HDF5; ``shape=``, ``dtype=``,
        ``byte_order=``, ``header_bytes=`` for raw files; ``scan_shape=`` for
        frame stacks.

    Returns
    -------
    xarray.DataArray
        A lazy dataset following the stemdask data model.

    Raises
    ------
    FileNotFoundError
        When nothing exists at ``path``.
    FileFormatError
        When the file cannot be read as 4D-STEM data, with the reason.
    """
    if representation is not None:
        direct = _open_as(path, representation, kwargs)
        if direct is not None:
            return direct
    data = _open(path, **kwargs)
    if representation is None:
        return data
    return convert_representation(data, representation)


#: keywords a store reader takes (those of a layout's opener)
_STORE_READER_KEYWORDS = {"chunks", "allow_incomplete"}


def _open_as(path: str | os.PathLike | Any, representation: str, kwargs: dict[str, Any]) -> xr.DataArray | None:
    """A stemdask store opened straight into ``representation`` by a registered store reader, or None."""
    if not isinstance(representation, str) or not set(kwargs) <= _STORE_READER_KEYWORDS:
        return None  # the generic path names what is wrong
    if isinstance(path, (str, os.PathLike)) and "://" not in str(path):
        p = Path(str(path)).expanduser()
        if not _is_zarr(p):
            return None
        store: Any = p
    else:
        store = path
    attrs = read_group_attrs(store)
    if not is_stemdask_store(attrs):
        return None
    layout = get_layout(attrs.get(LAYOUT_ATTR, DENSE_LAYOUT), store)
    reader = store_reader_for(layout.name, representation, store, attrs)
    if reader is None:
        return None
    check_header(store, attrs, layout.version, allow_incomplete=bool(kwargs.get("allow_incomplete", False)))
    return reader.open(store, attrs, **kwargs)


def _keywords(reader: Any) -> set[str]:
    """Keywords ``reader`` takes; with ``**calibration`` also those of :func:`stemdask.from_array`."""
    from ..dataset import from_array

    params = inspect.signature(reader).parameters.values()
    names = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        names |= set(inspect.signature(from_array).parameters) - {"array", "attrs", "name", "source"}
    return names - {"path", "store"}


def _call(reader: Any, path: Any, kind: str, kwargs: dict[str, Any]) -> xr.DataArray:
    """Call a reader, refusing keywords it does not take with an error naming them and the file."""
    known = _keywords(reader)
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InvalidArgumentError(
                f"open_dataset({str(path)!r}, {key}=...): {key!r} is not an option for {kind}; "
                f"{hint}options: {', '.join(sorted(known))}"
            )
    return reader(path, **kwargs)


def _open(path: str | os.PathLike | Any, **kwargs: Any) -> xr.DataArray:
    if not isinstance(path, (str, os.PathLike)):
        return open_zarr(path, **kwargs)  # a zarr store object
    text = str(path)
    if "://" in text:
        return open_zarr(text, **kwargs)
    p = Path(text).expanduser()
    if not p.exists():
        hint = describe_interrupted(p)
        raise FileNotFoundError(f"no file or store at {text!r}" + (f": {hint}" if hint else ""))
    if _is_zarr(p):
        return _call(open_zarr, p, "a zarr store", kwargs)
    if p.is_dir():
        raise FileFormatError(f"{text!r} is a directory but not a zarr v3 store (no zarr.json)")
    suffix = p.suffix.lower()
    if suffix in _HDF5 or (suffix == ".emd" and _looks_like_hdf5(p)):
        reader = file_reader_for(p, suffix) if "dataset" not in kwargs else None
        if reader is not None:
            return _call(reader.open, p, f"a {reader.name} file", kwargs)
        return _call(open_hdf5, p, "an HDF5 file", kwargs)
    if suffix == ".npy":
        return _call(open_npy, p, "a .npy file", kwargs)
    if suffix in _RAW or "shape" in kwargs:
        return _call(open_raw, p, "a raw file", kwargs)
    plugin = rsciio_plugin(p)
    if plugin is not None:
        return _call(open_rsciio, p, f"a {plugin['name']} ({suffix}) file", kwargs)
    raise FileFormatError(
        f"cannot tell the format of {text!r} (suffix {suffix!r}); supported: zarr stores, "
        f"HDF5 {sorted(_HDF5)}, .npy, raw {sorted(_RAW)} with shape= and dtype=, and the "
        f"RosettaSciIO formats"
    )


def _looks_like_hdf5(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"


__all__ = [
    "DatasetWriter",
    "open_dataset",
    "open_hdf5",
    "open_npy",
    "open_raw",
    "open_rsciio",
    "open_zarr",
    "save",
    "store_nbytes",
]
