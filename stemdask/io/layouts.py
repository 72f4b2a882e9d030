"""The registry of store layouts that :func:`stemdask.save` and :func:`stemdask.open_dataset` consult.

A stemdask zarr store names its layout in the group attr ``stemdask_layout``
(see :mod:`stemdask.io.publish` for the header). Each layout is one
:class:`Layout`: its name, the newest format version it reads, a predicate
saying which in-memory objects it stores, a writer and an opener.
``"dense"`` is registered by :mod:`stemdask.io.zarr_store`; ``"events"`` by
:mod:`stemdask.events.storage` (so ``io`` never imports ``events``).

Adding a layout
---------------
Write a module that defines ``write(data, store, **options)`` and
``open(store, attrs, **options)`` and registers them when it is imported::

    from stemdask.io.layouts import Layout, register_layout
    from stemdask.io.publish import atomic_path, check_header, header, mark_complete

    def _write(data, store, *, overwrite=False, progress=False, **options):
        with atomic_path(store, overwrite=overwrite) as (tmp, final):
            group = zarr.open_group(tmp, mode="w-", zarr_format=3)
            group.attrs.update(header("mine", 1))
            ...                       # write the arrays with dask tasks (compute_writes)
            mark_complete(tmp)        # last
        return str(final)

    def _open(store, attrs, *, chunks=None, allow_incomplete=False):
        ...                           # the header is already checked
        return dataarray

    register_layout(Layout("mine", version=1, claims=lambda data: ..., write=_write, open=_open))

``claims(data)`` must be cheap and must not compute anything: :func:`save`
asks the layouts registered last first and writes with the first that says
yes, and ``"dense"`` (every stemdask DataArray) last. The options a writer
gets are those of :func:`stemdask.save` (``codec``, ``chunks``, ``shards``,
``overwrite``, ``progress``); it rejects the ones that mean nothing to it.
Import the module from the package that owns the data type (as
``stemdask/events/__init__.py`` imports ``events.storage``), so the layout is
registered whenever that type exists.

Files that are not zarr stores but hold a data type of another package
(the stempy sparse HDF5 files of ``stemdask.events``) are a second registry:
:func:`register_file_reader` adds a :class:`FileReader` (a cheap ``detect(path)``
and ``open(path, **kwargs)``) that :func:`stemdask.open_dataset` asks before
the generic readers. Representations (``open_dataset(..., representation=...)``)
are a third: :func:`register_representation` maps a name to a
function ``convert(data) -> data``; ``stemdask.events`` registers
``"events"``, ``"dense"`` and ``"auto"``.

A representation that a store can give without passing through another
(histogram-coded dense stores decode straight into electron events) is a
fourth: :func:`register_store_reader` adds a :class:`StoreReader` for a
(layout, representation) pair, with a cheap ``detect(store, attrs)`` that
looks at the store's metadata only. ``open_dataset(store, representation=r)``
asks it first and converts the stored representation only when no reader
detects the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import xarray as xr

from ..errors import FileFormatError, bad_type, bad_value


@dataclass(frozen=True)
class Layout:
    """One store layout.

    Attributes
    ----------
    name : str
        The value of ``stemdask_layout`` in its stores.
    version : int
        Newest ``stemdask_format`` its opener reads (and its writer writes).
    claims : callable
        ``claims(data) -> bool``: whether :func:`stemdask.save` should write
        this in-memory object with this layout. Must not compute.
    write : callable
        ``write(data, store, **options) -> store`` (the path as str for local
        stores).
    open : callable
        ``open(store, attrs, *, chunks=None, allow_incomplete=False) -> DataArray``
        (a ``Dataset`` for layouts of other objects, e.g. ``"compressed"``);
        ``attrs`` are the group attrs, whose header is already checked.
    """

    name: str
    version: int
    claims: Callable[[Any], bool]
    write: Callable[..., Any]
    open: Callable[..., Any]


@dataclass(frozen=True)
class FileReader:
    """A reader of a file format that is not a stemdask store.

    Attributes
    ----------
    name : str
        The format's name.
    suffixes : tuple of str
        Lower-case file suffixes it may hold (``(".h5", ".hdf5")``).
    detect : callable
        ``detect(path) -> bool``: cheap look inside the file.
    open : callable
        ``open(path, **kwargs) -> DataArray``.
    """

    name: str
    suffixes: tuple[str, ...]
    detect: Callable[[Any], bool]
    open: Callable[..., xr.DataArray]


@dataclass(frozen=True)
class StoreReader:
    """A reader that opens stores of one layout straight into another representation.

    Attributes
    ----------
    name : str
        The reader's name.
    layout : str
        The layout of the stores it reads (``"dense"``).
    representation : str
        What it opens them as (``"events"``).
    detect : callable
        ``detect(store, attrs) -> bool``: whether it can read this store
        (metadata only; ``attrs`` are the checked group attrs).
    open : callable
        ``open(store, attrs, *, chunks=None, allow_incomplete=False) -> DataArray``,
        as :attr:`Layout.open`.
    """

    name: str
    layout: str
    representation: str
    detect: Callable[[Any, dict[str, Any]], bool]
    open: Callable[..., xr.DataArray]


_LAYOUTS: dict[str, Layout] = {}
_STORE_READERS: dict[str, StoreReader] = {}
_FILE_READERS: dict[str, FileReader] = {}
_REPRESENTATIONS: dict[str, Callable[[xr.DataArray], xr.DataArray]] = {}

#: modules that register layouts, readers or representations at import: imported on the
#: first lookup (``import stemdask`` is lazy, so a lookup may come before they were imported)
PLUGIN_MODULES: tuple[str, ...] = ("stemdask.events", "stemdask.compression")


def _load_plugins() -> None:
    import importlib
    import sys

    for module in PLUGIN_MODULES:
        if module not in sys.modules:
            importlib.import_module(module)


def register_layout(layout: Layout, *, replace: bool = False) -> Layout:
    """Add ``layout`` to the registry (``replace=True`` to redefine a name); return it."""
    if not isinstance(layout, Layout):
        raise bad_type("layout", layout, "a stemdask.io.layouts.Layout")
    if not layout.name or not isinstance(layout.name, str):
        raise bad_value("layout.name", layout.name, "a non-empty string")
    if layout.name in _LAYOUTS and not replace:
        raise bad_value(
            "layout.name", layout.name, f"a name not yet registered (known: {known_layouts()}), or replace=True"
        )
    _LAYOUTS.pop(layout.name, None)  # a replaced layout moves to the end (asked first)
    _LAYOUTS[layout.name] = layout
    return layout


def unregister_layout(name: str) -> Layout:
    """Remove the layout ``name`` from the registry and return it."""
    if name not in _LAYOUTS:
        raise bad_value("name", name, f"a registered layout (known: {known_layouts()})")
    return _LAYOUTS.pop(name)


def known_layouts() -> list[str]:
    """Names of the registered layouts, in registration order."""
    _load_plugins()
    return list(_LAYOUTS)


def get_layout(name: str, store: Any = None) -> Layout:
    """The layout ``name``, as a store names it.

    Raises
    ------
    FileFormatError
        For a name this stemdask does not know, naming the store, the layout
        and the known ones.
    """
    _load_plugins()
    try:
        return _LAYOUTS[name]
    except (KeyError, TypeError):
        where = f"store {str(store)!r}" if store is not None else "the store"
        raise FileFormatError(
            f"{where} has layout {name!r}, which this stemdask does not know "
            f"(known: {known_layouts()}): upgrade stemdask or import the package that "
            f"registers it"
        ) from None


def layout_for(data: Any) -> Layout:
    """The layout :func:`stemdask.save` writes ``data`` with: the last registered that claims it.

    Raises
    ------
    TypeError
        When no layout claims ``data`` (a stemdask DataArray is always
        claimed by ``"dense"``).
    """
    _load_plugins()
    for layout in reversed(_LAYOUTS.values()):
        if layout.claims(data):
            return layout
    raise bad_type(
        "data", data, f"a stemdask xarray.DataArray (or an object one of the layouts {known_layouts()} stores)"
    )


def _add_reader(registry: dict[str, Any], reader: Any, kind: type, replace: bool) -> None:
    """Register ``reader`` (an instance of ``kind``) under its name, refusing a taken name unless ``replace``."""
    if not isinstance(reader, kind):
        raise bad_type("reader", reader, f"a stemdask.io.layouts.{kind.__name__}")
    if reader.name in registry and not replace:
        raise bad_value(
            "reader.name", reader.name, f"a name not yet registered (known: {sorted(registry)}), or replace=True"
        )
    registry[reader.name] = reader


def register_file_reader(reader: FileReader, *, replace: bool = False) -> FileReader:
    """Add ``reader`` to the file readers :func:`stemdask.open_dataset` asks first; return it."""
    _add_reader(_FILE_READERS, reader, FileReader, replace)
    return reader


def file_reader_for(path: Any, suffix: str) -> FileReader | None:
    """The registered file reader that detects ``path`` (of lower-case ``suffix``), if any."""
    _load_plugins()
    for reader in _FILE_READERS.values():
        if suffix in reader.suffixes and reader.detect(path):
            return reader
    return None


def register_representation(
    name: str, convert: Callable[[xr.DataArray], xr.DataArray], *, replace: bool = False
) -> None:
    """Make ``open_dataset(..., representation=name)`` return ``convert(data)``."""
    if not isinstance(name, str) or not name:
        raise bad_value("name", name, "a non-empty string")
    if name in _REPRESENTATIONS and not replace:
        raise bad_value(
            "name", name, f"a representation not yet registered (known: {sorted(_REPRESENTATIONS)}), or replace=True"
        )
    _REPRESENTATIONS[name] = convert


def register_store_reader(reader: StoreReader, *, replace: bool = False) -> StoreReader:
    """Add ``reader`` to those :func:`stemdask.open_dataset` asks for a representation; return it."""
    _add_reader(_STORE_READERS, reader, StoreReader, replace)
    return reader


def store_reader_for(layout: str, representation: str, store: Any, attrs: dict[str, Any]) -> StoreReader | None:
    """The registered reader that opens this ``layout`` store as ``representation``, if one detects it."""
    _load_plugins()
    for reader in _STORE_READERS.values():
        if reader.layout == layout and reader.representation == representation and reader.detect(store, attrs):
            return reader
    return None


def convert_representation(data: xr.DataArray, representation: str) -> xr.DataArray:
    """``data`` in the registered ``representation``."""
    _load_plugins()
    try:
        convert = _REPRESENTATIONS[representation]
    except (KeyError, TypeError):
        raise bad_value("representation", representation, f"None or one of {sorted(_REPRESENTATIONS)}") from None
    return convert(data)


__all__ = [
    "FileReader",
    "Layout",
    "StoreReader",
    "convert_representation",
    "file_reader_for",
    "get_layout",
    "known_layouts",
    "layout_for",
    "register_file_reader",
    "register_layout",
    "register_representation",
    "register_store_reader",
    "store_reader_for",
    "unregister_layout",
]
