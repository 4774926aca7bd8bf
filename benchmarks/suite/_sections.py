"""The sections of a run: which candidates each measures, against which baseline."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import trio

from . import _footprint
from . import _targets as t
from ._core import Ops, Role, fill, lateness, throughput
from ._plan import KIB, Plan
from ._suite import (
    ASYNCPG,
    BENCHMARK,
    IDLE,
    STARSESSIONS_REDIS,
    Entry,
    Step,
    Suite,
    importable,
    installed,
    payload,
    session_ids,
)

#: The peer libraries measured beside the directory storage.
FILE_PEERS = ("cachelib", "diskcache")
#: The table both PostgreSQL candidates write.
TABLE = "bench_sessions"


def _with_peers(group: str, peers: Sequence[str]) -> str:
    """A step's label names only the peers that will run: those installed."""
    return " + ".join([group, *peers])


def _redis_peers() -> list[str]:
    return ["starsessions"] if installed("starsessions", "redis") else []


def pairs(suite: Suite) -> list[Step]:
    """One task writing and reading 1 KiB sessions: the cost of one operation."""
    ids, data = session_ids(suite.plan.ids), payload(KIB)

    async def prepare(ops: Ops, x: object) -> None:
        await fill(ops, ids, data)

    def curve(group: str, entries: Sequence[Entry]) -> Callable[[], None]:
        measure = suite.throughput(ids, data)
        return lambda: suite.run_curve("pairs", group, entries, [None], prepare, measure)

    memory = [
        *suite.memory_entries(),
        (t.memory_stream, "dict + checkpoints"),
        (t.starsessions_memory, "dict + checkpoints"),
    ]
    peers: list[Entry] = [
        (functools.partial(t.file_cache, kind, suite.tmp), "raw files fsync=off")
        for kind in FILE_PEERS
    ]
    steps: list[Step] = [
        ("pairs", "memory", curve("memory", memory)),
        (
            "pairs",
            "directory, fsync on",
            curve("directory fsync=on", suite.directory_entries(True)),
        ),
        (
            "pairs",
            _with_peers("directory", [kind for kind in FILE_PEERS if installed(kind)]),
            curve("directory", [*suite.directory_entries(False), *peers]),
        ),
        ("pairs", "cache (reads)", functools.partial(_cache_reads, suite)),
    ]
    server = suite.servers.redis
    if server is not None:

        def redis() -> None:
            suite.redis_benchmark("pairs", [1])
            suite.run_curve(
                "pairs",
                "redis",
                suite.redis_entries(("glide", "coredis")),
                [None],
                prepare,
                suite.throughput(ids, data),
            )
            job = {
                "kind": "starsessions-redis",
                "url": server.url,
                "size": KIB,
                "ids": suite.plan.ids,
                "tasks": [1],
            }
            suite.asyncio_peer("pairs", "redis", STARSESSIONS_REDIS, job, BENCHMARK)

        steps.append(("pairs", _with_peers("redis", _redis_peers()), redis))
    if suite.servers.dsn is not None:
        steps.append(("pairs", "postgres", functools.partial(_postgres, suite)))
    return steps


def _cache_reads(suite: Suite) -> None:
    ids, data = session_ids(suite.plan.ids), payload(KIB)
    entries: list[Entry] = [
        (lambda: replace(t.memory_storage(), role="baseline"), None),
        (
            lambda: replace(t.directory_storage(False, suite.tmp), role="reference"),
            "MemoryStorage",
        ),
        (functools.partial(t.cache_over_directory, suite.tmp), "MemoryStorage"),
    ]
    plan = suite.plan

    async def prepare(ops: Ops, x: object) -> None:
        await fill(ops, ids, data)
        for session_id in ids:  # warm the cache
            await ops.read(session_id)

    async def measure(ops: Ops, x: object) -> float:
        return await throughput(
            ops, ids, data, tasks=1, seconds=plan.seconds, max_ops=plan.max_ops, writes=False
        )

    suite.run_curve("pairs", "cache (reads only)", entries, [None], prepare, measure)


def _postgres(suite: Suite) -> None:
    dsn = suite.servers.dsn
    assert dsn is not None
    ids, data = session_ids(suite.plan.ids), payload(KIB)

    async def prepare(ops: Ops, x: object) -> None:
        await fill(ops, ids, data)

    entries: list[Entry] = [(functools.partial(t.postgres_storage, dsn, TABLE), ASYNCPG)]
    job = {"ids": suite.plan.ids, "tasks": [1]}
    with _asyncpg_around(suite, "pairs", job):
        suite.run_curve("pairs", "postgres", entries, [None], prepare, suite.throughput(ids, data))


@contextlib.contextmanager
def _asyncpg_around(suite: Suite, section: str, job: dict[str, Any]) -> Iterator[None]:
    """asyncpg on asyncio measured in two halves of its repeats, before and after ours
    (the body): it runs in a process of its own, so it cannot take turns with ours
    within each repeat, but a change in the machine's load then weighs on both."""
    dsn = suite.servers.dsn
    assert dsn is not None
    from trio_sessions import PostgresStorage

    job = {
        "kind": "asyncpg",
        "dsn": dsn,
        "table": TABLE,
        "schema": PostgresStorage.schema_sql(TABLE),
        "size": KIB,
        "warmup": True,
        **job,
    }
    first = (suite.plan.repeats + 1) // 2

    def measure(repeats: int) -> None:
        if repeats:
            half = {**job, "repeats": repeats}
            suite.asyncio_peer(section, "postgres", ASYNCPG, half, None, role="baseline")

    measure(first)
    yield
    measure(suite.plan.repeats - first)


def sessions(suite: Suite) -> list[Step]:
    """Throughput as the number of stored sessions grows (1 KiB each, one task)."""
    plan = suite.plan
    groups: list[tuple[str, list[Entry], tuple[int, ...]]] = [
        ("memory", suite.memory_entries(), plan.sessions_memory),
        ("directory", suite.directory_entries(False), plan.sessions_directory),
        ("redis", suite.redis_entries(("glide",)), plan.sessions_redis),
    ]
    return [
        ("sessions", f"{group} (up to {max(counts):,})", _sessions(suite, group, entries, counts))
        for group, entries, counts in groups
        if entries and counts
    ]


def _sessions(
    suite: Suite, group: str, entries: list[Entry], counts: tuple[int, ...]
) -> Callable[[], None]:
    plan, data = suite.plan, payload(KIB)
    ids = session_ids(max(counts))
    filled: dict[int, int] = {}  # id(ops) -> sessions stored so far

    async def prepare(ops: Ops, count: int) -> None:
        start = filled.get(id(ops), 0)
        await fill(ops, ids[start:count], data)
        filled[id(ops)] = count

    async def measure(ops: Ops, count: int) -> float:
        return await throughput(
            ops, ids[:count], data, tasks=1, seconds=plan.seconds, max_ops=plan.max_ops
        )

    return functools.partial(suite.run_curve, "sessions", group, entries, counts, prepare, measure)


def payload_sizes(suite: Suite) -> list[Step]:
    """Throughput as the payload grows from 100 B to 1 MiB (one task)."""
    plan = suite.plan
    ids = session_ids(plan.payload_ids)

    async def prepare(ops: Ops, size: int) -> None:
        await fill(ops, ids, payload(size))

    async def measure(ops: Ops, size: int) -> float:
        data = payload(size)
        return await throughput(ops, ids, data, tasks=1, seconds=plan.seconds, max_ops=plan.max_ops)

    groups = [
        ("memory", suite.memory_entries()),
        ("directory", suite.directory_entries(False)),
        ("redis", suite.redis_entries(("glide",))),
    ]
    return [
        (
            "payload",
            group,
            functools.partial(
                suite.run_curve, "payload", group, entries, plan.payloads, prepare, measure
            ),
        )
        for group, entries in groups
        if entries
    ]


def concurrency(suite: Suite) -> list[Step]:
    """Throughput with 1 to 256 tasks (1 KiB sessions)."""
    plan, data = suite.plan, payload(KIB)
    ids = session_ids(plan.concurrency_ids)

    async def prepare(ops: Ops, tasks: int) -> None:
        if tasks == plan.concurrency[0]:
            await fill(ops, ids, data)
        else:
            await trio.lowlevel.checkpoint()

    async def measure(ops: Ops, tasks: int) -> float:
        return await throughput(
            ops, ids, data, tasks=int(tasks), seconds=plan.seconds, max_ops=plan.max_ops
        )

    def curve(group: str, entries: list[Entry]) -> Callable[[], None]:
        return functools.partial(
            suite.run_curve, "concurrency", group, entries, plan.concurrency, prepare, measure
        )

    steps: list[Step] = [
        ("concurrency", "memory", curve("memory", suite.memory_entries())),
        ("concurrency", "directory", curve("directory", suite.directory_entries(False))),
    ]
    server = suite.servers.redis
    if server is not None:
        redis_curve = curve("redis", suite.redis_entries(("glide", "coredis")))

        def redis() -> None:
            suite.redis_benchmark("concurrency", plan.concurrency)
            redis_curve()
            job = {
                "kind": "starsessions-redis",
                "url": server.url,
                "size": KIB,
                "ids": plan.concurrency_ids,
                "tasks": list(plan.concurrency),
            }
            suite.asyncio_peer("concurrency", "redis", STARSESSIONS_REDIS, job, BENCHMARK)

        steps.append(("concurrency", _with_peers("redis", _redis_peers()), redis))
    if suite.servers.dsn is not None:
        steps.append(("concurrency", "postgres", functools.partial(_postgres_tasks, suite)))
    return steps


def postgres_pool(plan: Plan) -> int:
    """Connections both PostgreSQL candidates keep open in the concurrency section: one
    per task up to 64 tasks (PostgreSQL's default limit is 100 connections)."""
    return min(64, max(plan.concurrency))


def _postgres_tasks(suite: Suite) -> None:
    """PostgresStorage and asyncpg on asyncio, each with the same pool, kept full."""
    dsn = suite.servers.dsn
    assert dsn is not None
    plan, data = suite.plan, payload(KIB)
    ids, pool = session_ids(plan.concurrency_ids), postgres_pool(plan)

    async def prepare(ops: Ops, tasks: int) -> None:
        if tasks == plan.concurrency[0]:
            await fill(ops, ids, data)
        # Unmeasured, at every task count: the pool's connections made and warm.
        await throughput(ops, ids, data, tasks=tasks, seconds=plan.seconds, max_ops=plan.max_ops)

    async def measure(ops: Ops, tasks: int) -> float:
        return await throughput(
            ops, ids, data, tasks=tasks, seconds=plan.seconds, max_ops=plan.max_ops
        )

    entries: list[Entry] = [(functools.partial(t.postgres_storage, dsn, TABLE, pool), ASYNCPG)]
    job = {
        "ids": plan.concurrency_ids,
        "tasks": list(plan.concurrency),
        "pool": pool,
        "min_pool": pool,
    }
    with _asyncpg_around(suite, "concurrency", job):
        suite.run_curve("concurrency", "postgres", entries, plan.concurrency, prepare, measure)


def footprint(suite: Suite) -> list[Step]:
    """Memory per stored session, for 100 B and 1 KiB payloads."""
    plan = suite.plan
    count = plan.footprint_sessions
    base = "dict (ids and payloads only)"

    def in_process() -> None:
        names = list(_footprint.IN_PROCESS)
        if not importable("starsessions.stores.memory"):
            names = [name for name in names if not name.startswith("starsessions")]
            suite.skip("footprint: starsessions", "not installed: pip install starsessions")
        for size in (100, KIB):
            for _ in range(plan.footprint_repeats):
                for name in names:
                    value = _footprint.in_process(name, count, size)
                    role: Role = "baseline" if name == base else "subject"
                    if name.startswith("starsessions"):
                        role = "peer"
                    suite.results.add(
                        "footprint",
                        "memory",
                        name,
                        value,
                        role=role,
                        unit="bytes/session",
                        x=size,
                        baseline=None if name == base else base,
                        better="lower",
                    )

    steps: list[Step] = [("footprint", f"in this process ({count:,} sessions)", in_process)]
    server = suite.servers.redis
    if server is not None and suite.servers.drivers:
        driver = suite.servers.drivers[0]

        def redis() -> None:
            for size in (100, KIB):
                for _ in range(plan.footprint_repeats):
                    value = _footprint.redis_used_memory(
                        server.url, server.port, driver, count, size
                    )
                    suite.results.add(
                        "footprint",
                        "memory",
                        f"{server.version} used_memory",
                        value,
                        role="reference",
                        unit="bytes/session",
                        x=size,
                        baseline=base,
                        better="lower",
                    )

        steps.append(("footprint", f"Redis server ({count:,} sessions)", redis))
    return steps


def lateness_under_load(suite: Suite) -> list[Step]:
    """A 1 ms heartbeat's p99 and worst lateness while tasks write and read."""
    plan = suite.plan
    ids, data = session_ids(plan.ids), payload(KIB)
    peers: list[Entry] = [
        (functools.partial(t.file_cache, kind, suite.tmp, on_loop=True), "raw files fsync=off")
        for kind in FILE_PEERS
    ]
    groups: list[tuple[str, list[Entry]]] = [
        ("memory", suite.memory_entries()),
        (
            "directory",
            [
                *suite.directory_entries(True),
                *suite.directory_entries(False),
                (functools.partial(t.cache_over_directory, suite.tmp), "raw files fsync=off"),
                *peers,
            ],
        ),
        ("redis", suite.redis_entries(("glide", "coredis"), benchmark=False)),
    ]
    if suite.servers.dsn is not None:
        dsn = suite.servers.dsn
        groups.append(("postgres", [(lambda: t.postgres_storage(dsn, TABLE), None)]))

    def measure(group: str, entries: Sequence[Entry]) -> None:
        made = suite.make("lateness", entries)

        async def main() -> None:
            if group == "memory":
                for _ in range(plan.lateness_repeats):
                    p99, worst = await lateness(
                        None, ids, data, tasks=0, seconds=plan.lateness_seconds
                    )
                    _late(suite, group, IDLE, "reference", None, p99, worst)
            async with AsyncExitStack() as stack:
                opened = await suite.open_all(stack, "lateness", made)
                for _, _, ops in opened:
                    await fill(ops, ids, data)
                for _ in range(plan.lateness_repeats):
                    for target, baseline, ops in opened:
                        p99, worst = await lateness(
                            ops,
                            ids,
                            data,
                            tasks=plan.lateness_tasks,
                            seconds=plan.lateness_seconds,
                        )
                        _late(suite, group, target.name, target.role, baseline, p99, worst)

        trio.run(main)

    return [
        ("lateness", group, functools.partial(measure, group, entries))
        for group, entries in groups
        if entries
    ]


def _late(
    suite: Suite, group: str, name: str, role: Role, baseline: str | None, p99: float, worst: float
) -> None:
    for section, value in (("lateness p99", p99), ("lateness max", worst)):
        suite.results.add(
            section,
            group,
            name,
            value,
            role=role,
            unit="ms",
            baseline=baseline,
            better="lower",
        )


#: What builds the steps of each section, by the name ``--only`` takes.
BUILDERS: dict[str, Callable[[Suite], list[Step]]] = {
    "pairs": pairs,
    "sessions": sessions,
    "payload": payload_sizes,
    "concurrency": concurrency,
    "footprint": footprint,
    "lateness": lateness_under_load,
}
