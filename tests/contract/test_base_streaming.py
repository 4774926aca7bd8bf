"""The shared streaming path of StorageBase, on a minimal streaming backend."""

from __future__ import annotations

import math

import pytest
import trio

from trio_sessions._base import ChunkSink, ChunkSource, StorageBase
from trio_sessions.testing import ManualClock, StorageConformance


class _Sink:
    def __init__(self, storage: ChunkedDictStorage, session_id: str, ttl: float | None) -> None:
        self.storage, self.session_id, self.ttl = storage, session_id, ttl
        self.parts: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.storage.chunks_written += 1
        self.parts.append(chunk)

    async def commit(self) -> None:
        await self.storage._store(self.session_id, b"".join(self.parts), self.ttl)

    async def abort(self) -> None:
        self.storage.aborts += 1


class _Source:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self) -> bytes:
        await trio.lowlevel.checkpoint()
        chunk, self.data = self.data[:1024], self.data[1024:]
        return chunk

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class ChunkedDictStorage(StorageBase):
    """Streams values above 1 KiB through sinks and sources of 1 KiB chunks."""

    _chunk_size = 1024

    def __init__(self, clock: ManualClock | None = None) -> None:
        super().__init__()
        self.clock = clock or ManualClock()
        self.data: dict[str, tuple[bytes, float]] = {}
        self.chunks_written = 0
        self.aborts = 0

    async def _load(self, session_id: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        entry = self.data.get(session_id)
        return None if entry is None or entry[1] <= self.clock() else entry[0]

    async def _store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        await trio.lowlevel.checkpoint()
        self.data[session_id] = (data, math.inf if ttl is None else self.clock() + ttl)

    async def _delete(self, session_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self.data.pop(session_id, None)

    async def _open_sink(self, session_id: str, ttl: float | None) -> ChunkSink:
        await trio.lowlevel.checkpoint()
        return _Sink(self, session_id, ttl)

    async def _open_source(self, session_id: str) -> tuple[bytes, ChunkSource | None]:
        data = await self._load(session_id)
        if data is None:
            from trio_sessions import SessionNotFound

            raise SessionNotFound()
        if len(data) <= 1024:
            return data, None
        return data[:1024], _Source(data[1024:])


class TestChunkedStorageConformance(StorageConformance):
    max_examples = 30

    def open_storage(self, clock: ManualClock) -> ChunkedDictStorage:
        return ChunkedDictStorage(clock)


class Failed(Exception):
    pass


async def test_provider_error_keeps_its_own_context_through_the_nursery() -> None:
    storage = ChunkedDictStorage()

    async def provider(stream: trio.abc.SendStream) -> None:
        await stream.send_all(b"0" * 2000)  # spilled: a sink task runs
        try:
            raise KeyError("original")
        except KeyError:
            raise Failed() from None

    with pytest.raises(Failed) as info:
        await storage.write("sid", provider)
    assert info.value.__suppress_context__
    assert isinstance(info.value.__context__, KeyError)
    assert storage.aborts == 1
    assert "sid" not in storage.data


async def test_large_values_stream_in_chunks_and_small_ones_do_not() -> None:
    storage = ChunkedDictStorage()

    async def provider(stream: trio.abc.SendStream) -> None:
        await stream.send_all(b"a" * 1000)
        await stream.send_all(b"b" * 1500)

    await storage.write("big", provider)
    assert storage.chunks_written == 3
    await storage.write_bytes("small", b"c" * 1024)
    assert storage.chunks_written == 3

    async def consumer(stream: trio.abc.ReceiveStream) -> list[bytes]:
        return [bytes(chunk) async for chunk in stream]

    chunks = await storage.read("big", consumer)
    assert [len(chunk) for chunk in chunks] == [1024, 1024, 452]
    assert b"".join(chunks) == b"a" * 1000 + b"b" * 1500
