"""`CacheStorage`: a read-through memory cache in front of any storage, with no stale reads.

How it stays correct:

* **Single flight.** A miss starts one delegate read in the cache's own nursery; every
  concurrent miss for that id waits for it. A waiter that is cancelled stops waiting, the
  read goes on for the others. A failed read is handed to its waiters and never cached.
* **No stale reads.** A write or invalidate goes to the delegate first; only when the
  delegate is done does the cache take the new value (or drop the entry). When a write
  or invalidate ends, the id's in-flight read is detached, which acts as a per-id
  generation: later readers start a fresh read, and the detached one still answers the
  readers that joined it (they overlapped the write) but never installs its result. A
  delegate read that completes while a write of its id is in progress installs nothing,
  drops the entry and detaches the in-flight read: the delegate may already hold the new
  value, and once a reader has seen it no later reader may see an older one.
  Overlapping writes of one id (whose order at the delegate the cache cannot see) leave
  nothing cached.
* **Expiry.** A value written through the cache with a ttl leaves the cache when the ttl
  ends. A value loaded from the delegate has an unknown ttl: it is served for at most
  ``idle_timeout`` seconds after it was loaded, then read again.
* **Memory.** Entries unused for ``idle_timeout`` seconds are evicted by a supervised
  task; beyond ``max_entries`` or ``max_bytes`` the least recently used go first. Values
  above 64 KiB are not cached: they stream between the caller and the delegate in chunks.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import final

import trio

from .._abc import SessionStorage
from .._base import ChunkSink, ChunkSource, StorageBase, collapsed_errors
from .._errors import SessionNotFound, StorageError

__all__ = ["CacheStorage", "CacheStorageStatistics", "open_cache_storage"]

#: Values up to this size are cached; larger ones stream through in chunks of this size.
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
    __slots__ = ("data", "expires_at", "used")

    def __init__(self, data: bytes, expires_at: float, used: float) -> None:
        self.data = data
        self.expires_at = expires_at
        self.used = used


class _Flight:
    """One delegate read shared by every reader that missed meanwhile."""

    __slots__ = ("data", "done", "error", "large")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: bytes | None = None
        self.large = False  # the value exceeds what the cache keeps; stream it instead
        self.error: BaseException | None = None


@final
class CacheStorage(StorageBase):
    """A read-through cache over *delegate*, for one process.

    Prefer `open_cache_storage`. To run the cache in a nursery you already have (a web
    framework's, say), start it there and close it when done::

        cache = CacheStorage(delegate)
        await nursery.start(cache.run)
        ...
        await cache.aclose()

    Operations before `run` has started raise `RuntimeError`. Closing the cache (or
    cancelling `run`) does not close the delegate: it belongs to the caller. Operations
    in progress when the cache closes raise `StorageError` (from `trio.ClosedResourceError`).

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
    idle, evicted or expired. Deployments with several writers should cache in one place
    or not at all. Missing sessions are not cached (an attacker's random ids would
    otherwise crowd out real sessions).
    """

    _chunk_size = _CHUNK

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
        super().__init__(max_size=delegate.max_size)
        if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, int | float):
            raise TypeError("idle_timeout must be a number of seconds")
        if not 0 < idle_timeout < math.inf:
            raise ValueError(f"idle_timeout must be positive and finite (got {idle_timeout!r})")
        for name, value in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int (got {value!r})")
        self._delegate = delegate
        self._idle_timeout = float(idle_timeout)
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entry_limit = min(_CHUNK, max_bytes)
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._flights: dict[str, _Flight] = {}
        self._writing: dict[str, int] = {}  # id -> writes and invalidates in progress
        self._overlapped: set[str] = set()  # ids whose writes overlapped one another
        self._nursery: trio.Nursery | None = None
        self._started = False
        self._bytes = self._hits = self._misses = self._loads = self._evictions = 0

    @property
    def delegate(self) -> SessionStorage:
        """The storage behind the cache."""
        return self._delegate

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

        Use ``await nursery.start(cache.run)``: the cache is ready when it returns. Delegate
        reads and the idle eviction run inside; when `run` ends the cache is closed.
        """
        if self._started:
            raise RuntimeError("this CacheStorage has already been started")
        self._started = True
        try:
            async with trio.open_nursery() as nursery:
                if not self._closed:
                    self._nursery = nursery
                task_status.started()
                if self._nursery is not None:
                    await self._evict_idle()
        finally:
            self._closed = True
            self._nursery = None
            self._clear()

    # ------------------------------------------------------------ StorageBase hooks

    def _check(self, session_id: str) -> None:
        if not self._started and not self._closed:
            raise RuntimeError(
                "CacheStorage is not running: use open_cache_storage() or nursery.start(cache.run)"
            )
        super()._check(session_id)

    async def _load(self, session_id: str) -> bytes | None:
        data = self._lookup(session_id)
        if data is not None:
            return data  # noqa: ASYNC910 (the base class checkpoints)
        flight = await self._join(session_id)
        if not flight.large:
            return flight.data
        self._loads += 1
        try:
            data = await self._delegate.read_bytes(session_id)
        except SessionNotFound:
            data = None
        self._observed(session_id)
        return data

    async def _open_source(self, session_id: str) -> tuple[bytes, ChunkSource | None]:
        data = self._lookup(session_id)
        if data is not None:
            return data, None  # noqa: ASYNC910 (the base class checkpoints)
        flight = await self._join(session_id)
        if not flight.large:
            if flight.data is None:
                raise SessionNotFound()
            return flight.data, None
        self._loads += 1
        pump = _Pump()
        self._running().start_soon(pump.run, self._delegate, session_id)
        try:
            first = await pump.read()
        except SessionNotFound:
            self._observed(session_id)
            raise
        except BaseException:
            pump.close()
            raise
        self._observed(session_id)
        return first, pump

    async def _store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        started = self._clock()
        self._begin(session_id)
        stored = False
        try:
            await self._delegate.write_bytes(session_id, data, ttl=ttl)
            stored = True
        finally:
            expires_at = math.inf if ttl is None else started + ttl
            self._end(session_id, data if stored else None, expires_at)

    async def _open_sink(self, session_id: str, ttl: float | None) -> ChunkSink:
        nursery = self._running()
        self._begin(session_id)
        sink = _Sink(lambda: self._end(session_id, None, 0.0))
        nursery.start_soon(sink.run, self._delegate, session_id, ttl)
        return sink  # noqa: ASYNC910 (the base class checkpoints)

    async def _delete(self, session_id: str) -> None:
        self._begin(session_id)
        try:
            await self._delegate.invalidate(session_id)
        finally:
            self._end(session_id, None, 0.0)

    async def _close(self) -> None:  # noqa: ASYNC910 (the base class checkpoints)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        self._clear()

    # ------------------------------------------------------------------ internals

    def _running(self) -> trio.Nursery:
        if self._nursery is None:
            raise trio.ClosedResourceError("the cache was closed")
        return self._nursery

    def _lookup(self, session_id: str) -> bytes | None:
        """Return the cached value and mark it used, or count a miss."""
        entry = self._entries.get(session_id)
        if entry is not None:
            now = self._clock()
            if now < entry.expires_at and now - entry.used < self._idle_timeout:
                entry.used = now
                self._entries.move_to_end(session_id)
                self._hits += 1
                return entry.data
            self._discard(session_id)
            self._evictions += 1
        self._misses += 1
        return None

    async def _join(self, session_id: str) -> _Flight:
        """Wait for the delegate read of *session_id*, starting one if none is running."""
        flight = self._flights.get(session_id)
        if flight is None:
            flight = _Flight()
            self._running().start_soon(self._fly, session_id, flight)
            self._flights[session_id] = flight
        await flight.done.wait()
        if flight.error is not None:
            # A fresh exception per waiter: one shared object would collect every
            # waiter's traceback.
            raise StorageError(f"CacheStorage could not load: {flight.error!r}") from flight.error
        return flight

    async def _fly(self, session_id: str, flight: _Flight) -> None:  # noqa: ASYNC910 (a task)
        started = self._clock()
        self._loads += 1
        try:
            try:
                flight.data = await self._delegate.read(session_id, self._probe)
                flight.large = flight.data is None
            except SessionNotFound:
                pass
        except Exception as exc:
            flight.error = exc
        except BaseException:
            flight.error = trio.ClosedResourceError("the cache was closed")
            raise
        else:
            if session_id in self._writing:
                self._observed(session_id)
            elif self._flights.get(session_id) is flight and flight.data is not None:
                self._install(session_id, flight.data, started + self._idle_timeout)
        finally:
            if self._flights.get(session_id) is flight:
                del self._flights[session_id]
            flight.done.set()

    async def _probe(self, stream: trio.abc.ReceiveStream) -> bytes | None:
        """Read a value if it is small enough to cache, else return ``None``."""
        limit = self._entry_limit
        parts: list[bytes | bytearray] = []
        size = 0
        while True:
            chunk = await stream.receive_some(limit + 1 - size)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                return None

    def _observed(self, session_id: str) -> None:
        """A delegate read of *session_id* returned and its reader is about to see it.

        With a write of the id in progress, what it saw may be the new value: then no later
        read may get an older one, from the cached entry or from a delegate read that
        started earlier. Drop the entry and detach that read.
        """
        if session_id in self._writing:
            self._discard(session_id)
            self._flights.pop(session_id, None)

    def _begin(self, session_id: str) -> None:
        """A write or invalidate of *session_id* starts."""
        count = self._writing.get(session_id, 0)
        if count:
            self._overlapped.add(session_id)
        self._writing[session_id] = count + 1

    def _end(self, session_id: str, data: bytes | None, expires_at: float) -> None:
        """A write or invalidate ended: cache *data* (what the delegate now holds) or drop."""
        count = self._writing[session_id] - 1
        overlapped = session_id in self._overlapped
        if count:
            self._writing[session_id] = count
        else:
            del self._writing[session_id]
            self._overlapped.discard(session_id)
        self._flights.pop(session_id, None)
        self._discard(session_id)
        if data is not None and not overlapped:
            self._install(session_id, data, expires_at)

    def _install(self, session_id: str, data: bytes, expires_at: float) -> None:
        now = self._clock()
        if len(data) > self._entry_limit or expires_at <= now or self._closed:
            return
        self._discard(session_id)
        self._entries[session_id] = _Entry(data, expires_at, now)
        self._bytes += len(data)
        entries = self._entries
        while len(entries) > self._max_entries or self._bytes > self._max_bytes:
            _, entry = entries.popitem(last=False)
            self._bytes -= len(entry.data)
            self._evictions += 1

    def _discard(self, session_id: str) -> None:
        entry = self._entries.pop(session_id, None)
        if entry is not None:
            self._bytes -= len(entry.data)

    def _clear(self) -> None:
        self._entries.clear()
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
            await trio.sleep(max(wait, idle / 1000))


@final
class _Pump:
    """A `ChunkSource` for a value too large to cache: a task streams it from the delegate."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[bytes](0)
        self._scope = trio.CancelScope()
        self._error: BaseException | None = None

    async def run(self, delegate: SessionStorage, session_id: str) -> None:  # noqa: ASYNC910 (a task)
        try:
            with self._scope:
                await delegate.read(session_id, self._consume)
        except Exception as exc:
            self._error = exc
        except BaseException:
            self._error = trio.ClosedResourceError("the cache was closed")
            raise
        finally:
            self._send.close()

    async def _consume(self, stream: trio.abc.ReceiveStream) -> None:
        while chunk := await stream.receive_some(_CHUNK):
            await self._send.send(bytes(chunk))

    async def read(self) -> bytes:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            pass
        if self._error is not None:
            raise self._error  # as it is: it may be the delegate's StorageError
        return b""  # noqa: ASYNC910 (the base class checkpoints)

    def close(self) -> None:
        self._scope.cancel()
        self._receive.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


@final
class _Sink:
    """A `ChunkSink` for a value too large to cache: a task streams it into the delegate."""

    def __init__(self, on_done: Callable[[], None]) -> None:
        self._send, self._receive = trio.open_memory_channel[bytes](0)
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        self._on_done = on_done
        self._stored = False
        self._error: BaseException | None = None

    async def run(  # noqa: ASYNC910 (a task)
        self, delegate: SessionStorage, session_id: str, ttl: float | None
    ) -> None:
        try:
            with self._scope:
                await delegate.write(session_id, self._provide, ttl=ttl)
                self._stored = True
        except Exception as exc:
            self._error = exc
        except BaseException:
            self._error = trio.ClosedResourceError("the cache was closed")
            raise
        finally:
            self._receive.close()
            self._on_done()
            self._done.set()

    async def _provide(self, stream: trio.abc.SendStream) -> None:
        async for chunk in self._receive:
            await stream.send_all(chunk)

    async def _failed(self) -> BaseException:
        await self._done.wait()
        return self._error or trio.ClosedResourceError("the cache was closed")

    async def write(self, chunk: bytes) -> None:
        try:
            await self._send.send(chunk)
        except trio.BrokenResourceError:
            pass  # the delegate's write ended early
        else:
            return
        raise await self._failed()

    async def commit(self) -> None:
        self._send.close()
        await self._done.wait()
        if not self._stored:
            raise await self._failed()

    async def abort(self) -> None:
        self._scope.cancel()
        self._send.close()
        await self._done.wait()


@asynccontextmanager
async def open_cache_storage(
    delegate: SessionStorage,
    *,
    idle_timeout: float = 60.0,
    max_entries: int = 10_000,
    max_bytes: int = _MAX_BYTES,
    clock: Callable[[], float] = trio.current_time,
) -> AsyncIterator[CacheStorage]:
    """Open a `CacheStorage` over *delegate*, with its background work in a nursery.

    ::

        async with MemoryStorage() as delegate, open_cache_storage(delegate) as cache:
            await cache.write_bytes(session_id, data)

    The arguments are those of `CacheStorage`. Leaving the block closes the cache, not
    the delegate.
    """
    cache = CacheStorage(
        delegate,
        idle_timeout=idle_timeout,
        max_entries=max_entries,
        max_bytes=max_bytes,
        clock=clock,
    )
    # The cache's own tasks do not fail, so a group holds the block's one exception.
    with collapsed_errors():
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            try:
                yield cache
            finally:
                with trio.CancelScope(shield=True):
                    await cache.aclose()
