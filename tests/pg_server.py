"""A private PostgreSQL cluster for the tests: re-exported from the shared implementation.

Kept so that the tests importing it keep working; new code imports
`trio_sessions.testing.servers` (and the fixtures of `trio_sessions.testing.pytest_plugin`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trio_sessions.testing import servers
from trio_sessions.testing.pytest_plugin import missing
from trio_sessions.testing.servers import PostgresServer, ServerNotFound

__all__ = ["PostgresServer", "find_bindir", "postgres_server", "require_bindir"]

find_bindir = servers.find_postgres_bindir


def require_bindir() -> Path:
    """Return the server binaries' directory, or skip (fail under ``CI=true``)."""
    try:
        return servers.require_postgres_bindir()
    except ServerNotFound as exc:
        missing(str(exc))


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a private cluster (skipped, or failed under ``CI=true``, without one)."""
    with servers.postgres_server(require_bindir()) as server:
        yield server
