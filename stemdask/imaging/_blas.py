"""One BLAS thread per dask thread while the projection kernels run.

A kernel is already one of several dask threads (or worker processes) on the
machine; letting BLAS start its own threads on top oversubscribes the cores,
and OpenBLAS then slows down about 10x (measured on 2 cores: 0.3 vs 2.9 GB/s
for 16 masks). dask's distributed workers start with
``OPENBLAS_NUM_THREADS=1``; a plain process (the threaded scheduler) does not.

:func:`single_blas_thread` lowers the BLAS thread count to 1 while at least
one kernel runs and restores it when the last one leaves (a reference count,
since the setting is process-wide). It calls the ``{get,set}_num_threads``
entry points of the OpenBLAS builds loaded in the process, found in
``/proc/self/maps``; where there are none (another BLAS, another OS) it does
nothing (set ``OPENBLAS_NUM_THREADS=1`` yourself). threadpoolctl cannot do
this job: it ignores limits set from any thread but the first that set one.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_lock = threading.Lock()
_active = 0
_saved: list[tuple[Any, int]] = []
_controls: list[tuple[Any, Any]] | None = None


def _openblas_from_maps() -> list[tuple[Any, Any]]:
    """(get, set) of every OpenBLAS loaded in this process, via ctypes (Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return []
    out = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype = ctypes.c_int
                    put.argtypes = [ctypes.c_int]
                    out.append((get, put))
                    break
            else:
                continue
            break
    return out


def blas_controls() -> list[tuple[Any, Any]]:
    """``(get_threads, set_threads)`` callables for the BLAS libraries in use (cached)."""
    global _controls
    if _controls is None:
        # Not threadpoolctl: since 3.6 its OpenBLAS limit is ignored when set from any thread
        # but the first one that set it, and these kernels run in dask's worker threads.
        import numpy  # noqa: F401  (make sure numpy's BLAS is loaded before looking)

        _controls = _openblas_from_maps()
    return _controls


@contextmanager
def single_blas_thread() -> Iterator[None]:
    """Run the body with BLAS limited to one thread (process-wide, reference counted)."""
    global _active
    with _lock:
        if _active == 0:
            _saved.clear()
            for get, put in blas_controls():
                n = int(get())
                if n != 1:
                    _saved.append((put, n))
                    put(1)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                for put, n in _saved:
                    put(n)
                _saved.clear()
