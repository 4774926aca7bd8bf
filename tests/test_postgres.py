"""PostgresStorage on a private PostgreSQL cluster that this module starts."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
import trio
import trio.testing
import trio_asyncio
from trio_asyncio import aio_as_trio

from trio_sessions import SessionNotFound, StorageError
from trio_sessions.asyncio import open_asyncio_storage
from trio_sessions.storages import postgres
from trio_sessions.storages.postgres import PostgresStorage, open_postgres_storage, schema_sql
from trio_sessions.testing import ManualClock, StorageConformance

from .pg_server import PostgresServer, postgres_server

APP = "trio-sessions-test"


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def dsn(pg_cluster: PostgresServer) -> str:
    return pg_cluster.dsn


class TestPostgresConformance(StorageConformance):
    server_dsn = ""

    @pytest.fixture(autouse=True)
    def _server(self, pg_cluster: PostgresServer) -> None:
        type(self).server_dsn = pg_cluster.dsn

    def open_storage(self, clock: ManualClock) -> object:
        return open_postgres_storage(
            self.server_dsn, clock=clock, max_connections=4, max_size=512 * 1024
        )


@asynccontextmanager
async def raw_connection(dsn: str) -> AsyncIterator[Any]:
    """A plain asyncpg connection on the enclosing trio-asyncio loop."""
    connection = await aio_as_trio(asyncpg.connect)(dsn)
    try:
        yield connection
    finally:
        with trio.CancelScope(shield=True):
            await aio_as_trio(connection.close)()


async def test_ids_are_stored_hashed_in_the_documented_schema(dsn: str) -> None:
    with trio.fail_after(20):
        async with trio_asyncio.open_loop(), raw_connection(dsn) as sql:
            async with open_postgres_storage(dsn, table="hashed") as storage:
                assert isinstance(storage, PostgresStorage)
                assert storage.table == "hashed"
                await storage.write_bytes("visible-id", b"payload", ttl=60)
                assert await storage.read_bytes("visible-id") == b"payload"
            columns = await aio_as_trio(sql.fetch)(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'hashed' ORDER BY ordinal_position"
            )
            assert [tuple(c) for c in columns] == [
                ("id_hash", "bytea"),
                ("data", "bytea"),
                ("expires_at", "timestamp with time zone"),
            ]
            index = await aio_as_trio(sql.fetchval)(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'hashed_expires_at'"
            )
            assert "(expires_at)" in index
            (row,) = await aio_as_trio(sql.fetch)("SELECT id_hash, data FROM hashed")
            assert row["id_hash"] == hashlib.sha256(b"visible-id").digest()
            dump = await aio_as_trio(sql.fetchval)("SELECT string_agg(t::text, '') FROM hashed t")
            assert "visible-id" not in dump
            assert 'CREATE TABLE IF NOT EXISTS "hashed"' in schema_sql("hashed")


async def test_expired_rows_are_invisible_and_purged(dsn: str) -> None:
    clock = ManualClock()
    with trio.fail_after(20):
        async with trio_asyncio.open_loop(), raw_connection(dsn) as sql:
            async with open_postgres_storage(dsn, table="expiry", clock=clock) as storage:
                await storage.write_bytes("short", b"s", ttl=10)
                await storage.write_bytes("long", b"l", ttl=100)
                await storage.write_bytes("forever", b"f")
                clock.advance(50)
                with pytest.raises(SessionNotFound):
                    await storage.read_bytes("short")
                count = "SELECT count(*) FROM expiry"
                assert await aio_as_trio(sql.fetchval)(count) == 3  # reads change nothing
                assert await storage.purge() == 1
                assert await storage.purge() == 0
                assert await aio_as_trio(sql.fetchval)(count) == 2
                assert await storage.read_bytes("long") == b"l"
                assert await storage.read_bytes("forever") == b"f"
            # Expiry is in the table: a new storage (a restarted app) still honours it.
            clock.advance(100)
            async with open_postgres_storage(dsn, table="expiry", clock=clock) as storage:
                with pytest.raises(SessionNotFound):
                    await storage.read_bytes("long")
                assert await storage.purge() == 1
                assert await storage.read_bytes("forever") == b"f"


async def test_purge_works_in_batches(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "PURGE_BATCH", 3)
    clock = ManualClock()
    with trio.fail_after(20):
        async with open_postgres_storage(dsn, table="batches", clock=clock) as storage:
            for n in range(10):
                await storage.write_bytes(f"s{n}", b"x", ttl=1)
            await storage.write_bytes("kept", b"k", ttl=1000)
            clock.advance(2)
            assert await storage.purge() == 10
            assert await storage.read_bytes("kept") == b"k"
            await storage.aclose()
            with pytest.raises(trio.ClosedResourceError):
                await storage.purge()


async def test_large_values_up_to_max_size(dsn: str) -> None:
    big = bytes(range(256)) * (4 * 4096)  # 4 MiB
    with trio.fail_after(30):
        async with open_postgres_storage(dsn, table="large", max_size=len(big)) as storage:

            async def provider(stream: trio.abc.SendStream) -> None:
                for start in range(0, len(big), 65536):
                    await stream.send_all(big[start : start + 65536])

            await storage.write("big", provider)
            assert await storage.read_bytes("big") == big


async def test_schema_qualified_tables_are_separate(dsn: str) -> None:
    with trio.fail_after(20):
        async with trio_asyncio.open_loop(), raw_connection(dsn) as sql:
            await aio_as_trio(sql.execute)("CREATE SCHEMA IF NOT EXISTS app")
            async with (
                open_postgres_storage(dsn, table="app.sessions") as one,
                open_postgres_storage(dsn, table="sessions") as two,
            ):
                await one.write_bytes("same-id", b"one")
                await two.write_bytes("same-id", b"two")
                assert await one.read_bytes("same-id") == b"one"
                assert await two.read_bytes("same-id") == b"two"
            for _ in range(2):  # names keep their case; the second open finds the table
                async with open_postgres_storage(dsn, table="app.MixedCase") as mixed:
                    await mixed.write_bytes("a", b"mixed")
                    assert await mixed.read_bytes("a") == b"mixed"
            tables = await aio_as_trio(sql.fetch)(
                "SELECT schemaname, tablename FROM pg_tables"
                " WHERE lower(tablename) IN ('sessions', 'mixedcase')"
            )
            assert sorted(tuple(t) for t in tables) == [
                ("app", "MixedCase"),
                ("app", "sessions"),
                ("public", "sessions"),
            ]


@pytest.mark.parametrize("table", ["", "a-b", 'x"; DROP TABLE y; --', "a.b.c", "1abc", "x" * 49])
async def test_unsafe_table_names_are_refused(dsn: str, table: str) -> None:
    with pytest.raises(ValueError, match="table"):
        async with open_postgres_storage(dsn, table=table):
            raise AssertionError("not reached")  # pragma: no cover


async def test_without_create_table_a_missing_table_is_a_storage_error(dsn: str) -> None:
    with trio.fail_after(20):
        async with open_postgres_storage(dsn, table="absent", create_table=False) as storage:
            with pytest.raises(StorageError) as info:
                await storage.read_bytes("a")
            assert isinstance(info.value.__cause__, asyncpg.UndefinedTableError)


async def test_an_unreachable_server_is_a_storage_error(pg_cluster: PostgresServer) -> None:
    with trio.fail_after(20):
        dead = f"postgresql://trio_sessions@127.0.0.1:{pg_cluster.port}/no_such_database"
        with pytest.raises(StorageError) as info:
            async with open_postgres_storage(dead):
                raise AssertionError("not reached")  # pragma: no cover
        assert isinstance(info.value.__cause__, asyncpg.InvalidCatalogNameError)


async def _active_queries(sql: Any) -> list[str]:
    """Queries that the storage's connections are running now, as the server sees it."""
    # Inside a transaction the server keeps showing its first look at the statistics.
    await aio_as_trio(sql.execute)("SELECT pg_stat_clear_snapshot()")
    rows = await aio_as_trio(sql.fetch)(
        "SELECT query FROM pg_stat_activity WHERE application_name = $1 AND state <> 'idle'", APP
    )
    return [row["query"] for row in rows]


async def _wait_for_active_query(sql: Any) -> str:
    """Wait until the storage's connection runs a query on the server; return it."""
    for _ in range(2000):
        if active := await _active_queries(sql):
            (query,) = active
            return query
        await trio.sleep(0.01)
    raise AssertionError("the query never showed up in pg_stat_activity")


class PgSleepStore:
    """An asyncio store on asyncpg whose ``load("slow")`` runs ``pg_sleep`` for an hour."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.data: dict[str, bytes] = {}

    async def load(self, session_id: str) -> bytes | None:
        if session_id == "slow":
            await self.pool.execute("SELECT pg_sleep(3600)")
        await self.pool.execute("SELECT 1")
        return self.data.get(session_id)

    async def store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        self.data[session_id] = await self.pool.fetchval("SELECT $1::bytea", data)

    async def delete(self, session_id: str) -> None:
        self.data.pop(session_id, None)


async def test_cancelling_trio_cancels_pg_sleep_on_the_server(dsn: str) -> None:
    with trio.fail_after(30):
        async with trio_asyncio.open_loop(), raw_connection(dsn) as sql:

            @asynccontextmanager
            async def open_store() -> AsyncIterator[PgSleepStore]:
                settings = {"application_name": APP}
                async with asyncpg.create_pool(
                    dsn, min_size=1, max_size=1, server_settings=settings
                ) as pool:
                    yield PgSleepStore(pool)

            async with open_asyncio_storage(open_store()) as storage:
                await storage.write_bytes("a", b"value a")
                async with trio.open_nursery() as nursery:
                    scope = trio.CancelScope()

                    async def slow_read() -> None:
                        with scope:
                            await storage.read_bytes("slow")

                    nursery.start_soon(slow_read)
                    assert await _wait_for_active_query(sql) == "SELECT pg_sleep(3600)"
                    scope.cancel()
                assert scope.cancelled_caught
                # The trio call returned only after the server had cancelled the query.
                assert await _active_queries(sql) == []
                # One connection, reused at once: no late reply reaches the next calls.
                assert await storage.read_bytes("a") == b"value a"
                await storage.write_bytes("b", b"value b")
                assert await storage.read_bytes("b") == b"value b"


async def test_a_cancelled_write_waiting_on_a_lock_is_cancelled_on_the_server(dsn: str) -> None:
    with trio.fail_after(30):
        async with trio_asyncio.open_loop(), raw_connection(dsn) as sql:
            settings = {"server_settings": {"application_name": APP}}
            async with open_postgres_storage(
                dsn, table="locked", max_connections=1, pool_options=settings
            ) as storage:
                await storage.write_bytes("held", b"old")
                await storage.write_bytes("other", b"other value")
                key = hashlib.sha256(b"held").digest()
                # Another client holds the row: the storage's upsert waits on the server.
                async with aio_as_trio(sql.transaction()):
                    await aio_as_trio(sql.execute)(
                        "SELECT 1 FROM locked WHERE id_hash = $1 FOR UPDATE", key
                    )
                    async with trio.open_nursery() as nursery:
                        scope = trio.CancelScope()

                        async def blocked_write() -> None:
                            with scope:
                                await storage.write_bytes("held", b"new")

                        nursery.start_soon(blocked_write)
                        query = await _wait_for_active_query(sql)
                        assert query.startswith('INSERT INTO "locked"')
                        scope.cancel()
                    assert scope.cancelled_caught
                    assert await _active_queries(sql) == []
                # The cancelled write did not happen, and the next calls get their own answers.
                assert await storage.read_bytes("held") == b"old"
                assert await storage.read_bytes("other") == b"other value"
                await storage.write_bytes("held", b"newer")
                assert await storage.read_bytes("held") == b"newer"


async def test_server_restart_while_16_tasks_read_and_write() -> None:
    with postgres_server() as server:
        await _restart_under_load(server)


async def _restart_under_load(server: PostgresServer) -> None:
    tasks, warmup, after = 16, 20, 20
    restarted = trio.Event()
    progress = {"ok_before": [0] * tasks, "ok_after": [0] * tasks, "errors": [0] * tasks}
    warmed = trio.Event()

    async def client(storage: PostgresStorage, n: int) -> None:
        sid = f"task-{n}"
        possible: set[bytes | None] = {None}
        for i in range(5000):  # bounded: ends long before this when all goes well
            if restarted.is_set() and progress["ok_after"][n] >= after:
                return
            value = f"{n}:{i}".encode()
            try:
                if i % 2 == 0:
                    try:
                        await storage.write_bytes(sid, value)
                    except StorageError:
                        possible.add(value)  # it may or may not have committed
                        raise
                    possible = {value}
                else:
                    try:
                        got: bytes | None = await storage.read_bytes(sid)
                    except SessionNotFound:
                        got = None
                    assert got in possible, f"task {n} read {got!r}, expected one of {possible}"
                    possible = {got}
            except StorageError:
                progress["errors"][n] += 1
                await trio.sleep(0.02)
                continue
            progress["ok_after" if restarted.is_set() else "ok_before"][n] += 1
            if min(progress["ok_before"]) >= warmup:
                warmed.set()
            await trio.sleep(0.001)
        raise AssertionError(f"task {n} did not recover")

    with trio.fail_after(90):
        async with (
            open_postgres_storage(server.dsn, max_connections=8) as storage,
            trio.open_nursery() as nursery,
        ):
            for n in range(tasks):
                nursery.start_soon(client, storage, n)
            await warmed.wait()
            await trio.to_thread.run_sync(server.stop)
            await trio.sleep(0.5)  # the tasks keep trying against a stopped server
            await trio.to_thread.run_sync(server.start)
            restarted.set()
    assert sum(progress["errors"]) > 0, f"the server's stop went unnoticed: {progress}"
    assert min(progress["ok_after"]) >= after, progress


async def test_purge_from_the_command_line(dsn: str) -> None:
    past = ManualClock(start=1_000_000_000.0)  # 2001: sessions written then have expired
    with trio.fail_after(60):
        async with open_postgres_storage(dsn, table="cli_purge", clock=past) as storage:
            await storage.write_bytes("old-1", b"x", ttl=60)
            await storage.write_bytes("old-2", b"x", ttl=60)
            await storage.write_bytes("kept", b"k")
        command = [sys.executable, "-m", "trio_sessions", "purge", "--postgres", dsn]
        done = await trio.run_process(
            [*command, "--table", "cli_purge"], capture_stdout=True, capture_stderr=True
        )
        assert done.stdout.decode().strip() == "purged 2 expired sessions from cli_purge"
        async with open_postgres_storage(dsn, table="cli_purge", clock=past) as storage:
            assert await storage.read_bytes("kept") == b"k"
        missing = await trio.run_process(
            [*command, "--table", "no_such_table"], capture_stderr=True, check=False
        )
        assert missing.returncode == 1
        assert b"no_such_table" in missing.stderr


async def test_cancelled_anywhere_in_its_life_a_storage_leaves_no_connection(dsn: str) -> None:
    settings = {"server_settings": {"application_name": APP}}
    with trio.fail_after(120):
        for turns in range(0, 3000, 120):  # cancel after this many scheduler turns
            async with trio.open_nursery() as nursery:

                async def use() -> None:
                    async with open_postgres_storage(
                        dsn, table="cancelled", pool_options=settings
                    ) as storage:
                        await storage.write_bytes("a", b"x")
                        assert await storage.read_bytes("a") == b"x"
                    nursery.cancel_scope.cancel()

                nursery.start_soon(use)
                for _ in range(turns):
                    await trio.lowlevel.checkpoint()
                nursery.cancel_scope.cancel()
        async with trio_asyncio.open_loop(), raw_connection(dsn) as sql:
            count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
            assert await aio_as_trio(sql.fetchval)(count, APP) == 0
        async with open_postgres_storage(dsn, table="cancelled") as storage:
            await storage.write_bytes("a", b"after")
            assert await storage.read_bytes("a") == b"after"
