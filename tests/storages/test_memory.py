"""MemoryStorage beyond the contract: expiry bookkeeping, bounds and LRU, statistics,
versions, checkpoints."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import secrets
import sys
import tracemalloc
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.schedule_points import counting
from trio_sessions import MemoryStorage, SessionNotFound, SessionTooLarge, WriteConflict
from trio_sessions.storages._memory import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES
from trio_sessions.testing import ManualClock, read_all


async def read_or_none(storage: MemoryStorage, session_id: str) -> bytes | None:
    try:
        return await storage.read_bytes(session_id)
    except SessionNotFound:
        return None


# ------------------------------------------------------------------------ expiry


async def test_expiry_follows_trio_time(autojump_clock: trio.testing.MockClock) -> None:
    storage = MemoryStorage()
    await storage.write_bytes("a", b"1", ttl=10)
    await trio.sleep(9.9)
    assert await storage.read_bytes("a") == b"1"
    await trio.sleep(0.2)
    with pytest.raises(SessionNotFound):
        await storage.read_bytes("a")
    assert storage.statistics().expirations == 1


async def test_writes_remove_expired_sessions_without_reading_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = MemoryStorage()
    for n in range(100):
        await storage.write_bytes(f"old{n}", b"x" * 10, ttl=5)
    await trio.sleep(6)
    await storage.write_bytes("new", b"y", ttl=5)
    stats = storage.statistics()
    assert (stats.entries, stats.bytes, stats.expirations) == (1, 1, 100)


@pytest.mark.parametrize("step", [0, 0.37, 1.5])
async def test_sliding_expiry_rewrites_hold_no_memory(
    autojump_clock: trio.testing.MockClock, step: float
) -> None:
    """Every request rewrites its session with a fresh ttl: memory stays flat."""
    storage = MemoryStorage()
    ids = [f"user{n}" for n in range(100)]

    async def rewrite_all(rounds: int) -> None:
        for _ in range(rounds):
            for sid in ids:
                await storage.write_bytes(sid, b"x", ttl=3600)
            await trio.sleep(step)

    await rewrite_all(20)  # allocate what a steady state needs
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await rewrite_all(100)  # 10,000 rewrites
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 32 * 1024
    assert [await storage.read_bytes(sid) for sid in ids] == [b"x"] * 100


async def test_rewrite_without_ttl_survives_the_old_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = MemoryStorage()
    await storage.write_bytes("sid", b"1", ttl=5)
    await storage.write_bytes("sid", b"2")
    await trio.sleep(10)
    await storage.write_bytes("other", b"z", ttl=1)  # runs the expiry sweep
    assert await storage.read_bytes("sid") == b"2"


async def test_renewed_session_outlives_its_first_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = MemoryStorage()
    await storage.write_bytes("sid", b"1", ttl=5)
    await trio.sleep(4)
    await storage.write_bytes("sid", b"2", ttl=5)  # filed under a later second
    await trio.sleep(3)
    await storage.write_bytes("other", b"z", ttl=100)  # sweeps the first second
    assert await storage.read_bytes("sid") == b"2"
    await trio.sleep(3)
    await storage.write_bytes("other", b"z", ttl=100)
    assert await read_or_none(storage, "sid") is None
    assert storage.statistics().entries == 1


async def test_purge_removes_expired_sessions(autojump_clock: trio.testing.MockClock) -> None:
    storage = MemoryStorage()
    await storage.write_bytes("a", b"1", ttl=1)
    await storage.write_bytes("b", b"2", ttl=100)
    await trio.sleep(2)
    assert (await storage.purge()).expired == 1
    assert len(storage) == 1


async def test_purge_removes_what_expired_within_the_current_second() -> None:
    clock = ManualClock()
    storage = MemoryStorage(clock=clock)
    clock.advance(10.1)
    await storage.write_bytes("a", b"1", ttl=0.2)  # expires at 10.3
    await storage.write_bytes("b", b"2", ttl=0.7)  # expires at 10.8: same second
    clock.advance(0.4)
    assert (await storage.purge()).expired == 1
    assert await storage.read_bytes("b") == b"2"
    clock.advance(0.4)
    assert (await storage.purge()).expired == 1
    assert len(storage) == 0


# ------------------------------------------------------------------ bounds and LRU


async def test_lru_evicts_the_least_recently_used() -> None:
    storage = MemoryStorage(max_entries=3)
    for sid in "abc":
        await storage.write_bytes(sid, sid.encode())
    await storage.read_bytes("a")  # a is now the most recent
    await storage.write_bytes("d", b"d")
    with pytest.raises(SessionNotFound):
        await storage.read_bytes("b")
    for sid in "acd":
        assert await storage.read_bytes(sid) == sid.encode()
    assert storage.statistics().evictions == 1
    assert len(storage) == 3


async def test_every_kind_of_use_counts_as_recent() -> None:
    storage = MemoryStorage(max_entries=4)

    async def consume(stream: trio.abc.ReceiveStream) -> bytes:
        return bytes(await stream.receive_some())

    async def provide(stream: trio.abc.SendStream) -> None:
        await stream.send_all(b"c2")

    for sid in "abcd":
        await storage.write_bytes(sid, sid.encode())
    await storage.read("a", consume)
    await storage.read_versioned("b")
    await storage.write("c", provide)
    version = (await storage.read_versioned("d")).version
    await storage.write_bytes_if("d", b"d2", version=version)
    # Now the least recently used is a, then b, c, d; two new sessions evict a and b.
    await storage.write_bytes("e", b"e")
    await storage.write_bytes("f", b"f")
    assert [await read_or_none(storage, sid) for sid in "abcdef"] == [
        None,
        None,
        b"c2",
        b"d2",
        b"e",
        b"f",
    ]


async def test_byte_bound_evicts_the_least_recently_used() -> None:
    storage = MemoryStorage(max_size=100, max_bytes=250, max_entries=None)
    await storage.write_bytes("a", b"a" * 100)
    await storage.write_bytes("b", b"b" * 100)
    await storage.read_bytes("a")
    await storage.write_bytes("c", b"c" * 100)  # 300 bytes: b goes
    assert await read_or_none(storage, "b") is None
    assert await storage.read_bytes("a") == b"a" * 100
    stats = storage.statistics()
    assert (stats.entries, stats.bytes, stats.evictions) == (2, 200, 1)


async def test_a_session_as_large_as_the_bound_is_kept() -> None:
    storage = MemoryStorage(max_size=100, max_bytes=100)
    await storage.write_bytes("a", b"a" * 60)
    await storage.write_bytes("b", b"b" * 100)
    assert await storage.read_bytes("b") == b"b" * 100
    assert await read_or_none(storage, "a") is None


async def test_eviction_comes_in_batches_down_to_a_64th_under_the_bound() -> None:
    storage = MemoryStorage(max_entries=6400)
    for n in range(6400):
        await storage.write_bytes(f"s{n}", b"x")
    assert storage.statistics().evictions == 0
    await storage.write_bytes("one-more", b"x")
    stats = storage.statistics()
    assert (stats.entries, stats.evictions) == (6300, 101)
    assert await storage.read_bytes("one-more") == b"x"
    assert await read_or_none(storage, "s100") is None
    assert await storage.read_bytes("s101") == b"x"


async def test_unbounded_when_asked() -> None:
    storage = MemoryStorage(max_entries=None, max_bytes=None, max_size=10_000)
    for n in range(DEFAULT_MAX_ENTRIES // 50):
        await storage.write_bytes(f"s{n}", b"x" * 10_000)  # 20 MB in 2,000 sessions
    await storage.write_bytes("one-more", b"x")
    assert storage.statistics().evictions == 0


@settings(max_examples=80, deadline=None)
@given(
    max_entries=st.sampled_from([1, 3, 130]),
    max_bytes=st.sampled_from([100, 300, 10_000]),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["write", "write_if", "read", "read_versioned", "invalidate"]),
            st.integers(0, 150),
            st.integers(0, 100),
        ),
        max_size=300,
    ),
)
async def test_bounds_follow_a_least_recently_used_model(
    max_entries: int, max_bytes: int, ops: list[tuple[str, int, int]]
) -> None:
    """Against an OrderedDict: same sessions kept, same statistics, after every step."""
    storage = MemoryStorage(max_entries=max_entries, max_bytes=max_bytes, max_size=100)
    model: OrderedDict[str, bytes] = OrderedDict()
    keep_entries, keep_bytes = max_entries - max_entries // 64, max_bytes - max_bytes // 64
    evictions = 0
    for op, n, size in ops:
        sid = f"s{n}"
        if op in ("write", "write_if"):
            value = bytes([n % 256]) * size
            if op == "write":
                await storage.write_bytes(sid, value)
            else:
                version = None
                with contextlib.suppress(SessionNotFound):
                    version = (await storage.read_versioned(sid)).version
                await storage.write_bytes_if(sid, value, version=version)
            model.pop(sid, None)
            model[sid] = value
            if len(model) > max_entries or sum(map(len, model.values())) > max_bytes:
                while len(model) > 1 and (
                    len(model) > keep_entries or sum(map(len, model.values())) > keep_bytes
                ):
                    model.popitem(last=False)
                    evictions += 1
        elif op == "invalidate":
            await storage.invalidate(sid)
            model.pop(sid, None)
        else:
            try:
                if op == "read":
                    found: bytes | None = await storage.read_bytes(sid)
                else:
                    found = (await storage.read_versioned(sid)).data
            except SessionNotFound:
                found = None
            assert found == model.get(sid)
            if sid in model:
                model.move_to_end(sid)
        stats = storage.statistics()
        assert (stats.entries, stats.bytes, stats.evictions) == (
            len(model),
            sum(map(len, model.values())),
            evictions,
        )
    assert [await read_or_none(storage, sid) for sid in model] == list(model.values())


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(sys.platform != "linux", reason="needs Linux's /proc")
async def test_a_flood_of_new_sessions_stays_bounded_and_spares_active_users() -> None:
    """100,000 requests that each store 2 KiB in a new anonymous session (200 MB if
    nothing were evicted) while 100 signed-in users keep using their sessions."""
    storage = MemoryStorage()
    users = {secrets.token_urlsafe(32): secrets.token_bytes(200) for _ in range(100)}
    for sid, value in users.items():
        await storage.write_bytes(sid, value, ttl=1800)
    gc.collect()
    before = _rss()
    largest = 0
    for n in range(100_000):
        payload = n.to_bytes(8, "little") * 256
        await storage.write_bytes(secrets.token_urlsafe(32), payload, ttl=1800)
        if n % 1000 == 999:  # the users' own requests, now and then
            for sid, value in users.items():
                assert await storage.read_bytes(sid) == value
            stats = storage.statistics()
            assert stats.entries <= DEFAULT_MAX_ENTRIES
            assert stats.bytes <= DEFAULT_MAX_BYTES
            largest = max(largest, stats.bytes)
    grown = _rss() - before
    stats = storage.statistics()
    assert stats.evictions > 60_000
    assert largest > DEFAULT_MAX_BYTES * 0.95
    # The payloads' bound, plus the ids, entries and the allocator's overhead.
    assert grown < DEFAULT_MAX_BYTES * 1.5, f"resident memory grew by {grown / 2**20:.0f} MiB"
    for sid, value in users.items():
        assert await storage.read_bytes(sid) == value


async def test_flood_of_tiny_sessions_stops_at_max_entries() -> None:
    storage = MemoryStorage(max_entries=1000)
    await storage.write_bytes("user", b"u")
    for n in range(5000):
        await storage.write_bytes(f"anonymous-{n}", b"")
        if n % 100 == 0:
            await storage.read_bytes("user")
    stats = storage.statistics()
    assert stats.entries <= 1000
    assert stats.evictions == 5001 - stats.entries
    assert await storage.read_bytes("user") == b"u"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_entries": 0}, ValueError, "max_entries must be a positive int"),
        ({"max_entries": -1}, ValueError, "max_entries must be a positive int"),
        ({"max_entries": 2.5}, TypeError, r"max_entries must be a positive int or None, not f"),
        ({"max_entries": 2.0}, TypeError, "max_entries .* not float"),
        ({"max_entries": True}, TypeError, r"max_entries .* not bool \(True\)"),
        ({"max_entries": "10"}, TypeError, "max_entries .* not str"),
        ({"max_bytes": 0}, ValueError, "max_bytes must be a positive int"),
        ({"max_bytes": 1e9}, TypeError, r"max_bytes must be a positive int \(bytes\) or None"),
        ({"max_bytes": False}, TypeError, "max_bytes .* not bool"),
        ({"max_bytes": 1000}, ValueError, r"max_bytes \(1000\) must be at least max_size"),
        ({"max_size": 0}, ValueError, "max_size must be a positive int"),
        ({"max_size": True}, TypeError, "max_size must be a positive int"),
        ({"max_size": 2.5}, TypeError, "max_size must be a positive int"),
        ({"clock": 5}, TypeError, "clock must be a callable"),
    ],
)
def test_constructor_arguments_are_checked(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        MemoryStorage(**kwargs)  # type: ignore[arg-type]


def test_type_errors_are_value_errors_too() -> None:
    """Callers that caught the ValueError these checks raised before still catch them."""
    with pytest.raises(ValueError, match="max_entries"):
        MemoryStorage(max_entries=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_size"):
        MemoryStorage(max_size=True)


# ----------------------------------------------------------------- versions


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["write", "write_if", "stream", "invalidate", "invalidate_if", "read", "tick"]
            ),
            st.integers(0, 3),
            st.sampled_from([None, 0.5, 3.0]),
        ),
        max_size=60,
    )
)
async def test_versions_of_an_id_are_never_reused(
    ops: list[tuple[str, int, float | None]],
) -> None:
    """Through rewrites, deletes, expiry and eviction, an id never gets a version back:
    a conditional write holding an old version always conflicts."""
    clock = ManualClock()
    storage = MemoryStorage(clock=clock, max_entries=3)
    seen: dict[str, list[int]] = {}

    async def provider(stream: trio.abc.SendStream) -> None:
        await stream.send_all(b"streamed")

    for op, n, ttl in ops:
        sid = f"id{n}"
        if op == "tick":
            clock.advance(1)
            continue
        current = None
        with contextlib.suppress(SessionNotFound):
            current = (await storage.read_versioned(sid)).version
        for old in seen.get(sid, []):
            if old != current:
                with pytest.raises(WriteConflict):
                    await storage.write_bytes_if(sid, b"stale", version=old)
        if op == "write":
            await storage.write_bytes(sid, b"w", ttl=ttl)
        elif op == "write_if":
            await storage.write_bytes_if(sid, b"c", version=current, ttl=ttl)
        elif op == "stream":
            await storage.write(sid, provider, ttl=ttl)
        elif op == "invalidate":
            await storage.invalidate(sid)
        elif op == "invalidate_if" and current is not None:
            await storage.invalidate_if(sid, version=current)
        try:
            version = (await storage.read_versioned(sid)).version
        except SessionNotFound:
            continue
        history = seen.setdefault(sid, [])
        if op in ("write", "write_if", "stream"):
            assert version not in history
        if not history or history[-1] != version:
            history.append(version)
        assert history == sorted(history)


async def test_sessions_written_together_may_share_a_version_object() -> None:
    """Versions are per id: new sessions do not each cost an int of their own."""
    storage = MemoryStorage()
    a = await storage.write_bytes_if("a", b"a", version=None)
    b = await storage.write_bytes_if("b", b"b", version=None)
    assert a == b
    a2 = await storage.write_bytes_if("a", b"a2", version=a)
    assert a2 != a
    with pytest.raises(WriteConflict):
        await storage.write_bytes_if("a", b"stale", version=a)
    await storage.write_bytes_if("b", b"b2", version=b)  # b's own version still holds


# --------------------------------------------------- checks and checkpoints


def _calls(storage: MemoryStorage, sid: str) -> dict[str, Callable[[], Awaitable[object]]]:
    async def provider(stream: trio.abc.SendStream) -> None:
        await stream.send_all(b"new")

    async def consumer(stream: trio.abc.ReceiveStream) -> bytes:
        return bytes(await stream.receive_some())

    return {
        "write_bytes": lambda: storage.write_bytes(sid, b"new", ttl=5),
        "write": lambda: storage.write(sid, provider),
        "write_bytes_if": lambda: storage.write_bytes_if(sid, b"new", version=1),
        "read_bytes": lambda: storage.read_bytes(sid),
        "read": lambda: storage.read(sid, consumer),
        "read_versioned": lambda: storage.read_versioned(sid),
        "invalidate": lambda: storage.invalidate(sid),
        "invalidate_if": lambda: storage.invalidate_if(sid, version=1),
    }


@pytest.mark.parametrize("method", list(_calls(MemoryStorage(), "x")))
async def test_a_cancelled_call_changes_nothing(method: str) -> None:
    storage = MemoryStorage()
    await storage.write_bytes_if("sid", b"old", version=None)
    assert (await storage.read_versioned("sid")).version == 1
    with trio.CancelScope() as scope:
        scope.cancel()
        await _calls(storage, "sid")[method]()
    assert scope.cancelled_caught
    found = await storage.read_versioned("sid")
    assert (found.data, found.version) == (b"old", 1)


@pytest.mark.parametrize("method", list(_calls(MemoryStorage(), "x")))
@pytest.mark.parametrize("present", [True, False])
async def test_every_method_checkpoints(method: str, present: bool) -> None:
    storage = MemoryStorage()
    if present:
        await storage.write_bytes_if("sid", b"old", version=None)
    with trio.testing.assert_checkpoints(), contextlib.suppress(SessionNotFound, WriteConflict):
        await _calls(storage, "sid")[method]()


async def test_ids_are_checked_before_anything_also_once_known() -> None:
    storage = MemoryStorage()
    await storage.write_bytes("known", b"1")

    class Sneaky(str):
        __slots__ = ()

        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash("known")

    for bad in (Sneaky("../x"), "known/", "known\n", b"known"):
        for call in _calls(storage, bad).values():  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="session id"):
                await call()
    assert await storage.read_bytes("known") == b"1"
    assert len(storage) == 1


async def test_a_str_subclass_id_is_stored_as_a_plain_str() -> None:
    class Id(str):
        __slots__ = ()

    storage = MemoryStorage()
    await storage.write_bytes(Id("abc"), b"1")
    assert [type(key) for key in storage._entries] == [str]
    assert await storage.read_bytes("abc") == b"1"


async def test_a_write_finishing_after_close_stores_nothing() -> None:
    storage = MemoryStorage()
    closed = trio.Event()

    async def slow(stream: trio.abc.SendStream) -> None:
        await stream.send_all(b"late")
        await closed.wait()

    async def close() -> None:
        await trio.testing.wait_all_tasks_blocked()
        await storage.aclose()
        closed.set()

    with pytest.RaisesGroup(trio.ClosedResourceError):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(close)
            await storage.write("sid", slow)
    assert len(storage) == 0


# --------------------------------------------------- streams in the caller's task

PAYLOAD = bytes(range(256)) * 4


async def _send_once(stream: trio.abc.SendStream) -> None:
    await stream.send_all(PAYLOAD)


async def _send_nothing(stream: trio.abc.SendStream) -> None:
    pass


async def _read_nothing(stream: trio.abc.ReceiveStream) -> bytes:  # noqa: ASYNC124 (a consumer)
    return b""


async def test_a_streaming_call_costs_the_scheduler_what_its_bytes_twin_costs() -> None:
    """The provider and the consumer run in the caller's task, on streams over bytes:
    no task, and one schedule point per operation, as write_bytes and read_bytes."""
    storage = MemoryStorage()
    await storage.write_bytes("sid", PAYLOAD)
    await storage.write_bytes("empty", b"")
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "write_bytes": lambda: storage.write_bytes("sid", PAYLOAD),
        "write, one send_all": lambda: storage.write("sid", _send_once),
        "write, no send_all": lambda: storage.write("other", _send_nothing),
        "read_bytes": lambda: storage.read_bytes("sid"),
        "read to the end": lambda: storage.read("sid", read_all),
        "read to the end of an empty value": lambda: storage.read("empty", read_all),
        "read, no receive_some": lambda: storage.read("sid", _read_nothing),
    }
    for name, call in calls.items():
        with counting() as counts:
            await call()
        assert (counts.schedule_points, counts.tasks_spawned) == (1, 0), name
    assert await storage.read_bytes("sid") == PAYLOAD
    assert await storage.read_bytes("other") == b""


async def test_a_cancelled_streaming_call_changes_nothing_not_even_recency() -> None:
    """Under a cancelled scope, a streaming write or read raises Cancelled whether its
    callback calls the stream (that call raises) or not (the storage checks after it),
    stores nothing, and does not count as a use of the session."""
    storage = MemoryStorage(max_entries=2)
    await storage.write_bytes("a", b"a")
    await storage.write_bytes("b", b"b")
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: storage.write("a", _send_once),
        lambda: storage.write("a", _send_nothing),
        lambda: storage.write("new", _send_once),
        lambda: storage.read("a", read_all),
        lambda: storage.read("a", _read_nothing),
    ]
    for call in calls:
        with trio.CancelScope() as scope:
            scope.cancel()
            await call()
        assert scope.cancelled_caught
    await storage.write_bytes("c", b"c")  # evicts the least recently used: still a
    assert [await read_or_none(storage, sid) for sid in ("a", "b", "c", "new")] == [
        None,
        b"b",
        b"c",
        None,
    ]


async def test_a_session_replaced_during_a_streaming_read_keeps_its_new_value() -> None:
    storage = MemoryStorage()
    await storage.write_bytes("sid", b"old")

    async def consumer(stream: trio.abc.ReceiveStream) -> bytes:
        data = await stream.receive_some()  # a schedule point: the writer runs
        await trio.testing.wait_all_tasks_blocked()
        return bytes(data) + await stream.receive_some()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(storage.write_bytes, "sid", b"new")
        assert await storage.read("sid", consumer) == b"old"
    assert await storage.read_bytes("sid") == b"new"


@pytest.mark.parametrize("at", range(5))
async def test_a_streaming_write_cancelled_at_any_stream_call_keeps_the_old_value(
    at: int,
) -> None:
    """Cancelled just before its provider's call number *at* (three sends, then aclose),
    the write raises Cancelled and stores nothing; cancelled after its last call, it has
    completed."""
    storage = MemoryStorage()
    await storage.write_bytes("sid", b"old")
    with trio.CancelScope() as scope:

        async def provider(stream: trio.abc.SendStream) -> None:
            for n, piece in enumerate([b"n1", b"n2", b"n3", None]):
                if n == at:
                    scope.cancel()
                if piece is None:
                    await stream.aclose()
                else:
                    await stream.send_all(piece)
            if at == 4:
                scope.cancel()

        await storage.write("sid", provider)
    assert scope.cancelled_caught == (at < 4)
    assert await storage.read_bytes("sid") == (b"old" if at < 4 else b"n1n2n3")


@pytest.mark.parametrize("at", range(4))
async def test_a_streaming_read_cancelled_at_any_stream_call_raises_cancelled(at: int) -> None:
    """Every call the consumer makes checks for cancellation, the one that reports the
    end (call 3) too; the stored value stays as it was."""
    storage = MemoryStorage()
    version = await storage.write_bytes_if("sid", b"abcdef", version=None)
    calls = 0
    with trio.CancelScope() as scope:

        async def consumer(stream: trio.abc.ReceiveStream) -> bytes:
            nonlocal calls
            data = b""
            while True:
                if calls == at:
                    scope.cancel()
                calls += 1
                if not (chunk := await stream.receive_some(2)):
                    return data
                data += chunk

        await storage.read("sid", consumer)
    assert scope.cancelled_caught
    assert calls == at + 1
    found = await storage.read_versioned("sid")
    assert (found.data, found.version) == (b"abcdef", version)


async def test_a_streaming_write_over_max_size_fails_at_the_send_that_crosses_it() -> None:
    storage = MemoryStorage(max_size=10)
    await storage.write_bytes("sid", b"old")
    sent = []

    async def provider(stream: trio.abc.SendStream) -> None:
        for piece in (b"12345", b"678901", b"never"):
            await stream.send_all(piece)
            sent.append(piece)

    with pytest.raises(SessionTooLarge):
        await storage.write("sid", provider)
    assert sent == [b"12345"]
    assert await storage.read_bytes("sid") == b"old"


# ------------------------------------------------------------------ statistics


async def test_statistics_track_bytes_through_rewrites_and_deletes() -> None:
    storage = MemoryStorage()
    await storage.write_bytes("a", b"12345")
    await storage.write_bytes("a", b"12")
    await storage.write_bytes("b", b"123")
    await storage.invalidate("b")
    await storage.invalidate("b")
    assert storage.statistics().bytes == 2


async def test_close_drops_everything() -> None:
    async with MemoryStorage() as storage:
        await storage.write_bytes("a", b"1", ttl=math.pi)
    assert storage.closed
    assert storage.statistics().entries == 0
