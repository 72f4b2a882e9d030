"""Argument checks shared by the public functions (errors name argument, value, expectation)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import bad_type, bad_value


def _is_real(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def integer(name: str, value: Any, *, minimum: int = 1, expected: str | None = None) -> int:
    """A whole number ``>= minimum`` (booleans and floats refused), as int.

    ``expected`` replaces the default description in the error ("a positive
    integer", "an integer >= 3", ...).
    """
    if minimum == 1:
        default = "a positive integer"
    elif minimum == 0:
        default = "a non-negative integer"
    else:
        default = f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise bad_value(name, value, expected or default)
    return int(value)


def number(
    name: str, value: Any, *, allow_zero: bool = False, signed: bool = False, expected: str | None = None
) -> float:
    """A finite real number, positive unless ``allow_zero`` (non-negative) or ``signed`` (any sign).

    A value that is not a number raises :class:`~stemdask.errors.InvalidTypeError`;
    one out of range :class:`~stemdask.errors.InvalidArgumentError`.
    """
    if not _is_real(value):
        raise bad_type(name, value, "a real number")
    out = float(value)
    if not math.isfinite(out) or (not signed and (out < 0 or (out == 0 and not allow_zero))):
        kind = "finite" if signed else ("non-negative finite" if allow_zero else "positive finite")
        raise bad_value(name, value, expected or f"a {kind} number")
    return out


def close(a: Any, b: Any, *, rtol: float, atol: float) -> bool:
    """``numpy.allclose`` for finite values, without its NaN handling (a hot check of coordinates)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return bool(np.all(np.abs(a - b) <= atol + rtol * np.abs(b)))


def tile(name: str, value: Any, *, expected: str = "(scan_y, scan_x) positive integer tile sizes") -> tuple[int, int]:
    """Scan tile sizes (y, x) from a 2-item, or a 4-item chunk spec whose detector part is ignored."""
    try:
        items = tuple(value)
    except TypeError:
        raise bad_value(name, value, expected) from None
    if len(items) == 4:
        items = items[:2]
    if len(items) != 2 or any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1 for t in items):
        raise bad_value(name, value, expected)
    return int(items[0]), int(items[1])


def pair(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False, signed: bool = False) -> tuple:
    """A number or a (y, x) pair, checked, as a tuple of two numbers.

    Values must be finite and positive (``allow_zero``: non-negative;
    ``signed``: any sign); ``integer`` asks for whole numbers, returned as int.
    """
    if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str):
        items = list(value)
        if len(items) != 2:
            raise bad_value(name, value, "a number or a (y, x) pair")
    else:
        items = [value, value]
    out = []
    for v in items:
        if not _is_real(v):
            raise bad_type(name, value, "a number or a (y, x) pair of numbers")
        if not math.isfinite(float(v)):
            raise bad_value(name, value, "finite values")
        if not signed and (v < 0 or (v == 0 and not allow_zero)):
            raise bad_value(name, value, "non-negative values" if allow_zero else "positive values")
        if integer and int(v) != v:
            raise bad_value(name, value, "integers")
        out.append(int(v) if integer else float(v))
    return tuple(out)
