"""The session id in a header, for API clients: a Starlette app and an httpx client."""

import httpx2 as httpx
import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trio_sessions import MemoryStorage
from trio_sessions.asgi import SessionMiddleware

HEADER = "X-Session-Id"


async def login(request: Request) -> JSONResponse:  # noqa: ASYNC124 (a framework view)
    request.session.regenerate()  # type: ignore[attr-defined]
    request.session["user"] = "alice"
    return JSONResponse({"ok": True})


async def me(request: Request) -> JSONResponse:  # noqa: ASYNC124 (a framework view)
    return JSONResponse({"user": request.session.get("user")})


async def logout(request: Request) -> JSONResponse:  # noqa: ASYNC124 (a framework view)
    request.session.invalidate()  # type: ignore[attr-defined]
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/login", login, methods=["POST"]),
        Route("/me", me),
        Route("/logout", logout, methods=["POST"]),
    ],
    middleware=[
        # cookies=False: the id travels only in the header (an API with no browser).
        Middleware(SessionMiddleware, storage=MemoryStorage(), header=HEADER, cookies=False),
    ],
)


async def main() -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://api.test") as client:
        response = await client.post("/login")
        token = response.headers[HEADER]  # keep it as a secret, like a password
        print("logged in, token of", len(token), "characters")

        response = await client.get("/me", headers={HEADER: token})
        print("me:", response.json())

        response = await client.post("/logout", headers={HEADER: token})
        print("after logout the server sends", repr(response.headers[HEADER]))
        response = await client.get("/me", headers={HEADER: token})
        print("me with the old token:", response.json())


trio.run(main)
