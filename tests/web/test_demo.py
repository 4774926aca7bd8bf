"""The demo as a reference login/logout flow, through the real HTTP stack (Hypercorn).

* anonymous visitors get no stored session: 20,000 of their requests store nothing;
* the login form's signed double-submit cookie and the logout form's session token refuse
  forged POSTs with 403 and change nothing;
* "remember me" gives the session cookie a Max-Age and the session that lifetime;
* the pages show no server internals to visitors;
* ``trio-sessions demo`` says in one line what to do when it cannot start.

(httpx sends no ``Secure`` cookie over plain http, so these tests pass cookies by hand;
the browser test drives the same flow with Chromium's own cookie jar.)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import trio

from trio_sessions import DirectoryStorage
from trio_sessions._demo import demo_storage, open_server, prepare_root
from trio_sessions._demo import main as demo_main
from trio_sessions._demo_app import LOGIN_CSRF_COOKIE, REMEMBER_ME_SECONDS, create_app

SESSION = "__Host-session"
Client = httpx.AsyncClient


@asynccontextmanager
async def serve_demo(root: Path) -> AsyncIterator[tuple[Client, DirectoryStorage]]:
    key = await trio.to_thread.run_sync(prepare_root, str(root))
    storage = demo_storage(str(root))
    app = create_app(storage, secret_key=key)
    async with (
        storage,
        open_server(app) as url,
        httpx.AsyncClient(base_url=url, follow_redirects=False) as client,
    ):
        yield client, storage


def cookie(response: httpx.Response, name: str) -> str | None:
    """The value *response* sets for cookie *name* ("" when it deletes it), or None."""
    for header in response.headers.get_list("set-cookie"):
        key, _, rest = header.partition("=")
        if key == name:
            return rest.split(";")[0]
    return None


def set_cookie(response: httpx.Response, name: str) -> str:
    (header,) = [h for h in response.headers.get_list("set-cookie") if h.startswith(name + "=")]
    return header


async def login_form(client: Client, cookies: str = "") -> tuple[str, str]:
    """GET the login page: (the CSRF cookie as a Cookie header part, the form's token)."""
    page = await client.get("/", headers={"Cookie": cookies} if cookies else {})
    assert page.status_code == 200
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    value = cookie(page, LOGIN_CSRF_COOKIE)
    assert value is not None
    return f"{LOGIN_CSRF_COOKIE}={value}", token.group(1)


async def log_in(client: Client, name: str = "alice", *, remember: bool = False) -> httpx.Response:
    csrf_cookie, token = await login_form(client)
    form = {"username": name, "csrf": token} | ({"remember": "on"} if remember else {})
    response = await client.post("/login", data=form, headers={"Cookie": csrf_cookie})
    assert response.status_code == 303, response.text
    return response


def session_cookie(response: httpx.Response) -> str:
    value = cookie(response, SESSION)
    assert value
    return f"{SESSION}={value}"


async def state(client: Client, cookies: str) -> dict[str, object]:
    response = await client.get("/state", headers={"Cookie": cookies})
    assert response.status_code == 200
    data: dict[str, object] = response.json()
    return data


async def stored(storage: DirectoryStorage) -> tuple[int, list[str]]:
    """Sessions on disk, and every name under the storage root (fan-out folders too)."""
    statistics = await storage.scan()
    names = await trio.to_thread.run_sync(
        lambda: sorted(str(p.relative_to(storage.root)) for p in Path(storage.root).rglob("*"))
    )
    return statistics.sessions, names


# ------------------------------------------------------------ no session until login


async def test_20000_anonymous_requests_store_no_session(tmp_path: Path) -> None:
    # In-process (the app, its session interface and the storage; no HTTP parsing), so
    # that 20,000 requests take seconds; the other tests go through Hypercorn.
    key = await trio.to_thread.run_sync(prepare_root, str(tmp_path))
    storage = demo_storage(str(tmp_path))
    app = create_app(storage, secret_key=key)
    with trio.fail_after(600):
        async with storage, app.test_app():
            client = app.test_client(use_cookies=False)
            page = await client.get("/")
            csrf_cookie = page.headers["Set-Cookie"].split(";")[0]
            token = csrf_cookie.split("=", 1)[1]
            forged = "A" * 43 + "." + "B" * 43
            requests: list[Callable[[], Awaitable[Any]]] = [
                lambda: client.get("/"),
                lambda: client.get("/state"),
                lambda: client.get("/", headers={"Cookie": f"{SESSION}={forged}"}),
                lambda: client.get("/", headers={"Cookie": csrf_cookie}),
                lambda: client.post("/login", form={"username": "mallory"}),
                lambda: client.post(
                    "/login",
                    form={"username": "mallory", "csrf": token + "x"},
                    headers={"Cookie": csrf_cookie},
                ),
                lambda: client.post("/logout", form={"csrf": token}),
                lambda: client.post(
                    "/login", form={"username": "", "csrf": token}, headers={"Cookie": csrf_cookie}
                ),
            ]
            statuses: Counter[int] = Counter()
            session_cookies = 0
            total = 20_000

            async def worker(first: int) -> None:
                nonlocal session_cookies
                for number in range(first, total, 8):
                    response = await requests[number % len(requests)]()
                    statuses[response.status_code] += 1
                    set_cookies = response.headers.getlist("Set-Cookie")
                    session_cookies += any(c.startswith(SESSION) for c in set_cookies)

            async with trio.open_nursery() as nursery:
                for first in range(8):
                    nursery.start_soon(worker, first)
            assert statuses.total() == total
            assert set(statuses) == {200, 303, 400, 403}
            assert session_cookies == 0
            assert await stored(storage) == (0, [])

            # The same app stores a session as soon as someone logs in.
            login = await client.post(
                "/login", form={"username": "alice", "csrf": token}, headers={"Cookie": csrf_cookie}
            )
            assert login.status_code == 303
            sessions, names = await stored(storage)
            assert sessions == 1
            assert len(names) == 3  # ROOT/xx, ROOT/xx/yy, ROOT/xx/yy/<hash>


async def test_a_visitor_gets_only_the_login_forms_cookie(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_demo(tmp_path) as (client, _):
            page = await client.get("/")
            assert page.headers.get_list("set-cookie") == [set_cookie(page, LOGIN_CSRF_COOKIE)]
            attributes = set_cookie(page, LOGIN_CSRF_COOKIE).split("; ")[1:]
            assert sorted(attributes) == ["HttpOnly", "Path=/", "SameSite=Strict", "Secure"]
            assert page.headers["cache-control"] == "no-store"
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
            # The token is kept while the page is reloaded (several tabs keep working)...
            csrf_cookie, token = await login_form(client)
            again_cookie, again_token = await login_form(client, csrf_cookie)
            assert (again_cookie, again_token) == (csrf_cookie, token)
            # ...and replaced when the browser sends one this server did not sign.
            planted = "n" * 43 + "." + "m" * 43
            fresh_cookie, fresh_token = await login_form(client, f"{LOGIN_CSRF_COOKIE}={planted}")
            assert planted not in (fresh_cookie, fresh_token)
            assert fresh_cookie == f"{LOGIN_CSRF_COOKIE}={fresh_token}"


async def test_pages_show_visitors_no_server_internals(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_demo(tmp_path) as (client, storage):
            anonymous = (await client.get("/")).text
            for internal in (str(tmp_path), storage.root, "DirectoryStorage", "sessions/"):
                assert internal not in anonymous
            assert (await client.get("/state")).json() == {"user": None}

            alice = session_cookie(await log_in(client))
            page = (await client.get("/", headers={"Cookie": alice})).text
            assert str(tmp_path) not in page
            assert alice.split("=", 1)[1].split(".")[0] not in page  # nor the session id
            assert 'id="user">alice<' in page
            assert 'id="visits">1<' in page
            assert "&quot;user&quot;: &quot;alice&quot;" in page  # the user's own data
            assert "min without a visit" in page  # and when the session ends


# ------------------------------------------------------------------------- CSRF


def tamper(token: str) -> str:
    """*token* with its last character changed."""
    return token[:-1] + ("A" if token[-1] != "A" else "B")


def foreign_token(key: bytes) -> str:
    """A well-formed login token signed with another key."""
    derived = hmac.new(key, b"trio-sessions demo: login form CSRF token", hashlib.sha256).digest()
    nonce = "x" * 43
    mac = hmac.new(derived, nonce.encode(), hashlib.sha256).digest()
    return f"{nonce}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


async def test_a_forged_login_is_refused_with_403(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_demo(tmp_path) as (client, storage):
            csrf_cookie, token = await login_form(client)
            _, other_token = await login_form(client)  # another valid token (other browser)
            assert other_token != token
            unsigned = token.split(".")[0] + ".AAAA"
            signed_elsewhere = foreign_token(b"k" * 32)
            forgeries = {
                "no token, no cookie": ({}, ""),
                "no token in the form": ({}, csrf_cookie),
                "no cookie": ({"csrf": token}, ""),
                "a wrong token": ({"csrf": tamper(token)}, csrf_cookie),
                "another browser's token": ({"csrf": other_token}, csrf_cookie),
                "cookie and form agree, unsigned": (
                    {"csrf": unsigned},
                    f"{LOGIN_CSRF_COOKIE}={unsigned}",
                ),
                "cookie and form agree, signed with another key": (
                    {"csrf": signed_elsewhere},
                    f"{LOGIN_CSRF_COOKIE}={signed_elsewhere}",
                ),
                "not ASCII": ({"csrf": "é" + token}, csrf_cookie),
            }
            for what, (fields, cookies) in forgeries.items():
                response = await client.post(
                    "/login",
                    data={"username": "mallory", **fields},
                    headers={"Cookie": cookies} if cookies else {},
                )
                assert response.status_code == 403, what
                assert "CSRF token" in response.text, what
                assert cookie(response, SESSION) is None, what
            assert await stored(storage) == (0, [])

            response = await client.post(
                "/login", data={"username": "alice", "csrf": token}, headers={"Cookie": csrf_cookie}
            )
            assert response.status_code == 303
            assert cookie(response, LOGIN_CSRF_COOKIE) == ""  # spent: the browser drops it
            assert (await state(client, session_cookie(response)))["user"] == "alice"


async def test_logout_needs_the_token_kept_in_the_session(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_demo(tmp_path) as (client, storage):
            alice = session_cookie(await log_in(client))
            page = (await client.get("/", headers={"Cookie": alice})).text
            match = re.search(
                r'action="/logout">\s*<input type="hidden" name="csrf" value="([^"]+)"', page
            )
            assert match is not None
            token = match.group(1)
            bob = session_cookie(await log_in(client, "bob"))
            bob_page = (await client.get("/", headers={"Cookie": bob})).text
            assert token not in bob_page  # a token per session
            _, login_token = await login_form(client)
            for what, fields in {
                "no token": {},
                "a wrong token": {"csrf": tamper(token)},
                "the login form's token": {"csrf": login_token},
                "not ASCII": {"csrf": token + "é"},
            }.items():
                response = await client.post("/logout", data=fields, headers={"Cookie": alice})
                assert response.status_code == 403, what
                assert cookie(response, SESSION) is None, what
                assert (await state(client, alice))["user"] == "alice", what
            # Bob's token does not log Alice out.
            bob_token = re.search(r'name="csrf" value="([^"]+)"', bob_page)
            assert bob_token is not None
            response = await client.post(
                "/logout", data={"csrf": bob_token.group(1)}, headers={"Cookie": alice}
            )
            assert response.status_code == 403

            response = await client.post("/logout", data={"csrf": token}, headers={"Cookie": alice})
            assert response.status_code == 303
            assert cookie(response, SESSION) == ""  # the browser drops the cookie
            assert await state(client, alice) == {"user": None}  # dead on the server
            assert (await stored(storage))[0] == 1  # Bob's session only
            # Logging out again (another tab) is no error and stores nothing.
            again = await client.post("/logout", data={"csrf": token}, headers={"Cookie": alice})
            assert again.status_code == 303
            assert (await stored(storage))[0] == 1


async def test_login_rotates_the_id_and_ends_a_previous_users_session(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_demo(tmp_path) as (client, storage):
            alice = session_cookie(await log_in(client))
            # Bob logs in in the same browser: Alice's session ends, Bob gets a new id.
            csrf_cookie, token = await login_form(client)
            response = await client.post(
                "/login",
                data={"username": "bob", "csrf": token},
                headers={"Cookie": f"{alice}; {csrf_cookie}"},
            )
            assert response.status_code == 303
            bob = session_cookie(response)
            assert bob != alice
            assert await state(client, alice) == {"user": None}
            assert (await state(client, bob))["user"] == "bob"
            assert (await stored(storage))[0] == 1


# ---------------------------------------------------------------------- remember me


async def test_remember_me_makes_the_session_persistent(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with serve_demo(tmp_path) as (client, _):
            before = time.time()
            remembered = await log_in(client, remember=True)
            after = time.time()
            max_age = re.search(r"; Max-Age=(\d+);", set_cookie(remembered, SESSION))
            assert max_age is not None
            assert REMEMBER_ME_SECONDS - 60 < int(max_age.group(1)) <= REMEMBER_ME_SECONDS
            seen = await state(client, session_cookie(remembered))
            until = seen["remembered_until"]
            assert isinstance(until, float)
            assert before + REMEMBER_ME_SECONDS <= until <= after + REMEMBER_ME_SECONDS
            assert seen["expires_at"] == until
            page = (await client.get("/", headers={"Cookie": session_cookie(remembered)})).text
            assert "id='remembered'" in page

            plain = await log_in(client, "bob")
            assert "Max-Age" not in set_cookie(plain, SESSION)  # a browser-session cookie
            seen = await state(client, session_cookie(plain))
            assert seen["remembered_until"] is None
            expires_at = seen["expires_at"]
            assert isinstance(expires_at, float)
            assert expires_at <= time.time() + 15 * 60  # the idle timeout


async def test_remember_me_outlives_the_timeouts_and_ends_on_time(tmp_path: Path) -> None:
    now = 1_800_000_000.0

    def clock() -> float:
        return now

    storage = DirectoryStorage(tmp_path / "sessions", wall_clock=clock)
    app = create_app(storage, secret_key=b"k" * 32, wall_clock=clock)
    with trio.fail_after(30):
        async with storage, app.test_app():
            client = app.test_client(use_cookies=False)

            async def log_in(name: str, remember: bool) -> str:
                page = await client.get("/")
                csrf = page.headers["Set-Cookie"].split(";")[0]
                form = {"username": name, "csrf": csrf.split("=", 1)[1]}
                if remember:
                    form["remember"] = "on"
                response = await client.post("/login", form=form, headers={"Cookie": csrf})
                assert response.status_code == 303
                (cookie,) = [
                    c for c in response.headers.getlist("Set-Cookie") if c.startswith(SESSION)
                ]
                return str(cookie.split(";")[0])

            async def user(cookies: str) -> object:
                response = await client.get("/state", headers={"Cookie": cookies})
                return (await response.get_json())["user"]

            alice = await log_in("alice", remember=True)
            bob = await log_in("bob", remember=False)
            assert (await user(alice), await user(bob)) == ("alice", "bob")
            now += 9 * 60 * 60  # past the idle (15 min) and absolute (8 h) timeouts
            assert await user(bob) is None
            assert await user(alice) == "alice"
            now += REMEMBER_ME_SECONDS - 9 * 60 * 60 - 1  # the last second of the 30 days
            assert await user(alice) == "alice"
            now += 2
            assert await user(alice) is None


# ------------------------------------------------------------------ the command


def run_demo(*args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "trio_sessions", "demo", *args]
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd="/")


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trio-sessions demo: error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_taken_port_is_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(run_demo("--port", str(port), "--root", str(tmp_path)))
    assert f"127.0.0.1:{port}" in line
    assert "already in use" in line
    assert "--port" in line


def test_a_missing_extra_says_what_to_install(tmp_path: Path) -> None:
    hide_quart = "import sys; sys.modules['quart_trio'] = None; "
    run = "from trio_sessions._cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", hide_quart + run, "demo", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = one_line_error(result)
    assert line.endswith(': pip install "trio-sessions[demo]"')
    assert "needs the 'demo' extra (import of quart_trio halted" in line


def test_a_port_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    result = run_demo("--port", "70000", "--root", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "usage: trio-sessions demo [-h] [--host HOST] [--port PORT] [--root ROOT]",
        "trio-sessions demo: error: argument --port: must be from 0 to 65535, got 70000",
    ]
    assert not (tmp_path / "sessions").exists()


@contextmanager
def unprivileged() -> Iterator[None]:
    """Run the block with the permissions of a user who is not root (root writes anywhere).

    As root, the effective uid becomes nobody's for the block (in this process: the
    Python of this environment may not be executable by another user).
    """
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(pwd.getpwnam("nobody").pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)


def test_an_unwritable_root_is_one_line_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    # Not in tmp_path, whose parent only its owner may enter.
    base = Path(tempfile.mkdtemp(prefix="trio-sessions-demo-"))
    try:
        base.chmod(0o755)
        parent = base / "readonly"
        parent.mkdir(mode=0o555)  # nobody may create anything in it
        root = parent / "demo"
        with unprivileged():
            status = demo_main("127.0.0.1", 0, str(root))
        assert not root.exists()
    finally:
        shutil.rmtree(base)
    captured = capsys.readouterr()
    line = one_line_error(subprocess.CompletedProcess([], status, captured.out, captured.err))
    assert line == (
        f"trio-sessions demo: error: cannot keep the demo's sessions in {root}: "
        "Permission denied; choose a directory you can write to with --root DIR"
    )


def test_a_sessions_folder_of_another_user_is_refused_in_one_line(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a folder to another user")
    sessions = tmp_path / "root" / "sessions"
    sessions.mkdir(parents=True, mode=0o700)
    os.chown(sessions, pwd.getpwnam("nobody").pw_uid, -1)
    line = one_line_error(run_demo("--port", "0", "--root", str(tmp_path / "root")))
    assert str(sessions) in line
    assert f"owned by uid {pwd.getpwnam('nobody').pw_uid}" in line
    assert f"chown 0 {sessions}" in line
    assert list(sessions.iterdir()) == []


def test_a_root_inside_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    root = tmp_path / "file" / "demo"
    line = one_line_error(run_demo("--port", "0", "--root", str(root)))
    assert str(root) in line
    assert "Not a directory" in line
    assert "--root" in line


def test_a_sessions_folder_others_may_write_is_refused_in_one_line(tmp_path: Path) -> None:
    sessions = tmp_path / "root" / "sessions"
    sessions.mkdir(parents=True)
    sessions.chmod(0o777)
    line = one_line_error(run_demo("--port", "0", "--root", str(tmp_path / "root")))
    assert str(sessions) in line
    assert "chmod 700" in line
