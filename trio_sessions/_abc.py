"""The storage contract: what every backend promises (see the docs' "Storage contract")."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar, final, runtime_checkable

import trio

__all__ = [
    "ConditionalStorage",
    "Consumer",
    "Provider",
    "PurgeResult",
    "SessionStorage",
    "SupportsPurge",
    "SupportsTouch",
    "Versioned",
    "conditional",
]

T = TypeVar("T")

#: A writer callback: it receives a stream and sends the session's bytes to it.
Provider = Callable[[trio.abc.SendStream], Awaitable[object]]
#: A reader callback: it receives a stream of the session's bytes and returns a result.
Consumer = Callable[[trio.abc.ReceiveStream], Awaitable[T]]

#: Default limit for one session's payload, in bytes.
DEFAULT_MAX_SIZE = 1024 * 1024


class SessionStorage(trio.abc.AsyncResource):
    """Where session payloads live, addressed by session id.

    Every implementation keeps the same contract, checked by :mod:`trio_sessions.testing`:

    * ids follow one policy (`SESSION_ID_PATTERN`); anything else raises
      `InvalidSessionId` before any I/O;
    * writes are atomic and last-writer-wins: a reader sees the complete old or the
      complete new value, never a mix, a prefix or an empty value;
    * a missing, invalidated or expired session raises `SessionNotFound`;
    * a payload above `max_size` raises `SessionTooLarge` and stores nothing;
    * a callback's own exception propagates as itself; a backend failure raises
      `StorageError` with the original exception as ``__cause__``;
    * every method is a checkpoint, and a cancelled `write` or `invalidate` either did
      not happen or completed entirely;
    * after `aclose` every method raises `trio.ClosedResourceError`.
    """

    __slots__ = ()

    @property
    @abstractmethod
    def max_size(self) -> int:
        """The largest payload, in bytes, that this storage accepts."""

    @abstractmethod
    async def write(self, session_id: str, provider: Provider, *, ttl: float | None = None) -> None:
        """Store what *provider* sends to its stream as the session's new value.

        *provider* is called with a `trio.abc.SendStream`; the value is complete when
        the provider returns (or closes the stream). With *ttl* (seconds), the session
        expires that long after this write; ``None`` means no storage-level expiry.
        """

    @abstractmethod
    async def read(self, session_id: str, consumer: Consumer[T]) -> T:
        """Call *consumer* with a `trio.abc.ReceiveStream` of the session's value.

        Returns what *consumer* returns. The consumer may stop reading early.
        """

    @abstractmethod
    async def invalidate(self, session_id: str) -> None:
        """Delete the session. Deleting a missing session is not an error."""

    @abstractmethod
    async def write_bytes(self, session_id: str, data: bytes, *, ttl: float | None = None) -> None:
        """Store *data* as the session's new value: the fast path of `write`."""

    @abstractmethod
    async def read_bytes(self, session_id: str) -> bytes:
        """Return the session's whole value: the fast path of `read`."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release the storage's resources. Idempotent."""


@final
@dataclass(frozen=True, slots=True)
class Versioned:
    """A session's value with the version it is stored under (`ConditionalStorage`)."""

    #: The stored value.
    data: bytes
    #: An opaque positive int that changes with every write of this id.
    version: int


class ConditionalStorage(SessionStorage):
    """A storage that also offers atomic conditional writes (compare-and-set).

    Every write of a session gives it a new *version*. `read_versioned` returns the value
    with its version; `write_bytes_if` and `invalidate_if` change the session only if the
    stored version is still the expected one, atomically with respect to every other
    operation on that id (also from other processes sharing the backend), and raise
    `WriteConflict` without changing anything otherwise. A session that was invalidated
    or has expired has no version, so every conditional write or delete that expects a
    version read before fails: this is what lets the session layer merge concurrent
    requests and make a logout stick.

    Every built-in backend implements it; the conformance harness checks it.
    """

    __slots__ = ()

    @property
    def conditional_writes(self) -> bool:
        """Whether the conditional methods work on this instance.

        ``True`` unless the storage wraps another one that lacks them (a cache over a
        storage without conditional writes).
        """
        return True

    @abstractmethod
    async def read_versioned(self, session_id: str) -> Versioned:
        """Return the session's value and version; `SessionNotFound` if there is none."""

    @abstractmethod
    async def write_bytes_if(
        self, session_id: str, data: bytes, *, version: int | None, ttl: float | None = None
    ) -> int:
        """Store *data* if the stored version is *version*; return the new version.

        ``version=None`` means "only if no value is stored" (creating a session). Raises
        `WriteConflict`, changing nothing, if the stored version is another one, or if
        the session was invalidated or expired since *version* was read.
        """

    @abstractmethod
    async def invalidate_if(self, session_id: str, *, version: int) -> None:
        """Delete the session if its stored version is *version*; else `WriteConflict`."""


def conditional(storage: SessionStorage) -> ConditionalStorage | None:
    """Return *storage* if its conditional writes work, else ``None``."""
    if isinstance(storage, ConditionalStorage) and storage.conditional_writes:
        return storage
    return None


@final
@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What a storage's ``purge()`` removed (every storage that purges returns one)."""

    #: Expired sessions.
    expired: int
    #: Unreadable session records (truncated, corrupted, or of an unknown format).
    corrupt: int = 0
    #: Temporary files or keys: writes in progress, or debris of a crash.
    temporary: int = 0
    #: Empty folders (`DirectoryStorage`'s fan-out).
    folders: int = 0


@runtime_checkable
class SupportsPurge(Protocol):
    """A storage that removes expired data on demand (run it from a timer or cron job).

    `MemoryStorage`, `DirectoryStorage` and `PostgresStorage` have it; Redis expires keys
    by itself.
    """

    async def purge(self) -> PurgeResult: ...


@runtime_checkable
class SupportsTouch(Protocol):
    """A storage that moves a session's expiry without rewriting its value (`RedisStorage`).

    Returns whether the session exists; touching never recreates one.
    """

    async def touch(self, session_id: str, ttl: float) -> bool: ...
