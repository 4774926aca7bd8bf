"""`PostgresStorage`: sessions in a PostgreSQL table, over libpq driven natively by trio.

One table holds every session::

    CREATE TABLE trio_sessions (
        id_hash    bytea PRIMARY KEY,  -- SHA-256 of the session id; ids are never stored
        data       bytea NOT NULL,
        expires_at timestamptz,        -- NULL: no storage-level expiry
        version    bigint NOT NULL     -- random, new on every write: compare-and-set
    );
    CREATE INDEX trio_sessions_expires_at ON trio_sessions (expires_at)
        WHERE expires_at IS NOT NULL;

Every operation is one statement, prepared once per connection and run with binary
parameters: a write is an upsert, a read returns the row only while ``expires_at`` is in
the future, a conditional write is an ``UPDATE ... WHERE version = $n`` (or, expecting
nothing, an upsert whose ``DO UPDATE`` applies only to an expired row), and
`PostgresStorage.purge` deletes expired rows in batches. Expiry times come from the
application's clock (like Django's database sessions), so the application hosts' clocks
must agree with each other; the server's clock is never consulted.

The connections (`._pq`) use psycopg's low-level libpq wrapper, imported when a storage
is made: this module imports without the ``postgres`` extra.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

import trio

from .._abc import DEFAULT_MAX_SIZE, PurgeResult
from .._base import ConditionalBase, collapsed_errors
from .._errors import StorageError
from .._running import opener

if TYPE_CHECKING:
    from ._pq import Pool, Statement

__all__ = ["PostgresStorage", "PostgresStorageStatistics", "open_postgres_storage"]

_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,47}"
_TABLE = re.compile(rf"(?:({_NAME})\.)?({_NAME})", re.ASCII)
# Rows deleted per statement by `PostgresStorage.purge` (short locks, bounded WAL bursts).
PURGE_BATCH = 5000

# Binary wire formats: bytea is the bytes themselves, bigint 8 bytes big-endian, and
# timestamptz microseconds since 2000-01-01 UTC as a bigint (the int64 extremes are
# -infinity and infinity).
_BYTEA, _INT8, _TIMESTAMPTZ = 17, 20, 1184
_INT64 = struct.Struct("!q")
_EPOCH_2000 = 946_684_800.0
_INFINITY = 2**63 - 1
_LAST_MICROSECOND = 9_223_371_331_200_000_000  # PostgreSQL's end of time, 294277 AD
_random = random.Random()  # reseeded in a forked child, like the module's


@final
@dataclass(frozen=True, slots=True)
class PostgresStorageStatistics:
    """What `PostgresStorage.statistics` reports about its connections."""

    #: Connections open now: idle, in use, or being opened.
    connections: int
    #: Open connections waiting for an operation.
    idle: int
    #: Connections opened since the storage opened.
    opened: int
    #: Connections closed because their state was in doubt (a cancelled statement that
    #: did not end in time, a lost server), including idle ones found dead.
    discarded: int
    #: Cancel requests sent to the server for statements of cancelled operations.
    cancel_requests: int


def _split_table(table: str) -> tuple[str, str]:
    """Return *table* quoted for SQL, and its unqualified name."""
    match = _TABLE.fullmatch(table) if isinstance(table, str) else None
    if match is None:
        raise ValueError(
            f"table must be a plain or schema-qualified SQL name (letters, digits, _), "
            f"not {table!r}"
        )
    schema, name = match.group(1), match.group(2)
    return (f'"{schema}"."{name}"' if schema else f'"{name}"'), name


def _schema_sql(table: str) -> str:
    qualified, name = _split_table(table)
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified} (\n"
        "    id_hash bytea PRIMARY KEY,\n"
        "    data bytea NOT NULL,\n"
        "    expires_at timestamptz,\n"
        "    version bigint NOT NULL\n"
        ");\n"
        f'CREATE INDEX IF NOT EXISTS "{name}_expires_at" ON {qualified} (expires_at)\n'
        "    WHERE expires_at IS NOT NULL;\n"
    )


def _migration_sql(qualified: str) -> str:
    """Add the version column to a table made before conditional writes."""
    return (
        f"ALTER TABLE {qualified} ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 1;\n"
        f"ALTER TABLE {qualified} ALTER COLUMN version DROP DEFAULT;\n"
    )


def _timestamp(seconds: float) -> bytes:
    if not math.isfinite(seconds):
        return _INT64.pack(_INFINITY if seconds > 0 else -_INFINITY - 1)
    micros = round((seconds - _EPOCH_2000) * 1e6)
    if micros >= _LAST_MICROSECOND:
        micros = _INFINITY
    return _INT64.pack(micros)


def _key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("ascii")).digest()


def _new_version() -> int:
    return _random.getrandbits(63) or 1  # never reused in practice: 2**63 values


@final
class PostgresStorage(ConditionalBase):
    """Sessions in a PostgreSQL table, with conditional writes.

    Open one with `open_postgres_storage` (same arguments), or start it in a nursery
    you have, where its connection pool then runs::

        storage = PostgresStorage(dsn)
        await nursery.start(storage.run)  # connected, table ready
        ...
        await storage.aclose()

    :param dsn: a libpq connection string, URL (``postgresql://user@host/db?sslmode=...``)
        or ``key=value`` form. Every libpq option applies: TLS (``sslmode``,
        ``sslrootcert``, ...), several hosts and ``target_session_attrs``,
        ``connect_timeout``, ``application_name``, and server settings through
        ``options`` (``options=-c statement_timeout=5s`` bounds every statement on
        the server). The ``PG*`` environment variables and ``.pgpass`` work as in psql.
    :param table: the sessions table, optionally schema-qualified (``"app.sessions"``).
    :param max_size: the largest session payload, in bytes.
    :param max_connections: the most connections open at once; more concurrent
        operations wait for one in arrival order.
    :param min_connections: connections kept open while idle (re-opened after a loss).
    :param max_idle: seconds after which an unused connection beyond
        *min_connections* is closed.
    :param create_table: create the table and its index if missing (see
        `PostgresStorage.schema_sql`),
        and add the ``version`` column to a table made by an older version; with
        ``False`` the table must exist with that column.
    :param wall_clock: seconds since the epoch, for expiry times (`time.time`).

    A server that cannot be reached when opening raises `StorageError`. One lost
    later makes the operations that need it raise `StorageError` until it returns;
    the storage reconnects by itself. Requires the ``postgres`` extra (psycopg).

    Operations before `run` has started raise `RuntimeError`.
    """

    def __init__(
        self,
        dsn: str,
        *,
        table: str = "trio_sessions",
        max_size: int = DEFAULT_MAX_SIZE,
        max_connections: int = 10,
        min_connections: int = 1,
        max_idle: float = 60.0,
        create_table: bool = True,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(max_size=max_size)
        if not isinstance(dsn, str):
            raise TypeError(f"dsn must be a str, not {type(dsn).__name__}")
        self._quoted, _ = _split_table(table)
        for name, value, least in (
            ("max_connections", max_connections, 1),
            ("min_connections", min_connections, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int")
            if value < least:
                raise ValueError(f"{name} must be at least {least} (got {value})")
        if min_connections > max_connections:
            raise ValueError("min_connections must not exceed max_connections")
        if not (isinstance(max_idle, int | float) and 0 < max_idle < math.inf):
            raise ValueError(f"max_idle must be a positive number of seconds (got {max_idle!r})")
        from . import _pq  # psycopg: the 'postgres' extra

        _pq.parse(dsn)  # a malformed string fails here, not at the first connection
        self._table = table
        self._create_table = create_table
        self._wall_clock = wall_clock
        self._pool: Pool = _pq.Pool(
            dsn, max_size=max_connections, min_size=min_connections, max_idle=float(max_idle)
        )
        self._scope: trio.CancelScope | None = None
        self._started = False
        t = self._quoted
        alive = "(expires_at IS NULL OR expires_at > $%d)"

        def statement(name: str, sql: str, *types: int) -> Statement:
            return _pq.Statement(f"trio_sessions_{name}", sql, types)

        bytea, int8, ts = _BYTEA, _INT8, _TIMESTAMPTZ
        self._sql_load = statement(
            "load", f"SELECT data, version FROM {t} WHERE id_hash = $1 AND {alive % 2}", bytea, ts
        )
        upsert = (
            f"INSERT INTO {t} AS s (id_hash, data, expires_at, version) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (id_hash) DO UPDATE SET data = excluded.data, "
            "expires_at = excluded.expires_at, version = excluded.version"
        )
        self._sql_store = statement("store", upsert, bytea, bytea, ts, int8)
        # Expecting no value: insert, or replace a row that has expired.
        self._sql_create = statement(
            "create", f"{upsert} WHERE s.expires_at <= $5", bytea, bytea, ts, int8, ts
        )
        self._sql_replace = statement(
            "replace",
            f"UPDATE {t} SET data = $2, expires_at = $3, version = $4 "
            f"WHERE id_hash = $1 AND version = $5 AND {alive % 6}",
            *(bytea, bytea, ts, int8, int8, ts),
        )
        self._sql_delete = statement("delete", f"DELETE FROM {t} WHERE id_hash = $1", bytea)
        self._sql_delete_if = statement(
            "delete_if",
            f"DELETE FROM {t} WHERE id_hash = $1 AND version = $2 AND {alive % 3}",
            *(bytea, int8, ts),
        )
        # The outer expiry test is evaluated again on a row that a concurrent write
        # renewed, so a purge never deletes a session that is no longer expired.
        self._sql_purge = statement(
            "purge",
            f"DELETE FROM {t} WHERE expires_at <= $1 AND id_hash IN "
            f"(SELECT id_hash FROM {t} WHERE expires_at <= $1 LIMIT $2)",
            *(ts, int8),
        )

    @property
    def table(self) -> str:
        """The table that holds the sessions."""
        return self._table

    def statistics(self) -> PostgresStorageStatistics:
        """The connection pool's counters: what is open now, and what happened so far."""
        return PostgresStorageStatistics(*self._pool.counters())

    @staticmethod
    def schema_sql(table: str = "trio_sessions") -> str:
        """The SQL that creates *table* and its index (what ``create_table=True`` runs)."""
        return _schema_sql(table)

    async def purge(self) -> PurgeResult:
        """Delete expired sessions; return how many (`PurgeResult.expired`).

        Reads already ignore expired rows; purging reclaims their space. Run it on a
        schedule (every few minutes to hourly, from one process: ``trio-sessions purge
        --postgres DSN`` does it from cron). It deletes in batches of 5,000 rows (short
        locks) and never deletes a session renewed while it runs.
        """
        self._check_running()
        now = _timestamp(self._wall_clock())  # fixed: rows that expire meanwhile wait for next time
        limit = _INT64.pack(PURGE_BATCH)
        total = 0
        while True:
            try:
                result = await self._pool.query(self._sql_purge, (now, limit))
            except Exception as exc:
                raise self._failure("purge", exc) from exc
            deleted = result.command_tuples or 0
            total += deleted
            if deleted < PURGE_BATCH:
                return PurgeResult(expired=total)

    async def run(  # noqa: ASYNC114
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, prepare the table, then run the connection pool until `aclose`.

        `open_postgres_storage` starts it with ``nursery.start``: the storage is ready
        when that returns. A server that cannot be reached, or a table that cannot be
        used, raises `StorageError` from there.
        """
        if self._started:
            raise RuntimeError("this PostgresStorage has already been started")
        self._started = True
        try:
            with trio.CancelScope() as self._scope, collapsed_errors():
                if self._closed:
                    await trio.lowlevel.checkpoint()
                    return
                async with trio.open_nursery() as nursery:
                    self._pool.start(nursery)
                    try:
                        await self._prepare_table()
                    except Exception as exc:
                        message = f"could not open {type(self).__name__}: {exc}"
                        raise StorageError(message) from exc
                    nursery.start_soon(self._pool.maintain)
                    task_status.started()
        finally:
            self._closed = True
            self._pool.close()

    # ------------------------------------------------------------ StorageBase hooks

    def _check(self, session_id: str) -> None:
        self._check_running()
        super()._check(session_id)

    async def _load(self, session_id: str) -> bytes | None:
        found = await self._load_versioned(session_id)
        return None if found is None else found[0]

    async def _load_versioned(self, session_id: str) -> tuple[bytes, int] | None:
        params = (_key(session_id), _timestamp(self._wall_clock()))
        result = await self._pool.query(self._sql_load, params)
        if not result.ntuples:
            return None
        data, version = result.get_value(0, 0), result.get_value(0, 1)
        assert data is not None  # both columns are NOT NULL
        assert version is not None
        return data, _INT64.unpack(version)[0]

    async def _store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        await self._pool.query(self._sql_store, self._row(session_id, data, ttl, _new_version()))

    async def _store_if(
        self, session_id: str, data: bytes, ttl: float | None, version: int | None
    ) -> int | None:
        new = _new_version()
        row = self._row(session_id, data, ttl, new)
        if version is None:
            result = await self._pool.query(
                self._sql_create, (*row, _timestamp(self._wall_clock()))
            )
        else:
            condition = (_INT64.pack(version), _timestamp(self._wall_clock()))
            result = await self._pool.query(self._sql_replace, (*row, *condition))
        return new if result.command_tuples else None

    async def _delete(self, session_id: str) -> None:
        await self._pool.query(self._sql_delete, (_key(session_id),))

    async def _delete_if(self, session_id: str, version: int) -> bool:
        params = (_key(session_id), _INT64.pack(version), _timestamp(self._wall_clock()))
        result = await self._pool.query(self._sql_delete_if, params)
        return bool(result.command_tuples)

    async def _close(self) -> None:  # noqa: ASYNC910 (the base class checkpoints)
        if self._scope is not None:
            self._scope.cancel()
        self._pool.close()

    # ------------------------------------------------------------------ internals

    def _row(
        self, session_id: str, data: bytes, ttl: float | None, version: int
    ) -> tuple[bytes, bytes, bytes | None, bytes]:
        expires = None if ttl is None else _timestamp(self._wall_clock() + ttl)
        return _key(session_id), data, expires, _INT64.pack(version)

    def _check_running(self) -> None:
        if not self._started and not self._closed:
            raise RuntimeError(
                "PostgresStorage is not running: open it with open_postgres_storage(),"
                " or start it with await nursery.start(storage.run)"
            )
        if self._closed:
            raise trio.ClosedResourceError(f"{type(self).__name__} is closed")

    async def _prepare_table(self) -> None:
        """Check the table (the first connection's round trip); create or migrate it."""
        from psycopg import ProgrammingError

        # Names are validated (letters, digits, _), so quoting them as literals is safe.
        literal = self._quoted.replace("'", "''")
        probe = (
            f"SELECT to_regclass('{literal}') IS NOT NULL, EXISTS (SELECT FROM pg_attribute"
            f" WHERE attrelid = to_regclass('{literal}') AND attname = 'version'"
            " AND NOT attisdropped)"
        )
        (result,) = await self._pool.execute(probe.encode())
        exists, has_version = (result.get_value(0, n) == b"t" for n in range(2))
        if exists and has_version:
            return
        if not self._create_table:
            if not exists:
                return  # operations will say so; the table may be created later
            raise ProgrammingError(
                f"table {self._table} has no version column (made by an older trio-sessions);"
                f" add it with: {_migration_sql(self._quoted)}"
                " or open the storage with create_table=True"
            )
        ddl = _migration_sql(self._quoted) if exists else _schema_sql(self._table)
        # Serialize creators: concurrent CREATE ... IF NOT EXISTS can still collide.
        lock = f"SELECT pg_advisory_xact_lock(hashtext('{literal}'));\n"
        await self._pool.execute((lock + ddl).encode())


open_postgres_storage = opener(
    PostgresStorage,
    "open_postgres_storage",
    """Open a `PostgresStorage` with the arguments given, its connection pool running in
    a nursery of its own: connected and with its table ready when the block starts,
    closed when it exits. Bad arguments raise before any connection is tried; a server
    that cannot be reached raises `StorageError` on entry.

    ::

        async with open_postgres_storage("postgresql://app@db.internal/app") as storage:
            ...
    """,
)
