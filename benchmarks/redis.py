"""RedisStorage with each driver against the cost floor of its own client, and a peer.

All on one private server (no persistence) unless ``--url`` names one. Prints:

* sequential ``write_bytes`` + ``read_bytes`` of a 1 KiB session (ttl 30 min) per driver,
  against the same client's raw ``SET ... PX`` + ``GET`` (goal: <= 1.10x);
* pairs per second with 64 concurrent tasks: RedisStorage with each driver on trio, the
  raw clients, and starsessions' ``RedisStore`` (redis-py) on asyncio, the peer (goal
  with glide: >= 2x the peer; the ``bench`` extra installs it);
* peak RSS above a baseline while one 64 MiB session streams in and out, each driver in a
  fresh process (goal: <= 8 MiB);
* ``redis-benchmark`` (or ``valkey-benchmark``) on the same server, if one is on PATH:
  the physical reference for SET + GET of 1 KiB, with 1 and 64 clients.

Run: ``python benchmarks/redis.py [--pairs N] [--repeats R] [--url redis://...]``
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named like redis-py's package (which the peer imports): keep its folder
# off the import path, and put the project's root on it for the tests' server helper.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import csv  # noqa: E402
import hashlib  # noqa: E402
import importlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import trio  # noqa: E402

from trio_sessions import RedisStorage, open_redis_storage  # noqa: E402

PAYLOAD = bytes(range(256)) * 4  # 1 KiB
TTL = 1800
SESSION_ID = "benchmark-session-0123456789abcdef0123456789abc"
DRIVERS = ("glide", "coredis")
STREAM_SIZE = 64 * 1024 * 1024
TASKS = 64


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.redis_servers import redis_server

    with redis_server() as private:
        yield private.url


@contextlib.asynccontextmanager
async def storage(url: str, driver: str, **kwargs: Any) -> AsyncIterator[RedisStorage]:
    async with open_redis_storage(url, driver=driver, prefix="bench:", **kwargs) as opened:  # type: ignore[arg-type]
        yield opened


def raw_pair(store: RedisStorage) -> Callable[[str], Awaitable[None]]:
    """The same client's SET ... PX + GET, without RedisStorage around it."""
    client: Any = store._driver._client  # type: ignore[attr-defined]
    key = store.key(SESSION_ID)
    if store.driver == "glide":
        glide = importlib.import_module("glide")
        expiry = glide.ExpirySet(glide.ExpiryType.MILLSEC, TTL * 1000)

        async def pair(k: str) -> None:
            await client.set(key + k.encode(), PAYLOAD, expiry=expiry)
            assert await client.get(key + k.encode()) == PAYLOAD

    else:

        async def pair(k: str) -> None:
            await client.set(key + k.encode(), PAYLOAD, px=TTL * 1000)
            assert await client.get(key + k.encode()) == PAYLOAD

    return pair


def storage_pair(store: RedisStorage) -> Callable[[str], Awaitable[None]]:
    async def pair(k: str) -> None:
        await store.write_bytes(SESSION_ID + k, PAYLOAD, ttl=TTL)
        assert await store.read_bytes(SESSION_ID + k) == PAYLOAD

    return pair


def sequential(url: str, driver: str, raw: bool, pairs: int) -> float:
    """Microseconds per pair, one task."""

    async def main() -> float:
        async with storage(url, driver) as store:
            pair = raw_pair(store) if raw else storage_pair(store)
            for _ in range(50):
                await pair("")
            start = time.perf_counter()
            for _ in range(pairs):
                await pair("")
            return (time.perf_counter() - start) / pairs * 1e6

    result: float = trio.run(main)
    return result


def concurrent(url: str, driver: str, raw: bool, pairs: int) -> float:
    """Pairs per second, 64 tasks each on its own session."""

    async def main() -> float:
        async with storage(url, driver) as store:
            pair = raw_pair(store) if raw else storage_pair(store)

            async def task(n: int) -> None:
                for _ in range(pairs):
                    await pair(f"-{n}")

            async with trio.open_nursery() as nursery:  # warm up: connections, scripts
                for n in range(TASKS):
                    nursery.start_soon(pair, f"-{n}")
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for n in range(TASKS):
                    nursery.start_soon(task, n)
            return TASKS * pairs / (time.perf_counter() - start)

    result: float = trio.run(main)
    return result


def starsessions_concurrent(url: str, pairs: int) -> float | None:
    """Pairs per second for starsessions' RedisStore on asyncio (None if not installed)."""
    try:
        stores = importlib.import_module("starsessions.stores.redis")
        redis_asyncio = importlib.import_module("redis.asyncio")
    except ImportError:
        return None

    async def main() -> float:
        connection = redis_asyncio.Redis.from_url(url)
        store = stores.RedisStore(connection=connection, prefix="bench-starsessions:")

        async def pair(n: int) -> None:
            sid = f"{SESSION_ID}-{n}"
            await store.write(sid, PAYLOAD, lifetime=TTL, ttl=TTL)
            assert await store.read(sid, lifetime=TTL) == PAYLOAD

        async def task(n: int) -> None:
            for _ in range(pairs):
                await pair(n)

        await asyncio.gather(*(pair(n) for n in range(TASKS)))
        start = time.perf_counter()
        await asyncio.gather(*(task(n) for n in range(TASKS)))
        elapsed = time.perf_counter() - start
        await connection.aclose()
        return TASKS * pairs / elapsed

    return asyncio.run(main())


# ------------------------------------------------------------------ streaming RSS


def current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_child(url: str, driver: str) -> None:
    """Stream 64 MiB in and out; print the peak RSS above the baseline (JSON)."""
    block = hashlib.sha256(b"block").digest() * 2048  # 64 KiB, reused for every piece
    expected = hashlib.sha256()
    for _ in range(STREAM_SIZE // len(block)):
        expected.update(block)

    async def main() -> dict[str, float]:
        peak = 0

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, current_rss())
                await trio.sleep(0.002)

        async def provider(stream: trio.abc.SendStream) -> None:
            for _ in range(STREAM_SIZE // len(block)):
                await stream.send_all(block)

        async def consumer(stream: trio.abc.ReceiveStream) -> str:
            digest = hashlib.sha256()
            while chunk := await stream.receive_some():
                digest.update(chunk)
            return digest.hexdigest()

        async with storage(url, driver, max_size=STREAM_SIZE) as store:
            sid = f"stream-{driver}"
            await store.write(sid, provider)  # warm up every code path once, then measure
            assert await store.read(sid, consumer) == expected.hexdigest()
            await store.invalidate(sid)
            baseline = current_rss()
            maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            figures: dict[str, float] = {"baseline_mib": baseline / 2**20}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample)
                peak = 0
                start = time.perf_counter()
                await store.write(sid, provider)
                figures["write_s"] = time.perf_counter() - start
                figures["write_peak_mib"] = (max(peak, current_rss()) - baseline) / 2**20
                peak = 0
                start = time.perf_counter()
                digest = await store.read(sid, consumer)
                figures["read_s"] = time.perf_counter() - start
                figures["read_peak_mib"] = (max(peak, current_rss()) - baseline) / 2**20
                nursery.cancel_scope.cancel()
            assert digest == expected.hexdigest(), "the streamed value came back different"
            await store.invalidate(sid)
            maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            figures["ru_maxrss_growth_mib"] = (maxrss_after - maxrss_before) / 1024
            return figures

    print(json.dumps(trio.run(main)))


def rss(url: str, driver: str) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--rss-child", driver, "--url", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    figures: dict[str, float] = json.loads(output.strip().splitlines()[-1])
    return figures


# -------------------------------------------------------------- redis-benchmark


def redis_benchmark(url: str, requests: int) -> dict[str, float] | None:
    binary = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if binary is None:
        return None
    parts = urllib.parse.urlsplit(url)
    figures = {}
    for clients in (1, TASKS):
        output = subprocess.run(
            [
                binary,
                "-h",
                parts.hostname or "127.0.0.1",
                "-p",
                str(parts.port or 6379),
                "-t",
                "set,get",
                "-d",
                "1024",
                "-n",
                str(requests),
                "-c",
                str(clients),
                "--csv",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        ).stdout
        rows = {
            row[0]: float(row[1]) for row in csv.reader(io.StringIO(output)) if row[0] != "test"
        }
        figures[f"SET rps c={clients}"] = rows["SET"]
        figures[f"GET rps c={clients}"] = rows["GET"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3000, help="sequential pairs per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--task-pairs", type=int, default=100, help="pairs per task (64 tasks)")
    parser.add_argument("--url", help="an existing server (default: start a private one)")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.url, args.rss_child)
        return
    with server(args.url) as url:
        print(f"server {url}; 1 KiB sessions, ttl {TTL} s; {args.repeats} repeats\n")
        runs: dict[str, list[float]] = {}
        for _ in range(args.repeats):  # interleaved, so drift affects every case alike
            for driver in DRIVERS:
                for raw in (True, False):
                    name = f"{driver} {'raw SET+GET' if raw else 'RedisStorage'}"
                    runs.setdefault(name, []).append(sequential(url, driver, raw, args.pairs))
        med = {name: statistics.median(values) for name, values in runs.items()}
        print(f"{'sequential pairs':<28}{'median us/pair':>16}{'min':>9}{'max':>9}")
        for name, values in runs.items():
            print(f"{name:<28}{med[name]:>16.1f}{min(values):>9.1f}{max(values):>9.1f}")
        for driver in DRIVERS:
            ratio = med[f"{driver} RedisStorage"] / med[f"{driver} raw SET+GET"]
            print(f"{driver}: RedisStorage / raw SET+GET = {ratio:.2f}x  (goal <= 1.10x)")

        print(f"\n{TASKS} tasks x {args.task_pairs} pairs{'':<8}{'pairs/s (median)':>18}")
        rates: dict[str, list[float]] = {}
        for _ in range(max(1, args.repeats // 2)):
            for driver in DRIVERS:
                for raw in (True, False):
                    name = f"{driver} {'raw SET+GET' if raw else 'RedisStorage'} (trio)"
                    rate = concurrent(url, driver, raw, args.task_pairs)
                    rates.setdefault(name, []).append(rate)
            peer = starsessions_concurrent(url, args.task_pairs)
            if peer is not None:
                rates.setdefault("starsessions RedisStore (asyncio)", []).append(peer)
        rate_med = {name: statistics.median(values) for name, values in rates.items()}
        for name, value in rate_med.items():
            print(f"{name:<40}{value:>12.0f}")
        peer_rate = rate_med.get("starsessions RedisStore (asyncio)")
        if peer_rate is None:
            print("starsessions is not installed: pip install -e '.[bench]'")
        else:
            for driver in DRIVERS:
                ratio = rate_med[f"{driver} RedisStorage (trio)"] / peer_rate
                goal = "  (goal >= 2x)" if driver == "glide" else ""
                print(f"{driver} RedisStorage / starsessions: {ratio:.2f}x{goal}")

        print(f"\nstreaming {STREAM_SIZE // 2**20} MiB in and out, fresh process per driver")
        for driver in DRIVERS:
            fig = rss(url, driver)
            print(
                f"{driver}: peak RSS above baseline {fig['write_peak_mib']:.1f} MiB writing "
                f"({fig['write_s']:.2f} s), {fig['read_peak_mib']:.1f} MiB reading "
                f"({fig['read_s']:.2f} s), ru_maxrss growth {fig['ru_maxrss_growth_mib']:.1f} MiB"
                f" (baseline {fig['baseline_mib']:.0f} MiB; goal <= 8 MiB)"
            )

        reference = redis_benchmark(url, 20 * args.pairs)
        if reference is None:
            print("\nno redis-benchmark or valkey-benchmark on PATH: no physical reference")
        else:
            print("\nredis-benchmark on the same server (1 KiB values):")
            for name, value in reference.items():
                print(f"  {name:<16}{value:>12.0f}")
            one = 1e6 / reference["SET rps c=1"] + 1e6 / reference["GET rps c=1"]
            many = 1 / (1 / reference[f"SET rps c={TASKS}"] + 1 / reference[f"GET rps c={TASKS}"])
            print(f"  => {one:.1f} us per SET+GET pair with 1 client, {many:.0f} pairs/s with 64")


if __name__ == "__main__":
    main()
