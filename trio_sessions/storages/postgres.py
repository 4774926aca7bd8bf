"""`PostgresStorage`: sessions in a PostgreSQL table, through asyncpg and the asyncio bridge.

One table holds every session::

    CREATE TABLE trio_sessions (
        id_hash    bytea PRIMARY KEY,  -- SHA-256 of the session id; ids are never stored
        data       bytea NOT NULL,
        expires_at timestamptz         -- NULL: no storage-level expiry
    );
    CREATE INDEX trio_sessions_expires_at ON trio_sessions (expires_at)
        WHERE expires_at IS NOT NULL;

A write is one upsert; a read returns the row only while ``expires_at`` is in the future,
and `PostgresStorage.purge` deletes expired rows in batches. Expiry times come from the
application's clock (like Django's database sessions), so the application hosts' clocks
must agree with each other; the server's clock is never consulted.

asyncpg and trio-asyncio are imported when a storage is opened: this module imports
without the ``postgres`` extra.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, final

import trio

from .._abc import DEFAULT_MAX_SIZE
from .._asyncio_bridge import BridgedStorage, open_bridged
from .._errors import StorageError

if TYPE_CHECKING:
    import asyncpg

__all__ = ["PostgresStorage", "open_postgres_storage", "schema_sql"]

_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,47}"
_TABLE = re.compile(rf"(?:({_NAME})\.)?({_NAME})", re.ASCII)
_FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)
#: Rows deleted per statement by `PostgresStorage.purge` (short locks, bounded WAL bursts).
PURGE_BATCH = 5000


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


def schema_sql(table: str = "trio_sessions") -> str:
    """The SQL that creates *table* and its index (what ``create_table=True`` runs)."""
    qualified, name = _split_table(table)
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified} (\n"
        "    id_hash bytea PRIMARY KEY,\n"
        "    data bytea NOT NULL,\n"
        "    expires_at timestamptz\n"
        ");\n"
        f'CREATE INDEX IF NOT EXISTS "{name}_expires_at" ON {qualified} (expires_at)\n'
        "    WHERE expires_at IS NOT NULL;\n"
    )


def _timestamp(seconds: float) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, ValueError, OSError):
        return _FAR_FUTURE


def _key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("ascii")).digest()


async def _keep_connection_state(connection: object) -> None:
    """Pool reset hook: our statements leave no session state, so skip asyncpg's reset query."""


@final
class _PostgresStore:
    """The asyncio side: asyncpg statements over a pool (all methods run on asyncio)."""

    def __init__(self, pool: asyncpg.Pool, table: str, clock: Callable[[], float]) -> None:
        t, _ = _split_table(table)
        self.pool = pool
        self.quoted = t
        self.table = table
        self.clock = clock
        self.sql_load = (
            f"SELECT data FROM {t} WHERE id_hash = $1 AND (expires_at IS NULL OR expires_at > $2)"
        )
        self.sql_store = (
            f"INSERT INTO {t} (id_hash, data, expires_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (id_hash) DO UPDATE "
            "SET data = excluded.data, expires_at = excluded.expires_at"
        )
        self.sql_delete = f"DELETE FROM {t} WHERE id_hash = $1"
        # The outer expiry test is evaluated again on a row that a concurrent write
        # renewed, so a purge never deletes a session that is no longer expired.
        self.sql_purge = (
            f"DELETE FROM {t} WHERE expires_at <= $1 AND id_hash IN "
            f"(SELECT id_hash FROM {t} WHERE expires_at <= $1 LIMIT $2)"
        )

    async def create_table(self) -> None:
        async with self.pool.acquire() as connection, connection.transaction():
            # Serialize creators: concurrent CREATE ... IF NOT EXISTS can still collide.
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.table)
            if await connection.fetchval("SELECT to_regclass($1)", self.quoted) is None:
                await connection.execute(schema_sql(self.table))

    async def load(self, session_id: str) -> bytes | None:
        now = _timestamp(self.clock())
        data: bytes | None = await self.pool.fetchval(self.sql_load, _key(session_id), now)
        return data

    async def store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        expires = None if ttl is None else _timestamp(self.clock() + ttl)
        await self.pool.execute(self.sql_store, _key(session_id), data, expires)

    async def delete(self, session_id: str) -> None:
        await self.pool.execute(self.sql_delete, _key(session_id))

    async def purge(self) -> int:
        now = _timestamp(self.clock())  # fixed: rows that expire meanwhile wait for next time
        total = 0
        while True:
            status: str = await self.pool.execute(self.sql_purge, now, PURGE_BATCH)
            deleted = int(status.rsplit(" ", 1)[-1])
            total += deleted
            if deleted < PURGE_BATCH:
                return total


@asynccontextmanager
async def _open_store(
    dsn: str,
    table: str,
    clock: Callable[[], float],
    max_connections: int,
    create_table: bool,
    pool_options: Mapping[str, Any],
) -> AsyncIterator[_PostgresStore]:
    """An asyncio context manager: the pool lives exactly as long as the storage."""
    import asyncpg

    options: dict[str, Any] = {
        "min_size": 1,
        "max_size": max_connections,
        "reset": _keep_connection_state,
    }
    options.update(pool_options)
    async with asyncpg.create_pool(dsn, **options) as pool:
        store = _PostgresStore(pool, table, clock)
        if create_table:
            await store.create_table()
        yield store


@final
class PostgresStorage(BridgedStorage):
    """Sessions in a PostgreSQL table; made by `open_postgres_storage`."""

    _backend: _PostgresStore

    @property
    def table(self) -> str:
        """The table that holds the sessions."""
        return self._backend.table

    async def purge(self) -> int:
        """Delete expired sessions; return how many.

        Reads already ignore expired rows; purging reclaims their space. Run it on a
        schedule (every few minutes to hourly, from one process: ``trio-sessions purge
        --postgres DSN`` does it from cron). It deletes in batches of `PURGE_BATCH` rows
        and never deletes a session renewed while it runs.
        """
        if self.closed:
            raise trio.ClosedResourceError(f"{type(self).__name__} is closed")
        try:
            return await self._call(self._backend.purge)
        except StorageError:
            raise
        except Exception as exc:
            raise self._failure("purge", exc) from exc


@asynccontextmanager
async def open_postgres_storage(
    dsn: str,
    *,
    table: str = "trio_sessions",
    max_size: int = DEFAULT_MAX_SIZE,
    max_connections: int = 10,
    create_table: bool = True,
    clock: Callable[[], float] = time.time,
    pool_options: Mapping[str, Any] | None = None,
) -> AsyncIterator[PostgresStorage]:
    """Open a `PostgresStorage` on the database at *dsn* (a ``postgresql://`` URL).

    :param dsn: where to connect, as asyncpg takes it (libpq URL or key=value string).
    :param table: the sessions table, optionally schema-qualified (``"app.sessions"``).
    :param max_size: the largest session payload, in bytes.
    :param max_connections: the connection pool's size; the pool opens one connection
        at first and grows on demand. It is closed when the block exits.
    :param create_table: create the table and its index if missing (see `schema_sql`);
        with ``False`` the table must exist.
    :param clock: seconds since the epoch, for expiry times (`time.time`).
    :param pool_options: more keyword arguments for ``asyncpg.create_pool`` (``ssl``,
        ``server_settings``, ``connect``, ...).

    The storage runs asyncpg on a trio-asyncio loop (see :mod:`trio_sessions.asyncio`):
    the enclosing ``trio_asyncio.open_loop()`` if there is one, else its own. A server
    that cannot be reached when opening raises `StorageError`; one lost later makes the
    operations that need it raise `StorageError` until it returns, and the pool
    reconnects by itself. Requires the ``postgres`` extra (asyncpg, trio-asyncio).
    """
    _split_table(table)
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise TypeError("max_connections must be an int")
    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1 (got {max_connections})")
    store = _open_store(dsn, table, clock, max_connections, create_table, pool_options or {})
    async with open_bridged(PostgresStorage, store, max_size=max_size) as storage:
        yield storage
