"""glibc malloc thresholds for dask worker processes (one setting, used by every heavy task).

distributed's nanny starts each worker with ``MALLOC_TRIM_THRESHOLD_=65536``
(``distributed.nanny.pre-spawn-environ``) so that freed memory goes back to
the OS. Setting that variable also fixes glibc's mmap threshold at its
128 KiB default instead of letting it grow, so every large temporary — a
decoded chunk, an exit-wave block, an FFT buffer — becomes a fresh ``mmap``
whose pages are faulted in and handed back at once. Measured here: a
ptychography step 4-8x slower on a worker than in a process
(docs/ptychography.md), and a virtual image from a zarr store on a 2-worker
LocalCluster 2.4x slower (docs/storage.md).

:func:`keep_freed_memory` raises the mmap threshold to 32 MiB (glibc's
maximum) and the trim threshold to 64 MiB, once per process, and only in a
process that carries the nanny's variable: a client process or a plain
script is left alone.
"""

from __future__ import annotations

import ctypes
import os
import threading

#: glibc malloc thresholds set on a worker whose nanny set ``MALLOC_TRIM_THRESHOLD_`` (bytes)
KEEP_FREED_BYTES = {"trim": 64 * 2**20, "mmap": 32 * 2**20}

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
_lock = threading.Lock()
_done = False


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks of up to 32 MiB in this process (see the module doc).

    Returns
    -------
    bool
        Whether the thresholds were set by this call (False when already set,
        without the nanny's variable, or without glibc).
    """
    global _done
    if _done:
        return False
    with _lock:
        if _done or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
            return False
        _done = True
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:
            return False
        libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES["trim"])
        libc.mallopt(_M_MMAP_THRESHOLD, KEEP_FREED_BYTES["mmap"])
        return True


__all__ = ["KEEP_FREED_BYTES", "keep_freed_memory"]
