"""Log in and out of a Quart-Trio app, with sessions in a cached directory."""

import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from quart import Blueprint, redirect, request
from quart_trio import QuartTrio
from werkzeug.wrappers import Response

from trio_sessions import CookieOptions, DirectoryStorage, SessionStorage, open_cache_storage
from trio_sessions.quart import current_session, init_app

pages = Blueprint("pages", __name__)


@pages.get("/")
async def index() -> str:
    user = current_session().get("user", "stranger")
    return f"Hello, {user}!\n"


@pages.post("/login")
async def login() -> Response:
    form = await request.form
    user = form["user"]  # check the password here
    session = current_session()
    session.regenerate()  # a new id on login: an id planted before is worthless
    session["user"] = user
    return redirect("/", 303)


@pages.post("/logout")
async def logout() -> Response:
    current_session().invalidate()  # deleted on the server, also for requests in flight
    return redirect("/", 303)


@asynccontextmanager
async def open_sessions(directory: str) -> AsyncIterator[SessionStorage]:
    # The cache is per process: serve with one worker, or drop the cache for several.
    async with (
        DirectoryStorage(directory) as files,
        open_cache_storage(files, idle_timeout=60) as cache,
    ):
        yield cache


def create_app(sessions_directory: str, session_keys: list[str]) -> QuartTrio:
    app = QuartTrio(__name__)
    app.register_blueprint(pages)
    init_app(
        app,
        # A factory: opened in app.nursery when serving starts, closed when it stops.
        lambda: open_sessions(sessions_directory),
        idle_timeout=30 * 60,
        absolute_timeout=8 * 60 * 60,
        secret_key=session_keys,  # the first signs, all verify: rotate by prepending
        cookie=CookieOptions(name="__Host-session"),
    )
    return app


def app_from_environment() -> QuartTrio:
    # hypercorn --worker-class trio "quart_app:app_from_environment()"
    return create_app(os.environ["SESSIONS_DIRECTORY"], os.environ["SESSION_KEYS"].split())


# A login and a logout through Quart's test client, without a server:
async def main(directory: str) -> None:
    app = create_app(directory, [secrets.token_urlsafe(32)])
    async with app.test_app() as test_app:
        client = test_app.test_client()
        print((await (await client.get("/")).get_data(as_text=True)).strip())
        await client.post("/login", form={"user": "alice"})
        print((await (await client.get("/")).get_data(as_text=True)).strip())
        await client.post("/logout")
        print((await (await client.get("/")).get_data(as_text=True)).strip())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as directory:
        trio.run(main, directory)
