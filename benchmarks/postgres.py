"""PostgresStorage and the asyncio bridge against asyncpg used natively on asyncio.

Prints microseconds per ``write_bytes`` + ``read_bytes`` pair of a 1 KiB session, run
sequentially and by 64 concurrent tasks, with ratios to baselines measured in the same
run on the same server:

* ``asyncpg native``: the same two SQL statements through an asyncpg pool of the same
  size on a plain asyncio loop (``asyncio.run`` in a child process that never imports
  trio-asyncio): what the bridge adds is the difference;
* ``asyncpg on trio-asyncio``: the same, but on trio-asyncio's loop inside ``trio.run``,
  with one crossing for the whole run: the part of the overhead that is the loop itself;
* ``DirectoryStorage`` and ``RedisStorage`` (when importable, with a private server)
  for scale.

It also measures one trio -> asyncio crossing (awaiting a no-op coroutine on the
trio-asyncio loop from trio) next to a trio checkpoint and an asyncio task round trip.

The PostgreSQL server is a private cluster (as in the tests: fsync and synchronous
commit off), unless ``--dsn`` names one. DirectoryStorage runs with ``fsync=False`` and
Redis without persistence, so no candidate pays for durability.

Run: ``python benchmarks/postgres.py [--pairs N] [--repeats R] [--dsn DSN]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import trio

from trio_sessions import DirectoryStorage, SessionStorage
from trio_sessions.asyncio import open_asyncio_storage
from trio_sessions.storages.postgres import open_postgres_storage
from trio_sessions.testing.servers import postgres_server

PAYLOAD = bytes(range(256)) * 4  # 1 KiB
TASKS = 64
POOL = 10
TABLE = "bench_sessions"
LOAD = f"SELECT data FROM {TABLE} WHERE id_hash = $1 AND (expires_at IS NULL OR expires_at > $2)"
STORE = (
    f"INSERT INTO {TABLE} (id_hash, data, expires_at) VALUES ($1, $2, $3) ON CONFLICT (id_hash) "
    "DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at"
)

StorageOpener = Callable[[], contextlib.AbstractAsyncContextManager[SessionStorage]]


# ------------------------------------------------------------------ storages on trio


async def storage_pairs(open_storage: StorageOpener, pairs: int, tasks: int) -> float:
    """Seconds for *pairs* write+read pairs spread over *tasks* tasks (after a warm-up)."""
    async with open_storage() as storage:

        async def worker(n: int, count: int) -> None:
            sid = f"bench-{n:03d}-0123456789abcdef0123456789abcdef"
            for _ in range(count):
                await storage.write_bytes(sid, PAYLOAD)
                if await storage.read_bytes(sid) != PAYLOAD:
                    raise AssertionError("wrong value")

        async with trio.open_nursery() as nursery:  # warm-up: connections, statements
            for n in range(tasks):
                nursery.start_soon(worker, n, 2)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for n in range(tasks):
                nursery.start_soon(worker, n, pairs // tasks)
        return time.perf_counter() - start


# --------------------------------------------------------------- asyncpg on asyncio


async def asyncpg_pairs(dsn: str, pairs: int, tasks: int) -> float:
    """The same SQL as PostgresStorage through an asyncpg pool of the same size."""
    import datetime
    import hashlib

    async def no_reset(connection: object) -> None:
        pass

    async with asyncpg.create_pool(dsn, min_size=1, max_size=POOL, reset=no_reset) as pool:

        async def worker(n: int, count: int) -> None:
            key = hashlib.sha256(f"native-{n:03d}".encode()).digest()
            for _ in range(count):
                await pool.execute(STORE, key, PAYLOAD, None)
                now = datetime.datetime.now(datetime.UTC)
                if await pool.fetchval(LOAD, key, now) != PAYLOAD:
                    raise AssertionError("wrong value")

        await asyncio.gather(*(worker(n, 2) for n in range(tasks)))
        start = time.perf_counter()
        await asyncio.gather(*(worker(n, pairs // tasks) for n in range(tasks)))
        return time.perf_counter() - start


async def asyncpg_on_trio_asyncio(dsn: str, pairs: int, tasks: int) -> float:
    import trio_asyncio

    async with trio_asyncio.open_loop() as loop:
        seconds: float = await loop.run_aio_coroutine(asyncpg_pairs(dsn, pairs, tasks))
        return seconds


# -------------------------------------------------------------------- the crossing


async def _noop() -> None:
    pass


async def trio_checkpoints(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await trio.lowlevel.checkpoint()
    return time.perf_counter() - start


async def asyncio_tasks(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await asyncio.ensure_future(_noop())
    return time.perf_counter() - start


async def crossings(n: int) -> float:
    import trio_asyncio

    async with trio_asyncio.open_loop() as loop:
        start = time.perf_counter()
        for _ in range(n):
            await loop.run_aio_coroutine(_noop())
        return time.perf_counter() - start


class AsyncioDict:
    """A dict behind asyncio coroutines: the bridge's cost without any I/O."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def load(self, session_id: str) -> bytes | None:
        return self.data.get(session_id)

    async def store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        self.data[session_id] = data

    async def delete(self, session_id: str) -> None:
        self.data.pop(session_id, None)


# ------------------------------------------------------------------------- running


@contextlib.contextmanager
def redis_url() -> Iterator[str | None]:
    """A private Redis/Valkey server's URL if the tree has RedisStorage and a server."""
    try:
        servers: Any = importlib.import_module("trio_sessions.testing.servers")
        importlib.import_module("trio_sessions.storages.redis")
        with servers.redis_server() as server:
            yield f"redis://127.0.0.1:{server.port}"
    except (ImportError, AttributeError, OSError, RuntimeError) as exc:
        print(f"RedisStorage not measured: {exc!r}")
        yield None


def run_trio(fn: Callable[..., Awaitable[float]], *args: Any) -> float:
    return trio.run(fn, *args)


def run_native(*args: object) -> float:
    """Seconds measured on plain asyncio, in a process that never imports trio-asyncio.

    Once imported, trio-asyncio patches asyncio process-wide (``asyncio.run`` would get
    one of its loops), so the baseline cannot run in this process.
    """
    command = [sys.executable, __file__, "--native", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    return float(done.stdout.strip().splitlines()[-1])


def native_main(kind: str, *args: str) -> None:
    if kind == "asyncpg":
        seconds = asyncio.run(asyncpg_pairs(args[0], int(args[1]), int(args[2])))
    else:
        seconds = asyncio.run(asyncio_tasks(int(args[0])))
    if "trio_asyncio" in sys.modules:
        raise AssertionError("the native baseline must run without trio-asyncio")
    print(seconds)


def main() -> None:
    if sys.argv[1:2] == ["--native"]:
        native_main(*sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2048, help="pairs per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crossings", type=int, default=20_000)
    parser.add_argument("--dsn", help="an existing server (default: a private cluster)")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        dsn = args.dsn or stack.enter_context(postgres_server()).dsn
        directory = stack.enter_context(tempfile.TemporaryDirectory())
        redis = stack.enter_context(redis_url())

        def postgres() -> Any:
            return open_postgres_storage(dsn, table=TABLE, max_connections=POOL)

        def files() -> Any:
            return DirectoryStorage(directory, fsync=False)

        def bridge_only() -> Any:
            return open_asyncio_storage(AsyncioDict())

        cases: dict[str, Callable[[int, int], float]] = {
            "asyncpg native (asyncio)": lambda p, t: run_native("asyncpg", dsn, p, t),
            "asyncpg on trio-asyncio": lambda p, t: run_trio(asyncpg_on_trio_asyncio, dsn, p, t),
            "PostgresStorage": lambda p, t: run_trio(storage_pairs, postgres, p, t),
            "DirectoryStorage": lambda p, t: run_trio(storage_pairs, files, p, t),
            "AsyncioStorage(dict)": lambda p, t: run_trio(storage_pairs, bridge_only, p, t),
        }
        if redis is not None:
            url = redis

            def redis_storage() -> Any:
                module: Any = importlib.import_module("trio_sessions.storages.redis")
                return module.open_redis_storage(url, driver="glide")

            cases["RedisStorage (glide)"] = lambda p, t: run_trio(
                storage_pairs, redis_storage, p, t
            )
        trio.run(_create_table, dsn)

        results: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.repeats):  # interleaved, so drift affects all alike
            for tasks in (1, TASKS):
                for name, case in cases.items():
                    seconds = case(args.pairs, tasks)
                    pairs = args.pairs // tasks * tasks
                    results.setdefault((name, tasks), []).append(seconds / pairs * 1e6)

        n = args.crossings
        cross: dict[str, list[float]] = {
            "trio checkpoint": [],
            "asyncio task round trip": [],
            "trio->asyncio crossing": [],
        }
        for _ in range(args.repeats):
            cross["trio checkpoint"].append(run_trio(trio_checkpoints, n) / n * 1e6)
            cross["asyncio task round trip"].append(run_native("tasks", n) / n * 1e6)
            cross["trio->asyncio crossing"].append(run_trio(crossings, n) / n * 1e6)

    print(
        f"\n1 KiB write_bytes + read_bytes pairs ({args.pairs} per run, median of {args.repeats})"
    )
    for tasks in (1, TASKS):
        base = statistics.median(results[("asyncpg native (asyncio)", tasks)])
        label = "sequential" if tasks == 1 else f"{tasks} tasks"
        print(f"\n{label:<28}{'us/pair':>10}{'pairs/s':>10}{'vs asyncpg native':>20}")
        for name in cases:
            us = statistics.median(results[(name, tasks)])
            print(f"{name:<28}{us:>10.1f}{1e6 / us:>10.0f}{us / base:>19.2f}x")
    print(f"\none call, {n} per run, median of {args.repeats}{'us/call':>24}{'vs checkpoint':>15}")
    base = statistics.median(cross["trio checkpoint"])
    for name, values in cross.items():
        us = statistics.median(values)
        print(f"{name:<52}{us:>10.2f}{us / base:>14.1f}x")


async def _create_table(dsn: str) -> None:
    async with open_postgres_storage(dsn, table=TABLE):
        pass


if __name__ == "__main__":
    main()
