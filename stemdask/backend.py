"""Array backends: numpy on the CPU, cupy on a GPU, torch for autograd, chosen from the array.

Neither cupy nor torch is imported at module load: the type of an array is
recognised by the name of the module that defines it, and the library is
imported only when an array of it is seen, so numpy-only code pays nothing.

Two views of a backend:

* :func:`array_module` gives the library itself (``numpy``, ``cupy`` or
  ``torch``), for code that calls its native functions (``scipy.fft`` on
  numpy, ``torch.fft`` with ``dim=``, ...).
* :func:`namespace` gives the array-API namespace of ``array_api_compat``
  (``array_api_compat.numpy``, ``.cupy``, ``.torch``), for code written once
  for all backends (:mod:`stemdask.optics`).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def _root(array: Any) -> str:
    """Top-level package of the array's type (``"numpy"``, ``"cupy"``, ``"torch"``, ``"dask"``)."""
    return type(array).__module__.partition(".")[0]


def _unwrap_dask(array: Any) -> Any:
    """The chunk prototype (``_meta``) of a dask array, else the array itself."""
    while _root(array) == "dask" and hasattr(array, "_meta"):
        array = array._meta
    return array


def is_cupy(array: Any) -> bool:
    """True when ``array`` is a cupy array (without importing cupy); a dask array is not."""
    return _root(array) == "cupy"


def is_torch(array: Any) -> bool:
    """True when ``array`` is a torch tensor (without importing torch)."""
    return _root(array) == "torch"


def array_module(array: Any) -> ModuleType:
    """The library of ``array``: ``cupy``, ``torch`` or ``numpy``.

    A dask array is looked through to its chunk type (``array._meta``), so a
    dask array of cupy chunks gives ``cupy``. Anything else (numpy arrays,
    scalars, lists) gives ``numpy``.
    """
    root = _root(array)
    if root == "numpy":  # the common case first: one string comparison
        return np
    if root == "dask":
        return array_module(_unwrap_dask(array))
    if root == "cupy":
        import cupy

        return cupy
    if root == "torch":
        import torch

        return torch
    return np


def namespace(x: Any = np) -> ModuleType:
    """The array-API namespace (``array_api_compat``) of an array or of a library.

    Parameters
    ----------
    x : array or module
        A numpy, cupy or torch array (a dask array is looked through to its
        chunks), or one of the modules ``numpy``, ``cupy``, ``torch``, or an
        array-API namespace (returned as it is).

    Returns
    -------
    module
        ``array_api_compat.numpy``, ``array_api_compat.cupy`` or
        ``array_api_compat.torch`` (or ``x`` when it already is a namespace).

    Raises
    ------
    InvalidTypeError
        For a module that is neither numpy, cupy, torch nor an array-API namespace.
    """
    import array_api_compat

    if isinstance(x, ModuleType):
        name = x.__name__
        if name == "numpy" or array_api_compat.is_numpy_namespace(x):
            import array_api_compat.numpy as compat_numpy

            return compat_numpy
        if name == "torch" or array_api_compat.is_torch_namespace(x):
            import array_api_compat.torch as compat_torch

            return compat_torch
        if name == "cupy" or array_api_compat.is_cupy_namespace(x):
            import array_api_compat.cupy as compat_cupy

            return compat_cupy
        if hasattr(x, "__array_api_version__"):  # e.g. array_api_strict
            return x
        from .errors import bad_type

        raise bad_type("xp", x, "numpy, cupy, torch or an array-API namespace")
    return array_api_compat.array_namespace(_unwrap_dask(x))


def to_numpy(array: Any) -> np.ndarray:
    """A numpy copy of a numpy, cupy or torch array, or of a dask array (computed).

    cupy arrays come back with ``.get()``, torch tensors with
    ``.detach().cpu().numpy()`` (so a tensor that requires grad is fine).
    """
    root = _root(array)
    if root == "cupy":
        return array.get()
    if root == "torch":
        return array.detach().cpu().numpy()
    if root == "dask":
        return to_numpy(array.compute())
    return np.asarray(array)


def gpu_available() -> bool:
    """True when cupy is installed and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDARuntimeError without a driver, ...
        return False
