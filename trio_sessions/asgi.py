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
`trio_sessions.Session`. It is saved when the response starts: changes made while a
response streams are not saved. A storage that owns background tasks is given as a
factory (``storage=lambda: open_cache_storage(...)``); it is opened at lifespan startup,
in a nursery of this middleware, and closed at lifespan shutdown.

A storage failure while loading answers 503 (and logs the error) instead of running the
request as a logged-out user; see the manager's ``on_storage_error``. Needs nothing
beyond trio.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, final

import trio

from ._abc import SessionStorage
from ._errors import StorageError
from .sessions import (
    UNOPENED,
    Session,
    SessionDataError,
    SessionManager,
    StorageSource,
    check_source,
    open_storage_source,
)

__all__ = ["SessionMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("trio_sessions")

_UNAVAILABLE_BODY = b"Service Unavailable: the session store cannot be reached.\n"
_UNAVAILABLE_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_UNAVAILABLE_BODY)).encode()),
    (b"retry-after", b"5"),
    (b"cache-control", b"no-store"),
]
_ERROR_BODY = b"Internal Server Error\n"
_ERROR_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_ERROR_BODY)).encode()),
    (b"cache-control", b"no-store"),
]


@final
class SessionMiddleware:
    """Loads the session before the app runs and saves it when the response starts.

    :param app: the ASGI application to wrap.
    :param storage: a `SessionStorage` (its owner closes it), or a zero-argument callable
        returning an async context manager that yields one (opened at lifespan startup,
        closed at lifespan shutdown).
    :param options: keyword arguments for `SessionManager` (timeouts, ``secret_key``,
        ``cookie``, ...).
    """

    def __init__(self, app: ASGIApp, /, storage: StorageSource, **options: Any) -> None:
        check_source(storage)
        self.app = app
        self._source = storage
        opened = storage if isinstance(storage, SessionStorage) else UNOPENED
        self.manager = SessionManager(opened, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan" and not isinstance(self._source, SessionStorage):
            await self._lifespan(scope, receive, send)
        elif kind == "http" or kind == "websocket":
            await self._handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        manager = self.manager
        cookies = b"; ".join(value for name, value in scope["headers"] if name == b"cookie")
        try:
            session = await manager.load_from_header(cookies.decode("latin-1"))
        except (StorageError, trio.ClosedResourceError) as exc:
            logger.error("session storage failed while loading a session", exc_info=exc)
            await _reject(scope, send)
            return
        scope["session"] = session
        failed = False
        start = "http.response.start" if scope["type"] == "http" else "websocket.accept"

        async def send_with_session(message: Message) -> None:
            nonlocal failed
            if failed:
                await trio.lowlevel.checkpoint()
                return  # the app's response was replaced by a 503
            if message["type"] == start:
                logout = session.ending
                try:
                    header = await manager.save(session)
                except (StorageError, trio.ClosedResourceError) as exc:
                    logger.error("session storage failed while saving a session", exc_info=exc)
                    failed = True
                    # A failed logout still tells the browser to drop the cookie.
                    await _reject(scope, send, manager.cookie.delete_cookie() if logout else None)
                    return
                except SessionDataError as exc:
                    logger.error("the session was not saved: %s", exc, exc_info=exc)
                    failed = True
                    await _fail(scope, send)
                    return
                _add_headers(message, session, header)
            elif message["type"] == "websocket.close" and session.modified:
                await _save_quietly(manager, session)
            await send(message)

        await self.app(scope, receive, send_with_session)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with trio.open_nursery() as nursery:
            stop: Callable[[], Awaitable[None]] | None = None

            async def receive_and_open() -> Message:
                nonlocal stop
                message = await receive()
                if message["type"] == "lifespan.startup" and stop is None:
                    storage, stop = await nursery.start(open_storage_source, self._source)
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


def _add_headers(message: Message, session: Session, set_cookie: str | None) -> None:
    if set_cookie is None and not session.accessed:
        return
    headers = list(message.get("headers", ()))
    if set_cookie is not None:
        headers.append((b"set-cookie", set_cookie.encode("latin-1")))
        # A response that sets the session's cookie must never be cached and replayed.
        policy = b", ".join(v for n, v in headers if n.lower() == b"cache-control").lower()
        if b"no-store" not in policy:
            headers = [(n, v) for n, v in headers if n.lower() != b"cache-control"]
            headers.append((b"cache-control", b"private, no-store"))
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"vary":
            values = {v.strip().lower() for v in value.split(b",")}
            if b"cookie" not in values and b"*" not in values:
                headers[index] = (name, value + b", Cookie")
            break
    else:
        headers.append((b"vary", b"Cookie"))
    message["headers"] = headers


async def _save_quietly(manager: SessionManager, session: Session) -> None:
    """Save a websocket's session at close (no cookie can be sent any more)."""
    try:
        await manager.save(session)
    except (StorageError, trio.ClosedResourceError, SessionDataError) as exc:
        logger.error("a websocket's session was not saved", exc_info=exc)
        await trio.lowlevel.checkpoint()


async def _reject(scope: Scope, send: Send, set_cookie: str | None = None) -> None:
    if scope["type"] == "http":
        headers = list(_UNAVAILABLE_HEADERS)
        if set_cookie is not None:
            headers.append((b"set-cookie", set_cookie.encode("latin-1")))
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": _UNAVAILABLE_BODY})
    else:
        await send({"type": "websocket.close", "code": 1013, "reason": "Try Again Later"})


async def _fail(scope: Scope, send: Send) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 500, "headers": _ERROR_HEADERS})
        await send({"type": "http.response.body", "body": _ERROR_BODY})
    else:
        await send({"type": "websocket.close", "code": 1011, "reason": "Internal Error"})
