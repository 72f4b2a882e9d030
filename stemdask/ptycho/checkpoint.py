"""Checkpoints of an iterative reconstruction in a zarr v3 group (written atomically).

The group holds every array of the state (object, probe, offsets, the
optimiser's moments, the best state for early stopping) and the numbers in
its attrs, so that a run resumed from it continues exactly as the
uninterrupted one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..io.publish import atomic_path

#: the layout name in the checkpoint's attrs
CHECKPOINT_FORMAT = "stemdask.ptycho.checkpoint/1"


def save_checkpoint(path: str | os.PathLike, arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> None:
    """Write ``arrays`` (names may contain ``/``) and JSON ``attrs`` to a zarr group at ``path``."""
    with atomic_path(path, overwrite=True) as (tmp, _):
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        for name, value in arrays.items():
            value = np.ascontiguousarray(value)
            group.create_array(name, data=value, chunks=value.shape if value.ndim else ())
        group.attrs.update({"format": CHECKPOINT_FORMAT, "state": json.loads(json.dumps(attrs))})


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The arrays and attrs of a checkpoint, or None when there is none at ``path``."""
    if not Path(path).exists():
        return None
    group = zarr.open_group(str(path), mode="r")
    arrays: dict[str, np.ndarray] = {}

    def walk(g: Any, prefix: str) -> None:
        for name, member in g.members():
            if isinstance(member, zarr.Group):
                walk(member, f"{prefix}{name}/")
            else:
                arrays[f"{prefix}{name}"] = member[...]

    walk(group, "")
    state: Any = group.attrs["state"]
    return arrays, dict(state)
