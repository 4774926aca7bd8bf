"""A Quart-Trio app that counts each visitor's visits in a server-side session.

Serve it with ``hypercorn --worker-class trio quickstart_quart:app``; run this file to
make two requests through Quart's test client instead.
"""

import secrets

import trio
from quart_trio import QuartTrio

from trio_sessions import MemoryStorage
from trio_sessions.quart import current_session, init_app

app = QuartTrio(__name__)
init_app(app, MemoryStorage(), secret_key=secrets.token_bytes(32))


@app.get("/")
async def index() -> str:
    session = current_session()
    session["visits"] = session.get("visits", 0) + 1
    return f"visit number {session['visits']}\n"


# Two requests from one browser, without a server:
async def main() -> None:
    async with app.test_app() as test_app:
        client = test_app.test_client()
        for _ in range(2):
            response = await client.get("/")
            print(await response.get_data(as_text=True), end="")
            print("  Set-Cookie:", response.headers.get("Set-Cookie"))


if __name__ == "__main__":
    trio.run(main)
