"""The ``.stem`` accessor shows the real signatures; public entry points validate once."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import pytest

import stemdask
from stemdask import dataset, imaging


def _data():
    return stemdask.from_array(
        np.ones((2, 3, 8, 8), np.uint16), detector_pixel_mrad=1.0, scan_step_A=0.5, energy_ev=300e3, semiangle_mrad=3.0
    )


def test_accessor_methods_have_the_functions_signatures_and_docs():
    data = _data()
    for name, func in [
        ("virtual_image", imaging.virtual_image),
        ("center_of_mass", imaging.center_of_mass),
        ("project", imaging.project),
        ("pacbed", imaging.pacbed),
        ("save", stemdask.save),
        ("calibrate", stemdask.calibrate),
        ("to_events", stemdask.events.from_dense),
    ]:
        method = getattr(data.stem, name)
        want = list(inspect.signature(func).parameters)[1:]
        assert list(inspect.signature(method).parameters) == want, name
        assert method.__doc__ == func.__doc__
    disk = imaging.detectors.disk(data, 2.0)
    np.testing.assert_array_equal(data.stem.virtual_image(disk).values, imaging.virtual_image(data, disk).values)
    assert data.stem.calibrate(energy_ev=200e3).attrs["energy_ev"] == 200e3


@pytest.mark.parametrize(
    "call",
    [
        lambda d: imaging.virtual_image(d, imaging.detectors.disk(d, 2.0)),
        lambda d: imaging.project(d, imaging.detectors.disk(d, 2.0)),
        lambda d: imaging.center_of_mass(d),
        lambda d: imaging.pacbed(d),
        lambda d: imaging.radial_profile(d, 3),
        lambda d: imaging.dpc(d),
    ],
)
def test_one_public_call_validates_the_dataset_once(monkeypatch, call):
    data = _data()
    calls = []
    real = dataset.validate

    def counting(d):
        calls.append(1)
        return real(d)

    # every module that imported validate by name
    for name in (
        "stemdask.dataset",
        "stemdask.imaging.com",
        "stemdask.imaging.phase",
        "stemdask.imaging.project",
        "stemdask.imaging.virtual",
    ):
        monkeypatch.setattr(importlib.import_module(name), "validate", counting)
    call(data)
    assert len(calls) == 1
