from __future__ import annotations

import re

import pytest

import trio_sessions
import trio_sessions.testing
from trio_sessions import InvalidSessionId, check_session_id, new_session_id


@pytest.mark.parametrize("module", [trio_sessions, trio_sessions.testing])
def test_all_lists_exactly_the_public_names(module: object) -> None:
    names = set(module.__all__)  # type: ignore[attr-defined]
    assert len(names) == len(module.__all__)  # type: ignore[attr-defined]
    for name in names:
        assert hasattr(module, name), name
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("trio_sessions")
    }
    assert public <= names, public - names


def test_new_session_ids_are_256_bit_urlsafe_and_valid() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    for sid in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", sid)
        assert check_session_id(sid) == sid


def test_invalid_id_error_does_not_echo_the_value() -> None:
    with pytest.raises(InvalidSessionId) as info:
        check_session_id("secret/../" + "x" * 300)
    assert "secret" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_str_subclass_ids_are_stored_as_plain_str() -> None:
    class Id(str):
        pass

    assert type(check_session_id(Id("abc"))) is str


def test_optional_capabilities_are_protocols() -> None:
    from trio_sessions import (
        BytesStorage,
        ConditionalStorage,
        DirectoryStorage,
        MemoryStorage,
        RedisStorage,
        SupportsPurge,
        SupportsTouch,
    )

    assert isinstance(MemoryStorage(), SupportsPurge)
    assert isinstance(MemoryStorage(), ConditionalStorage)
    assert issubclass(DirectoryStorage, SupportsPurge)
    assert issubclass(RedisStorage, SupportsTouch)
    assert not issubclass(BytesStorage, ConditionalStorage)
    assert not issubclass(MemoryStorage, SupportsTouch)
