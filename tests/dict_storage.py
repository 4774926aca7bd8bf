"""A dict-backed `BytesStorage`: the smallest custom backend, used by several tests."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import trio

from trio_sessions import BytesStorage
from trio_sessions._base import ConditionalBase


class DictStorage(BytesStorage):
    """Keeps values in a dict, with expiry read from an injectable clock."""

    def __init__(self, *, clock: Callable[[], float] = trio.current_time, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self.data: dict[str, tuple[bytes, float]] = {}

    async def load(self, session_id: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        entry = self.data.get(session_id)
        if entry is None or entry[1] <= self.clock():
            return None
        return entry[0]

    async def store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        await trio.lowlevel.checkpoint()
        self.data[session_id] = (data, math.inf if ttl is None else self.clock() + ttl)

    async def delete(self, session_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self.data.pop(session_id, None)


class CheckThenWriteStorage(ConditionalBase):
    """Compare-and-set as a read, a pause, then a write: not atomic."""

    def __init__(self, *, clock: Callable[[], float]) -> None:
        super().__init__()
        self.clock = clock
        self.data: dict[str, tuple[bytes, float, int]] = {}
        self.versions = itertools.count(1)

    def live(self, session_id: str) -> tuple[bytes, float, int] | None:
        entry = self.data.get(session_id)
        return entry if entry is not None and entry[1] > self.clock() else None

    async def _load(self, session_id: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        entry = self.live(session_id)
        return None if entry is None else entry[0]

    async def _load_versioned(self, session_id: str) -> tuple[bytes, int] | None:
        await trio.lowlevel.checkpoint()
        entry = self.live(session_id)
        return None if entry is None else (entry[0], entry[2])

    async def _store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        await trio.lowlevel.checkpoint()
        expires = math.inf if ttl is None else self.clock() + ttl
        self.data[session_id] = (data, expires, next(self.versions))

    async def _store_if(
        self, session_id: str, data: bytes, ttl: float | None, version: int | None
    ) -> int | None:
        entry = self.live(session_id)
        if (None if entry is None else entry[2]) != version:
            await trio.lowlevel.checkpoint()
            return None
        await self._store(session_id, data, ttl)  # another task may run in between
        return self.data[session_id][2]

    async def _delete(self, session_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self.data.pop(session_id, None)

    async def _delete_if(self, session_id: str, version: int) -> bool:
        entry = self.live(session_id)
        if entry is None or entry[2] != version:
            await trio.lowlevel.checkpoint()
            return False
        await self._delete(session_id)
        return True
