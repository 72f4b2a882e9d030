"""Compute dask collections with a tqdm progress bar, on any scheduler.

With a ``distributed`` client the graph is persisted on the cluster and the
bar counts finished tasks as their futures complete (the dashboard shows the
same work in detail); without one, tqdm's dask callback follows the local
scheduler.
"""

from __future__ import annotations

import sys
from typing import Any

import dask


def _client() -> Any | None:
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def compute_with_progress(*collections: Any, progress: bool = False, description: str = "computing") -> tuple:
    """Compute ``collections`` (dask arrays, delayed, xarray objects) and return the results.

    Parameters
    ----------
    *collections
        Anything ``dask.compute`` accepts.
    progress : bool
        Show a tqdm bar on stderr.
    description : str
        Label of the bar.
    """
    if not progress:
        return dask.compute(*collections)
    from tqdm.auto import tqdm

    client = _client()
    if client is None:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc=description, file=sys.stderr):
            return dask.compute(*collections)
    from distributed import as_completed, futures_of

    persisted = client.persist(list(collections))
    futures = futures_of(persisted)
    with tqdm(total=len(futures), desc=description, unit="task", file=sys.stderr) as bar:
        for _ in as_completed(futures):
            bar.update(1)
    return tuple(dask.compute(*persisted))
