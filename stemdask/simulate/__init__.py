"""Synthetic 4D-STEM data with ground truth: probe, projected potentials, multislice, dose.

The optics (probe, propagator, band limit) are in :mod:`stemdask.optics`, the
multislice step in :mod:`stemdask.multislice` and the window geometry in
:mod:`stemdask.scan_geometry`, shared with phase retrieval.

>>> from stemdask.simulate import simulate_4dstem, samples
>>> data, truth = simulate_4dstem(samples.mos2(), energy_ev=80e3, semiangle_mrad=25,
...                               scan_shape=(8, 8), scan_step_A=0.4,
...                               detector_shape=32, max_angle_mrad=50)
"""

from __future__ import annotations

from . import dose, potentials, samples
from .samples import AtomicSample, PhaseObject
from .stem import simulate_4dstem

__all__ = ["AtomicSample", "PhaseObject", "dose", "potentials", "samples", "simulate_4dstem"]
