"""The steps of a run: which candidates each section measures, against which baseline."""

from __future__ import annotations

import functools
import importlib
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import Any

import trio

from ..storages._redis_drivers import DriverName
from . import _asyncio_side, _footprint, _servers
from . import _targets as t
from ._core import Ops, Progress, Results, Role, Target, fill, lateness, throughput
from ._plan import KIB, Plan

#: A candidate and the name of the baseline its ratio is taken against.
Entry = tuple[Callable[[], Target], str | None]
Step = tuple[str, str, Callable[[], None]]  # section, label, what to run

BENCHMARK = "redis-benchmark (C client)"
ASYNCPG = "asyncpg on asyncio (same SQL)"
STARSESSIONS_REDIS = "starsessions RedisStore (redis-py, asyncio)"
IDLE = "idle loop (no load)"


def payload(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def session_ids(count: int) -> list[str]:
    return [f"{n:011d}-0123456789abcdef0123456789abcdef" for n in range(count)]


@dataclass
class Servers:
    redis: _servers.RedisServer | None = None
    drivers: tuple[DriverName, ...] = ()
    dsn: str | None = None


class Suite:
    def __init__(
        self, plan: Plan, servers: Servers, results: Results, tmp: str | None, progress: Progress
    ) -> None:
        self.plan = plan
        self.servers = servers
        self.results = results
        self.tmp = tmp
        self.progress = progress

    # ------------------------------------------------------------- candidates

    def _make(self, section: str, entries: Sequence[Entry]) -> list[tuple[Target, str | None]]:
        made = []
        for make, baseline in entries:
            try:
                made.append((make(), baseline))
            except ImportError as exc:
                self.results.skip(f"{section}: a candidate", f"not installed: {exc.name or exc}")
        return made

    def _redis(self, drivers: Sequence[DriverName], benchmark: bool = True) -> list[Entry]:
        server = self.servers.redis
        if server is None:
            return []
        entries: list[Entry] = []
        for driver in drivers:
            if driver in self.servers.drivers:
                raw = functools.partial(t.redis_raw, server.url, server.port, driver)
                mine = functools.partial(t.redis_storage, server.url, server.port, driver)
                base = BENCHMARK if benchmark else None
                entries += [(raw, base), (mine, f"{driver} SET PX + GET")]
        return entries

    def _memory(self) -> list[Entry]:
        return [(t.dict_baseline, None), (t.memory_storage, "dict + checkpoints")]

    def _directory(self, fsync: bool) -> list[Entry]:
        raw = functools.partial(t.raw_files, fsync, self.tmp)
        base = f"raw files fsync={'on' if fsync else 'off'}"
        return [(raw, None), (functools.partial(t.directory_storage, fsync, self.tmp), base)]

    # --------------------------------------------------------------- running

    def _run_curve(
        self,
        section: str,
        group: str,
        entries: Sequence[Entry],
        xs: Sequence[float | None],
        prepare: Callable[[Ops, Any], Awaitable[None]],
        measure: Callable[[Ops, Any], Awaitable[float]],
        *,
        unit: str = "ops/s",
    ) -> None:
        """Open every candidate at once; at each x prepare them all, then measure them in
        turn within each repeat, so drift in the machine's load affects all alike."""
        made = self._make(section, entries)

        async def main() -> None:
            async with AsyncExitStack() as stack:
                opened = []
                for target, baseline in made:
                    try:
                        ops = await stack.enter_async_context(target.open())
                    except Exception as exc:
                        self.results.skip(f"{section}: {target.name}", repr(exc))
                        continue
                    opened.append((target, baseline, ops))
                for n, x in enumerate(xs):
                    for _, _, ops in opened:
                        await prepare(ops, x)
                        if n == 0:
                            await measure(ops, x)  # warm up: connections, caches, code paths
                    for _ in range(self.plan.repeats):
                        for target, baseline, ops in opened:
                            value = await measure(ops, x)
                            self.results.add(
                                section,
                                group,
                                target.name,
                                value,
                                role=target.role,
                                unit=unit,
                                x=x,
                                baseline=baseline,
                            )

        trio.run(main)

    def _throughput(self, ids: Sequence[str], data: bytes, tasks: int = 1) -> Any:
        plan = self.plan

        async def measure(ops: Ops, x: object) -> float:
            return await throughput(
                ops, ids, data, tasks=tasks, seconds=plan.seconds, max_ops=plan.max_ops
            )

        return measure

    def _asyncio(
        self,
        section: str,
        group: str,
        name: str,
        job: dict[str, Any],
        baseline: str | None,
        role: Role = "peer",
    ) -> None:
        plan = self.plan
        job = {"repeats": plan.repeats, "seconds": plan.seconds, "max_ops": plan.max_ops, **job}
        try:
            figures = _asyncio_side.measure(job)
        except (RuntimeError, OSError) as exc:
            self.results.skip(f"{section}: {name}", str(exc))
            return
        for tasks, values in figures.items():
            x = None if section == "pairs" else float(tasks)
            for value in values:
                self.results.add(
                    section, group, name, value, role=role, unit="ops/s", x=x, baseline=baseline
                )

    def _redis_benchmark(self, section: str, clients: Sequence[int]) -> None:
        server = self.servers.redis
        assert server is not None
        for c in clients:
            requests = self.plan.benchmark_requests // (4 if c < 16 else 1)
            for _ in range(self.plan.benchmark_repeats):
                rps = _servers.redis_benchmark(server.port, clients=c, requests=requests, size=KIB)
                if not rps:
                    self.results.skip(f"{section}: {BENCHMARK}", "not on PATH")
                    return
                value = 2 / (1 / rps["SET"] + 1 / rps["GET"])
                x = None if section == "pairs" else float(c)
                self.results.add(
                    section, "redis", BENCHMARK, value, role="baseline", unit="ops/s", x=x
                )

    # ---------------------------------------------------------------- sections

    def pairs(self) -> list[Step]:
        """One task writing and reading 1 KiB sessions: the cost of one operation."""
        ids, data = session_ids(self.plan.ids), payload(KIB)

        async def prepare(ops: Ops, x: object) -> None:
            await fill(ops, ids, data)

        def curve(group: str, entries: Sequence[Entry]) -> Callable[[], None]:
            measure = self._throughput(ids, data)
            return lambda: self._run_curve("pairs", group, entries, [None], prepare, measure)

        memory = [
            *self._memory(),
            (t.memory_stream, "dict + checkpoints"),
            (t.starsessions_memory, "dict + checkpoints"),
        ]
        peers: list[Entry] = [
            (functools.partial(t.file_cache, kind, self.tmp), "raw files fsync=off")
            for kind in ("cachelib", "diskcache")
        ]
        steps: list[Step] = [
            ("pairs", "memory", curve("memory", memory)),
            ("pairs", "directory, fsync on", curve("directory fsync=on", self._directory(True))),
            ("pairs", "directory + peers", curve("directory", [*self._directory(False), *peers])),
            ("pairs", "cache (reads)", self._cache_reads),
        ]
        if self.servers.redis is not None:

            def redis() -> None:
                self._redis_benchmark("pairs", [1])
                self._run_curve(
                    "pairs",
                    "redis",
                    self._redis(("glide", "coredis")),
                    [None],
                    prepare,
                    self._throughput(ids, data),
                )
                job = {
                    "kind": "starsessions-redis",
                    "url": self.servers.redis.url if self.servers.redis else "",
                    "size": KIB,
                    "ids": self.plan.ids,
                    "tasks": [1],
                }
                self._asyncio("pairs", "redis", STARSESSIONS_REDIS, job, BENCHMARK)

            steps.append(("pairs", "redis + peers", redis))
        if self.servers.dsn is not None:
            steps.append(("pairs", "postgres", self._postgres))
        return steps

    def _cache_reads(self) -> None:
        ids, data = session_ids(self.plan.ids), payload(KIB)
        entries: list[Entry] = [
            (lambda: replace(t.memory_storage(), role="baseline"), None),
            (
                lambda: replace(t.directory_storage(False, self.tmp), role="reference"),
                "MemoryStorage",
            ),
            (functools.partial(t.cache_over_directory, self.tmp), "MemoryStorage"),
        ]
        plan = self.plan

        async def prepare(ops: Ops, x: object) -> None:
            await fill(ops, ids, data)
            for session_id in ids:  # warm the cache
                await ops.read(session_id)

        async def measure(ops: Ops, x: object) -> float:
            return await throughput(
                ops, ids, data, tasks=1, seconds=plan.seconds, max_ops=plan.max_ops, writes=False
            )

        self._run_curve("pairs", "cache (reads only)", entries, [None], prepare, measure)

    def _postgres(self) -> None:
        dsn = self.servers.dsn
        assert dsn is not None
        ids, data = session_ids(self.plan.ids), payload(KIB)

        async def prepare(ops: Ops, x: object) -> None:
            await fill(ops, ids, data)

        entries: list[Entry] = [
            (functools.partial(t.postgres_storage, dsn, "bench_sessions"), ASYNCPG)
        ]
        self._run_curve("pairs", "postgres", entries, [None], prepare, self._throughput(ids, data))
        job = {
            "kind": "asyncpg",
            "dsn": dsn,
            "table": "bench_sessions",
            "size": KIB,
            "ids": self.plan.ids,
            "tasks": [1],
        }
        self._asyncio("pairs", "postgres", ASYNCPG, job, None, role="baseline")

    def sessions(self) -> list[Step]:
        """Throughput as the number of stored sessions grows (1 KiB each, one task)."""
        plan = self.plan
        groups: list[tuple[str, list[Entry], tuple[int, ...]]] = [
            ("memory", self._memory(), plan.sessions_memory),
            ("directory", self._directory(False), plan.sessions_directory),
            ("redis", self._redis(("glide",)), plan.sessions_redis),
        ]
        return [
            ("sessions", f"{group} (up to {max(counts):,})", self._sessions(group, entries, counts))
            for group, entries, counts in groups
            if entries and counts
        ]

    def _sessions(
        self, group: str, entries: list[Entry], counts: tuple[int, ...]
    ) -> Callable[[], None]:
        plan, data = self.plan, payload(KIB)
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

        return functools.partial(
            self._run_curve, "sessions", group, entries, counts, prepare, measure
        )

    def payload_sizes(self) -> list[Step]:
        """Throughput as the payload grows from 100 B to 1 MiB (one task)."""
        plan = self.plan
        ids = session_ids(plan.payload_ids)

        async def prepare(ops: Ops, size: int) -> None:
            await fill(ops, ids, payload(size))

        async def measure(ops: Ops, size: int) -> float:
            data = payload(size)
            return await throughput(
                ops, ids, data, tasks=1, seconds=plan.seconds, max_ops=plan.max_ops
            )

        groups = [
            ("memory", self._memory()),
            ("directory", self._directory(False)),
            ("redis", self._redis(("glide",))),
        ]
        return [
            (
                "payload",
                group,
                functools.partial(
                    self._run_curve, "payload", group, entries, plan.payloads, prepare, measure
                ),
            )
            for group, entries in groups
            if entries
        ]

    def concurrency(self) -> list[Step]:
        """Throughput with 1 to 256 tasks (1 KiB sessions)."""
        plan, data = self.plan, payload(KIB)
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
                self._run_curve, "concurrency", group, entries, plan.concurrency, prepare, measure
            )

        steps: list[Step] = [
            ("concurrency", "memory", curve("memory", self._memory())),
            ("concurrency", "directory", curve("directory", self._directory(False))),
        ]
        server = self.servers.redis
        if server is not None:
            redis_curve = curve("redis", self._redis(("glide", "coredis")))

            def redis() -> None:
                self._redis_benchmark("concurrency", plan.concurrency)
                redis_curve()
                job = {
                    "kind": "starsessions-redis",
                    "url": server.url,
                    "size": KIB,
                    "ids": plan.concurrency_ids,
                    "tasks": list(plan.concurrency),
                }
                self._asyncio("concurrency", "redis", STARSESSIONS_REDIS, job, BENCHMARK)

            steps.append(("concurrency", "redis + peers", redis))
        return steps

    def footprint(self) -> list[Step]:
        """Memory per stored session, for 100 B and 1 KiB payloads."""
        plan = self.plan
        count = plan.footprint_sessions
        base = "dict (ids and payloads only)"

        def in_process() -> None:
            for size in (100, KIB):
                for _ in range(plan.footprint_repeats):
                    for name in _footprint.IN_PROCESS:
                        if name.startswith("starsessions") and not _importable(
                            "starsessions.stores.memory"
                        ):
                            continue
                        value = _footprint.in_process(name, count, size)
                        role: Role = "baseline" if name == base else "subject"
                        if name.startswith("starsessions"):
                            role = "peer"
                        self.results.add(
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
        server = self.servers.redis
        if server is not None and self.servers.drivers:
            driver = self.servers.drivers[0]

            def redis() -> None:
                for size in (100, KIB):
                    for _ in range(plan.footprint_repeats):
                        value = _footprint.redis_used_memory(
                            server.url, server.port, driver, count, size
                        )
                        self.results.add(
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

    def lateness(self) -> list[Step]:
        """A 1 ms heartbeat's p99 and worst lateness while tasks write and read."""
        plan = self.plan
        ids, data = session_ids(plan.ids), payload(KIB)
        peers: list[Entry] = [
            (functools.partial(t.file_cache, kind, self.tmp, on_loop=True), "raw files fsync=off")
            for kind in ("cachelib", "diskcache")
        ]
        groups: list[tuple[str, list[Entry]]] = [
            ("memory", self._memory()),
            (
                "directory",
                [
                    *self._directory(True),
                    *self._directory(False),
                    (functools.partial(t.cache_over_directory, self.tmp), "raw files fsync=off"),
                    *peers,
                ],
            ),
            ("redis", self._redis(("glide", "coredis"), benchmark=False)),
        ]
        if self.servers.dsn is not None:
            dsn = self.servers.dsn
            groups.append(("postgres", [(lambda: t.postgres_storage(dsn, "bench_sessions"), None)]))

        def measure(group: str, entries: Sequence[Entry]) -> None:
            made = self._make("lateness", entries)

            async def main() -> None:
                if group == "memory":
                    for _ in range(plan.lateness_repeats):
                        p99, worst = await lateness(
                            None, ids, data, tasks=0, seconds=plan.lateness_seconds
                        )
                        self._late(group, IDLE, "reference", None, p99, worst)
                async with AsyncExitStack() as stack:
                    opened = []
                    for target, baseline in made:
                        try:
                            ops = await stack.enter_async_context(target.open())
                        except Exception as exc:
                            self.results.skip(f"lateness: {target.name}", repr(exc))
                            continue
                        await fill(ops, ids, data)
                        opened.append((target, baseline, ops))
                    for _ in range(plan.lateness_repeats):
                        for target, baseline, ops in opened:
                            p99, worst = await lateness(
                                ops,
                                ids,
                                data,
                                tasks=plan.lateness_tasks,
                                seconds=plan.lateness_seconds,
                            )
                            self._late(group, target.name, target.role, baseline, p99, worst)

            trio.run(main)

        return [
            ("lateness", group, functools.partial(measure, group, entries))
            for group, entries in groups
            if entries
        ]

    def _late(
        self, group: str, name: str, role: Role, baseline: str | None, p99: float, worst: float
    ) -> None:
        for section, value in (("lateness p99", p99), ("lateness max", worst)):
            self.results.add(
                section,
                group,
                name,
                value,
                role=role,
                unit="ms",
                baseline=baseline,
                better="lower",
            )

    def steps(self, sections: Sequence[str]) -> list[Step]:
        every = {
            "pairs": self.pairs,
            "sessions": self.sessions,
            "payload": self.payload_sizes,
            "concurrency": self.concurrency,
            "footprint": self.footprint,
            "lateness": self.lateness,
        }
        return [step for section in sections for step in every[section]()]

    def run(self, steps: Sequence[Step]) -> None:
        """Run every step; one that fails is recorded as skipped, and the rest go on."""
        for section, label, fn in steps:
            self.progress.step(f"{section}: {label}")
            start = time.perf_counter()
            try:
                fn()
            except Exception as exc:
                self.results.skip(f"{section}: {label}", f"failed: {exc!r}")
                self.progress.note(
                    "failed: " + "".join(traceback.format_exception_only(exc)).strip()
                )
            seconds = round(time.perf_counter() - start, 2)
            self.results.steps.append({"section": section, "step": label, "seconds": seconds})


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True
