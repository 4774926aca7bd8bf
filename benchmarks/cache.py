"""CacheStorage against the storages it fronts, same payload, one run.

Prints microseconds per operation, of wall-clock time and of the process's CPU time (one
task, median of the repeats, cases interleaved so drift affects all alike; on a shared
machine the CPU time is the steadier figure), and ratios to baselines measured in the
same run:

* reads: a cache hit over MemoryStorage vs MemoryStorage ``read_bytes`` (goal <= 1.5x);
  over DirectoryStorage, a hit and a miss vs DirectoryStorage ``read_bytes`` alone. A
  miss alternates two ids in a cache of one entry, so every read goes to the directory
  and installs what it read: it shows what the cache adds to a miss.
* mixes over DirectoryStorage, half of the operations writes (goal: the cache is never
  slower than the directory alone, <= 1.0x), on 64 sessions in a seeded random order:

  - ``bytes``: ``write_bytes`` and ``read_bytes`` of random sessions;
  - ``bytes, all miss``: the same in a cache of one entry, so nearly every read misses
    (the cache's worst case: it pays its bookkeeping and saves nothing);
  - ``requests``: read a session, then write it back (what a session-changing request
    does);
  - ``streams``: ``write`` and ``read`` with a provider and a consumer;
  - ``conditional``: ``read_versioned`` then ``write_bytes_if`` (over MemoryStorage,
    and over DirectoryStorage when it offers conditional writes);
  - ``large``: ``write_bytes`` and ``read_bytes`` of a value above what the cache keeps
    (200 KiB), which streams through.

Run: ``python -m benchmarks.cache [--iterations N] [--repeats R] [--payload B]``
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import trio

from trio_sessions import (
    ConditionalStorage,
    DirectoryStorage,
    MemoryStorage,
    SessionStorage,
    WriteConflict,
    open_cache_storage,
)

from .suite._core import read_all

IDS = ["benchmark-session-a-0123456789abcdef", "benchmark-session-b-0123456789abcdef"]
MIX_IDS = [f"benchmark-mix-{n:02d}-0123456789abcdef" for n in range(64)]
LARGE = 200 * 1024


def conditional(storage: SessionStorage) -> ConditionalStorage | None:
    """*storage* if its conditional writes work."""
    if isinstance(storage, ConditionalStorage) and storage.conditional_writes:
        return storage
    return None


@asynccontextmanager
async def memory() -> AsyncIterator[SessionStorage]:
    async with MemoryStorage() as storage:
        yield storage


@asynccontextmanager
async def directory() -> AsyncIterator[SessionStorage]:
    with tempfile.TemporaryDirectory(prefix="trio-sessions-bench-") as root:
        async with DirectoryStorage(root, fsync=False) as storage:
            yield storage


Opener = Callable[[], AbstractAsyncContextManager[SessionStorage]]
#: Runs *n* operations on a payload; returns the seconds they took (set-up excluded),
#: of wall-clock time and of this process's CPU time (every thread's).
Case = Callable[[int, bytes], Awaitable[tuple[float, float]]]


def now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = now()
    return wall - start[0], cpu - start[1]


def alone(opener: Opener) -> Case:
    """``read_bytes`` of one id straight from the storage."""

    async def run(n: int, payload: bytes) -> tuple[float, float]:
        async with opener() as storage:
            await storage.write_bytes(IDS[0], payload)
            start = now()
            for _ in range(n):
                await storage.read_bytes(IDS[0])
            return since(start)

    return run


def hit(opener: Opener) -> Case:
    """``read_bytes`` of one cached id."""

    async def run(n: int, payload: bytes) -> tuple[float, float]:
        async with opener() as delegate, open_cache_storage(delegate) as cache:
            await cache.write_bytes(IDS[0], payload)
            start = now()
            for _ in range(n):
                await cache.read_bytes(IDS[0])
            elapsed = since(start)
            assert cache.statistics().hits == n
            return elapsed

    return run


def miss(opener: Opener) -> Case:
    """``read_bytes`` alternating two ids in a cache of one entry: every read misses."""

    async def run(n: int, payload: bytes) -> tuple[float, float]:
        async with opener() as delegate, open_cache_storage(delegate, max_entries=1) as cache:
            for session_id in IDS:
                await delegate.write_bytes(session_id, payload)
            start = now()
            for i in range(n):
                await cache.read_bytes(IDS[i & 1])
            elapsed = since(start)
            assert cache.statistics().loads == n
            return elapsed

    return run


# ----------------------------------------------------------------------- mixes

Mix = Callable[[SessionStorage, list[tuple[str, bool]], bytes], Awaitable[None]]


def plan(n: int) -> list[tuple[str, bool]]:
    """*n* operations on random sessions, half of them writes (seeded: the same each run)."""
    rng = random.Random(1234)
    return [(rng.choice(MIX_IDS), rng.random() < 0.5) for _ in range(n)]


async def bytes_mix(storage: SessionStorage, ops: list[tuple[str, bool]], payload: bytes) -> None:
    for session_id, write in ops:
        if write:
            await storage.write_bytes(session_id, payload)
        else:
            await storage.read_bytes(session_id)


async def requests_mix(
    storage: SessionStorage, ops: list[tuple[str, bool]], payload: bytes
) -> None:
    for session_id, _ in ops[::2]:  # two operations each
        await storage.read_bytes(session_id)
        await storage.write_bytes(session_id, payload)


async def streams_mix(storage: SessionStorage, ops: list[tuple[str, bool]], payload: bytes) -> None:
    async def provider(stream: trio.abc.SendStream) -> None:
        await stream.send_all(payload)

    for session_id, write in ops:
        if write:
            await storage.write(session_id, provider)
        else:
            await storage.read(session_id, read_all)


async def conditional_mix(
    storage: SessionStorage, ops: list[tuple[str, bool]], payload: bytes
) -> None:
    capable = conditional(storage)
    assert capable is not None
    for session_id, _ in ops[::2]:  # two operations each
        found = await capable.read_versioned(session_id)
        try:
            await capable.write_bytes_if(session_id, payload, version=found.version)
        except WriteConflict:  # pragma: no cover (one task: nobody else writes)
            raise AssertionError("a conditional write conflicted with no other writer") from None


def mixed(opener: Opener, mix: Mix, *, cached: bool, max_entries: int = 10_000) -> Case:
    """Play *mix* on the storage alone, or on a cache over it; every session pre-written."""

    async def run(n: int, payload: bytes) -> tuple[float, float]:
        ops = plan(n)
        async with opener() as delegate:
            for session_id in MIX_IDS:
                await delegate.write_bytes(session_id, payload)
            if not cached:
                start = now()
                await mix(delegate, ops, payload)
                return since(start)
            async with open_cache_storage(delegate, max_entries=max_entries) as cache:
                start = now()
                await mix(cache, ops, payload)
                return since(start)

    return run


def measure(fn: Case, n: int, payload: bytes) -> tuple[float, float]:
    """Microseconds per operation (wall clock, CPU), in a fresh trio.run."""
    wall, cpu = trio.run(fn, n, payload)
    return wall / n * 1e6, cpu / n * 1e6


async def _is_conditional(opener: Opener, cached: bool) -> bool:
    async with opener() as storage:
        if not cached:
            return conditional(storage) is not None
        async with open_cache_storage(storage) as cache:
            return conditional(cache) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--payload", type=int, default=1024, help="bytes per session")
    args = parser.parse_args()

    def pattern(size: int) -> bytes:
        return bytes(range(256)) * (size // 256) + bytes(size % 256)

    payload, large = pattern(args.payload), pattern(LARGE)
    # Directory operations cost a thread hop each: fewer iterations keep the run short.
    n, slow = args.iterations, args.iterations // 10
    cases: dict[str, tuple[Case, int, bytes]] = {
        "memory read_bytes": (alone(memory), n, payload),
        "cache hit / memory": (hit(memory), n, payload),
        "directory read_bytes": (alone(directory), slow, payload),
        "cache hit / directory": (hit(directory), n, payload),
        "cache miss / directory": (miss(directory), slow, payload),
    }
    ratios = [
        ("cache hit / memory read_bytes", "cache hit / memory", "memory read_bytes"),
        ("cache hit over directory / directory", "cache hit / directory", "directory read_bytes"),
        ("cache miss over directory / directory", "cache miss / directory", "directory read_bytes"),
    ]
    mixes: list[tuple[str, Opener, Mix, int, bytes, int]] = [
        ("bytes", directory, bytes_mix, 10_000, payload, slow),
        ("bytes, all miss", directory, bytes_mix, 1, payload, slow),
        ("requests", directory, requests_mix, 10_000, payload, slow),
        ("streams", directory, streams_mix, 10_000, payload, slow),
        ("large", directory, bytes_mix, 10_000, large, slow // 10),
    ]
    if trio.run(_is_conditional, memory, True):
        mixes.append(("conditional / memory", memory, conditional_mix, 10_000, payload, n))
        if trio.run(_is_conditional, directory, False):
            mixes.append(("conditional", directory, conditional_mix, 10_000, payload, slow))
    for name, opener, mix, entries, data, count in mixes:
        cases[f"mix {name}: alone"] = (mixed(opener, mix, cached=False), count, data)
        through = mixed(opener, mix, cached=True, max_entries=entries)
        cases[f"mix {name}: cache"] = (through, count, data)
        ratios.append((f"mix {name}: cache / alone", f"mix {name}: cache", f"mix {name}: alone"))

    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (fn, count, data) in cases.items():
            runs[name].append(measure(fn, count, data))
    wall = {name: statistics.median(w for w, _ in values) for name, values in runs.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in runs.items()}
    least_wall = {name: min(w for w, _ in values) for name, values in runs.items()}
    least_cpu = {name: min(c for _, c in values) for name, values in runs.items()}
    print(f"payload {len(payload)} bytes (large: {LARGE}), {args.repeats} repeats")
    print(f"{'us/op (median, min)':<32}{'wall':>10}{'min':>9}{'cpu':>10}{'min':>9}")
    for name in runs:
        print(
            f"{name:<32}{wall[name]:>10.2f}{least_wall[name]:>9.2f}"
            f"{cpu[name]:>10.2f}{least_cpu[name]:>9.2f}"
        )
    print()
    print(f"{'ratios':<42}{'of the medians':>14}{'of the minima':>14}")
    print(f"{'':<42}{'wall':>7}{'cpu':>7}{'wall':>7}{'cpu':>7}")
    for label, case, base in ratios:
        print(
            f"{label + ':':<42}{wall[case] / wall[base]:6.2f}x{cpu[case] / cpu[base]:6.2f}x"
            f"{least_wall[case] / least_wall[base]:6.2f}x{least_cpu[case] / least_cpu[base]:6.2f}x"
        )
    print("goals: a hit over memory <= 1.5x; every mix <= 1.0x")


if __name__ == "__main__":
    main()
