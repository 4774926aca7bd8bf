"""What the soak suite breaks, and how it watches the app: processes, disks, connections.

Everything here is started and stopped by pid; nothing is found or killed by name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .client import Connection, HttpError

# ------------------------------------------------------------------- app processes


class AppProcess:
    """The soak app in a child process; restartable on the same port and storage."""

    def __init__(self, code_root: Path, run_dir: Path, argv: list[str], port: int) -> None:
        self.code_root = code_root
        self.run_dir = run_dir
        self.argv = argv
        self.port = port
        self.process: trio.Process | None = None
        self.starts = 0
        #: Where the app imported trio_sessions from.
        self.imports = ""

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    async def start(self) -> None:
        self.starts += 1
        ready = self.run_dir / f"ready-{self.starts}"
        log = (self.run_dir / "app.log").open("ab")
        try:
            self.process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.soak.app",
                    *self.argv,
                    *("--port", str(self.port), "--ready-file", str(ready)),
                ],
                cwd=self.code_root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        with trio.move_on_after(60):
            while not ready.exists():
                if self.process.poll() is not None:
                    tail = (self.run_dir / "app.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"the app exited at start:\n{tail}")
                await trio.sleep(0.02)
            self.imports = (await trio.Path(ready).read_text()).splitlines()[1]
            imported = await trio.Path(self.imports).resolve()
            if imported != await trio.Path(self.code_root).resolve():
                await self.kill()
                raise RuntimeError(
                    f"the app imported trio_sessions from {self.imports}, not from "
                    f"{self.code_root}: run from the checkout whose code is to be tested"
                )
            return
        await self.kill()
        raise RuntimeError("the app did not start within 60 s")

    async def kill(self) -> None:
        """SIGKILL, by pid, and reap."""
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            await process.wait()

    async def stop(self) -> None:
        """SIGTERM, by pid; SIGKILL after 15 s."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        with trio.move_on_after(15):
            await process.wait()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        await process.wait()


@dataclass
class Sample:
    t: float
    pid: int
    rss_kib: int
    fds: int


def sample(pid: int) -> Sample | None:
    """The resident memory and open file descriptors of *pid* (Linux ``/proc``)."""
    try:
        with open(f"/proc/{pid}/status") as file:
            rss = next(int(line.split()[1]) for line in file if line.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration, ValueError):
        return None
    return Sample(time.monotonic(), pid, rss, fds)


async def watch(app: AppProcess, samples: list[Sample], interval: float = 0.5) -> None:
    while True:
        pid = app.pid
        if pid is not None and (found := await trio.to_thread.run_sync(sample, pid)):
            samples.append(found)
        await trio.sleep(interval)


# ------------------------------------------------------------------------ probe


async def probe(host: str, port: int, limit: float = 60.0) -> float | None:
    """Seconds until a whole session (login, increment, read, logout) goes through, or
    ``None`` if none did within *limit*."""
    started = time.monotonic()
    connection = Connection(host, port, limit=5)
    try:
        with trio.move_on_after(limit):
            while True:
                if await _one_session(connection):
                    return time.monotonic() - started
                await trio.sleep(0.02)
    finally:
        await connection.aclose()
    return None


async def _one_session(connection: Connection) -> bool:
    try:
        login = await connection.request("POST", "/login?user=probe")
        cookie = login.session_cookie
        if login.status != 200 or not cookie:
            return False
        incr = await connection.request("POST", "/incr", cookie=cookie)
        state = await connection.request("GET", "/state", cookie=cookie)
        if incr.status != 200 or state.status != 200 or (state.json() or {}).get("n") != 1:
            return False
        for _ in range(50):  # clean up behind us: the probe's session must not stay
            logout = await connection.request("POST", "/logout", cookie=cookie)
            if logout.status == 200:
                return True
            await trio.sleep(0.05)
        return True
    except HttpError:
        return False


# ------------------------------------------------------------------- disk full


def loop_mount_possible() -> str | None:
    """Why a loop-mounted file system cannot be used here, or ``None`` if it can."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("mount", "umount", "mkfs.ext4"):
        if shutil.which(tool) is None:
            return f"no {tool}"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control"
    return None


@contextlib.contextmanager
def loop_filesystem(mount_point: Path, size_mib: int) -> Iterator[Path]:
    """A small ext4 file system in a file, mounted at *mount_point* (root only)."""
    image = mount_point.with_name(mount_point.name + ".img")
    mount_point.mkdir(parents=True, exist_ok=True)
    with image.open("wb") as file:
        file.truncate(size_mib * 1024 * 1024)
    try:
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-m", "0", "-i", "4096", str(image)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            ["mount", "-o", "loop", str(image), str(mount_point)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        try:
            yield mount_point
        finally:
            for attempt in range(50):
                done = subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=60)
                if done.returncode == 0:
                    break
                time.sleep(0.1)
                if attempt == 49:
                    subprocess.run(["umount", "-l", str(mount_point)], timeout=60, check=False)
    finally:
        image.unlink(missing_ok=True)


def fill(directory: Path) -> Path:
    """Fill the file system holding *directory* until it has no free block."""
    filler = directory / "filler"
    with filler.open("wb") as file:
        stats = os.statvfs(directory)
        free = stats.f_bavail * stats.f_frsize
        with contextlib.suppress(OSError):
            os.posix_fallocate(file.fileno(), 0, max(free - 64 * 1024, 1))
        chunk = b"\0" * 65536
        while True:
            try:
                file.write(chunk)
                file.flush()
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    break
                raise
        with contextlib.suppress(OSError):
            os.fsync(file.fileno())
    return filler


def limit_file_size(pid: int, limit: int | None) -> None:
    """Set the soft ``RLIMIT_FSIZE`` of *pid* (``None``: back to its hard limit)."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard if limit is None else limit, hard))


# -------------------------------------------------------------------- slowloris


@dataclass
class Slowloris:
    connections: int
    opened: int = 0
    refused: int = 0
    closed_by_server: int = 0
    open_at_end: int = 0
    bytes_sent: int = 0
    _open: set[int] = field(default_factory=set)


async def slowloris(host: str, port: int, state: Slowloris, interval: float = 2.0) -> None:
    """Hold *state.connections* connections that send a request's headers a line at a
    time, every *interval* seconds, and never finish; runs until cancelled."""

    async def one(n: int) -> None:
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            state.refused += 1
            return
        state.opened += 1
        state._open.add(n)
        try:
            await stream.send_all(b"GET /state HTTP/1.1\r\nHost: soak\r\n")
            state.bytes_sent += 34
            line = 0
            while True:
                await trio.sleep(interval)
                readable, _, _ = select.select([stream.socket.fileno()], [], [], 0)
                if readable:  # the server closed it (or answered it: it gave up on it)
                    raise trio.BrokenResourceError
                await stream.send_all(b"X-Slow-%d: x\r\n" % line)
                state.bytes_sent += 14
                line += 1
        except (OSError, trio.BrokenResourceError):
            state.closed_by_server += 1
            state._open.discard(n)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async with trio.open_nursery() as nursery:
        for n in range(state.connections):
            nursery.start_soon(one, n)
            await trio.sleep(0.005)
