"""The library's exceptions: one base, `TrioSessionsError`, for all of them."""

from __future__ import annotations

import trio

__all__ = [
    "UNAVAILABLE",
    "InvalidSessionId",
    "SessionNotFound",
    "SessionTooLarge",
    "StorageError",
    "TrioSessionsError",
    "WriteConflict",
]


class TrioSessionsError(Exception):
    """The base class of every exception this library raises on purpose.

    Each also derives from the built-in exception it refines (`SessionNotFound` is a
    `LookupError`, `InvalidSessionId` a `ValueError`, ...), so either can be caught.
    """


class SessionNotFound(TrioSessionsError, LookupError):
    """No session is stored under this id.

    Raised by :meth:`~trio_sessions.SessionStorage.read` for an id that was never written,
    was invalidated, or has expired. The message never contains the id: session ids are
    credentials and do not belong in logs.
    """

    def __init__(self, message: str = "session not found") -> None:
        super().__init__(message)


class InvalidSessionId(TrioSessionsError, ValueError):
    """The id does not follow the id policy (``^[A-Za-z0-9_-]{1,256}$``).

    Raised before any I/O: nothing is read, written or created.
    """


class SessionTooLarge(TrioSessionsError, ValueError):
    """The payload is larger than the storage's ``max_size``; nothing was stored."""

    def __init__(self, max_size: int) -> None:
        super().__init__(f"session payload exceeds max_size ({max_size} bytes)")
        self.max_size = max_size


class StorageError(TrioSessionsError):
    """The backend failed (I/O error, lost connection, corrupted data, ...).

    The original exception is kept as ``__cause__``.
    """


class WriteConflict(TrioSessionsError):
    """A conditional write or delete found another version than the one it expected.

    Raised by :meth:`~trio_sessions.ConditionalStorage.write_bytes_if` and
    :meth:`~trio_sessions.ConditionalStorage.invalidate_if` when the session was
    written, invalidated or expired since its version was read (or, for a write
    expecting no value, when one exists). Nothing was changed. It is the expected
    outcome of a lost race, not a backend failure, so it is not a `StorageError`.
    """

    def __init__(self, message: str = "the stored version is not the expected one") -> None:
        super().__init__(message)


#: What a storage raises when it cannot serve a request right now: a backend failure, or
#: a storage that was closed (during a server's shutdown). Web integrations answer 503.
UNAVAILABLE = (StorageError, trio.ClosedResourceError)
