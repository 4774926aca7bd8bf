"""A dict-backed `BytesStorage`: the smallest custom backend, used by several tests."""

from __future__ import annotations

import math
from collections.abc import Callable

import trio

from trio_sessions import BytesStorage


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
