"""ASGI middleware specifics: lifespan-scoped storages, plain ASGI apps, header merging."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx2 as httpx
import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from trio_sessions import CookieOptions, MemoryStorage, SessionStorage
from trio_sessions._demo import open_server
from trio_sessions.asgi import SessionMiddleware

NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
COOKIE = CookieOptions(name="sid")


async def count(request: Request) -> PlainTextResponse:  # noqa: ASYNC124 (a framework view)
    request.session["n"] = request.session.get("n", 0) + 1
    return PlainTextResponse(str(request.session["n"]), headers={"Vary": "Accept-Encoding"})


def lifespan_factory(
    events: list[str],
) -> Callable[[], AbstractAsyncContextManager[SessionStorage]]:
    @asynccontextmanager
    async def open_storage() -> AsyncIterator[SessionStorage]:
        events.append("open")
        storage = MemoryStorage()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)  # a background task, like cache eviction
            try:
                yield storage
            finally:
                nursery.cancel_scope.cancel()
        await storage.aclose()
        await trio.lowlevel.checkpoint()  # raises if the close itself is cancelled
        events.append("closed")

    return open_storage


async def test_storage_factory_lives_from_lifespan_startup_to_shutdown() -> None:
    events: list[str] = []
    app = Starlette(
        routes=[Route("/", count)],
        middleware=[Middleware(SessionMiddleware, storage=lifespan_factory(events), cookie=COOKIE)],
    )
    with trio.fail_after(30):
        async with open_server(app) as url:
            assert events == ["open"]
            async with httpx.AsyncClient(base_url=url, verify=NO_TLS) as client:
                first = await client.get("/")
                cookie = first.headers["set-cookie"].split(";")[0]
                second = await client.get("/", headers={"Cookie": cookie})
                assert (first.text, second.text) == ("1", "2")
                # The app's own Vary header is kept and extended, not duplicated.
                assert second.headers.get_list("vary") == ["Accept-Encoding, Cookie"]
    assert events == ["open", "closed"]


async def test_plain_asgi_app_without_any_framework() -> None:
    """The middleware needs nothing but trio: drive it with bare ASGI messages."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        session = scope["session"]
        session["n"] = session.get("n", 0) + 1
        body = str(session["n"]).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    middleware = SessionMiddleware(app, storage=MemoryStorage(), cookie=COOKIE)

    async def call(cookie: bytes | None) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        headers = [] if cookie is None else [(b"cookie", cookie)]
        scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}

        async def receive() -> dict[str, Any]:
            await trio.lowlevel.checkpoint()
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            await trio.lowlevel.checkpoint()
            sent.append(message)

        await middleware(scope, receive, send)
        return sent

    first = await call(None)
    header = dict(first[0]["headers"])
    cookie = header[b"set-cookie"].split(b";")[0]
    assert header[b"vary"] == b"Cookie"
    second = await call(cookie)
    assert second[1]["body"] == b"2"
    assert b"set-cookie" not in dict(second[0]["headers"])


def test_core_and_asgi_import_without_web_frameworks() -> None:
    """The core library and the ASGI middleware need only trio; Quart support says so."""
    code = """
import sys
for name in ("quart", "quart_trio", "hypercorn", "starlette", "httpx", "httpx2", "werkzeug"):
    sys.modules[name] = None  # makes any import of it fail
import trio_sessions, trio_sessions.asgi
try:
    import trio_sessions.quart
except ImportError as exc:
    assert "trio-sessions[quart]" in str(exc), exc
else:
    raise AssertionError("trio_sessions.quart imported without Quart")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
