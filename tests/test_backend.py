"""Backend selection: numpy, dask (through _meta), torch, cupy; array-API namespaces; lazy imports."""

from __future__ import annotations

import math
import subprocess
import sys

import dask.array as da
import numpy as np
import pytest

from stemdask import backend
from stemdask.errors import InvalidTypeError


def test_array_module_of_numpy_dask_and_plain_values():
    assert backend.array_module(np.zeros(3)) is np
    assert backend.array_module(da.zeros((4, 4), chunks=2)) is np
    assert backend.array_module(np.float32(1.0)) is np
    assert backend.array_module([1, 2]) is np
    assert not backend.is_cupy(np.zeros(3)) and not backend.is_torch(np.zeros(3))


def test_torch_tensors_give_torch_and_come_back_as_numpy():
    torch = pytest.importorskip("torch")
    t = torch.arange(6, dtype=torch.float64).reshape(2, 3).requires_grad_(True)
    assert backend.array_module(t) is torch and backend.is_torch(t)
    out = backend.to_numpy(t * 2)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, 2 * np.arange(6.0).reshape(2, 3))


def test_to_numpy_computes_dask_arrays():
    x = da.arange(10, chunks=3)
    np.testing.assert_array_equal(backend.to_numpy(x), np.arange(10))
    np.testing.assert_array_equal(backend.to_numpy([1, 2]), np.array([1, 2]))


def test_namespace_of_arrays_modules_and_namespaces():
    import array_api_compat.numpy as compat_numpy

    assert backend.namespace(np) is compat_numpy
    assert backend.namespace(np.zeros(2)) is compat_numpy
    assert backend.namespace(da.zeros(4, chunks=2)) is compat_numpy
    assert backend.namespace(compat_numpy) is compat_numpy
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as compat_torch

    assert backend.namespace(torch) is compat_torch
    assert backend.namespace(torch.zeros(2)) is compat_torch
    with pytest.raises(InvalidTypeError, match="xp.*numpy, cupy, torch or an array-API namespace"):
        backend.namespace(math)


def test_importing_stemdask_imports_neither_torch_nor_cupy():
    code = (
        "import sys, stemdask, stemdask.backend, stemdask.optics, stemdask.multislice, "
        "stemdask.scan_geometry, stemdask.simulate; "
        "print(sorted(m for m in ('torch', 'cupy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.gpu
def test_cupy_and_dask_of_cupy_give_cupy():
    cupy = pytest.importorskip("cupy")
    x = cupy.zeros(4)
    assert backend.array_module(x) is cupy and backend.is_cupy(x)
    assert backend.array_module(da.from_array(x, chunks=2)) is cupy
    assert isinstance(backend.to_numpy(x), np.ndarray)
    import array_api_compat.cupy as compat_cupy

    assert backend.namespace(x) is compat_cupy and backend.namespace(cupy) is compat_cupy
