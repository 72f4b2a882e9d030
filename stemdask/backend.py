"""Array backends: numpy on the CPU, cupy on a GPU, chosen from the array.

cupy is optional and never imported at module load; a function that receives
a cupy array asks :func:`array_module` for the matching namespace, so one
implementation serves both backends.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def is_cupy(array: Any) -> bool:
    """True when ``array`` is a cupy array (without importing cupy)."""
    return type(array).__module__.split(".")[0] == "cupy"


def array_module(array: Any) -> ModuleType:
    """The array namespace of ``array``: ``cupy`` for cupy arrays, else ``numpy``."""
    if is_cupy(array):
        import cupy

        return cupy
    return np


def to_numpy(array: Any) -> np.ndarray:
    """A numpy copy of a numpy or cupy array (``.get()`` for cupy)."""
    if is_cupy(array):
        return array.get()
    return np.asarray(array)


def gpu_available() -> bool:
    """True when cupy is installed and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDARuntimeError without a driver, ...
        return False
