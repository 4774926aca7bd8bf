"""Storages that break the contract on purpose, for the reports of ``trio-sessions check``.

Each is a `MODULE:FACTORY` target (``tests.broken_storages:Lossy``) taking the clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from trio_sessions import BytesStorage


class Lossy(BytesStorage):
    """Forgets every third write: the model check fails on an assertion."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__()
        self.clock = clock
        self.data: dict[str, tuple[bytes, float]] = {}
        self.writes = 0

    async def load(self, session_id: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        entry = self.data.get(session_id)
        if entry is None or entry[1] <= self.clock():
            return None
        return entry[0]

    async def store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        await trio.lowlevel.checkpoint()
        self.writes += 1
        if self.writes % 3:
            self.data[session_id] = (data, math.inf if ttl is None else self.clock() + ttl)

    async def delete(self, session_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self.data.pop(session_id, None)


class Torn(Lossy):
    """Stores the first half of a value, then (after a schedule point) the whole of it:
    a concurrent reader sees half a value."""

    async def store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        expires = math.inf if ttl is None else self.clock() + ttl
        self.data[session_id] = (data[: len(data) // 2], expires)
        await trio.lowlevel.checkpoint()
        self.data[session_id] = (data, expires)


class FailsLargeReads(Lossy):
    """Stores everything, but loading a value above 50,000 bytes fails: the error reaches
    the check inside an exception group (from the harness's nursery)."""

    async def store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        await trio.lowlevel.checkpoint()
        self.data[session_id] = (data, math.inf if ttl is None else self.clock() + ttl)

    async def load(self, session_id: str) -> bytes | None:
        value = await super().load(session_id)
        if value is not None and len(value) > 50_000:
            raise RuntimeError("the disk is on fire")
        return value


class NoSuper(BytesStorage):
    """Its ``__init__`` forgets ``super().__init__()``."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.data: dict[str, bytes] = {}

    async def load(self, session_id: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        return self.data.get(session_id)

    async def store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        await trio.lowlevel.checkpoint()
        self.data[session_id] = data

    async def delete(self, session_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self.data.pop(session_id, None)


def not_a_storage(clock: Callable[[], float]) -> dict[str, bytes]:
    """Returns a dict."""
    return {}


NOT_CALLABLE = 42
