"""Argument validation shared by the public functions.

:class:`InvalidArgumentError` is the one class of ``share_core.errors`` (re-exported here and
from ``share_core``), so ``except share_core.errors.InvalidArgumentError`` catches what these
checks raise.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

from share_core.errors import InvalidArgumentError, ShapeError

__all__ = [
    "InvalidArgumentError",
    "check_matrix",
    "check_vector",
    "check_positive_int",
    "check_real",
]


def check_matrix(x: Any, name: str, *, nonempty: bool = False) -> tuple[int, int]:
    """Shape ``(d, n)`` of a 2-D array, or :class:`ShapeError`; `nonempty` demands d, n >= 1."""
    shape = tuple(x.shape)
    if len(shape) != 2:
        raise ShapeError(f"expected {name} to be a 2-D array (d, n), found shape {shape}")
    if nonempty and (shape[0] < 1 or shape[1] < 1):
        raise ShapeError(f"expected {name} with at least one row and one column, found shape {shape}")
    return shape[0], shape[1]


def check_vector(v: Any, name: str, length: int, other: str, other_shape: tuple) -> None:
    """:class:`ShapeError` unless `v` is 1-D of `length` (to match `other` of `other_shape`)."""
    shape = tuple(v.shape)
    if shape != (length,):
        raise ShapeError(
            f"expected {name} of shape ({length},) to match {other} of shape {tuple(other_shape)}, "
            f"found shape {shape}"
        )


def check_positive_int(value: Any, name: str) -> int:
    """`value` as a Python int >= 1 (bools and floats refused), or InvalidArgumentError."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"expected {name} to be an int >= 1, found bool {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidArgumentError(
            f"expected {name} to be an int >= 1, found {type(value).__name__} {value!r}"
        ) from None
    if number < 1:
        raise InvalidArgumentError(f"expected {name} to be an int >= 1, found {number}")
    return number


def check_real(value: Any, name: str) -> float:
    """`value` as a finite Python float (bools refused), or InvalidArgumentError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"expected {name} to be a real number, found {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidArgumentError(f"expected {name} to be a finite real number, found {number}")
    return number
