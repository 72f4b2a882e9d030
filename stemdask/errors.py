"""Errors raised by stemdask.

Every error names the argument, the offending value and what was expected, so
that a user can fix the call without reading the source.  They subclass the
builtin exception a caller would naturally catch (``ValueError``,
``TypeError``, ``FileNotFoundError``).
"""

from __future__ import annotations

from typing import Any


class StemdaskError(Exception):
    """Base class of all stemdask errors."""


class InvalidArgumentError(StemdaskError, ValueError):
    """An argument has a value that stemdask cannot use."""


class InvalidTypeError(StemdaskError, TypeError):
    """An argument has a type that stemdask cannot use."""


class DatasetContractError(InvalidArgumentError):
    """A DataArray does not follow the stemdask 4D-STEM data model."""


class FileFormatError(StemdaskError, ValueError):
    """A file is malformed, truncated or not of the expected layout."""


class IncompleteStoreError(FileFormatError):
    """A zarr store was not completely written (interrupted or failed write)."""


class CorruptChunkError(FileFormatError):
    """A stored chunk fails its checksum, does not decode, or has the wrong size."""


class MissingChunkError(FileFormatError):
    """A chunk or shard that a store's manifest lists is not there."""


class MissingCalibrationError(InvalidArgumentError):
    """An operation needs a calibration the dataset does not carry."""


class MissingDependencyError(StemdaskError, ImportError):
    """An optional dependency is needed but not installed."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bad_value(name: str, value: Any, expected: str) -> InvalidArgumentError:
    """Build the standard "argument, value, expectation" error.

    Examples
    --------
    >>> raise bad_value("energy_ev", -3.0, "a positive finite number of eV")
    Traceback (most recent call last):
    ...
    stemdask.errors.InvalidArgumentError: energy_ev=-3.0 is invalid: expected a positive finite number of eV
    """
    return InvalidArgumentError(f"{name}={_short(value)} is invalid: expected {expected}")


def bad_type(name: str, value: Any, expected: str) -> InvalidTypeError:
    """Build the standard error for an argument of the wrong type."""
    return InvalidTypeError(f"{name} has type {type(value).__name__} ({_short(value)}): expected {expected}")
