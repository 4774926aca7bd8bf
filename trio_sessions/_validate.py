"""Argument checks shared by constructors and methods: one rule for each kind of number.

* a **count** (sessions, entries, connections) is an ``int``; ``bool`` and ``float`` are
  refused, even ``2.0``;
* a **size** in bytes follows the same rule as a count;
* a **number of seconds** (a ttl, a timeout) is an ``int`` or a ``float``, finite and
  above zero (or zero, where that means something); ``bool`` and NaN are refused.

Each check returns the value, so a constructor reads ``self._n = check_count("n", n)``.
A number out of range raises `ValueError`; a value of the wrong type raises
`ArgumentTypeError`, a `TypeError` that is also a `ValueError` (these checks raised
`ValueError` before, and ``except ValueError`` keeps working). Messages name the
argument, what it must be, and what was given.
"""

from __future__ import annotations

import math
from typing import overload

__all__ = ["ArgumentTypeError", "check_count", "check_seconds", "check_size"]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a `TypeError`, and a `ValueError` for callers that
    caught what these checks used to raise)."""


def _got(value: object) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} ({text})"


def _check_int(name: str, value: object, minimum: int, unit: str, none: bool) -> int:
    what = "a positive int" if minimum == 1 else f"an int of at least {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        or_none = " or None" if none else ""
        raise ArgumentTypeError(f"{name} must be {what}{unit}{or_none}, not {_got(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be {what}{unit} (got {value})")
    return int(value)  # an int subclass becomes a plain int


@overload
def check_count(name: str, value: int, *, minimum: int = ..., allow_none: bool = ...) -> int: ...
@overload
def check_count(
    name: str, value: int | None, *, minimum: int = ..., allow_none: bool = ...
) -> int | None: ...
def check_count(
    name: str, value: int | None, *, minimum: int = 1, allow_none: bool = False
) -> int | None:
    """Return *value*, a count: an ``int`` of at least *minimum* (``None`` if allowed)."""
    if value is None and allow_none:
        return None
    return _check_int(name, value, minimum, "", allow_none)


@overload
def check_size(name: str, value: int, *, minimum: int = ..., allow_none: bool = ...) -> int: ...
@overload
def check_size(
    name: str, value: int | None, *, minimum: int = ..., allow_none: bool = ...
) -> int | None: ...
def check_size(
    name: str, value: int | None, *, minimum: int = 1, allow_none: bool = False
) -> int | None:
    """Return *value*, a size in bytes: an ``int`` of at least *minimum* (``None`` if allowed)."""
    if value is None and allow_none:
        return None
    return _check_int(name, value, minimum, " (bytes)", allow_none)


@overload
def check_seconds(
    name: str, value: float, *, allow_zero: bool = ..., allow_none: bool = ...
) -> float: ...
@overload
def check_seconds(
    name: str, value: float | None, *, allow_zero: bool = ..., allow_none: bool = ...
) -> float | None: ...
def check_seconds(
    name: str, value: float | None, *, allow_zero: bool = False, allow_none: bool = False
) -> float | None:
    """Return *value*, a finite number of seconds above zero (or zero, if allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        or_none = " or None" if allow_none else ""
        raise ArgumentTypeError(f"{name} must be a number of seconds{or_none}, not {_got(value)}")
    if not (value >= 0 if allow_zero else value > 0) or value == math.inf:
        what = (
            "a finite number of seconds, zero or more"
            if allow_zero
            else ("a positive, finite number of seconds")
        )
        raise ValueError(f"{name} must be {what} (got {value!r})")
    return value
