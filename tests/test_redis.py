"""What RedisStorage adds to the contract: hashed keys, ttls on every key, temporary keys
that never outlive their use, sliding expiry, snapshot reads, and its two ways to start.

One private server serves the module; each test uses its own prefix.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from trio_sessions import InvalidSessionId, SessionNotFound, StorageError
from trio_sessions.storages.redis import CHUNK_SIZE, RedisStorage, open_redis_storage

from .redis_servers import RedisServer, free_port, redis_server, require_module

DRIVERS = ["glide", "coredis"]
OPTIONS: dict[str, dict[str, Any]] = {"glide": {"request_timeout": 10_000}, "coredis": {}}
BIG = bytes(range(256)) * (3 * CHUNK_SIZE // 256 + 7)  # several chunks


@pytest.fixture(scope="module")
def redis_single() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


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
        RedisStorage(object())
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
