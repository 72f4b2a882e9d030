"""stemdask: distributed, dask-based 4D-STEM analysis.

The public API; see ``docs/architecture.md`` for the data model. Submodules
and functions are imported on first use (PEP 562), so ``import stemdask``
and the ``stemdask`` command start fast; the first use of any of them also
imports ``stemdask.events``, which registers the event layout and readers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBMODULES = (
    "cluster",
    "codecs",
    "compression",
    "errors",
    "events",
    "imaging",
    "io",
    "metrics",
    "montage",
    "optics",
    "physics",
    "ptycho",
    "simulate",
)
#: public name -> module that defines it
_FUNCTIONS = {
    "DIMS": "dataset",
    "calibrate": "dataset",
    "describe": "dataset",
    "from_array": "dataset",
    "validate": "dataset",
    "DatasetWriter": "io",
    "open_dataset": "io",
    "save": "io",
    "verify": "io.verify",
}

if TYPE_CHECKING:  # for type checkers and IDEs: the eager imports
    from . import (  # noqa: F401
        cluster,
        codecs,
        compression,
        errors,
        events,
        imaging,
        io,
        metrics,
        montage,
        optics,
        physics,
        ptycho,
        simulate,
    )
    from .dataset import DIMS, calibrate, describe, from_array, validate  # noqa: F401
    from .io import DatasetWriter, open_dataset, save  # noqa: F401
    from .io.verify import verify  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value: Any = importlib.import_module(f".{name}", __name__)
    elif name in _FUNCTIONS:
        value = getattr(importlib.import_module(f".{_FUNCTIONS[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'stemdask' has no attribute {name!r}")
    importlib.import_module(".events", __name__)  # registers the event layout, readers, representations
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


__all__ = sorted([*_SUBMODULES, *_FUNCTIONS])
