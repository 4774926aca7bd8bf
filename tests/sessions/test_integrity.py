"""Session integrity: a logout always sticks; concurrent requests never lose acknowledged writes.

Each scenario races requests the way a browser and a slow server do, on the session layer
in-process (the same scenarios run through a real HTTP server in test_sessions_http.py).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import WallClock
from tests.dict_storage import CheckThenWriteStorage
from tests.spy_storage import DELETES, READS, WRITES, PlainSpy, Spy, disk_full
from trio_sessions import (
    DirectoryStorage,
    MemoryStorage,
    Session,
    SessionManager,
    SessionNotFound,
    SessionStorage,
    StorageError,
    open_postgres_storage,
    open_redis_storage,
)
from trio_sessions.testing.pytest_plugin import require_module
from trio_sessions.testing.servers import PostgresServer, RedisServer

IDLE = 600.0


def make(storage: SessionStorage | None = None, **options: Any) -> SessionManager:
    options.setdefault("wall_clock", WallClock())
    options.setdefault("idle_timeout", IDLE)
    return SessionManager(storage if storage is not None else Spy(), **options)


def cookie_of(header: str | None) -> str:
    assert header is not None
    match = re.match(r"[^=]+=([^;]*)", header)
    assert match is not None
    return match.group(1)


async def login(manager: SessionManager, **data: Any) -> str:
    session = await manager.load(None)
    session.update(user="alice", **data)
    return cookie_of(await manager.save(session))


async def logout(manager: SessionManager, cookie: str) -> None:
    session = await manager.load(cookie)
    session.invalidate()
    await manager.save(session)


async def user_of(manager: SessionManager, cookie: str | None) -> Any:
    session = await manager.load(cookie)
    return session.get("user")


async def stored_values(storage: SessionStorage, ids: list[str]) -> list[bytes]:
    found = []
    for session_id in ids:
        with contextlib.suppress(SessionNotFound):
            found.append(await storage.read_bytes(session_id))
    return found


# ---------------------------------------------------------------- the five scenarios


async def test_a_backend_blip_while_saving_never_undoes_a_logout() -> None:
    storage = Spy()
    manager = make(storage)
    cookie = await login(manager)
    slow = await manager.load(cookie)  # request A loads the session ...
    await logout(manager, cookie)  # ... request B logs out ...
    slow["page"] = "/reports"
    storage.fail = {"read"}  # ... and the storage's reads fail while A saves.
    try:
        header = await manager.save(slow)
    except StorageError:
        header = None  # the app answered 503
    assert header is None
    storage.fail = set()
    assert await user_of(manager, cookie) is None
    assert await stored_values(storage, [cookie]) == []


async def test_a_rotation_after_logout_carries_nothing_to_a_new_id() -> None:
    storage = Spy()
    manager = make(storage)
    cookie = await login(manager)
    slow = await manager.load(cookie)  # a slow step-up request ...
    await logout(manager, cookie)  # ... the user logs out ...
    slow.regenerate()  # ... and the slow request rotates the id and saves.
    slow["role"] = "admin"
    assert await manager.save(slow) is None  # no cookie for a new session
    assert not slow.stored
    assert await stored_values(storage, [cookie, slow.id]) == []
    assert await user_of(manager, cookie) is None


async def test_a_slow_request_does_not_overwrite_acknowledged_writes() -> None:
    manager = make()
    cookie = await login(manager, count=0)
    upload = await manager.load(cookie)  # a slow upload loads the session
    for expected in range(1, 6):  # five /incr requests, answered 1..5
        incr = await manager.load(cookie)
        incr["count"] += 1
        await manager.save(incr)
        assert incr["count"] == expected
    upload["upload"] = "report.pdf"  # the upload sets only its own key
    await manager.save(upload)
    final = await manager.load(cookie)
    assert (final["count"], final["upload"], final["user"]) == (5, "report.pdf", "alice")


async def test_logout_on_a_full_disk_still_ends_the_session() -> None:
    storage = Spy()
    manager = make(storage)
    cookie = await login(manager)
    storage.error = disk_full
    storage.fail = {"write"}  # every write fails: ENOSPC
    await logout(manager, cookie)  # deleting needs no space
    assert await user_of(manager, cookie) is None
    assert await stored_values(storage, [cookie]) == []


async def test_a_failed_logout_leaves_the_old_cookie_unusable() -> None:
    storage = Spy()
    manager = make(storage)
    cookie = await login(manager)
    storage.fail = {"delete"}
    with pytest.raises(StorageError):
        await logout(manager, cookie)  # the app answers 503
    # The storage is reachable again for reads, but deleting still fails: the old
    # cookie gets no data, only another 503.
    with pytest.raises(StorageError):
        await manager.load(cookie)
    storage.fail = set()
    assert await user_of(manager, cookie) is None  # the delete is retried first
    assert await stored_values(storage, [cookie]) == []


async def test_a_logout_whose_reply_is_lost_still_ends_the_session() -> None:
    storage = Spy()
    manager = make(storage)
    cookie = await login(manager)
    storage.fail_after = {"delete"}
    with pytest.raises(StorageError):
        await logout(manager, cookie)
    storage.fail_after = set()
    assert await user_of(manager, cookie) is None


def _read(session: Session) -> None:
    session.get("user")


def _modify(session: Session) -> None:
    session["page"] = "/x"


def _delete_key(session: Session) -> None:
    del session["user"]


def _regenerate(session: Session) -> None:
    session.regenerate()
    session["role"] = "admin"


def _clear_and_write(session: Session) -> None:
    session.clear()
    session["flash"] = "bye"


def _force_write(session: Session) -> None:
    session.modified = True


REQUEST_KINDS: dict[str, Callable[[Session], None]] = {
    "read": _read,
    "modify": _modify,
    "delete-key": _delete_key,
    "regenerate": _regenerate,
    "clear-and-write": _clear_and_write,
    "force-write": _force_write,
}


async def _logout_before_operation(kind: str, step: int) -> None:
    """Log out just before the other request's storage operation number *step*."""
    storage = Spy()
    manager = make(storage, touch_interval=0)
    cookie = await login(manager)
    other = await manager.load(cookie)
    REQUEST_KINDS[kind](other)
    ops = 0
    logged_out = False

    async def before_operation() -> None:
        nonlocal ops, logged_out
        if ops == step and not logged_out:
            logged_out = True
            storage.hooks.clear()
            await logout(manager, cookie)
        ops += 1
        install()

    def install() -> None:
        for name in (*READS, *WRITES, *DELETES):
            storage.hooks[name] = before_operation

    install()
    header = await manager.save(other)
    storage.hooks.clear()
    if not logged_out:  # the request finished first: log out now
        await logout(manager, cookie)
    assert await user_of(manager, cookie) is None
    if header is not None and "Max-Age=0" not in header:
        survivor = await make(storage).load(cookie_of(header))
        assert "user" not in survivor, "the logged-out data survived under a new id"


@pytest.mark.parametrize("kind", sorted(REQUEST_KINDS))
async def test_logout_racing_every_kind_of_request_at_every_step(kind: str) -> None:
    for step in range(8):
        await _logout_before_operation(kind, step)


async def test_two_requests_changing_different_keys_both_persist() -> None:
    manager = make()
    cookie = await login(manager)
    a = await manager.load(cookie)
    b = await manager.load(cookie)
    a["theme"] = "dark"
    b["lang"] = "fr"
    del b["user"]
    await manager.save(a)
    await manager.save(b)
    final = await manager.load(cookie)
    assert dict(final) == {"theme": "dark", "lang": "fr"}


async def test_the_same_key_last_writer_wins() -> None:
    manager = make()
    cookie = await login(manager)
    a = await manager.load(cookie)
    b = await manager.load(cookie)
    a["cart"] = ["apple"]
    b["cart"] = ["pear"]
    await manager.save(a)
    await manager.save(b)
    assert (await manager.load(cookie))["cart"] == ["pear"]


async def test_setting_what_was_loaded_overwrites_no_concurrent_change() -> None:
    # b sets "cart" to a value that serializes as the one it loaded (a tuple for a list):
    # it stores nothing new, so a's concurrent change of that key stays.
    manager = make()
    cookie = await login(manager, cart=["apple"])
    a = await manager.load(cookie)
    b = await manager.load(cookie)
    a["cart"] = ["pear"]
    b["cart"] = ("apple",)
    await manager.save(a)
    await manager.save(b)
    assert dict(await manager.load(cookie)) == {"user": "alice", "cart": ["pear"]}


async def test_a_rotation_keeps_changes_saved_meanwhile() -> None:
    manager = make()
    cookie = await login(manager)
    step_up = await manager.load(cookie)
    other = await manager.load(cookie)
    other["cart"] = ["apple"]
    await manager.save(other)
    step_up.regenerate()
    step_up["mfa"] = True
    new_cookie = cookie_of(await manager.save(step_up))
    final = await manager.load(new_cookie)
    assert dict(final) == {"user": "alice", "cart": ["apple"], "mfa": True}
    assert await user_of(manager, cookie) is None


async def test_storage_operations_per_request() -> None:
    storage = Spy()
    manager = make(storage)
    cookie = await login(manager)
    storage.ops.clear()
    session = await manager.load(cookie)  # a request that changes the session
    session["page"] = "/a"
    await manager.save(session)
    assert (storage.count(READS), storage.count(WRITES), storage.count(DELETES)) == (1, 1, 0)
    storage.ops.clear()
    session = await manager.load(cookie)  # one that only reads it
    assert session["user"] == "alice"
    await manager.save(session)
    assert sum(storage.ops.values()) == 1
    storage.ops.clear()
    session = manager.open(cookie)  # one that never touches it
    await manager.save(session)
    assert sum(storage.ops.values()) == 0


# ------------------------------------------------------ random interleavings, with faults

Step = tuple[str, Any]


@st.composite
def requests(draw: st.DrawFn) -> list[list[Step]]:
    count = draw(st.integers(2, 4))
    result = []
    for n in range(count):
        action = draw(st.sampled_from(["set", "set", "set", "delete", "regenerate", "logout"]))
        steps: list[Step] = [("load", None)]
        if action == "logout":
            steps.append(("logout", None))
        else:
            steps.append(("set", n))
            if action == "delete":
                steps.append(("delete", n))
            elif action == "regenerate":
                steps.append(("regenerate", None))
        steps.append(("save", None))
        result.append(steps)
    return result


async def _interleaving(
    storage: SessionStorage,
    plan: list[list[Step]],
    pauses: list[int],
    faults: list[str | None],
) -> dict[str, int]:
    spy = Spy(storage)
    manager = make(spy)
    cookie = await login(manager, shared=-1)
    known_ids = [cookie]
    acked_sets: dict[str, int] = {}  # key -> value, for acknowledged saves
    acked_deleted: set[str] = set()
    shared_acks: list[tuple[int, int, int]] = []  # (request, save started, save acknowledged)
    ticks = iter(range(1_000_000))
    logouts_acked = 0
    survivors: list[str] = []  # new ids whose rotation was acknowledged
    pause_iter = iter(pauses)
    fault_iter = iter(faults)

    async def pause() -> None:
        for _ in range(next(pause_iter, 0)):
            await trio.lowlevel.checkpoint()

    def arm() -> None:
        fault = next(fault_iter, None)
        spy.fail = {fault} if fault and fault.startswith("before-") else set()
        spy.fail_after = {fault} if fault and fault.startswith("after-") else set()
        spy.fail = {f.removeprefix("before-") for f in spy.fail}
        spy.fail_after = {f.removeprefix("after-") for f in spy.fail_after}

    async def request(n: int, steps: list[Step]) -> None:
        nonlocal logouts_acked
        session: Session | None = None
        logout_requested = False
        try:
            for step, arg in steps:
                await pause()
                arm()
                if step == "load":
                    session = await manager.load(cookie)
                    if session.new:
                        return  # logged out before this request: nothing to do
                assert session is not None
                if step == "set":
                    session[f"k{arg}"] = arg
                    session["shared"] = arg
                elif step == "delete":
                    del session[f"k{arg}"]
                elif step == "regenerate":
                    session.regenerate()
                    known_ids.append(session.id)
                elif step == "logout":
                    session.invalidate()
                    logout_requested = True
                elif step == "save":
                    started = next(ticks)
                    header = await manager.save(session)
                    if logout_requested:
                        logouts_acked += 1
                    elif session.stored:
                        key = f"k{n}"
                        if any(s == "delete" for s, _ in steps):
                            acked_deleted.add(key)
                        else:
                            acked_sets[key] = n
                        shared_acks.append((n, started, next(ticks)))
                        if header is not None:
                            survivors.append(cookie_of(header))
        except StorageError:
            return  # answered 503: not acknowledged

    async with trio.open_nursery() as nursery:
        for n, steps in enumerate(plan):
            nursery.start_soon(request, n, steps)
    spy.fail = spy.fail_after = set()

    # What another server process sharing the storage would load under each id.
    observer = make(storage)
    live = {}
    for sid in known_ids:
        seen = await observer.load(sid)
        if not seen.new:
            live[sid] = dict(seen)
    # A copy under an id that no response carried (a rotation whose reply was lost) is
    # unreachable, and only an injected fault leaves one behind.
    orphans = set(live) - {cookie} - set(survivors)
    assert not orphans or any(faults), "a rotation left a copy behind without a fault"
    for orphan in orphans:
        del live[orphan]
    if logouts_acked:
        # A logout with the old id ends the session, also when a rotation racing it
        # moved it to a new id: nothing is readable any more.
        assert not live, "an acknowledged logout was undone"
        return {"logouts": logouts_acked}
    if not live:
        return {"lost": 0}
    assert len(live) == 1, "two ids hold the session"
    (final,) = live.values()
    for key, value in acked_sets.items():
        assert final.get(key) == value, f"an acknowledged write of {key} was lost"
    for key in acked_deleted:
        assert key not in final, f"an acknowledged delete of {key} was lost"
    if shared_acks and not any(faults):
        # The last writer wins: the value must come from a save that no other
        # acknowledged save began after (saves that overlapped may land in either order,
        # as a thread or a server may answer them in another order than they commit).
        latest = [n for n, _, done in shared_acks if all(s <= done for _, s, _ in shared_acks)]
        assert final["shared"] in latest, "a write that a later acknowledged write replaced won"
    return {"acked": len(acked_sets) + len(acked_deleted)}


FAULTS = st.sampled_from(
    [None] * 6 + ["before-read", "before-write", "before-delete", "after-write", "after-delete"]
)


@settings(
    max_examples=int(os.environ.get("INTEGRITY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(
    plan=requests(),
    pauses=st.lists(st.integers(0, 4), max_size=40),
    faults=st.lists(FAULTS, max_size=20),
)
async def test_random_interleavings_on_memory(
    plan: list[list[Step]], pauses: list[int], faults: list[str | None]
) -> None:
    with trio.fail_after(30):
        async with MemoryStorage() as storage:
            record(await _interleaving(storage, plan, pauses, faults), faults)


BACKEND_EXAMPLES = int(os.environ.get("INTEGRITY_BACKEND_EXAMPLES", "40"))


@pytest.fixture(scope="module")
def integrity_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("integrity")


@settings(max_examples=BACKEND_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    plan=requests(),
    pauses=st.lists(st.integers(0, 4), max_size=40),
    faults=st.lists(FAULTS, max_size=20),
)
async def test_random_interleavings_on_directory(
    integrity_root: Path, plan: list[list[Step]], pauses: list[int], faults: list[str | None]
) -> None:
    with trio.fail_after(60):
        async with DirectoryStorage(integrity_root / secrets.token_hex(4)) as storage:
            record(await _interleaving(storage, plan, pauses, faults), faults)


@pytest.fixture(scope="module")
def integrity_redis(private_redis: RedisServer) -> str:
    require_module("glide")
    return private_redis.url


@settings(max_examples=BACKEND_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    plan=requests(),
    pauses=st.lists(st.integers(0, 4), max_size=40),
    faults=st.lists(FAULTS, max_size=20),
)
async def test_random_interleavings_on_redis(
    integrity_redis: str, plan: list[list[Step]], pauses: list[int], faults: list[str | None]
) -> None:
    with trio.fail_after(60):
        async with open_redis_storage(integrity_redis, driver="glide") as storage:
            record(await _interleaving(storage, plan, pauses, faults), faults)


@pytest.fixture(scope="module")
def integrity_postgres(private_postgres: PostgresServer) -> str:
    require_module("psycopg")
    return private_postgres.dsn


@settings(max_examples=BACKEND_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    plan=requests(),
    pauses=st.lists(st.integers(0, 4), max_size=40),
    faults=st.lists(FAULTS, max_size=20),
)
async def test_random_interleavings_on_postgres(
    integrity_postgres: str, plan: list[list[Step]], pauses: list[int], faults: list[str | None]
) -> None:
    with trio.fail_after(60):
        async with open_postgres_storage(integrity_postgres, max_connections=4) as storage:
            record(await _interleaving(storage, plan, pauses, faults), faults)


def record(counts: dict[str, int], faults: list[str | None]) -> None:
    """Label the example for ``--hypothesis-show-statistics``."""
    for name, value in counts.items():
        event(f"{name}: {value}")
    event("faults injected" if any(faults) else "no faults")


def _random_plan(rng: random.Random) -> list[list[Step]]:
    plan: list[list[Step]] = []
    for n in range(rng.randint(2, 4)):
        action = rng.choice(["set", "set", "set", "delete", "regenerate", "logout"])
        steps: list[Step] = [("load", None)]
        if action == "logout":
            steps.append(("logout", None))
        else:
            steps.append(("set", n))
            if action != "set":
                steps.append(("delete", n) if action == "delete" else ("regenerate", None))
        steps.append(("save", None))
        plan.append(steps)
    return plan


@pytest.mark.parametrize("broken", ["non-atomic compare-and-set", "no conditional writes"])
async def test_the_interleaving_model_catches_weaker_storages(broken: str) -> None:
    caught = 0
    for seed in range(100):
        rng = random.Random(seed)
        storage: SessionStorage = (
            CheckThenWriteStorage(clock=trio.current_time)
            if broken == "non-atomic compare-and-set"
            else PlainSpy()
        )
        pauses = [rng.randint(0, 4) for _ in range(40)]
        try:
            await _interleaving(storage, _random_plan(rng), pauses, [])
        except AssertionError:
            caught += 1
    assert caught > 0
