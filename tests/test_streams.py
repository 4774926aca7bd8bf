"""The stream adapters handed to providers and consumers keep the trio.abc contracts."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_sessions import SessionTooLarge
from trio_sessions._streams import ReadStream, WriteStream


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
