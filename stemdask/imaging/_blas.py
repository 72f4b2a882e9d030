"""One BLAS thread per dask thread while the projection kernels run.

A kernel is already one of several dask threads (or worker processes) on the
machine; letting BLAS start its own threads on top oversubscribes the cores,
and OpenBLAS then slows down about 10x (measured on 2 cores: 0.3 vs 2.9 GB/s
for 16 masks). dask's distributed workers start with
``OPENBLAS_NUM_THREADS=1``; a plain process (the threaded scheduler) does not.

:func:`single_blas_thread` lowers the BLAS thread count to 1 while at least
one kernel runs and restores it when the last one leaves (a reference count,
since the setting is process-wide). It goes through threadpoolctl's library
controllers for the BLAS libraries loaded in the process (OpenBLAS, MKL, BLIS,
FlexiBLAS), found once. Without threadpoolctl it does nothing (set
``OPENBLAS_NUM_THREADS=1`` yourself).

threadpoolctl 3.8 lets only one thread at a time change a process-wide
OpenBLAS pool: ``set_num_threads`` called from any other thread silently does
nothing, and the first thread to call it keeps control until it exits or clears
it. A kernel runs in whichever dask thread is free, and the last kernel to
leave (which restores the count) is rarely the first one that came in, so each
change here takes control for itself and hands it straight back
(``OpenBLASController.clear_controlling_thread``), under this module's lock.
Earlier threadpoolctl releases change the pool from any thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

_lock = threading.Lock()
_active = 0
_saved: list[tuple[Callable[[int], None], int]] = []
_controls: list[tuple[Callable[[], int | None], Callable[[int], None]]] | None = None


def _set_threads(lib: Any, n: int) -> None:
    """``lib.set_num_threads(n)`` from whichever thread calls it."""
    clear = getattr(type(lib), "clear_controlling_thread", None)  # threadpoolctl >= 3.8, OpenBLAS
    if clear is None:
        lib.set_num_threads(n)
        return
    clear(force=True)  # a set from a thread that is not the controlling one would be ignored
    try:
        lib.set_num_threads(n)
    finally:
        clear()  # hand control back: this thread is just one of dask's


def blas_controls() -> list[tuple[Callable[[], int | None], Callable[[int], None]]]:
    """``(get_threads, set_threads)`` callables for the BLAS libraries in use (cached)."""
    global _controls
    if _controls is None:
        import numpy  # noqa: F401  (make sure numpy's BLAS is loaded before looking)

        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _controls = []
        else:
            libs = ThreadpoolController().select(user_api="blas").lib_controllers
            _controls = [(lib.get_num_threads, partial(_set_threads, lib)) for lib in libs]
    return _controls


@contextmanager
def single_blas_thread() -> Iterator[None]:
    """Run the body with BLAS limited to one thread (process-wide, reference counted)."""
    global _active
    with _lock:
        if _active == 0:
            _saved.clear()
            for get, put in blas_controls():
                n = get()
                if n is not None and n != 1:
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
