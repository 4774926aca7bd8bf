"""A pure ASGI middleware for server-side sessions: Starlette, FastAPI or any ASGI app on trio.

::

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from trio_sessions import DirectoryStorage
    from trio_sessions.asgi import SessionMiddleware

    app = Starlette(
        routes=[...],
        middleware=[Middleware(SessionMiddleware, storage=DirectoryStorage("sessions"))],
    )

The session is in ``scope["session"]`` (so Starlette's ``request.session`` works) as a
`trio_sessions.Session`. It is loaded before the app runs (``autoload``), or when a view
calls ``await load_session(request)``, and saved when the response starts: changes made
while a response streams are not saved. A storage that owns background tasks is given as
a factory (``storage=lambda: open_cache_storage(...)``); it is opened at lifespan startup,
in a nursery of this middleware, and closed at lifespan shutdown.

A storage failure while loading answers 503 (and logs the error) instead of running the
request as a logged-out user; see the manager's ``on_storage_error``. Needs nothing
beyond trio, and a server that runs the app on trio (Hypercorn's trio worker).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, final

import trio

from ._abc import SessionStorage
from ._base import collapsed_errors
from ._errors import UNAVAILABLE
from .sessions._lifecycle import UNOPENED, StorageSource, check_source, open_storage_source
from .sessions._manager import SessionDataError, SessionManager
from .sessions._session import Session
from .sessions._web import Autoload, autoload_policy, check_trio, probe, response_headers

__all__ = ["ASGIApp", "SessionMiddleware", "load_session"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("trio_sessions")

_UNAVAILABLE_BODY = b"Service Unavailable: the session store cannot be reached.\n"
_ERROR_BODY = b"Internal Server Error\n"


@final
class SessionMiddleware:
    """Gives each request a session, loads it (eagerly or on demand) and saves it.

    :param app: the ASGI application to wrap.
    :param storage: a `SessionStorage` (its owner closes it), or a zero-argument callable
        returning an async context manager that yields one (opened at lifespan startup,
        closed at lifespan shutdown).
    :param autoload: which requests get their session loaded before the app runs:
        ``True`` (all, the default), ``False`` (none), a list of path prefixes, or a
        function of the path. Elsewhere a view calls ``await load_session(request)``; a
        request that never does costs no storage operation.
    :param options: keyword arguments for `SessionManager` (timeouts, ``secret_key``,
        ``cookie``, ``header``, ...).
    """

    def __init__(
        self, app: ASGIApp, /, storage: StorageSource, *, autoload: Autoload = True, **options: Any
    ) -> None:
        check_source(storage)
        self.app = app
        self._source = storage
        self._autoload = autoload_policy(autoload)
        opened = storage if isinstance(storage, SessionStorage) else UNOPENED
        self.manager = SessionManager(opened, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        check_trio("trio_sessions.asgi.SessionMiddleware")
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
        elif kind == "http" or kind == "websocket":
            await self._handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        manager = self.manager
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in scope["headers"]]
        session = manager.open_request(headers)
        scope["session"] = session
        if self._autoload(scope.get("path", "/")):
            try:
                await session.load()
            except UNAVAILABLE as exc:
                logger.error("session storage failed while loading a session", exc_info=exc)
                await _reply(scope, send, 503)
                return
        started = failed = False
        start = "http.response.start" if scope["type"] == "http" else "websocket.accept"

        async def send_with_session(message: Message) -> None:
            nonlocal started, failed
            if failed:
                await trio.lowlevel.checkpoint()
                return  # the app's response was replaced by an error
            if message["type"] == start:
                started = True
                if not await self._save(scope, send, session, message):
                    failed = True
                    return
            elif message["type"] == "websocket.close" and session.modified:
                await _save_quietly(manager, session)
            await send(message)

        try:
            await self.app(scope, receive, send_with_session)
        except UNAVAILABLE as exc:
            if started:
                raise
            # `await load_session(request)` in a view found the storage down.
            logger.error("session storage failed while loading a session", exc_info=exc)
            await _reply(scope, send, 503)

    async def _save(self, scope: Scope, send: Send, session: Session, message: Message) -> bool:
        """Save at the start of the response; on failure, send an error instead."""
        manager = self.manager
        logout = session.ending
        try:
            value = await manager.save(session)
        except UNAVAILABLE as exc:
            logger.error("session storage failed while saving a session", exc_info=exc)
            # A failed logout still tells the client to drop the id.
            extra = (
                [(manager.response_header(session), manager.deletion(session))] if logout else []
            )
            await _reply(scope, send, 503, extra)
            return False
        except SessionDataError as exc:
            logger.error("the session was not saved: %s", exc, exc_info=exc)
            await _reply(scope, send, 500)
            return False
        raw = list(message.get("headers", ()))
        policy = b", ".join(v for n, v in raw if n.lower() == b"cache-control").decode("latin-1")
        added, new_policy = response_headers(manager, session, value, policy)
        if new_policy is not None:
            raw = [(n, v) for n, v in raw if n.lower() != b"cache-control"]
            raw.append((b"cache-control", new_policy.encode()))
        for name, header_value in added:
            if name == "Vary":
                _add_vary(raw, header_value.encode("latin-1"))
            else:
                raw.append((name.lower().encode("latin-1"), header_value.encode("latin-1")))
        message["headers"] = raw
        return True

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        with collapsed_errors():
            await self._lifespan_in_nursery(scope, receive, send)

    async def _lifespan_in_nursery(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with trio.open_nursery() as nursery:
            stop: Callable[[], Awaitable[None]] | None = None

            async def receive_and_open() -> Message:
                nonlocal stop
                message = await receive()
                if message["type"] == "lifespan.startup" and stop is None:
                    storage, stop = await nursery.start(open_storage_source, self._source)
                    await probe(storage)
                    self.manager._bind(storage)
                return message

            async def send_and_close(message: Message) -> None:
                nonlocal stop
                if message["type"].startswith("lifespan.shutdown") and stop is not None:
                    self.manager._bind(UNOPENED)
                    closing = stop
                    stop = None
                    await closing()
                await send(message)

            try:
                await self.app(scope, receive_and_open, send_and_close)
            finally:
                if stop is not None:
                    self.manager._bind(UNOPENED)
                    with trio.CancelScope(shield=True):
                        await stop()


async def load_session(request: Any) -> Session:
    """Load and return the request's session (a Starlette ``Request`` or an ASGI scope).

    For routes outside the middleware's ``autoload``: a request that never calls this
    costs no storage operation. A storage failure propagates as `StorageError`, which
    the middleware answers with 503.
    """
    scope = request if isinstance(request, MutableMapping) else request.scope
    session = scope.get("session")
    if not isinstance(session, Session):
        raise RuntimeError("no trio_sessions session: add SessionMiddleware to the app")
    await session.load()
    return session


def _add_vary(headers: list[tuple[bytes, bytes]], name: bytes) -> None:
    for index, (header, value) in enumerate(headers):
        if header.lower() == b"vary":
            values = {v.strip().lower() for v in value.split(b",")}
            if name.lower() not in values and b"*" not in values:
                headers[index] = (header, value + b", " + name)
            return
    headers.append((b"vary", name))


async def _save_quietly(manager: SessionManager, session: Session) -> None:
    """Save a websocket's session at close (no header can be sent any more)."""
    try:
        await manager.save(session)
    except (*UNAVAILABLE, SessionDataError) as exc:
        logger.error("a websocket's session was not saved", exc_info=exc)
        await trio.lowlevel.checkpoint()


async def _reply(
    scope: Scope, send: Send, status: int, extra: list[tuple[str, str]] | None = None
) -> None:
    """Answer with a plain error: no traceback, nothing cached."""
    if scope["type"] != "http":
        code, reason = (1013, "Try Again Later") if status == 503 else (1011, "Internal Error")
        await send({"type": "websocket.close", "code": code, "reason": reason})
        return
    body = _UNAVAILABLE_BODY if status == 503 else _ERROR_BODY
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if status == 503:
        headers.append((b"retry-after", b"5"))
    headers.extend((n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in extra or ())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
