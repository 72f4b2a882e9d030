"""Which zarr codec pipeline reads and writes stores: zarr-python's own or ``zarrs`` (Rust).

Stores are plain zarr v3 whichever pipeline wrote them; the choice changes
only the speed of reading and writing (docs/storage.md, "Read path"). It is
zarr's own setting ``codec_pipeline.path`` (environment variable
``ZARR_CODEC_PIPELINE__PATH``), which zarr reads when an array is opened, in
the process that opens it: the client for metadata, each dask worker for the
chunks. :func:`use_codec_pipeline` sets it in this process, in the
environment (so workers started afterwards inherit it) and, given a
``distributed`` client, on every worker already running.

``"zarrs"`` needs the optional package ``zarrs`` (``pip install zarrs``). An
array whose codecs it does not implement (``stemdask.histogram``) is read and
written by zarr-python's pipeline instead, with a ``UserWarning`` from zarrs
naming the codec; the data are the same.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import zarr

from ..errors import bad_value

#: names accepted by :func:`use_codec_pipeline` -> zarr's ``codec_pipeline.path``
PIPELINES: dict[str, str] = {
    "zarr": "zarr.core.codec_pipeline.BatchedCodecPipeline",
    "zarrs": "zarrs.ZarrsCodecPipeline",
}
#: zarr's environment variable for ``codec_pipeline.path`` (read when zarr is imported)
ENV_VAR = "ZARR_CODEC_PIPELINE__PATH"


def codec_pipeline() -> str:
    """Name (a key of :data:`PIPELINES`) of the pipeline zarr uses in this process, else its path."""
    path = str(zarr.config.get("codec_pipeline.path"))
    return next((name for name, p in PIPELINES.items() if p == path), path)


def _set_path(path: str) -> None:
    zarr.config.set({"codec_pipeline.path": path})
    os.environ[ENV_VAR] = path


def use_codec_pipeline(name: str, *, client: Any | None = None) -> str:
    """Read and write zarr stores with the codec pipeline ``name``; return the previous name.

    Parameters
    ----------
    name : {"zarr", "zarrs"}
        ``"zarr"``: zarr-python's own pipeline (the default). ``"zarrs"``:
        the Rust pipeline of the ``zarrs`` package.
    client : distributed.Client, optional
        Also set it on every worker of this client (workers started later
        inherit it from the environment of this process).

    Raises
    ------
    InvalidArgumentError
        For an unknown name.
    ImportError
        For ``"zarrs"`` when the package is not installed.
    """
    if name not in PIPELINES:
        raise bad_value("name", name, f"one of {sorted(PIPELINES)}")
    if name == "zarrs" and importlib.util.find_spec("zarrs") is None:
        raise ImportError("codec pipeline 'zarrs' needs the package zarrs: pip install zarrs")
    previous = codec_pipeline()
    _set_path(PIPELINES[name])
    if client is not None:
        client.run(_set_path, PIPELINES[name])
    return previous


__all__ = ["ENV_VAR", "PIPELINES", "codec_pipeline", "use_codec_pipeline"]
