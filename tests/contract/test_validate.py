"""The shared argument checks (counts, sizes, seconds) and the id check's memory."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_sessions import InvalidSessionId, check_session_id
from trio_sessions._base import check_ttl
from trio_sessions._ids import _CHECKED_MAX, SESSION_ID_PATTERN, checked_ids
from trio_sessions._validate import ArgumentTypeError, check_count, check_seconds, check_size


@pytest.mark.parametrize("check", [check_count, check_size])
def test_counts_and_sizes_are_ints(check: object) -> None:
    assert check("n", 3) == 3  # type: ignore[operator]
    assert check("n", None, allow_none=True) is None  # type: ignore[operator]
    assert check("n", 0, minimum=0) == 0  # type: ignore[operator]
    for bad in (2.5, 2.0, True, False, "3", None, math.inf):
        with pytest.raises(ArgumentTypeError, match=r"^n must be a positive int"):
            check("n", bad)  # type: ignore[operator]
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"^n must be a positive int.* \(got -?[01]\)"):
            check("n", bad)  # type: ignore[operator]
    with pytest.raises(ValueError, match="n must be an int of at least 2"):
        check("n", 1, minimum=2)  # type: ignore[operator]


def test_messages_say_what_was_given() -> None:
    with pytest.raises(TypeError) as info:
        check_count("max_entries", 2.5, allow_none=True)  # type: ignore[call-overload]
    assert str(info.value) == "max_entries must be a positive int or None, not float (2.5)"
    with pytest.raises(TypeError) as info:
        check_size("max_bytes", True)
    assert str(info.value) == "max_bytes must be a positive int (bytes), not bool (True)"
    with pytest.raises(TypeError) as info:
        check_count("n", "x" * 100)  # type: ignore[call-overload]
    assert str(info.value).endswith("not str ('xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...)")


def test_an_int_subclass_becomes_a_plain_int() -> None:
    class Count(int):
        pass

    assert type(check_count("n", Count(3))) is int


def test_seconds() -> None:
    assert check_seconds("t", 1) == 1
    assert check_seconds("t", 0.5) == 0.5
    assert check_seconds("t", 0, allow_zero=True) == 0
    assert check_seconds("t", None, allow_none=True) is None
    for bad in (0, -1, math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="t must be a positive, finite number of seconds"):
            check_seconds("t", bad)
    with pytest.raises(ValueError, match="t must be a finite number of seconds, zero or more"):
        check_seconds("t", -0.5, allow_zero=True)
    wrong: tuple[object, ...] = (True, "1", None, b"1")
    for bad_type in wrong:
        with pytest.raises(ArgumentTypeError, match="t must be a number of seconds, not"):
            check_seconds("t", bad_type)  # type: ignore[call-overload]


def test_ttl_uses_the_rule_for_seconds() -> None:
    assert check_ttl(None) is None
    assert check_ttl(1800) == 1800
    with pytest.raises(TypeError, match=r"ttl must be a number of seconds or None, not bool"):
        check_ttl(True)
    with pytest.raises(ValueError, match="ttl must be a positive, finite number of seconds"):
        check_ttl(math.nan)


# ------------------------------------------------------------------------- ids


@given(st.text(max_size=300))
def test_the_remembered_ids_agree_with_the_pattern(text: str) -> None:
    import re

    valid = re.fullmatch(SESSION_ID_PATTERN, text, re.ASCII) is not None
    for _ in range(2):  # the second time from memory, if it was valid
        if valid:
            assert check_session_id(text) == text
        else:
            with pytest.raises(InvalidSessionId):
                check_session_id(text)
    assert len(checked_ids) <= _CHECKED_MAX


def test_the_memory_of_checked_ids_is_bounded() -> None:
    for n in range(3 * _CHECKED_MAX):
        check_session_id(f"id-{n}")
    assert 0 < len(checked_ids) <= _CHECKED_MAX


def test_a_str_subclass_is_never_taken_from_memory() -> None:
    check_session_id("known")

    class Sneaky(str):
        __slots__ = ()

        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash("known")

    with pytest.raises(InvalidSessionId):
        check_session_id(Sneaky("../etc/passwd"))
    assert type(check_session_id(Sneaky("fine"))) is str
