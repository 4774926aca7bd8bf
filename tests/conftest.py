"""Shared by every test module: the private-server fixtures and a settable wall clock."""

from __future__ import annotations

import pytest

# private_redis, redis_url, private_postgres, postgres_dsn: servers of this test run.
pytest_plugins = ["trio_sessions.testing.pytest_plugin"]


class WallClock:
    """A settable stand-in for `time.time` (the session layer's and persistent storages')."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def wall_clock() -> WallClock:
    return WallClock()
