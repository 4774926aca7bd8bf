"""The storage contract, shown on MemoryStorage: every backend behaves the same way."""

import trio
import trio.testing

from trio_sessions import (
    InvalidSessionId,
    MemoryStorage,
    SessionNotFound,
    SessionTooLarge,
    new_session_id,
)


# -- streams
async def send_report(stream: trio.abc.SendStream) -> None:
    for line in (b"line 1\n", b"line 2\n", b"line 3\n"):
        await stream.send_all(line)


async def first_line(stream: trio.abc.ReceiveStream) -> bytes:
    # A consumer may stop reading early; it returns whatever it likes.
    buffer = b""
    while b"\n" not in buffer:
        chunk = await stream.receive_some()
        if not chunk:
            break
        buffer += chunk
    return buffer.partition(b"\n")[0]


async def streams(storage: MemoryStorage, sid: str) -> None:
    await storage.write(sid, send_report, ttl=600)
    assert await storage.read(sid, first_line) == b"line 1"
    assert await storage.read_bytes(sid) == b"line 1\nline 2\nline 3\n"


# -- errors
class PaymentDeclined(Exception):
    pass


async def errors(storage: MemoryStorage, sid: str) -> None:
    try:
        await storage.read_bytes(new_session_id())
    except SessionNotFound:
        print("never written: SessionNotFound")

    try:
        await storage.read_bytes("../../etc/passwd")
    except InvalidSessionId:  # raised before any I/O
        print("not an id: InvalidSessionId")

    try:
        await storage.write_bytes(sid, bytes(storage.max_size + 1))
    except SessionTooLarge:  # nothing was stored
        print("too large: SessionTooLarge")

    async def failing_provider(stream: trio.abc.SendStream) -> None:
        await stream.send_all(b"half a sess")
        raise PaymentDeclined

    try:
        await storage.write(sid, failing_provider)
    except PaymentDeclined:  # your exception, as itself; the old value is intact
        assert await storage.read(sid, first_line) == b"line 1"
        print("provider failed: the previous value is intact")

    await storage.invalidate(sid)
    await storage.invalidate(sid)  # idempotent


# -- expiry and cancellation
async def expiry_and_cancellation(storage: MemoryStorage) -> None:
    sid = new_session_id()
    await storage.write_bytes(sid, b"short-lived", ttl=30)
    await trio.sleep(31)
    try:
        await storage.read_bytes(sid)
    except SessionNotFound:
        print("after its ttl: SessionNotFound")

    async def slow_provider(stream: trio.abc.SendStream) -> None:
        await stream.send_all(b"partial")
        await trio.sleep(10)
        await stream.send_all(b" value")

    with trio.move_on_after(1):  # a cancelled write did not happen, or happened whole
        await storage.write(sid, slow_provider)
    try:
        await storage.read_bytes(sid)
    except SessionNotFound:
        print("cancelled write: nothing stored")


async def main() -> None:
    async with MemoryStorage(max_size=64 * 1024) as storage:
        sid = new_session_id()
        await streams(storage, sid)
        await errors(storage, sid)
        await expiry_and_cancellation(storage)


if __name__ == "__main__":
    # A mock clock that jumps ahead whenever every task sleeps: the 31 s pass at once.
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
