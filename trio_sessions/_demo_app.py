"""The demo's web application: a login/logout flow that is safe to copy.

``docs/demo.rst`` walks through this module. What it shows:

* **No session until login.** Anonymous pages only read the session; nothing is stored for
  a visitor who does not log in, so a flood of anonymous requests stores nothing.
* **Login** rotates the id (`Session.regenerate`) and, with "remember me" ticked, makes the
  session persistent (`Session.set_lifetime`): its cookie gets a ``Max-Age`` and outlives
  a browser restart.
* **Logout** deletes the session on the server (`Session.invalidate`).
* **CSRF protection on both forms.** The login form has no session to keep a token in, so
  it uses a *signed double-submit cookie*; the logout form uses a *synchronizer token*
  kept in the session.
* **Nothing internal on the page**: no storage paths, no ids; a logged-in user sees their
  own session data and when it expires.

Requires the ``demo`` extra (Quart-Trio).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from quart import Blueprint, Response, current_app, redirect, request
from quart.typing import ResponseReturnValue
from quart_trio import QuartTrio

from ._abc import SessionStorage
from .quart import current_session, init_app
from .sessions._cookies import CookieOptions
from .sessions._manager import SessionManager
from .sessions._session import Session

__all__ = [
    "DEMO_ABSOLUTE_TIMEOUT",
    "DEMO_COOKIE",
    "DEMO_IDLE_TIMEOUT",
    "LOGIN_CSRF_COOKIE",
    "REMEMBER_ME_SECONDS",
    "create_app",
    "login_page",
    "login_token_valid",
    "new_login_token",
    "same_token",
    "signed_login_token",
]

DEMO_COOKIE = CookieOptions(name="__Host-session")
DEMO_IDLE_TIMEOUT = 15 * 60
DEMO_ABSOLUTE_TIMEOUT = 8 * 60 * 60
REMEMBER_ME_SECONDS = 30 * 24 * 60 * 60
#: The login form's CSRF cookie. ``__Host-``: only this host, over HTTPS, can set it.
LOGIN_CSRF_COOKIE = "__Host-login-csrf"

demo = Blueprint("demo", __name__)


# -------------------------------------------------------------------- the app


def create_app(
    storage: SessionStorage,
    *,
    secret_key: bytes,
    wall_clock: Callable[[], float] = time.time,
    **options: Any,
) -> QuartTrio:
    """The demo application, with its sessions in *storage*.

    *secret_key* (at least 32 random bytes) signs the session cookie and the login form's
    CSRF token; *options* go to `SessionManager`.
    """
    app = QuartTrio("trio_sessions.demo")
    app.secret_key = secret_key
    app.config["DEMO_CLOCK"] = wall_clock  # (the account page shows times)
    options.setdefault("idle_timeout", DEMO_IDLE_TIMEOUT)
    options.setdefault("absolute_timeout", DEMO_ABSOLUTE_TIMEOUT)
    options.setdefault("max_lifetime", REMEMBER_ME_SECONDS)
    options.setdefault("cookie", DEMO_COOKIE)
    interface = init_app(app, storage, secret_key=secret_key, wall_clock=wall_clock, **options)
    app.extensions["trio_sessions_manager"] = interface.manager  # (and the timeouts)
    app.register_blueprint(demo)
    return app


# --------------------------------------------------------------------------- CSRF
# The login form has no session to keep a token in: it uses a signed double-submit
# cookie. The page puts one token in a hidden field and in a cookie; a login POST must
# carry both, equal, and signed with the app's key. The logout form uses a synchronizer
# token kept in the session (see `login` and `logout`).


def _login_key() -> bytes:
    """A key for the login form's tokens alone, derived from the app's secret key."""
    secret = current_app.secret_key
    raw = secret.encode() if isinstance(secret, str) else secret
    if not raw:
        raise RuntimeError("the app needs a secret_key to sign the login form's tokens")
    return hmac.new(raw, b"trio-sessions demo: login form CSRF token", hashlib.sha256).digest()


def _mac(nonce: str) -> str:
    digest = hmac.new(_login_key(), nonce.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_login_token() -> str:
    """A fresh token for the login form: a random nonce and its HMAC."""
    nonce = secrets.token_urlsafe(32)
    return f"{nonce}.{_mac(nonce)}"


def same_token(expected: str, given: str) -> bool:
    """Whether *given* is the token *expected* (never an empty one), in constant time."""
    if not expected or not expected.isascii() or not given.isascii():
        return False  # (compare_digest takes ASCII strings only)
    return hmac.compare_digest(expected, given)


def signed_login_token(token: str) -> bool:
    """Whether *token* is a login token this server issued: its HMAC checks out."""
    nonce, _, mac = token.partition(".")
    return bool(nonce) and same_token(_mac(nonce), mac)


def login_token_valid(cookie: str, field: str) -> bool:
    """Whether a login POST carries the same signed token in its cookie and its form.

    Another site can make a browser POST the login form, cookies included, but it can
    neither read this site's cookie nor set one for it (``__Host-``, ``HttpOnly``), so it
    cannot put the matching value in the form. The HMAC makes a token that this server
    did not issue worthless, should a cookie be planted anyway.
    """
    return signed_login_token(cookie) and same_token(cookie, field)


def login_page(error: str = "", status: int = 200) -> Response:
    """The login form, with its token in a hidden field and in a cookie."""
    token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not signed_login_token(token):
        token = new_login_token()  # (a browser keeps its token: several tabs work)
    response = _html(_login_form(token, error), status)
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, secure=True, httponly=True, samesite="Strict", path="/"
    )
    return response


# ------------------------------------------------------------------ the views


@demo.get("/")
async def index() -> ResponseReturnValue:
    """The home page: the login form for visitors, the account for a logged-in user."""
    session = current_session()
    await session.load()
    if "user" not in session:
        return login_page()  # the session was only read: nothing is stored for visitors
    session["visits"] = session.get("visits", 0) + 1
    return _account_page(session)


@demo.post("/login")
async def login() -> ResponseReturnValue:
    """Log in: check the CSRF token, then a new id and, if asked, "remember me"."""
    form = await request.form
    if not login_token_valid(request.cookies.get(LOGIN_CSRF_COOKIE, ""), form.get("csrf", "")):
        return _forbidden()
    name = form.get("username", "").strip()
    if not 0 < len(name) <= 40:
        return login_page("Enter a name of 1 to 40 characters.", status=400)
    # Check the user's password here; this demo lets any name in.
    session = current_session()
    await session.load()
    session.clear()  # whatever this browser's session held (another user's) ends here
    session.regenerate()  # a new id: one planted or seen before the login is worthless
    session["user"] = name
    session["csrf"] = secrets.token_urlsafe(32)  # the logout form's token
    if form.get("remember") == "on":
        session.set_lifetime(REMEMBER_ME_SECONDS)  # a cookie with Max-Age: survives restarts
    response = redirect("/", 303)
    response.delete_cookie(LOGIN_CSRF_COOKIE, secure=True, httponly=True, samesite="Strict")
    return response


@demo.post("/logout")
async def logout() -> ResponseReturnValue:
    """Log out: check the session's CSRF token, then delete the session on the server."""
    form = await request.form  # (read it first: an unread body can stall the connection)
    session = current_session()
    await session.load()
    if "user" not in session:
        return redirect("/", 303)  # expired, or logged out in another tab: nothing to end
    if not same_token(session.get("csrf", ""), form.get("csrf", "")):
        return _forbidden()
    session.invalidate()
    return redirect("/", 303)


@demo.get("/state")
async def state() -> dict[str, Any]:
    """The session as JSON, for scripts: reads it, never stores anything for a visitor."""
    session = current_session()
    await session.load()
    if "user" not in session:
        return {"user": None}
    return {
        "user": session["user"],
        "visits": session.get("visits", 0),
        "remembered_until": session.persistent_until,
        "expires_at": _manager().expires_at(session),
    }


# --------------------------------------------------------------------- pages

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; }
table { border-collapse: collapse; } td { padding: .2rem .8rem .2rem 0; vertical-align: top; }
code { background: #f3f3f3; padding: 0 .2rem; } .note { color: #555; font-size: .9rem; }
.error { color: #a00; } form p { margin: .5rem 0; }
"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
_CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _manager() -> SessionManager:
    manager: SessionManager = current_app.extensions["trio_sessions_manager"]
    return manager


def _html(body: str, status: int = 200) -> Response:
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trio-sessions demo</title>
<style>{_STYLE}</style></head><body>
<h1>trio-sessions demo</h1>
{body}
</body></html>
"""
    # Pages carry tokens and personal data: never cached, never framed.
    headers = {
        "Cache-Control": "no-store",
        "Content-Security-Policy": _CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }
    return Response(page, status, headers, content_type="text/html; charset=utf-8")


def _forbidden() -> Response:
    return _html(
        "<p class='error' id='error'>Forbidden: this form's CSRF token is missing or wrong, "
        "so it may not have come from this site's page.</p>"
        "<p><a href='/'>Reload the page</a> and try again.</p>",
        403,
    )


def _login_form(token: str, error: str) -> str:
    days = REMEMBER_ME_SECONDS // 86400
    message = f"<p class='error' id='error'>{html.escape(error)}</p>" if error else ""
    return f"""<p id="user">Not logged in.</p>
<p>Nothing is stored on the server for you: a session begins when you log in.</p>
{message}
<form method="post" action="/login">
<input type="hidden" name="csrf" value="{html.escape(token)}">
<p><input name="username" id="username" placeholder="your name" maxlength="40" required></p>
<p><label><input type="checkbox" name="remember" id="remember"> Remember me for
{days} days</label></p>
<p><button id="login">Log in</button></p>
</form>
<p class="note">Any name logs in: this demo has no passwords. The form carries a token
that must match the <code>{LOGIN_CSRF_COOKIE}</code> cookie this page sets, so another
site cannot log you in to an account of its choosing.</p>"""


def _stamp(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


def _when(clock: Callable[[], float], moment: float) -> str:
    stamp = _stamp(moment)
    minutes, seconds = divmod(max(0, int(moment - clock())), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    left = f"{days} d {hours} h" if days else f"{hours} h {minutes:02d} min {seconds:02d} s"
    return f"{stamp} (in {left})"


def _account_page(session: Session) -> Response:
    manager = _manager()
    clock: Callable[[], float] = current_app.config["DEMO_CLOCK"]
    remembered = session.persistent_until
    if remembered is not None:
        expiry = (
            f"<span id='remembered'>remembered</span> until {_when(clock, remembered)}: "
            "the cookie has a Max-Age, so the session outlives a browser restart"
        )
        max_age: float | None = remembered - clock()
    else:
        idle_end = clock() + manager.idle_timeout  # this visit slides the idle timeout
        expiry = (
            "when you close the browser, or at the first of:<br>"
            f"{manager.idle_timeout / 60:g} min without a visit: {_when(clock, idle_end)}"
        )
        if manager.absolute_timeout is not None:
            absolute_end = session.created_at + manager.absolute_timeout
            expiry += (
                f"<br>{manager.absolute_timeout / 3600:g} h after login: "
                f"{_when(clock, absolute_end)}"
            )
        max_age = None
    data = {key: "(hidden)" if key == "csrf" else value for key, value in session.items()}
    cookie = manager.cookie.set_cookie("…", max_age)
    return _html(
        f"""<p>Logged in as <b id="user">{html.escape(session["user"])}</b>.</p>
<p>Visits to this page since you logged in: <b id="visits">{session["visits"]}</b>.</p>
<form method="post" action="/logout">
<input type="hidden" name="csrf" value="{html.escape(session["csrf"])}">
<button id="logout">Log out</button>
</form>
<h2>Your session</h2>
<table>
<tr><td>data on the server</td><td><code id="data">{html.escape(json.dumps(data))}</code></td></tr>
<tr><td>logged in at</td><td>{_stamp(session.created_at)}</td></tr>
<tr><td>ends</td><td id="expiry">{expiry}</td></tr>
<tr><td>your cookie</td><td><code id="cookie">{html.escape(cookie)}</code></td></tr>
</table>
<p class="note">Only a signed, random id travels in the cookie; the data stays on the
server. Logging in gave you a new id; logging out deletes the session on the server.
The cookie is <code>Secure</code>: browsers accept that over plain http only on
<code>127.0.0.1</code> and <code>localhost</code>, which they treat as secure.</p>"""
    )
