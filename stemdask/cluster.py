"""Start or join the dask cluster that stemdask computes on.

One call gives a :class:`distributed.Client` for any of:

* ``"local"`` — a :class:`distributed.LocalCluster` on this machine
  (one single-threaded worker process per core by default, so BLAS and numba
  never oversubscribe the cores);
* ``"cuda"`` — a dask-cuda ``LocalCUDACluster``, one worker per GPU (needs
  the ``gpu`` extra and a CUDA GPU);
* ``"slurm"`` — a dask-jobqueue ``SLURMCluster`` whose workers are SLURM
  jobs (see ``cluster/README.md``).

Every started client prints its dashboard link; :func:`stop` closes the
client and the cluster it started.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from distributed import Client

from .backend import gpu_available
from .checks import integer
from .errors import MissingDependencyError, StemdaskError, bad_value

KINDS = ("local", "cuda", "slurm")


class ClusterStartError(StemdaskError, RuntimeError):
    """A cluster could not be started here (no GPU, no SLURM, ...)."""


def _announce(client: Client, quiet: bool) -> None:
    if not quiet:
        link = client.dashboard_link if client.dashboard_link else "(dashboard disabled)"
        n = len(client.scheduler_info(n_workers=-1).get("workers", {}))
        print(f"stemdask: connected to {client.scheduler.address} with {n} workers; dashboard: {link}", flush=True)


def start(
    kind: str = "local",
    *,
    n_workers: int | None = None,
    quiet: bool = False,
    wait_timeout_s: float = 120.0,
    **options: Any,
) -> Client:
    """Start a dask cluster and return a client connected to it.

    Parameters
    ----------
    kind : {"local", "cuda", "slurm"}
    n_workers : int, optional
        Workers (local: default one per core; cuda: one per GPU by
        default; slurm: number of jobs, default 1).
    quiet : bool
        Do not print the dashboard link.
    wait_timeout_s : float
        For SLURM: how long to wait for the first workers to join.
    **options
        Passed to the cluster class (``LocalCluster``, ``LocalCUDACluster``
        or ``SLURMCluster``), e.g. ``memory_limit="4GiB"``,
        ``dashboard_address=":8787"``, ``queue="gpu"``, ``walltime="01:00:00"``,
        ``cores=8``, ``memory="64GB"``.

    Returns
    -------
    distributed.Client
        Close it with :func:`stop`, or use :func:`session`.
    """
    if kind not in KINDS:
        raise bad_value("kind", kind, f"one of {KINDS}")
    if n_workers is not None:
        # 0 workers would connect and then wait forever for a worker to run the first task
        n_workers = integer("n_workers", n_workers, expected="a positive number of workers (or None for the default)")
    if kind == "local":
        from distributed import LocalCluster

        options.setdefault("threads_per_worker", 1)
        if n_workers is None:
            n_workers = max(1, (os.cpu_count() or 1) // options["threads_per_worker"])
        cluster = LocalCluster(n_workers=n_workers, **options)
    elif kind == "cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as err:
            raise MissingDependencyError(
                f"kind='cuda' needs dask-cuda and cupy: pip install 'stemdask[gpu]' ({err})"
            ) from err
        if not gpu_available():
            raise ClusterStartError(
                "kind='cuda' needs a CUDA GPU, and none is visible here (cupy sees no device); use kind='local'"
            )
        if n_workers is not None:
            options.setdefault("n_workers", n_workers)
        cluster = LocalCUDACluster(**options)
    else:
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError as err:  # a core dependency, but keep the message useful
            raise MissingDependencyError(f"kind='slurm' needs dask-jobqueue ({err})") from err
        try:
            cluster = SLURMCluster(**options)
        except Exception as err:
            raise ClusterStartError(f"could not configure a SLURMCluster with {options}: {err}") from err
        cluster.scale(jobs=n_workers or 1)
    client = Client(cluster)
    if kind == "slurm":
        try:
            client.wait_for_workers(n_workers or 1, timeout=wait_timeout_s)
        except Exception as err:  # TimeoutError, or sbatch failing
            stop(client)
            raise ClusterStartError(
                f"no SLURM worker joined within {wait_timeout_s} s: is the queue running "
                f"(sinfo, squeue) and the job script valid ({err})?"
            ) from err
    _announce(client, quiet)
    return client


def connect(address: str, *, timeout_s: float = 30.0, quiet: bool = False) -> Client:
    """Connect to a running scheduler (``tcp://host:8786``) and return a client."""
    if not isinstance(address, str) or not address:
        raise bad_value("address", address, "a scheduler address such as 'tcp://127.0.0.1:8786'")
    try:
        client = Client(address, timeout=timeout_s)
    except OSError as err:
        raise ClusterStartError(f"could not reach a dask scheduler at {address!r}: {err}") from err
    _announce(client, quiet)
    return client


def stop(client: Client) -> None:
    """Close ``client`` and the cluster it started (a connected cluster keeps running)."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


@contextmanager
def session(scheduler: str | None = None, kind: str = "local", **options: Any) -> Iterator[Client]:
    """Use the scheduler at ``scheduler`` if given, else start a cluster for the block.

    >>> with session(n_workers=2) as client:  # doctest: +SKIP
    ...     data.stem.virtual_image(...).compute()
    """
    client = connect(scheduler, quiet=options.get("quiet", False)) if scheduler else start(kind, **options)
    try:
        yield client
    finally:
        if scheduler:
            client.close()
        else:
            stop(client)
