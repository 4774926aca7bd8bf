"""CacheStorage hits and misses against the storages it fronts, same payload, one run.

Prints microseconds per ``read_bytes`` (one task, median of the repeats, cases interleaved
so drift affects all alike) and ratios to baselines measured in the same run:

* a cache hit over MemoryStorage vs MemoryStorage ``read_bytes`` (goal <= 1.5x);
* over DirectoryStorage: a cache hit and a cache miss vs DirectoryStorage ``read_bytes``
  alone. A miss alternates two ids in a cache of one entry, so every read goes to the
  directory and installs what it read; it shows what the cache adds to a miss.

Run: ``python benchmarks/cache.py [--iterations N] [--repeats R] [--payload B]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import trio

from trio_sessions import DirectoryStorage, MemoryStorage, SessionStorage, open_cache_storage

IDS = ["benchmark-session-a-0123456789abcdef", "benchmark-session-b-0123456789abcdef"]


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
Case = Callable[[int, bytes], Awaitable[None]]


def alone(opener: Opener) -> Case:
    """``read_bytes`` of one id straight from the storage."""

    async def run(n: int, payload: bytes) -> None:
        async with opener() as storage:
            await storage.write_bytes(IDS[0], payload)
            for _ in range(n):
                await storage.read_bytes(IDS[0])

    return run


def hit(opener: Opener) -> Case:
    """``read_bytes`` of one cached id."""

    async def run(n: int, payload: bytes) -> None:
        async with opener() as delegate, open_cache_storage(delegate) as cache:
            await cache.write_bytes(IDS[0], payload)
            for _ in range(n):
                await cache.read_bytes(IDS[0])
            assert cache.statistics().hits == n

    return run


def miss(opener: Opener) -> Case:
    """``read_bytes`` alternating two ids in a cache of one entry: every read misses."""

    async def run(n: int, payload: bytes) -> None:
        async with opener() as delegate, open_cache_storage(delegate, max_entries=1) as cache:
            for session_id in IDS:
                await delegate.write_bytes(session_id, payload)
            for i in range(n):
                await cache.read_bytes(IDS[i & 1])
            assert cache.statistics().loads == n

    return run


def measure(fn: Case, n: int, payload: bytes) -> float:
    """Microseconds per read, in a fresh trio.run."""
    start = time.perf_counter()
    trio.run(fn, n, payload)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--payload", type=int, default=1024, help="bytes per session")
    args = parser.parse_args()
    payload = bytes(range(256)) * (args.payload // 256) + bytes(args.payload % 256)
    # Directory reads cost a thread hop each: fewer iterations keep the run short.
    cases: dict[str, tuple[Case, int]] = {
        "memory read_bytes": (alone(memory), args.iterations),
        "cache hit / memory": (hit(memory), args.iterations),
        "directory read_bytes": (alone(directory), args.iterations // 10),
        "cache hit / directory": (hit(directory), args.iterations),
        "cache miss / directory": (miss(directory), args.iterations // 10),
    }
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (fn, n) in cases.items():
            runs[name].append(measure(fn, n, payload))
    med = {name: statistics.median(values) for name, values in runs.items()}
    print(f"payload {len(payload)} bytes, {args.repeats} repeats")
    print(f"{'case':<26}{'median us/read':>16}{'min':>9}{'max':>9}")
    for name, values in runs.items():
        print(f"{name:<26}{med[name]:>16.2f}{min(values):>9.2f}{max(values):>9.2f}")
    print()
    ratio = med["cache hit / memory"] / med["memory read_bytes"]
    print(f"cache hit / memory read_bytes:         {ratio:.2f}x  (goal <= 1.5x)")
    ratio = med["cache hit / directory"] / med["directory read_bytes"]
    print(f"cache hit over directory / directory:  {ratio:.2f}x")
    ratio = med["cache miss / directory"] / med["directory read_bytes"]
    print(f"cache miss over directory / directory: {ratio:.2f}x")


if __name__ == "__main__":
    main()
