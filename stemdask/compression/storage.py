"""The ``"compressed"`` store layout: coefficients, perpendicular norms, masks and calibration.

zarr v3 layout (a group; registered with :mod:`stemdask.io.layouts`, so
``stemdask.save`` writes a compressed Dataset here and
``stemdask.open_dataset`` opens it back as one)::

    store/
      zarr.json        attrs: stemdask_format, stemdask_layout="compressed",
                       stemdask_complete (set last), dataset_attrs (the
                       Dataset's attrs: calibration, compression_mode,
                       basis_kind, basis_attrs, source_shape, ...),
                       basis_region (one label per mask)
      coefficients/    (scan_y, scan_x, basis) float, chunks of scan tiles
      c_perp_bf/, c_perp_df/   (scan_y, scan_x)
      masks/           (basis, k_y, k_x) float64
      bf_region/, df_region/   (k_y, k_x) bool
      scan_y, scan_x, k_y, k_x, basis   coordinates with their attrs

One dask task per scan tile writes that tile of the three per-pattern arrays
(all three come from the same projection task, computed once); the client
writes the masks, regions, coordinates and the completion marker. Only the
coefficients are stored, never a frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from ..checks import tile as check_tile
from ..codecs import resolve_codec
from ..dataset import DETECTOR_DIMS, SCAN_DIMS, dask_data
from ..errors import FileFormatError, bad_type, bad_value
from ..io.layouts import Layout, register_layout
from ..io.publish import atomic_path, compute_writes, create_guard, header, is_local, mark_complete, write_guard
from ..io.zarr_store import for_writing, jsonable
from .compress import require_compressed

FORMAT_VERSION = 1
LAYOUT = "compressed"
#: the per-pattern arrays, written by the tasks
PATTERN_VARS = ("coefficients", "c_perp_bf", "c_perp_df")
#: probe positions per stored chunk when the Dataset's chunking says nothing
DEFAULT_TILE_FRAMES = 2**16


#: dims of every stored array
DIMS = {
    "coefficients": ("scan_y", "scan_x", "basis"),
    "c_perp_bf": SCAN_DIMS,
    "c_perp_df": SCAN_DIMS,
    "masks": ("basis", *DETECTOR_DIMS),
    "bf_region": DETECTOR_DIMS,
    "df_region": DETECTOR_DIMS,
}


def array(group: zarr.Group, name: str, store: Any = None) -> zarr.Array:
    """The array ``name`` of a compressed store's group (a missing one or a group is a format error)."""
    node = group.get(name)
    if not isinstance(node, zarr.Array):
        raise FileFormatError(f"compressed store {str(store or group.store)!r} has no array {name!r}")
    return node


def compressors(codec: Any) -> list[Any]:
    """Bytes-to-bytes zarr codecs of the stored arrays (``save(codec=...)``; default blosc)."""
    choice = resolve_codec(codec)
    if choice.serializer != "auto":
        raise bad_value("codec", codec, "a bytes-to-bytes codec (blosc, zstd, gzip, none) for float coefficients")
    return list(choice.compressors)


def _default_tile(compressed: xr.Dataset) -> tuple[int, int]:
    arr = compressed["coefficients"].data
    if isinstance(arr, da.Array):
        return int(arr.chunks[0][0]), int(arr.chunks[1][0])
    ny, nx = (int(compressed.sizes[d]) for d in SCAN_DIMS)
    return max(1, min(ny, DEFAULT_TILE_FRAMES // max(nx, 1))), nx


def create_arrays(
    group: zarr.Group, compressed: xr.Dataset, scan_shape: tuple[int, int], tile: tuple[int, int], codec: Any
) -> None:
    """Create the per-pattern arrays (empty) and write masks, regions, coordinates and attrs."""
    ny, nx = scan_shape
    n = int(compressed.sizes["basis"])
    comp = compressors(codec)
    dtype = np.dtype(compressed["coefficients"].dtype)
    for name in PATTERN_VARS:
        var = compressed[name]
        shape = (ny, nx, n) if name == "coefficients" else (ny, nx)
        group.create_array(
            name,
            shape=shape,
            dtype=dtype,
            chunks=(*tile, n) if name == "coefficients" else tile,
            compressors=comp,
            dimension_names=DIMS[name],
            attributes=jsonable(dict(var.attrs)),
            fill_value=0,
        )
    for name in ("masks", "bf_region", "df_region"):
        var = compressed[name]
        values = np.asarray(var.values)
        arr = group.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            chunks=values.shape,
            compressors=comp,
            dimension_names=DIMS[name],
            attributes=jsonable(dict(var.attrs)),
        )
        arr[...] = values
    for dim in (*SCAN_DIMS, *DETECTOR_DIMS, "basis"):
        coord = compressed.coords[dim]
        values = np.asarray(coord.values, np.float64 if dim != "basis" else np.int64)
        arr = group.create_array(
            dim,
            shape=values.shape,
            dtype=values.dtype,
            chunks=(max(values.size, 1024),),
            dimension_names=(dim,),
            compressors=None,
            attributes=jsonable(dict(coord.attrs)),
        )
        if dim == "scan_y" and values.size != ny:
            arr.resize((ny,))
            values = values[:ny]
        arr[: values.size] = values
    group.attrs.update(
        {
            "dataset_attrs": jsonable(dict(compressed.attrs)),
            "basis_region": [str(v) for v in compressed.coords["basis_region"].values],
            "variables": list(PATTERN_VARS),
        }
    )


def write_tile(root: str | None, group: Any, y0: int, x0: int, coefficients: Any, bf: Any, df: Any) -> int:
    """Write one scan tile of the per-pattern arrays (inside the store's write guard)."""
    with write_guard(root) as alive:
        if alive:
            g = zarr.open_group(group, mode="r+", zarr_format=3) if isinstance(group, (str, os.PathLike)) else group
            for name, v in zip(PATTERN_VARS, (coefficients, bf, df)):
                v = np.asarray(v)
                # every tile stored, zeros too: the manifest then names every file (and zarr skips its fill check)
                for_writing(array(g, name))[y0 : y0 + v.shape[0], x0 : x0 + v.shape[1]] = v
    return int(np.asarray(coefficients).shape[0] * np.asarray(coefficients).shape[1])


def save_compressed(
    compressed: xr.Dataset,
    store: str | os.PathLike,
    *,
    codec: Any = None,
    chunks: Sequence[int] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> str:
    """Write a compressed Dataset to a zarr v3 store (layout ``"compressed"``), atomically.

    Parameters
    ----------
    compressed : xarray.Dataset
        From :func:`stemdask.compression.compress` (lazy: the compression
        runs in the write tasks).
    store : path
        Local destination.
    codec : str, optional
        Lossless codec of the stored arrays (default ``"blosc"``).
    chunks : (int, int), optional
        Scan tile of a stored chunk (default: the Dataset's dask tile).
    overwrite : bool
        Replace an existing store (once the new one is complete).
    progress : bool
        Show a progress bar.

    Returns
    -------
    str
        The store path.
    """
    compressed = require_compressed(compressed)
    if not is_local(store):
        raise bad_type("store", store, "a local directory path")
    ny, nx = (int(compressed.sizes[d]) for d in SCAN_DIMS)
    tile = check_tile("chunks", chunks) if chunks is not None else _default_tile(compressed)
    tile = (min(tile[0], max(ny, 1)), min(tile[1], max(nx, 1)))
    arrays = [dask_data(compressed[name]) for name in PATTERN_VARS]
    arrays = [a.rechunk({0: tile[0], 1: tile[1]}) for a in arrays]
    with atomic_path(store, overwrite=overwrite) as (tmp, final):
        group = zarr.open_group(tmp, mode="w-", zarr_format=3)
        group.attrs.update(header(LAYOUT, FORMAT_VERSION))
        create_guard(tmp)
        create_arrays(group, compressed, (ny, nx), tile, codec)
        root = str(tmp)
        task = dask.delayed(write_tile, pure=False)
        blocks = [a.to_delayed() for a in arrays]
        tasks = [
            task(root, root, i * tile[0], j * tile[1], blocks[0][i, j, 0], blocks[1][i, j], blocks[2][i, j])
            for i in range(blocks[1].shape[0])
            for j in range(blocks[1].shape[1])
        ]
        compute_writes(tasks, progress=progress, description=f"compressing into {final.name}")
        mark_complete(tmp)
    return str(final)


def open_compressed(
    store: Any,
    attrs: dict[str, Any] | None = None,
    *,
    chunks: Sequence[int] | None = None,
    allow_incomplete: bool = False,
) -> xr.Dataset:
    """Open a ``"compressed"`` store as a lazy compressed Dataset (the layout's opener).

    Use :func:`stemdask.open_dataset`, which checks the header first.
    """
    group = zarr.open_group(store, mode="r", zarr_format=3)
    attrs = dict(group.attrs) if attrs is None else attrs
    variables: dict[str, Any] = {}
    for name in PATTERN_VARS:
        arr = array(group, name, store)
        lazy = da.from_zarr(arr)
        if chunks is not None:
            ty, tx = check_tile("chunks", chunks)
            lazy = lazy.rechunk({0: ty, 1: tx})
        variables[name] = (DIMS[name], lazy, dict(arr.attrs))
    for name in ("masks", "bf_region", "df_region"):
        arr = array(group, name, store)
        variables[name] = (DIMS[name], np.asarray(arr[...]), dict(arr.attrs))
    coords: dict[str, Any] = {}
    for dim in (*SCAN_DIMS, *DETECTOR_DIMS, "basis"):
        arr = array(group, dim, store)
        coords[dim] = xr.Variable((dim,), np.asarray(arr[...]), dict(arr.attrs))
    labels = attrs.get("basis_region", [])
    if len(labels) != coords["basis"].size:
        raise FileFormatError(
            f"compressed store {str(store)!r}: {len(labels)} basis_region labels for {coords['basis'].size} masks"
        )
    coords["basis_region"] = ("basis", np.asarray(labels, dtype=str))
    return xr.Dataset(variables, coords=coords, attrs=dict(attrs.get("dataset_attrs", {})))


def _claims(data: Any) -> bool:
    return isinstance(data, xr.Dataset) and "coefficients" in data and "compression_mode" in data.attrs


def _write(
    data: xr.Dataset,
    store: Any,
    *,
    codec: Any = None,
    chunks: Sequence[int] | None = None,
    shards: Any = None,
    overwrite: bool = False,
    progress: bool = False,
) -> str:
    if shards not in (None, False):
        raise bad_value("shards", shards, "None for a compressed store (its arrays are small: no shards)")
    return save_compressed(data, store, codec=codec, chunks=chunks, overwrite=overwrite, progress=progress)


register_layout(Layout(LAYOUT, version=FORMAT_VERSION, claims=_claims, write=_write, open=open_compressed))

__all__ = [
    "DIMS",
    "FORMAT_VERSION",
    "LAYOUT",
    "array",
    "create_arrays",
    "open_compressed",
    "save_compressed",
    "write_tile",
]
