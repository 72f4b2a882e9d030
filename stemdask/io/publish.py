"""What every stemdask store shares: its header, the atomic publish and the write tasks.

Header
    Group attrs ``stemdask_format`` (the layout's format version),
    ``stemdask_layout`` (a name in :mod:`stemdask.io.layouts`) and
    ``stemdask_complete`` (False while writing, set True last).
    :func:`header` writes them, :func:`check_header` checks them when a store
    is opened, :func:`mark_complete` sets the marker.

Atomic publish
    :func:`atomic_path` writes a local store (a directory or a single file)
    under a hidden sibling name ``.NAME.partial-XXXXXXXX`` and renames it into
    place only when the write finished; a failed write removes it.

Write tasks
    Data are written by dask tasks on the workers, never by the client.
    :func:`compute_writes` runs them (cancelling what it started when one
    fails) and each task writes inside :func:`write_guard`: a shared
    ``flock`` on a lock file in the temporary store. A failed save takes the
    exclusive lock before it removes the temporary store, so it waits for
    exactly the writes in flight (no sleeping, no retrying), and a task that
    starts later finds the store abandoned and writes nothing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import zarr

from ..errors import FileFormatError, IncompleteStoreError

COMPLETE_ATTR = "stemdask_complete"
LAYOUT_ATTR = "stemdask_layout"
FORMAT_ATTR = "stemdask_format"

#: lock file inside a store being written; write tasks hold it shared
GUARD_NAME = ".stemdask-writing"
#: present once a save failed: tasks that have not yet written skip their write
ABORT_NAME = ".stemdask-abort"


# ----------------------------------------------------------------------------
# header
# ----------------------------------------------------------------------------
def header(layout: str, version: int) -> dict[str, Any]:
    """Group attrs of a store being written: its layout, format version, incomplete."""
    return {FORMAT_ATTR: int(version), LAYOUT_ATTR: str(layout), COMPLETE_ATTR: False}


def is_stemdask_store(attrs: dict[str, Any]) -> bool:
    """True when group ``attrs`` carry a stemdask header."""
    return LAYOUT_ATTR in attrs or COMPLETE_ATTR in attrs


def check_header(store: Any, attrs: dict[str, Any], version: int, *, allow_incomplete: bool = False) -> None:
    """Refuse a store whose write did not complete or whose format is too new.

    Parameters
    ----------
    store : path or zarr store
        Named in the errors.
    attrs : dict
        The store's group attrs.
    version : int
        Newest format version of its layout that this stemdask reads.
    allow_incomplete : bool
        Let an incomplete store through (for recovery).

    Raises
    ------
    IncompleteStoreError, FileFormatError
    """
    if not attrs.get(COMPLETE_ATTR, False) and not allow_incomplete:
        raise IncompleteStoreError(
            f"store {str(store)!r} was not completely written (interrupted or failed write; "
            f"{COMPLETE_ATTR} is false); pass allow_incomplete=True to read what is there"
        )
    found = attrs.get(FORMAT_ATTR, 0)
    if not isinstance(found, int) or found > version:
        raise FileFormatError(
            f"store {str(store)!r} has stemdask format {found!r} of layout "
            f"{attrs.get(LAYOUT_ATTR, 'dense')!r}, newer than this stemdask reads ({version}): "
            f"upgrade stemdask"
        )


def mark_complete(store: Any) -> None:
    """Set ``stemdask_complete`` (the last write of every store)."""
    zarr.open_group(store, mode="r+", zarr_format=3).attrs.update({COMPLETE_ATTR: True})


# ----------------------------------------------------------------------------
# atomic publish
# ----------------------------------------------------------------------------
def is_local(store: Any) -> bool:
    """True for a path on a local (or mounted) file system, False for URLs and store objects."""
    return isinstance(store, (str, os.PathLike)) and "://" not in str(store)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _publish(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move a finished store into place, replacing an old one only now."""
    if final.exists():
        if not overwrite:
            raise FileExistsError(f"store {str(final)!r} exists: pass overwrite=True to replace it")
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
        os.rename(tmp, final)
        _remove(old)
    else:
        os.rename(tmp, final)


def abandon(tmp: Path) -> None:
    """Remove a failed write's temporary store, once, after the writes in flight ended.

    Marks the store abandoned, then takes the guard lock exclusively: that
    waits for the tasks inside :func:`write_guard` and no task writes after
    it (they find the abort marker, or the lock file gone).
    """
    guard = tmp / GUARD_NAME
    if not tmp.is_dir() or not guard.exists():
        # failed before any write task could start (or a single-file store)
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)
        return
    (tmp / ABORT_NAME).touch()
    fd = os.open(guard, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        shutil.rmtree(tmp)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(store: str | os.PathLike, *, overwrite: bool = False) -> Iterator[tuple[Path, Path]]:
    """Write a local store (directory or file) under a temporary sibling name.

    Yields ``(tmp, final)``: write everything into ``tmp``. When the block
    ends normally ``tmp`` is renamed to ``final`` (an existing store there is
    replaced only now, when ``overwrite``); on any exception ``tmp`` is
    removed by :func:`abandon` and ``final`` is untouched.
    """
    final = Path(store).expanduser().absolute()
    if final.exists() and not overwrite:
        raise FileExistsError(f"store {str(final)!r} exists: pass overwrite=True to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp, final
        if tmp.is_dir():
            (tmp / GUARD_NAME).unlink(missing_ok=True)  # every write task has ended
        _publish(tmp, final, overwrite)
    except BaseException:
        abandon(tmp)
        raise


#: the name the dense writer has always exported
atomic_directory = atomic_path


def create_guard(tmp: Path) -> Path:
    """Create the lock file that :func:`write_guard` and :func:`abandon` share; return ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / GUARD_NAME).touch()
    return tmp


@contextmanager
def write_guard(root: str | os.PathLike | None) -> Iterator[bool]:
    """Inside a write task: hold the store's guard shared; yield whether to write.

    ``root`` None (a store that is not a local temporary directory) always
    yields True. Yields False when the save was abandoned (the task then
    writes nothing: the store is being, or has been, removed).
    """
    if root is None:
        yield True
        return
    try:
        fd = os.open(Path(root) / GUARD_NAME, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        # st_nlink 0: the store was removed while this task waited for the lock
        yield os.fstat(fd).st_nlink > 0 and not (Path(root) / ABORT_NAME).exists()
    finally:
        os.close(fd)  # releases the lock


# ----------------------------------------------------------------------------
# running the write tasks
# ----------------------------------------------------------------------------
def _client() -> Any | None:
    """The distributed client dask would compute on now (None for a local scheduler).

    Follows dask's own choice, so ``dask.config.set(scheduler="threads")``
    keeps a write local even while a client exists.
    """
    try:
        from distributed import Client
    except ImportError:
        return None
    owner = getattr(dask.base.get_scheduler(), "__self__", None)
    return owner if isinstance(owner, Client) else None


def compute_writes(tasks: Sequence[Any], *, progress: bool = False, description: str = "writing") -> list:
    """Compute write tasks (dask collections); return their results in order.

    With a ``distributed`` client the tasks run on its workers as futures;
    when one fails the others are cancelled (so work not yet started never
    runs) before the error is raised. Without one, the local scheduler stops
    starting tasks at the first error. Writes already in flight are waited
    for by :func:`abandon`.
    """
    client = _client()
    if client is None:
        if not progress:
            return list(dask.compute(*tasks))
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc=description, file=sys.stderr):
            return list(dask.compute(*tasks))
    futures = client.compute(list(tasks))
    try:
        if progress:
            from distributed import progress as distributed_progress

            print(description, file=sys.stderr, flush=True)
            distributed_progress(futures, notebook=False)
            print(file=sys.stderr, flush=True)
        return list(client.gather(futures))
    except BaseException:
        client.cancel(futures)
        raise


__all__ = [
    "ABORT_NAME",
    "COMPLETE_ATTR",
    "FORMAT_ATTR",
    "GUARD_NAME",
    "LAYOUT_ATTR",
    "abandon",
    "atomic_directory",
    "atomic_path",
    "check_header",
    "compute_writes",
    "create_guard",
    "header",
    "is_local",
    "is_stemdask_store",
    "mark_complete",
    "write_guard",
]
