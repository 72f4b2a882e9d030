"""Montages: many scans over a large area as one ``xarray.DataTree`` of tiles.

Each tile is a stemdask dataset (a node of the tree holding the 4-D variable
``intensity``) that carries its own stage position in ``scan_origin_A``, so
tiles can overlap, have gaps or different scan steps. The ``.stem`` accessor
of a ``DataTree`` checks a montage, describes where its tiles lie and maps an
operation over every tile, lazily (one dask graph for the whole montage)::

    tree = stemdask.montage.from_tiles({"r0c0": tile_a, "r0c1": tile_b})
    tree.stem.validate()
    tree.stem.extent_A                 # ((y_min, y_max), (x_min, x_max)) in Å
    bf = tree.stem.map(stemdask.imaging.virtual_image, disk)   # a DataTree of images
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from .dataset import DETECTOR_DIMS, SCAN_DIMS, validate
from .errors import DatasetContractError, bad_type, bad_value

#: name of the 4-D variable of a tile node
TILE_VARIABLE = "intensity"
#: calibration every tile of a montage must share (one microscope set-up, one detector)
SHARED_ATTRS = ("energy_ev", "semiangle_mrad", "detector_pixel_mrad")


def from_tiles(tiles: Mapping[str, xr.DataArray]) -> xr.DataTree:
    """A montage from named tiles (each a stemdask dataset with ``scan_origin_A``).

    Parameters
    ----------
    tiles : mapping of str to xarray.DataArray
        Tile name (a node name: no ``/``) to dataset. Tiles must share the
        detector (shape, coordinates) and the calibration in
        :data:`SHARED_ATTRS`, and each must be calibrated in Å with its stage
        position ``scan_origin_A``.

    Returns
    -------
    xarray.DataTree
        One child node per tile, holding the dataset as ``intensity``.
    """
    if not isinstance(tiles, Mapping) or not tiles:
        raise bad_type("tiles", tiles, "a non-empty mapping of tile names to stemdask datasets")
    children = {}
    for name, tile in tiles.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise bad_value("tiles", name, "tile names that are non-empty strings without '/'")
        if not isinstance(tile, xr.DataArray):
            raise bad_type(f"tiles[{name!r}]", tile, "a stemdask dataset (xarray.DataArray)")
        children[name] = xr.DataTree(xr.Dataset({TILE_VARIABLE: tile}), name=name)
    tree = xr.DataTree(children=children, name="montage")
    tree.stem.validate()
    return tree


@xr.register_datatree_accessor("stem")
class MontageAccessor:
    """4D-STEM operations on a montage of tiles (``tree.stem.<method>``)."""

    def __init__(self, tree: xr.DataTree):
        self._tree = tree

    @property
    def tiles(self) -> dict[str, xr.DataArray]:
        """Every tile by its path in the tree (nodes that hold an ``intensity`` variable)."""
        return {
            node.path: node.dataset[TILE_VARIABLE]
            for node in self._tree.subtree
            if TILE_VARIABLE in node.dataset.data_vars
        }

    def validate(self) -> xr.DataTree:
        """Check every tile against the data model and that the tiles fit together.

        Raises
        ------
        DatasetContractError
            Naming the tile and what is wrong: not a dataset, no stage
            position, or a detector or calibration that differs from the
            first tile's.
        """
        tiles = self.tiles
        if not tiles:
            raise DatasetContractError("the montage holds no tile (no node with an 'intensity' variable)")
        first_path, first = next(iter(tiles.items()))
        for path, tile in tiles.items():
            try:
                validate(tile)
            except DatasetContractError as err:
                raise DatasetContractError(f"tile {path!r}: {err}") from None
            if "scan_origin_A" not in tile.attrs or tile.coords["scan_y"].attrs.get("units") != "Å":
                raise DatasetContractError(
                    f"tile {path!r} has no stage position: a montage needs scan_step_A and "
                    f"scan_origin_A on every tile (stemdask.calibrate(tile, scan_origin_A=...))"
                )
            for dim in DETECTOR_DIMS:
                if tile.sizes[dim] != first.sizes[dim] or not np.allclose(tile.coords[dim], first.coords[dim]):
                    raise DatasetContractError(
                        f"tile {path!r} has another detector ({dim}) than tile "
                        f"{first_path!r}: a montage is recorded with one detector"
                    )
            for key in SHARED_ATTRS:
                if not np.allclose(
                    np.asarray(tile.attrs.get(key, np.nan), float),
                    np.asarray(first.attrs.get(key, np.nan), float),
                    equal_nan=True,
                ):
                    raise DatasetContractError(
                        f"tile {path!r} has {key}={tile.attrs.get(key)} but tile "
                        f"{first_path!r} has {first.attrs.get(key)}"
                    )
        return self._tree

    @property
    def scan_origins_A(self) -> xr.DataArray:
        """Stage position (y, x) in Å of the first probe position of every tile."""
        tiles = self.tiles
        values = np.array([tile.attrs["scan_origin_A"] for tile in tiles.values()], dtype=np.float64)
        return xr.DataArray(
            values,
            dims=("tile", "component"),
            coords={"tile": list(tiles), "component": ["y", "x"]},
            attrs={"units": "Å", "long_name": "stage position of each tile's first probe"},
        )

    @property
    def extent_A(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """((y_min, y_max), (x_min, x_max)) of all probe positions in Å."""
        tiles = self.tiles.values()
        out = []
        for dim in SCAN_DIMS:
            values = np.concatenate([np.asarray(t.coords[dim].values, np.float64) for t in tiles])
            out.append((float(values.min()), float(values.max())))
        return out[0], out[1]

    def map(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> xr.DataTree:
        """Apply ``func(tile, *args, **kwargs)`` to every tile; a DataTree of the (lazy) results.

        ``func`` returns a DataArray (stored as ``result``, or under its name)
        or a Dataset; nothing is computed until the caller computes the tree
        (``tree.compute()`` or ``dask.compute`` of its variables), so the
        whole montage is one graph on the cluster.
        """
        if not callable(func):
            raise bad_type("func", func, "a function of one stemdask dataset")
        children = {}
        for path, tile in self.tiles.items():
            result = func(tile, *args, **kwargs)
            if isinstance(result, xr.DataArray):
                result = result.to_dataset(name=result.name or "result")
            if not isinstance(result, xr.Dataset):
                raise bad_type(
                    "func",
                    func,
                    f"a function returning a DataArray or Dataset (got {type(result).__name__} for tile {path!r})",
                )
            children[path.strip("/")] = result
        return xr.DataTree.from_dict(children, name=self._tree.name)


__all__ = ["SHARED_ATTRS", "TILE_VARIABLE", "MontageAccessor", "from_tiles"]
