"""PostgresStorage (libpq driven by trio) against asyncpg on plain asyncio.

Everything runs against one private PostgreSQL cluster (fsync and synchronous commit
off, as in the tests) unless ``--dsn`` names a server. Prints:

* **pairs**: microseconds per ``write_bytes`` + ``read_bytes`` pair of a 1 KiB session,
  one task at a time and with 64 concurrent tasks, and the client's CPU time per pair,
  for ``PostgresStorage`` and for the baseline: the same two statements on the same row
  shape (the upsert with its version, the select with its expiry test, the SHA-256 of
  the id computed per call) through an asyncpg pool of the same size (10) on plain
  asyncio, in a child process. Cases are interleaved and the medians of the repeats
  compared. Targets: sequential time ÷ baseline ≤ 0.85, 64-task throughput ÷ baseline
  ≥ 1.5. ``--bridge`` adds asyncpg on trio-asyncio's loop (one crossing for the whole
  run): what the asyncio bridge would cost the same driver.
* **rss**: the growth of this process's resident memory over 10,000 requests to a
  Quart-Trio app (in-process test client) whose route reads and writes a session in
  ``PostgresStorage``, one request in ten cancelled by a random deadline inside the
  route; measured after 1,000 warm-up requests. Target ≤ 20 MiB.
* **cancellations**: 16 tasks each write and read their own session with recognisable
  values under random deadlines until 10,000 calls were cancelled; a wrong reply (a
  value another task wrote, or an older one than the last write that completed) is
  counted, and must be 0. Also how late a cancelled call returned after its deadline.

Run from the repository's root:
``python -m benchmarks.postgres [--pairs N] [--repeats R] [--requests N] [--cancels N]
[--dsn DSN] [--bridge] [--only pairs|rss|cancellations]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from trio_sessions import SessionNotFound, open_postgres_storage

PAYLOAD = bytes(range(256)) * 4  # 1 KiB
TASKS = 64
POOL = 10
TABLE = "bench_sessions"
LOAD = (
    f'SELECT data, version FROM "{TABLE}" '
    "WHERE id_hash = $1 AND (expires_at IS NULL OR expires_at > $2)"
)
STORE = (
    f'INSERT INTO "{TABLE}" AS s (id_hash, data, expires_at, version) VALUES ($1, $2, $3, $4) '
    "ON CONFLICT (id_hash) DO UPDATE SET data = excluded.data, "
    "expires_at = excluded.expires_at, version = excluded.version"
)
ROOT = Path(__file__).resolve().parent.parent


def session_id(n: int) -> str:
    return f"bench-{n:03d}-0123456789abcdef0123456789abcdef"


# ------------------------------------------------------------------------ pairs


async def storage_pairs(dsn: str, pairs: int, tasks: int) -> tuple[float, float]:
    """Wall and CPU seconds for *pairs* pairs over *tasks* tasks (after a warm-up)."""
    async with open_postgres_storage(dsn, table=TABLE, max_connections=POOL) as storage:

        async def worker(n: int, count: int) -> None:
            sid = session_id(n)
            for _ in range(count):
                await storage.write_bytes(sid, PAYLOAD)
                if await storage.read_bytes(sid) != PAYLOAD:
                    raise AssertionError("wrong value")

        async with trio.open_nursery() as nursery:  # connections, prepared statements
            for n in range(tasks):
                nursery.start_soon(worker, n, 2)
        wall, cpu = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for n in range(tasks):
                nursery.start_soon(worker, n, pairs // tasks)
        return time.perf_counter() - wall, time.process_time() - cpu


async def asyncpg_pairs(dsn: str, pairs: int, tasks: int) -> tuple[float, float]:
    """The same two statements through an asyncpg pool (on whatever loop runs this)."""
    import asyncpg  # type: ignore[import-not-found, unused-ignore]

    async def no_reset(connection: object) -> None:
        pass  # the statements leave no session state: skip asyncpg's reset query

    async with asyncpg.create_pool(dsn, min_size=1, max_size=POOL, reset=no_reset) as pool:

        async def worker(n: int, count: int) -> None:
            sid = session_id(n)
            for _ in range(count):
                key = hashlib.sha256(sid.encode()).digest()
                version = secrets.randbelow(2**63 - 1) + 1
                await pool.execute(STORE, key, PAYLOAD, None, version)
                key = hashlib.sha256(sid.encode()).digest()
                row = await pool.fetchrow(LOAD, key, datetime.now(UTC))
                if row is None or row[0] != PAYLOAD:
                    raise AssertionError("wrong value")

        await asyncio.gather(*(worker(n, 2) for n in range(tasks)))
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(n, pairs // tasks) for n in range(tasks)))
        return time.perf_counter() - wall, time.process_time() - cpu


async def asyncpg_on_trio_asyncio(dsn: str, pairs: int, tasks: int) -> tuple[float, float]:
    import trio_asyncio  # type: ignore[import-not-found, unused-ignore]

    async with trio_asyncio.open_loop() as loop:
        seconds: tuple[float, float] = await loop.run_aio_coroutine(
            asyncpg_pairs(dsn, pairs, tasks)
        )
        return seconds


def run_native(dsn: str, pairs: int, tasks: int) -> tuple[float, float]:
    """asyncpg on plain asyncio, in a child process that never imports trio-asyncio."""
    command = [sys.executable, "-m", "benchmarks.postgres", "--native", dsn, str(pairs)]
    done = subprocess.run(
        [*command, str(tasks)], cwd=ROOT, capture_output=True, text=True, check=True, timeout=900
    )
    wall, cpu = json.loads(done.stdout.strip().splitlines()[-1])
    return float(wall), float(cpu)


def pairs_section(dsn: str, pairs: int, repeats: int, bridge: bool) -> dict[str, Any]:
    cases: dict[str, Callable[[int], tuple[float, float]]] = {
        "asyncpg on asyncio (baseline)": lambda t: run_native(dsn, pairs, t),
        "PostgresStorage": lambda t: trio.run(storage_pairs, dsn, pairs, t),
    }
    if bridge:
        cases["asyncpg on trio-asyncio"] = lambda t: trio.run(
            asyncpg_on_trio_asyncio, dsn, pairs, t
        )
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(repeats):  # interleaved, so that drift affects every case alike
        for tasks in (1, TASKS):
            for name, case in cases.items():
                wall, cpu = case(tasks)
                done = pairs // tasks * tasks
                results.setdefault((name, tasks), []).append((wall / done, cpu / done))
    print(f"\n1 KiB write_bytes + read_bytes pairs ({pairs} per run, median of {repeats})")
    report: dict[str, Any] = {}
    for tasks in (1, TASKS):
        label = "sequential" if tasks == 1 else f"{tasks} tasks"
        print(f"\n{label:<32}{'us/pair':>10}{'pairs/s':>10}{'client CPU us':>15}{'vs base':>9}")
        base = statistics.median(wall for wall, _ in results[(next(iter(cases)), tasks)])
        for name in cases:
            wall = statistics.median(w for w, _ in results[(name, tasks)])
            cpu = statistics.median(c for _, c in results[(name, tasks)])
            print(f"{name:<32}{wall * 1e6:>10.0f}{1 / wall:>10.0f}{cpu * 1e6:>15.0f}", end="")
            print(f"{wall / base:>8.2f}x")
            report[f"{name} {label}"] = {"us_per_pair": wall * 1e6, "cpu_us": cpu * 1e6}
    ours, base_name = "PostgresStorage", next(iter(cases))
    sequential = (
        report[f"{ours} sequential"]["us_per_pair"]
        / report[f"{base_name} sequential"]["us_per_pair"]
    )
    throughput = (
        report[f"{base_name} {TASKS} tasks"]["us_per_pair"]
        / report[f"{ours} {TASKS} tasks"]["us_per_pair"]
    )
    print(f"\nsequential time / baseline: {sequential:.2f} (target <= 0.85)")
    print(f"{TASKS}-task throughput / baseline: {throughput:.2f} (target >= 1.5)")
    return {"sequential_ratio": sequential, "throughput_ratio": throughput, **report}


# -------------------------------------------------------------------------- rss


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


async def rss_run(dsn: str, requests: int) -> dict[str, float]:
    from quart_trio import QuartTrio

    app = QuartTrio(__name__)
    rng = random.Random(1)

    async with open_postgres_storage(dsn, table=TABLE, max_connections=POOL) as storage:

        @app.route("/<int:n>")
        async def hit(n: int) -> str:
            sid = session_id(n % 500)
            deadline = rng.uniform(0, 0.002) if n % 10 == 0 else float("inf")
            with trio.move_on_after(deadline):
                try:
                    data = await storage.read_bytes(sid)
                except SessionNotFound:
                    data = b""
                await storage.write_bytes(sid, PAYLOAD + data[:8], ttl=1800)
            return "ok"

        client = app.test_client()

        async def run(count: int, start: int) -> None:
            async def worker(first: int) -> None:
                for n in range(first, start + count, 16):
                    response = await client.get(f"/{n}")
                    if response.status_code != 200:
                        raise AssertionError(response.status_code)

            async with trio.open_nursery() as nursery:
                for k in range(16):
                    nursery.start_soon(worker, start + k)

        await run(1000, 0)
        gc.collect()
        before = rss_mib()
        wall = time.perf_counter()
        await run(requests, 1000)
        wall = time.perf_counter() - wall
        gc.collect()
        after = rss_mib()
        stats = storage.statistics()
    growth = after - before
    print(f"\nRSS over {requests} Quart-Trio requests (16 at a time, 1 in 10 cancelled)")
    print(f"  before {before:.1f} MiB, after {after:.1f} MiB: growth {growth:.1f} MiB")
    print(f"  (target <= 20 MiB); {requests / wall:.0f} requests/s; pool {stats}")
    return {"rss_before_mib": before, "rss_after_mib": after, "rss_growth_mib": growth}


# ---------------------------------------------------------------- cancellations


async def cancellations(dsn: str, target: int) -> dict[str, float]:
    cancelled = completed = wrong = 0
    late: list[float] = []
    async with open_postgres_storage(dsn, table="bench_cancels", max_connections=4) as storage:

        async def client(n: int) -> None:
            nonlocal cancelled, completed, wrong
            rng = random.Random(n)
            sid = f"cancel-client-{n}"
            possible: set[bytes | None] = {None}
            seq = 0
            while cancelled < target:
                seq += 1
                value = f"{n}:{seq}".encode()
                delay = rng.uniform(0, 0.004) if rng.random() < 0.6 else float("inf")
                with trio.move_on_after(delay) as scope:
                    if seq % 2:
                        possible.add(value)  # a cancelled write may or may not happen
                        await storage.write_bytes(sid, value)
                        possible = {value}
                    else:
                        try:
                            got: bytes | None = await storage.read_bytes(sid)
                        except SessionNotFound:
                            got = None
                        if got not in possible:
                            wrong += 1
                        possible = {got}
                if scope.cancelled_caught:
                    cancelled += 1
                    late.append(trio.current_time() - scope.deadline)
                else:
                    completed += 1

        wall = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for n in range(16):
                nursery.start_soon(client, n)
        wall = time.perf_counter() - wall
        stats = storage.statistics()
    late.sort()
    p99, worst = late[int(len(late) * 0.99)] * 1e3, late[-1] * 1e3
    print(f"\n{cancelled} cancelled calls, {completed} completed, in {wall:.1f} s")
    print(f"  wrong replies: {wrong} (must be 0)")
    print(f"  a cancelled call returned {p99:.1f} ms after its deadline (p99), {worst:.1f} max")
    print(f"  pool: {stats}")
    return {"cancelled": cancelled, "wrong": wrong, "late_p99_ms": p99, "late_max_ms": worst}


# ---------------------------------------------------------------------- running


async def _create_table(dsn: str) -> None:
    for table in (TABLE, "bench_cancels"):
        async with open_postgres_storage(dsn, table=table):
            pass


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[str]:
    if dsn is not None:
        yield dsn
        return
    from trio_sessions.testing.servers import postgres_server

    with postgres_server() as private:
        yield private.dsn


def main() -> None:
    if sys.argv[1:2] == ["--native"]:
        dsn, pairs, tasks = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        native = asyncio.run(asyncpg_pairs(dsn, pairs, tasks))
        if "trio_asyncio" in sys.modules:
            raise AssertionError("the baseline must run without trio-asyncio")
        print(json.dumps(native))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4096, help="pairs per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10_000, help="for the RSS figure")
    parser.add_argument("--cancels", type=int, default=10_000)
    parser.add_argument("--dsn", help="an existing server (default: a private cluster)")
    parser.add_argument("--bridge", action="store_true", help="add asyncpg on trio-asyncio")
    parser.add_argument("--only", choices=("pairs", "rss", "cancellations"), action="append")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    sections = args.only or ["pairs", "rss", "cancellations"]
    figures: dict[str, Any] = {}
    with server(args.dsn) as dsn:
        trio.run(_create_table, dsn)
        if "pairs" in sections:
            figures["pairs"] = pairs_section(dsn, args.pairs, args.repeats, args.bridge)
        if "rss" in sections:
            figures["rss"] = trio.run(rss_run, dsn, args.requests)
        if "cancellations" in sections:
            figures["cancellations"] = trio.run(cancellations, dsn, args.cancels)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
