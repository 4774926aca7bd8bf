"""The candidates: our storages, the baselines that bound them, and peer libraries.

Each factory returns a `Target` whose ``open()`` yields `Ops` inside ``trio.run``.
Peers that need a package missing here raise `ImportError` when their target is made,
so the suite can record them as skipped.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any

import trio

from trio_sessions import DirectoryStorage, MemoryStorage, SessionStorage, open_cache_storage
from trio_sessions.storages import _directory as _directory_format
from trio_sessions.storages._redis_drivers import DriverName
from trio_sessions.testing.servers import Resp

from ._core import TTL, Ops, Role, Target, read_all, starsessions_ops

PX = TTL * 1000
#: A session id never stored: what opens a connection costs one statement and no row.
WARM_UP_ID = "warm-up-0123456789abcdef0123456789abcdef"


def target(name: str, role: Role, opener: Callable[[], AbstractAsyncContextManager[Ops]]) -> Target:
    return Target(name, role, opener)


@contextmanager
def scratch(parent: str | None) -> Iterator[str]:
    root = tempfile.mkdtemp(prefix="trio-sessions-bench-", dir=parent)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def storage_ops(storage: SessionStorage) -> Ops:
    async def write(session_id: str, data: bytes) -> None:
        await storage.write_bytes(session_id, data, ttl=TTL)

    return Ops(write, storage.read_bytes)


# --------------------------------------------------------------------- memory


def dict_baseline() -> Target:
    """A dict set or get plus one trio checkpoint: what any async API over a dict costs."""

    @asynccontextmanager
    async def opener() -> AsyncIterator[Ops]:
        data: dict[str, bytes] = {}

        async def write(session_id: str, value: bytes) -> None:
            data[session_id] = value
            await trio.lowlevel.checkpoint()

        async def read(session_id: str) -> bytes | None:
            value = data.get(session_id)
            await trio.lowlevel.checkpoint()
            return value

        yield Ops(write, read)

    return target("dict + checkpoints", "baseline", opener)


def memory_storage() -> Target:
    @asynccontextmanager
    async def opener() -> AsyncIterator[Ops]:
        async with MemoryStorage(max_entries=None, max_bytes=None) as storage:  # filled to 1M
            yield storage_ops(storage)

    return target("MemoryStorage", "subject", opener)


def memory_stream() -> Target:
    """``write`` with one ``send_all`` and ``read`` to EOF: the streaming API's cost."""

    @asynccontextmanager
    async def opener() -> AsyncIterator[Ops]:
        async with MemoryStorage(max_entries=None, max_bytes=None) as storage:  # filled to 1M

            async def write(session_id: str, data: bytes) -> None:
                async def provider(stream: trio.abc.SendStream) -> None:
                    await stream.send_all(data)

                await storage.write(session_id, provider, ttl=TTL)

            async def read(session_id: str) -> bytes:
                return await storage.read(session_id, read_all)

            yield Ops(write, read)

    return target("MemoryStorage (streams)", "subject", opener)


def starsessions_memory() -> Target:
    """starsessions' InMemoryStore (a dict behind coroutines that never yield), on trio."""
    stores: Any = importlib.import_module("starsessions.stores.memory")

    @asynccontextmanager
    async def opener() -> AsyncIterator[Ops]:
        yield Ops(*starsessions_ops(stores.InMemoryStore()))

    return target("starsessions InMemoryStore", "peer", opener)


# ------------------------------------------------------------------ directory

#: DirectoryStorage's file header: its size and where it keeps the version.
STORED_HEADER = _directory_format._HEADER
HEADER_SIZE = STORED_HEADER.size
#: How the raw sequence creates its temporary file.
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def raw_header(version: int = 0) -> bytes:
    """A header of DirectoryStorage's size holding *version* where the storage keeps it
    (its other fields zero: the storage never reads these files)."""
    return STORED_HEADER.pack(b"", 0, 0.0, version, 0, 0)


BLANK_HEADER = raw_header()


def header_version(header: bytes) -> int:
    """The version in a file's header (see `raw_header`)."""
    return int(STORED_HEADER.unpack_from(header)[3])


def raw_path(root: str, session_id: str) -> tuple[str, str]:
    """The fan-out folder and the file DirectoryStorage keeps *session_id* in."""
    name = hashlib.blake2b(session_id.encode(), digest_size=32).hexdigest()
    directory = os.path.join(root, name[:2], name[2:4])
    return directory, os.path.join(directory, name)


def sync_directory(directory: str) -> None:
    fd = os.open(directory, FOLDER)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_write(root: str, session_id: str, data: bytes, fsync: bool) -> None:
    """DirectoryStorage's system calls for a write, and nothing else."""
    directory, path = raw_path(root, session_id)
    temp = os.path.join(directory, f".{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(temp, CREATE, 0o600)
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(temp, CREATE, 0o600)
    try:
        os.write(fd, BLANK_HEADER)
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    if fsync:
        sync_directory(directory)


def raw_read(root: str, session_id: str) -> bytes:
    """DirectoryStorage's system calls for a read, and nothing else."""
    fd = os.open(raw_path(root, session_id)[1], os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        os.read(fd, HEADER_SIZE)
        return os.read(fd, size - HEADER_SIZE)
    finally:
        os.close(fd)


def raw_files(fsync: bool, parent: str | None) -> Target:
    """The same system calls in one ``trio.to_thread.run_sync`` per operation."""

    @asynccontextmanager
    async def opener() -> AsyncIterator[Ops]:
        limiter = trio.CapacityLimiter(8)
        with scratch(parent) as root:

            async def write(session_id: str, data: bytes) -> None:
                await trio.to_thread.run_sync(
                    raw_write, root, session_id, data, fsync, limiter=limiter
                )

            async def read(session_id: str) -> bytes:
                return await trio.to_thread.run_sync(raw_read, root, session_id, limiter=limiter)

            async def bulk(ids: Sequence[str], data: bytes) -> None:
                def fill() -> None:
                    for session_id in ids:
                        raw_write(root, session_id, data, False)

                await trio.to_thread.run_sync(fill)

            yield Ops(write, read, bulk)

    return target(f"raw files fsync={'on' if fsync else 'off'}", "baseline", opener)


def directory_storage(fsync: bool, parent: str | None) -> Target:
    @asynccontextmanager
    async def opener() -> AsyncIterator[Ops]:
        with scratch(parent) as root:
            async with DirectoryStorage(root, fsync=fsync) as storage:
                yield storage_ops(storage)

    return target(f"DirectoryStorage fsync={'on' if fsync else 'off'}", "subject", opener)


def file_cache(kind: str, parent: str | None, *, on_loop: bool = False) -> Target:
    """cachelib's FileSystemCache (Flask-Session's file backend) or diskcache's Cache,
    through one thread hop per call, or called on the event loop as many apps do."""
    module: Any = importlib.import_module(kind)

    @asynccontextmanager
    async def opener() -> AsyncIterator[Ops]:
        with scratch(parent) as root:
            cache: Any
            if kind == "cachelib":
                cache = module.FileSystemCache(root, threshold=0, default_timeout=TTL)
                store: Callable[[str, bytes], object] = cache.set
            else:
                cache = module.Cache(root)

                def store(key: str, value: bytes) -> object:
                    return cache.set(key, value, expire=TTL)

            limiter = trio.CapacityLimiter(8)
            try:

                async def write(session_id: str, data: bytes) -> None:
                    if on_loop:
                        store(session_id, data)
                        await trio.lowlevel.checkpoint()
                    else:
                        await trio.to_thread.run_sync(store, session_id, data, limiter=limiter)

                async def read(session_id: str) -> object:
                    if on_loop:
                        value = cache.get(session_id)
                        await trio.lowlevel.checkpoint()
                        return value
                    return await trio.to_thread.run_sync(cache.get, session_id, limiter=limiter)

                yield Ops(write, read)
            finally:
                if kind == "diskcache":
                    cache.close()

    label = "cachelib FileSystemCache" if kind == "cachelib" else "diskcache Cache"
    return target(f"{label} ({'on the loop' if on_loop else 'one hop'})", "peer", opener)


def cache_over_directory(parent: str | None) -> Target:
    """A CacheStorage in front of a DirectoryStorage (fsync off)."""

    @asynccontextmanager
    async def opener() -> AsyncIterator[Ops]:
        with scratch(parent) as root:
            async with (
                DirectoryStorage(root, fsync=False) as delegate,
                open_cache_storage(delegate) as cache,
            ):
                yield storage_ops(cache)

    return target("CacheStorage over DirectoryStorage", "subject", opener)


# ---------------------------------------------------------------------- Redis


def _bulk(port: int, key: Callable[[str], bytes]) -> Callable[[Sequence[str], bytes], Any]:
    async def bulk(ids: Sequence[str], data: bytes) -> None:
        def fill() -> None:
            with Resp(port) as resp:
                resp.set_many([key(i) for i in ids], data, PX)

        await trio.to_thread.run_sync(fill)

    return bulk


def redis_storage(url: str, port: int, driver: DriverName) -> Target:
    from trio_sessions import open_redis_storage

    importlib.import_module("glide" if driver == "glide" else "coredis")

    @asynccontextmanager
    async def opener() -> AsyncIterator[Ops]:
        async with open_redis_storage(url, driver=driver, prefix="bench:") as storage:
            ops = storage_ops(storage)
            yield Ops(ops.write, ops.read, _bulk(port, storage.key))

    return target(f"RedisStorage ({driver})", "subject", opener)


def redis_raw(url: str, port: int, driver: DriverName) -> Target:
    """The same client's ``SET key value PX`` and ``GET``, with no storage around them."""
    from trio_sessions.storages._redis_drivers import connect

    module: Any = importlib.import_module("glide" if driver == "glide" else "coredis")

    def key(session_id: str) -> bytes:
        return b"raw:" + session_id.encode()

    @asynccontextmanager
    async def opener() -> AsyncIterator[Ops]:
        async with connect(url, driver=driver, cluster=False, options={}) as client:
            if driver == "glide":
                expiry = module.ExpirySet(module.ExpiryType.MILLSEC, PX)

                async def write(session_id: str, data: bytes) -> None:
                    await client.set(key(session_id), data, expiry=expiry)

            else:

                async def write(session_id: str, data: bytes) -> None:
                    await client.set(key(session_id), data, px=PX)

            async def read(session_id: str) -> object:
                return await client.get(key(session_id))

            yield Ops(write, read, _bulk(port, key))

    return target(f"{driver} SET PX + GET", "baseline", opener)


# ----------------------------------------------------------------- PostgreSQL


def postgres_storage(dsn: str, table: str, pool: int | None = None) -> Target:
    """`PostgresStorage` with its default pool, or with *pool* connections kept open."""
    from trio_sessions import open_postgres_storage

    importlib.import_module("psycopg")

    @asynccontextmanager
    async def opener() -> AsyncIterator[Ops]:
        opening = (
            open_postgres_storage(dsn, table=table)
            if pool is None
            else open_postgres_storage(dsn, table=table, max_connections=pool, min_connections=pool)
        )
        async with opening as storage:
            if pool is not None:
                # As asyncpg's pool opens its minimum before it returns: every connection
                # made before the first measurement (by as many statements at once), not
                # while it runs.
                async with trio.open_nursery() as nursery:
                    for _ in range(pool):
                        nursery.start_soon(storage.invalidate, WARM_UP_ID)
            yield storage_ops(storage)

    return target("PostgresStorage", "subject", opener)
