"""What RedisStorage adds to the contract: hashed keys, ttls on every key, temporary keys
that never outlive their use, sliding expiry, snapshot reads, and its two ways to start.

One private server serves the module; each test uses its own prefix.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import outcome
import pytest
import trio
import trio.testing

from trio_sessions import (
    InvalidSessionId,
    SessionNotFound,
    StorageError,
    Versioned,
    WriteConflict,
)
from trio_sessions.storages._redis import (
    CHUNK_SIZE,
    HEADER_SIZE,
    MAGIC,
    RedisStorage,
    RedisStorageStatistics,
    open_redis_storage,
)
from trio_sessions.storages._redis_drivers import AutoPipeline, Command
from trio_sessions.testing import read_all
from trio_sessions.testing.pytest_plugin import require_module
from trio_sessions.testing.servers import RedisServer, free_port

DRIVERS = ["glide", "coredis"]
OPTIONS: dict[str, dict[str, Any]] = {"glide": {"request_timeout": 10_000}, "coredis": {}}
BIG = bytes(range(256)) * (3 * CHUNK_SIZE // 256 + 7)  # several chunks


@pytest.fixture(params=DRIVERS)
def redis_driver(request: pytest.FixtureRequest) -> str:
    driver: str = request.param
    require_module("glide" if driver == "glide" else "coredis")
    return driver


@asynccontextmanager
async def opened(server: RedisServer, driver: str, **kwargs: Any) -> AsyncIterator[RedisStorage]:
    prefix = kwargs.pop("prefix", f"test-{secrets.token_hex(4)}:")
    async with open_redis_storage(
        server.url,
        driver=driver,  # type: ignore[arg-type]
        prefix=prefix,
        **OPTIONS[driver],
        **kwargs,
    ) as storage:
        yield storage


def provider_of(value: bytes) -> Callable[[trio.abc.SendStream], Awaitable[None]]:
    async def send(stream: trio.abc.SendStream) -> None:
        for start in range(0, len(value), 30_000):
            await stream.send_all(value[start : start + 30_000])

    return send


async def keys(server: RedisServer, pattern: str) -> list[bytes]:
    reply = await trio.to_thread.run_sync(server.command, "KEYS", pattern)
    assert isinstance(reply, list)
    return sorted(reply)


async def pttl(server: RedisServer, key: bytes) -> int:
    reply = await trio.to_thread.run_sync(server.command, "PTTL", key)
    assert isinstance(reply, int)
    return reply


async def test_keys_hide_ids_and_every_write_sets_its_ttl(
    redis_single: RedisServer, redis_driver: str
) -> None:
    with trio.fail_after(30):
        async with opened(redis_single, redis_driver, prefix="hide:") as storage:
            sid = "visible-session-id-" + secrets.token_hex(8)
            await storage.write_bytes(sid, b"small", ttl=30)
            assert await keys(redis_single, "*visible-session-id*") == []
            (key,) = await keys(redis_single, "hide:*")
            assert key == storage.key(sid)
            assert key.startswith(b"hide:{")
            assert key.endswith(b"}")
            assert 0 < await pttl(redis_single, key) <= 30_000

            async def provider(stream: trio.abc.SendStream) -> None:
                for start in range(0, len(BIG), 10_000):
                    await stream.send_all(BIG[start : start + 10_000])

            await storage.write(sid, provider, ttl=20)  # streamed through a temporary key
            assert await storage.read_bytes(sid) == BIG
            assert await keys(redis_single, "hide:*") == [key]
            assert 0 < await pttl(redis_single, key) <= 20_000
            await storage.write(sid, provider)  # no ttl: the rename drops the temporary one
            assert await pttl(redis_single, key) == -1
            await storage.write_bytes(sid, b"again", ttl=5)
            assert 0 < await pttl(redis_single, key) <= 5_000
            await storage.invalidate(sid)
            assert await keys(redis_single, "hide:*") == []


async def test_failed_or_abandoned_writes_leave_no_temporary_keys(
    redis_single: RedisServer, redis_driver: str
) -> None:
    with trio.fail_after(30):
        async with opened(redis_single, redis_driver) as storage:
            prefix = storage.key("x")[: storage.key("x").index(b"{")].decode()
            sid = "abandoned"
            await storage.write_bytes(sid, b"old")
            halfway = trio.Event()
            release = trio.Event()

            class Failed(Exception):
                pass

            async def failing(stream: trio.abc.SendStream) -> None:
                await stream.send_all(BIG[: 2 * CHUNK_SIZE + 1])
                await stream.send_all(BIG[2 * CHUNK_SIZE + 1 : 3 * CHUNK_SIZE])
                halfway.set()
                await release.wait()
                raise Failed

            async def write() -> None:
                with pytest.raises(Failed):
                    await storage.write(sid, failing)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                await halfway.wait()  # by now the first chunk is in the temporary key
                temporary = await keys(redis_single, f"{prefix}*:w:*")
                assert len(temporary) == 1
                # A temporary key always carries a short ttl: a crashed writer leaves nothing.
                assert 0 < await pttl(redis_single, temporary[0]) <= 60_000
                assert await storage.read_bytes(sid) == b"old"
                release.set()
            assert await keys(redis_single, f"{prefix}*:w:*") == []
            assert await storage.read_bytes(sid) == b"old"

            with trio.CancelScope() as scope:

                async def cancelled(stream: trio.abc.SendStream) -> None:
                    await stream.send_all(BIG)
                    scope.cancel()
                    await trio.sleep_forever()

                await storage.write(sid, cancelled)
            assert scope.cancelled_caught
            assert await keys(redis_single, f"{prefix}*:w:*") == []
            assert await storage.read_bytes(sid) == b"old"


async def test_a_streaming_read_sees_one_value_while_writes_go_on(
    redis_single: RedisServer, redis_driver: str
) -> None:
    with trio.fail_after(30):
        async with opened(redis_single, redis_driver) as storage:
            prefix = storage.key("x")[: storage.key("x").index(b"{")].decode()
            sid = "snapshot"
            old, new = BIG, bytes(reversed(BIG))
            await storage.write_bytes(sid, old)

            async def consumer(stream: trio.abc.ReceiveStream) -> bytes:
                parts = [await stream.receive_some(1000)]
                # The value changes and disappears while this reader is halfway through.
                await storage.write_bytes(sid, new)
                await storage.invalidate(sid)
                while chunk := await stream.receive_some():
                    parts.append(chunk)
                return b"".join(parts)

            assert await storage.read(sid, consumer) == old
            assert await keys(redis_single, f"{prefix}*") == []  # the snapshot is gone

            await storage.write_bytes(sid, old, ttl=30)

            async def early(stream: trio.abc.ReceiveStream) -> bytes:
                return bytes(await stream.receive_some(10))

            assert await storage.read(sid, early) == old[:10]
            assert await keys(redis_single, f"{prefix}*") == [storage.key(sid)]


async def test_touch_slides_expiry(redis_single: RedisServer, redis_driver: str) -> None:
    with trio.fail_after(30):
        async with opened(redis_single, redis_driver) as storage:
            await storage.write_bytes("t", b"v", ttl=5)
            assert await storage.touch("t", 30) is True
            assert 5_000 < await pttl(redis_single, storage.key("t")) <= 30_000
            assert await storage.read_bytes("t") == b"v"
            assert await storage.touch("t", 0.2) is True
            await trio.sleep(0.5)
            with pytest.raises(SessionNotFound):
                await storage.read_bytes("t")
            assert await storage.touch("t", 30) is False
            with pytest.raises(InvalidSessionId):
                await storage.touch("../t", 30)
            with pytest.raises(ValueError, match="ttl"):
                await storage.touch("t", 0)
            with pytest.raises(TypeError, match="ttl"):
                await storage.touch("t", None)  # type: ignore[arg-type]
            await storage.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await storage.touch("t", 30)


async def test_prefixes_separate_storages(redis_single: RedisServer, redis_driver: str) -> None:
    with trio.fail_after(30):
        async with (
            opened(redis_single, redis_driver, prefix="app-a:") as a,
            opened(redis_single, redis_driver, prefix="app-b:") as b,
        ):
            await a.write_bytes("same-id", b"a")
            await b.write_bytes("same-id", b"b")
            assert await a.read_bytes("same-id") == b"a"
            assert await b.read_bytes("same-id") == b"b"
            await a.invalidate("same-id")
            assert await b.read_bytes("same-id") == b"b"
            await b.invalidate("same-id")


async def test_a_storage_over_the_callers_client(redis_single: RedisServer) -> None:
    """The caller's client stays open after the storage closes."""
    with trio.fail_after(30):
        glide = require_module("glide")
        config = glide.GlideClientConfiguration(
            [glide.NodeAddress("127.0.0.1", redis_single.port)], request_timeout=10_000
        )
        client = await glide.GlideClient.create(config)
        try:
            storage = RedisStorage(client, prefix="own-glide:")
            assert storage.driver == "glide"
            await storage.write_bytes("c", b"glide")
            await storage.aclose()
            assert await client.get(b"missing") is None
        finally:
            with trio.move_on_after(5, shield=True):
                await client.close()

        coredis = require_module("coredis")
        async with coredis.Redis(host="127.0.0.1", port=redis_single.port) as redis:
            storage = RedisStorage(redis, prefix="own-glide:")
            assert storage.driver == "coredis"
            assert await storage.read_bytes("c") == b"glide"  # the same key layout
            await storage.invalidate("c")
            await storage.aclose()
            assert await redis.get(b"missing") is None
        decoding = coredis.Redis(host="127.0.0.1", port=redis_single.port, decode_responses=True)
        with pytest.raises(ValueError, match="decode_responses"):
            RedisStorage(decoding)

    with pytest.raises(TypeError, match="GlideClient"):
        RedisStorage(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prefix"):
        RedisStorage(client, prefix=b"bytes")  # type: ignore[arg-type]


async def test_open_redis_storage_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="driver"):
        async with open_redis_storage("redis://127.0.0.1", driver="redis-py"):  # type: ignore[arg-type]
            pass
    for url in ("http://127.0.0.1", "127.0.0.1:6379", "redis://127.0.0.1/0?ssl=1"):
        with pytest.raises(ValueError, match="url"):
            async with open_redis_storage(url, driver="coredis"):
                pass
    with pytest.raises(ValueError, match="Cluster"):
        async with open_redis_storage("redis://127.0.0.1/3", driver="glide", cluster=True):
            pass


async def test_no_server_means_storage_errors_not_hangs(redis_driver: str) -> None:
    url = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    with trio.fail_after(30):
        with pytest.raises(StorageError) as raised:
            async with open_redis_storage(url, driver=redis_driver) as storage:  # type: ignore[arg-type]
                # coredis connects lazily: the first operation finds nobody home.
                await storage.read_bytes("nobody")
        assert raised.value.__cause__ is not None


async def test_errors_in_the_block_propagate_as_themselves(
    redis_single: RedisServer, redis_driver: str
) -> None:
    class Mine(Exception):
        pass

    async def fails() -> None:
        async with opened(redis_single, redis_driver) as storage:
            await storage.write_bytes("x", b"y")
            raise Mine

    async def misses() -> None:
        async with opened(redis_single, redis_driver) as storage:
            await storage.read_bytes("missing")

    with trio.fail_after(30):
        with pytest.raises(Mine):
            await fails()
        with pytest.raises(SessionNotFound):
            await misses()


# ----------------------------------------------------------- versions and conditional writes


async def test_every_value_carries_a_version_that_every_write_replaces(
    redis_single: RedisServer, redis_driver: str
) -> None:
    with trio.fail_after(30):
        async with opened(redis_single, redis_driver) as storage:
            sid = "versioned"
            seen: set[int] = set()

            async def stored() -> bytes:
                reply = await trio.to_thread.run_sync(redis_single.command, "GET", storage.key(sid))
                assert isinstance(reply, bytes)
                return reply

            async def version_is_new(data: bytes) -> int:
                found = await storage.read_versioned(sid)
                assert found.data == data
                assert found.version not in seen
                assert 1 <= found.version < 2**63
                seen.add(found.version)
                raw = await stored()
                assert raw == MAGIC + found.version.to_bytes(8, "big") + data
                assert len(raw) == HEADER_SIZE + len(data)
                return found.version

            await storage.write_bytes(sid, b"plain", ttl=60)
            assert await storage.read_bytes(sid) == b"plain"  # the header stays inside
            await version_is_new(b"plain")

            async def provider(stream: trio.abc.SendStream) -> None:
                await stream.send_all(BIG)

            await storage.write(sid, provider, ttl=60)  # streamed, renamed into place
            streamed = await version_is_new(BIG)
            assert await storage.read(sid, read_all) == BIG
            version = await storage.write_bytes_if(sid, b"cas", version=streamed)
            assert await version_is_new(b"cas") == version
            # A value of exactly one chunk comes back whole from a streaming read.
            await storage.write_bytes(sid, BIG[:CHUNK_SIZE])
            assert await storage.read(sid, read_all) == BIG[:CHUNK_SIZE]
            await version_is_new(BIG[:CHUNK_SIZE])
            # Sliding the expiry is not a write: the version stays.
            before = (await storage.read_versioned(sid)).version
            assert await storage.touch(sid, 60)
            assert (await storage.read_versioned(sid)).version == before
            await storage.write_bytes(sid, b"")
            assert await storage.read_bytes(sid) == b""
            await version_is_new(b"")


async def test_values_written_without_a_header_stay_readable(
    redis_single: RedisServer, redis_driver: str
) -> None:
    """A value stored before values had versions: read as it is, versioned on demand."""
    with trio.fail_after(30):
        async with opened(redis_single, redis_driver) as storage:

            async def legacy(sid: str, value: bytes, *ttl: str | int) -> bytes:
                key = storage.key(sid)
                await trio.to_thread.run_sync(redis_single.command, "SET", key, value, *ttl)
                return key

            key = await legacy("old-small", b'{"user": "alice"}', "PX", 30_000)
            assert await storage.read_bytes("old-small") == b'{"user": "alice"}'
            assert await storage.read("old-small", read_all) == b'{"user": "alice"}'
            with pytest.raises(WriteConflict):  # a value is stored: creating it conflicts
                await storage.write_bytes_if("old-small", b"x", version=None)
            found = await storage.read_versioned("old-small")
            assert found.data == b'{"user": "alice"}'
            # It now carries a header, and kept its ttl.
            raw = await trio.to_thread.run_sync(redis_single.command, "GET", key)
            assert raw == MAGIC + found.version.to_bytes(8, "big") + b'{"user": "alice"}'
            assert 0 < await pttl(redis_single, key) <= 30_000
            assert (await storage.read_versioned("old-small")).version == found.version
            await storage.write_bytes_if("old-small", b"new", version=found.version)
            assert await storage.read_bytes("old-small") == b"new"

            await legacy("old-big", BIG)
            assert await storage.read_bytes("old-big") == BIG
            assert await storage.read("old-big", read_all) == BIG
            assert (await storage.read_versioned("old-big")).data == BIG
            assert await storage.read("old-big", read_all) == BIG
            await legacy("old-short", b"\xfe\x01abc")  # looks like a header but is too short
            assert await storage.read_bytes("old-short") == b"\xfe\x01abc"
            assert (await storage.read_versioned("old-short")).data == b"\xfe\x01abc"


async def test_compare_and_set_has_one_winner_across_clients(
    redis_single: RedisServer, redis_driver: str
) -> None:
    """Tasks of two storages (as two processes would) race with the same version."""
    rounds, racers = 20, 24
    with trio.fail_after(60):
        async with (
            opened(redis_single, redis_driver, prefix="race:") as one,
            opened(redis_single, redis_driver, prefix="race:") as two,
        ):
            sid = "raced"
            for round_ in range(rounds):
                await one.write_bytes(sid, b"base")
                version = (await two.read_versioned(sid)).version
                winners: list[tuple[bytes, int]] = []
                conflicts = 0

                async def racer(n: int, storage: RedisStorage) -> None:
                    nonlocal conflicts
                    value = f"{round_}:{n}".encode()  # noqa: B023
                    try:
                        new = await storage.write_bytes_if(sid, value, version=version)  # noqa: B023
                    except WriteConflict:
                        conflicts += 1
                    else:
                        winners.append((value, new))  # noqa: B023

                async with trio.open_nursery() as nursery:
                    for n in range(racers):
                        nursery.start_soon(racer, n, (one, two)[n % 2])
                assert len(winners) == 1
                assert conflicts == racers - 1
                found = await one.read_versioned(sid)
                assert (found.data, found.version) == winners[0]
            for storage in (one, two):
                assert storage.statistics().commands > 0


async def test_logout_racing_conditional_writes_is_never_undone(
    redis_single: RedisServer, redis_driver: str
) -> None:
    """Whatever order the server sees them in, after an invalidate the session is gone."""
    rounds = 40
    with trio.fail_after(60):
        async with (
            opened(redis_single, redis_driver, prefix="logout:") as app,
            opened(redis_single, redis_driver, prefix="logout:") as other,
        ):
            rng = random.Random(f"logout-{redis_driver}")
            survived = 0
            for round_ in range(rounds):
                sid = f"logout-{round_}"
                await app.write_bytes(sid, b"user=alice", ttl=60)
                version = (await app.read_versioned(sid)).version
                written: list[int] = []

                async def writer(storage: RedisStorage, n: int) -> None:
                    for _ in range(rng.randint(0, 3)):
                        await trio.lowlevel.checkpoint()
                    expected = version  # noqa: B023
                    for _ in range(3):  # write, then keep writing on top of its own write
                        try:
                            expected = await storage.write_bytes_if(
                                sid,  # noqa: B023
                                f"user=alice;n={n}".encode(),
                                version=expected,
                                ttl=60,
                            )
                        except WriteConflict:
                            return
                        written.append(n)  # noqa: B023

                async def logout() -> None:
                    for _ in range(rng.randint(0, 3)):
                        await trio.lowlevel.checkpoint()
                    await app.invalidate(sid)  # noqa: B023

                async with trio.open_nursery() as nursery:
                    for n in range(6):
                        nursery.start_soon(writer, (app, other)[n % 2], n)
                    nursery.start_soon(logout)
                survived += bool(written)
                for storage in (app, other):
                    with pytest.raises(SessionNotFound):
                        await storage.read_bytes(sid)
                    with pytest.raises(SessionNotFound):
                        await storage.read_versioned(sid)
                with pytest.raises(WriteConflict):
                    await other.write_bytes_if(sid, b"late", version=version)
    print(f"\n{redis_driver}: {rounds} logouts, {survived} raced a successful write, 0 undone")


async def test_conditional_writes_keep_their_ttl_rules(
    redis_single: RedisServer, redis_driver: str
) -> None:
    with trio.fail_after(30):
        async with opened(redis_single, redis_driver) as storage:
            version = await storage.write_bytes_if("ttl", b"a", version=None, ttl=20)
            assert 0 < await pttl(redis_single, storage.key("ttl")) <= 20_000
            version = await storage.write_bytes_if("ttl", b"b", version=version)  # no ttl
            assert await pttl(redis_single, storage.key("ttl")) == -1
            await storage.write_bytes_if("ttl", b"c", version=version, ttl=0.2)
            await trio.sleep(0.5)
            with pytest.raises(WriteConflict):
                await storage.write_bytes_if("ttl", b"d", version=version)
            with pytest.raises(SessionNotFound):
                await storage.read_versioned("ttl")
            await storage.write_bytes_if("ttl", b"e", version=None)  # expired means absent


# ------------------------------------------------------------------------- pipelining


async def test_a_lone_task_sends_every_command_directly(
    redis_single: RedisServer, redis_driver: str
) -> None:
    with trio.fail_after(30):
        async with opened(redis_single, redis_driver) as storage:
            for n in range(20):
                await storage.write_bytes(f"lone-{n}", b"v")
                assert await storage.read_bytes(f"lone-{n}") == b"v"
                with pytest.raises(WriteConflict):
                    await storage.write_bytes_if(f"lone-{n}", b"w", version=None)
    stats = storage.statistics()
    assert stats.batches == 0
    assert stats.direct == stats.commands == 60


async def test_concurrent_tasks_share_batches_and_each_gets_its_own_reply(
    redis_single: RedisServer, redis_driver: str
) -> None:
    tasks, rounds = 100, 5
    with trio.fail_after(60):
        async with opened(redis_single, redis_driver) as storage:
            wrong: list[str] = []

            async def worker(n: int) -> None:
                sid = f"own-{n}"
                expected: int | None = None
                for round_ in range(rounds):
                    value = f"{n}:{round_}".encode() * (1 + n % 7)
                    version = await storage.write_bytes_if(sid, value, version=expected)
                    found = await storage.read_versioned(sid)
                    if (found.data, found.version) != (value, version):
                        wrong.append(f"{sid}: {found}")
                    if await storage.read_bytes(sid) != value:
                        wrong.append(sid)
                    expected = version

            async with trio.open_nursery() as nursery:
                for n in range(tasks):
                    nursery.start_soon(worker, n)
            stats = storage.statistics()
    assert wrong == []
    print(f"\n{redis_driver}: {stats}")
    assert stats.commands >= tasks * rounds * 3
    assert stats.batches > 0
    assert stats.batched > stats.direct  # most commands went in batches
    assert max(size for size, _ in stats.batch_sizes) > 1


async def test_batches_respect_max_batch_and_pipeline_false_sends_alone(
    redis_single: RedisServer, redis_driver: str
) -> None:
    async def run(**options: Any) -> RedisStorageStatistics:
        async with opened(redis_single, redis_driver, **options) as storage:

            async def worker(n: int) -> None:
                await storage.write_bytes(f"b-{n}", b"%d" % n)
                assert await storage.read_bytes(f"b-{n}") == b"%d" % n

            async with trio.open_nursery() as nursery:
                for n in range(30):
                    nursery.start_soon(worker, n)
            return storage.statistics()

    with trio.fail_after(30):
        small = await run(max_batch=4)
        assert small.batches > 0
        assert all(size <= 4 for size, _ in small.batch_sizes)
        alone = await run(pipeline=False)
        assert (alone.batches, alone.direct) == (0, 60)
    for bad in (0, 1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="max_batch"):
            async with opened(redis_single, redis_driver, max_batch=bad):
                pass


async def test_a_batched_script_survives_the_server_forgetting_it(
    redis_single: RedisServer, redis_driver: str
) -> None:
    """After SCRIPT FLUSH (as after a restart), batched EVALSHAs fall back and succeed."""
    with trio.fail_after(30):
        async with opened(redis_single, redis_driver) as storage:
            for n in range(20):
                await storage.write_bytes(f"s-{n}", b"x")
            versions = {
                f"s-{n}": (await storage.read_versioned(f"s-{n}")).version for n in range(20)
            }
            await trio.to_thread.run_sync(redis_single.command, "SCRIPT", "FLUSH")

            async def swap(sid: str) -> None:
                versions[sid] = await storage.write_bytes_if(sid, b"y", version=versions[sid])

            async with trio.open_nursery() as nursery:
                for sid in versions:
                    nursery.start_soon(swap, sid)
            for sid, version in versions.items():
                assert await storage.read_versioned(sid) == Versioned(b"y", version)


async def test_random_cancellations_never_hand_a_reply_to_another_caller(
    redis_single: RedisServer, redis_driver: str
) -> None:
    """Callers in a batch are cancelled at random: the others still get their own replies."""
    goal = int(os.environ.get("TRIO_SESSIONS_REDIS_CANCELS", "2000"))
    tasks = 32
    wrong: list[str] = []
    cancelled = completed = 0
    with trio.fail_after(120):
        async with opened(redis_single, redis_driver) as storage:
            for n in range(tasks):
                await storage.write_bytes(f"mine-{n}", b"%d" % n)
            rng = random.Random(f"pipeline-cancel-{redis_driver}")

            async def worker(n: int) -> None:
                nonlocal cancelled, completed
                sid, mine = f"mine-{n}", b"%d" % n
                task_rng = random.Random(rng.random())
                while cancelled < goal:
                    with trio.CancelScope() as scope:
                        if task_rng.random() < 0.5:
                            # Cancelled while queued for a batch, or while it is in flight.
                            scope.deadline = trio.current_time() + task_rng.choice(
                                [0, 1e-5, 1e-4, 3e-4, 1e-3]
                            )
                        kind = task_rng.random()
                        if kind < 0.4:
                            value = await storage.read_bytes(sid)
                        elif kind < 0.7:
                            value = (await storage.read_versioned(sid)).data
                        elif kind < 0.9:
                            await storage.write_bytes(sid, mine)
                            value = mine
                        else:
                            version = (await storage.read_versioned(sid)).version
                            with contextlib.suppress(WriteConflict):
                                await storage.write_bytes_if(sid, mine, version=version)
                            value = mine
                        if value != mine:
                            wrong.append(f"{sid} got {value[:20]!r}")
                        completed += 1
                    if scope.cancelled_caught:
                        cancelled += 1

            async with trio.open_nursery() as nursery:
                for n in range(tasks):
                    nursery.start_soon(worker, n)
            for n in range(tasks):  # still serving everyone, with the right values
                assert await storage.read_bytes(f"mine-{n}") == b"%d" % n
            stats = storage.statistics()
    print(
        f"\n{redis_driver}: {cancelled} cancelled, {completed} completed, {len(wrong)} wrong "
        f"replies; {stats.withdrawn} commands withdrawn before sending, {stats.dropped} replies "
        f"dropped; {stats.batches} batches (mean {stats.mean_batch:.1f})"
    )
    assert wrong == []
    assert cancelled >= goal
    assert stats.batches > 0
    assert stats.withdrawn + stats.dropped > 0


async def test_pipelining_in_a_cluster_routes_each_command_to_its_node(
    redis_cluster_nodes: list[RedisServer], redis_driver: str
) -> None:
    tasks = 60
    with trio.fail_after(60):
        async with open_redis_storage(
            redis_cluster_nodes[0].url,
            driver=redis_driver,  # type: ignore[arg-type]
            cluster=True,
            **OPTIONS[redis_driver],
        ) as storage:
            wrong: list[str] = []

            async def worker(n: int) -> None:
                sid = f"cluster-{n}"
                version = await storage.write_bytes_if(sid, b"a%d" % n, version=None)
                version = await storage.write_bytes_if(sid, b"b%d" % n, version=version)
                if await storage.read_versioned(sid) != Versioned(b"b%d" % n, version):
                    wrong.append(sid)
                await storage.write(sid, provider_of(BIG + b"%d" % n))
                if await storage.read(sid, read_all) != BIG + b"%d" % n:
                    wrong.append(sid)
                await storage.invalidate(sid)

            async with trio.open_nursery() as nursery:
                for n in range(tasks):
                    nursery.start_soon(worker, n)
            stats = storage.statistics()
    assert wrong == []
    # The sessions live on every node, and the batches carried commands for several.
    assert stats.batches > 0
    assert max(size for size, _ in stats.batch_sizes) > 3


# ------------------------------------------------- the batching machinery, without a server


class FakeServer:
    """Records what the pipeline sends; replies when the test says so."""

    def __init__(self) -> None:
        self.sent: list[list[Command]] = []
        self.release = trio.Event()
        self.fail: Exception | None = None

    async def send_one(self, command: Command) -> object:
        self.sent.append([command])
        await self.release.wait()
        if isinstance(command[2], Exception):
            raise command[2]
        return command[1]

    async def send_batch(self, commands: list[Command]) -> list[outcome.Outcome[object]]:
        self.sent.append(commands)
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [
            outcome.Error(c[2]) if isinstance(c[2], Exception) else outcome.Value(c[1])
            for c in commands
        ]


async def test_the_pipeline_hands_each_caller_its_own_reply_or_error() -> None:
    server = FakeServer()
    pipeline = AutoPipeline(server.send_one, server.send_batch, max_batch=4)
    replies: dict[int, object] = {}

    async def caller(n: int, error: Exception | None = None) -> None:
        try:
            replies[n] = await pipeline.call((0, b"%d" % n, error, None))
        except ValueError as exc:
            replies[n] = exc

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(caller, n, ValueError(n) if n == 5 else None)
            await trio.testing.wait_all_tasks_blocked()
            server.release.set()
    # The first went alone; the other nine in batches of at most four (the last one,
    # with one command, alone too), each command once.
    assert sorted(len(sent) for sent in server.sent) == [1, 1, 4, 4]
    assert sorted(c[1] for sent in server.sent for c in sent) == sorted(
        b"%d" % n for n in range(10)
    )
    assert {n: r for n, r in replies.items() if n != 5} == {
        n: b"%d" % n for n in range(10) if n != 5
    }
    assert isinstance(replies[5], ValueError)
    assert replies[5].args == (5,)
    stats = pipeline.statistics()
    assert (stats.direct, stats.batches, stats.batched) == (2, 2, 8)
    assert stats.batch_sizes == ((4, 2),)


async def test_a_cancelled_caller_leaves_its_batch_without_disturbing_it() -> None:
    server = FakeServer()
    pipeline = AutoPipeline(server.send_one, server.send_batch)
    replies: dict[int, object] = {}
    scopes = {n: trio.CancelScope() for n in range(8)}

    async def caller(n: int) -> None:
        with scopes[n]:
            replies[n] = await pipeline.call((0, b"%d" % n, None, None))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for n in range(4):  # the first to run goes alone, the others together
                nursery.start_soon(caller, n)
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(len(sent) for sent in server.sent) == [1, 3]
            victim = int(server.sent[1][0][1])
            for n in range(4, 8):
                nursery.start_soon(caller, n)
            await trio.lowlevel.checkpoint()
            scopes[5].cancel()  # before its batch is sent: it never is
            await trio.testing.wait_all_tasks_blocked()
            scopes[victim].cancel()  # its batch is in flight: the reply will be dropped
            await trio.testing.wait_all_tasks_blocked()
            server.release.set()
    assert [sorted(c[1] for c in sent) for sent in server.sent[2:]] == [[b"4", b"6", b"7"]]
    assert replies == {n: b"%d" % n for n in range(8) if n not in (5, victim)}
    stats = pipeline.statistics()
    assert (stats.withdrawn, stats.dropped) == (1, 1)


async def test_a_failed_batch_gives_every_caller_an_exception_of_its_own() -> None:
    server = FakeServer()
    server.fail = ConnectionError("connection lost")
    pipeline = AutoPipeline(server.send_one, server.send_batch)
    errors: list[BaseException] = []

    async def caller(n: int) -> None:
        try:
            await pipeline.call((0, b"%d" % n, None, None))
        except ConnectionError as exc:
            errors.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(caller, n)
            await trio.testing.wait_all_tasks_blocked()
            server.release.set()
    # The first was sent alone and succeeded; the five in the batch each got a copy.
    assert len(errors) == 5
    assert len({id(error) for error in errors}) == 5
    assert all(str(error) == "connection lost" for error in errors)
    assert all(error.__cause__ is server.fail for error in errors)


class ConnectionsServer:
    """Runs each send on a connection of its own, in the order the test releases them
    (a pool of connections gives no order between them): a key-value store of SET
    (kind 1) and DEL (kind 2), plus a record of what ran."""

    def __init__(self) -> None:
        self.sent: list[list[Command]] = []
        self.releases: list[trio.Event] = []
        self.data: dict[bytes, bytes] = {}
        self.ran: list[tuple[int, bytes]] = []

    def _run(self, command: Command) -> object:
        kind, key, value, _ = command
        self.ran.append((kind, key))
        if kind == 1:
            self.data[key] = value
        elif kind == 2:
            self.data.pop(key, None)
        return True

    async def send_one(self, command: Command) -> object:
        return (await self.send_batch([command]))[0].unwrap()

    async def send_batch(self, commands: list[Command]) -> list[outcome.Outcome[object]]:
        self.sent.append(commands)
        release = trio.Event()
        self.releases.append(release)
        await release.wait()
        return [outcome.Value(self._run(command)) for command in commands]


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("abandoned_key", [b"p:{s}", b"p:{s}:w:0123"])
async def test_a_cancelled_command_is_never_overtaken_by_the_next_one_on_its_session(
    detach: bool, abandoned_key: bytes
) -> None:
    """An invalidation (or a temporary key's commit) cancelled after it was sent may
    still run: the write that follows it, acknowledged, must not be undone by it."""
    server = ConnectionsServer()
    options = {"detach": True} if detach else {}
    pipeline = AutoPipeline(server.send_one, server.send_batch, **options)
    acknowledged: list[bytes] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            # Another task's command is in flight: the next ones go out in batches.
            nursery.start_soon(pipeline.call, (1, b"p:{other}", b"x", None))
            await trio.testing.wait_all_tasks_blocked()
            scope = trio.CancelScope()

            async def abandon() -> None:
                with scope:
                    await pipeline.call((2, abandoned_key, None, None))

            nursery.start_soon(abandon)
            await trio.testing.wait_all_tasks_blocked()
            assert server.sent[-1] == [(2, abandoned_key, None, None)]
            scope.cancel()  # the caller leaves; its command is on its way
            await trio.testing.wait_all_tasks_blocked()
            assert scope.cancelled_caught

            async def write() -> None:
                await pipeline.call((1, b"p:{s}", b"new", None))
                acknowledged.append(b"new")

            nursery.start_soon(write)
            await trio.testing.wait_all_tasks_blocked()
            # The write waits for the abandoned command: it is not even sent yet.
            assert all((1, b"p:{s}", b"new", None) not in sent for sent in server.sent)
            server.releases[-1].set()  # the abandoned command runs (or fails) first
            await trio.testing.wait_all_tasks_blocked()
            for release in server.releases:
                release.set()
    assert acknowledged == [b"new"]
    assert server.ran.index((2, abandoned_key)) < server.ran.index((1, b"p:{s}"))
    assert server.data[b"p:{s}"] == b"new"
    assert pipeline.statistics().dropped == 1
