"""A custom storage: sessions in SQLite, written as a BytesStorage."""

import hashlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import final

import trio

from trio_sessions import BytesStorage
from trio_sessions.testing import ManualClock, check_storage

SCHEMA = "CREATE TABLE IF NOT EXISTS sessions (key BLOB PRIMARY KEY, data BLOB, expires REAL)"


def _key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()  # ids are credentials: store a hash


@final
class SQLiteStorage(BytesStorage):
    def __init__(self, db: sqlite3.Connection, *, clock: Callable[[], float]) -> None:
        super().__init__()
        self._db = db
        self._clock = clock
        # One connection, so one thread at a time; the event loop never waits for SQLite.
        self._limiter = trio.CapacityLimiter(1)

    async def load(self, session_id: str) -> bytes | None:
        query = "SELECT data FROM sessions WHERE key = ? AND (expires IS NULL OR expires > ?)"
        arguments = (_key(session_id), self._clock())
        row = await trio.to_thread.run_sync(
            lambda: self._db.execute(query, arguments).fetchone(), limiter=self._limiter
        )
        return None if row is None else bytes(row[0])

    async def store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        expires = None if ttl is None else self._clock() + ttl
        await trio.to_thread.run_sync(
            self._db.execute,
            "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)",  # atomic
            (_key(session_id), data, expires),
            limiter=self._limiter,
        )

    async def delete(self, session_id: str) -> None:
        await trio.to_thread.run_sync(
            self._db.execute,
            "DELETE FROM sessions WHERE key = ?",
            (_key(session_id),),
            limiter=self._limiter,
        )

    async def close(self) -> None:
        await trio.to_thread.run_sync(self._db.close, limiter=self._limiter)


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute(SCHEMA)
    return db


@asynccontextmanager
async def open_sqlite_storage(
    path: str, *, clock: Callable[[], float] = time.time
) -> AsyncIterator[SQLiteStorage]:
    db = await trio.to_thread.run_sync(_connect, path)
    async with SQLiteStorage(db, clock=clock) as storage:
        yield storage


# What the conformance harness calls: one fresh storage per example, on its clock.
# From a shell: trio-sessions check sqlite_storage:make_storage
def make_storage(clock: ManualClock) -> AbstractAsyncContextManager[SQLiteStorage]:
    return open_sqlite_storage(":memory:", clock=clock)


async def main() -> None:
    report = await check_storage(make_storage, max_examples=10)  # default: 50
    print(report.format())
    assert report.passed


if __name__ == "__main__":
    trio.run(main)
