"""RedisStorage keeps the storage contract with both drivers, on one server and a Cluster,
with automatic pipelining on (the default) and off.

One private server and one 3-master Cluster serve the whole module. Set
``TRIO_SESSIONS_REDIS_EXAMPLES`` to raise the examples per property-based check.
"""

from __future__ import annotations

import os
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

import pytest

from trio_sessions import RedisStorage, open_redis_storage
from trio_sessions.testing import ManualClock, StorageConformance
from trio_sessions.testing.pytest_plugin import require_module
from trio_sessions.testing.servers import RedisServer

EXAMPLES = int(os.environ.get("TRIO_SESSIONS_REDIS_EXAMPLES", "15"))
# Generous: a loaded CI machine must not turn a slow reply into a failed check.
CLIENT_OPTIONS: dict[str, dict[str, Any]] = {
    "glide": {"request_timeout": 10_000},
    "coredis": {},
}


class _RedisConformance(StorageConformance):
    clock_controlled = False
    max_examples = EXAMPLES
    driver: ClassVar[str]
    cluster: ClassVar[bool]
    pipeline: ClassVar[bool] = True
    url: str

    @pytest.fixture(autouse=True)
    def _server(self, request: pytest.FixtureRequest) -> None:
        require_module("glide" if self.driver == "glide" else "coredis")
        if self.cluster:
            nodes: list[RedisServer] = request.getfixturevalue("redis_cluster_nodes")
            self.url = nodes[0].url
        else:
            server: RedisServer = request.getfixturevalue("redis_single")
            self.url = server.url

    def open_storage(self, clock: ManualClock) -> AbstractAsyncContextManager[RedisStorage]:
        return open_redis_storage(
            self.url,
            driver=self.driver,  # type: ignore[arg-type]
            cluster=self.cluster,
            pipeline=self.pipeline,
            **CLIENT_OPTIONS[self.driver],
        )


class TestGlideSingle(_RedisConformance):
    driver = "glide"
    cluster = False


class TestGlideSingleUnpipelined(_RedisConformance):
    driver = "glide"
    cluster = False
    pipeline = False


class TestCoredisSingle(_RedisConformance):
    driver = "coredis"
    cluster = False


class TestCoredisSingleUnpipelined(_RedisConformance):
    driver = "coredis"
    cluster = False
    pipeline = False


class TestGlideCluster(_RedisConformance):
    driver = "glide"
    cluster = True


class TestCoredisCluster(_RedisConformance):
    driver = "coredis"
    cluster = True
