"""The soak suite's web application: Quart-Trio with `trio_sessions.quart`, on Hypercorn's
trio worker, in a process of its own (so that it can be killed).

Routes (every answer is JSON):

``POST /login?user=U``
    a fresh session holding ``user`` and the counter ``n = 0``.
``POST /incr``
    ``n += 1``; answers the new ``n`` (401 without a logged-in session).
``GET /state``
    what the session holds; never writes.
``POST /logout``
    ``session.invalidate()``.
``POST /slow?action=incr|regenerate|note&delay=S[&wait=logout][&blip=1]``
    the session is loaded at the start; the handler then sleeps *S* seconds, or with
    ``wait=logout`` until the session is gone from the storage (at most *S*), then
    increments ``n``, rotates the id (``session.regenerate()``) or sets the key ``note``.
    ``wait=logout`` makes the race with a logout deterministic: the request loaded the
    session before the logout and saves after it. ``blip=1`` injects a storage outage
    for this request from its first successful write on (``--blips``): the worst moment
    for a real outage, which a server kill cannot hit on purpose.
``POST /admin/purge``, ``GET /admin/stats``
    the storage's purge, and its statistics where it has them.

Run: ``python -m benchmarks.soak.app --backend directory --port P --root DIR --ready-file F``;
the file receives the pid and the directory trio_sessions was imported from, once the
server accepts connections.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import trio

from trio_sessions import (
    ConditionalStorage,
    CookieOptions,
    DirectoryStorage,
    SessionNotFound,
    SessionStorage,
    StorageError,
    Versioned,
    open_cache_storage,
)

SECRET = b"soak-secret-key-0123456789abcdef0123456789"
BACKENDS = ("directory", "cache", "redis", "postgres")


# ------------------------------------------------------------------ injected blips


@dataclass
class Blip:
    """One request's injected outage: armed by the handler, tripped by its first write."""

    tripped: bool = False


def _blip() -> Blip | None:
    from quart import g, has_request_context

    if not has_request_context():
        return None
    state = g.get("soak_blip")
    return state if isinstance(state, Blip) else None


class BlipStorage(SessionStorage):
    """Delegates everything; a request with a tripped `Blip` finds the storage down."""

    def __init__(self, delegate: SessionStorage) -> None:
        self._delegate = delegate

    def __getattr__(self, name: str) -> Any:  # touch, purge, statistics, ...
        return getattr(self._delegate, name)

    @property
    def max_size(self) -> int:
        return self._delegate.max_size

    @staticmethod
    def _check() -> None:
        state = _blip()
        if state is not None and state.tripped:
            raise StorageError("injected outage (blip)")

    @staticmethod
    def _wrote() -> None:
        state = _blip()
        if state is not None:
            state.tripped = True

    async def write(self, session_id: str, provider: Any, *, ttl: float | None = None) -> None:
        self._check()
        await self._delegate.write(session_id, provider, ttl=ttl)
        self._wrote()

    async def read(self, session_id: str, consumer: Any) -> Any:
        self._check()
        return await self._delegate.read(session_id, consumer)

    async def invalidate(self, session_id: str) -> None:
        self._check()
        await self._delegate.invalidate(session_id)

    async def write_bytes(self, session_id: str, data: bytes, *, ttl: float | None = None) -> None:
        self._check()
        await self._delegate.write_bytes(session_id, data, ttl=ttl)
        self._wrote()

    async def read_bytes(self, session_id: str) -> bytes:
        self._check()
        return await self._delegate.read_bytes(session_id)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()  # the delegate belongs to whoever opened it


class ConditionalBlipStorage(BlipStorage, ConditionalStorage):
    """`BlipStorage` for a delegate with conditional writes."""

    _delegate: ConditionalStorage

    @property
    def conditional_writes(self) -> bool:
        return self._delegate.conditional_writes

    async def read_versioned(self, session_id: str) -> Versioned:
        self._check()
        return await self._delegate.read_versioned(session_id)

    async def write_bytes_if(
        self, session_id: str, data: bytes, *, version: int | None, ttl: float | None = None
    ) -> int:
        self._check()
        new = await self._delegate.write_bytes_if(session_id, data, version=version, ttl=ttl)
        self._wrote()
        return new

    async def invalidate_if(self, session_id: str, *, version: int) -> None:
        self._check()
        await self._delegate.invalidate_if(session_id, version=version)


def with_blips(storage: SessionStorage) -> SessionStorage:
    if isinstance(storage, ConditionalStorage):
        return ConditionalBlipStorage(storage)
    return BlipStorage(storage)


# ----------------------------------------------------------------------- storages


@dataclass
class Handles:
    """The storages the admin routes and the slow route use directly."""

    top: SessionStorage | None = None  # what the session layer uses, without blips
    directory: DirectoryStorage | None = None
    purgeable: Any = None


def storage_source(
    args: argparse.Namespace, handles: Handles
) -> Callable[[], AbstractAsyncContextManager[SessionStorage]]:
    @asynccontextmanager
    async def opened() -> AsyncIterator[SessionStorage]:
        async with _open_backend(args, handles) as storage:
            handles.top = storage
            yield with_blips(storage) if args.blips else storage

    return opened


@asynccontextmanager
async def _open_backend(args: argparse.Namespace, handles: Handles) -> AsyncIterator[Any]:
    if args.backend in ("directory", "cache"):
        directory = DirectoryStorage(args.root, fsync=True)
        handles.directory = handles.purgeable = directory
        try:
            if args.backend == "directory":
                yield directory
            else:
                async with open_cache_storage(directory) as cache:
                    yield cache
        finally:
            await directory.aclose()
    elif args.backend == "redis":
        from trio_sessions import open_redis_storage

        # Every write waits for Valkey's fsync of its append-only file: on a busy disk that
        # takes longer than glide's default request timeout (250 ms).
        async with open_redis_storage(
            args.redis_url, driver="glide", request_timeout=5000
        ) as storage:
            yield storage
    else:
        import trio_sessions

        opener = getattr(trio_sessions, "open_postgres_storage", None)
        if opener is None:
            raise SystemExit("trio_sessions.open_postgres_storage is not available")
        async with opener(args.dsn) as storage:
            handles.purgeable = storage
            yield storage


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return value


# ---------------------------------------------------------------------------- app


def build_app(args: argparse.Namespace) -> Any:
    from quart import g, request
    from quart_trio import QuartTrio

    from trio_sessions.quart import current_session, init_app

    app = QuartTrio("soak")
    handles = Handles()
    init_app(
        app,
        storage_source(args, handles),
        secret_key=SECRET,
        cookie=CookieOptions(name="session"),
        idle_timeout=3600,
    )

    @app.post("/login")
    async def login() -> Any:  # noqa: ASYNC124 (a Quart view)
        session = current_session()
        session["user"] = request.args["user"]
        session["n"] = 0
        return {"user": session["user"], "n": 0}

    @app.post("/incr")
    async def incr() -> Any:  # noqa: ASYNC124
        session = current_session()
        if "user" not in session:
            return {"user": None}, 401
        session["n"] = session["n"] + 1
        return {"user": session["user"], "n": session["n"]}

    @app.get("/state")
    async def state() -> Any:  # noqa: ASYNC124
        session = current_session()
        return {"user": session.get("user"), "n": session.get("n"), "note": session.get("note")}

    @app.post("/logout")
    async def logout() -> Any:  # noqa: ASYNC124
        current_session().invalidate()
        return {"ok": True}

    @app.post("/slow")
    async def slow() -> Any:
        session = current_session()
        user = session.get("user")
        session_id = session.id
        delay = float(request.args.get("delay", "0.3"))
        if request.args.get("wait") == "logout":
            await _until_gone(handles, session_id, delay)
        else:
            await trio.sleep(delay)
        resumed = time.monotonic()
        if user is None:
            return {"user": None, "resumed_at": resumed}, 401
        action = request.args.get("action", "incr")
        if action == "incr":
            session["n"] = session.get("n", 0) + 1
        elif action == "regenerate":
            session.regenerate()
            session["rotations"] = session.get("rotations", 0) + 1
        else:
            session["note"] = resumed
        headers = {}
        if request.args.get("blip") == "1":
            g.soak_blip = Blip()
            headers["X-Soak-Blip"] = "armed"
        return {"user": user, "n": session.get("n"), "resumed_at": resumed}, 200, headers

    @app.post("/admin/purge")
    async def purge() -> Any:
        target = handles.purgeable
        method = getattr(target, "purge", None)
        if method is None:
            return {"purged": None}
        if isinstance(target, DirectoryStorage):
            result = await target.purge(temp_grace=0)
        else:
            result = await method()
        return {"purged": _plain(result)}

    @app.get("/admin/stats")
    async def stats() -> Any:
        if handles.directory is None:
            return {}
        result: Any = handles.directory.scan()
        if hasattr(result, "__await__"):
            result = await result
        return _plain(result)

    return app


async def _until_gone(handles: Handles, session_id: str, limit: float) -> None:
    """Wait until *session_id* is gone from the storage, or *limit* seconds."""
    with trio.move_on_after(limit):
        while True:
            storage = handles.top
            if storage is not None:
                try:
                    await storage.read_bytes(session_id)
                except SessionNotFound:
                    return
                except (StorageError, trio.ClosedResourceError):
                    pass  # an outage: the logout has not gone through yet
            await trio.sleep(0.005)


async def serve(args: argparse.Namespace) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.accesslog = None
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 75.0  # the users keep their connections
    stop = trio.Event()

    async def shutdown_trigger() -> None:
        await stop.wait()

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: hypercorn_serve(
                    build_app(args),
                    config,
                    shutdown_trigger=shutdown_trigger,
                    task_status=task_status,
                )
            )
            import trio_sessions

            where = Path(trio_sessions.__file__).parent.parent
            # Written whole, then renamed: the run sees the pid and the code it runs.
            temporary = trio.Path(f"{args.ready_file}.tmp")
            await temporary.write_text(f"{os.getpid()}\n{where}\n")
            await temporary.rename(args.ready_file)
            async for _ in signals:
                stop.set()
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--root", help="the directory of the Directory backends")
    parser.add_argument("--redis-url")
    parser.add_argument("--dsn")
    parser.add_argument("--blips", action="store_true", help="honour blip=1 (see /slow)")
    args = parser.parse_args()
    # A file-size limit (the disk-full fallback) must fail writes, not kill the server.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    trio.run(serve, args)


if __name__ == "__main__":
    main()
