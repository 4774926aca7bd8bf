"""MemoryStorage beyond the contract: expiry bookkeeping, LRU, statistics."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_sessions import MemoryStorage, SessionNotFound


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


async def test_rewrites_do_not_grow_the_expiry_heap_without_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = MemoryStorage()
    for _ in range(10_000):  # sliding expiry: every request rewrites with a fresh ttl
        await storage.write_bytes("sid", b"x", ttl=3600)
    assert len(storage._expiry) <= 2 * len(storage) + 64
    assert await storage.read_bytes("sid") == b"x"


async def test_rewrite_without_ttl_survives_the_old_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = MemoryStorage()
    await storage.write_bytes("sid", b"1", ttl=5)
    await storage.write_bytes("sid", b"2")
    await trio.sleep(10)
    await storage.write_bytes("other", b"z", ttl=1)  # runs the expiry sweep
    assert await storage.read_bytes("sid") == b"2"


async def test_purge_removes_expired_sessions(autojump_clock: trio.testing.MockClock) -> None:
    storage = MemoryStorage()
    await storage.write_bytes("a", b"1", ttl=1)
    await storage.write_bytes("b", b"2", ttl=100)
    await trio.sleep(2)
    assert await storage.purge() == 1
    assert len(storage) == 1


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


async def test_statistics_track_bytes_through_rewrites_and_deletes() -> None:
    storage = MemoryStorage()
    await storage.write_bytes("a", b"12345")
    await storage.write_bytes("a", b"12")
    await storage.write_bytes("b", b"123")
    await storage.invalidate("b")
    await storage.invalidate("b")
    assert storage.statistics().bytes == 2


@pytest.mark.parametrize("bad", [0, -1])
def test_invalid_limits_are_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        MemoryStorage(max_entries=bad)
    with pytest.raises(ValueError, match="max_size"):
        MemoryStorage(max_size=bad)


async def test_close_drops_everything() -> None:
    async with MemoryStorage() as storage:
        await storage.write_bytes("a", b"1")
    assert storage.closed
    assert storage.statistics().entries == 0
