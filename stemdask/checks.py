"""Argument checks shared by the public functions (errors name argument, value, expectation)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import bad_type, bad_value


def pair(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False,
          signed: bool = False) -> tuple:
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
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise bad_type(name, value, "a number or a (y, x) pair of numbers")
        if not math.isfinite(float(v)):
            raise bad_value(name, value, "finite values")
        if not signed and (v < 0 or (v == 0 and not allow_zero)):
            raise bad_value(name, value, "non-negative values" if allow_zero else "positive values")
        if integer and int(v) != v:
            raise bad_value(name, value, "integers")
        out.append(int(v) if integer else float(v))
    return tuple(out)
