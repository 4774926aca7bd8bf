"""The demo as users meet it: ``trio-sessions demo`` in its own process.

* headless Chromium (Debian's ``chromium``, driven by Playwright) visits, logs in, sees the
  counter persist, logs out, and its cookie jar shows the attributes we set: a browser
  enforces cookie rules (``__Host-`` needs ``Secure`` and ``Path=/``) that httpx ignores;
* sessions kept by DirectoryStorage survive a restart of the server process.

Without Chromium or Playwright these tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import trio

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


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required under CI (.ci/run installs it)")
    pytest.skip(f"{what} is not installed")


@asynccontextmanager
async def demo(root: Path) -> AsyncIterator[str]:
    """Run ``trio-sessions demo`` on a free port; yield its URL; stop it by pid."""
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
        line = buffer.decode()
        url = line[line.index("http://") :].split()[0].rstrip("/")
        yield url
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            process.send_signal(signal.SIGTERM)
            await process.wait()
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    assert process.returncode == 0


def cookie_header(response: httpx.Response) -> str:
    return response.headers["set-cookie"].split(";")[0]


async def test_sessions_survive_a_server_restart(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with demo(tmp_path) as url, httpx.AsyncClient(base_url=url, verify=NO_TLS) as client:
            first = await client.get("/")
            anonymous = cookie_header(first)
            login = await client.post(
                "/login", data={"username": "alice"}, headers={"Cookie": anonymous}
            )
            assert login.status_code == 303
            alice = cookie_header(login)
            await client.get("/", headers={"Cookie": alice})  # visit 2
            other = cookie_header(await client.post("/login", data={"username": "bob"}))
            logout = await client.post("/logout", headers={"Cookie": other})
            assert logout.status_code == 303
        assert any(tmp_path.joinpath("sessions").rglob("*")), "nothing stored on disk"

        async with demo(tmp_path) as url, httpx.AsyncClient(base_url=url, verify=NO_TLS) as client:
            state = (await client.get("/state", headers={"Cookie": alice})).json()
            assert state == {
                "user": "alice",
                "visits": 2,
                "new": False,
                "stored_bytes": state["stored_bytes"],
            }
            assert state["stored_bytes"] > 0
            # Logged-out and rotated-away ids stay dead across the restart.
            for dead in (other, anonymous):
                assert (await client.get("/state", headers={"Cookie": dead})).json()["new"]


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
            seen["first_visit"] = visits()
            seen["cookies_before_login"] = context.cookies()
            page.goto(url + "/")
            page.reload()
            seen["third_visit"] = visits()
            page.fill("#username", "alice")
            page.click("#login")
            page.wait_for_selector("#logout")
            seen["user"] = page.inner_text("#user")
            seen["after_login"] = visits()
            page.goto(url + "/")
            seen["after_navigation"] = visits()
            seen["cookies_after_login"] = context.cookies()
            seen["script_visible_cookies"] = page.evaluate("document.cookie")
            seen["screenshot_bytes"] = len(page.screenshot(path=str(screenshot), full_page=True))
            page.click("#logout")
            page.wait_for_selector("#login")
            seen["after_logout_user"] = page.inner_text("#user")
            seen["after_logout_visits"] = visits()
            seen["cookies_after_logout"] = context.cookies()
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


async def test_real_browser_uses_the_demo(tmp_path: Path) -> None:
    require_browser()
    screenshot = Path(os.environ.get("TRIO_SESSIONS_SCREENSHOT", tmp_path / "demo.png"))
    with trio.fail_after(120):
        async with demo(tmp_path / "root") as url:
            # Its own process: Playwright's sync API runs an asyncio loop, which must not
            # meet the event loop policy other tests (trio-asyncio) may have installed.
            result = await trio.run_process(
                [sys.executable, __file__, url, str(screenshot)], capture_stdout=True
            )
            seen = json.loads(result.stdout)
            async with httpx.AsyncClient(base_url=url, verify=NO_TLS) as client:
                before = seen["cookies_after_login"][0]["value"]
                dead = await client.get("/state", headers={"Cookie": f"{COOKIE}={before}"})
                assert dead.json() == {
                    "user": None,
                    "visits": 0,
                    "new": True,
                    "stored_bytes": None,
                }

    assert seen["first_visit"] == "1"
    assert seen["third_visit"] == "3"
    assert seen["user"] == "alice"
    assert seen["after_login"] == "4"  # the data moved to the new id with the login
    assert seen["after_navigation"] == "5"
    assert seen["after_logout_user"] == "Not logged in."
    assert seen["after_logout_visits"] == "1"  # a new, empty session
    assert seen["script_visible_cookies"] == ""  # HttpOnly: scripts cannot read it

    (before_login,) = seen["cookies_before_login"]
    (after_login,) = seen["cookies_after_login"]
    (after_logout,) = seen["cookies_after_logout"]
    for cookie in (before_login, after_login, after_logout):
        assert cookie["name"] == COOKIE
        assert cookie["domain"] == "127.0.0.1"  # host-only: no Domain attribute
        assert cookie["path"] == "/"
        assert cookie["secure"] is True
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Lax"
        assert cookie["expires"] == -1  # a browser-session cookie
    assert len({before_login["value"], after_login["value"], after_logout["value"]}) == 3
    assert seen["screenshot_bytes"] > 0


if __name__ == "__main__":
    print(json.dumps(browse(sys.argv[1], Path(sys.argv[2]))))
