"""Private servers for the benchmark: Redis/Valkey and PostgreSQL, on 127.0.0.1 only.

They are started by `trio_sessions.testing.servers` (shared with the tests and the soak
suite), without persistence or durability. This module adds what only the benchmark
needs: a snapshot of the Redis server's identity and ``redis-benchmark`` figures.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from trio_sessions.testing import servers

# ---------------------------------------------------------------------- Redis


@dataclass(frozen=True)
class RedisServer:
    url: str
    port: int
    version: str
    binary: str


@contextlib.contextmanager
def redis_server(binary: str) -> Iterator[RedisServer]:
    """A private server: no persistence, loopback only; stopped by its pid on exit."""
    with servers.redis_server(binary) as server:
        yield RedisServer(server.url, server.port, server.version, binary)


def _redis_benchmark() -> str | None:
    return shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")


def redis_benchmark(
    port: int, *, clients: int, requests: int, size: int, host: str = servers.LOCALHOST
) -> dict[str, float]:
    """``redis-benchmark -t set,get`` requests per second on the server, or {} without it."""
    binary = _redis_benchmark()
    if binary is None:
        return {}
    argv = [binary, "-h", host, "-p", str(port), "-t", "set,get", "-d", str(size)]
    argv += ["-n", str(requests), "-c", str(clients), "--csv"]
    output = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300).stdout
    rows = csv.reader(io.StringIO(output))
    return {row[0]: float(row[1]) for row in rows if row and row[0] in ("SET", "GET")}


def redis_benchmark_version() -> str | None:
    binary = _redis_benchmark()
    if binary is None:
        return None
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip() or None


# ----------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def postgres_server(bindir: Path) -> Iterator[str]:
    """A throwaway cluster (durability off, loopback only); yields its DSN.

    PostgreSQL refuses to run as root: then the server runs as ``postgres`` or ``nobody``.
    """
    with servers.postgres_server(bindir) as server:
        yield server.dsn


def postgres_version(bindir: Path) -> str | None:
    """The server's version, as ``postgres --version`` gives it ("PostgreSQL 15.18 ...")."""
    try:
        done = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    version = done.stdout.strip().removeprefix("postgres (PostgreSQL)").strip()
    return f"PostgreSQL {version}" if done.returncode == 0 and version else None
