"""The asyncio bridge: a byte store written for asyncio, used from trio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trio_asyncio

from trio_sessions import SessionNotFound, StorageError
from trio_sessions.asyncio import AsyncioStorage, open_asyncio_storage
from trio_sessions.testing import ManualClock, StorageConformance


class AsyncioDictStore:
    """An asyncio byte store: a dict, a lock, and expiry read from a clock.

    Every method yields to the asyncio loop in the middle of its work, so concurrent
    calls really interleave on the asyncio side.
    """

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock or ManualClock()
        self.data: dict[str, tuple[bytes, float | None]] = {}
        self.lock = asyncio.Lock()
        self.loops: set[asyncio.AbstractEventLoop] = set()

    async def load(self, session_id: str) -> bytes | None:
        self.loops.add(asyncio.get_running_loop())
        await asyncio.sleep(0)
        entry = self.data.get(session_id)
        if entry is None or (entry[1] is not None and entry[1] <= self.clock()):
            return None
        return entry[0]

    async def store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        async with self.lock:
            await asyncio.sleep(0)
            self.data[session_id] = (data, None if ttl is None else self.clock() + ttl)

    async def delete(self, session_id: str) -> None:
        async with self.lock:
            await asyncio.sleep(0)
            self.data.pop(session_id, None)


@asynccontextmanager
async def open_dict_store(clock: ManualClock, events: list[str]) -> AsyncIterator[AsyncioDictStore]:
    """An asyncio context manager around the store, as a client library would offer."""
    asyncio.get_running_loop()  # entered on the asyncio side, or this raises
    events.append("open")
    await asyncio.sleep(0)
    try:
        yield AsyncioDictStore(clock)
    finally:
        await asyncio.sleep(0)  # noqa: ASYNC102 (asyncio code)
        events.append("close")


class TestAsyncioBridgeConformance(StorageConformance):
    def open_storage(self, clock: ManualClock) -> object:
        return open_asyncio_storage(open_dict_store(clock, []), max_size=512 * 1024)


def test_the_storage_is_made_only_by_open_asyncio_storage() -> None:
    with pytest.raises(TypeError, match=r"no public constructor.*open_asyncio_storage"):
        AsyncioStorage(None, AsyncioDictStore(), None)


async def test_values_round_trip_through_a_plain_store() -> None:
    with trio.fail_after(10):
        store = AsyncioDictStore()
        async with open_asyncio_storage(store) as storage:
            assert isinstance(storage, AsyncioStorage)
            await storage.write_bytes("a", b"one")
            assert await storage.read_bytes("a") == b"one"
            await storage.invalidate("a")
            with pytest.raises(SessionNotFound):
                await storage.read_bytes("a")
            (loop,) = store.loops
        assert loop.is_closed()  # the loop the storage opened ended with it


async def test_joins_the_enclosing_trio_asyncio_loop() -> None:
    with trio.fail_after(10):
        store = AsyncioDictStore()
        async with trio_asyncio.open_loop() as loop:
            async with open_asyncio_storage(store) as storage:
                await storage.write_bytes("a", b"x")
                assert await storage.read_bytes("a") == b"x"
            assert store.loops == {loop}
            assert not loop.is_closed()  # not ours to close


async def test_a_context_manager_store_is_opened_and_closed_on_asyncio() -> None:
    with trio.fail_after(10):
        events: list[str] = []
        async with open_asyncio_storage(open_dict_store(ManualClock(), events)) as storage:
            assert events == ["open"]
            await storage.write_bytes("a", b"x")
            await storage.aclose()
            assert events == ["open", "close"]
            with pytest.raises(trio.ClosedResourceError):
                await storage.read_bytes("a")
        assert events == ["open", "close"]


async def test_a_cancelled_block_still_closes_the_store() -> None:
    with trio.fail_after(10):
        events: list[str] = []
        with trio.CancelScope() as scope:
            async with open_asyncio_storage(open_dict_store(ManualClock(), events)) as storage:
                await storage.write_bytes("a", b"x")
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert events == ["open", "close"]


class SlowStore(AsyncioDictStore):
    """``load`` of the id "slow" waits forever on the asyncio side, and tidies up slowly."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[str] = []

    async def load(self, session_id: str) -> bytes | None:
        if session_id != "slow":
            return await super().load(session_id)
        self.log.append("started")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.log.append("cancelled")
            # Unwinding takes asyncio turns of its own.
            await asyncio.sleep(0)  # noqa: ASYNC102 (asyncio code)
            await asyncio.sleep(0)  # noqa: ASYNC102
            self.log.append("unwound")
            raise
        raise AssertionError("not reached")


async def test_cancelling_trio_cancels_the_asyncio_call_and_waits_for_it() -> None:
    with trio.fail_after(10):
        store = SlowStore()
        async with open_asyncio_storage(store) as storage:
            await storage.write_bytes("a", b"value a")
            await storage.write_bytes("b", b"value b")
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def slow_read() -> None:
                    with scope:
                        await storage.read_bytes("slow")
                    assert scope.cancelled_caught
                    assert store.log == ["started", "cancelled", "unwound"]

                nursery.start_soon(slow_read)
                await trio.testing.wait_all_tasks_blocked()
                assert store.log == ["started"]
                scope.cancel()
            assert store.log == ["started", "cancelled", "unwound"]
            assert await storage.read_bytes("b") == b"value b"
            assert await storage.read_bytes("a") == b"value a"


class FailingStore(AsyncioDictStore):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    async def load(self, session_id: str) -> bytes | None:
        await asyncio.sleep(0)
        raise self.error


@pytest.mark.parametrize(
    "error",
    [ConnectionResetError("peer went away"), asyncio.CancelledError(), TimeoutError()],
    ids=["ConnectionResetError", "CancelledError", "TimeoutError"],
)
async def test_asyncio_exceptions_become_storage_errors_with_the_cause(
    error: BaseException,
) -> None:
    with trio.fail_after(10):
        async with open_asyncio_storage(FailingStore(error)) as storage:
            with pytest.raises(StorageError) as info:
                await storage.read_bytes("a")
            assert info.value.__cause__ is error
            await storage.write_bytes("a", b"still works")


class WrongTypeStore(AsyncioDictStore):
    async def load(self, session_id: str) -> bytes | None:
        return "text"  # type: ignore[return-value]


async def test_a_load_of_the_wrong_type_is_a_storage_error() -> None:
    with trio.fail_after(10):
        async with open_asyncio_storage(WrongTypeStore()) as storage:
            with pytest.raises(StorageError) as info:
                await storage.read_bytes("a")
            assert isinstance(info.value.__cause__, TypeError)


async def test_a_store_that_fails_to_open_raises_storage_error() -> None:
    class Unreachable:
        async def __aenter__(self) -> AsyncioDictStore:
            await asyncio.sleep(0)
            raise ConnectionRefusedError("no server")

        async def __aexit__(self, *exc_info: object) -> None:
            raise AssertionError("exited without having been entered")  # pragma: no cover

    with trio.fail_after(10):
        with pytest.raises(StorageError) as info:
            async with open_asyncio_storage(Unreachable()):
                raise AssertionError("not reached")  # pragma: no cover
        assert isinstance(info.value.__cause__, ConnectionRefusedError)


async def test_an_object_without_the_methods_is_refused() -> None:
    with trio.fail_after(10), pytest.raises(TypeError, match="load"):
        async with open_asyncio_storage(object()):  # type: ignore[arg-type]
            raise AssertionError("not reached")  # pragma: no cover


class BodyFailed(Exception):
    pass


async def test_an_error_in_the_block_comes_out_as_itself() -> None:
    error = BodyFailed()

    async def body() -> None:
        async with open_asyncio_storage(AsyncioDictStore()) as storage:
            await storage.write_bytes("a", b"x")
            raise error

    with trio.fail_after(10), pytest.raises(BodyFailed) as info:
        await body()
    assert info.value is error


def test_the_public_names() -> None:
    import trio_sessions.asyncio

    for name in trio_sessions.asyncio.__all__:
        assert getattr(trio_sessions.asyncio, name).__module__.startswith("trio_sessions"), name
