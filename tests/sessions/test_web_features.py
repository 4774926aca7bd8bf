"""Lazy loading, "remember me" and the header transport, over real HTTP (Hypercorn, trio).

The same application runs on Quart-Trio and on Starlette. Its ``/api`` and ``/account``
routes load the session on demand (``load_session``); ``/plain`` never touches it.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import pytest
import trio

from tests.conftest import WallClock
from tests.spy_storage import Spy
from trio_sessions import CookieOptions
from trio_sessions._demo import open_server

NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
HEADER = "X-Session-Id"
NAME = "sid"
DAY = 86400


def _options(clock: WallClock) -> dict[str, Any]:
    return {
        "cookie": CookieOptions(name=NAME),
        "header": HEADER,
        "autoload": ["/eager"],
        "idle_timeout": 600,
        "absolute_timeout": 3600,
        "max_lifetime": 30 * DAY,
        "secret_key": b"k" * 32,
        "wall_clock": clock,
    }


def quart_app(storage: Spy, clock: WallClock) -> Any:
    from quart import request
    from quart_trio import QuartTrio

    from trio_sessions.quart import init_app, load_session

    app = QuartTrio(__name__)
    init_app(app, storage, **_options(clock))

    @app.get("/plain")
    async def plain() -> str:  # noqa: ASYNC124 (a framework view)
        return "no session here"

    @app.get("/api/whoami")
    async def whoami() -> str:
        session = await load_session()
        return str(session.get("user", ""))

    @app.get("/eager/whoami")
    async def eager_whoami() -> str:  # noqa: ASYNC124 (a framework view)
        from trio_sessions.quart import current_session

        return str(current_session().get("user", ""))

    @app.post("/api/login")
    async def login() -> str:
        session = await load_session()
        session.regenerate()
        session["user"] = "alice"
        if request.args.get("remember"):
            session.set_lifetime(7 * DAY)
        return "ok"

    @app.post("/api/rotate")
    async def rotate() -> str:
        session = await load_session()
        session.regenerate()
        return "rotated"

    @app.post("/api/logout")
    async def logout() -> str:
        (await load_session()).invalidate()
        return "bye"

    return app


def starlette_app(storage: Spy, clock: WallClock) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from trio_sessions.asgi import SessionMiddleware, load_session

    async def plain(request: Request) -> PlainTextResponse:
        await trio.lowlevel.checkpoint()
        return PlainTextResponse("no session here")

    async def whoami(request: Request) -> PlainTextResponse:
        session = await load_session(request)
        return PlainTextResponse(str(session.get("user", "")))

    async def eager_whoami(request: Request) -> PlainTextResponse:  # noqa: ASYNC124
        return PlainTextResponse(str(request.session.get("user", "")))

    async def login(request: Request) -> PlainTextResponse:
        session = await load_session(request)
        session.regenerate()
        session["user"] = "alice"
        if request.query_params.get("remember"):
            session.set_lifetime(7 * DAY)
        return PlainTextResponse("ok")

    async def rotate(request: Request) -> PlainTextResponse:
        (await load_session(request)).regenerate()
        return PlainTextResponse("rotated")

    async def logout(request: Request) -> PlainTextResponse:
        (await load_session(request)).invalidate()
        return PlainTextResponse("bye")

    routes = [
        Route("/plain", plain),
        Route("/api/whoami", whoami),
        Route("/eager/whoami", eager_whoami),
        Route("/api/login", login, methods=["POST"]),
        Route("/api/rotate", rotate, methods=["POST"]),
        Route("/api/logout", logout, methods=["POST"]),
    ]
    middleware = [Middleware(SessionMiddleware, storage=storage, **_options(clock))]
    return Starlette(routes=routes, middleware=middleware)


APPS: dict[str, Callable[[Spy, WallClock], Any]] = {
    "quart-trio": quart_app,
    "starlette": starlette_app,
}


@dataclass
class Web:
    client: httpx.AsyncClient
    storage: Spy
    clock: WallClock

    def cookie(self, value: str) -> dict[str, str]:
        return {"Cookie": f"{NAME}={value}"}


@pytest.fixture(params=sorted(APPS))
async def web(request: pytest.FixtureRequest) -> AsyncIterator[Web]:
    storage, clock = Spy(), WallClock()
    app = APPS[request.param](storage, clock)
    with trio.fail_after(60):
        async with (
            open_server(app) as url,
            httpx.AsyncClient(base_url=url, verify=NO_TLS) as client,
        ):
            yield Web(client, storage, clock)


def set_cookie(response: httpx.Response) -> tuple[str, list[str]] | None:
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith(NAME + "=")]
    if not headers:
        return None
    first, *attributes = (part.strip() for part in headers[0].split(";"))
    return first.partition("=")[2], attributes


async def test_a_route_that_never_touches_the_session_costs_nothing(web: Web) -> None:
    with trio.fail_after(60):
        login = await web.client.post("/api/login")
        found = set_cookie(login)
        assert found is not None
        cookie = web.cookie(found[0])
        web.storage.ops.clear()
        for _ in range(1000):
            response = await web.client.get("/plain", headers=cookie)
            assert response.status_code == 200
            assert set_cookie(response) is None
            assert "vary" not in response.headers
        assert sum(web.storage.ops.values()) == 0
        response = await web.client.get("/api/whoami", headers=cookie)
        assert response.text == "alice"
        assert sum(web.storage.ops.values()) == 1  # exactly one read
        assert "cookie" in response.headers["vary"].lower()
        web.storage.ops.clear()
        assert (await web.client.get("/eager/whoami", headers=cookie)).text == "alice"
        assert sum(web.storage.ops.values()) == 1  # loaded before the view


async def test_a_storage_outage_on_demand_answers_503(web: Web) -> None:
    with trio.fail_after(20):
        found = set_cookie(await web.client.post("/api/login"))
        assert found is not None
        web.storage.fail = {"read"}
        response = await web.client.get("/api/whoami", headers=web.cookie(found[0]))
        assert response.status_code == 503
        web.storage.fail = set()


async def test_remember_me(web: Web) -> None:
    with trio.fail_after(20):
        plain = set_cookie(await web.client.post("/api/login"))
        assert plain is not None
        assert not any(a.startswith("Max-Age") for a in plain[1])  # a browser-session cookie
        remembered = set_cookie(await web.client.post("/api/login?remember=1"))
        assert remembered is not None
        assert f"Max-Age={7 * DAY}" in remembered[1]
        web.clock.now += 3 * DAY  # long past the idle and absolute timeouts
        response = await web.client.get("/api/whoami", headers=web.cookie(remembered[0]))
        assert response.text == "alice"
        assert (await web.client.get("/api/whoami", headers=web.cookie(plain[0]))).text == ""
        rotated = set_cookie(
            await web.client.post("/api/rotate", headers=web.cookie(remembered[0]))
        )
        assert rotated is not None
        assert f"Max-Age={4 * DAY}" in rotated[1]  # rotation keeps the lifetime
        web.clock.now += 4 * DAY + 1
        response = await web.client.get("/api/whoami", headers=web.cookie(rotated[0]))
        assert response.text == ""  # and the server ends it on time


async def test_the_session_id_in_a_header(web: Web) -> None:
    with trio.fail_after(20):
        # An API client asks for the header transport by sending the header (empty).
        login = await web.client.post("/api/login", headers={HEADER: ""})
        assert set_cookie(login) is None
        token = login.headers[HEADER]
        assert token
        assert login.headers["cache-control"] == "private, no-store"
        assert HEADER.lower() in login.headers["vary"].lower()
        assert (await web.client.get("/api/whoami", headers={HEADER: token})).text == "alice"
        # Rotation answers with the new id; the old one is dead.
        rotated = await web.client.post("/api/rotate", headers={HEADER: token})
        new_token = rotated.headers[HEADER]
        assert new_token not in ("", token)
        assert (await web.client.get("/api/whoami", headers={HEADER: token})).text == ""
        # A tampered value gets nothing (strict mode).
        tampered = new_token[:-1] + ("A" if new_token[-1] != "A" else "B")
        assert (await web.client.get("/api/whoami", headers={HEADER: tampered})).text == ""
        # Logout kills it and tells the client so with an empty value.
        logout = await web.client.post("/api/logout", headers={HEADER: new_token})
        assert logout.headers[HEADER] == ""
        assert (await web.client.get("/api/whoami", headers={HEADER: new_token})).text == ""


async def test_header_and_cookie_transports_do_not_mix(web: Web) -> None:
    with trio.fail_after(20):
        found = set_cookie(await web.client.post("/api/login"))
        assert found is not None
        # The cookie's value sent in the header works the same (one id, two transports) ...
        headers = {HEADER: found[0]}
        assert (await web.client.get("/api/whoami", headers=headers)).text == "alice"
        # ... but a request that sends the header uses only the header.
        both = {HEADER: "", **web.cookie(found[0])}
        assert (await web.client.get("/api/whoami", headers=both)).text == ""


def test_a_context_manager_instead_of_a_factory_is_refused_at_construction() -> None:
    from trio_sessions import MemoryStorage, open_cache_storage
    from trio_sessions.asgi import SessionMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ASYNC124
        raise AssertionError("not reached")

    with pytest.raises(TypeError, match=r"lambda: open_cache_storage\(\.\.\.\)"):
        SessionMiddleware(app, storage=open_cache_storage(MemoryStorage()))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="SessionStorage or a zero-argument callable"):
        SessionMiddleware(app, storage="sessions/")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of path prefixes"):
        SessionMiddleware(app, storage=MemoryStorage(), autoload="/api")


def test_the_middleware_under_asyncio_says_to_use_the_trio_worker() -> None:
    import asyncio

    from trio_sessions import MemoryStorage
    from trio_sessions.asgi import SessionMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:  # noqa: ASYNC124
        raise AssertionError("not reached")

    middleware = SessionMiddleware(app, storage=MemoryStorage())
    scope = {"type": "http", "path": "/", "headers": []}

    async def noop(*args: Any) -> Any:  # noqa: ASYNC124
        return None

    with pytest.raises(RuntimeError, match="--worker-class trio"):
        asyncio.run(middleware(scope, noop, noop))


async def test_a_storage_that_cannot_work_fails_the_startup() -> None:
    from trio_sessions import SessionStorage
    from trio_sessions.asgi import SessionMiddleware

    class NotStarted(Spy):
        async def read_bytes(self, session_id: str) -> bytes:
            raise RuntimeError("this storage was not started: await nursery.start(storage.run)")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"

    storage: SessionStorage = NotStarted()
    middleware = SessionMiddleware(app, storage=storage)
    messages = iter([{"type": "lifespan.startup"}])

    async def receive() -> Any:
        await trio.lowlevel.checkpoint()
        return next(messages)

    async def send(message: Any) -> None:
        await trio.lowlevel.checkpoint()

    with pytest.raises(RuntimeError, match="does not work: this storage was not started"):
        await middleware({"type": "lifespan"}, receive, send)
