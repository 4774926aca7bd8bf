"""The session layer: cookie value in, `Session` out, and back into a ``Set-Cookie`` header.

`SessionManager` turns the session cookie of a request into a `Session` (a mutable
mapping) and, after the request, saves what changed and says which ``Set-Cookie`` header
the response needs. Integrations (:mod:`trio_sessions.quart`, :mod:`trio_sessions.asgi`)
call `SessionManager.load` and `SessionManager.save` around each request.

What is stored under a session id is a small binary header (format, creation time, time
of the last refresh) followed by the serializer's bytes. Idle and absolute timeouts are
checked against those times on every load, whatever the storage's own expiry does.

Logout and id rotation leave a *tombstone* under a key derived from the dead id. A
request that loaded the session before the logout and saves after it writes the value
back, then finds the tombstone and deletes the value again: a logged-out session stays
logged out, even across server processes that share a storage.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import re
import struct
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    MutableMapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias, final

import trio
from trio.lowlevel import checkpoint

from ._abc import SessionStorage
from ._errors import SessionNotFound, StorageError
from ._ids import new_session_id

__all__ = [
    "CookieOptions",
    "JSONSerializer",
    "Serializer",
    "Session",
    "SessionManager",
    "StorageSource",
    "open_storage_source",
]

logger = logging.getLogger("trio_sessions")

#: A storage, or a zero-argument callable returning an async context manager that yields
#: one (for storages that own background tasks, e.g. ``lambda: open_cache_storage(...)``).
StorageSource: TypeAlias = (
    "SessionStorage | Callable[[], AbstractAsyncContextManager[SessionStorage]]"
)

# The ids this layer issues: exactly what `new_session_id` returns.
_ISSUED_ID = re.compile(r"[A-Za-z0-9_-]{43}", re.ASCII).fullmatch
_RECORD = struct.Struct("!4sdd")  # magic, created at, last refreshed at (wall-clock seconds)
_MAGIC = b"tss1"
_TOMBSTONE = b"dead"
_SIGNATURE_SALT = b"trio-sessions cookie signature\x00"
_CLEANUP_SECONDS = 10.0  # how long a shielded logout or post-write check may take
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", re.ASCII).fullmatch
_COOKIE_ATTRIBUTE = re.compile(r"[\x21-\x3a\x3c-\x7e]*", re.ASCII).fullmatch


def _tombstone_id(session_id: str) -> str:
    # 45 characters: never a valid cookie id (43), so a cookie can never name a tombstone.
    return "t-" + session_id


# ------------------------------------------------------------------ serializers


class Serializer(Protocol):
    """Turns session data into bytes and back. Never use pickle for this."""

    def dumps(self, data: dict[str, Any]) -> bytes: ...

    def loads(self, data: bytes) -> dict[str, Any]:
        """Return the data; raise `ValueError` (or a subclass) for bytes it cannot read."""
        ...


@final
class JSONSerializer:
    """The default serializer: compact UTF-8 JSON of a dict with string keys.

    Values round-trip as JSON does: tuples come back as lists, and ``NaN`` is refused.
    """

    __slots__ = ()

    def dumps(self, data: dict[str, Any]) -> bytes:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode()

    def loads(self, data: bytes) -> dict[str, Any]:
        value = json.loads(data)
        if not isinstance(value, dict):
            raise ValueError("session data is not a JSON object")
        return value


# ---------------------------------------------------------------------- cookies


@final
@dataclass(frozen=True, slots=True)
class CookieOptions:
    """How the session cookie is set. The defaults follow OWASP's advice.

    :param name: the cookie's name. A ``__Host-`` name makes browsers refuse the cookie unless
        it is ``Secure``, has ``Path=/`` and no ``Domain``, so a sibling subdomain cannot
        plant or shadow it; those settings are checked here.
    :param secure: send the cookie over HTTPS only. Browsers treat ``http://localhost`` and
        ``http://127.0.0.1`` as secure, so development works without turning it off.
    :param httponly: hide the cookie from JavaScript.
    :param samesite: ``"lax"``, ``"strict"`` or ``"none"`` (which requires ``secure``).
    :param path: the cookie's path.
    :param domain: the cookie's domain; ``None`` (the default) means this host only.
    :param persistent: give the cookie a ``Max-Age`` (the absolute timeout, which then must be
        set) so it survives a browser restart. By default it is a browser-session cookie.
    """

    name: str = "session"
    secure: bool = True
    httponly: bool = True
    samesite: Literal["lax", "strict", "none"] = "lax"
    path: str = "/"
    domain: str | None = None
    persistent: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _COOKIE_NAME(self.name):
            raise ValueError(f"invalid cookie name {self.name!r}")
        if self.samesite not in ("lax", "strict", "none"):
            raise ValueError(f"samesite must be 'lax', 'strict' or 'none' (got {self.samesite!r})")
        if not self.path.startswith("/") or not _COOKIE_ATTRIBUTE(self.path):
            raise ValueError(f"invalid cookie path {self.path!r}")
        if self.domain is not None and (not self.domain or not _COOKIE_ATTRIBUTE(self.domain)):
            raise ValueError(f"invalid cookie domain {self.domain!r}")
        if self.samesite == "none" and not self.secure:
            raise ValueError("samesite='none' requires secure=True (browsers drop the cookie)")
        lowered = self.name.lower()
        if lowered.startswith("__host-"):
            if not self.secure or self.path != "/" or self.domain is not None:
                raise ValueError(
                    "a __Host- cookie requires secure=True, path='/' and domain=None "
                    "(browsers drop it otherwise)"
                )
        elif lowered.startswith("__secure-") and not self.secure:
            raise ValueError("a __Secure- cookie requires secure=True (browsers drop it)")

    def _attributes(self) -> str:
        parts = [f"Path={self.path}"]
        if self.domain is not None:
            parts.append(f"Domain={self.domain}")
        if self.secure:
            parts.append("Secure")
        if self.httponly:
            parts.append("HttpOnly")
        parts.append(f"SameSite={self.samesite.capitalize()}")
        return "; ".join(parts)

    def set_cookie(self, value: str, max_age: float | None = None) -> str:
        """Return a ``Set-Cookie`` header value that sets the cookie to *value*."""
        age = "" if max_age is None else f"; Max-Age={max(0, math.floor(max_age))}"
        return f"{self.name}={value}{age}; {self._attributes()}"

    def delete_cookie(self) -> str:
        """Return a ``Set-Cookie`` header value that deletes the cookie."""
        return (
            f"{self.name}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; {self._attributes()}"
        )

    def find(self, cookie_header: str | None) -> str | None:
        """Return this cookie's value from a request's ``Cookie`` header, or ``None``.

        With several cookies of this name (set for different paths or domains) the first,
        which browsers send for the most specific path, wins.
        """
        if not cookie_header:
            return None
        for part in cookie_header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name == self.name:
                return value.strip().strip('"')
        return None


# ---------------------------------------------------------------------- sessions


@final
class Session(MutableMapping[str, Any]):
    """One client's session data, as a mutable mapping, plus its id and state.

    Obtained from `SessionManager.load`; saved by `SessionManager.save` (the integrations
    do both). Setting or deleting a key marks the session modified; changes inside a
    value (``session["cart"].append(x)``) are found too, by comparing the serialized data
    with what was loaded, as long as the session was read during the request.
    """

    __slots__ = (
        "_accessed",
        "_created_at",
        "_data",
        "_dead",
        "_id",
        "_modified",
        "_new",
        "_now",
        "_raw",
        "_refreshed_at",
        "_stale",
    )

    def __init__(
        self,
        session_id: str,
        data: dict[str, Any],
        *,
        new: bool,
        now: float,
        created_at: float,
        refreshed_at: float | None = None,
        raw: bytes | None = None,
    ) -> None:
        self._id = session_id
        self._data = data
        self._new = new
        self._now = now
        self._created_at = created_at
        self._refreshed_at = now if refreshed_at is None else refreshed_at
        self._raw = raw
        self._modified = False
        self._accessed = False
        self._stale = False
        self._dead: list[tuple[str, float]] = []

    def __repr__(self) -> str:
        # Never the id: it is a credential.
        state = "new" if self._new else "loaded"
        return f"<Session {state}, {len(self._data)} keys, modified={self._modified}>"

    # -- mapping

    def __getitem__(self, key: str) -> Any:
        self._accessed = True
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._accessed = self._modified = True
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        self._accessed = self._modified = True
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        self._accessed = True
        return iter(self._data)

    def __len__(self) -> int:
        self._accessed = True
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        self._accessed = True
        return key in self._data

    # -- state

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

    @property
    def created_at(self) -> float:
        """When this session (or its current id, after `regenerate`) began, in epoch seconds."""
        return self._created_at

    @property
    def refreshed_at(self) -> float:
        """When the stored session was last written or refreshed, in epoch seconds."""
        return self._refreshed_at

    def regenerate(self) -> None:
        """Move the data to a new id and delete the old one when the session is saved.

        Call it on login and on any change of privilege: an id an attacker planted or
        observed before then becomes worthless (session fixation). The absolute timeout
        starts again from now.
        """
        self._accessed = self._modified = True
        if not self._new:
            self._dead.append((self._id, self._created_at))
        self._id = new_session_id()
        self._new = True
        self._created_at = self._refreshed_at = self._now

    def invalidate(self) -> None:
        """Delete the session (logout) when it is saved, and start an empty one.

        The old id dies on the server, also for requests already running with it.
        Anything stored in the session after this goes into a new session with a new id.
        """
        self.regenerate()
        self._data.clear()


# ---------------------------------------------------------------------- signing


def _signing_keys(secret_key: str | bytes | Sequence[str | bytes] | None) -> list[bytes]:
    if secret_key is None:
        return []
    keys = [secret_key] if isinstance(secret_key, str | bytes) else list(secret_key)
    if not keys:
        raise ValueError("secret_key must not be an empty sequence")
    result = []
    for key in keys:
        raw = key.encode() if isinstance(key, str) else key
        if not isinstance(raw, bytes) or len(raw) < 16:
            raise ValueError("every secret key must be str or bytes of at least 16 bytes")
        # One derived key per purpose, so the same secret can serve other uses safely.
        result.append(hashlib.sha256(_SIGNATURE_SALT + raw).digest())
    return result


def _signature(key: bytes, session_id: str) -> str:
    digest = hmac.new(key, session_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@asynccontextmanager
async def _borrowed(storage: SessionStorage) -> AsyncIterator[SessionStorage]:
    await checkpoint()
    yield storage


def _as_context(source: StorageSource) -> AbstractAsyncContextManager[SessionStorage]:
    if isinstance(source, SessionStorage):
        return _borrowed(source)  # the caller owns and closes it
    if callable(source):
        return source()
    raise TypeError(
        "storage must be a SessionStorage or a callable returning an async context "
        f"manager that yields one, not {type(source).__name__}"
    )


async def open_storage_source(  # noqa: ASYNC114
    source: StorageSource,
    *,
    task_status: trio.TaskStatus[tuple[SessionStorage, Callable[[], Awaitable[None]]]] = (
        trio.TASK_STATUS_IGNORED
    ),
) -> None:
    """Keep *source* open in the calling nursery: ``await nursery.start(open_storage_source, s)``.

    Starts with ``(storage, stop)``; awaiting ``stop()`` closes a storage this task
    opened (a plain `SessionStorage` is left to its owner) and returns once it is closed.
    """
    stop_requested = trio.Event()
    stopped = trio.Event()

    async def stop() -> None:
        stop_requested.set()
        await stopped.wait()

    try:
        async with _as_context(source) as storage:
            task_status.started((storage, stop))
            await stop_requested.wait()
    finally:
        stopped.set()


@final
class _Unopened(SessionStorage):
    """Stands in for a storage that the server's startup has not opened yet."""

    __slots__ = ()

    max_size = 0

    def _fail(self) -> RuntimeError:
        return RuntimeError(
            "the session storage is not open yet: it opens when the server starts the "
            "application (lifespan startup), and closes when it stops"
        )

    async def write(self, session_id: str, provider: Any, *, ttl: float | None = None) -> None:
        raise self._fail()

    async def read(self, session_id: str, consumer: Any) -> Any:
        raise self._fail()

    async def invalidate(self, session_id: str) -> None:
        raise self._fail()

    async def write_bytes(self, session_id: str, data: bytes, *, ttl: float | None = None) -> None:
        raise self._fail()

    async def read_bytes(self, session_id: str) -> bytes:
        raise self._fail()

    async def aclose(self) -> None:
        await checkpoint()


UNOPENED: SessionStorage = _Unopened()


# ---------------------------------------------------------------------- manager


@final
class SessionManager:
    """Loads, checks, saves and rotates sessions kept in a `SessionStorage`.

    :param storage: where session data lives.
    :param idle_timeout: seconds of inactivity after which a session dies (OWASP suggests
        2-5 minutes for high-value applications, 15-30 minutes for low-risk ones).
    :param absolute_timeout: seconds after which a session dies however active it is;
        ``None`` for none (not recommended).
    :param secret_key: optional HMAC key(s) for signing the cookie value. With a list, the
        first key signs and every key verifies: put a new key first and keep old ones
        until their cookies have expired. Signing is defence in depth: ids are 256-bit
        random values either way, but a signed cookie is rejected before any storage read.
    :param cookie: the cookie's name and attributes.
    :param serializer: how data becomes bytes; JSON by default.
    :param touch_interval: how stale the recorded activity time may get before an unchanged
        session is refreshed (sliding expiry). Storages with a ``touch(id, ttl)`` method
        are touched on every request instead, which never rewrites the data.
    :param on_storage_error: ``"fail"`` (default): a storage failure while loading raises
        `StorageError`, which the integrations turn into a 503 response, so an outage
        never silently logs users out. ``"fresh"``: log it and continue with a new, empty
        session.
    :param clock: the current wall-clock time in seconds (timestamps are stored with the data,
        so they must survive restarts); inject one in tests.
    """

    def __init__(
        self,
        storage: SessionStorage,
        *,
        idle_timeout: float = 30 * 60,
        absolute_timeout: float | None = 12 * 60 * 60,
        secret_key: str | bytes | Sequence[str | bytes] | None = None,
        cookie: CookieOptions | None = None,
        serializer: Serializer | None = None,
        touch_interval: float | None = None,
        on_storage_error: Literal["fail", "fresh"] = "fail",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(storage, SessionStorage):
            raise TypeError(f"storage must be a SessionStorage, not {type(storage).__name__}")
        _check_seconds("idle_timeout", idle_timeout)
        if absolute_timeout is not None:
            _check_seconds("absolute_timeout", absolute_timeout)
        if touch_interval is None:
            touch_interval = min(60.0, idle_timeout / 10)
        elif touch_interval != 0:
            _check_seconds("touch_interval", touch_interval)
        if touch_interval >= idle_timeout:
            raise ValueError("touch_interval must be shorter than idle_timeout")
        if on_storage_error not in ("fail", "fresh"):
            raise ValueError(f"on_storage_error must be 'fail' or 'fresh' ({on_storage_error!r})")
        self.cookie = cookie if cookie is not None else CookieOptions()
        if self.cookie.persistent and absolute_timeout is None:
            raise ValueError("a persistent cookie needs an absolute_timeout for its Max-Age")
        self.storage = storage
        self._touch: Callable[[str, float], Awaitable[object]] | None = None
        self._bind(storage)
        self.idle_timeout = float(idle_timeout)
        self.absolute_timeout = None if absolute_timeout is None else float(absolute_timeout)
        self.touch_interval = float(touch_interval)
        self.serializer: Serializer = serializer if serializer is not None else JSONSerializer()
        self.on_storage_error = on_storage_error
        self._keys = _signing_keys(secret_key)
        self._clock = clock

    def _bind(self, storage: SessionStorage) -> None:
        """Use *storage* from now on (integrations open storages when the server starts)."""
        self.storage = storage
        touch = getattr(storage, "touch", None)
        self._touch = touch if callable(touch) else None

    # -- cookie values

    def cookie_value(self, session_id: str) -> str:
        """The cookie value for *session_id*: the id, plus its signature when signing."""
        if not self._keys:
            return session_id
        return f"{session_id}.{_signature(self._keys[0], session_id)}"

    def _session_id(self, cookie_value: str | None) -> str | None:
        """The id in a cookie value, or ``None`` if the value is malformed or tampered."""
        if not cookie_value:
            return None
        session_id, _, signature = cookie_value.partition(".")
        if not _ISSUED_ID(session_id):
            return None
        if not self._keys:
            return None if signature else session_id
        if not signature.isascii():  # (compare_digest refuses non-ASCII str)
            return None
        # Check every key (no early exit), so timing says nothing about which matched.
        valid = False
        for key in self._keys:
            valid |= hmac.compare_digest(_signature(key, session_id), signature)
        return session_id if valid else None

    # -- load

    def new_session(self) -> Session:
        """An empty session with a fresh id; nothing is stored until it holds data."""
        now = self._clock()
        return Session(new_session_id(), {}, new=True, now=now, created_at=now)

    async def load(self, cookie_value: str | None) -> Session:
        """Return the session a cookie value names, or a new one.

        Strict mode: a malformed, tampered, unknown or expired value is never adopted;
        the request gets an empty session under a fresh id.
        """
        session_id = self._session_id(cookie_value)
        if session_id is None:
            await checkpoint()
            return self.new_session()
        try:
            raw = await self.storage.read_bytes(session_id)
        except SessionNotFound:
            await checkpoint()
            return self.new_session()
        except (StorageError, trio.ClosedResourceError) as exc:
            if self.on_storage_error == "fail":
                logger.error("session storage failed while loading a session: %r", exc)
                raise
            logger.error("session storage failed; continuing with a new session: %r", exc)
            await checkpoint()
            return self.new_session()
        now = self._clock()
        record = self._parse(raw)
        if record is None:
            logger.warning("discarding a session whose stored data cannot be read")
            return self.new_session()
        created_at, refreshed_at, payload = record
        if self._expires_at(created_at, refreshed_at) <= now:
            await self._discard(session_id)
            return self.new_session()
        try:
            data = self.serializer.loads(payload)
        except ValueError:
            logger.warning("discarding a session whose stored data cannot be deserialized")
            return self.new_session()
        session = Session(
            session_id,
            data,
            new=False,
            now=now,
            created_at=created_at,
            refreshed_at=refreshed_at,
            raw=raw,
        )
        session._stale = now - refreshed_at >= self.touch_interval
        return session

    async def load_from_header(self, cookie_header: str | None) -> Session:
        """`load` with the value of this manager's cookie in a ``Cookie`` request header."""
        return await self.load(self.cookie.find(cookie_header))

    def _parse(self, raw: bytes) -> tuple[float, float, bytes] | None:
        if len(raw) < _RECORD.size:
            return None
        magic, created_at, refreshed_at = _RECORD.unpack_from(raw)
        if magic != _MAGIC or not (math.isfinite(created_at) and math.isfinite(refreshed_at)):
            return None
        return created_at, refreshed_at, raw[_RECORD.size :]

    def expires_at(self, session: Session) -> float:
        """When *session* dies unless refreshed before (epoch seconds; ``inf`` for never)."""
        end = session.refreshed_at + self.idle_timeout
        if self.absolute_timeout is not None:
            end = min(end, session.created_at + self.absolute_timeout)
        return end

    def _expires_at(self, created_at: float, refreshed_at: float) -> float:
        # With a touch-capable storage, the storage's ttl carries idle expiry (touches do
        # not rewrite the recorded time); the absolute limit is always checked here.
        idle_end = math.inf if self._touch is not None else refreshed_at + self.idle_timeout
        if self.absolute_timeout is not None:
            return min(idle_end, created_at + self.absolute_timeout)
        return idle_end

    def _ttl(self, created_at: float, refreshed_at: float, now: float) -> float:
        """Seconds the stored value may live, counted from the request's start time."""
        end = refreshed_at + self.idle_timeout
        if self.absolute_timeout is not None:
            end = min(end, created_at + self.absolute_timeout)
        return end - now

    # -- save

    async def save(self, session: Session) -> str | None:
        """Store what changed; return the ``Set-Cookie`` header value to send, if any.

        A session that was not changed is not written (only refreshed for sliding expiry
        when due) and needs no header. Raises `StorageError` if the storage fails.
        """
        now = self._clock()
        header: str | None = None
        dead, session._dead = session._dead, []
        for old_id, old_created_at in dead:
            await self._bury(old_id, old_created_at, now)
        if session._new:
            if session._data:
                raw = self._record(session, session._created_at, session._now)
                ttl = self._ttl(session._created_at, session._now, now)
                await self.storage.write_bytes(session._id, raw, ttl=ttl)
                session._new, session._raw = False, raw
                session._refreshed_at = session._now
                max_age = self.absolute_timeout if self.cookie.persistent else None
                header = self.cookie.set_cookie(self.cookie_value(session._id), max_age)
            else:
                if dead:  # logged out and nothing new stored: the browser drops the cookie
                    header = self.cookie.delete_cookie()
                await checkpoint()
            return header
        changed = session._modified
        if not changed and session._accessed and session._raw is not None:
            changed = self.serializer.dumps(session._data) != session._raw[_RECORD.size :]
        if changed:
            raw = self._record(session, session._created_at, session._now)
            await self._rewrite(session, raw, now)
        elif session._stale and self._touch is None and session._raw is not None:
            raw = _RECORD.pack(_MAGIC, session._created_at, session._now)
            await self._rewrite(session, raw + session._raw[_RECORD.size :], now)
        elif self._touch is not None:
            ttl = self._ttl(session._created_at, session._now, now)
            try:
                if ttl > 0:
                    await self._touch(session._id, ttl)
                else:
                    await checkpoint()
            except SessionNotFound:  # gone meanwhile: touching never recreates it
                await checkpoint()
        else:
            await checkpoint()
        session._modified = session._stale = False
        return header

    def _record(self, session: Session, created_at: float, refreshed_at: float) -> bytes:
        return _RECORD.pack(_MAGIC, created_at, refreshed_at) + self.serializer.dumps(session._data)

    async def _rewrite(self, session: Session, raw: bytes, now: float) -> None:
        """Write an existing session back, unless a logout or rotation killed it meanwhile."""
        session_id = session._id
        ttl = self._ttl(session._created_at, session._now, now)
        if ttl <= 0:  # the request outlived the session
            await self._discard(session_id)
            return
        await self.storage.write_bytes(session_id, raw, ttl=ttl)
        session._raw, session._refreshed_at = raw, session._now
        # The logout writes its tombstone before deleting the value, so if the delete
        # came before our write, the tombstone is visible now: undo the write.
        with trio.move_on_after(_CLEANUP_SECONDS, shield=True):
            try:
                await self.storage.read_bytes(_tombstone_id(session_id))
            except SessionNotFound:
                return
            await self.storage.invalidate(session_id)
            logger.info("a request saved a session that was logged out meanwhile; dropped it")

    async def _bury(self, session_id: str, created_at: float, now: float) -> None:
        """Kill an id for good: tombstone first, then delete the value."""
        # A request that loaded the session at time <= now writes a value that lives at
        # most idle_timeout from its start (and never past the absolute limit).
        ttl = self.idle_timeout + self.touch_interval
        if self.absolute_timeout is not None:
            ttl = min(ttl, created_at + self.absolute_timeout - now)
        await checkpoint()  # a cancelled logout did not start; a started one completes
        with trio.move_on_after(_CLEANUP_SECONDS, shield=True) as scope:
            if ttl > 0:
                await self.storage.write_bytes(_tombstone_id(session_id), _TOMBSTONE, ttl=ttl)
            await self.storage.invalidate(session_id)
        if scope.cancelled_caught:
            raise StorageError("session storage did not complete a logout in time")

    async def _discard(self, session_id: str) -> None:
        try:
            await self.storage.invalidate(session_id)
        except StorageError as exc:  # expired anyway; the storage's ttl removes it later
            logger.warning("could not delete an expired session: %r", exc)
            await checkpoint()

    # -- convenience

    async def delete(self, session_id: str) -> None:
        """Kill a session by id from outside a request (e.g. an administrator's logout)."""
        now = self._clock()
        try:
            raw = await self.storage.read_bytes(session_id)
        except SessionNotFound:
            await checkpoint()
            return
        record = self._parse(raw)
        await self._bury(session_id, record[0] if record else now, now)


def _check_seconds(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not (0 < value < math.inf):
        raise ValueError(f"{name} must be a positive, finite number of seconds (got {value!r})")
