"""What a storage's own tests use beside the checks: importing it loads no hypothesis."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import trio

from .._abc import SessionStorage

__all__ = ["ManualClock", "StorageFactory", "read_all"]


class ManualClock:
    """A clock that only moves when told to.

    The harness passes one to your storage factory; a storage that takes a ``clock``
    argument (a callable returning seconds, like `MemoryStorage` or `DirectoryStorage`)
    should use it, so that expiry is checked without sleeping.
    """

    def __init__(self, start: float = 1_000_000_000.0) -> None:
        self._now = start

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds


#: What the harness needs: a callable that takes a `ManualClock` and returns an async
#: context manager yielding a fresh storage (a `SessionStorage` is one already).
StorageFactory = Callable[[ManualClock], AbstractAsyncContextManager[SessionStorage]]


async def read_all(stream: trio.abc.ReceiveStream, max_bytes: int | None = None) -> bytes:
    """Read *stream* to its end (*max_bytes* per receive) and return what it held."""
    parts = []
    while chunk := await stream.receive_some(max_bytes):
        parts.append(bytes(chunk))
    return b"".join(parts)
