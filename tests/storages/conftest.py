"""Fixtures shared by the storage tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from trio_sessions.testing.servers import RedisServer, redis_cluster, redis_server


@pytest.fixture(scope="module")
def redis_single(redis_binary: str) -> Iterator[RedisServer]:
    """A private server for one test module (its tests may stop or fill it)."""
    with redis_server(redis_binary) as server:
        yield server


@pytest.fixture(scope="module")
def redis_cluster_nodes(redis_binary: str) -> Iterator[list[RedisServer]]:
    """A private 3-primary Cluster for one test module."""
    with redis_cluster(3, redis_binary) as servers:
        yield servers
