"""``trio-sessions demo``: serve the demo application (`trio_sessions._demo_app`).

A login/logout flow that is safe to copy: no session until login, CSRF tokens on both
forms, "remember me", logout on the server. Sessions live in a `DirectoryStorage` under
``ROOT/sessions`` (``./.trio-sessions/sessions`` by default), beside the key that signs
the cookies, so they survive a restart. Problems that stop the demo from starting (the
port is taken, ROOT cannot be written) are told in one line, with what to do, and exit
with status 2. Requires the ``demo`` extra.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

from ._errors import StorageError
from .storages._directory import DirectoryStorage

__all__ = ["check_storage", "demo_storage", "listen", "main", "open_server", "prepare_root"]

_KEY_BYTES = 32


def demo_storage(root: str) -> DirectoryStorage:
    """The demo's storage: the one place that chooses it."""
    return DirectoryStorage(os.path.join(root, "sessions"))


def prepare_root(root: str) -> bytes:
    """Make *root* and its ``sessions`` folder (mode 0700); return the signing key.

    The key is kept in ``ROOT/secret-key`` (mode 0600), so a restart keeps the cookies
    valid. Blocking; raises `OSError` naming the path that failed.
    """
    os.makedirs(root, mode=0o700, exist_ok=True)
    os.makedirs(os.path.join(root, "sessions"), mode=0o700, exist_ok=True)
    path = os.path.join(root, "secret-key")
    try:
        with open(path, "rb") as file:
            key = file.read()
        if len(key) >= _KEY_BYTES:
            return key
    except FileNotFoundError:
        pass
    key = os.urandom(_KEY_BYTES)
    fd, temporary = tempfile.mkstemp(dir=root, prefix=".secret-key-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:  # mkstemp makes it 0600
            file.write(key)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return key


def check_storage(storage: DirectoryStorage) -> None:
    """Find now, not at the first login, a sessions folder the storage cannot use.

    The storage's own checks (a folder of another user, one that others may write to,
    a link) raise `StorageError`; a probe file written and removed raises `OSError` if
    the folder cannot be written. Blocking.
    """
    trio.run(storage.scan)
    fd, probe = tempfile.mkstemp(dir=storage.root, prefix=".probe-", suffix=".tmp")
    os.close(fd)
    os.unlink(probe)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to *host*:*port* and listening (blocking: it may resolve *host*).

    Raises `OSError` (``EADDRINUSE`` when the port is taken) as itself.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(100)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@asynccontextmanager
async def open_server(
    app: Any, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
) -> AsyncIterator[str]:
    """Serve *app* with Hypercorn's trio worker; yield its base URL; stop it on exit.

    It listens on *sock* if given (and closes it at the end), else on *host*:*port*;
    port 0 picks a free port. Leaving the block shuts the server down gracefully
    (lifespan shutdown included) and waits for it.
    """
    from hypercorn.config import Config, Sockets
    from hypercorn.trio.run import worker_serve
    from hypercorn.utils import wrap_app

    config = Config()
    config.accesslog = None
    config.graceful_timeout = 2.0
    if sock is None:
        sock = await trio.to_thread.run_sync(listen, host, port)
    stop = trio.Event()
    serve = partial(
        worker_serve,
        wrap_app(app, config.wsgi_max_body_size, "asgi"),
        config,
        sockets=Sockets([], [sock], []),
        shutdown_trigger=stop.wait,
    )
    try:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve)
            try:
                yield binds[0]
            finally:
                stop.set()
    finally:
        sock.close()


async def _serve_until_signal(app: Any, sock: socket.socket, ready: Callable[[str], None]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_server(app, sock=sock) as url:
            ready(url)
            async for _ in signals:
                break


def _cannot_listen(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: port {port} is already in use (another server, or "
            f"the demo already running?); choose another with --port, e.g. --port "
            f"{port + 1 if port < 65535 else 8000}, or --port 0 for any free port"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {where}: permission denied (ports below 1024 need "
            "privileges); choose another with --port, e.g. --port 8000"
        )
    reason = exc.strerror or str(exc)
    return (
        f"cannot listen on {where}: {reason}; choose an address of this machine with "
        "--host, e.g. --host 127.0.0.1"
    )


def _cannot_write(root: str, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    path = exc.filename if isinstance(exc.filename, str) else root
    if path != root:
        reason = f"{reason}: {path}"
    return (
        f"cannot keep the demo's sessions in {root}: {reason}; choose a directory you can "
        "write to with --root DIR"
    )


def main(host: str, port: int, root: str) -> int:
    """Run the demo until SIGINT or SIGTERM; return the exit status."""

    def fail(message: str) -> int:
        print(f"trio-sessions demo: error: {message}", file=sys.stderr)
        return 2

    try:
        from ._demo_app import create_app
    except ImportError as exc:
        install = 'pip install "trio-sessions[demo]"'
        return fail(f"the demo needs the 'demo' extra ({exc}): {install}")
    if not 0 <= port <= 65535:
        return fail(f"argument --port: must be from 0 to 65535, got {port}")
    root = os.path.abspath(root)
    try:
        key = prepare_root(root)
        storage = demo_storage(root)
        check_storage(storage)
    except OSError as exc:
        return fail(_cannot_write(root, exc))
    except StorageError as exc:
        return fail(f"{exc} (or choose another directory with --root DIR)")
    app = create_app(storage, secret_key=key)
    try:
        sock = listen(host, port)
    except OSError as exc:
        return fail(_cannot_listen(host, port, exc))
    sessions = os.path.join(root, "sessions")

    def ready(url: str) -> None:
        print(f"trio-sessions demo: open {url}/ (sessions in {sessions}; Ctrl+C stops)", flush=True)

    async def run() -> None:
        try:
            await _serve_until_signal(app, sock, ready)
        finally:
            with trio.CancelScope(shield=True):
                await storage.aclose()

    trio.run(run)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main("127.0.0.1", 8000, ".trio-sessions"))
