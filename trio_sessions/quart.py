"""Server-side sessions for Quart-Trio applications.

::

    from quart_trio import QuartTrio
    from trio_sessions import DirectoryStorage
    from trio_sessions.quart import init_app

    app = QuartTrio(__name__)
    init_app(app, DirectoryStorage("/var/lib/myapp/sessions"), idle_timeout=1800)

`quart.session` is then a `trio_sessions.Session`. A storage that owns background tasks is
given as a factory (``init_app(app, lambda: open_cache_storage(...))``): it is opened in
``app.nursery`` when the app starts serving and closed, promptly, when it stops.

When the storage fails while loading a session, the request gets a 503 response (and the
error is logged) instead of running as a logged-out user; see the manager's
``on_storage_error``. Requires the ``quart`` extra (quart-trio).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, final

import trio

try:
    from quart import Response
    from quart import session as _current_session
    from quart.globals import request_ctx, websocket_ctx
    from quart.sessions import NullSession, SessionInterface
    from quart_trio import QuartTrio
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trio_sessions.quart needs Quart-Trio: pip install 'trio-sessions[quart]'"
    ) from exc

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

if TYPE_CHECKING:
    from quart import Quart
    from quart.wrappers import BaseRequestWebsocket
    from werkzeug.wrappers import Response as WerkzeugResponse

__all__ = ["TrioSessionInterface", "current_session", "init_app"]

logger = logging.getLogger("trio_sessions")

_UNAVAILABLE_BODY = "Service Unavailable: the session store cannot be reached.\n"


class _UnavailableSession(NullSession):
    """Marks a request whose session could not be loaded; it is answered with 503."""


def _unavailable() -> Response:
    return Response(_UNAVAILABLE_BODY, 503, {"Retry-After": "5", "Cache-Control": "no-store"})


@final
class TrioSessionInterface(SessionInterface):
    """A Quart `SessionInterface` backed by a `SessionManager`. Use `init_app` to install it.

    :param storage: a `SessionStorage` (its owner closes it), or a zero-argument callable
        returning an async context manager that yields one (opened in ``app.nursery``
        when the app starts serving, closed when it stops).
    :param options: keyword arguments for `SessionManager` (timeouts, ``secret_key``,
        ``cookie``, ...).
    """

    null_session_class = _UnavailableSession

    def __init__(self, storage: StorageSource, **options: Any) -> None:
        check_source(storage)
        self._source = storage
        opened = storage if isinstance(storage, SessionStorage) else UNOPENED
        self.manager = SessionManager(opened, **options)
        self._stop: Callable[[], Awaitable[None]] | None = None

    async def open_session(  # type: ignore[override]
        self, app: Quart, request: BaseRequestWebsocket
    ) -> Session | None:
        cookies = "; ".join(request.headers.getlist("Cookie"))
        try:
            return await self.manager.load_from_header(cookies)
        except (StorageError, trio.ClosedResourceError) as exc:
            logger.error("session storage failed while loading a session", exc_info=exc)
            await trio.lowlevel.checkpoint()
            return None  # Quart then makes an _UnavailableSession, answered with 503

    async def save_session(
        self, app: Quart, session: object, response: Response | WerkzeugResponse | None
    ) -> None:
        if not isinstance(session, Session):
            await trio.lowlevel.checkpoint()
            return
        logout = session.ending
        try:
            header = await self.manager.save(session)
        except (StorageError, trio.ClosedResourceError) as exc:
            logger.error("session storage failed while saving a session", exc_info=exc)
            if response is not None:
                _replace(response, 503, _UNAVAILABLE_BODY)
                response.headers["Retry-After"] = "5"
                if logout:  # a failed logout still tells the browser to drop the cookie
                    response.headers.add("Set-Cookie", self.manager.cookie.delete_cookie())
            await trio.lowlevel.checkpoint()
            return
        except SessionDataError as exc:
            logger.error("the session was not saved: %s", exc, exc_info=exc)
            if response is not None:
                _replace(response, 500, "Internal Server Error\n")
            await trio.lowlevel.checkpoint()
            return
        if response is None:
            if header is not None:
                logger.warning("a session created during a websocket cannot set its cookie")
            return
        if header is not None:
            response.headers.add("Set-Cookie", header)
            # A response that sets the session's cookie must never be cached and replayed.
            if "no-store" not in response.headers.get("Cache-Control", "").lower():
                response.headers["Cache-Control"] = "private, no-store"
        if header is not None or session.accessed:
            response.vary.add("Cookie")

    async def _start(self, app: QuartTrio) -> None:
        if isinstance(self._source, SessionStorage):
            await trio.lowlevel.checkpoint()
            return
        storage, self._stop = await app.nursery.start(open_storage_source, self._source)
        self.manager._bind(storage)

    async def _finish(self) -> None:
        stop, self._stop = self._stop, None
        if stop is None:
            await trio.lowlevel.checkpoint()
            return
        self.manager._bind(UNOPENED)
        await stop()

    async def _reject_request(self) -> Response | None:
        await trio.lowlevel.checkpoint()
        return _unavailable() if isinstance(request_ctx.session, _UnavailableSession) else None

    async def _reject_websocket(self) -> Response | None:
        await trio.lowlevel.checkpoint()
        return _unavailable() if isinstance(websocket_ctx.session, _UnavailableSession) else None


def _replace(response: Response | WerkzeugResponse, status: int, body: str) -> None:
    """Replace the app's response with a plain error (no traceback, nothing cached)."""
    response.status_code = status
    response.set_data(body)
    response.headers["Content-Type"] = "text/plain; charset=utf-8"
    response.headers["Cache-Control"] = "no-store"
    response.headers.remove("Set-Cookie")


def current_session() -> Session:
    """The current request's (or websocket's) session, typed as a `trio_sessions.Session`.

    ``quart.session`` is the same object, typed as Flask's ``SessionMixin``; use this
    to reach `Session.regenerate` and `Session.invalidate` without a cast.
    """
    value = _current_session._get_current_object()  # type: ignore[attr-defined]
    if not isinstance(value, Session):
        raise RuntimeError("no trio_sessions session: call init_app(app, storage) first")
    return value


def init_app(app: QuartTrio, storage: StorageSource, **options: Any) -> TrioSessionInterface:
    """Give *app* server-side sessions in *storage*; return the installed interface.

    *options* go to `SessionManager`. The storage (if given as a factory) opens when the
    app starts serving, in ``app.nursery``, and closes when it stops.
    """
    if not isinstance(app, QuartTrio):
        raise TypeError("init_app needs a quart_trio.QuartTrio application")
    interface = TrioSessionInterface(storage, **options)
    app.session_interface = interface  # type: ignore[assignment]

    async def start() -> None:
        await interface._start(app)

    app.before_serving(start)
    app.after_serving(interface._finish)
    app.before_request(interface._reject_request)
    app.before_websocket(interface._reject_websocket)
    return interface
