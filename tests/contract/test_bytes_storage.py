from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable

import pytest
import trio

from tests.dict_storage import DictStorage
from trio_sessions import BytesStorage, SessionNotFound, StorageError
from trio_sessions.testing import ManualClock, StorageConformance


class TestDictStorageConformance(StorageConformance):
    def open_storage(self, clock: ManualClock) -> DictStorage:
        return DictStorage(clock=clock)


class FlakyStorage(DictStorage):
    """Fails every operation while ``failing`` is set, like a disk that filled up."""

    failing = False

    async def load(self, session_id: str) -> bytes | None:
        if self.failing:
            raise OSError(errno.EIO, "I/O error")
        return await super().load(session_id)

    async def store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        if self.failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        await super().store(session_id, data, ttl)

    async def delete(self, session_id: str) -> None:
        if self.failing:
            raise ConnectionResetError("gone")
        await super().delete(session_id)


async def test_backend_failures_become_storage_error_and_lose_nothing() -> None:
    storage = FlakyStorage()
    await storage.write_bytes("sid", b"kept")
    storage.failing = True

    async def provider(stream: trio.abc.SendStream) -> None:
        await stream.send_all(b"new")

    async def consumer(stream: trio.abc.ReceiveStream) -> bytes:
        return bytes(await stream.receive_some())

    calls: list[tuple[Callable[[], Awaitable[object]], type[BaseException]]] = [
        (lambda: storage.write_bytes("sid", b"new"), OSError),
        (lambda: storage.write("sid", provider), OSError),
        (lambda: storage.read_bytes("sid"), OSError),
        (lambda: storage.read("sid", consumer), OSError),
        (lambda: storage.invalidate("sid"), ConnectionResetError),
    ]
    for call, cause in calls:
        with pytest.raises(StorageError) as info:
            await call()
        assert isinstance(info.value.__cause__, cause)
        assert "FlakyStorage" in str(info.value)
    storage.failing = False
    assert await storage.read_bytes("sid") == b"kept"


async def test_load_returning_a_non_bytes_value_is_a_storage_error() -> None:
    class Broken(DictStorage):
        async def load(self, session_id: str) -> bytes | None:
            await trio.lowlevel.checkpoint()
            return "text"  # type: ignore[return-value]

    with pytest.raises(StorageError, match="returned str"):
        await Broken().read_bytes("sid")


async def test_bytearray_from_load_is_returned_as_bytes() -> None:
    class Loose(DictStorage):
        async def load(self, session_id: str) -> bytes | None:
            await trio.lowlevel.checkpoint()
            return bytearray(b"abc")  # type: ignore[return-value]

    assert await Loose().read_bytes("sid") == b"abc"


async def test_close_is_called_once() -> None:
    closes = []

    class Closing(DictStorage):
        async def close(self) -> None:
            await trio.lowlevel.checkpoint()
            closes.append(1)

    async with Closing() as storage:
        await storage.write_bytes("sid", b"x")
    await storage.aclose()
    assert closes == [1]
    with pytest.raises(trio.ClosedResourceError):
        await storage.read_bytes("sid")


def test_abstract_methods_are_required() -> None:
    class Incomplete(BytesStorage):
        async def load(self, session_id: str) -> bytes | None:
            return None

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


async def test_miss_raises_session_not_found_and_it_is_a_lookup_error() -> None:
    with pytest.raises(LookupError):
        await DictStorage().read_bytes("missing")
    with pytest.raises(SessionNotFound):
        await DictStorage().read("missing", lambda stream: stream.receive_some())
