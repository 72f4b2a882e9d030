"""Compute dask collections with a tqdm progress bar, on any scheduler.

With a ``distributed`` client, distributed's text progress bar follows every
task of the graph on the scheduler (the dashboard shows the same work in
detail); without one, tqdm's dask callback follows the local scheduler.
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
    client = _client()
    if client is None:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc=description, file=sys.stderr):
            return dask.compute(*collections)
    from distributed import progress as distributed_progress

    # distributed's own bar follows every task of the graph (tqdm could only see the outputs)
    print(description, file=sys.stderr, flush=True)
    futures = client.compute(list(collections))
    distributed_progress(futures, notebook=False)
    print(file=sys.stderr, flush=True)
    return tuple(client.gather(futures))
