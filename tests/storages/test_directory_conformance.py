from __future__ import annotations

from pathlib import Path

import pytest

from trio_sessions import DirectoryStorage
from trio_sessions.testing import ManualClock, StorageConformance


class TestDirectoryStorageConformance(StorageConformance):
    @pytest.fixture(autouse=True)
    def _root(self, tmp_path: Path) -> None:
        self.root = tmp_path

    def open_storage(self, clock: ManualClock) -> DirectoryStorage:
        # One root for every example: the harness uses fresh ids each time.
        return DirectoryStorage(self.root, wall_clock=clock)
