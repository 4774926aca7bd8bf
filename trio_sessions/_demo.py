"""``trio-sessions demo``: a small Quart-Trio app showing server-side sessions at work.

A visit counter, a login form that rotates the session id, a logout that kills the
session on the server, and a view of what the server stores for the visitor. Sessions
live in a `DirectoryStorage` under ``./.trio-sessions`` (by default), so they survive a
restart of the demo. Requires the ``quart`` extra.
"""

from __future__ import annotations

import html
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._abc import SessionStorage
from ._errors import SessionNotFound
from .sessions import CookieOptions, Session, SessionManager

__all__ = ["DEMO_COOKIE", "create_app", "demo_storage", "main", "open_server"]

DEMO_COOKIE = CookieOptions(name="__Host-session")
DEMO_IDLE_TIMEOUT = 15 * 60
DEMO_ABSOLUTE_TIMEOUT = 8 * 60 * 60


def demo_storage(root: str) -> SessionStorage:
    """The demo's storage: the one place that chooses it."""
    from .storages.directory import DirectoryStorage

    return DirectoryStorage(os.path.join(root, "sessions"))


def _secret_key(root: str) -> bytes:
    """The demo's signing key, kept beside the sessions so a restart keeps them valid."""
    path = os.path.join(root, "secret-key")
    os.makedirs(root, mode=0o700, exist_ok=True)
    try:
        with open(path, "rb") as file:
            key = file.read()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key)
    return key


def create_app(
    storage: SessionStorage,
    *,
    secret_key: bytes | None = None,
    clock: Callable[[], float] = time.time,
    **options: Any,
) -> Any:
    """Build the demo's QuartTrio application (returned as ``Any``: Quart is optional)."""
    from quart import redirect, request
    from quart_trio import QuartTrio

    from .quart import current_session as current
    from .quart import init_app

    app = QuartTrio("trio_sessions.demo")
    options.setdefault("idle_timeout", DEMO_IDLE_TIMEOUT)
    options.setdefault("absolute_timeout", DEMO_ABSOLUTE_TIMEOUT)
    options.setdefault("cookie", DEMO_COOKIE)
    interface = init_app(app, storage, secret_key=secret_key, clock=clock, **options)
    manager = interface.manager

    @app.get("/")
    async def index() -> str:
        visitor = current()
        visitor["visits"] = visitor.get("visits", 0) + 1
        return await _page(manager, visitor, clock)

    @app.post("/login")
    async def login() -> Any:
        form = await request.form
        name = form.get("username", "").strip()[:40] or "guest"
        visitor = current()
        visitor.regenerate()  # a new id on login: a planted or leaked id is now useless
        visitor["user"] = name
        return redirect("/", 303)

    @app.post("/logout")
    async def logout() -> Any:
        await trio.lowlevel.checkpoint()
        current().invalidate()
        return redirect("/", 303)

    @app.get("/state")
    async def state() -> dict[str, Any]:
        visitor = current()
        stored = await _stored_size(manager, visitor)
        return {
            "user": visitor.get("user"),
            "visits": visitor.get("visits", 0),
            "new": visitor.new,
            "stored_bytes": stored,
        }

    return app


async def _stored_size(manager: SessionManager, visitor: Session) -> int | None:
    if visitor.new:
        await trio.lowlevel.checkpoint()
        return None
    try:
        return len(await manager.storage.read_bytes(visitor.id))
    except SessionNotFound:
        await trio.lowlevel.checkpoint()
        return None


def _when(seconds: float) -> str:
    if seconds == float("inf"):
        return "never"
    minutes, secs = divmod(max(0, int(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"in {hours} h {minutes:02d} min {secs:02d} s"


async def _page(manager: SessionManager, visitor: Session, clock: Callable[[], float]) -> str:
    now = clock()
    user = visitor.get("user")
    stored = await _stored_size(manager, visitor)
    # This request changed the counter, so its save refreshes the idle timer to now.
    idle_end = now + manager.idle_timeout
    absolute_end = (
        visitor.created_at + manager.absolute_timeout
        if manager.absolute_timeout is not None
        else float("inf")
    )
    data = html.escape(json.dumps(dict(visitor)))
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(visitor.created_at))
    idle = manager.idle_timeout
    idle_text = f"{_when(idle_end - now)} (sliding: {idle:.0f} s after a visit)"
    who = (
        f"<p>Logged in as <b id='user'>{html.escape(user)}</b>.</p>"
        "<form method='post' action='/logout'><button id='logout'>Log out</button></form>"
        if user
        else "<p id='user'>Not logged in.</p>"
        "<form method='post' action='/login'><input name='username' id='username' "
        "placeholder='your name' maxlength='40'> <button id='login'>Log in</button></form>"
    )
    storage = manager.storage
    where = html.escape(f"{type(storage).__name__} {getattr(storage, 'root', '')}".strip())
    size = "not stored yet (saved after this response)" if stored is None else f"{stored} bytes"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trio-sessions demo</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; }}
table {{ border-collapse: collapse; }} td {{ padding: .2rem .8rem .2rem 0; }}
code {{ background: #f3f3f3; padding: 0 .2rem; }} .note {{ color: #555; font-size: .9rem; }}
</style></head><body>
<h1>trio-sessions demo</h1>
<p>You have visited this page <b id="visits">{visitor.get("visits", 0)}</b> times
in this session.</p>
{who}
<h2>What the server stores for you</h2>
<table>
<tr><td>storage</td><td><code>{where}</code></td></tr>
<tr><td>stored before this visit</td><td id="size">{size}</td></tr>
<tr><td>session data</td><td><code id="data">{data}</code></td></tr>
<tr><td>created</td><td>{created}</td></tr>
<tr><td>idle expiry</td><td>{idle_text}</td></tr>
<tr><td>absolute expiry</td><td>{_when(absolute_end - now)}</td></tr>
<tr><td>cookie</td><td><code>{html.escape(manager.cookie.set_cookie("…"))}</code></td></tr>
</table>
<p class="note">Only a signed, random id travels in the cookie; the data stays on the
server. Logging in moves the data to a new id; logging out deletes it on the server.
The cookie is <code>Secure</code>: browsers accept that over plain http only on
<code>127.0.0.1</code> and <code>localhost</code>, which they treat as secure.</p>
</body></html>
"""


@asynccontextmanager
async def open_server(app: Any, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve *app* with Hypercorn's trio worker; yield its base URL; stop it on exit.

    Port 0 picks a free port. Leaving the block shuts the server down gracefully
    (lifespan shutdown included) and waits for it.
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.graceful_timeout = 2.0
    stop = trio.Event()

    async def shutdown_trigger() -> None:
        await stop.wait()

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                app, config, shutdown_trigger=shutdown_trigger, task_status=task_status
            )
        )
        try:
            yield binds[0]
        finally:
            stop.set()


async def _serve_until_signal(app: Any, host: str, port: int, ready: Callable[[str], None]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_server(app, host, port) as url:
            ready(url)
            async for _ in signals:
                break


def main(host: str, port: int, root: str) -> int:
    """Run the demo until SIGINT or SIGTERM."""
    try:
        import quart_trio  # noqa: F401
    except ImportError:
        print("error: the demo needs the 'quart' extra: pip install 'trio-sessions[quart]'")
        return 2
    root = os.path.abspath(root)
    storage = demo_storage(root)
    app = create_app(storage, secret_key=_secret_key(root))

    def ready(url: str) -> None:
        print(f"trio-sessions demo: open {url}/ (sessions in {root}; Ctrl+C stops)", flush=True)

    async def run() -> None:
        try:
            await _serve_until_signal(app, host, port, ready)
        finally:
            with trio.CancelScope(shield=True):
                await storage.aclose()

    trio.run(run)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main("127.0.0.1", 8000, ".trio-sessions"))
