"""The session layer without a web framework: cookie value in, Set-Cookie header out."""

import secrets

import trio

from trio_sessions import CookieOptions, MemoryStorage, SessionManager


async def main() -> None:
    async with MemoryStorage() as storage:
        manager = SessionManager(
            storage,
            idle_timeout=15 * 60,  # OWASP: 15-30 minutes for low-risk applications
            absolute_timeout=4 * 60 * 60,
            secret_key=[secrets.token_bytes(32)],  # newest first; all verify
            cookie=CookieOptions(name="__Host-sid", samesite="strict"),
        )

        # First request: no cookie. A new session; nothing is stored until it holds data.
        session = await manager.load_from_header(None)
        session["user"] = "alice"
        set_cookie = await manager.save(session)
        print("Set-Cookie:", set_cookie)

        # Next request: the browser sends the cookie back.
        assert set_cookie is not None
        cookie = set_cookie.split(";")[0]
        session = await manager.load_from_header(cookie)
        print("user:", session["user"], "| Set-Cookie:", await manager.save(session))

        # A forged or unknown cookie is never adopted: a fresh, empty session.
        forged = await manager.load_from_header("__Host-sid=" + "A" * 43)
        print("forged cookie: new session?", forged.new, "| data:", dict(forged))

        # Logout: the id dies on the server and the browser is told to drop the cookie.
        session.invalidate()
        print("Set-Cookie:", await manager.save(session))


if __name__ == "__main__":
    trio.run(main)
