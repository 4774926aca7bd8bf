"""pytest fixtures that start private Valkey/Redis and PostgreSQL servers.

Enable them in your top-level ``conftest.py``::

    pytest_plugins = ["trio_sessions.testing.pytest_plugin"]

The plugin is not registered automatically (it has no ``pytest11`` entry point), so
installing trio-sessions changes no project's pytest runs. It provides:

``redis_binary``, ``postgres_bindir`` (session scope)
    the server binaries found (see `~trio_sessions.testing.servers`), for tests that
    start servers of their own (to stop or restart them).
``private_redis`` (session scope)
    a running `~trio_sessions.testing.servers.RedisServer`.
``redis_url`` (each test)
    that server's URL, emptied with ``FLUSHALL`` before the test.
``private_postgres`` (session scope)
    a running `~trio_sessions.testing.servers.PostgresServer`.
``postgres_dsn`` (each test)
    the URL of a new, empty database on that server, dropped after the test.

When a server's binaries (or a module given to `require_module`) are missing, the test
is skipped with the reason, except when the environment variable ``CI`` is ``true``
(as hosted CI services set it): there a missing server is a failure, never a skip.
"""

from __future__ import annotations

import importlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import NoReturn, TypeVar

import pytest

from .servers import (
    PostgresServer,
    RedisServer,
    ServerNotFound,
    postgres_server,
    redis_server,
    require_postgres_bindir,
    require_redis_server,
)

__all__ = ["missing", "require_module"]

T = TypeVar("T")


def missing(reason: str) -> NoReturn:
    """Skip the current test for *reason*, or fail it when ``CI=true``; never returns."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def require_module(name: str) -> ModuleType:
    """Import *name*, or skip the test (fail it under ``CI=true``) if it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"{name} is not installed ({exc})")


def _found(find: Callable[[], T]) -> T:
    try:
        return find()
    except ServerNotFound as exc:
        missing(str(exc))


@pytest.fixture(scope="session")
def redis_binary() -> str:
    """The Redis/Valkey server binary (`~trio_sessions.testing.servers.find_redis_server`)."""
    return _found(require_redis_server)


@pytest.fixture(scope="session")
def postgres_bindir() -> Path:
    """The directory of PostgreSQL's ``initdb`` and ``pg_ctl``."""
    return _found(require_postgres_bindir)


@pytest.fixture(scope="session")
def private_redis(redis_binary: str) -> Iterator[RedisServer]:
    """A private Redis/Valkey server for the whole test session."""
    with redis_server(redis_binary) as server:
        yield server


@pytest.fixture
def redis_url(private_redis: RedisServer) -> str:
    """The private server's URL, its data emptied before the test."""
    private_redis.command("FLUSHALL")
    return private_redis.url


@pytest.fixture(scope="session")
def private_postgres(postgres_bindir: Path) -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster for the whole test session."""
    with postgres_server(postgres_bindir) as server:
        yield server


@pytest.fixture
def postgres_dsn(private_postgres: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database, dropped (with its connections) after the test."""
    name = f"test_{secrets.token_hex(6)}"
    private_postgres.psql(f'CREATE DATABASE "{name}"')
    try:
        yield private_postgres.dsn_for(name)
    finally:
        private_postgres.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
