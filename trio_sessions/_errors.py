"""The exceptions of the storage contract."""

from __future__ import annotations

__all__ = [
    "InvalidSessionId",
    "SessionNotFound",
    "SessionTooLarge",
    "StorageError",
    "WriteConflict",
]


class SessionNotFound(LookupError):
    """No session is stored under this id.

    Raised by :meth:`~trio_sessions.SessionStorage.read` for an id that was never written,
    was invalidated, or has expired. The message never contains the id: session ids are
    credentials and do not belong in logs.
    """

    def __init__(self, message: str = "session not found") -> None:
        super().__init__(message)


class InvalidSessionId(ValueError):
    """The id does not follow the id policy (``^[A-Za-z0-9_-]{1,256}$``).

    Raised before any I/O: nothing is read, written or created.
    """


class SessionTooLarge(ValueError):
    """The payload is larger than the storage's ``max_size``; nothing was stored."""

    def __init__(self, max_size: int) -> None:
        super().__init__(f"session payload exceeds max_size ({max_size} bytes)")
        self.max_size = max_size


class StorageError(Exception):
    """The backend failed (I/O error, lost connection, corrupted data, ...).

    The original exception is kept as ``__cause__``.
    """


class WriteConflict(Exception):
    """A conditional write or delete found another version than the one it expected.

    Raised by :meth:`~trio_sessions.ConditionalStorage.write_bytes_if` and
    :meth:`~trio_sessions.ConditionalStorage.invalidate_if` when the session was
    written, invalidated or expired since its version was read (or, for a write
    expecting no value, when one exists). Nothing was changed. It is the expected
    outcome of a lost race, not a backend failure, so it is not a `StorageError`.
    """

    def __init__(self, message: str = "the stored version is not the expected one") -> None:
        super().__init__(message)
