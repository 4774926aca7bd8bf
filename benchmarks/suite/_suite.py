"""How a run measures: candidates opened together, repeats interleaved, failures recorded."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import subprocess
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import trio

from trio_sessions.storages._redis_drivers import DriverName

from . import _asyncio_side, _servers
from . import _targets as t
from ._core import Ops, Progress, Results, Role, Target, throughput
from ._plan import KIB, Plan

#: A candidate and the name of the baseline its ratio is taken against.
Entry = tuple[Callable[[], Target], str | None]
Step = tuple[str, str, Callable[[], None]]  # section, label, what to run

BENCHMARK = "redis-benchmark (C client)"
ASYNCPG = "asyncpg on asyncio (same SQL)"
STARSESSIONS_REDIS = "starsessions RedisStore (redis-py, asyncio)"
IDLE = "idle loop (no load)"

#: The distribution to install for a module a candidate needs, where the names differ.
DISTRIBUTIONS = {"glide": "valkey-glide", "trio_asyncio": "trio-asyncio"}


def installed(*modules: str) -> bool:
    """Whether every top-level module named can be imported (without importing it)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in modules)
    except (ImportError, ValueError):
        return False


def importable(name: str) -> bool:
    """Whether *name* imports (a package that is installed but broken does not)."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def missing(error: ImportError) -> tuple[str, str]:
    """The missing package and why a candidate was skipped: how to install it."""
    module = (error.name or "").partition(".")[0]
    if not module:
        return "a package", f"not installed: {error}"
    distribution = DISTRIBUTIONS.get(module, module)
    return distribution, f"not installed: pip install {distribution}"


def payload(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def session_ids(count: int) -> list[str]:
    return [f"{n:011d}-0123456789abcdef0123456789abcdef" for n in range(count)]


@dataclass
class Servers:
    redis: _servers.RedisServer | None = None
    drivers: tuple[DriverName, ...] = ()
    dsn: str | None = None
    postgres_version: str | None = None


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

    def skip(self, what: str, why: str) -> None:
        """Record what was not measured and why; say so in the progress lines too."""
        self.results.skip(what, why)
        self.progress.note(f"skipped {what} ({why})")

    def make(self, section: str, entries: Sequence[Entry]) -> list[tuple[Target, str | None]]:
        made = []
        for make, baseline in entries:
            try:
                made.append((make(), baseline))
            except ImportError as exc:
                package, why = missing(exc)
                self.skip(f"{section}: {package}", why)
        return made

    def redis_entries(self, drivers: Sequence[DriverName], benchmark: bool = True) -> list[Entry]:
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

    def memory_entries(self) -> list[Entry]:
        return [(t.dict_baseline, None), (t.memory_storage, "dict + checkpoints")]

    def directory_entries(self, fsync: bool) -> list[Entry]:
        raw = functools.partial(t.raw_files, fsync, self.tmp)
        base = f"raw files fsync={'on' if fsync else 'off'}"
        return [(raw, None), (functools.partial(t.directory_storage, fsync, self.tmp), base)]

    # --------------------------------------------------------------- running

    async def open_all(
        self, stack: AsyncExitStack, section: str, made: Sequence[tuple[Target, str | None]]
    ) -> list[tuple[Target, str | None, Ops]]:
        """Open every candidate on *stack*; one that fails to open is recorded as skipped."""
        await trio.lowlevel.checkpoint()
        opened = []
        for target, baseline in made:
            try:
                ops = await stack.enter_async_context(target.open())
            except Exception as exc:
                self.skip(f"{section}: {target.name}", f"failed to open: {exc!r}")
                continue
            opened.append((target, baseline, ops))
        return opened

    def run_curve(
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
        made = self.make(section, entries)

        async def main() -> None:
            async with AsyncExitStack() as stack:
                opened = await self.open_all(stack, section, made)
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

    def throughput(self, ids: Sequence[str], data: bytes, tasks: int = 1) -> Any:
        plan = self.plan

        async def measure(ops: Ops, x: object) -> float:
            return await throughput(
                ops, ids, data, tasks=tasks, seconds=plan.seconds, max_ops=plan.max_ops
            )

        return measure

    def asyncio_peer(
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
        except ImportError as exc:
            self.skip(f"{section}: {name}", missing(exc)[1])
            return
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            self.skip(f"{section}: {name}", f"failed: {exc}")
            return
        for tasks, values in figures.items():
            x = None if section == "pairs" else float(tasks)
            for value in values:
                self.results.add(
                    section, group, name, value, role=role, unit="ops/s", x=x, baseline=baseline
                )

    def redis_benchmark(self, section: str, clients: Sequence[int]) -> None:
        server = self.servers.redis
        assert server is not None
        for c in clients:
            requests = self.plan.benchmark_requests // (4 if c < 16 else 1)
            for _ in range(self.plan.benchmark_repeats):
                rps = _servers.redis_benchmark(server.port, clients=c, requests=requests, size=KIB)
                if not rps:
                    self.skip(f"{section}: {BENCHMARK}", "redis-benchmark is not on PATH")
                    return
                value = 2 / (1 / rps["SET"] + 1 / rps["GET"])
                x = None if section == "pairs" else float(c)
                self.results.add(
                    section, "redis", BENCHMARK, value, role="baseline", unit="ops/s", x=x
                )

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
