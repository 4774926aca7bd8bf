"""Run every conformance check on SQLiteStorage with pytest."""

from contextlib import AbstractAsyncContextManager

from sqlite_storage import SQLiteStorage, open_sqlite_storage

from trio_sessions.testing import ManualClock, StorageConformance


class TestSQLiteStorage(StorageConformance):
    def open_storage(self, clock: ManualClock) -> AbstractAsyncContextManager[SQLiteStorage]:
        return open_sqlite_storage(":memory:", clock=clock)
