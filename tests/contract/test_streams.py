"""The stream adapters handed to providers and consumers keep the trio.abc contracts."""

from __future__ import annotations

import array
from collections.abc import Generator
from typing import Any

import pytest
import trio
import trio.testing

from tests.dict_storage import DictStorage
from tests.schedule_points import counting
from trio_sessions import MemoryStorage, SessionNotFound, SessionStorage, SessionTooLarge
from trio_sessions._streams import ReadStream, WriteStream

from .test_base_streaming import ChunkedDictStorage


async def channel_pair() -> tuple[WriteStream, ReadStream]:
    await trio.lowlevel.checkpoint()  # check_one_way_stream wants an async maker
    send, receive = trio.open_memory_channel[bytes](1)
    return WriteStream(2**40, chunk_size=1024, channel=send), ReadStream(b"", receive)


async def test_channel_streams_pass_check_one_way_stream() -> None:
    with trio.fail_after(30):
        await trio.testing.check_one_way_stream(channel_pair, None)


async def test_buffered_value_and_size_limit() -> None:
    stream = WriteStream(10)
    await stream.send_all(b"12345")
    await stream.send_all(bytearray(b"678"))
    with pytest.raises(SessionTooLarge):
        await stream.send_all(b"abc")
    assert stream.too_large
    with pytest.raises(SessionTooLarge):
        stream.finish()


async def test_spill_moves_to_the_channel_in_chunks() -> None:
    send, receive = trio.open_memory_channel[bytes](100)
    spills = []

    def spill() -> trio.MemorySendChannel[bytes]:
        spills.append(1)
        return send

    stream = WriteStream(10_000, chunk_size=4, spill=spill)
    await stream.send_all(b"abc")  # fits one chunk: stays buffered
    assert spills == []
    await stream.send_all(b"defghij")
    assert spills == [1]
    assert stream.finish() is None  # the channel now carries the value
    chunks = [chunk async for chunk in receive]
    assert chunks == [b"abcd", b"efgh", b"ij"]


async def test_bytes_read_stream_serves_slices_then_eof() -> None:
    stream = ReadStream(b"hello world")
    assert await stream.receive_some(5) == b"hello"
    assert await stream.receive_some() == b" world"
    assert await stream.receive_some() == b""
    assert await stream.receive_some(3) == b""
    with pytest.raises(TypeError):
        await stream.receive_some(1.5)  # type: ignore[arg-type]


async def test_every_stream_call_is_a_checkpoint() -> None:
    write = WriteStream(100)
    read = ReadStream(b"abc")
    for call in (
        lambda: write.send_all(b"x"),
        lambda: write.wait_send_all_might_not_block(),
        lambda: read.receive_some(1),
        lambda: read.receive_some(),
        write.aclose,
        read.aclose,
    ):
        with trio.testing.assert_checkpoints():
            await call()


async def test_the_end_of_a_value_in_memory_is_a_cancellation_point_then_a_checkpoint() -> None:
    """As `trio.MemoryReceiveChannel.receive` at the end of a closed channel, the first
    report of the end checks for cancellation without a schedule point (the read that
    owns the stream offers one); every later call is a full checkpoint again, so a loop
    that keeps reading after the end still lets other tasks run."""
    for value in (b"abc", b""):
        stream = ReadStream(value)
        if value:
            with trio.testing.assert_checkpoints():
                assert await stream.receive_some() == value
        with trio.CancelScope() as scope:
            scope.cancel()
            await stream.receive_some()  # the end: still a cancellation point
        assert scope.cancelled_caught
        with counting() as counts:
            assert await stream.receive_some() == b""
        assert counts.schedule_points == 0
        assert stream.yielded == bool(value)  # the owner offers one if no call did
        for _ in range(2):
            with trio.testing.assert_checkpoints():
                assert await stream.receive_some() == b""


async def test_the_end_of_a_channel_stream_is_a_checkpoint() -> None:
    send, receive = trio.open_memory_channel[bytes](1)
    stream = ReadStream(b"", receive)
    await send.send(b"x")
    send.close()
    assert await stream.receive_some() == b"x"
    for _ in range(2):
        with trio.testing.assert_checkpoints():
            assert await stream.receive_some() == b""


# ------------------------------------------------- what providers and consumers get wrong


async def test_sending_text_says_to_encode_it() -> None:
    stream = WriteStream(100)
    with pytest.raises(TypeError, match=r"bytes, not str: encode the text first.*\.encode\(\)"):
        await stream.send_all("user=alice")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes, bytearray or memoryview, not int"):
        await stream.send_all(5)  # type: ignore[arg-type]
    await stream.send_all(b"user=alice")  # the stream is still usable
    assert stream.finish() == b"user=alice"


async def test_mutable_buffers_are_copied_when_sent() -> None:
    stream = WriteStream(100)
    buffer = bytearray(b"abc")
    await stream.send_all(buffer)
    buffer[:] = b"xyz"
    await stream.send_all(memoryview(array.array("H", [1, 2])))
    assert stream.finish() == b"abc" + array.array("H", [1, 2]).tobytes()


def _storages() -> list[SessionStorage]:
    return [MemoryStorage(), DictStorage(), ChunkedDictStorage()]


@pytest.mark.parametrize("storage", _storages(), ids=lambda s: type(s).__name__)
async def test_a_sync_provider_is_refused_before_anything_is_stored(
    storage: SessionStorage,
) -> None:
    await storage.write_bytes("sid", b"before")

    def provider(stream: trio.abc.SendStream) -> None:
        pass

    def returns_bytes(stream: trio.abc.SendStream) -> bytes:
        return b"after"

    for sync in (provider, returns_bytes):
        with pytest.raises(TypeError, match=r"provider must be an async function") as info:
            await storage.write("sid", sync)  # type: ignore[arg-type]
        assert sync.__name__ in str(info.value)
        assert "async def provider(stream)" in str(info.value)
    with pytest.raises(TypeError):
        await storage.write("new", provider)  # type: ignore[arg-type]
    assert await storage.read_bytes("sid") == b"before"
    with pytest.raises(SessionNotFound):
        await storage.read_bytes("new")


@pytest.mark.parametrize("storage", _storages(), ids=lambda s: type(s).__name__)
async def test_a_provider_sending_text_stores_nothing(storage: SessionStorage) -> None:
    await storage.write_bytes("sid", b"before")

    async def provider(stream: trio.abc.SendStream) -> None:
        await stream.send_all(b"user=")
        await stream.send_all("alice")  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="encode the text"):
        await storage.write("sid", provider)
    assert await storage.read_bytes("sid") == b"before"

    async def fixed(stream: trio.abc.SendStream) -> None:
        await stream.send_all(b"user=")
        try:
            await stream.send_all("alice")  # type: ignore[arg-type]
        except TypeError:
            await stream.send_all("alice".encode())  # noqa: UP012 (what the message says)

    await storage.write("sid", fixed)
    assert await storage.read_bytes("sid") == b"user=alice"


@pytest.mark.parametrize("storage", _storages(), ids=lambda s: type(s).__name__)
async def test_a_sync_consumer_is_refused(storage: SessionStorage) -> None:
    await storage.write_bytes("sid", b"x" * 3000)  # above the chunked storage's chunk

    def consumer(stream: trio.abc.ReceiveStream) -> bytes:
        return b""

    with pytest.raises(TypeError, match=r"consumer must be an async function.*read_bytes\(\)"):
        await storage.read("sid", consumer)  # type: ignore[arg-type]
    assert await storage.read_bytes("sid") == b"x" * 3000


async def test_an_awaitable_that_is_not_a_coroutine_is_accepted() -> None:
    storage = MemoryStorage()
    await storage.write("sid", lambda stream: stream.send_all(b"direct"))

    class Reader:
        def __init__(self, stream: trio.abc.ReceiveStream) -> None:
            self.stream = stream

        def __await__(self) -> Generator[Any, None, bytes]:
            data = yield from self.stream.receive_some().__await__()
            return bytes(data)

    assert await storage.read("sid", Reader) == b"direct"
