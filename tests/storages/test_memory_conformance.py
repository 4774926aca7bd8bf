from __future__ import annotations

from trio_sessions import MemoryStorage
from trio_sessions.testing import ManualClock, StorageConformance


class TestMemoryStorageConformance(StorageConformance):
    def open_storage(self, clock: ManualClock) -> MemoryStorage:
        return MemoryStorage(clock=clock)
