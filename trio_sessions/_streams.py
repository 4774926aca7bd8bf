"""The streams handed to providers and consumers, shared by every backend.

A provider writes into a `WriteStream`. The stream buffers the first *chunk_size* bytes
in the provider's task; a value that fits there reaches the backend in one call (the fast
path). A larger value *spills*: the stream asks its owner for a bounded memory channel
whose receiving end a supervised sink task drains into the backend, chunk by chunk, so
memory stays O(chunk) and a fast provider waits for a slow backend (backpressure).

A consumer reads from a `ReadStream`: the first chunk the backend produced, then, for a
value that did not fit one chunk, whatever a supervised source task sends through a
bounded memory channel.

Both streams keep the `trio.abc` contracts: concurrent use raises
`trio.BusyResourceError`, use after `aclose` raises `trio.ClosedResourceError`, and every
call is a checkpoint, with one exception that trio itself makes: a `ReadStream` over a
value held in memory reports its end the first time with a cancellation check only, as
`trio.MemoryReceiveChannel.receive` does at the end of a closed channel (a later call
there is a full checkpoint again). The read that the stream belongs to offers the schedule
point, so a consumer that reads a value to its end costs one schedule point, as
``read_bytes`` does. The owner of a stream learns from ``checked`` and ``yielded``
whether a call checked for cancellation and offered a schedule point, and makes up for
what no call did.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Awaitable, Callable
from types import CoroutineType
from typing import TypeVar, cast, final

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint, checkpoint_if_cancelled

from ._errors import SessionTooLarge

__all__ = ["ReadStream", "WriteStream", "as_bytes", "awaitable"]

T = TypeVar("T")

_EXAMPLES = {
    "provider": (
        "async def provider(stream): await stream.send_all(data)",
        "to store bytes you already have, call write_bytes()",
    ),
    "consumer": (
        "async def consumer(stream): return await stream.receive_some()",
        "to get the whole value, call read_bytes()",
    ),
}


def awaitable(pending: Awaitable[T], callback: object, role: str) -> Awaitable[T]:
    """Return what a provider or consumer returned, if it can be awaited.

    A plain function returns ``None`` (or a value) instead: that raises a `TypeError`
    saying so, before anything is stored, not Python's "can't be used in 'await'
    expression".
    """
    returned: object = pending  # what the callback returned: not always an awaitable
    if type(returned) is CoroutineType or inspect.isawaitable(returned):
        return cast("Awaitable[T]", returned)
    example, alternative = _EXAMPLES[role]
    name = getattr(callback, "__qualname__", None) or type(callback).__name__
    got = "None" if returned is None else f"a {type(returned).__name__} object"
    raise TypeError(
        f"the {role} must be an async function ({example}), but {name}() returned "
        f"{got}, not an awaitable; {alternative}"
    )


def as_bytes(data: object) -> bytes:
    """Return the bytes of what a provider passed to ``send_all`` (a copy if mutable)."""
    if type(data) is bytes:
        return data
    if isinstance(data, str):
        raise TypeError(
            "send_all() takes bytes, not str: encode the text first, e.g. "
            "await stream.send_all(text.encode())"
        )
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"send_all() takes bytes, bytearray or memoryview, not {type(data).__name__}"
        ) from None
    with view:
        return view.tobytes()


@final
class WriteStream(trio.abc.SendStream):
    """The `trio.abc.SendStream` a provider writes the session's value into."""

    __slots__ = (
        "_busy",
        "_channel",
        "_chunk_size",
        "_closed",
        "_max_size",
        "_parts",
        "_size",
        "_spill",
        "checked",
        "too_large",
        "yielded",
    )

    def __init__(
        self,
        max_size: int,
        *,
        chunk_size: int | None = None,
        spill: Callable[[], trio.MemorySendChannel[bytes]] | None = None,
        channel: trio.MemorySendChannel[bytes] | None = None,
    ) -> None:
        self._max_size = max_size
        # Without a channel (given, or made on demand by *spill*), the value is buffered.
        if chunk_size is not None and spill is None and channel is None:
            chunk_size = None
        self._chunk_size = chunk_size
        self._spill = spill
        self._channel = channel
        self._parts: list[bytes] = []
        self._size = 0
        self._closed = False
        self._busy = False
        #: Set when the provider sent more than *max_size* bytes (even if it swallowed
        #: the `SessionTooLarge` it got).
        self.too_large = False
        #: Set once a call on this stream checked for cancellation.
        self.checked = False
        #: Set once a call on this stream offered a schedule point.
        self.yielded = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._busy:
            raise trio.BusyResourceError("another task is already sending on this stream")
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if type(data) is not bytes:
            data = as_bytes(data)
        self._busy = True
        try:
            self.checked = self.yielded = True
            size = self._size + len(data)
            if size > self._max_size:
                self.too_large = True
                await checkpoint()
                raise SessionTooLarge(self._max_size)
            if self._channel is None and (self._chunk_size is None or size <= self._chunk_size):
                # Buffered: nothing is sent unless this call returns.
                await checkpoint_if_cancelled()
                self._size = size
                self._parts.append(data)
                await cancel_shielded_checkpoint()
                return
            self._size = size
            await self._send_chunks(data)
        finally:
            self._busy = False

    async def _send_chunks(  # noqa: ASYNC910 (each chunk's send, or the final checkpoint)
        self, data: bytes
    ) -> None:
        assert self._chunk_size is not None
        if self._channel is None:
            assert self._spill is not None
            self._channel = self._spill()
            self._parts.append(data)
            view = memoryview(b"".join(self._parts))
            self._parts.clear()
        else:
            view = memoryview(data)
        step = self._chunk_size
        for start in range(0, len(view), step):
            try:
                await self._channel.send(bytes(view[start : start + step]))
            except trio.BrokenResourceError:
                raise trio.BrokenResourceError("the storage stopped receiving") from None
            except trio.ClosedResourceError:
                raise trio.ClosedResourceError("the stream was closed") from None
        if not view:
            await checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        self.checked = self.yielded = True
        await checkpoint()

    async def aclose(self) -> None:
        self._closed = True
        self.checked = self.yielded = True
        if self._channel is not None:
            await self._channel.aclose()
        else:
            await checkpoint()

    def finish(self) -> bytes | None:
        """End the value after the provider returned.

        Returns the whole value if it never spilled, else ``None`` (the sink task then
        sees the end of its channel). Raises `SessionTooLarge` if the limit was crossed.
        """
        self._closed = True
        if self.too_large:
            raise SessionTooLarge(self._max_size)
        if self._channel is not None:
            self._channel.close()
            return None
        parts = self._parts
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)


@final
class ReadStream(trio.abc.ReceiveStream):
    """The `trio.abc.ReceiveStream` a consumer reads the session's value from."""

    __slots__ = (
        "_busy",
        "_channel",
        "_closed",
        "_data",
        "_ended",
        "_offset",
        "checked",
        "yielded",
    )

    def __init__(
        self, data: bytes, channel: trio.MemoryReceiveChannel[bytes] | None = None
    ) -> None:
        self._data = data
        self._offset = 0
        self._ended = False
        self._channel = channel
        self._closed = False
        self._busy = False
        #: Set once a call on this stream checked for cancellation.
        self.checked = False
        #: Set once a call on this stream offered a schedule point.
        self.yielded = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        if self._busy:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        data, start = self._data, self._offset
        if start == len(data) and self._channel is None and not self._ended:
            # The end of the value, reported the first time: a cancellation point only,
            # as `trio.MemoryReceiveChannel.receive` at the end of a closed channel. The
            # read this stream belongs to offers the schedule point.
            self.checked = True
            await checkpoint_if_cancelled()
            self._ended = True
            return b""
        self.checked = self.yielded = self._busy = True
        try:
            if start < len(data) or self._channel is None:
                # Served from what is here: nothing is taken unless this call returns.
                await checkpoint_if_cancelled()
                if max_bytes is None or start + max_bytes >= len(data):
                    self._offset = len(data)
                    if start:
                        data = data[start:]
                else:
                    self._offset = start + max_bytes
                    data = data[start : self._offset]
                await cancel_shielded_checkpoint()
                return data
            try:
                data = await self._channel.receive()
            except trio.EndOfChannel:
                # A closed channel raises without a schedule point: offer one here, as
                # trio's streams do at their end (check_one_way_stream asks for it).
                await cancel_shielded_checkpoint()
                data = b""
                self._channel = None
                self._ended = True
            self._data = data
            if max_bytes is None or max_bytes >= len(data):
                self._offset = len(data)
                return data  # noqa: ASYNC910
            self._offset = max_bytes
            return data[:max_bytes]  # noqa: ASYNC910
        finally:
            self._busy = False

    async def aclose(self) -> None:
        self._closed = True
        self.checked = self.yielded = True
        if self._channel is not None:
            await self._channel.aclose()
        else:
            await checkpoint()
