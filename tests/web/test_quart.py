"""Quart-Trio specifics: storages with background tasks live in ``app.nursery``."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx2 as httpx
import pytest
import trio
from quart import session
from quart_trio import QuartTrio

from trio_sessions import CookieOptions, MemoryStorage, SessionStorage
from trio_sessions._demo import open_server
from trio_sessions.quart import init_app

NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


class Lifecycle:
    """Records what a storage factory saw; ``closed`` only if its close was not cancelled."""

    def __init__(self) -> None:
        self.ran_in_app_nursery = False
        self.sweeps = 0
        self.sweeper_cancelled = False
        self.closed = False


def storage_factory(
    app: QuartTrio, seen: Lifecycle
) -> Callable[[], AbstractAsyncContextManager[SessionStorage]]:
    @asynccontextmanager
    async def open_storage() -> AsyncIterator[SessionStorage]:
        storage = MemoryStorage()

        async def sweeper() -> None:
            try:
                while True:  # like a cache's idle eviction: runs until the storage closes
                    seen.sweeps += 1
                    await trio.sleep(0.01)
            except trio.Cancelled:
                seen.sweeper_cancelled = True
                raise

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sweeper)
            try:
                yield storage
            finally:
                # (trio's nursery.start moves a task to its nursery once it has started)
                task = trio.lowlevel.current_task()
                seen.ran_in_app_nursery = task.parent_nursery is app.nursery
                nursery.cancel_scope.cancel()
        await storage.aclose()
        await trio.lowlevel.checkpoint()  # raises if the close itself is cancelled
        seen.closed = True

    return open_storage


async def test_background_tasks_run_in_app_nursery_and_stop_promptly() -> None:
    app = QuartTrio(__name__)
    # Quart waits this long for background tasks at shutdown; ours must not need it.
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = 600
    seen = Lifecycle()
    init_app(app, storage_factory(app, seen), cookie=CookieOptions(name="sid"))

    @app.get("/")
    async def index() -> str:  # noqa: ASYNC124 (a framework view)
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    with trio.fail_after(30):  # a hang here means shutdown waited for the 600 s
        async with open_server(app) as url:
            async with httpx.AsyncClient(base_url=url, verify=NO_TLS) as client:
                first = await client.get("/")
                cookie = first.headers["set-cookie"].split(";")[0]
                second = await client.get("/", headers={"Cookie": cookie})
                assert (first.text, second.text) == ("1", "2")
            closed_while_serving = seen.closed
    assert not closed_while_serving
    assert seen.closed
    assert seen.ran_in_app_nursery
    assert seen.sweeper_cancelled
    assert seen.sweeps > 0


async def test_quart_test_app_shuts_down_without_waiting_for_background_tasks() -> None:
    app = QuartTrio(__name__)
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = 600
    seen = Lifecycle()
    init_app(app, storage_factory(app, seen))

    @app.get("/")
    async def index() -> str:  # noqa: ASYNC124 (a framework view)
        session["n"] = session.get("n", 0) + 1
        return str(session["n"])

    with trio.fail_after(30):  # a hang here means shutdown waited for the 600 s
        async with app.test_app() as test_app:
            response = await test_app.test_client().get("/")
            assert await response.get_data(as_text=True) == "1"
    assert seen.closed


async def test_init_app_needs_quart_trio() -> None:
    from quart import Quart

    with pytest.raises(TypeError, match="QuartTrio"):
        init_app(Quart(__name__), MemoryStorage())  # type: ignore[arg-type]
    await trio.lowlevel.checkpoint()


async def test_a_storage_that_is_not_open_yet_fails_clearly() -> None:
    app = QuartTrio(__name__)
    interface = init_app(app, storage_factory(app, Lifecycle()))
    with pytest.raises(RuntimeError, match="not open yet"):
        await interface.manager.load("A" * 43)
