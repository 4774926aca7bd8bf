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
    import quart.globals
    from quart import Response, abort, has_request_context
    from quart.sessions import NullSession, SessionInterface
    from quart_trio import QuartTrio
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'trio_sessions.quart needs Quart-Trio: pip install "trio-sessions[quart]"'
    ) from exc

from ._abc import SessionStorage
from ._errors import UNAVAILABLE
from .sessions._lifecycle import UNOPENED, StorageSource, check_source, open_storage_source
from .sessions._manager import SessionDataError, SessionManager
from .sessions._session import Session
from .sessions._web import Autoload, autoload_policy, probe, response_headers

if TYPE_CHECKING:
    from quart import Quart
    from quart.wrappers import BaseRequestWebsocket
    from werkzeug.wrappers import Response as WerkzeugResponse

__all__ = ["TrioSessionInterface", "current_session", "init_app", "load_session"]

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
    :param autoload: which requests get their session loaded before the view runs:
        ``True`` (all, the default), ``False`` (none), a list of path prefixes, or a
        function of the path. Elsewhere a view calls ``await load_session()``; a request
        that never does costs no storage operation.
    :param options: keyword arguments for `SessionManager` (timeouts, ``secret_key``,
        ``cookie``, ``header``, ...).
    """

    null_session_class = _UnavailableSession

    def __init__(
        self, storage: StorageSource, *, autoload: Autoload = True, **options: Any
    ) -> None:
        check_source(storage)
        self._autoload = autoload_policy(autoload)
        self._source = storage
        opened = storage if isinstance(storage, SessionStorage) else UNOPENED
        self.manager = SessionManager(opened, **options)
        self._stop: Callable[[], Awaitable[None]] | None = None

    async def open_session(  # type: ignore[override]
        self, app: Quart, request: BaseRequestWebsocket
    ) -> Session | None:
        session = self.manager.open_request(request.headers.items())
        if not self._autoload(request.path):
            await trio.lowlevel.checkpoint()
            return session
        try:
            await session.load()
            return session
        except UNAVAILABLE as exc:
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
        except UNAVAILABLE as exc:
            logger.error("session storage failed while saving a session", exc_info=exc)
            if response is not None:
                _replace(response, 503, _UNAVAILABLE_BODY)
                response.headers["Retry-After"] = "5"
                if logout:  # a failed logout still tells the client to drop the id
                    name = self.manager.response_header(session)
                    response.headers.add(name, self.manager.deletion(session))
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
                logger.warning("a session created during a websocket cannot send its id")
            return
        added, policy = response_headers(
            self.manager, session, header, response.headers.get("Cache-Control", "")
        )
        if policy is not None:
            response.headers["Cache-Control"] = policy
        for name, value in added:
            if name == "Vary":
                response.vary.add(value)
            else:
                response.headers.add(name, value)

    async def _start(self, app: QuartTrio) -> None:
        if isinstance(self._source, SessionStorage):
            await probe(self._source)
            return
        storage, self._stop = await app.nursery.start(open_storage_source, self._source)
        await probe(storage)
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
        return _unavailable() if isinstance(_session_now(), _UnavailableSession) else None

    async def _reject_websocket(self) -> Response | None:
        await trio.lowlevel.checkpoint()
        return _unavailable() if isinstance(_session_now(), _UnavailableSession) else None


def _replace(response: Response | WerkzeugResponse, status: int, body: str) -> None:
    """Replace the app's response with a plain error (no traceback, nothing cached)."""
    response.status_code = status
    response.set_data(body)
    response.headers["Content-Type"] = "text/plain; charset=utf-8"
    response.headers["Cache-Control"] = "no-store"
    response.headers.remove("Set-Cookie")


def _session_now() -> object:
    """The current request's or websocket's session object, as Quart holds it.

    Read from the context itself: Quart 0.23's proxy marks the session accessed.
    """
    request_ctx = getattr(quart.globals, "request_ctx", None)
    if request_ctx is None:  # Quart 0.23 and later: one app context
        context: Any = getattr(quart.globals, "app_ctx")._get_current_object()  # noqa: B009
        return context._session
    # Quart 0.22 and earlier: request and websocket contexts.
    if not has_request_context():
        request_ctx = getattr(quart.globals, "websocket_ctx")  # noqa: B009
    return request_ctx._get_current_object().session


def current_session() -> Session:
    """The current request's (or websocket's) session, typed as a `trio_sessions.Session`.

    ``quart.session`` is the same object, typed as Flask's ``SessionMixin``; use this
    to reach `Session.regenerate` and `Session.invalidate` without a cast.
    """
    value = _session_now()
    if not isinstance(value, Session):
        raise RuntimeError("no trio_sessions session: call init_app(app, storage) first")
    return value


async def load_session() -> Session:
    """Load and return the current request's session (for routes outside ``autoload``).

    A request that never calls it (nor is autoloaded) costs no storage operation. When
    the storage fails, the request is answered with 503.
    """
    session = current_session()
    try:
        await session.load()
    except UNAVAILABLE as exc:
        logger.error("session storage failed while loading a session", exc_info=exc)
        abort(_unavailable())
    return session  # noqa: ASYNC910 (load() checkpoints; abort() raises)


def init_app(
    app: QuartTrio, storage: StorageSource, *, autoload: Autoload = True, **options: Any
) -> TrioSessionInterface:
    """Give *app* server-side sessions in *storage*; return the installed interface.

    *autoload* and *options* go to `TrioSessionInterface` and `SessionManager`. The
    storage (if given as a factory) opens when the app starts serving, in
    ``app.nursery``, and closes when it stops.
    """
    if not isinstance(app, QuartTrio):
        raise TypeError(
            f"init_app needs a quart_trio.QuartTrio application, not {type(app).__name__} "
            "(sessions here run on trio: use QuartTrio instead of Quart)"
        )
    interface = TrioSessionInterface(storage, autoload=autoload, **options)
    app.session_interface = interface  # type: ignore[assignment]

    async def start() -> None:
        await interface._start(app)

    app.before_serving(start)
    app.after_serving(interface._finish)
    app.before_request(interface._reject_request)
    app.before_websocket(interface._reject_websocket)
    return interface
