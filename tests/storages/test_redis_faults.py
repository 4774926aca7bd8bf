"""RedisStorage under server crashes and under cancellation, with both drivers.

* The server (``appendonly yes``, ``appendfsync always``) is SIGKILLed and restarted while
  32 tasks read and write: every operation returns the right value or raises
  `StorageError`; no acknowledged write is lost; every task is served again soon after
  the server is back, without reopening the storage.
* Reads and writes are cancelled at random moments while other tasks keep going: no
  reply reaches the wrong caller, no partial value is ever read, no temporary key stays.
* The server dies while a batch of commands is in flight: every caller in it gets
  `StorageError`, and the same storage serves them all once the server is back.

Operations include conditional writes (read the version, write if it is still the same).

Counts go up with ``TRIO_SESSIONS_REDIS_RESTARTS`` and ``TRIO_SESSIONS_REDIS_CANCELS``.
Each test prints its figures (``pytest -s`` shows them).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from trio_sessions import SessionNotFound, StorageError, WriteConflict
from trio_sessions.storages._redis import (
    CHUNK_SIZE,
    TEMPORARY_TTL_MS,
    RedisStorage,
    open_redis_storage,
)
from trio_sessions.testing import read_all
from trio_sessions.testing.pytest_plugin import require_module
from trio_sessions.testing.servers import RedisServer, redis_server

pytestmark = pytest.mark.slow  # servers killed and restarted under load

RESTARTS = int(os.environ.get("TRIO_SESSIONS_REDIS_RESTARTS", "10"))
CANCELS = int(os.environ.get("TRIO_SESSIONS_REDIS_CANCELS", "1000"))
MISSING = None


@pytest.fixture(params=["glide", "coredis"])
def redis_driver(request: pytest.FixtureRequest) -> str:
    driver: str = request.param
    require_module("glide" if driver == "glide" else "coredis")
    return driver


def make_value(task: int, key: int, seq: int, size: int) -> bytes:
    """A value that names its owner and checks itself: header, then a derived body."""
    header = f"{task}:{key}:{seq}:{size}|".encode()
    seed = hashlib.sha256(header).digest()
    body = (seed * (size // len(seed) + 1))[:size]
    return header + body


def check_value(value: bytes, task: int, key: int) -> str | None:
    """Why *value* cannot have been written whole to (task, key), or ``None``."""
    header, bar, _ = value.partition(b"|")
    try:
        owner_task, owner_key, seq, size = map(int, header.split(b":"))
    except ValueError:
        return "unreadable value"
    if not bar or (owner_task, owner_key) != (task, key):
        return "another key's value"
    if value != make_value(task, key, seq, size):
        return "partial or corrupted value"
    return None


@dataclass
class Key:
    """What a key may hold: the last acknowledged state, plus unacknowledged attempts."""

    task: int
    index: int
    sid: str
    confirmed: bytes | None = MISSING
    unsure: list[bytes | None] = field(default_factory=list)

    def allowed(self, value: bytes | None) -> bool:
        return value == self.confirmed or value in self.unsure

    def acknowledged(self, value: bytes | None) -> None:
        self.confirmed, self.unsure = value, []


@dataclass
class Tally:
    ops: int = 0
    errors: int = 0
    cancelled: int = 0
    conflicts: int = 0
    wrong: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def provider(value: bytes) -> Callable[[trio.abc.SendStream], Awaitable[None]]:
    async def send(stream: trio.abc.SendStream) -> None:
        for start in range(0, len(value), 20_000):
            await stream.send_all(value[start : start + 20_000])

    return send


def judge_read(key: Key, value: bytes | None, tally: Tally) -> None:
    if value is not None and (problem := check_value(value, key.task, key.index)):
        tally.wrong.append(f"{key.sid}: {problem}")
    elif not key.allowed(value):
        # A valid value of this key, but older than an acknowledged write (or gone).
        tally.lost.append(f"{key.sid}: read {describe(value)}, expected {describe(key.confirmed)}")


def describe(value: bytes | None) -> str:
    return "nothing" if value is None else value.partition(b"|")[0].decode()


async def one_operation(
    storage: RedisStorage, key: Key, rng: random.Random, seq: int, tally: Tally
) -> None:
    """Run one random operation on *key*, record what it may have done, judge reads."""
    roll = rng.random()
    attempt: bytes | None
    if roll < 0.1:
        # A conditional write: only this task writes this key, so it conflicts only if a
        # write of this task that failed or was cancelled was applied after all.
        try:
            found = await storage.read_versioned(key.sid)
        except SessionNotFound:
            found_data, version = MISSING, None
        else:
            found_data, version = found.data, found.version
        judge_read(key, found_data, tally)
        attempt = make_value(key.task, key.index, seq, rng.choice([50, 700, 3000]))
        key.unsure.append(attempt)
        try:
            await storage.write_bytes_if(key.sid, attempt, version=version)
        except WriteConflict:
            tally.conflicts += 1
            return
        key.acknowledged(attempt)
    elif roll < 0.45:
        size = rng.choice([50, 700, 3000]) if rng.random() < 0.85 else 2 * CHUNK_SIZE + 99
        attempt = make_value(key.task, key.index, seq, size)
        key.unsure.append(attempt)  # in case it fails or is cancelled half-way
        if size > CHUNK_SIZE or rng.random() < 0.3:
            await storage.write(key.sid, provider(attempt))
        else:
            await storage.write_bytes(key.sid, attempt)
        key.acknowledged(attempt)
    elif roll < 0.5:
        key.unsure.append(MISSING)
        await storage.invalidate(key.sid)
        key.acknowledged(MISSING)
    else:
        value: bytes | None
        try:
            if rng.random() < 0.5:
                value = await storage.read_bytes(key.sid)
            else:
                value = await storage.read(key.sid, read_all)
        except SessionNotFound:
            value = MISSING
        judge_read(key, value, tally)


async def read_retrying(storage: RedisStorage, sid: str) -> bytes | None:
    """Read *sid*, retrying while the server is not back yet."""
    with trio.fail_after(20):
        while True:
            try:
                return await storage.read_bytes(sid)
            except SessionNotFound:
                return MISSING
            except StorageError:
                await trio.sleep(0.01)


# ---------------------------------------------------------------- server crashes


async def test_server_killed_and_restarted_under_load(redis_driver: str, redis_binary: str) -> None:
    tasks, keys_per_task = 32, 2
    rng = random.Random(f"faults-{redis_driver}")
    tally = Tally()
    resumed_first: list[float] = []
    resumed_all: list[float] = []
    with redis_server(redis_binary, appendonly="yes", appendfsync="always") as server:
        keys = [
            [Key(t, k, f"fault-{t}-{k}-{rng.getrandbits(32):08x}") for k in range(keys_per_task)]
            for t in range(tasks)
        ]
        # After each restart: when each task first completed an operation again.
        served: list[float | None] = [0.0] * tasks
        all_served = trio.Event()
        stop = trio.Event()

        async def worker(task: int, storage: RedisStorage) -> None:
            task_rng = random.Random(rng.random())
            seq = 0
            while not stop.is_set() and seq < 200_000:
                seq += 1
                key = task_rng.choice(keys[task])
                tally.ops += 1
                try:
                    await one_operation(storage, key, task_rng, seq, tally)
                except StorageError:
                    tally.errors += 1
                    await trio.sleep(0.01)  # the server is away: do not spin
                except Exception as exc:
                    tally.unexpected.append(repr(exc))
                    await trio.sleep(0.01)
                else:
                    if served[task] is None:
                        served[task] = trio.current_time()
                        if None not in served:
                            all_served.set()

        async def crash_and_restart(server: RedisServer) -> None:
            nonlocal all_served
            for _ in range(RESTARTS):
                await trio.sleep(rng.uniform(0.15, 0.3))
                await trio.to_thread.run_sync(server.kill)
                await trio.sleep(rng.uniform(0.05, 1.0))  # the outage
                await trio.to_thread.run_sync(server.start)
                back = trio.current_time()
                all_served = trio.Event()
                served[:] = [None] * tasks
                with trio.fail_after(20):  # it must come back by itself
                    await all_served.wait()
                times = [t - back for t in served if t is not None]
                resumed_first.append(min(times))
                resumed_all.append(max(times))
            await trio.sleep(0.2)
            stop.set()

        with trio.fail_after(120 + 10 * RESTARTS):
            async with open_redis_storage(server.url, driver=redis_driver) as storage:  # type: ignore[arg-type]
                async with trio.open_nursery() as nursery:
                    for task in range(tasks):
                        nursery.start_soon(worker, task, storage)
                    nursery.start_soon(crash_and_restart, server)
                # Finally every key holds what was acknowledged last (or a later attempt).
                await trio.to_thread.run_sync(server.kill)
                await trio.to_thread.run_sync(server.start)
                for key in (key for row in keys for key in row):
                    judge_read(key, await read_retrying(storage, key.sid), tally)
    print(
        f"\n{redis_driver}: {server.starts - 1} restarts, {tally.ops} operations, "
        f"{tally.errors} StorageErrors, {len(tally.wrong)} wrong values, "
        f"{len(tally.lost)} acknowledged writes lost, {tally.conflicts} conflicts; "
        f"first task served again "
        f"{max(resumed_first):.3f} s (max) after the server's return, all {tasks} tasks "
        f"{max(resumed_all):.3f} s (max), {sum(resumed_all) / len(resumed_all):.3f} s (mean)"
    )
    assert not tally.unexpected, tally.unexpected[:5]
    assert not tally.wrong, tally.wrong[:5]
    assert not tally.lost, tally.lost[:5]
    assert tally.errors > 0  # the crashes were noticed, as StorageError
    assert server.starts == RESTARTS + 2


# ------------------------------------------------------------------ cancellation


async def test_random_cancellation_never_mixes_replies(
    redis_driver: str, redis_binary: str
) -> None:
    tasks = 16
    rng = random.Random(f"cancel-{redis_driver}")
    tally = Tally()
    options: dict[str, Any] = {"request_timeout": 10_000} if redis_driver == "glide" else {}
    with redis_server(redis_binary) as server:
        keys = [Key(t, 0, f"cancel-{t}-{rng.getrandbits(32):08x}") for t in range(tasks)]

        async def worker(key: Key, storage: RedisStorage) -> None:
            task_rng = random.Random(rng.random())
            seq = 0
            while tally.cancelled < CANCELS and seq < 50 * CANCELS:
                seq += 1
                tally.ops += 1
                # Most operations take 0.2-2 ms here: cut many of them off half-way.
                with trio.move_on_after(
                    task_rng.choice([1e-4, 3e-4, 6e-4, 1e-3, 2e-3, 1])
                ) as scope:
                    try:
                        await one_operation(storage, key, task_rng, seq, tally)
                    except StorageError as exc:
                        tally.unexpected.append(repr(exc))
                if scope.cancelled_caught:
                    tally.cancelled += 1

        with trio.fail_after(120):
            async with open_redis_storage(server.url, driver=redis_driver, **options) as storage:  # type: ignore[arg-type]
                async with trio.open_nursery() as nursery:
                    for key in keys:
                        nursery.start_soon(worker, key, storage)
                for key in keys:  # the client still serves everyone
                    try:
                        value: bytes | None = await storage.read_bytes(key.sid)
                    except SessionNotFound:
                        value = MISSING
                    judge_read(key, value, tally)
                temporary = await trio.to_thread.run_sync(server.command, "KEYS", "*:[rw]:*")
                assert isinstance(temporary, list)
                ttls = [await trio.to_thread.run_sync(server.command, "PTTL", k) for k in temporary]
    print(
        f"\n{redis_driver}: {tally.ops} operations, {tally.cancelled} cancelled, "
        f"{len(tally.wrong)} wrong or partial values, {len(tally.lost)} lost writes, "
        f"{tally.conflicts} conflicts, "
        f"{len(tally.unexpected)} errors, {len(temporary)} temporary keys left (expiring)"
    )
    assert tally.cancelled >= CANCELS
    assert not tally.unexpected, tally.unexpected[:5]
    assert not tally.wrong, tally.wrong[:5]
    assert not tally.lost, tally.lost[:5]
    # Cancelled streaming writes and reads delete their temporary keys; one whose last
    # command was still in flight on another connection may reappear, with its short ttl.
    assert all(isinstance(ttl, int) and 0 < ttl <= TEMPORARY_TTL_MS for ttl in ttls), ttls


# ------------------------------------------------------------- a batch in flight


async def test_server_killed_while_a_batch_is_in_flight(
    redis_driver: str, redis_binary: str
) -> None:
    """The server stops answering, then dies: every caller waiting in the batch gets
    `StorageError`; after the restart the same storage serves every one of them."""
    tasks = 40
    options: dict[str, Any] = {"request_timeout": 10_000} if redis_driver == "glide" else {}
    outcomes: dict[int, str] = {}
    with (
        redis_server(redis_binary, appendonly="yes", appendfsync="always") as server,
        trio.fail_after(120),
    ):
        async with open_redis_storage(server.url, driver=redis_driver, **options) as storage:  # type: ignore[arg-type]
            for n in range(tasks):
                await storage.write_bytes(f"batch-{n}", b"%d" % n)
            # The server takes the commands but answers none until it dies.
            await trio.to_thread.run_sync(server.command, "CLIENT", "PAUSE", "60000", "ALL")
            before = storage.statistics()

            async def caller(n: int) -> None:
                sid = f"batch-{n}"
                try:
                    if n % 2:
                        await storage.read_bytes(sid)
                    else:
                        found = await storage.read_versioned(sid)
                        await storage.write_bytes_if(sid, found.data, version=found.version)
                except StorageError as exc:
                    outcomes[n] = "StorageError" if exc.__cause__ else "StorageError, no cause"
                else:
                    outcomes[n] = "answered"

            async with trio.open_nursery() as nursery:
                for n in range(tasks):
                    nursery.start_soon(caller, n)
                await trio.testing.wait_all_tasks_blocked(0.2)  # all sent, none answered
                in_flight = storage.statistics()
                await trio.to_thread.run_sync(server.kill)
            await trio.to_thread.run_sync(server.start)
            for n in range(tasks):  # the same storage, without reopening anything
                assert await read_retrying(storage, f"batch-{n}") == b"%d" % n
            for n in range(tasks):
                found = await storage.read_versioned(f"batch-{n}")
                await storage.write_bytes_if(f"batch-{n}", b"again", version=found.version)
                assert await storage.read_bytes(f"batch-{n}") == b"again"
    failed = sum(result == "StorageError" for result in outcomes.values())
    batched = in_flight.batched - before.batched
    print(
        f"\n{redis_driver}: {tasks} callers waiting ({batched} of them in "
        f"{in_flight.batches - before.batches} batches) when the server died: {failed} "
        f"StorageErrors, {tasks - failed} answered; all {tasks} served after the restart"
    )
    assert failed == tasks
    # With glide the first went alone, from its caller, and the others waited together;
    # coredis sends even a lone command from a task of its own, so all went together.
    assert batched == (tasks if redis_driver == "coredis" else tasks - 1)
