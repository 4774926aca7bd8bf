"""A private, throwaway PostgreSQL cluster for the tests and the benchmark.

`PostgresServer` runs ``initdb`` and ``pg_ctl`` from Debian's ``postgresql`` package in a
temporary directory, listening on 127.0.0.1 only, on a free port. PostgreSQL refuses to
run as root, so under root (as in CI) every server command runs as an unprivileged
system user through ``runuser`` and the temporary directory belongs to that user.

When the binaries are missing the tests that need a server are skipped with the reason
shown, except under ``CI=true``, where that is a failure: CI installs the package.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["PostgresServer", "find_bindir", "postgres_server", "require_bindir"]

#: A superuser created by initdb; the cluster trusts local connections (it is private).
USER = "trio_sessions"
#: Server settings for a disposable test cluster: durability off, loopback only.
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "32MB",
}


def find_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with initdb, else initdb on PATH."""

    def version(path: str) -> int:
        part = Path(path).parent.name
        return int(part) if part.isdigit() else 0

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def require_bindir() -> Path:
    """Return the server binaries' directory, or skip (fail under ``CI=true``)."""
    bindir = find_bindir()
    if bindir is None:
        reason = "PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return bindir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_user() -> str | None:
    """The user the server runs as: ``None`` (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' user exists")


class PostgresServer:
    """One private cluster; `start` and `stop` may be called repeatedly (same port)."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self._user = _server_user()

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self._user, "--"] if self._user else []
        result = subprocess.run(
            [*prefix, *command],
            cwd=self.root,  # the server's user may not be able to enter ours
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{command[0]} failed ({result.returncode}):\n{result.stdout}{result.stderr}{tail}"
            )

    def initdb(self) -> None:
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            USER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )

    def start(self) -> None:
        options = " ".join(f"-c {key}={value}" for key, value in SETTINGS.items())
        options += f" -p {self.port} -k {self.root}"
        self._run(
            str(self.bindir / "pg_ctl"),
            "--pgdata",
            str(self.data),
            "--log",
            str(self.root / "server.log"),
            "--options",
            options,
            "--wait",
            "start",
        )

    def pid(self) -> int | None:
        """The postmaster's pid, from its pid file, or ``None`` if it is not running."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def stop(self) -> None:
        """Stop the server by its pid: fast shutdown, then immediate, then kill."""
        pid = self.pid()
        if pid is None:
            return
        for sig, wait in ((signal.SIGINT, 30.0), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.pid() is None:
                    return
                time.sleep(0.02)
        raise RuntimeError(f"PostgreSQL server {pid} did not stop")


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a private cluster; stop it and delete its directory on exit."""
    bindir = require_bindir()
    root = Path(tempfile.mkdtemp(prefix="trio-sessions-pg-"))
    server = PostgresServer(bindir, root)
    try:
        server.initdb()
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
