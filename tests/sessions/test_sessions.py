"""The session layer on its own: ids, strict mode, timeouts, rotation, logout, cookies."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import trio
import trio.testing

from tests.conftest import WallClock
from tests.spy_storage import WRITES, PlainSpy, Spy
from trio_sessions import (
    CookieOptions,
    JSONSerializer,
    MemoryStorage,
    Session,
    SessionDataError,
    SessionManager,
    SessionNotFound,
    SessionNotLoaded,
    SessionStorage,
    StorageError,
)

IDLE = 600.0
ABSOLUTE = 3600.0


def make(storage: SessionStorage | None = None, **options: Any) -> SessionManager:
    options.setdefault("wall_clock", WallClock())
    options.setdefault("idle_timeout", IDLE)
    options.setdefault("absolute_timeout", ABSOLUTE)
    return SessionManager(storage if storage is not None else Spy(), **options)


def cookie_value(header: str | None) -> str:
    assert header is not None
    match = re.match(r"[^=]+=([^;]*)", header)
    assert match is not None
    return match.group(1)


async def start(manager: SessionManager, **data: Any) -> tuple[Session, str]:
    """A stored session holding *data*, and its cookie value."""
    session = await manager.load(None)
    session.update(data)
    return session, cookie_value(await manager.save(session))


async def test_untouched_new_session_stores_nothing_and_sets_no_cookie() -> None:
    manager = make()
    session = await manager.load(None)
    assert session.new
    assert session.get("user") is None  # reading is not changing
    assert await manager.save(session) is None
    assert isinstance(manager.storage, Spy)
    assert manager.storage.count(WRITES) == 0


async def test_first_write_sets_cookie_with_owasp_defaults() -> None:
    manager = make()
    session = await manager.load(None)
    session["visits"] = 1
    header = await manager.save(session)
    assert header == f"__Host-session={session.id}; Path=/; Secure; HttpOnly; SameSite=Lax"
    assert len(session.id) == 43  # 256 random bits, URL-safe
    again = await manager.load(session.id)
    assert not again.new
    assert dict(again) == {"visits": 1}


async def test_unchanged_session_is_not_rewritten() -> None:
    storage = Spy()
    manager = make(storage)
    _, cookie = await start(manager, visits=1)
    writes = storage.count(WRITES)
    session = await manager.load(cookie)
    assert session["visits"] == 1
    assert await manager.save(session) is None
    assert storage.count(WRITES) == writes
    session = await manager.load(cookie)
    session["visits"] += 1
    assert await manager.save(session) is None  # same id: the browser's cookie stays valid
    assert storage.count(WRITES) == writes + 1


async def test_changes_inside_values_are_saved() -> None:
    manager = make()
    _, cookie = await start(manager, cart=[])
    session = await manager.load(cookie)
    session["cart"].append("book")
    assert not session.modified
    await manager.save(session)
    assert (await manager.load(cookie))["cart"] == ["book"]


@pytest.mark.parametrize(
    "value",
    [
        "A" * 43,  # well-formed, never issued
        "A" * 42,
        "A" * 44,
        "../../etc/passwd",
        "x" * 5000,
        "",
        "Zm9v.YmFy",
    ],
)
async def test_strict_mode_never_adopts_unknown_ids(value: str) -> None:
    manager = make()
    session = await manager.load(value)
    assert session.new
    assert session.id != value
    session["x"] = 1
    assert cookie_value(await manager.save(session)) == session.id


async def test_signed_cookies_reject_tampering_and_rotate_keys() -> None:
    old, new = b"o" * 32, b"n" * 32
    storage = Spy()
    signed_old = make(storage, secret_key=old)
    session, cookie = await start(signed_old, user="alice")
    session_id, _, signature = cookie.partition(".")
    assert session_id == session.id
    assert len(signature) == 43

    rotated = make(storage, secret_key=[new, old])
    assert (await rotated.load(cookie))["user"] == "alice"  # old key still verifies
    tampered = session_id + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
    assert (await rotated.load(tampered)).new
    assert (await rotated.load(session_id)).new  # unsigned: refused
    assert (await rotated.load(session_id + ".\u00e9")).new  # not even ASCII
    assert rotated.cookie_value(session_id) != cookie  # new cookies use the first key

    retired = make(storage, secret_key=new)
    assert (await retired.load(cookie)).new


async def test_regenerate_keeps_data_and_kills_the_old_id() -> None:
    manager = make()
    session, cookie = await start(manager, cart=["book"])
    session = await manager.load(cookie)
    old_id = session.id
    session.regenerate()
    session["user"] = "alice"
    header = await manager.save(session)
    assert cookie_value(header) == session.id != old_id
    assert dict(await manager.load(session.id)) == {"cart": ["book"], "user": "alice"}
    assert (await manager.load(cookie)).new


async def test_invalidate_deletes_on_server_and_in_browser() -> None:
    manager = make()
    _, cookie = await start(manager, user="alice")
    session = await manager.load(cookie)
    session.invalidate()
    header = await manager.save(session)
    assert header is not None
    assert header.startswith("__Host-session=; Max-Age=0;")
    assert (await manager.load(cookie)).new
    with pytest.raises(SessionNotFound):
        await manager.storage.read_bytes(cookie)


async def test_data_stored_after_logout_goes_to_a_new_session() -> None:
    manager = make()
    _, cookie = await start(manager, user="alice")
    session = await manager.load(cookie)
    session.invalidate()
    session["flash"] = "logged out"
    fresh = cookie_value(await manager.save(session))
    assert fresh != cookie
    assert dict(await manager.load(fresh)) == {"flash": "logged out"}
    assert (await manager.load(cookie)).new


@pytest.mark.parametrize("storage_type", [Spy, PlainSpy])
async def test_logout_wins_against_a_slow_concurrent_request(
    storage_type: type[Spy] | type[PlainSpy],
) -> None:
    manager = make(storage_type())
    _, cookie = await start(manager, user="alice")
    slow = await manager.load(cookie)  # a slow request loads the session ...
    logout = await manager.load(cookie)
    logout.invalidate()
    await manager.save(logout)  # ... the user logs out meanwhile ...
    slow["last_page"] = "/reports"
    assert await manager.save(slow) is None  # ... and the slow request saves after.
    assert (await manager.load(cookie)).new
    with pytest.raises(SessionNotFound):
        await manager.storage.read_bytes(cookie)


async def test_logout_wins_when_racing_writes_interleave() -> None:
    """The slow request writes between the logout's tombstone and its delete."""

    class Interleaving(Spy):
        hook: Any = None

        async def invalidate(self, session_id: str) -> None:
            if self.hook is not None:
                hook, self.hook = self.hook, None
                await hook()
            await super().invalidate(session_id)

    storage = Interleaving()
    manager = make(storage)
    _, cookie = await start(manager, user="alice")
    slow = await manager.load(cookie)
    slow["x"] = 1
    storage.hook = lambda: manager.save(slow)
    logout = await manager.load(cookie)
    logout.invalidate()
    await manager.save(logout)
    assert (await manager.load(cookie)).new


async def test_rotation_wins_against_a_slow_request_on_the_old_id() -> None:
    manager = make()
    _, cookie = await start(manager, visits=1)
    slow = await manager.load(cookie)
    login = await manager.load(cookie)
    login.regenerate()
    login["user"] = "alice"
    await manager.save(login)
    slow["visits"] = 2
    await manager.save(slow)
    assert (await manager.load(cookie)).new


async def test_idle_timeout_expires_and_activity_slides_it() -> None:
    clock = WallClock()
    manager = make(wall_clock=clock)
    _, cookie = await start(manager, user="alice")
    for _ in range(6):  # 6 visits 500 s apart: 3000 s in all, each gap < idle
        clock.advance(500)
        session = await manager.load(cookie)
        assert session["user"] == "alice"
        await manager.save(session)
    clock.advance(IDLE + 1)
    assert (await manager.load(cookie)).new


async def test_trios_mock_clock_drives_the_timeouts(autojump_clock: trio.testing.MockClock) -> None:
    """A wall clock that follows trio's: an autojump test sleeps through the timeouts,
    and the storage's own ttl (trio's clock in MemoryStorage) runs out with them."""
    storage = MemoryStorage()
    manager = make(storage, wall_clock=lambda: 1_800_000_000.0 + trio.current_time())
    _, cookie = await start(manager, user="alice")
    await trio.sleep(IDLE - 1)
    session = await manager.load(cookie)
    assert session["user"] == "alice"
    await manager.save(session)
    await trio.sleep(IDLE + 1)
    assert (await manager.load(cookie)).new
    assert storage.statistics().entries == 0


async def test_absolute_timeout_expires_an_active_session() -> None:
    clock = WallClock()
    manager = make(wall_clock=clock, absolute_timeout=2000)
    _, cookie = await start(manager, user="alice")
    for _ in range(3):
        clock.advance(500)
        session = await manager.load(cookie)
        session["seen"] = clock.now
        await manager.save(session)
    clock.advance(600)  # 2100 s after creation, 600 s after the last visit
    assert (await manager.load(cookie)).new


async def test_expiry_is_enforced_by_the_server_not_only_the_storage() -> None:
    clock = WallClock()
    storage = Spy()
    manager = make(storage, wall_clock=clock)
    _, cookie = await start(manager, user="alice")
    clock.advance(IDLE + 1)  # the wall clock moves; the storage's own ttl has not run out
    assert await storage.read_bytes(cookie)
    assert (await manager.load(cookie)).new


async def test_idle_timeout_is_enforced_whatever_the_storage_keeps() -> None:
    """A storage that keeps data longer than asked (PERSIST, a lowered timeout)."""

    class Keeper(Spy):
        async def write_bytes_if(
            self, session_id: str, data: bytes, *, version: int | None, ttl: float | None = None
        ) -> int:
            return await super().write_bytes_if(session_id, data, version=version, ttl=None)

    clock = WallClock()
    storage = Keeper()
    manager = make(storage, wall_clock=clock)
    _, cookie = await start(manager, user="alice")
    clock.advance(IDLE + 1)
    assert await storage.read_bytes(cookie)  # still stored ...
    assert (await manager.load(cookie)).new  # ... but not accepted
    shorter = make(storage, wall_clock=clock, idle_timeout=60)  # a lowered idle timeout
    _, cookie = await start(manager, user="bob")
    clock.advance(61)
    assert (await shorter.load(cookie)).new


async def test_unchanged_session_is_refreshed_after_touch_interval() -> None:
    storage = Spy()
    clock = WallClock()
    manager = make(storage, wall_clock=clock, touch_interval=60)
    _, cookie = await start(manager, user="alice")
    writes = storage.count(WRITES)
    clock.advance(30)
    await manager.save(await manager.load(cookie))
    assert storage.count(WRITES) == writes  # fresh enough
    clock.advance(60)
    await manager.save(await manager.load(cookie))
    assert storage.count(WRITES) == writes + 1


async def test_storage_failure_while_loading_is_raised_not_a_logout() -> None:
    storage = Spy()
    manager = make(storage)
    _, cookie = await start(manager, user="alice")
    storage.fail = {"read"}
    with pytest.raises(StorageError):
        await manager.load(cookie)
    lenient = make(storage, on_storage_error="fresh")
    assert (await lenient.load(cookie)).new
    storage.fail = set()
    assert (await manager.load(cookie))["user"] == "alice"


async def test_unreadable_stored_data_gives_a_fresh_session() -> None:
    storage = Spy()
    manager = make(storage)
    _, cookie = await start(manager, user="alice")
    await storage.write_bytes(cookie, b"garbage")
    assert (await manager.load(cookie)).new


async def test_json_only() -> None:
    manager = make()
    session = await manager.load(None)
    session["when"] = object()
    with pytest.raises(SessionDataError, match=r"key 'when' \(object\)"):
        await manager.save(session)
    assert JSONSerializer().loads(b'{"a":[1]}') == {"a": [1]}
    with pytest.raises(ValueError, match="not a JSON object"):
        JSONSerializer().loads(b"[1]")


async def test_public_methods_checkpoint() -> None:
    manager = make()
    with trio.testing.assert_checkpoints():
        session = await manager.load(None)
    with trio.testing.assert_checkpoints():
        await manager.save(session)
    with trio.testing.assert_checkpoints():
        await manager.load("A" * 43)
    _, cookie = await start(manager, user="alice")
    session = manager.open(cookie)
    with trio.testing.assert_checkpoints():
        await session.load()
    with trio.testing.assert_checkpoints():
        await session.load()  # already loaded


def test_host_prefix_and_contradictions_are_checked() -> None:
    header = CookieOptions(name="__Host-sid").set_cookie("v")
    assert header == "__Host-sid=v; Path=/; Secure; HttpOnly; SameSite=Lax"
    with pytest.raises(ValueError, match="__Host-"):
        CookieOptions(name="__Host-sid", domain="example.com")
    with pytest.raises(ValueError, match="__Host-"):
        CookieOptions(name="__Host-sid", path="/app")
    with pytest.raises(ValueError, match="__Host-"):
        CookieOptions(name="__Host-sid", secure=False)
    with pytest.raises(ValueError, match="samesite='none' requires secure"):
        CookieOptions(samesite="none", secure=False)
    with pytest.raises(ValueError, match="cookie name"):
        CookieOptions(name="a b")
    with pytest.raises(ValueError, match="absolute_timeout"):
        make(cookie=CookieOptions(persistent=True), absolute_timeout=None)
    with pytest.raises(ValueError, match="touch_interval"):
        make(touch_interval=IDLE)
    with pytest.raises(ValueError, match="16 bytes"):
        make(secret_key="short")


async def test_persistent_cookie_carries_the_absolute_lifetime() -> None:
    manager = make(cookie=CookieOptions(persistent=True))
    session = await manager.load(None)
    session["x"] = 1
    assert f"Max-Age={int(ABSOLUTE)};" in (await manager.save(session) or "")


def test_cookie_header_parsing_keeps_every_value_in_order() -> None:
    options = CookieOptions(name="sid")
    assert options.find("a=1; sid=first; sid=second") == "first"
    assert options.find_all("a=1; sid=first; sid=second") == ["first", "second"]
    assert options.find("sidx=1") is None
    assert options.find(None) is None


def test_the_default_cookie_name_is_host_prefixed_when_allowed() -> None:
    assert CookieOptions().name == "__Host-session"
    assert CookieOptions(path="/app").name == "session"
    assert CookieOptions(domain="example.com").name == "session"
    assert CookieOptions(secure=False).name == "session"
    with pytest.raises(TypeError, match="secure must be True or False"):
        CookieOptions(secure="no")  # type: ignore[arg-type]


async def test_the_session_is_a_dict_for_json_and_dict() -> None:
    manager = make()
    _, cookie = await start(manager, user="alice", roles=["admin"])
    session = await manager.load(cookie)
    assert json.loads(json.dumps(session)) == {"user": "alice", "roles": ["admin"]}
    assert dict(session) == {"user": "alice", "roles": ["admin"]}
    assert isinstance(session, dict)
    assert session.accessed


async def test_clear_on_a_loaded_session_ends_it() -> None:
    manager = make()
    _, cookie = await start(manager, user="alice")
    session = await manager.load(cookie)
    session.clear()
    header = await manager.save(session)
    assert header is not None
    assert "Max-Age=0" in header
    assert (await manager.load(cookie)).new
    session = await manager.load(cookie)  # a new session: clear() only empties it
    session["a"] = 1
    session.clear()
    assert await manager.save(session) is None


async def test_a_lazy_session_costs_nothing_until_loaded() -> None:
    storage = Spy()
    manager = make(storage)
    _, cookie = await start(manager, user="alice")
    storage.ops.clear()
    session = manager.open(cookie)
    assert not session.loaded
    with pytest.raises(SessionNotLoaded, match=r"await session\.load"):
        session.get("user")
    with pytest.raises(SessionNotLoaded):
        session["x"] = 1
    assert sum(storage.ops.values()) == 0
    await session.load()
    assert session["user"] == "alice"
    assert sum(storage.ops.values()) == 1


@pytest.mark.parametrize(
    "stored",
    [b"tss2" + b"\x00" * 24 + b"\xff", b"tss2" + b"\x7f\xf8" + b"\x00" * 22 + b"{}", b"x"],
)
async def test_unreadable_data_of_any_kind_gives_a_fresh_session(stored: bytes) -> None:
    manager = make()
    _, cookie = await start(manager, user="alice")
    await manager.storage.write_bytes(cookie, stored)
    assert (await manager.load(cookie)).new


async def test_a_serializer_failing_in_any_way_gives_a_fresh_session() -> None:
    class Broken:
        def dumps(self, data: dict[str, Any]) -> bytes:
            return JSONSerializer().dumps(data)

        def loads(self, data: bytes) -> dict[str, Any]:
            raise RecursionError("maximum recursion depth exceeded")

    storage = Spy()
    _, cookie = await start(make(storage), user="alice")
    assert (await make(storage, serializer=Broken()).load(cookie)).new


async def test_unstorable_data_leaves_the_stored_session_as_it_was() -> None:
    storage = Spy(MemoryStorage(max_size=1000))
    manager = make(storage)
    _, cookie = await start(manager, user="alice")
    session = await manager.load(cookie)
    session["blob"] = "x" * 2000
    with pytest.raises(SessionDataError, match="above the storage's max_size of 1000 bytes"):
        await manager.save(session)
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    session = await manager.load(cookie)
    session["deep"] = deep
    with pytest.raises(SessionDataError, match="key 'deep'"):
        await manager.save(session)
    assert dict(await manager.load(cookie)) == {"user": "alice"}


async def test_remember_me_lifetime() -> None:
    clock = WallClock()
    manager = make(wall_clock=clock, max_lifetime=7 * 86400)
    session = await manager.load(None)
    session["user"] = "alice"
    session.set_lifetime(3 * 86400)
    header = await manager.save(session)
    assert header is not None
    assert f"Max-Age={3 * 86400};" in header
    cookie = cookie_value(header)
    clock.advance(2 * 86400)  # far beyond the idle and absolute timeouts
    session = await manager.load(cookie)
    assert session["user"] == "alice"
    session.regenerate()  # rotation keeps the lifetime
    rotated = await manager.save(session)
    assert rotated is not None
    assert f"Max-Age={86400};" in rotated
    clock.advance(86400)
    assert (await manager.load(cookie_value(rotated))).new  # enforced on the server
    bounded = await manager.load(None)
    bounded["x"] = 1
    bounded.set_lifetime(365 * 86400)
    assert f"Max-Age={7 * 86400};" in (await manager.save(bounded) or "")
    with pytest.raises(ValueError, match="positive"):
        bounded.set_lifetime(0)
