"""End to end over real HTTP: Hypercorn (trio worker) on 127.0.0.1, httpx on trio.

The same application, once on Quart-Trio with `trio_sessions.quart` and once on
Starlette with `trio_sessions.asgi.SessionMiddleware`, goes through the same scenarios.
Cookies are sent by hand: httpx (like any non-browser client) does not apply browsers'
cookie rules, and would not send a ``Secure`` cookie back over plain http.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
import pytest
import trio

from tests.conftest import WallClock
from tests.spy_storage import Spy, disk_full
from trio_sessions import SessionNotFound, SessionStorage
from trio_sessions._demo import open_server

# Plain http only; an empty TLS context spares httpx loading CA certificates per client.
NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
IDLE = 600.0
ABSOLUTE = 3600.0
NAME = "sid"
DEFAULT_ATTRIBUTES = ["Path=/", "Secure", "HttpOnly", "SameSite=Lax"]


@dataclass
class Gate:
    """Lets a test hold the /slow handler after it loaded the session."""

    entered: trio.Event = field(default_factory=trio.Event)
    release: trio.Event = field(default_factory=trio.Event)


@dataclass
class Web:
    client: httpx.AsyncClient
    storage: Spy
    clock: WallClock
    gate: Gate

    async def get(self, path: str, cookie: str | None = None) -> httpx.Response:
        return await self.client.get(path, headers=_cookie_header(cookie))

    async def post(self, path: str, cookie: str | None = None, **data: str) -> httpx.Response:
        return await self.client.post(path, headers=_cookie_header(cookie), data=data)


def _cookie_header(cookie: str | None) -> dict[bytes, bytes]:
    # Bytes: a hostile client may send any octets, not only ASCII.
    return {} if cookie is None else {b"Cookie": f"{NAME}={cookie}".encode()}


def set_cookie(response: httpx.Response) -> tuple[str, list[str]] | None:
    """The value and attributes of our Set-Cookie header, or None if there is none."""
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith(NAME + "=")]
    if not headers:
        return None
    assert len(headers) == 1
    first, *attributes = (part.strip() for part in headers[0].split(";"))
    return first.partition("=")[2], attributes


def cookie_of(response: httpx.Response) -> str:
    found = set_cookie(response)
    assert found is not None, "expected a Set-Cookie header"
    return found[0]


def quart_app(storage: SessionStorage, clock: WallClock, gate: Gate) -> Any:
    from quart import session
    from quart_trio import QuartTrio

    from trio_sessions.quart import current_session, init_app

    app = QuartTrio(__name__)
    init_app(app, storage, **_options(clock))

    @app.get("/count")
    async def count() -> str:  # noqa: ASYNC124 (a framework view)
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    @app.get("/peek")
    async def peek() -> str:  # noqa: ASYNC124 (a framework view)
        return str(session.get("n", 0))

    @app.get("/plain")
    async def plain() -> str:  # noqa: ASYNC124 (a framework view)
        return "no session here"

    @app.post("/login")
    async def login() -> str:  # noqa: ASYNC124 (a framework view)
        current_session().regenerate()
        session["user"] = "alice"
        return "ok"

    @app.get("/whoami")
    async def whoami() -> str:  # noqa: ASYNC124 (a framework view)
        return str(session.get("user", ""))

    @app.post("/logout")
    async def logout() -> str:  # noqa: ASYNC124 (a framework view)
        current_session().invalidate()
        return "bye"

    @app.get("/slow")
    async def slow() -> str:
        from quart import request

        user = session.get("user", "")
        gate.entered.set()
        await gate.release.wait()
        if request.args.get("rotate"):
            current_session().regenerate()
        session["last_page"] = "/slow"
        return str(user)

    @app.get("/bad")
    async def bad() -> str:  # noqa: ASYNC124 (a framework view)
        session["when"] = object()
        return "stored?"

    return app


def starlette_app(storage: SessionStorage, clock: WallClock, gate: Gate) -> Any:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from trio_sessions.asgi import SessionMiddleware

    async def count(request: Request) -> PlainTextResponse:  # noqa: ASYNC124 (a framework view)
        request.session["n"] = request.session.get("n", 0) + 1
        return PlainTextResponse(str(request.session["n"]))

    async def peek(request: Request) -> PlainTextResponse:  # noqa: ASYNC124 (a framework view)
        return PlainTextResponse(str(request.session.get("n", 0)))

    async def plain(request: Request) -> PlainTextResponse:
        await trio.lowlevel.checkpoint()
        return PlainTextResponse("no session here")

    async def login(request: Request) -> PlainTextResponse:  # noqa: ASYNC124 (a framework view)
        request.session.regenerate()  # type: ignore[attr-defined]
        request.session["user"] = "alice"
        return PlainTextResponse("ok")

    async def whoami(request: Request) -> PlainTextResponse:  # noqa: ASYNC124 (a framework view)
        return PlainTextResponse(str(request.session.get("user", "")))

    async def logout(request: Request) -> PlainTextResponse:  # noqa: ASYNC124 (a framework view)
        request.session.invalidate()  # type: ignore[attr-defined]
        return PlainTextResponse("bye")

    async def slow(request: Request) -> PlainTextResponse:
        user = request.session.get("user", "")
        gate.entered.set()
        await gate.release.wait()
        if request.query_params.get("rotate"):
            request.session.regenerate()  # type: ignore[attr-defined]
        request.session["last_page"] = "/slow"
        return PlainTextResponse(str(user))

    async def bad(request: Request) -> PlainTextResponse:  # noqa: ASYNC124 (a framework view)
        request.session["when"] = object()
        return PlainTextResponse("stored?")

    routes = [
        Route("/count", count),
        Route("/peek", peek),
        Route("/plain", plain),
        Route("/login", login, methods=["POST"]),
        Route("/whoami", whoami),
        Route("/logout", logout, methods=["POST"]),
        Route("/slow", slow),
        Route("/bad", bad),
    ]
    middleware = [Middleware(SessionMiddleware, storage=storage, **_options(clock))]
    return Starlette(routes=routes, middleware=middleware)


def _options(clock: WallClock) -> dict[str, Any]:
    from trio_sessions import CookieOptions

    return {
        "cookie": CookieOptions(name=NAME),
        "idle_timeout": IDLE,
        "absolute_timeout": ABSOLUTE,
        "secret_key": b"k" * 32,
        "wall_clock": clock,
    }


APPS: dict[str, Callable[[SessionStorage, WallClock, Gate], Any]] = {
    "quart-trio": quart_app,
    "starlette": starlette_app,
}


@pytest.fixture(params=sorted(APPS))
async def web(request: pytest.FixtureRequest) -> AsyncIterator[Web]:
    storage, clock, gate = Spy(), WallClock(), Gate()
    app = APPS[request.param](storage, clock, gate)
    with trio.fail_after(30):
        async with (
            open_server(app) as url,
            httpx.AsyncClient(base_url=url, verify=NO_TLS) as client,
        ):
            yield Web(client, storage, clock, gate)


async def test_visit_counting_persists_and_cookie_has_the_defaults(web: Web) -> None:
    with trio.fail_after(20):
        first = await web.get("/count")
        assert first.text == "1"
        found = set_cookie(first)
        assert found is not None
        cookie, attributes = found
        assert attributes == DEFAULT_ATTRIBUTES
        assert "cookie" in first.headers["vary"].lower()
        for expected in ("2", "3"):
            response = await web.get("/count", cookie)
            assert response.text == expected
            assert set_cookie(response) is None  # same id: nothing to tell the browser
            assert "cookie" in response.headers["vary"].lower()


async def test_unchanged_responses_carry_no_set_cookie(web: Web) -> None:
    with trio.fail_after(20):
        cookie = cookie_of(await web.get("/count"))
        peek = await web.get("/peek", cookie)
        assert peek.text == "1"
        assert set_cookie(peek) is None
        assert "cookie" in peek.headers["vary"].lower()  # it depends on the session
        plain = await web.get("/plain", cookie)
        assert set_cookie(plain) is None
        assert "vary" not in plain.headers  # it does not
        anonymous = await web.get("/peek")
        assert anonymous.text == "0"
        assert set_cookie(anonymous) is None  # an empty new session is not stored


async def test_login_rotates_the_id_and_the_old_id_is_dead(web: Web) -> None:
    with trio.fail_after(20):
        before = cookie_of(await web.get("/count"))
        login = await web.post("/login", before)
        after = cookie_of(login)
        assert after != before
        assert (await web.get("/whoami", after)).text == "alice"
        assert (await web.get("/peek", after)).text == "1"  # the data came along
        stale = await web.get("/peek", before)
        assert stale.text == "0"
        assert (await web.get("/whoami", before)).text == ""
        try:
            left = await web.storage.read_bytes(before.partition(".")[0])
        except SessionNotFound:
            left = b""
        assert b"alice" not in left
        assert b'"n"' not in left


async def test_logout_invalidates_on_the_server(web: Web) -> None:
    with trio.fail_after(20):
        cookie = cookie_of(await web.post("/login"))
        logout = await web.post("/logout", cookie)
        found = set_cookie(logout)
        assert found is not None
        assert found[0] == ""
        assert "Max-Age=0" in found[1]
        # A client that ignores the deletion (or an attacker who copied the cookie):
        assert (await web.get("/whoami", cookie)).text == ""
        with pytest.raises(SessionNotFound):
            await web.storage.read_bytes(cookie.partition(".")[0])


@pytest.mark.parametrize(
    "cookie",
    [
        "A" * 43,  # well formed, never issued
        "A" * 43 + "." + "B" * 43,  # forged signature
        "A" * 43 + ".\u00e9t\u00e9",  # non-ASCII signature
        "not a session id at all",
        "%00%ff\\\"';--",
        "x" * 4000,
    ],
)
async def test_made_up_or_tampered_cookies_get_a_fresh_session(web: Web, cookie: str) -> None:
    with trio.fail_after(20):
        response = await web.get("/count", cookie)
        assert response.status_code == 200
        assert response.text == "1"
        issued = cookie_of(response)
        assert issued != cookie
        assert not issued.startswith(cookie.partition(".")[0])


async def test_tampering_with_a_real_cookie_is_not_adopted(web: Web) -> None:
    with trio.fail_after(20):
        cookie = cookie_of(await web.post("/login"))
        session_id, _, signature = cookie.partition(".")
        flipped = "A" if signature[-1] != "A" else "B"
        response = await web.get("/whoami", f"{session_id}.{signature[:-1]}{flipped}")
        assert response.status_code == 200
        assert response.text == ""


async def test_idle_timeout_expires_sessions(web: Web) -> None:
    with trio.fail_after(20):
        cookie = cookie_of(await web.post("/login"))
        web.clock.now += IDLE - 10
        assert (await web.get("/whoami", cookie)).text == "alice"  # and this slides it
        web.clock.now += IDLE - 10
        assert (await web.get("/whoami", cookie)).text == "alice"
        web.clock.now += IDLE + 1
        assert (await web.get("/whoami", cookie)).text == ""


async def test_absolute_timeout_expires_active_sessions(web: Web) -> None:
    with trio.fail_after(20):
        cookie = cookie_of(await web.post("/login"))
        for _ in range(7):  # a visit every 500 s: never idle, 3500 s in all
            web.clock.now += 500
            assert (await web.get("/whoami", cookie)).text == "alice"
        web.clock.now += 200  # 3700 s after login
        assert (await web.get("/whoami", cookie)).text == ""


async def test_logout_wins_against_a_slow_concurrent_request(web: Web) -> None:
    with trio.fail_after(20):
        cookie = cookie_of(await web.post("/login"))
        slow_response: list[httpx.Response] = []

        async def slow_request() -> None:
            slow_response.append(await web.get("/slow", cookie))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_request)
            await web.gate.entered.wait()  # the slow request has loaded the session
            logout = await web.post("/logout", cookie)
            assert logout.status_code == 200
            web.gate.release.set()  # now it changes the session and saves it
        assert slow_response[0].text == "alice"
        assert set_cookie(slow_response[0]) is None
        assert (await web.get("/whoami", cookie)).text == ""
        with pytest.raises(SessionNotFound):
            await web.storage.read_bytes(cookie.partition(".")[0])


async def test_storage_outage_answers_503_instead_of_logging_out(web: Web) -> None:
    with trio.fail_after(20):
        cookie = cookie_of(await web.post("/login"))
        web.storage.fail = {"read", "write", "delete"}
        response = await web.get("/whoami", cookie)
        assert response.status_code == 503
        assert set_cookie(response) is None
        web.storage.fail = set()
        assert (await web.get("/whoami", cookie)).text == "alice"


async def test_storage_failure_while_saving_answers_503(web: Web) -> None:
    with trio.fail_after(20):
        response = await web.client.get("/count")
        cookie = cookie_of(response)
        web.storage.fail = {"read", "write", "delete"}
        # Loading succeeds from nothing (no cookie), saving the new session fails.
        failed = await web.client.get("/count")
        assert failed.status_code == 503
        assert set_cookie(failed) is None
        web.storage.fail = set()
        assert (await web.get("/peek", cookie)).text == "1"


# ------------------------------------------------ integrity, through the HTTP stack


async def _while_slow(web: Web, path: str, cookie: str, during: Any) -> httpx.Response:
    """Run a /slow request that loaded the session before *during* ran, and finished after."""
    slow_response: list[httpx.Response] = []

    async def slow_request() -> None:
        slow_response.append(await web.get(path, cookie))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_request)
        await web.gate.entered.wait()
        await during()
        web.gate.release.set()
    web.gate = Gate()
    return slow_response[0]


async def test_a_backend_blip_while_saving_never_undoes_a_logout(web: Web) -> None:
    with trio.fail_after(20):
        cookie = cookie_of(await web.post("/login"))

        async def logout_then_break_reads() -> None:
            assert (await web.post("/logout", cookie)).status_code == 200
            web.storage.fail = {"read"}

        slow = await _while_slow(web, "/slow", cookie, logout_then_break_reads)
        assert slow.status_code in (200, 503)
        assert set_cookie(slow) is None
        web.storage.fail = set()
        assert (await web.get("/whoami", cookie)).text == ""


async def test_a_rotation_after_logout_carries_nothing_to_a_new_id(web: Web) -> None:
    with trio.fail_after(20):
        cookie = cookie_of(await web.post("/login"))

        async def logout() -> None:
            assert (await web.post("/logout", cookie)).status_code == 200

        slow = await _while_slow(web, "/slow?rotate=1", cookie, logout)
        assert set_cookie(slow) is None  # no cookie for a session that holds alice
        assert (await web.get("/whoami", cookie)).text == ""


async def test_a_slow_request_does_not_overwrite_acknowledged_writes(web: Web) -> None:
    with trio.fail_after(20):
        cookie = cookie_of(await web.get("/count"))

        async def five_counts() -> None:
            for expected in range(2, 7):
                assert (await web.get("/count", cookie)).text == str(expected)

        await _while_slow(web, "/slow", cookie, five_counts)
        assert (await web.get("/peek", cookie)).text == "6"


async def test_logout_on_a_full_disk_ends_the_session(web: Web) -> None:
    with trio.fail_after(20):
        cookie = cookie_of(await web.post("/login"))
        web.storage.error = disk_full
        web.storage.fail = {"write"}
        logout = await web.post("/logout", cookie)
        assert logout.status_code == 200
        web.storage.fail = set()
        assert (await web.get("/whoami", cookie)).text == ""


async def test_a_failed_logout_answers_503_drops_the_cookie_and_keeps_the_data_locked(
    web: Web,
) -> None:
    with trio.fail_after(20):
        cookie = cookie_of(await web.post("/login"))
        web.storage.fail = {"delete"}
        logout = await web.post("/logout", cookie)
        assert logout.status_code == 503
        found = set_cookie(logout)
        assert found is not None
        assert "Max-Age=0" in found[1]
        # Whoever kept the cookie gets no data while the delete keeps failing.
        assert (await web.get("/whoami", cookie)).status_code == 503
        web.storage.fail = set()
        assert (await web.get("/whoami", cookie)).text == ""


@pytest.mark.parametrize("path", ["/peek", "/count", "/whoami", "/slow", "/slow?rotate=1"])
async def test_logout_racing_another_request(web: Web, path: str) -> None:
    with trio.fail_after(20):
        cookie = cookie_of(await web.post("/login"))

        async def logout() -> None:
            assert (await web.post("/logout", cookie)).status_code == 200

        if path.startswith("/slow"):
            other = await _while_slow(web, path, cookie, logout)
        else:
            responses: list[httpx.Response] = []

            async def request() -> None:
                responses.append(await web.get(path, cookie))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(request)
                nursery.start_soon(logout)
            (other,) = responses
        assert (await web.get("/whoami", cookie)).text == ""
        new = set_cookie(other)
        if new is not None and new[0]:
            assert (await web.get("/whoami", new[0])).text == ""


async def test_responses_that_set_the_cookie_are_never_cached(web: Web) -> None:
    with trio.fail_after(20):
        first = await web.get("/count")
        assert first.headers["cache-control"] == "private, no-store"
        unchanged = await web.get("/peek", cookie_of(first))
        assert "cache-control" not in unchanged.headers


async def test_of_several_cookies_the_first_that_verifies_wins(web: Web) -> None:
    with trio.fail_after(20):
        cookie = cookie_of(await web.post("/login"))
        planted = "A" * 43 + "." + "B" * 43  # e.g. set by a sibling subdomain
        header = f"{NAME}={planted}; {NAME}={cookie}".encode()
        response = await web.client.get("/whoami", headers={b"Cookie": header})
        assert response.text == "alice"


async def test_unstorable_data_answers_500_and_keeps_the_session(
    web: Web, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(20):
        cookie = cookie_of(await web.post("/login"))
        response = await web.get("/bad", cookie)
        assert response.status_code == 500
        assert "Traceback" not in response.text
        assert "object" not in response.text
        assert set_cookie(response) is None
        assert (await web.get("/whoami", cookie)).text == "alice"  # still logged in
        assert "key 'when' (object)" in caplog.text
