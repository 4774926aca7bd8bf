"""Log in and out of a Starlette app on trio, with the ASGI session middleware."""

import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import httpx2 as httpx
import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.routing import Route

from trio_sessions import DirectoryStorage, Session, SessionStorage, open_cache_storage
from trio_sessions.asgi import SessionMiddleware


async def index(request: Request) -> PlainTextResponse:
    user = request.session.get("user", "stranger")
    return PlainTextResponse(f"Hello, {user}!\n")


async def login(request: Request) -> RedirectResponse:
    credentials = await request.json()  # check the password here
    session = cast(Session, request.session)  # Starlette types it as a plain dict
    session.regenerate()  # a new id on login: an id planted before is worthless
    session["user"] = credentials["user"]
    return RedirectResponse("/", status_code=303)


async def logout(request: Request) -> RedirectResponse:
    cast(Session, request.session).invalidate()
    return RedirectResponse("/", status_code=303)


ROUTES = [
    Route("/", index),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]


def create_app(sessions_directory: str, session_keys: list[str]) -> Starlette:
    @asynccontextmanager
    async def open_sessions() -> AsyncIterator[SessionStorage]:
        # A factory: opened at lifespan startup, closed at lifespan shutdown.
        async with (
            DirectoryStorage(sessions_directory) as files,
            open_cache_storage(files, idle_timeout=60) as cache,
        ):
            yield cache

    sessions = Middleware(
        SessionMiddleware,
        storage=open_sessions,
        idle_timeout=30 * 60,
        absolute_timeout=8 * 60 * 60,
        secret_key=session_keys,
    )
    return Starlette(routes=ROUTES, middleware=[sessions])


def app_from_environment() -> Starlette:
    # hypercorn --worker-class trio "asgi_app:app_from_environment()"
    return create_app(os.environ["SESSIONS_DIRECTORY"], os.environ["SESSION_KEYS"].split())


# A login and a logout in-process. httpx2's ASGI transport sends no lifespan events,
# so this passes a storage it opened itself (its owner closes it) instead of a factory.
async def main(directory: str) -> None:
    async with DirectoryStorage(directory) as storage:
        sessions = Middleware(
            SessionMiddleware, storage=storage, secret_key=secrets.token_bytes(32)
        )
        app = Starlette(routes=ROUTES, middleware=[sessions])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://app.test") as client:
            print((await client.get("/")).text.strip())
            await client.post("/login", json={"user": "alice"}, follow_redirects=True)
            print((await client.get("/")).text.strip())
            await client.post("/logout", follow_redirects=True)
            print((await client.get("/")).text.strip())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        trio.run(main, directory)
