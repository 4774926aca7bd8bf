"""`Session`: one client's session data, as a dict, with its id and state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, final

from trio.lowlevel import checkpoint

from .._errors import TrioSessionsError
from .._ids import new_session_id
from .._validate import check_seconds

__all__ = ["Session", "SessionNotLoaded"]

_NOT_LOADED = (
    "the session is not loaded yet: `await session.load()` before using it (the "
    "integrations also load it eagerly for the routes configured to)"
)


class SessionNotLoaded(TrioSessionsError, RuntimeError):
    """The session was used before it was loaded (see `Session.load`)."""

    def __init__(self, message: str = _NOT_LOADED) -> None:
        super().__init__(message)


@final
class Session(dict[str, Any]):
    """One client's session data, as a dict, plus its id and state.

    It is a real `dict` (``json.dumps(session)`` and ``dict(session)`` work) whose reads
    and writes are tracked. Obtained from `SessionManager.open` (or the integrations) and
    saved by `SessionManager.save`.

    A session that arrived with an id is *lazy*: nothing is read from the storage until
    ``await session.load()``; using the data before raises `SessionNotLoaded`. A request
    that never loads its session costs no storage operation.

    Saving applies the keys this request set or deleted onto the latest stored state
    (changes inside a value, ``session["cart"].append(x)``, count as setting that key):
    two concurrent requests that change different keys both persist; for the same key,
    the last save wins.
    """

    __slots__ = (
        "_accessed",
        "_created_at",
        "_deadline",
        "_ended",
        "_id",
        "_lifetime_request",
        "_loaded",
        "_loaded_id",
        "_loader",
        "_modified",
        "_new",
        "_now",
        "_payload",
        "_presented",
        "_refreshed_at",
        "_stale",
        "_transport",
        "_version",
    )

    def __init__(self, session_id: str, *, now: float) -> None:
        super().__init__()
        self._id = session_id
        self._now = now
        self._new = True
        self._loaded = True
        self._loader: Callable[[Session], Awaitable[None]] | None = None
        self._presented: str | None = None  # the (verified) id the client sent
        self._loaded_id: str | None = None  # the stored id this request's data came from
        self._version: int | None = None  # its version, for conditional writes
        self._payload: bytes | None = None  # its serialized data, to find what changed
        self._created_at = now
        self._refreshed_at = now
        self._deadline: float | None = None  # end of a "remember me" session
        self._lifetime_request: tuple[float | None] | None = None  # set by set_lifetime
        self._modified = False
        self._accessed = False
        self._stale = False
        self._ended = False
        self._transport = "cookie"

    def __repr__(self) -> str:
        # Never the id: it is a credential.
        if not self._loaded:
            return "<Session not loaded>"
        state = "new" if self._new else "loaded"
        return f"<Session {state}, {dict.__len__(self)} keys, modified={self._modified}>"

    # ---------------------------------------------------------------- loading

    @property
    def loaded(self) -> bool:
        """Whether the data is here (a new session is; a stored one after `load`)."""
        return self._loaded

    async def load(self) -> None:
        """Read the session from the storage, once; later calls only checkpoint.

        An unknown, expired or unreadable session comes back empty under a fresh id.
        Raises `~trio_sessions.StorageError` if the storage fails.
        """
        loader = self._loader
        if self._loaded or loader is None:
            await checkpoint()
            return
        await loader(self)

    def _use(self) -> None:
        if not self._loaded:
            raise SessionNotLoaded()
        self._accessed = True

    def _change(self) -> None:
        if not self._loaded:
            raise SessionNotLoaded()
        self._accessed = self._modified = True

    # ------------------------------------------------------------ the mapping

    def __getitem__(self, key: str) -> Any:
        self._use()
        return dict.__getitem__(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        self._use()
        return dict.get(self, key, default)

    def __contains__(self, key: object) -> bool:
        self._use()
        return dict.__contains__(self, key)

    def __iter__(self) -> Iterator[str]:
        self._use()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._use()
        return dict.__len__(self)

    def keys(self) -> Any:
        self._use()
        return dict.keys(self)

    def values(self) -> Any:
        self._use()
        return dict.values(self)

    def items(self) -> Any:  # json.dumps() reads a dict subclass through items()
        self._use()
        return dict.items(self)

    def copy(self) -> dict[str, Any]:
        self._use()
        return dict(dict.items(self))

    def __eq__(self, other: object) -> bool:
        self._use()
        return dict.__eq__(self, other)

    __hash__ = None

    def __setitem__(self, key: str, value: Any) -> None:
        self._change()
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        self._change()
        dict.__delitem__(self, key)

    def pop(self, key: str, *default: Any) -> Any:
        self._change()
        return dict.pop(self, key, *default)

    def popitem(self) -> tuple[str, Any]:
        self._change()
        return dict.popitem(self)

    def setdefault(self, key: str, default: Any = None) -> Any:
        self._change()
        return dict.setdefault(self, key, default)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        self._change()
        dict.update(self, other, **kwargs)

    def __ior__(self, other: Any) -> Session:  # type: ignore[override,misc]
        self.update(other)
        return self

    def clear(self) -> None:
        """End the session (logout), as `invalidate` does, when it was stored before.

        This matches Starlette, starsessions, Flask-Session and Django's ``flush``: the
        stored data is deleted, the cookie expired, and anything stored afterwards goes
        into a new session with a fresh id.
        """
        self._change()
        if self._loaded_id is not None:
            self.invalidate()
        else:
            dict.clear(self)

    # ------------------------------------------------------------------ state

    @property
    def transport(self) -> str:
        """How the client sends the id: ``"cookie"``, or ``"header"`` (see `SessionManager`)."""
        return self._transport

    @property
    def ending(self) -> bool:
        """Whether saving will log this session out (`invalidate` or `clear` was called)."""
        return self._ended

    @property
    def stored(self) -> bool:
        """Whether the data is stored under `id` (after a load that found it, or a save).

        False after a save whose changes were dropped because the session was logged
        out, rotated or expired by another request meanwhile.
        """
        return self._loaded and not self._new and self._loaded_id == self._id

    @property
    def id(self) -> str:
        """The session id: a credential, never to be logged."""
        return self._id

    @property
    def new(self) -> bool:
        """Whether this id was issued during this request (not stored yet)."""
        return self._new

    @property
    def modified(self) -> bool:
        """Whether the data was changed through the mapping (set it to force a write)."""
        return self._modified

    @modified.setter
    def modified(self, value: bool) -> None:
        self._modified = bool(value)

    @property
    def accessed(self) -> bool:
        """Whether the request read or changed the data (its response then varies by cookie)."""
        return self._accessed

    @accessed.setter
    def accessed(self, value: bool) -> None:
        # Quart (0.23 and later) sets this whenever its session proxy is looked up,
        # even by the framework itself after every request; the session tracks the
        # reads and writes of its data instead, so that a response that never used it
        # does not vary by cookie.
        pass

    @property
    def created_at(self) -> float:
        """When this session (or its current id, after `regenerate`) began, in epoch seconds."""
        return self._created_at

    @property
    def refreshed_at(self) -> float:
        """When the stored session was last written or refreshed, in epoch seconds."""
        return self._refreshed_at

    @property
    def persistent_until(self) -> float | None:
        """The end of a "remember me" session (epoch seconds), or ``None``."""
        if self._lifetime_request is None:
            return self._deadline
        (seconds,) = self._lifetime_request
        return None if seconds is None else self._now + seconds

    def set_lifetime(self, seconds: float | None) -> None:
        """Make this session persistent ("remember me") for *seconds* from now.

        The session then lives that long whatever the idle and absolute timeouts say
        (bounded by the manager's ``max_lifetime``), survives `regenerate`, and its
        cookie carries a ``Max-Age`` so it outlives a browser restart. ``None`` makes it
        an ordinary session again. Call it at login, together with `regenerate`.
        """
        check_seconds("seconds", seconds, allow_none=True)
        self._change()
        self._lifetime_request = (seconds,)

    def regenerate(self) -> None:
        """Move the data to a new id and delete the old one when the session is saved.

        Call it on login and on any change of privilege: an id an attacker planted or
        observed before then becomes worthless (session fixation). The absolute timeout
        starts again from now. If the session is logged out by another request before
        this one is saved, nothing is carried to the new id.
        """
        self._change()
        self._id = new_session_id()
        self._new = True
        self._created_at = self._refreshed_at = self._now

    def invalidate(self) -> None:
        """Delete the session (logout) when it is saved, and start an empty one.

        The old id dies on the server, also for requests already running with it: none
        of them can write it back or carry its data to a new id. Anything stored in the
        session after this goes into a new session with a fresh id.
        """
        self._change()
        if self._presented is not None:
            self._ended = True
        dict.clear(self)
        self._payload = None
        self._deadline = None
        self._lifetime_request = None
        self.regenerate()

    def _adopt(
        self,
        session_id: str,
        data: Mapping[str, Any] | Iterable[tuple[str, Any]],
        *,
        version: int | None,
        payload: bytes,
        created_at: float,
        refreshed_at: float,
        deadline: float | None,
    ) -> None:
        """Become the stored session *session_id* (called by the manager's loader)."""
        dict.update(self, data)
        self._id = self._loaded_id = session_id
        self._new = False
        self._version = version
        self._payload = payload
        self._created_at = created_at
        self._refreshed_at = refreshed_at
        self._deadline = deadline
        self._loaded = True
