"""Compute dask collections with a progress bar, on any scheduler.

With a ``distributed`` client, distributed's text progress bar follows every
task of the graph on the scheduler (the dashboard shows the same work in
detail); without one, tqdm's dask callback follows the local scheduler.
When stderr is not a terminal (a log file, a batch job, a pipe) a bar would
write hundreds of carriage-return updates and escape codes into the log, so
progress is a few plain lines instead (one per 10 %, and the end).
"""

from __future__ import annotations

import sys
import time
from contextlib import AbstractContextManager
from typing import Any

import dask
from dask.callbacks import Callback

#: percent between two plain progress lines
LINE_STEP_PERCENT = 10


def is_terminal(stream: Any = None) -> bool:
    """True when ``stream`` (default stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


class _Lines:
    """Plain progress lines: ``description: 40% (12/30 tasks)``, then the end with the time taken."""

    def __init__(self, description: str, file: Any) -> None:
        self.description = description
        self.file = file
        self.total = 0
        self.done = 0
        self.next = LINE_STEP_PERCENT
        self.started = time.perf_counter()

    def start(self, total: int) -> None:
        self.total = total
        print(f"{self.description}: {total} tasks", file=self.file, flush=True)

    def step(self) -> None:
        self.done += 1
        percent = 100 * self.done // max(self.total, 1)
        if percent >= self.next and self.done < self.total:
            print(f"{self.description}: {percent}% ({self.done}/{self.total} tasks)", file=self.file, flush=True)
            self.next = (percent // LINE_STEP_PERCENT + 1) * LINE_STEP_PERCENT

    def finish(self) -> None:
        seconds = time.perf_counter() - self.started
        print(f"{self.description}: 100% ({self.total} tasks) in {seconds:.1f} s", file=self.file, flush=True)


class LineProgress(Callback):
    """A dask local-scheduler callback printing :class:`_Lines` (for logs, not terminals)."""

    def __init__(self, description: str = "computing", file: Any = None) -> None:
        super().__init__()
        self.lines = _Lines(description, sys.stderr if file is None else file)

    def _start_state(self, dsk: Any, state: Any) -> None:
        self.lines.start(sum(len(state[k]) for k in ("ready", "waiting", "running", "finished")))

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        self.lines.step()

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        if not errored:
            self.lines.finish()


def local_progress(description: str) -> AbstractContextManager:
    """A progress display for the local scheduler: tqdm on a terminal, plain lines otherwise."""
    if is_terminal():
        from tqdm.dask import TqdmCallback

        return TqdmCallback(desc=description, file=sys.stderr)
    return LineProgress(description)


def follow_futures(futures: list, description: str) -> None:
    """Show the progress of distributed futures until all are done (errors are raised by gather)."""
    if is_terminal():
        from distributed import progress as distributed_progress

        print(description, file=sys.stderr, flush=True)
        distributed_progress(futures, notebook=False)
        print(file=sys.stderr, flush=True)
        return
    from distributed import as_completed

    lines = _Lines(description, sys.stderr)
    lines.start(len(futures))
    for _ in as_completed(futures):
        lines.step()
    lines.finish()


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
        Show progress on stderr (a bar on a terminal, plain lines in a log).
    description : str
        Label of the bar.
    """
    if not progress:
        return dask.compute(*collections)
    client = _client()
    if client is None:
        with local_progress(description):
            return dask.compute(*collections)
    # distributed's own bar follows every task of the graph (tqdm could only see the outputs)
    futures = client.compute(list(collections))
    follow_futures(futures, description)
    return tuple(client.gather(futures))
