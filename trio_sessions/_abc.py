"""The storage contract: what every backend promises (see the docs' "Storage contract")."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

__all__ = ["Consumer", "Provider", "SessionStorage"]

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
