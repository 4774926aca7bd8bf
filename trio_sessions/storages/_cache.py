"""`CacheStorage`: a read-through memory cache in front of any storage, with no stale reads.

The cache wraps its delegate's public operations: each of its operations makes at most
one call to the delegate, in the caller's task, so a value is read from the delegate
once and a callback's exception passes through as itself. How it stays correct:

* **Single flight.** The first reader to miss an id reads the delegate and records the
  read as the id's *flight*; every concurrent miss for that id waits for it. A waiter
  that is cancelled stops waiting. If the reader that flies is cancelled, a waiter reads
  instead. A failed read is handed to its waiters and never cached. A streaming `read`
  that finds a value too large to cache streams it to its own consumer and lets its
  waiters read for themselves.
* **No stale reads.** A write or invalidate goes to the delegate first; only when the
  delegate is done does the cache take the new value (or drop the entry). When a write
  or invalidate ends, the id's flights are detached, which acts as a per-id generation:
  later readers start a fresh read, and a detached one still answers the readers that
  joined it (they overlapped the write) but never installs its result. A delegate read
  that completes while a write of its id is in progress installs nothing, drops the
  entry and detaches the id's flights: the delegate may already hold the new value, and
  once a reader has seen it no later reader may see an older one. Overlapping writes of
  one id (whose order at the delegate the cache cannot see) leave nothing cached.
* **Versions.** Over a delegate with conditional writes, an entry may hold the version
  of its value, known from a `read_versioned` or a `write_bytes_if` made through the
  cache; `read_versioned` is served from such entries only, and conditional writes and
  deletes always go to the delegate, which alone decides them.
* **Expiry.** A value written through the cache with a ttl leaves the cache when the ttl
  ends. A value loaded from the delegate has an unknown ttl: it is served for at most
  ``idle_timeout`` seconds after it was loaded, and never past the expiry of a value
  written through the cache that the delegate may still hold. For that, when an entry
  leaves the cache, or a write's outcome is unknown (it was cancelled, or the delegate
  failed), the cache remembers when the values the delegate may hold expire (their
  *doubts*: earliest and latest expiry), for at most ``max_entries`` ids.
* **Failed writes.** A write whose provider raised stored nothing (the contract): the
  cache keeps its entry. Any other failure may or may not have stored: the cache drops
  the entry and keeps its doubts.
* **Memory.** Entries unused for ``idle_timeout`` seconds are evicted by `CacheStorage.run`;
  beyond ``max_entries`` or ``max_bytes`` the least recently used go first. Values above
  64 KiB are not cached: they stream between the caller and the delegate.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, final

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint

from .._abc import ConditionalStorage, Consumer, Provider, SessionStorage, Versioned, conditional
from .._base import check_ttl
from .._errors import SessionNotFound, SessionTooLarge, StorageError, WriteConflict
from .._ids import check_session_id
from .._running import opener
from .._streams import ReadStream

__all__ = ["CacheStorage", "CacheStorageStatistics", "open_cache_storage"]

T = TypeVar("T")

# How a write or invalidate ended, for the cache: the delegate holds its result; or what
# it held before (the provider failed); or one of the two.
_STORED, _DELETED, _UNCHANGED, _UNKNOWN = range(4)

#: Values up to this size are cached; larger ones stream through.
_CHUNK = 64 * 1024
_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CacheStorageStatistics:
    """What `CacheStorage.statistics` reports."""

    #: Reads answered from the cache.
    hits: int
    #: Reads that were not (they waited for a delegate read, their own or a shared one).
    misses: int
    #: Reads made from the delegate.
    loads: int
    #: Entries removed because they were idle, expired, or to respect the size limits.
    evictions: int
    #: Entries held.
    entries: int
    #: Payload bytes held.
    bytes: int


class _Entry:
    __slots__ = ("bounds", "data", "expires_at", "used", "versioned")

    def __init__(
        self,
        data: bytes,
        versioned: Versioned | None,
        expires_at: float,
        used: float,
        bounds: tuple[float, float] | None,
    ) -> None:
        self.data = data
        self.versioned = versioned  # the value with its version, when the cache knows it
        self.expires_at = expires_at  # served until then
        self.used = used
        self.bounds = bounds  # the value expires at the delegate between these, if known


class _Flight:
    """One delegate read shared by every reader that missed meanwhile."""

    __slots__ = ("abandoned", "data", "done", "error", "landed", "large", "versioned")

    def __init__(self) -> None:
        self.landed = False
        self.done: trio.Event | None = None  # made by the first waiter
        self.data: bytes | None = None  # None: the session was not found
        self.versioned: Versioned | None = None
        self.large = False  # a streaming read found more than the cache keeps
        self.abandoned = False  # the reader was cancelled: a waiter reads instead
        self.error: BaseException | None = None

    def finish(self) -> None:
        self.landed = True
        if self.done is not None:
            self.done.set()


class _Small:
    """What a probing consumer returns for a value small enough to cache."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


@final
class CacheStorage(ConditionalStorage):
    """A read-through cache over *delegate*, for one process.

    Prefer `open_cache_storage`. To run the cache in a nursery you already have (a web
    framework's, say), start it there and close it when done::

        cache = CacheStorage(delegate)
        await nursery.start(cache.run)
        ...
        await cache.aclose()

    Operations before `run` has started raise `RuntimeError`. Closing the cache (or
    cancelling `run`) does not close the delegate: it belongs to the caller. Operations
    already in progress when the cache closes finish with the delegate and cache nothing;
    later ones raise `trio.ClosedResourceError`.

    The cache offers conditional writes (`~ConditionalStorage.read_versioned`,
    `~ConditionalStorage.write_bytes_if`, `~ConditionalStorage.invalidate_if`) when its
    delegate does: `~ConditionalStorage.conditional_writes` says whether it does, and
    over a delegate without them those methods raise `TypeError`.

    :param delegate: the storage that holds the sessions; ``max_size`` is taken from it.
    :param idle_timeout: seconds after which an unused entry is evicted; also the longest
        a value loaded from the delegate is served before it is read again.
    :param max_entries: the most entries kept.
    :param max_bytes: the most payload bytes kept.
    :param clock: returns the current time in seconds, advancing like trio's clock
        (default `trio.current_time`). A test that gives the delegate a clock gives the
        cache the same one.

    The cache is coherent for what goes through it. Changes made to the delegate by
    others (another process, or code using the delegate directly) are seen when the
    entry leaves the cache: for a value loaded from the delegate, at most
    ``idle_timeout`` seconds later; for a value written through this cache, once it is
    idle, evicted or expired; and at once after a conditional write or delete through
    the cache conflicts with them (the conflict drops the entry). Missing sessions are not
    cached (an attacker's random ids would otherwise crowd out real sessions).
    """

    def __init__(
        self,
        delegate: SessionStorage,
        *,
        idle_timeout: float = 60.0,
        max_entries: int = 10_000,
        max_bytes: int = _MAX_BYTES,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if not isinstance(delegate, SessionStorage):
            raise TypeError(f"delegate must be a SessionStorage, not {type(delegate).__name__}")
        if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, int | float):
            raise TypeError("idle_timeout must be a number of seconds")
        if not 0 < idle_timeout < math.inf:
            raise ValueError(f"idle_timeout must be positive and finite (got {idle_timeout!r})")
        for name, value in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int (got {value!r})")
        self._delegate = delegate
        self._conditional = conditional(delegate)
        self._max_size = delegate.max_size
        self._idle_timeout = float(idle_timeout)
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entry_limit = min(_CHUNK, max_bytes)
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._flights: dict[str, _Flight] = {}  # plain reads (read_bytes, read)
        self._versioned_flights: dict[str, _Flight] = {}  # read_versioned
        # id -> (earliest, latest) expiry of the values written through the cache that the
        # delegate may hold, for ids not cached (or loaded since): oldest first.
        self._doubts: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._writing: dict[str, int] = {}  # id -> writes and invalidates in progress
        self._overlapped: set[str] = set()  # ids whose writes overlapped one another
        self._scope: trio.CancelScope | None = None
        self._started = False
        self._closed = False
        self._bytes = self._hits = self._misses = self._loads = self._evictions = 0

    @property
    def delegate(self) -> SessionStorage:
        """The storage behind the cache."""
        return self._delegate

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def conditional_writes(self) -> bool:
        """Whether the delegate offers conditional writes, and so the cache too."""
        return self._conditional is not None

    def statistics(self) -> CacheStorageStatistics:
        """Counters since the cache was made, and what it holds now."""
        return CacheStorageStatistics(
            hits=self._hits,
            misses=self._misses,
            loads=self._loads,
            evictions=self._evictions,
            entries=len(self._entries),
            bytes=self._bytes,
        )

    async def run(  # noqa: ASYNC114
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the cache's background work until `aclose` or cancellation.

        Use ``await nursery.start(cache.run)``: the cache is ready when it returns. The
        eviction of idle entries runs inside; when `run` ends the cache is closed.
        """
        if self._started:
            raise RuntimeError("this CacheStorage has already been started")
        self._started = True
        try:
            with trio.CancelScope() as self._scope:
                if self._closed:  # closed before it ran
                    self._scope.cancel()
                task_status.started()
                await self._evict_idle()
        finally:
            self._close()

    async def aclose(self) -> None:
        """Close the cache (not the delegate). Idempotent."""
        if self._closed:
            await checkpoint()
            return
        self._close()
        await cancel_shielded_checkpoint()

    # ------------------------------------------------------------------- reads

    async def read_bytes(self, session_id: str) -> bytes:
        entry = self._lookup(session_id) if type(session_id) is str else None
        if entry is not None:
            await checkpoint()
            return entry.data
        session_id = self._check(session_id)
        self._misses += 1
        while True:
            flight = self._versioned_flights.get(session_id) or self._flights.get(session_id)
            if flight is None:
                return await self._fly_bytes(session_id)
            await self._wait(flight)
            if flight.abandoned:
                continue
            if flight.large:
                return await self._read_bytes_alone(session_id)
            if flight.data is None:
                raise SessionNotFound()
            return flight.data

    async def read(self, session_id: str, consumer: Consumer[T]) -> T:
        entry = self._lookup(session_id) if type(session_id) is str else None
        if entry is not None:
            await checkpoint()
            return await consumer(ReadStream(entry.data))
        session_id = self._check(session_id)
        self._misses += 1
        while True:
            flight = self._versioned_flights.get(session_id) or self._flights.get(session_id)
            if flight is None:
                return await self._fly_stream(session_id, consumer)
            await self._wait(flight)
            if flight.abandoned:
                continue
            if flight.large:
                return await self._read_alone(session_id, consumer)
            if flight.data is None:
                raise SessionNotFound()
            return await consumer(ReadStream(flight.data))

    async def read_versioned(self, session_id: str) -> Versioned:
        delegate = self._conditional_delegate()
        entry = self._lookup(session_id, versioned=True) if type(session_id) is str else None
        if entry is not None and entry.versioned is not None:
            await checkpoint()
            return entry.versioned
        session_id = self._check(session_id)
        self._misses += 1
        while True:
            flight = self._versioned_flights.get(session_id)
            if flight is None:
                return await self._fly_versioned(delegate, session_id)
            await self._wait(flight)
            if flight.abandoned:
                continue
            if flight.versioned is None:
                raise SessionNotFound()
            return flight.versioned

    # ------------------------------------------------------------------ writes

    async def write_bytes(self, session_id: str, data: bytes, *, ttl: float | None = None) -> None:
        session_id = self._check(session_id)
        check_ttl(ttl)
        data = self._check_data(data)
        started = self._begin(session_id)
        try:
            await self._delegate.write_bytes(session_id, data, ttl=ttl)
        except BaseException:
            self._end(session_id, _UNKNOWN, started, ttl)
            raise
        self._end(session_id, _STORED, started, ttl, data)

    async def write(self, session_id: str, provider: Provider, *, ttl: float | None = None) -> None:
        session_id = self._check(session_id)
        check_ttl(ttl)
        tee = _Tee(provider, self._max_size, self._entry_limit)
        started = self._begin(session_id)
        try:
            await self._delegate.write(session_id, tee.provide, ttl=ttl)
        except BaseException:
            # When the provider raised, the delegate kept what it had (the contract).
            self._end(session_id, _UNCHANGED if tee.failed else _UNKNOWN, started, ttl)
            raise
        self._end(session_id, _STORED, started, ttl, tee.value)

    async def invalidate(self, session_id: str) -> None:
        session_id = self._check(session_id)
        started = self._begin(session_id)
        try:
            await self._delegate.invalidate(session_id)
        except BaseException:
            self._end(session_id, _UNKNOWN, started, None)
            raise
        self._end(session_id, _DELETED, started, None)

    async def write_bytes_if(
        self, session_id: str, data: bytes, *, version: int | None, ttl: float | None = None
    ) -> int:
        delegate = self._conditional_delegate()
        session_id = self._check(session_id)
        check_ttl(ttl)
        _check_version(version, allow_none=True)
        data = self._check_data(data)
        started = self._begin(session_id)
        try:
            new_version = await delegate.write_bytes_if(session_id, data, version=version, ttl=ttl)
        except WriteConflict:
            # Nothing changed, but the entry may be what misled the caller: drop it.
            self._end(session_id, _UNKNOWN, started, None)
            raise
        except BaseException:
            self._end(session_id, _UNKNOWN, started, ttl)
            raise
        self._end(session_id, _STORED, started, ttl, data, new_version)
        return new_version

    async def invalidate_if(self, session_id: str, *, version: int) -> None:
        delegate = self._conditional_delegate()
        session_id = self._check(session_id)
        _check_version(version, allow_none=False)
        started = self._begin(session_id)
        try:
            await delegate.invalidate_if(session_id, version=version)
        except BaseException:
            self._end(session_id, _UNKNOWN, started, None)
            raise
        self._end(session_id, _DELETED, started, None)

    # -------------------------------------------------------------- checks

    def _check(self, session_id: str) -> str:
        if self._closed:
            raise trio.ClosedResourceError("CacheStorage is closed")
        if not self._started:
            raise RuntimeError(
                "CacheStorage is not running: use open_cache_storage() or nursery.start(cache.run)"
            )
        return check_session_id(session_id)

    def _check_data(self, data: bytes) -> bytes:
        if type(data) is not bytes:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError(f"data must be bytes, not {type(data).__name__}")
            data = bytes(data)  # a copy: the caller may change a bytearray later
        if len(data) > self._max_size:
            raise SessionTooLarge(self._max_size)
        return data

    def _conditional_delegate(self) -> ConditionalStorage:
        if self._conditional is None:
            raise TypeError(
                f"this CacheStorage has no conditional writes: its delegate, "
                f"{type(self._delegate).__name__}, offers none (check conditional_writes first)"
            )
        return self._conditional

    # --------------------------------------------------------- delegate reads

    async def _fly_bytes(self, session_id: str) -> bytes:
        found = await self._fly(self._flights, session_id, self._delegate.read_bytes)
        return found if isinstance(found, bytes) else found.data

    async def _fly_versioned(self, delegate: ConditionalStorage, session_id: str) -> Versioned:
        found = await self._fly(self._versioned_flights, session_id, delegate.read_versioned)
        assert isinstance(found, Versioned)
        return found

    async def _fly(
        self,
        flights: dict[str, _Flight],
        session_id: str,
        read: Callable[[str], Awaitable[bytes | Versioned]],
    ) -> bytes | Versioned:
        """One delegate read that concurrent readers of *session_id* share."""
        flight = flights[session_id] = _Flight()
        started = self._clock()
        self._loads += 1
        try:
            found: bytes | Versioned = await read(session_id)
        except SessionNotFound:
            self._land(session_id, flight, None, None, started)
            raise
        except BaseException as exc:
            self._crash(session_id, flight, exc)
            raise
        if isinstance(found, Versioned):
            self._land(session_id, flight, found.data, found, started)
        else:
            self._land(session_id, flight, found, None, started)
        return found

    async def _fly_stream(self, session_id: str, consumer: Consumer[T]) -> T:
        """Read the delegate once: cache a small value, stream a large one to *consumer*."""
        flight = self._flights[session_id] = _Flight()
        started = self._clock()
        self._loads += 1
        limit = self._entry_limit

        async def probe(stream: trio.abc.ReceiveStream) -> T | _Small:
            parts: list[bytes | bytearray] = []
            size = 0
            while chunk := await stream.receive_some(limit + 1 - size):
                parts.append(chunk)
                size += len(chunk)
                if size > limit:
                    self._too_large(session_id, flight)
                    return await consumer(_Prefixed(b"".join(parts), stream))
            return _Small(b"".join(parts))

        try:
            result = await self._delegate.read(session_id, probe)
        except SessionNotFound:
            if not flight.landed:
                self._land(session_id, flight, None, None, started)
            raise
        except BaseException as exc:
            if not flight.landed:
                self._crash(session_id, flight, exc)
            raise
        if not isinstance(result, _Small):
            return result
        self._land(session_id, flight, result.data, None, started)
        return await consumer(ReadStream(result.data))

    async def _read_bytes_alone(self, session_id: str) -> bytes:
        """Read a value too large to share, for this reader only."""
        self._loads += 1
        try:
            return await self._delegate.read_bytes(session_id)
        finally:
            self._observed(session_id)

    async def _read_alone(self, session_id: str, consumer: Consumer[T]) -> T:
        """Stream a value too large to share, for this reader only."""
        self._loads += 1

        async def observe(stream: trio.abc.ReceiveStream) -> T:
            self._observed(session_id)
            return await consumer(stream)

        try:
            return await self._delegate.read(session_id, observe)
        except SessionNotFound:
            self._observed(session_id)
            raise

    async def _wait(self, flight: _Flight) -> None:
        if not flight.landed:
            if flight.done is None:
                flight.done = trio.Event()
            await flight.done.wait()
        else:
            await checkpoint()
        if flight.error is not None:
            # A fresh exception per waiter: one shared object would collect every
            # waiter's traceback.
            raise StorageError(f"CacheStorage could not load: {flight.error!r}") from flight.error

    def _land(
        self,
        session_id: str,
        flight: _Flight,
        data: bytes | None,
        versioned: Versioned | None,
        started: float,
    ) -> None:
        """A delegate read found *data* (``None``: nothing): hand it out, maybe cache it."""
        flight.data = data
        flight.versioned = versioned
        if session_id in self._writing:
            self._observed(session_id)
        elif data is not None and self._attached(session_id, flight):
            self._install_loaded(session_id, data, versioned, started)
        self._detach(session_id, flight)
        flight.finish()

    def _too_large(self, session_id: str, flight: _Flight) -> None:
        """A streaming read found a value above the entry limit: its waiters read alone."""
        flight.large = True
        self._observed(session_id)
        self._detach(session_id, flight)
        flight.finish()

    def _crash(self, session_id: str, flight: _Flight, exc: BaseException) -> None:
        """The delegate read failed (waiters get the error) or was cancelled (they retry)."""
        if isinstance(exc, Exception):
            flight.error = exc
        else:
            flight.abandoned = True
        self._detach(session_id, flight)
        flight.finish()

    def _attached(self, session_id: str, flight: _Flight) -> bool:
        return (
            self._flights.get(session_id) is flight
            or self._versioned_flights.get(session_id) is flight
        )

    def _detach(self, session_id: str, flight: _Flight) -> None:
        if self._flights.get(session_id) is flight:
            del self._flights[session_id]
        elif self._versioned_flights.get(session_id) is flight:
            del self._versioned_flights[session_id]

    def _observed(self, session_id: str) -> None:
        """A delegate read of *session_id* returned and its reader is about to see it.

        With a write of the id in progress, what it saw may be the new value: then no later
        read may get an older one, from the cached entry or from a delegate read that
        started earlier. Drop the entry and detach those reads.
        """
        if session_id in self._writing:
            self._discard(session_id)
            self._flights.pop(session_id, None)
            self._versioned_flights.pop(session_id, None)

    # -------------------------------------------------------------- entries

    def _lookup(self, session_id: str, *, versioned: bool = False) -> _Entry | None:
        """Return the live entry (with a version, if *versioned*) and mark it used."""
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        now = self._clock()
        if now < entry.expires_at and now - entry.used < self._idle_timeout:
            if versioned and entry.versioned is None:
                return None
            entry.used = now
            self._entries.move_to_end(session_id)
            self._hits += 1
            return entry
        self._discard(session_id)
        self._evictions += 1
        return None

    def _begin(self, session_id: str) -> float:
        """A write or invalidate of *session_id* starts; return the time."""
        count = self._writing.get(session_id, 0)
        if count:
            self._overlapped.add(session_id)
        self._writing[session_id] = count + 1
        return self._clock()

    def _end(
        self,
        session_id: str,
        outcome: int,
        started: float,
        ttl: float | None,
        data: bytes | None = None,
        version: int | None = None,
    ) -> None:
        """A write or invalidate ended with *outcome*; *data*: the value stored, if known."""
        count = self._writing[session_id] - 1
        if count:  # another write of the id is in progress: it overlapped this one
            self._writing[session_id] = count
            overlapped = True
        else:
            del self._writing[session_id]
            overlapped = session_id in self._overlapped
            if overlapped:
                self._overlapped.remove(session_id)
        if self._flights:
            self._flights.pop(session_id, None)
        if self._versioned_flights:
            self._versioned_flights.pop(session_id, None)
        if outcome == _UNCHANGED:
            return
        # The value this operation may have stored expires between these two times.
        now = started if ttl is None else self._clock()
        bounds = None if ttl is None else (started + ttl, now + ttl)
        if overlapped or outcome == _UNKNOWN:
            # The delegate holds what it held before or what this operation (or an
            # overlapping one) stored: cache neither, remember when they expire.
            self._discard(session_id)
            self._remember(session_id, bounds)
            return
        self._forget(session_id)
        if data is not None:
            versioned = None if version is None else Versioned(data, version)
            expires_at = math.inf if bounds is None else bounds[0]
            if self._install(session_id, data, versioned, expires_at, bounds, now):
                return
        self._remember(session_id, bounds)

    def _install_loaded(
        self, session_id: str, data: bytes, versioned: Versioned | None, started: float
    ) -> None:
        """Cache a value read from the delegate, whose ttl the delegate does not tell.

        It is served for ``idle_timeout`` at most, and never past the earliest expiry of
        the values written through the cache that the delegate may still hold.
        """
        old = self._entries.get(session_id)
        if old is not None:
            if versioned is None and old.versioned is not None:
                return  # a read of the same state, made without its version
            self._discard(session_id)  # what it knew of the expiry stays
        expires_at = started + self._idle_timeout
        bounds = self._doubts.get(session_id)
        if bounds is not None:
            if bounds[1] <= self._clock():
                del self._doubts[session_id]  # every value it was about has expired
                bounds = None
            else:
                expires_at = min(expires_at, bounds[0])
        self._install(session_id, data, versioned, expires_at, bounds, self._clock())

    def _install(
        self,
        session_id: str,
        data: bytes,
        versioned: Versioned | None,
        expires_at: float,
        bounds: tuple[float, float] | None,
        now: float,
    ) -> bool:
        if len(data) > self._entry_limit or expires_at <= now or self._closed:
            return False
        self._discard(session_id)
        self._entries[session_id] = _Entry(data, versioned, expires_at, now, bounds)
        self._bytes += len(data)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            self._discard(next(iter(self._entries)))
            self._evictions += 1
        return True

    def _discard(self, session_id: str) -> None:
        """Stop serving the entry, remembering when its value expires."""
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self._bytes -= len(entry.data)
            self._remember(session_id, entry.bounds)

    def _forget(self, session_id: str) -> None:
        """Drop the entry and what the cache knew: the delegate holds another value now."""
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self._bytes -= len(entry.data)
        if self._doubts:
            self._doubts.pop(session_id, None)

    def _remember(self, session_id: str, bounds: tuple[float, float] | None) -> None:
        """The delegate may hold a value of *session_id* that expires within *bounds*."""
        if bounds is None or self._closed:
            return
        known = self._doubts.pop(session_id, None)
        if known is not None:
            bounds = (min(known[0], bounds[0]), max(known[1], bounds[1]))
        self._doubts[session_id] = bounds
        if len(self._doubts) > self._max_entries:
            self._doubts.popitem(last=False)

    def _close(self) -> None:
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
        self._entries.clear()
        self._doubts.clear()
        self._bytes = 0

    async def _evict_idle(self) -> None:
        """Evict idle entries for ever; the least recently used entry is the first due."""
        idle = self._idle_timeout
        entries = self._entries
        while True:
            now = self._clock()
            wait = idle
            while entries:
                session_id, entry = next(iter(entries.items()))
                if now - entry.used < idle:
                    wait = entry.used + idle - now
                    break
                self._discard(session_id)
                self._evictions += 1
            doubts = self._doubts
            while doubts and doubts[next(iter(doubts))][1] <= now:
                doubts.popitem(last=False)
            await trio.sleep(max(wait, idle / 1000))


def _check_version(version: int | None, *, allow_none: bool) -> None:
    if version is None and allow_none:
        return
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        expected = "a positive int or None" if allow_none else "a positive int"
        raise TypeError(f"version must be {expected} (got {version!r})")


@final
class _Tee(trio.abc.SendStream):
    """The stream a provider writes to through the cache: it forwards every byte to the
    delegate's stream and keeps a copy of a value small enough to cache."""

    def __init__(self, provider: Provider, max_size: int, limit: int) -> None:
        self._provider = provider
        self._max_size = max_size
        self._limit = limit
        self._inner: trio.abc.SendStream | None = None
        self._parts: list[bytes] | None = []  # None once the value is above the limit
        self._size = 0
        self._busy = False
        self._closed = False
        self._too_large = False
        #: Whether the provider raised (or sent too much): the delegate stored nothing.
        self.failed = False

    @property
    def value(self) -> bytes | None:
        """The whole value the provider sent, if small enough to cache."""
        return None if self._parts is None else b"".join(self._parts)

    async def provide(self, stream: trio.abc.SendStream) -> None:
        """The provider given to the delegate's `write`."""
        self._inner = stream
        try:
            await self._provider(self)
        except BaseException:
            self.failed = True
            raise
        self._closed = True
        if self._too_large:  # even if the provider swallowed the SessionTooLarge it got
            self.failed = True
            raise SessionTooLarge(self._max_size)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._busy:
            raise trio.BusyResourceError("another task is already sending on this stream")
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        assert self._inner is not None
        self._busy = True
        try:
            size = self._size + len(data)
            if size > self._max_size:
                self._too_large = True
                await checkpoint()
                raise SessionTooLarge(self._max_size)
            self._size = size
            if self._parts is not None:
                if size <= self._limit:
                    data = bytes(data)
                    self._parts.append(data)
                else:
                    self._parts = None
            await self._inner.send_all(data)
        finally:
            self._busy = False

    async def wait_send_all_might_not_block(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        assert self._inner is not None
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        self._closed = True
        assert self._inner is not None
        await self._inner.aclose()


@final
class _Prefixed(trio.abc.ReceiveStream):
    """A delegate's stream whose first bytes were already received (into *prefix*)."""

    def __init__(self, prefix: bytes, inner: trio.abc.ReceiveStream) -> None:
        self._prefix = memoryview(prefix)
        self._inner = inner
        self._busy = False
        self._closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._busy:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        self._busy = True
        try:
            if not self._prefix:
                return await self._inner.receive_some(max_bytes)
            await checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            return bytes(chunk)
        finally:
            self._busy = False

    async def aclose(self) -> None:
        self._closed = True
        await self._inner.aclose()


open_cache_storage = opener(
    CacheStorage,
    "open_cache_storage",
    """Open a `CacheStorage` over *delegate* with the arguments given, its background
    work running in a nursery of its own for the block.

    ::

        async with MemoryStorage() as delegate, open_cache_storage(delegate) as cache:
            await cache.write_bytes(session_id, data)

    Leaving the block closes the cache, not the delegate.
    """,
)
