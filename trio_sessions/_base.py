"""The machinery every built-in backend shares, and the extension point for new ones.

`StorageBase` implements the public methods of `SessionStorage` once: id and ttl checks,
checkpoints, the provider/consumer streams, size limits, error translation and closing.
A backend implements a few hooks:

* ``_load`` / ``_store`` / ``_delete`` for whole values (every backend);
* ``_open_source`` and ``_open_sink`` for backends that stream (set ``_chunk_size``):
  values larger than one chunk then move through a bounded memory channel between the
  caller's callback and a supervised task that talks to the backend.

Checkpoints follow one rule, as trio's channels do: **every hook is a schedule point**
(it awaits real I/O, or ends with ``await trio.lowlevel.cancel_shielded_checkpoint()``),
and the public methods add a ``checkpoint_if_cancelled()`` before the hook. So every
public method is a checkpoint, and none adds a schedule point of its own.

Backend exceptions are translated in one place (`StorageBase._translating`): the
contract's own exceptions pass as they are, any other `Exception` becomes a
`StorageError` naming the storage and the action, with the original as ``__cause__``.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint, checkpoint_if_cancelled

from ._abc import (
    DEFAULT_MAX_SIZE,
    ConditionalStorage,
    Consumer,
    Provider,
    SessionStorage,
    Versioned,
)
from ._errors import (
    InvalidSessionId,
    SessionNotFound,
    SessionTooLarge,
    StorageError,
    WriteConflict,
)
from ._ids import check_session_id, checked_ids
from ._streams import ReadStream, WriteStream, awaitable
from ._validate import check_seconds, check_size

__all__ = [
    "ChunkSink",
    "ChunkSource",
    "ConditionalBase",
    "StorageBase",
    "check_ttl",
    "collapse_group",
    "collapsed_errors",
]

T = TypeVar("T")

# Exceptions that already speak the contract: never wrapped in StorageError.
_CONTRACT_ERRORS = (
    SessionNotFound,
    SessionTooLarge,
    InvalidSessionId,
    StorageError,
    WriteConflict,
)


class ChunkSink(Protocol):
    """Where a streaming backend writes a large value (e.g. a temporary file)."""

    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> None:
        """Make the value visible, atomically."""

    async def abort(self) -> None:
        """Discard everything written; must not raise."""


class ChunkSource(Protocol):
    """Where a streaming backend reads the rest of a large value from."""

    async def read(self) -> bytes:
        """Return the next chunk, or ``b""`` at the end."""

    async def aclose(self) -> None: ...


def check_ttl(ttl: float | None) -> float | None:
    """Return *ttl* if it is ``None`` or a positive, finite number of seconds."""
    if ttl is None or ((type(ttl) is int or type(ttl) is float) and 0 < ttl < math.inf):
        return ttl
    return check_seconds("ttl", ttl, allow_none=True)


def collapse_group(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Return the one real error of an internal nursery's group, else the group.

    An internal nursery fails one way at a time: the caller's callback raised, or the
    backend task did (and the other side was cancelled). Then the caller sees that error
    as itself. Only two independent errors stay grouped.
    """
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(reversed(exc.exceptions))
        else:
            leaves.append(exc)
    real = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
    if len(real) == 1:
        return real[0]
    if not real:
        return leaves[0]
    return group


@contextmanager
def collapsed_errors() -> Iterator[None]:
    """Let the one real error of the internal nurseries inside come out as itself.

    See `collapse_group`. The error keeps its own ``__context__``; only a group that
    holds several real errors propagates as a group.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        error = collapse_group(group)
        if error is group:
            raise
        context = error.__context__
        try:
            raise error  # the group was only the nursery's wrapping
        finally:
            error.__context__ = context


class _Translate:
    """Turns a backend's own exceptions into `StorageError` (see `StorageBase._translating`)."""

    __slots__ = ("_action", "_storage")

    def __init__(self, storage: StorageBase, action: str) -> None:
        self._storage = storage
        self._action = action

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, _CONTRACT_ERRORS):
            raise self._storage._failure(self._action, exc) from exc


class StorageBase(SessionStorage):
    """Shared implementation of the contract, for backends that implement its hooks.

    Subclass it to write a backend that streams (or `BytesStorage` for one that does
    not): implement ``_load``, ``_store`` and ``_delete``, and for streaming set
    ``_chunk_size`` and implement ``_open_source`` and ``_open_sink``. Every hook must
    be a schedule point (see the module's docstring); run the conformance harness
    (:mod:`trio_sessions.testing`) on the result.
    """

    #: Streaming backends set a chunk size; ``None`` buffers whole values.
    _chunk_size: int | None = None
    #: Chunks in flight between a callback and its backend task.
    _channel_chunks = 1

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self._max_size = check_size("max_size", max_size)
        self._closed = False

    # ----------------------------------------------------------------- hooks

    @abstractmethod
    async def _load(self, session_id: str) -> bytes | None:
        """Return the stored value, or ``None`` if missing or expired."""

    @abstractmethod
    async def _store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        """Store a whole value, atomically."""

    @abstractmethod
    async def _delete(self, session_id: str) -> None:
        """Delete the value; a missing one is not an error."""

    async def _open_source(self, session_id: str) -> tuple[bytes, ChunkSource | None]:
        """Return the first chunk and, if more follows, a source for the rest."""
        data = await self._load(session_id)
        if data is None:
            raise SessionNotFound()
        return data, None

    async def _open_sink(self, session_id: str, ttl: float | None) -> ChunkSink:
        """Open a sink for a value larger than one chunk (streaming backends only)."""
        raise NotImplementedError

    async def _close(self) -> None:
        """Release the backend's resources (called once)."""

    # ------------------------------------------------------------ public API

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def closed(self) -> bool:
        """Whether `aclose` was called."""
        return self._closed

    def _check(self, session_id: str) -> None:
        if self._closed:
            raise trio.ClosedResourceError(f"{type(self).__name__} is closed")
        if type(session_id) is not str or session_id not in checked_ids:
            check_session_id(session_id)

    def _check_data(self, data: bytes) -> bytes:
        if type(data) is not bytes:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError(f"data must be bytes, not {type(data).__name__}")
            data = bytes(data)
        if len(data) > self._max_size:
            raise SessionTooLarge(self._max_size)
        return data

    async def write_bytes(self, session_id: str, data: bytes, *, ttl: float | None = None) -> None:
        self._check(session_id)
        check_ttl(ttl)
        data = self._check_data(data)
        await checkpoint_if_cancelled()
        with self._translating("store"):
            await self._store(session_id, data, ttl)

    async def read_bytes(self, session_id: str) -> bytes:
        self._check(session_id)
        await checkpoint_if_cancelled()
        with self._translating("load"):
            data = await self._load(session_id)
        if data is None:
            raise SessionNotFound()
        return data

    async def invalidate(self, session_id: str) -> None:
        self._check(session_id)
        await checkpoint_if_cancelled()
        with self._translating("delete"):
            await self._delete(session_id)

    async def write(self, session_id: str, provider: Provider, *, ttl: float | None = None) -> None:
        self._check(session_id)
        check_ttl(ttl)
        await checkpoint_if_cancelled()
        if self._chunk_size is None:
            stream = WriteStream(self._max_size)
            await awaitable(provider(stream), provider, "provider")
            data = stream.finish()
            assert data is not None
            await self.__store(session_id, data, ttl)  # a hook: the schedule point
            return
        with collapsed_errors():
            async with trio.open_nursery() as nursery:

                def spill() -> trio.MemorySendChannel[bytes]:
                    send, receive = trio.open_memory_channel[bytes](self._channel_chunks)
                    nursery.start_soon(self.__run_sink, session_id, ttl, receive)
                    return send

                stream = WriteStream(self._max_size, chunk_size=self._chunk_size, spill=spill)
                await awaitable(provider(stream), provider, "provider")
                # If the provider raised, the sink task is cancelled and discards the value;
                # only a normal return ends the channel, which lets the sink commit.
                data = stream.finish()
                if data is not None:
                    await self.__store(session_id, data, ttl)

    async def read(self, session_id: str, consumer: Consumer[T]) -> T:
        self._check(session_id)
        await checkpoint_if_cancelled()
        with self._translating("load"):
            first, source = await self._open_source(session_id)  # a hook: the schedule point
        if source is None:
            return await awaitable(consumer(ReadStream(first)), consumer, "consumer")
        with collapsed_errors():
            async with trio.open_nursery() as nursery:
                send, receive = trio.open_memory_channel[bytes](self._channel_chunks)
                nursery.start_soon(self.__run_source, source, send)
                async with receive:
                    result = await awaitable(
                        consumer(ReadStream(first, receive)), consumer, "consumer"
                    )
                # The consumer may stop early: the source task has nothing left to do.
                nursery.cancel_scope.cancel()
        return result

    async def aclose(self) -> None:
        if self._closed:
            await checkpoint()
            return
        self._closed = True
        try:
            await self._close()
        finally:
            await cancel_shielded_checkpoint()

    # -------------------------------------------------------------- internals

    def _translating(self, action: str) -> _Translate:
        """``with self._translating("store"): await ...``: the one translation of errors."""
        return _Translate(self, action)

    def _failure(self, action: str, exc: BaseException) -> StorageError:
        """The `StorageError` for *exc*; backends may say more (a path, an address)."""
        return StorageError(f"{type(self).__name__} could not {action}: {exc!r}")

    async def __store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        with self._translating("store"):
            await self._store(session_id, data, ttl)

    async def __run_sink(
        self, session_id: str, ttl: float | None, receive: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        # A failing sink leaves *receive* open: the provider, blocked in send_all, then
        # gets the nursery's cancellation, not a BrokenResourceError of its own, and the
        # caller sees one error (the StorageError), not a group of two.
        with self._translating("write"):
            sink = await self._open_sink(session_id, ttl)
            try:
                async for chunk in receive:
                    await sink.write(chunk)
                await sink.commit()
            except BaseException:
                with trio.CancelScope(shield=True):
                    await sink.abort()
                raise
        receive.close()

    async def __run_source(self, source: ChunkSource, send: trio.MemorySendChannel[bytes]) -> None:
        async with send:
            try:
                while True:
                    with self._translating("read"):
                        chunk = await source.read()
                    if not chunk:
                        return
                    try:
                        await send.send(chunk)
                    except trio.BrokenResourceError:
                        return  # the consumer closed its stream early
            finally:
                with trio.CancelScope(shield=True):
                    await source.aclose()


class ConditionalBase(StorageBase, ConditionalStorage):
    """`StorageBase` plus conditional writes, for backends that can compare-and-set.

    A backend implements three more hooks, each atomic with respect to every other hook
    on the same id; every write hook (``_store``, the streaming sink, ``_store_if``) gives
    the value a new version:

    * ``_load_versioned(id)`` returns ``(value, version)`` or ``None``;
    * ``_store_if(id, data, ttl, version)`` stores if the stored version is *version*
      (``None``: if nothing is stored) and returns the new version, else ``None``;
    * ``_delete_if(id, version)`` deletes if the stored version is *version* and says
      whether it did.
    """

    @abstractmethod
    async def _load_versioned(self, session_id: str) -> tuple[bytes, int] | None:
        """Return the stored value and its version, or ``None`` if missing or expired."""

    @abstractmethod
    async def _store_if(
        self, session_id: str, data: bytes, ttl: float | None, version: int | None
    ) -> int | None:
        """Store if the stored version is *version*; return the new one, or ``None``."""

    @abstractmethod
    async def _delete_if(self, session_id: str, version: int) -> bool:
        """Delete if the stored version is *version*; return whether it did."""

    async def read_versioned(self, session_id: str) -> Versioned:
        self._check(session_id)
        await checkpoint_if_cancelled()
        with self._translating("load"):
            found = await self._load_versioned(session_id)
        if found is None:
            raise SessionNotFound()
        return Versioned(*found)

    async def write_bytes_if(
        self, session_id: str, data: bytes, *, version: int | None, ttl: float | None = None
    ) -> int:
        self._check(session_id)
        check_ttl(ttl)
        _check_version(version, allow_none=True)
        data = self._check_data(data)
        await checkpoint_if_cancelled()
        with self._translating("store"):
            new_version = await self._store_if(session_id, data, ttl, version)
        if new_version is None:
            raise WriteConflict()
        return new_version

    async def invalidate_if(self, session_id: str, *, version: int) -> None:
        self._check(session_id)
        _check_version(version, allow_none=False)
        await checkpoint_if_cancelled()
        with self._translating("delete"):
            deleted = await self._delete_if(session_id, version)
        if not deleted:
            raise WriteConflict()


def _check_version(version: int | None, *, allow_none: bool) -> None:
    if version is None and allow_none:
        return
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        expected = "a positive int or None" if allow_none else "a positive int"
        raise TypeError(f"version must be {expected} (got {version!r})")
