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
    place only when the write finished; a failed write removes it. The
    writing process holds a lock beside it (``...partial-XXXXXXXX.lock``), so
    what a killed write left is told from a running write: it is named when
    the target is opened (:func:`describe_interrupted`) and removed by the
    next successful write of the same store.

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

import errno
import fcntl
import glob
import os
import shutil
import socket
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import zarr

from ..errors import FileFormatError, IncompleteStoreError
from . import manifest

COMPLETE_ATTR = "stemdask_complete"
LAYOUT_ATTR = "stemdask_layout"
FORMAT_ATTR = "stemdask_format"

#: lock file inside a store being written; write tasks hold it shared
GUARD_NAME = ".stemdask-writing"
#: present once a save failed: tasks that have not yet written skip their write
ABORT_NAME = ".stemdask-abort"
#: beside a temporary store: locked by the process writing it (free once that process ended)
PARTIAL_LOCK_SUFFIX = ".lock"


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
        (MissingChunkError, CorruptChunkError: files differ from the manifest)
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
    if attrs.get(COMPLETE_ATTR, False) and not allow_incomplete:
        manifest.check(store)  # a missing, cut or grown chunk/shard file is an error, not zeros


def mark_complete(store: Any) -> None:
    """Record the manifest of what was written (:mod:`.manifest`), then set ``stemdask_complete`` (last)."""
    manifest.record(store)
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


def _writable_folder(final: Path) -> None:
    """Create the folder of ``final``, or raise an error naming the store and the folder."""
    existing = next(p for p in (final.parent, *final.parent.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR, f"cannot create the store {str(final)!r}: {str(existing)!r} is a file, not a folder"
        )
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise type(err)(
            err.errno, f"cannot create the folder {str(final.parent)!r} for the store {str(final)!r}: {err.strerror}"
        ) from None


def _owner_lock(tmp: Path, final: Path) -> int:
    """Create and lock ``tmp``'s lock file (held while this process writes); return its descriptor."""
    lock = tmp.with_name(tmp.name + PARTIAL_LOCK_SUFFIX)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_WRONLY, 0o644)
    except OSError as err:
        raise type(err)(
            err.errno, f"cannot write the store {str(final)!r} in {str(final.parent)!r}: {err.strerror}"
        ) from None
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd


def _release_owner_lock(tmp: Path, fd: int) -> None:
    tmp.with_name(tmp.name + PARTIAL_LOCK_SUFFIX).unlink(missing_ok=True)
    os.close(fd)


def interrupted_writes(store: str | os.PathLike) -> list[tuple[Path, str | None]]:
    """Temporary ``.NAME.partial-*`` stores of ``store`` left by writes; ``(path, writer)`` each.

    ``writer`` is None when the write that made it has ended (its process died
    or was killed: the store is stale), else who holds it ("pid N on HOST").
    """
    final = Path(store).expanduser().absolute()
    out: list[tuple[Path, str | None]] = []
    if not final.parent.is_dir():
        return out
    for tmp in sorted(final.parent.glob(f".{glob.escape(final.name)}.partial-*")):
        if tmp.name.endswith(PARTIAL_LOCK_SUFFIX):
            continue
        lock = tmp.with_name(tmp.name + PARTIAL_LOCK_SUFFIX)
        writer = None
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            fd = None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                writer = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            finally:
                os.close(fd)
        out.append((tmp, writer))
    return out


def remove_stale_writes(store: str | os.PathLike) -> list[Path]:
    """Remove the temporary stores of ``store`` whose writes have ended; return their paths."""
    removed = []
    for tmp, writer in interrupted_writes(store):
        if writer is None:
            _remove(tmp)
            tmp.with_name(tmp.name + PARTIAL_LOCK_SUFFIX).unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def describe_interrupted(store: str | os.PathLike) -> str:
    """A sentence about interrupted writes of ``store`` (empty when there are none), for errors."""
    found = interrupted_writes(store)
    if not found:
        return ""
    parts = []
    for tmp, writer in found:
        if writer is None:
            parts.append(f"{str(tmp)!r} is what an interrupted write left (its process has ended)")
        else:
            parts.append(f"{str(tmp)!r} is being written now ({writer})")
    return (
        "; ".join(parts) + ". A save cannot be resumed: run the same save (or `stemdask convert ...`) again, "
        "which writes the store and removes what interrupted writes left, or delete them (rm -r PATH)"
    )


@contextmanager
def atomic_path(store: str | os.PathLike, *, overwrite: bool = False) -> Iterator[tuple[Path, Path]]:
    """Write a local store (directory or file) under a temporary sibling name.

    Yields ``(tmp, final)``: write everything into ``tmp``. When the block
    ends normally ``tmp`` is renamed to ``final`` (an existing store there is
    replaced only now, when ``overwrite``) and what earlier interrupted writes
    of ``final`` left is removed; on any exception ``tmp`` is removed by
    :func:`abandon` and ``final`` is untouched. While it writes, the process
    holds a lock on ``tmp`` + ``.lock``, so a killed write is told from a
    running one (:func:`interrupted_writes`).
    """
    final = Path(store).expanduser().absolute()
    if final.exists() and not overwrite:
        raise FileExistsError(f"store {str(final)!r} exists: pass overwrite=True to replace it")
    _writable_folder(final)
    tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")
    fd = _owner_lock(tmp, final)
    try:
        try:
            yield tmp, final
            if tmp.is_dir():
                (tmp / GUARD_NAME).unlink(missing_ok=True)  # every write task has ended
            _publish(tmp, final, overwrite)
        except BaseException:
            abandon(tmp)
            raise
    finally:
        _release_owner_lock(tmp, fd)
    remove_stale_writes(final)


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
        from ..progress import local_progress  # a bar on a terminal, plain lines in a log

        with local_progress(description):
            return list(dask.compute(*tasks))
    futures = client.compute(list(tasks))
    try:
        if progress:
            from ..progress import follow_futures

            follow_futures(futures, description)
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
    "describe_interrupted",
    "interrupted_writes",
    "remove_stale_writes",
    "header",
    "is_local",
    "is_stemdask_store",
    "mark_complete",
    "write_guard",
]
