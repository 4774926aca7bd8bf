"""`MemoryStorage`: sessions in a dict, for development and single-process services.

Every public method is written out here rather than inherited: the base class's versions
call a hook coroutine per operation, and a dict lookup is cheaper than that call. The
checks and checkpoints are the contract's, in the order the base class makes them: the
id (a valid id pays for the pattern once: stored ids and recently checked ids are known
valid), then ``checkpoint_if_cancelled``, then the operation, then a
``cancel_shielded_checkpoint`` (as `trio.MemorySendChannel.send` does), so a cancelled
call did nothing.

``write`` and ``read`` run the provider or consumer in the caller's task, on streams over
bytes: no task, nursery or channel. A write or read is one checkpoint, not one per step:
the callback's calls on its stream check for cancellation (the storage checks after the
callback if it made none, before it stores anything or counts the read as a use of the
session), and its calls that move data offer the schedule point (the storage offers one
at the end if none did). So a streaming write or read costs the scheduler what
``write_bytes`` or ``read_bytes`` costs.
"""

from __future__ import annotations

import heapq
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import CoroutineType
from typing import TypeVar, final

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

from .._abc import DEFAULT_MAX_SIZE, Consumer, Provider, PurgeResult, Versioned
from .._base import ConditionalBase, _check_version, check_ttl
from .._errors import SessionNotFound, WriteConflict
from .._ids import check_session_id, checked_ids
from .._streams import ReadStream, WriteStream, awaitable
from .._validate import check_count, check_size

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "MemoryStorage",
    "MemoryStorageStatistics",
]

T = TypeVar("T")

#: Default bound on the number of sessions a `MemoryStorage` holds.
DEFAULT_MAX_ENTRIES = 100_000
#: Default bound on the payload bytes a `MemoryStorage` holds (64 MiB).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

_NEVER = math.inf
_UNBOUNDED = sys.maxsize
# (payload, expires_at, version); the dict's order is recency order (least recent first).
_Entry = tuple[bytes, float, int]


@dataclass(frozen=True, slots=True)
class MemoryStorageStatistics:
    """What `MemoryStorage.statistics` reports."""

    #: Sessions held, including expired ones not yet removed.
    entries: int
    #: Payload bytes held.
    bytes: int
    #: Sessions removed because they expired.
    expirations: int
    #: Sessions removed (least recently used first) to respect ``max_entries`` or
    #: ``max_bytes``.
    evictions: int


@final
class MemoryStorage(ConditionalBase):
    """Sessions in this process's memory, bounded by default.

    Args:
      max_size: the largest payload accepted, in bytes.
      max_entries: the most sessions held (default 100,000), or ``None`` for no bound.
      max_bytes: the most payload bytes held (default 64 MiB), or ``None`` for no bound.
      clock: returns the current time in seconds; defaults to `trio.current_time`, so a
        test's ``autojump_clock`` (or a `trio.testing.MockClock`) drives expiry.

    A write that takes the storage over a bound evicts the least recently used sessions
    (read or written longest ago) until it is 1/64 under each bound, so that evictions
    come in batches; `statistics` counts them.

    Expiry never scans every session: sessions with a ttl are filed by the second they
    expire in, so writes remove whole seconds that have passed, reads never return an
    expired session, and `purge` removes them on demand.
    """

    def __init__(
        self,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        max_entries: int | None = DEFAULT_MAX_ENTRIES,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        super().__init__(max_size=max_size)
        max_entries = check_count("max_entries", max_entries, allow_none=True)
        max_bytes = check_size("max_bytes", max_bytes, allow_none=True)
        if max_bytes is not None and max_bytes < self._max_size:
            raise ValueError(
                f"max_bytes ({max_bytes}) must be at least max_size ({self._max_size}), "
                "the largest session: lower max_size too, or raise max_bytes"
            )
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds (got {clock!r})")
        self._max_entries = _UNBOUNDED if max_entries is None else max_entries
        self._max_bytes = _UNBOUNDED if max_bytes is None else max_bytes
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        # The id last moved to the end of the dict: when it is there, it stays there.
        self._last: str | None = None
        # Versions come from one counter, which moves on only when a version would repeat
        # for an id: when a session that holds the current version is rewritten or
        # removed. So each id's versions only grow (even across a delete and a new write),
        # and the sessions written in between share one int object instead of one each.
        self._version = 1
        # Expiry: ids by the second their session expires in, and a heap of those seconds.
        # A rewrite or a delete leaves the old filing behind ("stale"); the buckets are
        # rebuilt before stale filings outnumber half the sessions.
        self._buckets: dict[int, list[str]] = {}
        self._seconds: list[int] = []
        self._sweep_at = _NEVER
        self._stale = 0
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

    async def purge(self) -> PurgeResult:
        """Remove every expired session now; say how many were removed."""
        await trio.lowlevel.checkpoint()
        before = self._expirations
        now = self._clock()
        self._sweep(now)
        # What is left to check: the second under way (sessions filed there may expire
        # before it ends).
        for second in [second for second in self._seconds if second <= now + 1]:
            keep = []
            for session_id in self._buckets[second]:
                entry = self._entries.get(session_id)
                if entry is None or entry[1] is _NEVER or int(entry[1]) != second:
                    self._stale -= 1
                elif entry[1] <= now:
                    self._expire(session_id, entry)
                else:
                    keep.append(session_id)
            self._buckets[second][:] = keep
        return PurgeResult(expired=self._expirations - before)

    # ------------------------------------------------------------ public API

    async def write_bytes(self, session_id: str, data: bytes, *, ttl: float | None = None) -> None:
        if self._closed or type(session_id) is not str or session_id not in checked_ids:
            session_id = self._checked(session_id)
        if ttl is not None:
            check_ttl(ttl)
        if type(data) is not bytes or len(data) > self._max_size:
            data = self._check_data(data)
        await checkpoint_if_cancelled()
        self._put(session_id, data, ttl)
        await cancel_shielded_checkpoint()

    async def read_bytes(self, session_id: str) -> bytes:
        if self._closed or type(session_id) is not str or session_id not in checked_ids:
            session_id = self._checked(session_id)
        await checkpoint_if_cancelled()
        entries = self._entries
        entry = entries.get(session_id)
        if entry is not None:  # (what _live does, written out on the hottest path)
            if entry[1] is not _NEVER and entry[1] <= self._clock():
                self._drop(session_id, entry)
                self._expirations += 1
                entry = None
            elif session_id != self._last:
                del entries[session_id]
                entries[session_id] = entry
                self._last = session_id
        await cancel_shielded_checkpoint()
        if entry is None:
            raise SessionNotFound()
        return entry[0]

    async def invalidate(self, session_id: str) -> None:
        if self._closed or type(session_id) is not str or session_id not in checked_ids:
            session_id = self._checked(session_id)
        await checkpoint_if_cancelled()
        entry = self._entries.get(session_id)
        if entry is not None:
            self._drop(session_id, entry)
        await cancel_shielded_checkpoint()

    async def write(self, session_id: str, provider: Provider, *, ttl: float | None = None) -> None:
        if self._closed or type(session_id) is not str or session_id not in checked_ids:
            session_id = self._checked(session_id)
        if ttl is not None:
            check_ttl(ttl)
        stream = WriteStream(self._max_size)
        pending = provider(stream)
        if type(pending) is not CoroutineType:
            pending = awaitable(pending, provider, "provider")
        await pending
        data = stream.finish()
        assert data is not None
        if not stream.checked:
            await checkpoint_if_cancelled()
        if self._closed:  # while the provider ran
            raise trio.ClosedResourceError("MemoryStorage is closed")
        self._put(session_id, data, ttl)
        if not stream.yielded:
            await cancel_shielded_checkpoint()

    async def read(self, session_id: str, consumer: Consumer[T]) -> T:
        if self._closed or type(session_id) is not str or session_id not in checked_ids:
            session_id = self._checked(session_id)
        entries = self._entries
        entry = entries.get(session_id)
        if entry is None or (entry[1] is not _NEVER and entry[1] <= self._clock()):
            await checkpoint_if_cancelled()
            self._live(session_id)  # removes it if it expired
            await cancel_shielded_checkpoint()
            raise SessionNotFound()
        stream = ReadStream(entry[0])
        pending = consumer(stream)
        if type(pending) is not CoroutineType:
            pending = awaitable(pending, consumer, "consumer")
        result = await pending
        if not stream.checked:
            await checkpoint_if_cancelled()
        # A read that returns is a use of the session (if no write replaced it meanwhile).
        if session_id != self._last and entries.get(session_id) is entry:
            del entries[session_id]
            entries[session_id] = entry
            self._last = session_id
        if not stream.yielded:
            await cancel_shielded_checkpoint()
        return result

    async def read_versioned(self, session_id: str) -> Versioned:
        if self._closed or type(session_id) is not str or session_id not in checked_ids:
            session_id = self._checked(session_id)
        await checkpoint_if_cancelled()
        entry = self._live(session_id)
        await cancel_shielded_checkpoint()
        if entry is None:
            raise SessionNotFound()
        return Versioned(entry[0], entry[2])

    async def write_bytes_if(
        self, session_id: str, data: bytes, *, version: int | None, ttl: float | None = None
    ) -> int:
        if self._closed or type(session_id) is not str or session_id not in checked_ids:
            session_id = self._checked(session_id)
        if ttl is not None:
            check_ttl(ttl)
        if version is not None and (type(version) is not int or version < 1):
            _check_version(version, allow_none=True)
        if type(data) is not bytes or len(data) > self._max_size:
            data = self._check_data(data)
        await checkpoint_if_cancelled()
        entry = self._live(session_id)
        if (None if entry is None else entry[2]) == version:
            new_version: int | None = self._put(session_id, data, ttl)
        else:
            new_version = None
        await cancel_shielded_checkpoint()
        if new_version is None:
            raise WriteConflict()
        return new_version

    async def invalidate_if(self, session_id: str, *, version: int) -> None:
        if self._closed or type(session_id) is not str or session_id not in checked_ids:
            session_id = self._checked(session_id)
        if type(version) is not int or version < 1:
            _check_version(version, allow_none=False)
        await checkpoint_if_cancelled()
        entry = self._live(session_id)
        deleted = entry is not None and entry[2] == version
        if deleted:
            self._drop(session_id, entry)  # type: ignore[arg-type]
        await cancel_shielded_checkpoint()
        if not deleted:
            raise WriteConflict()

    # ------------------------------------------------------------------ hooks
    # The base class's hooks, for completeness: the public methods above do not call them.
    # Each ends with a schedule point, as the base class asks of every hook.

    async def _load(self, session_id: str) -> bytes | None:
        entry = self._live(session_id)
        await cancel_shielded_checkpoint()
        return None if entry is None else entry[0]

    async def _load_versioned(self, session_id: str) -> tuple[bytes, int] | None:
        entry = self._live(session_id)
        await cancel_shielded_checkpoint()
        return None if entry is None else (entry[0], entry[2])

    async def _store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        self._put(session_id, data, ttl)
        await cancel_shielded_checkpoint()

    async def _store_if(
        self, session_id: str, data: bytes, ttl: float | None, version: int | None
    ) -> int | None:
        entry = self._live(session_id)
        match = (None if entry is None else entry[2]) == version
        new_version = self._put(session_id, data, ttl) if match else None
        await cancel_shielded_checkpoint()
        return new_version

    async def _delete(self, session_id: str) -> None:
        entry = self._entries.get(session_id)
        if entry is not None:
            self._drop(session_id, entry)
        await cancel_shielded_checkpoint()

    async def _delete_if(self, session_id: str, version: int) -> bool:
        entry = self._live(session_id)
        if match := entry is not None and entry[2] == version:
            self._drop(session_id, entry)
        await cancel_shielded_checkpoint()
        return match

    async def _close(self) -> None:  # noqa: ASYNC910
        self._entries.clear()
        self._buckets.clear()
        self._seconds.clear()
        self._sweep_at = _NEVER
        self._stale = 0
        self._bytes = 0
        self._last = None

    # -------------------------------------------------------------- internals

    def _checked(self, session_id: str) -> str:
        """The storage is open and *session_id* is valid: return it as a plain `str`."""
        if self._closed:
            raise trio.ClosedResourceError("MemoryStorage is closed")
        if type(session_id) is str and (
            session_id in checked_ids or session_id in self._entries  # stored ids are valid
        ):
            return session_id
        return check_session_id(session_id)

    def _live(self, session_id: str) -> _Entry | None:
        """The session's entry, made the most recently used; ``None`` if missing or expired."""
        entries = self._entries
        entry = entries.get(session_id)
        if entry is None:
            return None
        if entry[1] is not _NEVER and entry[1] <= self._clock():
            self._drop(session_id, entry)
            self._expirations += 1
            return None
        if session_id != self._last:  # the most recently used goes last
            del entries[session_id]
            entries[session_id] = entry
            self._last = session_id
        return entry

    def _put(self, session_id: str, data: bytes, ttl: float | None) -> int:
        entries = self._entries
        if session_id == self._last:  # replaced where it is: already the last
            old = entries.get(session_id)
        else:
            old = entries.pop(session_id, None)
            self._last = session_id
        version = self._version
        if old is not None:
            self._bytes -= len(old[0])
            if old[2] == version:
                version = self._version = version + 1
        if ttl is None:
            entries[session_id] = (data, _NEVER, version)
            if old is not None and old[1] is not _NEVER:
                self._went_stale()
        else:
            now = self._clock()
            expires_at = now + ttl
            entries[session_id] = (data, expires_at, version)
            second = int(expires_at)
            if old is None or old[1] is _NEVER or int(old[1]) != second:
                self._file(session_id, second)
                if old is not None and old[1] is not _NEVER:
                    self._went_stale()
            if now >= self._sweep_at:
                self._sweep(now)
        self._bytes += len(data)
        if len(entries) > self._max_entries or self._bytes > self._max_bytes:
            self._evict()
        return version

    def _file(self, session_id: str, second: int) -> None:
        bucket = self._buckets.get(second)
        if bucket is None:
            self._buckets[second] = [session_id]
            heapq.heappush(self._seconds, second)
            if second + 1 < self._sweep_at:
                self._sweep_at = second + 1
        else:
            bucket.append(session_id)

    def _drop(self, session_id: str, entry: _Entry) -> None:
        del self._entries[session_id]
        self._bytes -= len(entry[0])
        if entry[2] == self._version:
            self._version += 1
        if entry[1] is not _NEVER:
            self._went_stale()

    def _went_stale(self) -> None:
        """A session's expiry filing no longer counts; refile before they pile up."""
        self._stale += 1
        if self._stale > (len(self._entries) >> 1) + 64:
            self._refile()

    def _expire(self, session_id: str, entry: _Entry) -> None:
        """Remove an expired session found through its filing (which goes with it)."""
        del self._entries[session_id]
        self._bytes -= len(entry[0])
        self._expirations += 1
        if entry[2] == self._version:
            self._version += 1

    def _sweep(self, now: float) -> None:
        """Remove the sessions of every second that has passed entirely by *now*."""
        entries, buckets, seconds = self._entries, self._buckets, self._seconds
        while seconds and seconds[0] + 1 <= now:
            second = heapq.heappop(seconds)
            for session_id in buckets.pop(second):
                entry = entries.get(session_id)
                if entry is not None and entry[1] <= now:
                    self._expire(session_id, entry)
                else:
                    self._stale -= 1  # filed again later, or already gone
        self._sweep_at = seconds[0] + 1 if seconds else _NEVER

    def _refile(self) -> None:
        """Rebuild the expiry buckets from the sessions alone (no stale filings)."""
        buckets: dict[int, list[str]] = {}
        for session_id, entry in self._entries.items():
            if entry[1] is not _NEVER:
                buckets.setdefault(int(entry[1]), []).append(session_id)
        self._buckets = buckets
        self._seconds = list(buckets)
        heapq.heapify(self._seconds)
        self._sweep_at = self._seconds[0] + 1 if self._seconds else _NEVER
        self._stale = 0

    def _evict(self) -> None:
        """Evict the least recently used sessions until 1/64 under each bound.

        Batches matter: the dict's head fills with the holes of earlier evictions, and
        one pass over it per batch, not per session, keeps eviction O(1) amortized.
        """
        entries = self._entries
        keep_entries = self._max_entries - (self._max_entries >> 6)
        keep_bytes = self._max_bytes - (self._max_bytes >> 6)
        victims = []
        count, size = len(entries), self._bytes
        for session_id, entry in entries.items():
            if count == 1 or (count <= keep_entries and size <= keep_bytes):
                break  # (never the session just written, the last one)
            victims.append((session_id, entry))
            count -= 1
            size -= len(entry[0])
        for session_id, entry in victims:
            self._drop(session_id, entry)
        self._evictions += len(victims)
