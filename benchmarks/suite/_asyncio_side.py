"""Peers and baselines that run on plain asyncio, measured in a child process.

The child never imports trio-asyncio (which patches asyncio process-wide once imported),
so asyncio runs as it would in an asyncio application. It reads one job as JSON from
its argument and prints ``{"tasks": [ops/s per repeat], ...}`` as JSON.

* ``starsessions-redis``: starsessions' RedisStore (redis-py) on a private server;
* ``asyncpg``: the two SQL statements PostgresStorage runs, through an asyncpg pool of
  the same size (``pool`` connections at most, ``min_pool`` kept open), on the table
  PostgresStorage makes (``schema``: the SQL that makes it, if it may not exist yet).

With ``warmup``, each task count runs once unmeasured before the repeats (connections
made, statements prepared), as the trio side warms up.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import importlib
import importlib.util
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ._core import Read, Write, run_child, starsessions_ops


async def throughput(
    write: Write,
    read: Read,
    ids: Sequence[str],
    payload: bytes,
    *,
    tasks: int,
    seconds: float,
    max_ops: int,
) -> float:
    """As `benchmarks.suite._core.throughput`, on asyncio."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        await asyncio.sleep(0)
        # At least one pair in all: a stall of the whole process (a busy machine) longer
        # than the slice lowers the rate instead of leaving nothing to measure.
        while done < max_ops and (not done or time.perf_counter() < deadline):
            session_id = ids[rng.randrange(len(ids))]
            await write(session_id, payload)
            value = await read(session_id)
            done += 2
            if not isinstance(value, bytes) or len(value) != len(payload):
                raise AssertionError("read back something else than the payload")

    start = time.perf_counter()
    await asyncio.gather(*(worker(seed) for seed in range(tasks)))
    return done / (time.perf_counter() - start)


async def _run(job: dict[str, Any]) -> dict[str, list[float]]:
    await asyncio.sleep(0)
    payload = bytes(range(256)) * (job["size"] // 256) + bytes(job["size"] % 256)
    ids = [f"bench-{n:05d}-0123456789abcdef0123456789abcdef" for n in range(job["ids"])]
    ttl = 1800
    close: Callable[[], Awaitable[object]]
    if job["kind"] == "starsessions-redis":
        redis_asyncio: Any = importlib.import_module("redis.asyncio")
        stores: Any = importlib.import_module("starsessions.stores.redis")
        # A blocking pool of 64 connections: the default pool refuses more than it holds.
        pool = redis_asyncio.BlockingConnectionPool.from_url(job["url"], max_connections=64)
        connection = redis_asyncio.Redis(connection_pool=pool)
        write, read = starsessions_ops(
            stores.RedisStore(connection=connection, prefix="starsessions:")
        )
        close = connection.aclose
    else:
        import asyncpg

        table = job["table"]
        load = (
            f'SELECT data, version FROM "{table}" '
            "WHERE id_hash = $1 AND (expires_at IS NULL OR expires_at > $2)"
        )
        save = (
            f'INSERT INTO "{table}" (id_hash, data, expires_at, version) '
            "VALUES ($1, $2, $3, $4) ON CONFLICT (id_hash) DO UPDATE SET data = excluded.data, "
            "expires_at = excluded.expires_at, version = excluded.version"
        )

        async def no_reset(connection: object) -> None:
            pass

        pool = await asyncpg.create_pool(
            job["dsn"],
            min_size=job.get("min_pool", 1),
            max_size=job.get("pool", 10),
            reset=no_reset,
        )
        if "schema" in job:
            await pool.execute(job["schema"])

        def digest(session_id: str) -> bytes:
            return hashlib.sha256(session_id.encode()).digest()

        async def write(session_id: str, data: bytes) -> None:
            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=ttl)
            version = random.getrandbits(63) or 1
            await pool.execute(save, digest(session_id), data, expires, version)

        async def read(session_id: str) -> bytes:
            now = datetime.datetime.now(datetime.UTC)
            row = await pool.fetchrow(load, digest(session_id), now)
            value: bytes = row[0]
            return value

        close = pool.close
    try:
        for session_id in ids:
            await write(session_id, payload)

        async def measure(tasks: int) -> float:
            return await throughput(
                write,
                read,
                ids,
                payload,
                tasks=tasks,
                seconds=job["seconds"],
                max_ops=job["max_ops"],
            )

        figures: dict[str, list[float]] = {str(tasks): [] for tasks in job["tasks"]}
        if job.get("warmup"):
            for tasks in job["tasks"]:
                await measure(tasks)
        for _ in range(job["repeats"]):
            for tasks in job["tasks"]:
                figures[str(tasks)].append(await measure(tasks))
        return figures
    finally:
        await close()


#: What each kind of job imports.
NEEDS = {"starsessions-redis": ("redis", "starsessions"), "asyncpg": ("asyncpg",)}


def measure(job: dict[str, Any]) -> dict[str, list[float]]:
    """Run *job* in a child process; ops/s per repeat for each task count.

    Raises `ImportError` if a package it needs is missing, `RuntimeError` if it failed.
    """
    for name in NEEDS[job["kind"]]:
        if importlib.util.find_spec(name) is None:
            raise ImportError(f"No module named {name!r}", name=name)
    result: dict[str, list[float]] = json.loads(
        run_child(__name__, json.dumps(job), what=job["kind"])
    )
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_run(json.loads(sys.argv[1])))))
