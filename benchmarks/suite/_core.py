"""What every measurement shares: targets, workloads, figures and progress."""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import trio

Role = Literal["subject", "baseline", "peer", "reference"]
Write = Callable[[str, bytes], Awaitable[object]]
Read = Callable[[str], Awaitable[object]]

#: Expiry given with every write that takes one (a typical idle timeout).
TTL = 1800
#: The heartbeat whose lateness shows how freely the event loop runs.
HEARTBEAT = 0.001
#: The folder that holds the ``benchmarks`` package: where child processes start.
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Ops:
    """How one candidate writes and reads a session."""

    write: Write
    read: Read
    #: Optional fast way to store many sessions at once (used to fill large stores).
    bulk: Callable[[Sequence[str], bytes], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Target:
    """A candidate: one of ours, the baseline that bounds it, or a peer library."""

    name: str
    role: Role
    open: Callable[[], AbstractAsyncContextManager[Ops]]


@dataclass
class Figure:
    """One measured quantity: every repeat's value, the median and a ratio."""

    section: str
    group: str
    name: str
    role: Role
    unit: str
    x: float | None
    values: list[float] = field(default_factory=list)
    baseline: str | None = None
    better: Literal["higher", "lower"] = "higher"
    ratio: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def as_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "group": self.group,
            "name": self.name,
            "role": self.role,
            "unit": self.unit,
            "x": self.x,
            "values": self.values,
            "median": self.median,
            "min": min(self.values),
            "max": max(self.values),
            "repeats": len(self.values),
            "baseline": self.baseline,
            "ratio": self.ratio,
            "better": self.better,
        }


class Results:
    """Figures in the order they were first recorded, and what could not be measured."""

    def __init__(self) -> None:
        self.figures: dict[tuple[str, str, str, float | None], Figure] = {}
        self.skipped: list[dict[str, str]] = []
        self.steps: list[dict[str, Any]] = []

    def add(
        self,
        section: str,
        group: str,
        name: str,
        value: float,
        *,
        role: Role,
        unit: str,
        x: float | None = None,
        baseline: str | None = None,
        better: Literal["higher", "lower"] = "higher",
    ) -> None:
        key = (section, group, name, x)
        figure = self.figures.get(key)
        if figure is None:
            figure = self.figures[key] = Figure(
                section, group, name, role, unit, x, baseline=baseline, better=better
            )
        figure.values.append(value)

    def skip(self, what: str, why: str) -> None:
        self.skipped.append({"what": what, "why": why})

    def finish(self) -> list[Figure]:
        """Compute every ratio to its baseline's median at the same x."""
        for figure in self.figures.values():
            if figure.baseline is None:
                continue
            base = self.figures.get((figure.section, figure.group, figure.baseline, figure.x))
            if base is not None and base.median > 0:
                figure.ratio = figure.median / base.median
        return list(self.figures.values())


# ------------------------------------------------------------------ workloads


async def fill(ops: Ops, ids: Sequence[str], payload: bytes, tasks: int = 16) -> None:
    """Store *payload* under every id (in bulk if the candidate can)."""
    if ops.bulk is not None:
        await ops.bulk(ids, payload)
        return
    step = max(1, len(ids) // tasks)

    async def part(chunk: Sequence[str]) -> None:
        await trio.lowlevel.checkpoint()
        for session_id in chunk:
            await ops.write(session_id, payload)

    async with trio.open_nursery() as nursery:
        for start in range(0, len(ids), step):
            nursery.start_soon(part, ids[start : start + step])


async def throughput(
    ops: Ops,
    ids: Sequence[str],
    payload: bytes,
    *,
    tasks: int,
    seconds: float,
    max_ops: int,
    writes: bool = True,
) -> float:
    """Operations per second of *tasks* tasks picking random ids: a write then a read
    (or reads only), until *max_ops* operations or *seconds* have passed."""
    await trio.lowlevel.checkpoint()
    done = 0
    size = len(payload)
    deadline = time.perf_counter() + seconds

    async def worker(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        await trio.lowlevel.checkpoint()
        # At least one pair in all: a stall of the whole process (a busy machine) longer
        # than the slice lowers the rate instead of leaving nothing to measure.
        while done < max_ops and (not done or time.perf_counter() < deadline):
            session_id = ids[rng.randrange(len(ids))]
            if writes:
                await ops.write(session_id, payload)
                done += 1
            value = await ops.read(session_id)
            done += 1
            if not isinstance(value, bytes) or len(value) != size:
                raise AssertionError(f"read back {type(value).__name__}, not the payload")

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for seed in range(tasks):
            nursery.start_soon(worker, seed)
    return done / (time.perf_counter() - start)


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    """A consumer that reads the stream to EOF."""
    parts = []
    while chunk := await stream.receive_some():
        parts.append(chunk)
    return b"".join(parts)


def starsessions_ops(store: Any) -> tuple[Write, Read]:
    """Write and read through a starsessions store (on trio or asyncio: the store's API
    is the same for every backend), with the ttl every candidate gets."""

    async def write(session_id: str, data: bytes) -> None:
        await store.write(session_id, data, lifetime=TTL, ttl=TTL)

    async def read(session_id: str) -> bytes:
        value: bytes = await store.read(session_id, lifetime=TTL)
        return value

    return write, read


def percentile(values: Sequence[float], p: float) -> float:
    """The *p*-th percentile of *values*: the sample below which *p* % of them lie."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def lateness(
    ops: Ops | None, ids: Sequence[str], payload: bytes, *, tasks: int, seconds: float
) -> tuple[float, float]:
    """p99 and worst lateness (ms) of a 1 ms heartbeat while *tasks* tasks write and read
    through *ops* (or while nothing else runs)."""
    late = await heartbeat_lateness(ops, ids, payload, tasks=tasks, seconds=seconds)
    return percentile(late, 99), max(late)


async def heartbeat_lateness(
    ops: Ops | None, ids: Sequence[str], payload: bytes, *, tasks: int, seconds: float
) -> list[float]:
    """Every lateness (ms) of a 1 ms heartbeat while *tasks* tasks write and read random
    ids through *ops* (or while nothing else runs), for *seconds*."""
    late: list[float] = []
    stop = trio.Event()

    async def hammer(seed: int) -> None:
        assert ops is not None
        rng = random.Random(seed)
        await trio.lowlevel.checkpoint()
        for _ in range(10_000_000):  # bounded in count as well as in time
            if stop.is_set():
                return
            session_id = ids[rng.randrange(len(ids))]
            await ops.write(session_id, payload)
            await ops.read(session_id)

    async with trio.open_nursery() as nursery:
        if ops is not None:
            for seed in range(tasks):
                nursery.start_soon(hammer, seed)
        deadline = time.perf_counter() + seconds
        await trio.sleep(HEARTBEAT)  # let the load start
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await trio.sleep(HEARTBEAT)
            late.append((time.perf_counter() - start - HEARTBEAT) * 1000)
        stop.set()
    return late


# -------------------------------------------------------------- child processes


def run_child(module: str, *args: str, what: str) -> str:
    """Run ``python -m MODULE ARGS`` in a fresh process; return the last line it printed.

    Raises `RuntimeError` saying that *what* failed, with the child's last error line.
    """
    command = [sys.executable, "-m", module, *args]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, cwd=ROOT
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{what} failed: {tail[0]}")
    return done.stdout.strip().splitlines()[-1]


# ------------------------------------------------------------------- progress


class Progress:
    """One line per step on stderr: a bar, the step count, the time so far."""

    def __init__(self, total: int, *, quiet: bool = False, width: int = 24) -> None:
        self.total = total
        self.done = 0
        self.quiet = quiet
        self.width = width
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def step(self, label: str) -> None:
        self.done += 1
        if self.quiet:
            return
        filled = self.width * (self.done - 1) // max(1, self.total)
        bar = "#" * filled + "." * (self.width - filled)
        minutes, seconds = divmod(int(self.elapsed()), 60)
        print(
            f"[{bar}] {self.done:>2}/{self.total} {minutes:d}:{seconds:02d} {label}",
            file=sys.stderr,
            flush=True,
        )

    def note(self, text: str) -> None:
        if not self.quiet:
            print(f"    {text}", file=sys.stderr, flush=True)
