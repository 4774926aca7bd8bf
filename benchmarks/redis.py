"""RedisStorage with each driver against the cost floor of its own client, and a peer.

All on one private server (no persistence) unless ``--url`` names one. Prints:

* sequential ``write_bytes`` + ``read_bytes`` of a 1 KiB session (ttl 30 min) per driver,
  against the same client's raw ``SET ... PX`` + ``GET``, one task (goal with glide:
  RedisStorage's rate >= 0.9x the raw client's);
* pairs per second with 64 concurrent tasks: RedisStorage with each driver on trio, with
  automatic pipelining (the default) and without, the raw clients sending one command at
  a time, and starsessions' ``RedisStore`` (redis-py) on asyncio, the peer (goals with
  glide: >= 1.8x raw glide and >= 3x the peer; the ``bench`` extra installs the peer),
  with the batch sizes the pipelined runs used;
* ``--cpu``: the CPU time a web request's storage work costs (a versioned read and a
  conditional write: ``GET`` + ``EVALSHA``), per pair, with 1 and 8 tasks: the raw client
  sending those two commands against RedisStorage pipelined and with ``pipeline=False``;
  the process's CPU (glide's own threads included) and the event loop thread's (this is
  the floor a web server on this client cannot go below; ``benchmarks.web`` measures the
  whole request);
* random cancellations of 64 tasks' operations (``--cancels``, 12,000 by default), each
  task checking that every reply it gets is its own (goal: 0 wrong values);
* peak RSS above a baseline while one 64 MiB session streams in and out, each driver in a
  fresh process (goal: <= 8 MiB);
* ``redis-benchmark`` (or ``valkey-benchmark``) on the same server, if one is on PATH:
  the physical reference for SET + GET of 1 KiB, with 1 and 64 clients.

Every ratio compares figures of the same run; cases are interleaved, so that drift on a
shared machine affects them alike, and the medians of the repeats are compared.

Run from the repository's root, as a module (run as a file, this file would stand in for
redis-py's package, which the peer imports):
``python -m benchmarks.redis [--pairs N] [--repeats R] [--cancels N] [--url ...]``
(``--cpu`` runs only the CPU section)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib
import json
import os
import random
import resource
import statistics
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import trio

from trio_sessions import RedisStorage, WriteConflict, open_redis_storage
from trio_sessions.storages._redis import RedisStorageStatistics
from trio_sessions.testing.servers import redis_server

from .suite import _servers
from .suite._core import run_child

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
    with redis_server() as private:
        yield private.url


@contextlib.asynccontextmanager
async def storage(url: str, driver: str, **kwargs: Any) -> AsyncIterator[RedisStorage]:
    if driver == "glide":
        # glide's default (250 ms) fails a run on a busy machine; the figures are the same.
        kwargs.setdefault("request_timeout", 10_000)
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


def sequential(url: str, driver: str, pairs: int, block: int = 100) -> dict[str, list[float]]:
    """Microseconds per pair, one task: RedisStorage and the raw client over the same
    connection, in alternating blocks of *block* pairs (so drift hits both alike)."""

    async def main() -> dict[str, list[float]]:
        async with storage(url, driver) as store:
            pairs_of = {"raw SET+GET": raw_pair(store), "RedisStorage": storage_pair(store)}
            for pair in pairs_of.values():
                for _ in range(50):
                    await pair("")
            blocks: dict[str, list[float]] = {name: [] for name in pairs_of}
            for _ in range(max(1, pairs // block)):
                for name, pair in pairs_of.items():
                    start = time.perf_counter()
                    for _ in range(block):
                        await pair("")
                    blocks[name].append((time.perf_counter() - start) / block * 1e6)
            assert store.statistics().batches == 0  # one task: every command went alone
            return blocks

    result: dict[str, list[float]] = trio.run(main)
    return result


def concurrent(
    url: str, driver: str, rounds: int, pairs: int, peer: bool
) -> tuple[dict[str, list[float]], RedisStorageStatistics]:
    """Pairs per second, 64 tasks each on its own session, in interleaved rounds over one
    client: the raw client one command at a time, RedisStorage pipelined (the default)
    and with ``pipeline=False``, and (with *peer*) starsessions on asyncio, which runs in
    a worker thread while this loop waits. Also the pipelined storage's statistics."""

    async def main() -> tuple[dict[str, list[float]], RedisStorageStatistics]:
        async with storage(url, driver) as pipelined:
            client = pipelined._driver._client  # type: ignore[attr-defined]
            unpipelined = RedisStorage(client, prefix="bench:", pipeline=False)
            cases = {
                f"{driver} raw, one command at a time": raw_pair(pipelined),
                f"{driver} RedisStorage, pipelined": storage_pair(pipelined),
                f"{driver} RedisStorage, pipeline=False": storage_pair(unpipelined),
            }

            async def run(pair: Callable[[str], Awaitable[None]], count: int) -> float:
                async def task(n: int) -> None:
                    for _ in range(count):
                        await pair(f"-{n}")

                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for n in range(TASKS):
                        nursery.start_soon(task, n)
                return TASKS * count / (time.perf_counter() - start)

            for pair in cases.values():  # warm up: connections, scripts
                await run(pair, 2)
            rates: dict[str, list[float]] = {}
            before = pipelined.statistics()
            for _ in range(rounds):
                for name, pair in cases.items():
                    rates.setdefault(name, []).append(await run(pair, pairs))
                if peer:
                    rate = await trio.to_thread.run_sync(starsessions_concurrent, url, pairs)
                    if rate is not None:
                        rates.setdefault("starsessions RedisStore (asyncio)", []).append(rate)
            return rates, since(before, pipelined.statistics())

    result: tuple[dict[str, list[float]], RedisStorageStatistics] = trio.run(main)
    return result


def since(before: RedisStorageStatistics, after: RedisStorageStatistics) -> RedisStorageStatistics:
    """What the storage did between two snapshots of its statistics."""
    old = dict(before.batch_sizes)
    sizes = tuple(
        (size, count - old.get(size, 0))
        for size, count in after.batch_sizes
        if count > old.get(size, 0)
    )
    return RedisStorageStatistics(
        direct=after.direct - before.direct,
        batches=after.batches - before.batches,
        batched=after.batched - before.batched,
        batch_sizes=sizes,
        withdrawn=after.withdrawn - before.withdrawn,
        dropped=after.dropped - before.dropped,
    )


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median ratio of figures measured side by side (the same block or round)."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def describe_batches(stats: RedisStorageStatistics) -> str:
    """Batch sizes in a few buckets: how many commands went alone, in 2-7, 8-31, 32+."""
    if not stats.commands:
        return "no commands"
    buckets = {"2-7": 0, "8-31": 0, "32+": 0}
    for size, count in stats.batch_sizes:
        bucket = "2-7" if size < 8 else "8-31" if size < 32 else "32+"
        buckets[bucket] += size * count
    shares = ", ".join(
        f"{name}: {100 * commands / stats.commands:.0f}%" for name, commands in buckets.items()
    )
    largest = max((size for size, _ in stats.batch_sizes), default=0)
    return (
        f"{stats.batches} batches, mean {stats.mean_batch:.1f}, largest {largest}; share of "
        f"commands sent alone: {100 * stats.direct / stats.commands:.0f}%, in batches of {shares}"
    )


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


# ------------------------------------------------------------------ CPU per pair

CPU_TASKS = (1, 8)
CPU_CASES = ("raw GET + EVALSHA", "RedisStorage, pipelined", "RedisStorage, pipeline=False")


def raw_versioned_pair(store: RedisStorage) -> Callable[[str], Awaitable[None]]:
    """The same client's ``GET`` + ``EVALSHA`` of the conditional-write script on the
    storage's own keys: the two commands a web request's read and save send, without
    RedisStorage around them."""
    from trio_sessions.storages._redis import _STORE_IF

    client: Any = store._driver._client  # type: ignore[attr-defined]
    keys: dict[str, bytes] = {}
    value = b"\xfe\x01" + os.urandom(8) + PAYLOAD
    px = str(TTL * 1000).encode()
    glide = store.driver == "glide"
    script = importlib.import_module("glide").Script(_STORE_IF.source) if glide else None

    async def pair(k: str) -> None:
        key = keys.get(k)
        if key is None:
            key = keys[k] = store.key(SESSION_ID + k)
        stored = await client.get(key)
        if glide:
            await client.invoke_script(script, keys=[key], args=[stored[:10], value, px])
        else:
            await client.evalsha(_STORE_IF.sha1, [key], [stored[:10], value, px])

    return pair


def versioned_pair(store: RedisStorage) -> Callable[[str], Awaitable[None]]:
    """What a web request does to its session: a versioned read, a conditional write."""

    async def pair(k: str) -> None:
        found = await store.read_versioned(SESSION_ID + k)
        await store.write_bytes_if(SESSION_ID + k, PAYLOAD, version=found.version, ttl=TTL)

    return pair


def cpu_per_pair(url: str, driver: str, rounds: int, pairs: int) -> dict[str, list[float]]:
    """CPU microseconds per pair, ``"NAME xT process"`` and ``"NAME xT loop"`` for T tasks
    in `CPU_TASKS`, in interleaved rounds of *pairs* pairs."""

    async def main() -> dict[str, list[float]]:
        async with storage(url, driver) as pipelined:
            client = pipelined._driver._client  # type: ignore[attr-defined]
            unpipelined = RedisStorage(client, prefix="bench:", pipeline=False)
            cases = {
                "raw GET + EVALSHA": raw_versioned_pair(pipelined),
                "RedisStorage, pipelined": versioned_pair(pipelined),
                "RedisStorage, pipeline=False": versioned_pair(unpipelined),
            }
            for tasks in CPU_TASKS:
                for n in range(tasks):
                    await pipelined.write_bytes(f"{SESSION_ID}-{n}", PAYLOAD, ttl=TTL)

            async def run(
                pair: Callable[[str], Awaitable[None]], tasks: int
            ) -> tuple[float, float]:
                count = max(1, pairs // tasks)

                async def task(n: int) -> None:
                    for _ in range(count):
                        await pair(f"-{n}")

                process, loop = time.process_time(), time.thread_time()
                async with trio.open_nursery() as nursery:
                    for n in range(tasks):
                        nursery.start_soon(task, n)
                done = tasks * count
                return (
                    (time.process_time() - process) / done * 1e6,
                    (time.thread_time() - loop) / done * 1e6,
                )

            for tasks in CPU_TASKS:  # warm up: connections, scripts
                for pair in cases.values():
                    await run(pair, tasks)
            found: dict[str, list[float]] = {}
            for _ in range(rounds):
                for tasks in CPU_TASKS:
                    for name, pair in cases.items():
                        process, loop = await run(pair, tasks)
                        found.setdefault(f"{name} x{tasks} process", []).append(process)
                        found.setdefault(f"{name} x{tasks} loop", []).append(loop)
            return found

    result: dict[str, list[float]] = trio.run(main)
    return result


def print_cpu(url: str, rounds: int, pairs: int) -> None:
    print(
        f"CPU per pair (read_versioned + write_bytes_if, or the raw GET + EVALSHA), "
        f"{pairs} pairs a round, {rounds} rounds; process = all threads, loop = the "
        "event loop's thread"
    )
    print(f"{'':<44}{'process us':>12}{'loop us':>10}")
    for driver in DRIVERS:
        found = cpu_per_pair(url, driver, rounds, pairs)
        for tasks in CPU_TASKS:
            for name in (
                "raw GET + EVALSHA",
                "RedisStorage, pipelined",
                "RedisStorage, pipeline=False",
            ):
                process = statistics.median(found[f"{name} x{tasks} process"])
                loop = statistics.median(found[f"{name} x{tasks} loop"])
                label = f"{driver} {name}, {tasks} task{'s' if tasks > 1 else ''}"
                print(f"{label:<44}{process:>12.1f}{loop:>10.1f}")


# ------------------------------------------------------------------ cancellation


def cancellations(url: str, driver: str, goal: int) -> dict[str, Any]:
    """64 tasks, each on its own session, cancelled at random moments until *goal*
    operations were cut off; every reply that does arrive must be the task's own."""
    deadlines = [0.0, 1e-5, 5e-5, 1e-4, 3e-4, 1e-3, 3e-3]

    async def main() -> dict[str, Any]:
        counts = {"cancelled": 0, "completed": 0, "wrong": 0, "conflicts": 0}
        async with storage(url, driver) as store:
            before = store.statistics()

            async def task(n: int) -> None:
                rng = random.Random(n)
                sid, mine = f"{SESSION_ID}-c{n}", PAYLOAD + b"%d" % n
                await store.write_bytes(sid, mine, ttl=TTL)
                while counts["cancelled"] < goal:
                    with trio.CancelScope() as scope:
                        if rng.random() < 0.6:
                            scope.deadline = trio.current_time() + rng.choice(deadlines)
                        roll = rng.random()
                        if roll < 0.35:
                            value = await store.read_bytes(sid)
                        elif roll < 0.6:
                            value = (await store.read_versioned(sid)).data
                        elif roll < 0.85:
                            await store.write_bytes(sid, mine, ttl=TTL)
                            value = mine
                        else:
                            version = (await store.read_versioned(sid)).version
                            try:
                                await store.write_bytes_if(sid, mine, version=version, ttl=TTL)
                            except WriteConflict:
                                counts["conflicts"] += 1
                            value = mine
                        counts["completed"] += 1
                        if value != mine:
                            counts["wrong"] += 1
                    if scope.cancelled_caught:
                        counts["cancelled"] += 1

            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for n in range(TASKS):
                    nursery.start_soon(task, n)
            elapsed = time.perf_counter() - start
            for n in range(TASKS):  # everyone is still served, with their own values
                if await store.read_bytes(f"{SESSION_ID}-c{n}") != PAYLOAD + b"%d" % n:
                    counts["wrong"] += 1
            return {**counts, "seconds": elapsed, "stats": since(before, store.statistics())}

    result: dict[str, Any] = trio.run(main)
    return result


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
    output = run_child("benchmarks.redis", "--rss-child", driver, "--url", url, what="rss")
    figures: dict[str, float] = json.loads(output)
    return figures


# -------------------------------------------------------------- redis-benchmark


def redis_benchmark(url: str, requests: int) -> dict[str, float] | None:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    figures = {}
    for clients in (1, TASKS):
        rps = _servers.redis_benchmark(
            port, host=host, clients=clients, requests=requests, size=len(PAYLOAD)
        )
        if not rps:
            return None
        figures[f"SET rps c={clients}"] = rps["SET"]
        figures[f"GET rps c={clients}"] = rps["GET"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000, help="sequential pairs per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--task-pairs", type=int, default=100, help="pairs per task (64 tasks)")
    parser.add_argument("--cancels", type=int, default=12_000, help="cancelled operations")
    parser.add_argument("--no-rss", action="store_true", help="skip the 64 MiB streaming runs")
    parser.add_argument("--url", help="an existing server (default: start a private one)")
    parser.add_argument("--cpu", action="store_true", help="only the CPU per pair section")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.url, args.rss_child)
        return
    if args.cpu:
        with server(args.url) as url:
            print_cpu(url, args.repeats, args.pairs)
        return
    with server(args.url) as url:
        print(f"server {url}; 1 KiB sessions, ttl {TTL} s; {args.repeats} repeats\n")
        runs: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            for driver in DRIVERS:
                for name, blocks in sequential(url, driver, args.pairs).items():
                    runs.setdefault(f"{driver} {name}", []).extend(blocks)
        med = {name: statistics.median(values) for name, values in runs.items()}
        print(f"{'sequential pairs, 1 task':<28}{'median us/pair':>16}{'min':>9}{'max':>9}")
        for name, values in runs.items():
            print(f"{name:<28}{med[name]:>16.1f}{min(values):>9.1f}{max(values):>9.1f}")
        for driver in DRIVERS:
            ratio = med[f"{driver} raw SET+GET"] / med[f"{driver} RedisStorage"]
            paired = paired_ratio(runs[f"{driver} raw SET+GET"], runs[f"{driver} RedisStorage"])
            goal = "  (goal >= 0.9x)" if driver == "glide" else ""
            print(
                f"{driver}: RedisStorage's rate / raw SET+GET's = {ratio:.2f}x of the medians, "
                f"{paired:.2f}x block by block (median){goal}"
            )

        print(f"\n{TASKS} tasks x {args.task_pairs} pairs{'':<21}{'pairs/s (median)':>18}")
        rates: dict[str, list[float]] = {}
        batches: dict[str, RedisStorageStatistics] = {}
        for driver in DRIVERS:
            found, batches[driver] = concurrent(
                url, driver, args.repeats, args.task_pairs, peer=driver == DRIVERS[0]
            )
            rates.update(found)
        rate_med = {name: statistics.median(values) for name, values in rates.items()}
        for name, value in rate_med.items():
            spread = f"{min(rates[name]):.0f}-{max(rates[name]):.0f}"
            print(f"{name:<48}{value:>10.0f}   ({spread})")
        peer_rate = rate_med.get("starsessions RedisStore (asyncio)")
        for driver in DRIVERS:
            mine = rate_med[f"{driver} RedisStorage, pipelined"]
            raw_rate = rate_med[f"{driver} raw, one command at a time"]
            unbatched = rate_med[f"{driver} RedisStorage, pipeline=False"]
            goal = "  (goal >= 1.8x)" if driver == "glide" else ""
            paired = paired_ratio(
                rates[f"{driver} RedisStorage, pipelined"],
                rates[f"{driver} raw, one command at a time"],
            )
            print(
                f"{driver}: RedisStorage / raw one at a time = {mine / raw_rate:.2f}x of the "
                f"medians, {paired:.2f}x round by round (median){goal}"
            )
            print(f"{driver}: pipelined / pipeline=False = {mine / unbatched:.2f}x")
            if peer_rate is not None:
                goal = "  (goal >= 3x)" if driver == "glide" else ""
                print(f"{driver}: RedisStorage / starsessions = {mine / peer_rate:.2f}x{goal}")
            print(f"{driver} batches: {describe_batches(batches[driver])}")
        if peer_rate is None:
            print('starsessions is not installed: pip install -e ".[bench]"')

        print(f"\nrandom cancellations, {TASKS} tasks, each checking its replies")
        for driver in DRIVERS:
            fig = cancellations(url, driver, args.cancels)
            stats = fig["stats"]
            print(
                f"{driver}: {fig['cancelled']} cancelled, {fig['completed']} completed, "
                f"{fig['wrong']} wrong values (goal: 0) in {fig['seconds']:.1f} s; "
                f"{stats.withdrawn} commands withdrawn before sending, {stats.dropped} "
                f"replies dropped; {describe_batches(stats)}"
            )

        if not args.no_rss:
            print(f"\nstreaming {STREAM_SIZE // 2**20} MiB in and out, fresh process per driver")
            for driver in DRIVERS:
                fig = rss(url, driver)
                print(
                    f"{driver}: peak RSS above baseline {fig['write_peak_mib']:.1f} MiB writing "
                    f"({fig['write_s']:.2f} s), {fig['read_peak_mib']:.1f} MiB reading "
                    f"({fig['read_s']:.2f} s), ru_maxrss growth "
                    f"{fig['ru_maxrss_growth_mib']:.1f} MiB (baseline "
                    f"{fig['baseline_mib']:.0f} MiB; goal <= 8 MiB)"
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

        print()
        print_cpu(url, args.repeats, args.pairs)


if __name__ == "__main__":
    main()
