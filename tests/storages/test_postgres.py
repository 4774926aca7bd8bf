"""PostgresStorage on a private PostgreSQL cluster that this module starts.

The server is looked at from outside through a plain (blocking) psycopg connection in a
worker thread, never through the storage under test.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import random
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio
import trio.testing

from trio_sessions import (
    PostgresStorage,
    PostgresStorageStatistics,
    PurgeResult,
    SessionNotFound,
    StorageError,
    Versioned,
    WriteConflict,
    open_postgres_storage,
)
from trio_sessions.storages import _postgres, _pq
from trio_sessions.testing import ManualClock, StorageConformance
from trio_sessions.testing import servers as private_servers
from trio_sessions.testing.pytest_plugin import require_module
from trio_sessions.testing.servers import PostgresServer

APP = "trio-sessions-test"


@pytest.fixture(scope="module")
def pg_cluster(postgres_bindir: Path) -> Iterator[PostgresServer]:
    with private_servers.postgres_server(postgres_bindir) as server:
        yield server


@pytest.fixture
def dsn(pg_cluster: PostgresServer) -> str:
    return pg_cluster.dsn


def tagged(dsn: str) -> str:
    """*dsn* with an application name that the server's views show."""
    return f"{dsn}?application_name={APP}"


class TestPostgresConformance(StorageConformance):
    server_dsn = ""

    @pytest.fixture(autouse=True)
    def _server(self, pg_cluster: PostgresServer) -> None:
        type(self).server_dsn = pg_cluster.dsn

    def open_storage(self, clock: ManualClock) -> object:
        return open_postgres_storage(
            self.server_dsn, wall_clock=clock, max_connections=4, max_size=512 * 1024
        )


class Admin:
    """A plain psycopg connection to the server, each call run in a worker thread."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.connection = connection

    async def rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            cursor = self.connection.execute(sql, params or None)
            return cursor.fetchall() if cursor.description else []

        return await trio.to_thread.run_sync(run)

    async def value(self, sql: str, *params: object) -> Any:
        ((value,),) = await self.rows(sql, *params)
        return value

    async def ours(self) -> list[tuple[str, str]]:
        """(state, query) of the server's connections opened by the storage under test."""
        # Inside a transaction the server keeps showing its first look at its statistics.
        await self.rows("SELECT pg_stat_clear_snapshot()")
        return [
            (row[0], row[1])
            for row in await self.rows(
                "SELECT state, query FROM pg_stat_activity WHERE application_name = %s", APP
            )
        ]

    async def active_query(self) -> str:
        """Wait until one of the storage's connections runs a statement; return it."""

        def busy(ours: list[tuple[str, str]]) -> bool:
            return any(state != "idle" for state, _ in ours)

        await until(self.ours, busy)
        (query,) = [query for state, query in await self.ours() if state != "idle"]
        return query


async def until(look: Callable[[], Any], done: Callable[[Any], bool]) -> None:
    """Poll *look* (a function, or an async one) until *done* says yes with what it
    returned: for state that no event reports (the server's, the pool's task's)."""
    while True:
        seen = look()
        if done(await seen if inspect.isawaitable(seen) else seen):
            return
        await trio.sleep(0.01)


@asynccontextmanager
async def admin(dsn: str) -> AsyncIterator[Admin]:
    connection = await trio.to_thread.run_sync(lambda: psycopg.connect(dsn, autocommit=True))
    try:
        yield Admin(connection)
    finally:
        with trio.move_on_after(10, shield=True):
            await trio.to_thread.run_sync(connection.close)


# --------------------------------------------------------------------- the table


async def test_ids_are_stored_hashed_in_the_documented_schema(dsn: str) -> None:
    with trio.fail_after(20):
        async with admin(dsn) as sql:
            async with open_postgres_storage(dsn, table="hashed") as storage:
                assert isinstance(storage, PostgresStorage)
                assert storage.table == "hashed"
                await storage.write_bytes("visible-id", b"payload", ttl=60)
                assert await storage.read_bytes("visible-id") == b"payload"
            columns = await sql.rows(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
                "WHERE table_name = 'hashed' ORDER BY ordinal_position"
            )
            assert columns == [
                ("id_hash", "bytea", "NO"),
                ("data", "bytea", "NO"),
                ("expires_at", "timestamp with time zone", "YES"),
                ("version", "bigint", "NO"),
            ]
            index = await sql.value(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'hashed_expires_at'"
            )
            assert "(expires_at)" in index
            ((id_hash, data, version),) = await sql.rows(
                "SELECT id_hash, data, version FROM hashed"
            )
            assert id_hash == hashlib.sha256(b"visible-id").digest()
            assert (data, version >= 1) == (b"payload", True)
            dump = await sql.value("SELECT string_agg(t::text, '') FROM hashed t")
            assert "visible-id" not in dump
            assert 'CREATE TABLE IF NOT EXISTS "hashed"' in PostgresStorage.schema_sql("hashed")


async def test_expired_rows_are_invisible_and_purged(dsn: str) -> None:
    clock = ManualClock()
    with trio.fail_after(20):
        async with admin(dsn) as sql:
            async with open_postgres_storage(dsn, table="expiry", wall_clock=clock) as storage:
                await storage.write_bytes("short", b"s", ttl=10)
                await storage.write_bytes("long", b"l", ttl=100)
                await storage.write_bytes("forever", b"f")
                await storage.write_bytes("far", b"x", ttl=1e300)  # stored as 'infinity'
                clock.advance(50)
                with pytest.raises(SessionNotFound):
                    await storage.read_bytes("short")
                count = "SELECT count(*) FROM expiry"
                assert await sql.value(count) == 4  # reads change nothing
                assert await storage.purge() == PurgeResult(expired=1)
                assert await storage.purge() == PurgeResult(expired=0)
                assert await sql.value(count) == 3
                assert await storage.read_bytes("long") == b"l"
                assert await storage.read_bytes("forever") == b"f"
                assert await storage.read_bytes("far") == b"x"
            # Expiry is in the table: a new storage (a restarted app) still honours it.
            clock.advance(100)
            async with open_postgres_storage(dsn, table="expiry", wall_clock=clock) as storage:
                with pytest.raises(SessionNotFound):
                    await storage.read_bytes("long")
                assert await storage.purge() == PurgeResult(expired=1)
                assert await storage.read_bytes("forever") == b"f"


async def test_purge_works_in_batches(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_postgres, "PURGE_BATCH", 3)
    clock = ManualClock()
    with trio.fail_after(20):
        async with open_postgres_storage(dsn, table="batches", wall_clock=clock) as storage:
            for n in range(10):
                await storage.write_bytes(f"s{n}", b"x", ttl=1)
            await storage.write_bytes("kept", b"k", ttl=1000)
            clock.advance(2)
            assert (await storage.purge()).expired == 10
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
            version = (await storage.read_versioned("big")).version
            await storage.write_bytes_if("big", big[::-1], version=version)
            assert await storage.read_bytes("big") == big[::-1]


async def test_schema_qualified_tables_are_separate(dsn: str) -> None:
    with trio.fail_after(20):
        async with admin(dsn) as sql:
            await sql.rows("CREATE SCHEMA IF NOT EXISTS app")
            async with (
                open_postgres_storage(dsn, table="app.sessions") as one,
                open_postgres_storage(dsn, table="sessions") as two,
            ):
                await one.write_bytes("same-id", b"one")
                await two.write_bytes("same-id", b"two")
                assert await one.read_bytes("same-id") == b"one"
                assert await two.read_bytes("same-id") == b"two"
                await one.write_bytes_if("new-id", b"created", version=None)
                with pytest.raises(SessionNotFound):
                    await two.read_bytes("new-id")
            for _ in range(2):  # names keep their case; the second open finds the table
                async with open_postgres_storage(dsn, table="app.MixedCase") as mixed:
                    await mixed.write_bytes("a", b"mixed")
                    assert await mixed.read_bytes("a") == b"mixed"
            tables = await sql.rows(
                "SELECT schemaname::text, tablename::text FROM pg_tables"
                " WHERE lower(tablename) IN ('sessions', 'mixedcase')"
            )
            assert sorted(tables) == [
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
            assert isinstance(info.value.__cause__, psycopg.errors.UndefinedTable)
            # The failed statement left the connection usable.
            assert storage.statistics().discarded == 0


async def test_a_table_made_before_versions_is_migrated_or_refused(dsn: str) -> None:
    old_schema = (
        "CREATE TABLE old_sessions (id_hash bytea PRIMARY KEY, data bytea NOT NULL,"
        " expires_at timestamptz)"
    )
    with trio.fail_after(20):
        async with admin(dsn) as sql:
            await sql.rows(old_schema)
            await sql.rows(
                "INSERT INTO old_sessions VALUES (%s, 'kept', NULL)",
                hashlib.sha256(b"old-id").digest(),
            )
            with pytest.raises(StorageError, match="ADD COLUMN IF NOT EXISTS version") as info:
                async with open_postgres_storage(dsn, table="old_sessions", create_table=False):
                    raise AssertionError("not reached")  # pragma: no cover
            assert "create_table=True" in str(info.value)
            async with open_postgres_storage(dsn, table="old_sessions") as storage:
                old = await storage.read_versioned("old-id")
                assert old.data == b"kept"
                await storage.write_bytes_if("old-id", b"updated", version=old.version)
                with pytest.raises(WriteConflict):
                    await storage.write_bytes_if("old-id", b"stale", version=old.version)
                assert await storage.read_bytes("old-id") == b"updated"
            # Migrated like a new table: no default left behind.
            default = await sql.value(
                "SELECT column_default FROM information_schema.columns"
                " WHERE table_name = 'old_sessions' AND column_name = 'version'"
            )
            assert default is None


async def test_an_unreachable_server_is_a_storage_error(pg_cluster: PostgresServer) -> None:
    with trio.fail_after(20):
        dead = f"postgresql://trio_sessions@127.0.0.1:{pg_cluster.port}/no_such_database"
        with pytest.raises(StorageError, match="no_such_database") as info:
            async with open_postgres_storage(dead):
                raise AssertionError("not reached")  # pragma: no cover
        assert isinstance(info.value.__cause__, psycopg.OperationalError)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"max_connections": 0}, ValueError, "max_connections must be at least 1"),
        ({"max_connections": 2.0}, TypeError, "max_connections must be an int"),
        ({"min_connections": -1}, ValueError, "min_connections must be at least 0"),
        ({"min_connections": True}, TypeError, "min_connections must be an int"),
        ({"min_connections": 3, "max_connections": 2}, ValueError, "must not exceed"),
        ({"max_idle": 0}, ValueError, "max_idle must be a positive number"),
        ({"max_idle": math.inf}, ValueError, "max_idle must be a positive number"),
        ({"max_size": 0}, ValueError, "max_size"),
    ],
)
async def test_bad_options_are_refused_before_connecting(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    # No server: nothing is tried before the options are checked.
    with pytest.raises(error, match=message):
        async with open_postgres_storage("postgresql://nobody@127.0.0.1:1/x", **options):
            raise AssertionError("not reached")  # pragma: no cover


async def test_a_malformed_dsn_is_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="connection string"):
        async with open_postgres_storage("host=localhost port='unterminated"):
            raise AssertionError("not reached")  # pragma: no cover


async def test_host_names_are_resolved_before_libpq_sees_them() -> None:
    resolved, timeout = await _pq.resolve(
        "host=localhost,/run/pg port=5433,5434 user=u sslmode=require connect_timeout=3"
    )
    parsed = psycopg.pq.Conninfo.parse(resolved)
    options = {o.keyword.decode(): o.val.decode() for o in parsed if o.val is not None}
    hosts = options["host"].split(",")
    assert hosts[0] == "localhost"  # kept for TLS verification and .pgpass
    assert hosts[-1] == "/run/pg"  # a socket directory needs no resolution
    addresses = options["hostaddr"].split(",")
    assert len(addresses) == len(hosts) == len(options["port"].split(","))
    assert addresses[0] in ("127.0.0.1", "::1")
    assert addresses[-1] == ""
    assert options["port"].split(",")[0] == "5433"
    assert options["port"].split(",")[-1] == "5434"
    assert (options["sslmode"], timeout) == ("require", 3.0)
    assert options["fallback_application_name"] == "trio-sessions"


async def test_a_host_name_connects(pg_cluster: PostgresServer) -> None:
    with trio.fail_after(20):
        by_name = f"postgresql://trio_sessions@localhost:{pg_cluster.port}/postgres"
        try:
            async with open_postgres_storage(by_name, table="by_name") as storage:
                await storage.write_bytes("a", b"by name")
                assert await storage.read_bytes("a") == b"by name"
        except StorageError as exc:  # pragma: no cover - localhost is ::1 only
            if os.environ.get("CI") == "true":
                raise
            pytest.skip(f"localhost does not reach 127.0.0.1 here: {exc}")


# --------------------------------------------------------------- conditional writes


async def test_of_n_racing_compare_and_sets_with_one_version_exactly_one_wins(dsn: str) -> None:
    with trio.fail_after(60):
        async with open_postgres_storage(dsn, table="cas", max_connections=8) as storage:
            for round_ in range(20):
                sid = f"race-{round_}"
                if round_ % 2:
                    await storage.write_bytes(sid, b"base", ttl=600)
                    expected: int | None = (await storage.read_versioned(sid)).version
                else:
                    expected = None  # racing to create it
                winners: list[tuple[bytes, int]] = []

                async def racer(
                    n: int, sid: str, expected: int | None, winners: list[tuple[bytes, int]]
                ) -> None:
                    value = f"racer {n}".encode()
                    try:
                        new = await storage.write_bytes_if(sid, value, version=expected)
                    except WriteConflict:
                        return
                    winners.append((value, new))

                async with trio.open_nursery() as nursery:
                    for n in range(12):
                        nursery.start_soon(racer, n, sid, expected, winners)
                assert len(winners) == 1, winners
                ((value, version),) = winners
                assert await storage.read_versioned(sid) == Versioned(value, version)


async def test_versions_change_on_every_write_and_an_expired_row_counts_as_absent(
    dsn: str,
) -> None:
    clock = ManualClock()
    with trio.fail_after(20):
        async with open_postgres_storage(dsn, table="versions", wall_clock=clock) as storage:
            seen = set()
            for n in range(20):
                await storage.write_bytes("a", b"%d" % n, ttl=10)
                seen.add((await storage.read_versioned("a")).version)
            assert len(seen) == 20
            clock.advance(11)  # expired, still in the table
            with pytest.raises(WriteConflict):
                await storage.write_bytes_if("a", b"late", version=seen.pop())
            version = await storage.write_bytes_if("a", b"fresh", version=None, ttl=10)
            assert await storage.read_versioned("a") == Versioned(b"fresh", version)
            with pytest.raises(WriteConflict):
                await storage.write_bytes_if("a", b"again", version=None)
            clock.advance(11)
            with pytest.raises(WriteConflict):
                await storage.invalidate_if("a", version=version)


# ------------------------------------------------------------------ cancellation


async def test_a_cancelled_write_waiting_on_a_lock_is_cancelled_on_the_server(dsn: str) -> None:
    with trio.fail_after(30):
        async with (
            admin(dsn) as sql,
            open_postgres_storage(tagged(dsn), table="locked", max_connections=1) as storage,
        ):
            await storage.write_bytes("held", b"old")
            await storage.write_bytes("other", b"other value")
            key = hashlib.sha256(b"held").digest()
            # Another client holds the row: the storage's upsert waits on the server.
            await sql.rows("BEGIN")
            await sql.rows("SELECT 1 FROM locked WHERE id_hash = %s FOR UPDATE", key)
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def blocked_write() -> None:
                    with scope:
                        await storage.write_bytes("held", b"new")

                nursery.start_soon(blocked_write)
                query = await sql.active_query()
                assert query.startswith('INSERT INTO "locked"')
                scope.cancel()
            assert scope.cancelled_caught
            # The call returned only once the server had cancelled the statement.
            assert [state for state, _ in await sql.ours()] == ["idle"]
            await sql.rows("COMMIT")
            # The cancelled write did not happen; the one connection was kept, and the
            # next calls get their own answers.
            assert await storage.read_bytes("held") == b"old"
            assert await storage.read_bytes("other") == b"other value"
            await storage.write_bytes("held", b"newer")
            assert await storage.read_bytes("held") == b"newer"
            stats = storage.statistics()
            assert isinstance(stats, PostgresStorageStatistics)
            assert (stats.opened, stats.discarded, stats.cancel_requests) == (1, 0, 1)


async def test_a_statement_timeout_from_the_dsn_is_a_storage_error(dsn: str) -> None:
    bounded = f"{tagged(dsn)}&options=-c%20statement_timeout%3D100"
    with trio.fail_after(30):
        async with (
            admin(dsn) as sql,
            open_postgres_storage(bounded, table="timeouts", max_connections=1) as storage,
        ):
            await storage.write_bytes("a", b"before")
            await sql.rows("BEGIN")
            await sql.rows("LOCK TABLE timeouts IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StorageError) as info:
                await storage.read_bytes("a")
            assert isinstance(info.value.__cause__, psycopg.errors.QueryCanceled)
            await sql.rows("COMMIT")
            assert await storage.read_bytes("a") == b"before"
            assert storage.statistics().discarded == 0


async def test_random_cancellations_never_deliver_a_wrong_reply(dsn: str) -> None:
    """Each task reads and writes its own session with recognisable values under random
    deadlines; a cancelled write may or may not have happened, nothing else is allowed."""
    target = 2000
    cancelled = completed = 0
    with trio.fail_after(240):
        async with open_postgres_storage(dsn, table="cancels", max_connections=4) as storage:

            async def client(n: int) -> None:
                nonlocal cancelled, completed
                rng = random.Random(n)
                sid = f"client-{n}"
                possible: set[bytes | None] = {None}
                seq = 0
                while cancelled < target:
                    seq += 1
                    value = f"{n}:{seq}".encode()
                    op = rng.choice(("write", "read", "cas", "cas"))
                    deadline = rng.uniform(0, 0.004) if rng.random() < 0.6 else math.inf
                    with trio.move_on_after(deadline) as scope:
                        if op == "write":
                            possible.add(value)
                            await storage.write_bytes(sid, value)
                            possible = {value}
                        elif op == "read":
                            got = await _read(storage, sid)
                            assert got in possible, (n, got, possible)
                            possible = {got}
                        else:
                            try:
                                found = await storage.read_versioned(sid)
                            except SessionNotFound:
                                got, version = None, None
                            else:
                                got, version = found.data, found.version
                            assert got in possible, (n, got, possible)
                            possible = {got, value}
                            # Nobody else writes this session: it can only succeed.
                            new = await storage.write_bytes_if(sid, value, version=version)
                            possible = {value}
                            assert await storage.read_versioned(sid) == Versioned(value, new)
                    if scope.cancelled_caught:
                        cancelled += 1
                    else:
                        completed += 1

            async with trio.open_nursery() as nursery:
                for n in range(16):
                    nursery.start_soon(client, n)
            stats = storage.statistics()
            assert stats.connections <= 4
    assert cancelled >= target
    assert completed > 0


async def _read(storage: PostgresStorage, sid: str) -> bytes | None:
    try:
        return await storage.read_bytes(sid)
    except SessionNotFound:
        return None


async def test_cancelled_anywhere_in_its_life_a_storage_leaves_no_connection(dsn: str) -> None:
    with trio.fail_after(120):
        for turns in range(0, 3000, 120):  # cancel after this many scheduler turns
            async with trio.open_nursery() as nursery:

                async def use() -> None:
                    async with open_postgres_storage(tagged(dsn), table="cancelled") as storage:
                        await storage.write_bytes("a", b"x")
                        assert await storage.read_bytes("a") == b"x"
                    nursery.cancel_scope.cancel()

                nursery.start_soon(use)
                for _ in range(turns):
                    await trio.lowlevel.checkpoint()
                nursery.cancel_scope.cancel()
        async with admin(dsn) as sql:
            # A closed connection's server process exits soon after.
            await until(lambda: sql.ours(), lambda ours: not ours)
        async with open_postgres_storage(dsn, table="cancelled") as storage:
            await storage.write_bytes("a", b"after")
            assert await storage.read_bytes("a") == b"after"


# ------------------------------------------------------------------ the pool


async def test_the_pool_grows_on_demand_and_shrinks_when_idle(dsn: str) -> None:
    with trio.fail_after(60):
        async with (
            admin(dsn) as sql,
            open_postgres_storage(
                tagged(dsn), table="pool", max_connections=5, max_idle=0.5
            ) as storage,
        ):
            await storage.write_bytes("a", b"x")
            assert storage.statistics().connections == 1
            await sql.rows("BEGIN")
            await sql.rows("LOCK TABLE pool IN ACCESS EXCLUSIVE MODE")
            async with trio.open_nursery() as nursery:
                for _ in range(8):  # more callers than connections: three wait their turn
                    nursery.start_soon(storage.read_bytes, "a")
                await until(lambda: sql.ours(), lambda ours: len(ours) == 5)
                await trio.testing.wait_all_tasks_blocked()
                assert storage.statistics().connections == 5
                await sql.rows("COMMIT")
            assert storage.statistics().idle == 5
            # Idle ones close; one is kept.
            await until(storage.statistics, lambda stats: stats.connections == 1)
            await until(lambda: sql.ours(), lambda ours: len(ours) == 1)
            assert await storage.read_bytes("a") == b"x"


async def test_connections_killed_while_idle_are_replaced_unnoticed(dsn: str) -> None:
    with trio.fail_after(30):
        async with (
            admin(dsn) as sql,
            open_postgres_storage(tagged(dsn), table="killed", max_connections=3) as storage,
        ):
            async with trio.open_nursery() as nursery:
                for n in range(3):
                    nursery.start_soon(storage.write_bytes, f"s{n}", b"v")
            await sql.rows(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                APP,
            )
            await until(lambda: sql.ours(), lambda ours: not ours)
            for n in range(3):
                assert await storage.read_bytes(f"s{n}") == b"v"
            assert storage.statistics().discarded >= 1


async def test_server_restarts_under_16_tasks_lose_nothing(postgres_bindir: Path) -> None:
    """30 immediate shutdowns (a crash, as ``pg_ctl stop -m immediate``) and restarts
    while 16 tasks write and read their own sessions: after each restart every task is
    served again, and no read returns a value other than the last one written (or one
    whose write failed, which may or may not have been committed)."""
    # Commits reach the operating system before they are acknowledged (fsync can stay
    # off: the machine does not crash, only the server).
    settings = {"synchronous_commit": "on"}
    with private_servers.postgres_server(postgres_bindir, settings=settings) as server:
        await _restart_under_load(server, restarts=30, tasks=16)


async def _restart_under_load(server: PostgresServer, *, restarts: int, tasks: int) -> None:
    served = [0] * tasks  # successful operations per task since the last restart
    errors = 0
    stop = False

    async def client(storage: PostgresStorage, n: int) -> None:
        nonlocal errors
        sid = f"task-{n}"
        possible: set[bytes | None] = {None}
        seq = 0
        while not stop:
            seq += 1
            value = f"{n}:{seq}".encode()
            try:
                if seq % 2:
                    possible.add(value)  # a failed write may or may not have committed
                    await storage.write_bytes(sid, value)
                    possible = {value}
                else:
                    got = await _read(storage, sid)
                    assert got in possible, f"task {n} read {got!r}, expected one of {possible}"
                    possible = {got}
            except StorageError:
                errors += 1
                await trio.sleep(0.01)
                continue
            served[n] += 1
            await trio.sleep(0.002)

    async def all_served() -> None:
        served[:] = [0] * tasks
        await until(lambda: served, lambda served: min(served) >= 3)

    with trio.fail_after(40 * restarts):
        async with (
            open_postgres_storage(server.dsn, max_connections=8) as storage,
            trio.open_nursery() as nursery,
        ):
            for n in range(tasks):
                nursery.start_soon(client, storage, n)
            for _ in range(restarts):
                with trio.fail_after(30):
                    await all_served()  # the service resumed
                await trio.to_thread.run_sync(server.stop_immediate)
                await trio.sleep(0.05)  # the tasks keep trying against a stopped server
                await trio.to_thread.run_sync(server.start)
            with trio.fail_after(30):
                await all_served()
            stop = True
    assert errors > 0, "the restarts went unnoticed"


# ------------------------------------------------------------------ command line


async def test_purge_from_the_command_line(dsn: str) -> None:
    past = ManualClock(start=1_000_000_000.0)  # 2001: sessions written then have expired
    with trio.fail_after(60):
        async with open_postgres_storage(dsn, table="cli_purge", wall_clock=past) as storage:
            await storage.write_bytes("old-1", b"x", ttl=60)
            await storage.write_bytes("old-2", b"x", ttl=60)
            await storage.write_bytes("kept", b"k")
        command = [sys.executable, "-m", "trio_sessions", "purge", "--postgres", dsn]
        done = await trio.run_process(
            [*command, "--table", "cli_purge"], capture_stdout=True, capture_stderr=True
        )
        assert done.stdout.decode().strip() == "purged 2 expired sessions from cli_purge"
        async with open_postgres_storage(dsn, table="cli_purge", wall_clock=past) as storage:
            assert await storage.read_bytes("kept") == b"k"
        missing = await trio.run_process(
            [*command, "--table", "no_such_table"], capture_stderr=True, check=False
        )
        assert missing.returncode == 1
        assert b"no_such_table" in missing.stderr


async def test_runs_in_the_callers_nursery_and_refuses_operations_outside(dsn: str) -> None:
    storage = PostgresStorage(dsn)  # checks its arguments, connects nowhere yet
    with pytest.raises(RuntimeError, match=r"nursery\.start\(storage\.run\)"):
        await storage.read_bytes("a")
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(storage.run)
            await storage.write_bytes("a", b"in your nursery")
            assert await storage.read_bytes("a") == b"in your nursery"
            await storage.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await storage.read_bytes("a")


async def test_operations_after_the_block_are_refused(dsn: str) -> None:
    with trio.fail_after(20):
        async with open_postgres_storage(dsn) as storage:
            await storage.write_bytes("a", b"inside the block")
            assert await storage.read_bytes("a") == b"inside the block"
    with pytest.raises(trio.ClosedResourceError):
        await storage.read_bytes("a")


# ------------------------------------------- the asyncio bridge, over asyncpg


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


async def test_the_asyncio_bridge_cancels_asyncpg_statements_on_the_server(dsn: str) -> None:
    """`trio_sessions.asyncio` with an asyncio-only driver: cancelling the trio call
    cancels asyncpg's statement on the server before the call returns."""
    asyncpg = require_module("asyncpg")
    require_module("trio_asyncio")
    from trio_sessions.asyncio import open_asyncio_storage

    @asynccontextmanager
    async def open_store() -> AsyncIterator[PgSleepStore]:
        settings = {"application_name": APP}
        async with asyncpg.create_pool(
            dsn, min_size=1, max_size=1, server_settings=settings
        ) as pool:
            yield PgSleepStore(pool)

    with trio.fail_after(30):
        async with admin(dsn) as sql, open_asyncio_storage(open_store()) as storage:
            await storage.write_bytes("a", b"value a")
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def slow_read() -> None:
                    with scope:
                        await storage.read_bytes("slow")

                nursery.start_soon(slow_read)
                assert await sql.active_query() == "SELECT pg_sleep(3600)"
                scope.cancel()
            assert scope.cancelled_caught
            # The trio call returned only after the server had cancelled the query.
            assert [state for state, _ in await sql.ours()] == ["idle"]
            # One connection, reused at once: no late reply reaches the next calls.
            assert await storage.read_bytes("a") == b"value a"
            await storage.write_bytes("b", b"value b")
            assert await storage.read_bytes("b") == b"value b"
