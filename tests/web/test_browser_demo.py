"""The demo as users meet it: ``trio-sessions demo`` in its own process.

* headless Chromium (Debian's ``chromium``, driven by Playwright) visits, logs in, sees the
  counter persist, logs out, and its cookie jar shows the attributes we set: a browser
  enforces cookie rules (``__Host-`` needs ``Secure`` and ``Path=/``) that httpx ignores;
* "remember me" ticked, the session survives a browser restart (a new context with the
  saved storage state); not ticked, it does not;
* sessions kept by DirectoryStorage survive a restart of the server process, and the
  startup line names the directory they are kept in.
* POSTs answered early do not stall the keep-alive connection they came on.

Without Chromium or Playwright these tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import trio

pytestmark = pytest.mark.slow  # a real browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
COOKIE = "__Host-session"
LOGIN_CSRF = "__Host-login-csrf"
REMEMBER_ME_SECONDS = 30 * 24 * 60 * 60


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required under CI (.ci/run installs it)")
    pytest.skip(f"{what} is not installed")


@asynccontextmanager
async def demo(root: Path) -> AsyncIterator[tuple[str, str]]:
    """Run ``trio-sessions demo`` on a free port; yield its URL and startup line; stop it."""
    command = [sys.executable, "-m", "trio_sessions", "demo", "--port", "0", "--root", str(root)]
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        buffer = b""
        with trio.fail_after(30):
            while b"\n" not in buffer:
                chunk = await process.stdout.receive_some()
                assert chunk, "the demo exited before serving"
                buffer += chunk
        line = buffer.decode().strip()
        url = line[line.index("http://") :].split()[0].rstrip("/")
        yield url, line
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            process.send_signal(signal.SIGTERM)
            await process.wait()
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    assert process.returncode == 0


def cookie_header(response: httpx.Response, name: str = COOKIE) -> str:
    (header,) = [h for h in response.headers.get_list("set-cookie") if h.startswith(name + "=")]
    return header.split(";")[0]


async def log_in(client: httpx.AsyncClient, name: str) -> str:
    """Log in through the form, CSRF token included; return the session cookie."""
    page = await client.get("/")
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match is not None
    response = await client.post(
        "/login",
        data={"username": name, "csrf": match.group(1)},
        headers={"Cookie": cookie_header(page, LOGIN_CSRF)},
    )
    assert response.status_code == 303
    return cookie_header(response)


async def log_out(client: httpx.AsyncClient, session: str) -> None:
    page = await client.get("/", headers={"Cookie": session})
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match is not None
    response = await client.post(
        "/logout", data={"csrf": match.group(1)}, headers={"Cookie": session}
    )
    assert response.status_code == 303


async def test_sessions_survive_a_server_restart(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with (
            demo(tmp_path) as (url, _),
            httpx.AsyncClient(base_url=url, verify=NO_TLS) as client,
        ):
            alice = await log_in(client, "alice")
            await client.get("/", headers={"Cookie": alice})  # visit 1
            await client.get("/", headers={"Cookie": alice})  # visit 2
            bob = await log_in(client, "bob")
            await log_out(client, bob)
        assert any(tmp_path.joinpath("sessions").rglob("*")), "nothing stored on disk"

        async with (
            demo(tmp_path) as (url, _),
            httpx.AsyncClient(base_url=url, verify=NO_TLS) as client,
        ):
            state = (await client.get("/state", headers={"Cookie": alice})).json()
            assert state["user"] == "alice"
            assert state["visits"] == 2
            # A logged-out id stays dead across the restart.
            assert (await client.get("/state", headers={"Cookie": bob})).json() == {"user": None}


async def test_the_startup_line_names_the_session_directory(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with (
            demo(tmp_path / "root") as (url, line),
            httpx.AsyncClient(base_url=url, verify=NO_TLS) as client,
        ):
            await log_in(client, "alice")
    sessions = tmp_path / "root" / "sessions"
    assert line == f"trio-sessions demo: open {url}/ (sessions in {sessions}; Ctrl+C stops)"
    assert len([p for p in sessions.rglob("*") if p.is_file()]) == 1  # the session is there


async def test_posts_answered_early_do_not_stall_the_connection(tmp_path: Path) -> None:
    # A POST answered without reading its body (a logout without a session) once left
    # Hypercorn's trio worker waiting on the keep-alive connection: the next request on
    # it got no answer. The views read their form first.
    async with demo(tmp_path) as (url, _), httpx.AsyncClient(base_url=url, timeout=None) as client:
        with trio.fail_after(60):  # a stalled connection never answers
            for _ in range(300):
                response = await client.post("/logout", data={"csrf": "x"})
                assert response.status_code == 303
                assert response.headers.get("set-cookie") is None


def browse(url: str, screenshot: Path) -> dict[str, Any]:
    """Drive headless Chromium through the demo; return what it saw."""
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.set_default_timeout(15_000)

            def visits() -> str:
                return page.inner_text("#visits")

            page.goto(url + "/")
            seen["before_login_user"] = page.inner_text("#user")
            page.reload()
            seen["cookies_before_login"] = context.cookies()
            page.fill("#username", "alice")
            page.click("#login")
            page.wait_for_selector("#logout")
            seen["user"] = page.inner_text("#user")
            seen["after_login"] = visits()
            page.goto(url + "/")
            seen["after_navigation"] = visits()
            seen["expiry"] = page.inner_text("#expiry")
            seen["cookies_after_login"] = context.cookies()
            seen["script_visible_cookies"] = page.evaluate("document.cookie")
            seen["screenshot_bytes"] = len(page.screenshot(path=str(screenshot), full_page=True))
            page.click("#logout")
            page.wait_for_selector("#login")
            seen["after_logout_user"] = page.inner_text("#user")
            seen["cookies_after_logout"] = context.cookies()
        finally:
            browser.close()
    return seen


def restart(state: Any) -> Any:
    """The storage state a browser keeps across a restart: without session cookies.

    Playwright's ``storage_state()`` keeps every cookie, browser-session cookies
    (``expires == -1``) included, which a real browser drops when it is closed (unless
    it restores sessions). Leaving them out makes a new context a restarted browser.
    """
    return {**state, "cookies": [c for c in state["cookies"] if c["expires"] != -1]}


def remember(url: str, screenshot: Path) -> dict[str, Any]:
    """Log in with and without "remember me"; restart the browser; return what it saw."""
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            for name, tick in (("alice", True), ("bob", False)):
                context = browser.new_context()
                page = context.new_page()
                page.set_default_timeout(15_000)
                page.goto(url + "/")
                page.fill("#username", name)
                if tick:
                    page.check("#remember")
                page.click("#login")
                page.wait_for_selector("#logout")
                if tick:
                    page.screenshot(path=str(screenshot), full_page=True)
                state = context.storage_state()
                context.close()
                seen[name] = {"cookies": state["cookies"]}
                for how, kept in (("restarted", restart(state)), ("kept", state)):
                    again = browser.new_context(storage_state=kept)
                    page = again.new_page()
                    page.set_default_timeout(15_000)
                    page.goto(url + "/")
                    seen[name][how] = page.inner_text("#user")
                    again.close()
        finally:
            browser.close()
    return seen


def require_browser() -> None:
    if not os.path.exists(CHROMIUM):
        _missing("Debian's chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("playwright")


async def in_browser(what: str, url: str, screenshot: Path) -> dict[str, Any]:
    # Its own process: Playwright's sync API runs an asyncio loop, which must not meet
    # the event loop policy other tests (trio-asyncio) may have installed.
    result = await trio.run_process(
        [sys.executable, __file__, what, url, str(screenshot)], capture_stdout=True
    )
    seen: dict[str, Any] = json.loads(result.stdout)
    return seen


async def test_real_browser_uses_the_demo(tmp_path: Path) -> None:
    require_browser()
    screenshot = Path(os.environ.get("TRIO_SESSIONS_SCREENSHOT", tmp_path / "demo.png"))
    with trio.fail_after(120):
        async with demo(tmp_path / "root") as (url, _):
            seen = await in_browser("browse", url, screenshot)
            async with httpx.AsyncClient(base_url=url, verify=NO_TLS) as client:
                before = seen["cookies_after_login"][0]["value"]
                dead = await client.get("/state", headers={"Cookie": f"{COOKIE}={before}"})
                assert dead.json() == {"user": None}  # logged out on the server

    assert seen["before_login_user"] == "Not logged in."
    assert seen["user"] == "alice"
    assert seen["after_login"] == "1"
    assert seen["after_navigation"] == "2"
    assert "when you close the browser" in seen["expiry"]
    assert seen["after_logout_user"] == "Not logged in."
    assert seen["script_visible_cookies"] == ""  # HttpOnly: scripts cannot read them

    # A visitor holds no session cookie, only the login form's CSRF cookie.
    (csrf,) = seen["cookies_before_login"]
    assert csrf["name"] == LOGIN_CSRF
    assert csrf["sameSite"] == "Strict"
    (after_login,) = seen["cookies_after_login"]  # the CSRF cookie was spent at login
    (after_logout,) = seen["cookies_after_logout"]  # the session cookie was deleted
    assert after_logout["name"] == LOGIN_CSRF
    assert after_logout["value"] != csrf["value"]
    assert after_login["name"] == COOKIE
    assert after_login["sameSite"] == "Lax"
    assert after_login["expires"] == -1  # a browser-session cookie: no "remember me"
    for cookie in (csrf, after_login, after_logout):
        assert cookie["domain"] == "127.0.0.1"  # host-only: no Domain attribute
        assert cookie["path"] == "/"
        assert cookie["secure"] is True
        assert cookie["httpOnly"] is True
    assert seen["screenshot_bytes"] > 0


async def test_remember_me_survives_a_browser_restart(tmp_path: Path) -> None:
    require_browser()
    screenshot = Path(os.environ.get("TRIO_SESSIONS_REMEMBER_SCREENSHOT", tmp_path / "r.png"))
    with trio.fail_after(120):
        async with demo(tmp_path / "root") as (url, _):
            started = time.time()
            seen = await in_browser("remember", url, screenshot)

    # Ticked: the session cookie carries an expiry 30 days ahead and survives a restart.
    (alice,) = [c for c in seen["alice"]["cookies"] if c["name"] == COOKIE]
    assert started + REMEMBER_ME_SECONDS - 60 < alice["expires"] < time.time() + REMEMBER_ME_SECONDS
    assert seen["alice"]["restarted"] == "alice"
    # Not ticked: a browser-session cookie, which a restart drops: logged out.
    (bob,) = [c for c in seen["bob"]["cookies"] if c["name"] == COOKIE]
    assert bob["expires"] == -1
    assert seen["bob"]["restarted"] == "Not logged in."
    # (Playwright's storage state keeps browser-session cookies: without the filter
    # above, the new context would still be logged in.)
    assert seen["bob"]["kept"] == "bob"


if __name__ == "__main__":
    run = {"browse": browse, "remember": remember}[sys.argv[1]]
    print(json.dumps(run(sys.argv[2], Path(sys.argv[3]))))
