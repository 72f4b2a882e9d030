"""Check a whole store: every chunk decoded and checksummed, every file against the manifest.

:func:`verify` compares the store's files with its manifest (missing, cut,
grown, unrecorded files: :mod:`stemdask.io.manifest`) and reads every inner
chunk of every array in dask tasks, one per stored file (a shard, or a batch
of unsharded chunks), so the work runs on the workers of a ``distributed``
client when there is one. It reports every problem rather than stopping at
the first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
import zarr

from ..errors import FileFormatError
from . import manifest as _manifest
from .checked import chunk_file, locate_bad, quiet_zarr_loop
from .publish import COMPLETE_ATTR, is_stemdask_store

#: unsharded chunks checked by one task
_CHUNKS_PER_TASK = 64


@dataclass
class VerifyReport:
    """What :func:`verify` found: ``ok`` when nothing is wrong.

    ``problems`` lists dicts with ``array``, ``file`` (key in the store),
    ``chunk`` (inner-chunk index, or None for a whole file), ``kind``
    (``"corrupt"``, ``"missing"``, ``"truncated"``, ``"too long"``,
    ``"unrecorded"``, ``"incomplete"``, ``"no manifest"``) and ``detail``.
    """

    store: str
    n_arrays: int = 0
    n_files: int = 0
    n_chunks: int = 0
    has_manifest: bool = False
    complete: bool = False
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not [p for p in self.problems if p["kind"] != "no manifest"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "ok": self.ok,
            "complete": self.complete,
            "has_manifest": self.has_manifest,
            "n_arrays": self.n_arrays,
            "n_files": self.n_files,
            "n_chunks": self.n_chunks,
            "problems": self.problems,
        }

    def __str__(self) -> str:
        head = (
            f"{self.store}: {'OK' if self.ok else f'{len(self.problems)} problem(s)'} - "
            f"{self.n_chunks} chunks in {self.n_files} files of {self.n_arrays} arrays checked"
        )
        lines = [head]
        for p in self.problems:
            where = p["file"] if p.get("chunk") is None else f"{p['file']} chunk {tuple(p['chunk'])}"
            lines.append(f"  {p['kind']:10s} {p['array']}: {where}: {p['detail']}")
        return "\n".join(lines)


def _check_region(store: Any, path: str, chunks: list[tuple[int, ...]]) -> list[dict[str, Any]]:
    """One task: read (and so verify) the given inner chunks of one array."""
    quiet_zarr_loop()
    array = zarr.open_array(store, path=path, mode="r", zarr_format=3)
    out = []
    for chunk in chunks:
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(chunk, array.chunks, array.shape))
        for bad, why in locate_bad(array, region):
            out.append(
                {"array": path, "file": chunk_file(array, bad), "chunk": list(bad), "kind": "corrupt", "detail": why}
            )
    return out


def _tasks_for(array: zarr.Array, path: str, present: set[str]) -> list[list[tuple[int, ...]]]:
    """Inner chunks to check, grouped by the stored file that holds them (absent files skipped)."""
    grid = [int(np.ceil(s / c)) for s, c in zip(array.shape, array.chunks)]
    groups: dict[str, list[tuple[int, ...]]] = {}
    for chunk in np.ndindex(*grid):
        key = chunk_file(array, chunk)
        if key[len(path) + 1 :] in present:
            groups.setdefault(key, []).append(tuple(int(i) for i in chunk))
    if array.shards is not None:
        return list(groups.values())
    flat = [c for g in groups.values() for c in g]
    return [flat[i : i + _CHUNKS_PER_TASK] for i in range(0, len(flat), _CHUNKS_PER_TASK)]


def verify(store: str | os.PathLike | Any, *, progress: bool = False) -> VerifyReport:
    """Check every chunk of every array of a store, in parallel dask tasks; report every problem.

    Runs on the current dask scheduler: the workers of a ``distributed``
    client when one is active (:func:`stemdask.cluster.start` or ``connect``),
    else local threads.

    Parameters
    ----------
    store : path or zarr store
    progress : bool
        Show a progress bar.

    Returns
    -------
    VerifyReport
        ``report.ok`` is True when every chunk decodes with a valid checksum
        and every file matches the manifest.

    Raises
    ------
    FileNotFoundError
        When nothing is at ``store``.
    FileFormatError
        When it is not a zarr v3 store.
    """
    from ..progress import compute_with_progress

    if isinstance(store, (str, os.PathLike)) and "://" not in str(store) and not os.path.exists(store):
        raise FileNotFoundError(f"no zarr store at {str(store)!r}")
    try:
        group = zarr.open_group(store, mode="r", zarr_format=3)
    except (FileNotFoundError, ValueError, TypeError, KeyError) as err:
        raise FileFormatError(f"store {str(store)!r} is not a readable zarr v3 group: {err}") from err
    report = VerifyReport(store=str(store))
    attrs = dict(group.attrs)
    report.complete = bool(attrs.get(COMPLETE_ATTR, False))
    if is_stemdask_store(attrs) and not report.complete:
        report.problems.append(
            {"array": "", "file": "zarr.json", "chunk": None, "kind": "incomplete", "detail": "write not completed"}
        )
    record = _manifest.read(store)
    report.has_manifest = record is not None
    if record is None:
        report.problems.append(
            {
                "array": "",
                "file": "",
                "chunk": None,
                "kind": "no manifest",
                "detail": "no record of the stored files (store not written by this stemdask, or not completed): "
                "missing chunks cannot be told from empty ones",
            }
        )
    else:
        report.problems.extend({**p, "chunk": None} for p in _manifest.compare(store, record))
    arrays = _manifest.arrays_of(group)
    tasks = []
    check = dask.delayed(_check_region, pure=True)
    for path, array in arrays.items():
        present = set(_manifest.stored_objects(group, path))
        report.n_files += len(present)
        for chunks in _tasks_for(array, path, present):
            report.n_chunks += len(chunks)
            tasks.append(check(store, path, chunks))
    report.n_arrays = len(arrays)
    results = compute_with_progress(*tasks, progress=progress, description=f"verifying {report.store}")
    for found in results:
        report.problems.extend(found)
    return report


__all__ = ["VerifyReport", "verify"]
