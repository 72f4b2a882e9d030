"""Mask projections: virtual detectors, PACBED, radial profiles, centre of mass, DPC and iCoM.

Everything runs through one engine, :func:`project` (a matrix product per
chunk of frames); see ``docs/imaging.md`` for the user guide.
"""

from __future__ import annotations

from . import detectors
from .com import (
    center_of_mass,
    correct_com,
    electric_field,
    find_rotation,
    fit_descan,
    remove_descan,
    rotate_com,
)
from .phase import dpc, icom
from .project import MaskWeights, back_project, project, project_block
from .virtual import beam_center, pacbed, radial_profile, virtual_image

__all__ = [
    "MaskWeights",
    "back_project",
    "beam_center",
    "center_of_mass",
    "correct_com",
    "detectors",
    "dpc",
    "electric_field",
    "find_rotation",
    "fit_descan",
    "icom",
    "pacbed",
    "project",
    "project_block",
    "radial_profile",
    "remove_descan",
    "rotate_com",
    "virtual_image",
]
