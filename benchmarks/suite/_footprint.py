"""Memory per stored session: in a fresh process (resident memory) and in Redis (INFO).

Run as ``python -m benchmarks.suite._footprint NAME COUNT SIZE`` it measures one
in-process candidate and prints bytes per session.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import time
from collections.abc import Callable

import trio

from trio_sessions import MemoryStorage, new_session_id
from trio_sessions.storages._redis_drivers import DriverName
from trio_sessions.testing.servers import Resp

from ._core import TTL, run_child, starsessions_ops

PX = TTL * 1000


def _payloads(count: int, size: int) -> list[bytes]:
    """*count* distinct payload objects of *size* bytes."""
    return [(n.to_bytes(8, "little") * (size // 8 + 1))[:size] for n in range(count)]


def rss() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _held(build: Callable[[list[str], list[bytes]], object], count: int, size: int) -> float:
    """Resident bytes per session that *build* keeps after storing *count* fresh sessions:
    ids, payloads, the structure holding them and the allocators' overhead."""
    trio.run(trio.lowlevel.checkpoint)  # trio's first run allocates caches of its own
    gc.collect()
    before = rss()
    ids = [new_session_id() for _ in range(count)]
    payloads = _payloads(count, size)
    kept = build(ids, payloads)
    del ids, payloads
    gc.collect()
    after = rss()
    del kept
    return (after - before) / count


def _memory_storage(ttl: bool) -> Callable[[list[str], list[bytes]], object]:
    def build(ids: list[str], payloads: list[bytes]) -> object:
        storage = MemoryStorage(max_entries=None, max_bytes=None)  # holds every session

        async def fill() -> None:
            await trio.lowlevel.checkpoint()
            for session_id, data in zip(ids, payloads, strict=True):
                await storage.write_bytes(session_id, data, ttl=TTL if ttl else None)

        trio.run(fill)
        return storage

    return build


def _dict(ids: list[str], payloads: list[bytes]) -> object:
    return dict(zip(ids, payloads, strict=True))


def _starsessions(ids: list[str], payloads: list[bytes]) -> object:
    module = importlib.import_module("starsessions.stores.memory")
    store = module.InMemoryStore()
    write, _ = starsessions_ops(store)

    async def fill() -> None:
        await trio.lowlevel.checkpoint()
        for session_id, data in zip(ids, payloads, strict=True):
            await write(session_id, data)

    trio.run(fill)
    return store


IN_PROCESS: dict[str, Callable[[list[str], list[bytes]], object]] = {
    "dict (ids and payloads only)": _dict,
    "MemoryStorage (ttl)": _memory_storage(ttl=True),
    "MemoryStorage (no ttl)": _memory_storage(ttl=False),
    "starsessions InMemoryStore": _starsessions,
}


def in_process(name: str, count: int, size: int) -> float:
    """Resident bytes per session for *name*, measured in a fresh child process."""
    return float(run_child(__name__, name, str(count), str(size), what=f"measuring {name}"))


def redis_used_memory(url: str, port: int, driver: DriverName, count: int, size: int) -> float:
    """Growth of the server's ``used_memory`` (what its allocator hands out), in bytes per
    session stored as RedisStorage stores it: a key derived from the id, the payload and a
    ttl. (Its resident memory is not comparable: freed pages stay with the allocator.)"""
    from trio_sessions import open_redis_storage

    async def keys() -> list[bytes]:
        async with open_redis_storage(url, driver=driver, prefix="trio-sessions:") as storage:
            return [storage.key(new_session_id()) for _ in range(count)]

    names = trio.run(keys)
    with Resp(port) as resp:
        resp.command("FLUSHALL", "SYNC")
        before = resp.info("memory")
        value = _payloads(1, size)[0]
        resp.set_many(names, value, PX)
        time.sleep(0.2)  # let an incremental rehash of the keyspace finish
        after = resp.info("memory")
        resp.command("FLUSHALL", "SYNC")
    return (int(after["used_memory"]) - int(before["used_memory"])) / count


if __name__ == "__main__":
    print(_held(IN_PROCESS[sys.argv[1]], int(sys.argv[2]), int(sys.argv[3])))
