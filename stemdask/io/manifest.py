"""What a completed store holds: a manifest of every stored chunk or shard file, with its size.

zarr reads a chunk that is not there as the fill value (a chunk that was all
fill value is not written at all), so a deleted shard reads back as zeros. A
stemdask store therefore records, when its write completes, the key and size
of every object of every array (:func:`record`, called by
:func:`stemdask.io.publish.mark_complete`). Opening a store compares what is
there with that record (:func:`check`): a missing file is a
:class:`~stemdask.errors.MissingChunkError`, a file of another size (cut or
grown) a :class:`~stemdask.errors.CorruptChunkError`; both name the store,
the array and the chunk. The content of every chunk is checked by its crc32c
when it is read (and by :func:`stemdask.verify` for a whole store).

The manifest is the attrs of a child group ``stemdask_manifest``: a zarr node
(so zarr and xarray see nothing foreign in the store), read only when
checking. Stores written before manifests existed have none and are opened
without this check (``stemdask verify`` says so).
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import zarr

from ..errors import CorruptChunkError, MissingChunkError

#: child group whose attrs are the manifest
MANIFEST = "stemdask_manifest"
MANIFEST_FORMAT = 1
#: keys named in one error message (the count is always given)
_NAMED = 8


def _sync(coroutine: Any) -> Any:
    from zarr.core.sync import sync

    return sync(coroutine)


async def _objects(store: Any, prefix: str) -> dict[str, int]:
    keys = [k async for k in store.list_prefix(prefix) if not k.endswith("zarr.json")]
    sizes = await asyncio.gather(*(store.getsize(k) for k in keys))
    return {k[len(prefix) :]: int(n) for k, n in zip(keys, sizes)}


def arrays_of(group: zarr.Group) -> dict[str, zarr.Array]:
    """Every array of ``group`` and its subgroups, by path relative to the group (manifest excluded)."""
    out = {}
    with warnings.catch_warnings():
        # the lock file of a store being written is not a zarr node; zarr warns about it
        warnings.filterwarnings("ignore", "Object at .* is not recognized", UserWarning)
        members = list(group.members(max_depth=None))
    for path, node in members:
        if isinstance(node, zarr.Array) and not path.startswith(MANIFEST):
            out[path] = node
    return out


def _prefix(group: zarr.Group, path: str) -> str:
    return f"{group.path}/{path}/" if group.path else f"{path}/"


def stored_objects(group: zarr.Group, path: str) -> dict[str, int]:
    """Data objects (chunk or shard files) of the array at ``path``: key inside the array -> bytes."""
    return _sync(_objects(group.store, _prefix(group, path)))


async def _all_objects(group: zarr.Group, paths: list[str]) -> list[dict[str, int]]:
    return list(await asyncio.gather(*(_objects(group.store, _prefix(group, p)) for p in paths)))


def record(store: Any) -> dict[str, Any]:
    """Write the manifest of a store whose data are all written; return it."""
    group = zarr.open_group(store, mode="r+", zarr_format=3)
    paths = list(arrays_of(group))
    # every array listed at once (one round trip to the store's event loop, not one per array)
    arrays = dict(zip(paths, _sync(_all_objects(group, paths))))
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "n_objects": sum(len(v) for v in arrays.values()),
        "nbytes": sum(sum(v.values()) for v in arrays.values()),
        "arrays": arrays,
    }
    if MANIFEST in group:
        group[MANIFEST].attrs.put(manifest)
    else:
        group.create_group(MANIFEST, attributes=manifest)
    return manifest


def read(store: Any) -> dict[str, Any] | None:
    """The manifest of ``store``, or None when it has none (written before manifests existed)."""
    group = zarr.open_group(store, mode="r", zarr_format=3)
    try:
        node = group[MANIFEST]
    except KeyError:
        return None
    return dict(node.attrs)


def compare(store: Any, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Differences between the files a store holds and its manifest, one dict per problem.

    Each has ``array``, ``file`` (key inside the store), ``kind`` (``"missing"``,
    ``"truncated"``, ``"too long"``, ``"unrecorded"``) and ``detail``.
    """
    group = zarr.open_group(store, mode="r", zarr_format=3)
    problems = []
    for path, expected in manifest.get("arrays", {}).items():
        found = stored_objects(group, path)
        for key, size in expected.items():
            file = f"{path}/{key}"
            if key not in found:
                problems.append({"array": path, "file": file, "kind": "missing", "detail": f"{size} bytes recorded"})
            elif found[key] != size:
                kind = "truncated" if found[key] < size else "too long"
                detail = f"{size} bytes recorded, {found[key]} found"
                problems.append({"array": path, "file": file, "kind": kind, "detail": detail})
        for key in sorted(set(found) - set(expected)):
            problems.append(
                {"array": path, "file": f"{path}/{key}", "kind": "unrecorded", "detail": "not in the manifest"}
            )
    return problems


def check(store: Any) -> None:
    """Refuse a store with a missing, cut or grown chunk/shard file (a no-op without a manifest).

    Raises
    ------
    MissingChunkError, CorruptChunkError
        Naming the store, the array and the files.
    """
    manifest = read(store)
    if manifest is None:
        return
    problems = [p for p in compare(store, manifest) if p["kind"] != "unrecorded"]
    if not problems:
        return
    missing = [p for p in problems if p["kind"] == "missing"]
    named = "; ".join(f"{p['file']!r} ({p['kind']}: {p['detail']})" for p in problems[:_NAMED])
    more = f"; and {len(problems) - _NAMED} more" if len(problems) > _NAMED else ""
    arrays = sorted({p["array"] for p in problems})
    cls = MissingChunkError if missing else CorruptChunkError
    raise cls(
        f"store {str(store)!r}, array(s) {arrays}: {len(problems)} chunk/shard file(s) differ from the manifest "
        f"written when the store was completed ({len(missing)} missing): {named}{more}. The data there would "
        f"read as zeros or fail; restore the files or rewrite the store "
        f"(`stemdask verify {store}` lists every problem; allow_incomplete=True reads what is there)"
    )


__all__ = ["MANIFEST", "arrays_of", "check", "compare", "read", "record", "stored_objects"]
