"""`MemoryStorage`: sessions in a dict, for development and single-process services."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import final

import trio

from .._abc import DEFAULT_MAX_SIZE
from .._base import ConditionalBase

__all__ = ["MemoryStorage", "MemoryStorageStatistics"]

_NEVER = math.inf


@dataclass(frozen=True, slots=True)
class MemoryStorageStatistics:
    """What `MemoryStorage.statistics` reports."""

    #: Sessions held, including expired ones not yet removed.
    entries: int
    #: Payload bytes held.
    bytes: int
    #: Sessions removed because they expired.
    expirations: int
    #: Sessions removed to respect ``max_entries``.
    evictions: int


@final
class MemoryStorage(ConditionalBase):
    """Sessions in this process's memory.

    Args:
      max_size: the largest payload accepted, in bytes.
      max_entries: if set, the least recently used sessions are evicted beyond this count.
      clock: returns the current time in seconds; defaults to `trio.current_time`, so a
        test's ``autojump_clock`` (or a `trio.testing.MockClock`) drives expiry.

    Expired sessions are found through a heap ordered by expiry time, so removing them
    never scans every session: writes remove what has expired, reads never return it, and
    `purge` removes it on demand.
    """

    def __init__(
        self,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        max_entries: int | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        super().__init__(max_size=max_size)
        if max_entries is not None and max_entries < 1:
            raise ValueError(f"max_entries must be a positive int or None (got {max_entries!r})")
        self._max_entries = max_entries
        self._clock = clock
        # id -> (payload, expires_at, version); insertion order is recency order when LRU
        # is on. Versions come from one counter, so a version is never reused.
        self._entries: dict[str, tuple[bytes, float, int]] = {}
        self._versions = itertools.count(1)
        self._expiry: list[tuple[float, str]] = []
        self._bytes = 0
        self._expirations = 0
        self._evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def statistics(self) -> MemoryStorageStatistics:
        """Counters since the storage was made, and what it holds now."""
        return MemoryStorageStatistics(
            entries=len(self._entries),
            bytes=self._bytes,
            expirations=self._expirations,
            evictions=self._evictions,
        )

    async def purge(self) -> int:
        """Remove every expired session now; return how many were removed."""
        await trio.lowlevel.checkpoint()
        before = self._expirations
        self._expire(self._clock())
        return self._expirations - before

    async def _load(self, session_id: str) -> bytes | None:  # noqa: ASYNC910
        entry = self._live(session_id)
        return None if entry is None else entry[0]

    async def _load_versioned(self, session_id: str) -> tuple[bytes, int] | None:  # noqa: ASYNC910
        entry = self._live(session_id)
        return None if entry is None else (entry[0], entry[2])

    async def _store(self, session_id: str, data: bytes, ttl: float | None) -> None:  # noqa: ASYNC910
        self._put(session_id, data, ttl)

    async def _store_if(  # noqa: ASYNC910
        self, session_id: str, data: bytes, ttl: float | None, version: int | None
    ) -> int | None:
        entry = self._live(session_id)
        if (None if entry is None else entry[2]) != version:
            return None
        return self._put(session_id, data, ttl)

    async def _delete(self, session_id: str) -> None:  # noqa: ASYNC910
        self._remove(session_id)

    async def _delete_if(self, session_id: str, version: int) -> bool:  # noqa: ASYNC910
        entry = self._live(session_id)
        if entry is None or entry[2] != version:
            return False
        self._remove(session_id)
        return True

    def _live(self, session_id: str) -> tuple[bytes, float, int] | None:
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if entry[1] is not _NEVER and entry[1] <= self._clock():
            self._remove(session_id)
            self._expirations += 1
            return None
        if self._max_entries is not None:
            # Most recently used goes last.
            del self._entries[session_id]
            self._entries[session_id] = entry
        return entry

    def _put(self, session_id: str, data: bytes, ttl: float | None) -> int:
        entries = self._entries
        old = entries.pop(session_id, None)
        if old is not None:
            self._bytes -= len(old[0])
        version = next(self._versions)
        if ttl is None:
            entries[session_id] = (data, _NEVER, version)
        else:
            now = self._clock()
            expires_at = now + ttl
            entries[session_id] = (data, expires_at, version)
            heapq.heappush(self._expiry, (expires_at, session_id))
            self._expire(now)
        self._bytes += len(data)
        if self._max_entries is not None:
            while len(entries) > self._max_entries:
                self._remove(next(iter(entries)))
                self._evictions += 1
        return version

    async def _close(self) -> None:  # noqa: ASYNC910
        self._entries.clear()
        self._expiry.clear()
        self._bytes = 0

    def _remove(self, session_id: str) -> None:
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self._bytes -= len(entry[0])

    def _expire(self, now: float) -> None:
        heap, entries = self._expiry, self._entries
        while heap and heap[0][0] <= now:
            _, session_id = heapq.heappop(heap)
            entry = entries.get(session_id)
            if entry is not None and entry[1] <= now:
                self._remove(session_id)
                self._expirations += 1
        # Rewrites leave stale heap items behind; rebuild before they outnumber sessions.
        if len(heap) > 2 * len(entries) + 64:
            self._expiry = [(e[1], sid) for sid, e in entries.items() if e[1] is not _NEVER]
            heapq.heapify(self._expiry)
