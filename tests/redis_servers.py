"""Private Redis/Valkey servers for the tests: re-exported from the shared implementation.

Kept so that the tests importing it keep working; new code imports
`trio_sessions.testing.servers` (and the fixtures of `trio_sessions.testing.pytest_plugin`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from trio_sessions.testing import servers
from trio_sessions.testing.pytest_plugin import missing, require_module
from trio_sessions.testing.servers import (
    RedisServer,
    ServerNotFound,
    find_redis_server,
    free_port,
    require_redis_server,
)

__all__ = [
    "RedisServer",
    "find_server_binary",
    "free_port",
    "redis_cluster",
    "redis_server",
    "require_module",
    "require_server_binary",
]

find_server_binary = find_redis_server


def require_server_binary() -> str:
    """The server binary, or skip (fail under ``CI=true``)."""
    try:
        return require_redis_server()
    except ServerNotFound as exc:
        missing(str(exc))


@contextmanager
def redis_server(**config: str) -> Iterator[RedisServer]:
    """Start a private server (``config`` adds server options); stop it on exit."""
    with servers.redis_server(require_server_binary(), **config) as server:
        yield server


@contextmanager
def redis_cluster(masters: int = 3) -> Iterator[list[RedisServer]]:
    """Start a Cluster of *masters* primaries (no replicas) sharing the 16384 slots."""
    with servers.redis_cluster(masters, require_server_binary()) as nodes:
        yield nodes
