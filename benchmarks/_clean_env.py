"""A clean, equal environment for a benchmark and its peers (see ../shared/BENCHMARKS.md).

distributed's ``Nanny`` writes its ``distributed.nanny.pre-spawn-environ``
(``MALLOC_TRIM_THRESHOLD_=65536`` and the BLAS thread counts) into the
*parent* process's ``os.environ`` when it starts a worker, and never removes
it; a peer launched afterwards with ``env={**os.environ}`` runs with
aggressive malloc trimming (LiberTEM in memory measured 3x slower). Import
this module first: it records the environment the benchmark was started
with, re-executes the benchmark without any ``MALLOC_*`` variable if it was
started with one, and pins one BLAS thread per worker thread for this
process; :func:`peer_env` gives the peers the same settings.
"""

from __future__ import annotations

import os
import sys

#: one BLAS/OpenMP thread per worker thread, for stemdask and every peer alike
BLAS_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _is_leaky(name: str) -> bool:
    """glibc malloc tunables (what the Nanny leaks) change the speed of every allocation."""
    return name.startswith("MALLOC_") or name == "GLIBC_TUNABLES"


_START_ENV = {k: v for k, v in os.environ.items() if not _is_leaky(k)}


def peer_env() -> dict[str, str]:
    """The environment this benchmark started with, minus malloc tunables and PYTHONPATH, plus :data:`BLAS_ENV`.

    Built from the snapshot taken at import, so a cluster started since
    cannot leak into it.
    """
    env = {k: v for k, v in _START_ENV.items() if k != "PYTHONPATH"}
    env.update(BLAS_ENV)
    return env


def leaked() -> dict[str, str]:
    """Variables in ``os.environ`` now that a peer must not inherit (for the record)."""
    return {k: v for k, v in os.environ.items() if _is_leaky(k)}


def start_clean() -> None:
    """Re-execute this script without malloc tunables if it has any; pin the BLAS threads.

    Call before numpy is imported (the BLAS thread count is read when it loads), from
    the main process only: a worker process spawned by a cluster imports the main
    module again, with the Nanny's variables set, and must not turn into a benchmark.
    """
    import multiprocessing

    if multiprocessing.parent_process() is not None:
        return
    if leaked():
        print(f"restarting without {sorted(leaked())}", file=sys.stderr, flush=True)
        env = dict(_START_ENV)
        env.update(BLAS_ENV)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    os.environ.update(BLAS_ENV)
