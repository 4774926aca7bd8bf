"""`SessionManager`: an id from the client in, a `Session` out, and its changes saved.

What is stored under a session id is a small binary header (format, creation time, time of
the last refresh, end of a "remember me" lifetime) followed by the serializer's bytes.
Timeouts are checked against those times on every load, whatever the storage's own
expiry does.

Saving relies on conditional writes (`~trio_sessions.ConditionalStorage`): a session is
written only if it is still the version this request loaded. When another request wrote
it meanwhile, the keys this request changed are applied onto the latest stored state and
the write is tried again; when it was invalidated (logout), expired or rotated away
meanwhile, nothing is written. So a logout always sticks, and concurrent requests that
change different keys never lose each other's writes. A storage without conditional
writes gets the same algorithm with a read before each write (`_Unconditional`), which
leaves a short window for both races.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol, final

import trio
from trio.lowlevel import checkpoint

from .._abc import SessionStorage, Versioned, conditional
from .._errors import (
    UNAVAILABLE,
    SessionNotFound,
    SessionTooLarge,
    StorageError,
    TrioSessionsError,
    WriteConflict,
)
from .._ids import new_session_id
from .._validate import check_seconds
from ._cookies import CookieOptions
from ._serializers import JSONSerializer, Serializer
from ._session import Session
from ._signing import SecretKey, Signer

__all__ = ["SessionDataError", "SessionManager"]

logger = logging.getLogger("trio_sessions")

# The ids this layer issues: exactly what `new_session_id` returns.
_ISSUED_ID = re.compile(r"[A-Za-z0-9_-]{43}", re.ASCII).fullmatch
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", re.ASCII).fullmatch
# magic, created at, last refreshed at, end of a persistent lifetime (0: none); epoch seconds.
_RECORD = struct.Struct("!4sddd")
_MAGIC = b"tss2"
_RECORD_V1 = struct.Struct("!4sdd")
_MAGIC_V1 = b"tss1"
# Left under an id that was rotated away, for a short while: a logout that arrives with
# the old id (a request racing the rotation) follows it and ends the new id too.
_MOVED = b"tsmv"
_FORWARD_SECONDS = 60.0
_CLEANUP_SECONDS = 10.0  # how long a shielded logout or clean-up may take
_ATTEMPTS = 8  # conditional writes tried before a save gives up
_REVOKING_MAX = 10_000  # failed logouts remembered, to retry before the id is used again
_DELETED: Any = object()


class SessionDataError(TrioSessionsError, ValueError):
    """The application put something in the session that cannot be stored.

    A value the serializer refuses, or data larger than the storage's ``max_size``. The
    stored session is left as it was (the user stays logged in); the message names the
    key and the sizes. The integrations log it and answer 500.
    """


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest()) | 1


class _CompareAndSet(Protocol):
    """The conditional operations the manager uses (`ConditionalStorage` has them)."""

    async def read_versioned(self, session_id: str) -> Versioned: ...

    async def write_bytes_if(
        self, session_id: str, data: bytes, *, version: int | None, ttl: float | None = None
    ) -> int: ...

    async def invalidate_if(self, session_id: str, *, version: int) -> None: ...


@final
class _Unconditional:
    """Conditional writes emulated with a read first: for storages without them.

    Not atomic: a write or logout landing between the read and the write is missed.
    """

    __slots__ = ("_storage",)

    def __init__(self, storage: SessionStorage) -> None:
        self._storage = storage

    async def read_versioned(self, session_id: str) -> Versioned:
        data = await self._storage.read_bytes(session_id)
        return Versioned(data, _digest(data))

    async def _expect(self, session_id: str, version: int) -> None:
        try:
            data = await self._storage.read_bytes(session_id)
        except SessionNotFound:
            raise WriteConflict() from None
        if _digest(data) != version:
            raise WriteConflict()

    async def write_bytes_if(
        self, session_id: str, data: bytes, *, version: int | None, ttl: float | None = None
    ) -> int:
        if version is not None:  # (ids this layer creates are fresh: no check for those)
            await self._expect(session_id, version)
        await self._storage.write_bytes(session_id, data, ttl=ttl)
        return _digest(data)

    async def invalidate_if(self, session_id: str, *, version: int) -> None:
        await self._expect(session_id, version)
        await self._storage.invalidate(session_id)


class _Stored:
    """A stored session, parsed."""

    __slots__ = ("created_at", "data", "deadline", "refreshed_at", "version")

    def __init__(
        self,
        version: int,
        created_at: float,
        refreshed_at: float,
        deadline: float | None,
        data: dict[str, Any],
    ) -> None:
        self.version = version
        self.created_at = created_at
        self.refreshed_at = refreshed_at
        self.deadline = deadline
        self.data = data


@final
class SessionManager:
    """Loads, checks, saves and rotates sessions kept in a `SessionStorage`.

    :param storage: where session data lives.
    :param idle_timeout: seconds of inactivity after which a session dies (OWASP suggests
        2-5 minutes for high-value applications, 15-30 minutes for low-risk ones).
    :param absolute_timeout: seconds after which a session dies however active it is;
        ``None`` for none (not recommended).
    :param max_lifetime: the longest lifetime `Session.set_lifetime` ("remember me") may
        give a session; longer requests are cut to it.
    :param secret_key: optional HMAC key(s) for signing the cookie value. With a list, the
        first key signs and every key verifies: put a new key first and keep old ones
        until their cookies have expired. Signing is defence in depth: ids are 256-bit
        random values either way, but a signed cookie is rejected before any storage read.
    :param cookie: the cookie's name and attributes.
    :param header: the name of a request/response header that carries the session id
        instead of a cookie (Ktor's ``header`` transport; e.g. ``"X-Session-Id"``), for API
        and mobile clients. A request that sends this header (even empty) uses it and
        gets the (rotated) id back in the same header, an empty value when the session
        ended; other requests use the cookie. ``None`` (the default): cookies only.
    :param cookies: whether the cookie transport is on (``False`` with a ``header``: the
        id travels only in the header).
    :param serializer: how data becomes bytes; JSON by default.
    :param touch_interval: how stale the recorded activity time may get before an unchanged
        session is written again to slide its idle timeout (at most one write per session
        per interval).
    :param on_storage_error: ``"fail"`` (default): a storage failure while loading raises
        `StorageError`, which the integrations turn into a 503 response, so an outage
        never silently logs users out. ``"fresh"``: log it and continue with a new, empty
        session.
    :param wall_clock: the current wall-clock time in seconds (timestamps are stored with the
        data, so they must survive restarts); inject one in tests.
    """

    def __init__(
        self,
        storage: SessionStorage,
        *,
        idle_timeout: float = 30 * 60,
        absolute_timeout: float | None = 12 * 60 * 60,
        max_lifetime: float = 30 * 24 * 60 * 60,
        secret_key: SecretKey | None = None,
        cookie: CookieOptions | None = None,
        header: str | None = None,
        cookies: bool = True,
        serializer: Serializer | None = None,
        touch_interval: float | None = None,
        on_storage_error: Literal["fail", "fresh"] = "fail",
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(storage, SessionStorage):
            raise TypeError(f"storage must be a SessionStorage, not {type(storage).__name__}")
        self.idle_timeout = float(check_seconds("idle_timeout", idle_timeout))
        self.absolute_timeout = (
            None
            if absolute_timeout is None
            else float(check_seconds("absolute_timeout", absolute_timeout))
        )
        self.max_lifetime = float(check_seconds("max_lifetime", max_lifetime))
        if touch_interval is None:
            touch_interval = min(60.0, self.idle_timeout / 10)
        elif touch_interval != 0:
            touch_interval = check_seconds("touch_interval", touch_interval)
        if touch_interval >= self.idle_timeout:
            raise ValueError("touch_interval must be shorter than idle_timeout")
        self.touch_interval = float(touch_interval)
        if on_storage_error not in ("fail", "fresh"):
            raise ValueError(f"on_storage_error must be 'fail' or 'fresh' ({on_storage_error!r})")
        self.on_storage_error = on_storage_error
        if cookie is not None and not isinstance(cookie, CookieOptions):
            raise TypeError(f"cookie must be a CookieOptions, not {type(cookie).__name__}")
        self.cookie = cookie if cookie is not None else CookieOptions()
        if header is not None and (not isinstance(header, str) or not _HEADER_NAME(header)):
            raise ValueError(
                f"header must be an HTTP header name such as 'X-Session-Id' ({header!r})"
            )
        if not isinstance(cookies, bool):
            raise TypeError(f"cookies must be True or False, not {cookies!r}")
        if not cookies and header is None:
            raise ValueError("with cookies=False, give a header= to carry the session id")
        self.header = header
        self.cookies = cookies
        if self.cookie.persistent and self.absolute_timeout is None:
            raise ValueError("a persistent cookie needs an absolute_timeout for its Max-Age")
        self.serializer: Serializer = serializer if serializer is not None else JSONSerializer()
        if not callable(getattr(self.serializer, "dumps", None)) or not callable(
            getattr(self.serializer, "loads", None)
        ):
            raise TypeError("serializer must have dumps(dict) -> bytes and loads(bytes) -> dict")
        if not callable(wall_clock):
            raise TypeError("wall_clock must be a callable returning seconds since the epoch")
        self._signer = Signer(secret_key)
        self._wall_clock = wall_clock
        self._revoking: OrderedDict[str, None] = OrderedDict()
        self.storage = storage
        self._store: _CompareAndSet = _Unconditional(storage)
        self._bind(storage)

    def _bind(self, storage: SessionStorage) -> None:
        """Use *storage* from now on (integrations open storages when the server starts)."""
        self.storage = storage
        self._store = conditional(storage) or _Unconditional(storage)

    @property
    def conditional_writes(self) -> bool:
        """Whether the storage offers atomic conditional writes (the full guarantees)."""
        return not isinstance(self._store, _Unconditional)

    # ------------------------------------------------------------ client values

    def cookie_value(self, session_id: str) -> str:
        """The value the client keeps for *session_id*: the id, plus its signature."""
        return self._signer.sign(session_id)

    def _session_id(self, value: str | None) -> str | None:
        """The id in a client's value, or ``None`` if it is malformed or tampered."""
        if not value or not isinstance(value, str):
            return None
        session_id, _, signature = value.partition(".")
        if not _ISSUED_ID(session_id):
            return None
        return session_id if self._signer.verify(session_id, signature) else None

    # ------------------------------------------------------------------ load

    def new_session(self) -> Session:
        """An empty session with a fresh id; nothing is stored until it holds data."""
        return Session(new_session_id(), now=self._wall_clock())

    def open(self, values: str | Iterable[str] | None) -> Session:
        """The session the client's value(s) name, not loaded yet; no I/O.

        With several values (several cookies of the session's name), the first one that
        verifies wins. Strict mode: a malformed or tampered value is never adopted, and
        one that names no live session gives an empty session under a fresh id when it
        is loaded.
        """
        candidates = [values] if isinstance(values, str) or values is None else values
        for value in candidates:
            session_id = self._session_id(value)
            if session_id is not None:
                session = Session(session_id, now=self._wall_clock())
                session._presented = session_id
                session._loaded = False
                session._loader = self._load_into
                return session
        return self.new_session()

    async def load(self, value: str | Iterable[str] | None) -> Session:
        """`open` and `Session.load` in one: the session, loaded."""
        session = self.open(value)
        await session.load()
        return session

    async def load_from_header(self, cookie_header: str | None) -> Session:
        """`load` with this manager's cookie in a request's ``Cookie`` header."""
        return await self.load(self.cookie.find_all(cookie_header))

    def open_request(self, headers: Iterable[tuple[str, str]]) -> Session:
        """`open` the session of a request, from its headers (name, value); no I/O.

        The id comes from the ``header`` transport if it is on and the request sends
        that header, else from the cookie (if cookies are on). `Session.transport` says
        which, and `response_header` names the header that `save`'s value goes in.
        """
        wanted = self.header.lower() if self.header is not None else None
        cookie_parts: list[str] = []
        header_values: list[str] = []
        via_header = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == "cookie":
                cookie_parts.append(value)
            elif lowered == wanted:
                via_header = True
                header_values.extend(part.strip() for part in value.split(","))
        if via_header or not self.cookies:
            session = self.open(header_values)
            session._transport = "header"
        else:
            session = self.open(self.cookie.find_all("; ".join(cookie_parts)))
        return session

    def response_header(self, session: Session) -> str:
        """The response header that carries `save`'s value for *session*."""
        if session._transport == "header":
            assert self.header is not None
            return self.header
        return "Set-Cookie"

    def vary(self, session: Session) -> str:
        """The request header a response that used *session* varies by."""
        return self.header if session._transport == "header" and self.header else "Cookie"

    async def _load_into(self, session: Session) -> None:
        session_id = session._id
        if session_id in self._revoking:
            await self._revoke(session_id, None)  # raises StorageError while still failing
            self._fresh(session)
            return
        try:
            found = await self._store.read_versioned(session_id)
        except SessionNotFound:
            self._fresh(session)
            return  # noqa: ASYNC910 (storage methods checkpoint, also when they raise)
        except UNAVAILABLE as exc:
            if self.on_storage_error == "fail":
                raise
            logger.error("session storage failed; continuing with a new session", exc_info=exc)
            self._fresh(session)
            return  # noqa: ASYNC910 (storage methods checkpoint, also when they raise)
        stored = self._parse(found, session._now)
        if stored is None:
            self._fresh(session)
            return
        session._adopt(
            session_id,
            stored.data,
            version=stored.version,
            payload=found.data[self._header_size(found.data) :],
            created_at=stored.created_at,
            refreshed_at=stored.refreshed_at,
            deadline=stored.deadline,
        )
        session._stale = session._now - stored.refreshed_at >= self.touch_interval

    def _fresh(self, session: Session) -> None:
        session._id = new_session_id()
        session._loaded = True

    @staticmethod
    def _header_size(raw: bytes) -> int:
        return _RECORD_V1.size if raw[:4] == _MAGIC_V1 else _RECORD.size

    def _parse(self, found: Versioned, now: float) -> _Stored | None:
        """The stored session, or ``None`` if it is unreadable or expired."""
        raw = found.data
        if raw[:4] == _MOVED:
            return None  # rotated away: the old id names no session
        if raw[:4] == _MAGIC and len(raw) >= _RECORD.size:
            _, created_at, refreshed_at, deadline = _RECORD.unpack_from(raw)
        elif raw[:4] == _MAGIC_V1 and len(raw) >= _RECORD_V1.size:
            _, created_at, refreshed_at = _RECORD_V1.unpack_from(raw)
            deadline = 0.0
        else:
            logger.warning("discarding a session whose stored data has an unknown format")
            return None
        if not all(map(math.isfinite, (created_at, refreshed_at, deadline))):
            logger.warning("discarding a session whose stored times are not numbers")
            return None
        stored_deadline = deadline or None
        if self._expires_at(created_at, refreshed_at, stored_deadline) <= now:
            return None
        try:
            data = self.serializer.loads(raw[self._header_size(raw) :])
            if not isinstance(data, dict):
                raise TypeError(f"the serializer returned {type(data).__name__}, not a dict")
        except Exception as exc:  # any failure of the serializer: a fresh session
            logger.warning("discarding a session whose stored data cannot be read: %r", exc)
            return None
        return _Stored(found.version, created_at, refreshed_at, stored_deadline, data)

    # ------------------------------------------------------------------ times

    def _expires_at(self, created_at: float, refreshed_at: float, deadline: float | None) -> float:
        if deadline is not None:  # "remember me": its own lifetime, whatever the timeouts
            return deadline
        end = refreshed_at + self.idle_timeout
        if self.absolute_timeout is not None:
            end = min(end, created_at + self.absolute_timeout)
        return end

    def expires_at(self, session: Session) -> float:
        """When *session* dies unless refreshed before (epoch seconds; ``inf`` for never)."""
        return self._expires_at(session.created_at, session.refreshed_at, self._deadline(session))

    def _deadline(self, session: Session) -> float | None:
        requested = session._lifetime_request
        if requested is None:
            return session._deadline
        (seconds,) = requested
        return None if seconds is None else session._now + min(seconds, self.max_lifetime)

    def _max_age(self, session: Session, now: float) -> float | None:
        deadline = self._deadline(session)
        if deadline is not None:
            return deadline - now
        if self.cookie.persistent and self.absolute_timeout is not None:
            return session._created_at + self.absolute_timeout - now
        return None

    # ------------------------------------------------------------------ save

    async def save(self, session: Session) -> str | None:
        """Store what changed; return the response header value to send, if any.

        For a session that came by cookie this is a ``Set-Cookie`` value; with the
        ``header`` transport, the value of that header (the signed id, or an empty value
        when the session ended). `response_header` names the header. A session that was
        not loaded or not changed is not written (only refreshed for sliding expiry when
        due) and needs no header. Raises `StorageError` if the
        storage fails and `SessionDataError` if the data cannot be stored; in both cases
        the stored session is left as it was (except a logout, which happens first).
        """
        if not session._loaded:
            await checkpoint()  # never touched: nothing to do
            return None
        now = self._wall_clock()
        ended = False
        if session._ended:
            old_id = session._presented
            assert old_id is not None
            await self._end(old_id, session._version if session._loaded_id == old_id else None)
            session._ended = False
            session._loaded_id = session._version = session._payload = None
            ended = True
        if session._loaded_id is None:
            if not dict.__len__(session):
                await checkpoint()
                # Logged out and nothing new stored: the client drops the id.
                return self._deleted(session) if ended else None
            await self._create(session, now)
            return self._set_cookie(session, now)
        if session._new:
            if await self._rotate(session, now):
                return self._set_cookie(session, now)
            return None
        pending = self._pending(session)
        if pending is None:
            if session._stale:
                await self._refresh(session, now)
            else:
                await checkpoint()
            return None
        if await self._merge(session, *pending, now) and session._lifetime_request is not None:
            return self._set_cookie(session, now)
        return None

    def _set_cookie(self, session: Session, now: float) -> str:
        if session._transport == "header":
            return self.cookie_value(session._id)
        return self.cookie.set_cookie(self.cookie_value(session._id), self._max_age(session, now))

    def _deleted(self, session: Session) -> str:
        return "" if session._transport == "header" else self.cookie.delete_cookie()

    def deletion(self, session: Session) -> str:
        """The response header value that tells the client to drop *session*'s id."""
        return self._deleted(session)

    def _dumps(self, data: dict[str, Any]) -> bytes:
        """Serialize, or raise `SessionDataError` naming the key the serializer refused."""
        try:
            return self.serializer.dumps(data)
        except Exception as exc:
            culprit = "a key"
            for key, value in data.items():
                try:
                    self.serializer.dumps({key: value})
                except Exception:
                    culprit = f"key {key!r} ({type(value).__name__})"
                    break
            raise SessionDataError(
                f"the session cannot be saved: the serializer refused {culprit}: {exc!r}; "
                "store only values it can serialize (JSON: str, numbers, bool, None, "
                "lists and dicts with str keys)"
            ) from exc

    def _record(
        self, created_at: float, refreshed_at: float, deadline: float | None, payload: bytes
    ) -> bytes:
        header = _RECORD.pack(_MAGIC, created_at, refreshed_at, deadline or 0.0)
        raw = header + payload
        if len(raw) > self.storage.max_size:
            raise self._too_large(len(raw))
        return raw

    def _too_large(self, size: int) -> SessionDataError:
        return SessionDataError(
            f"the session cannot be saved: {size} bytes serialized, above the storage's "
            f"max_size of {self.storage.max_size} bytes; keep large data elsewhere and "
            "store a reference in the session"
        )

    def _pending(self, session: Session) -> tuple[dict[str, Any], bytes] | None:
        """The data this request leaves and their payload; ``None`` if nothing is to save."""
        if not (session._accessed or session._modified):
            return None
        data = dict(dict.items(session))
        payload = self._dumps(data)
        if payload == session._payload and not (
            session._modified or session._lifetime_request is not None
        ):
            return None
        return data, payload

    def _changes(self, session: Session, data: dict[str, Any], payload: bytes) -> dict[str, Any]:
        """The keys this request set (value) or deleted (`_DELETED`) to leave *data*.

        Against what it loaded (none if *payload*, the serialized *data*, is what it
        loaded); needed only when the stored session changed meanwhile.
        """
        if payload == session._payload:
            return {}
        try:
            original = self.serializer.loads(session._payload or b"{}")
        except Exception:
            original = {}
        changes = {
            key: value for key, value in data.items() if original.get(key, _DELETED) != value
        }
        changes.update((key, _DELETED) for key in original.keys() - data.keys())
        return changes

    def _apply(self, base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        merged = dict(base)
        for key, value in changes.items():
            if value is _DELETED:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    def _ttl(
        self, created_at: float, refreshed_at: float, deadline: float | None, now: float
    ) -> float:
        return self._expires_at(created_at, refreshed_at, deadline) - now

    async def _latest(self, session_id: str, now: float) -> _Stored | None:
        """The stored session now, or ``None`` if it ended (logout, expiry, rotation)."""
        try:
            found = await self._store.read_versioned(session_id)
        except SessionNotFound:
            return None  # noqa: ASYNC910 (storage methods checkpoint, also when they raise)
        return self._parse(found, now)

    async def _create(self, session: Session, now: float) -> None:
        data = dict(dict.items(session))
        payload = self._dumps(data)
        deadline = self._deadline(session)
        raw = self._record(session._created_at, session._now, deadline, payload)
        ttl = self._ttl(session._created_at, session._now, deadline, now)
        if ttl <= 0:
            raise StorageError("the request took longer than the session may live")
        version = await self._write(session._id, raw, None, ttl)
        session._adopt(
            session._id,
            (),
            version=version,
            payload=payload,
            created_at=session._created_at,
            refreshed_at=session._now,
            deadline=deadline,
        )
        session._lifetime_request = None

    async def _write(self, session_id: str, raw: bytes, version: int | None, ttl: float) -> int:
        try:
            return await self._store.write_bytes_if(session_id, raw, version=version, ttl=ttl)
        except SessionTooLarge as exc:
            raise self._too_large(len(raw)) from exc

    async def _merge(
        self, session: Session, data: dict[str, Any], payload: bytes, now: float
    ) -> bool:
        """Write this request's changes onto the latest stored state; whether it was stored.

        *data* is what the request leaves in the session, *payload* its serialization.
        """
        session_id = session._id
        version = session._version
        created_at = session._created_at
        deadline = self._deadline(session)
        changes: dict[str, Any] | None = None  # worked out at the first conflict
        mine = data, payload
        for _ in range(_ATTEMPTS):
            raw = self._record(created_at, session._now, deadline, payload)
            ttl = self._ttl(created_at, session._now, deadline, now)
            if ttl <= 0:
                await checkpoint()
                return self._dropped(session, "it expired during the request")
            try:
                version = await self._write(session_id, raw, version, ttl)
            except WriteConflict:
                latest = await self._latest(session_id, now)
                if latest is None:
                    return self._dropped(session, "it was logged out or rotated meanwhile")
                version, created_at = latest.version, latest.created_at
                if changes is None:
                    changes = self._changes(session, *mine)
                data, payload, deadline = self._rebase(session, latest, changes, deadline)
                continue
            self._settle(session, session_id, data, payload, version, created_at, deadline)
            return True
        raise StorageError(
            f"the session changed under {_ATTEMPTS} saves in a row; this request's changes "
            "were not saved"
        )

    def _rebase(
        self, session: Session, latest: _Stored, changes: dict[str, Any], deadline: float | None
    ) -> tuple[dict[str, Any], bytes, float | None]:
        """This request's changes on top of *latest*: data, payload, lifetime's end."""
        data = self._apply(latest.data, changes)
        keep = session._lifetime_request is not None  # set by this request: it wins
        return data, self._dumps(data), deadline if keep else latest.deadline

    @staticmethod
    def _settle(
        session: Session,
        session_id: str,
        data: dict[str, Any],
        payload: bytes,
        version: int,
        created_at: float,
        deadline: float | None,
    ) -> None:
        """The session is what was just stored under *session_id*."""
        dict.clear(session)
        session._adopt(
            session_id,
            data,
            version=version,
            payload=payload,
            created_at=created_at,
            refreshed_at=session._now,
            deadline=deadline,
        )
        session._lifetime_request = None
        session._modified = session._stale = False

    def _dropped(self, session: Session, why: str) -> bool:
        logger.info("a request's session changes were not saved: %s", why)
        session._loaded_id = session._version = session._payload = None
        return False

    async def _rotate(self, session: Session, now: float) -> bool:
        """Move the loaded session to its new id, with this request's changes on top."""
        old_id = session._loaded_id
        old_version = session._version
        assert old_id is not None
        assert old_version is not None
        new_id = session._id
        deadline = self._deadline(session)
        data = dict(dict.items(session))
        payload = self._dumps(data)
        changes: dict[str, Any] | None = None  # worked out at the first conflict
        mine = data, payload
        new_version: int | None = None
        try:
            for _ in range(_ATTEMPTS):
                raw = self._record(session._created_at, session._now, deadline, payload)
                ttl = self._ttl(session._created_at, session._now, deadline, now)
                if ttl <= 0:
                    raise StorageError("the request took longer than the session may live")
                # The copy first: until the old id is deleted, nobody knows the new one.
                try:
                    new_version = await self._write(new_id, raw, new_version, ttl)
                except WriteConflict:
                    raise StorageError("a fresh session id was taken meanwhile") from None
                # Then the old id, if it is still what this request built on, becomes a
                # forward to the new one (which a racing logout follows).
                forward = _MOVED + new_id.encode()
                try:
                    await self._store.write_bytes_if(
                        old_id, forward, version=old_version, ttl=_FORWARD_SECONDS
                    )
                except WriteConflict:
                    latest = await self._latest(old_id, now)
                    if latest is None:  # logged out (or rotated) meanwhile: carry nothing
                        with trio.move_on_after(_CLEANUP_SECONDS, shield=True):
                            await self._discard(new_id, new_version)
                        new_version = None
                        return self._dropped(session, "it was logged out or rotated meanwhile")
                    old_version = latest.version
                    if changes is None:
                        changes = self._changes(session, *mine)
                    data, payload, deadline = self._rebase(session, latest, changes, deadline)
                    continue
                created_at = session._created_at
                self._settle(session, new_id, data, payload, new_version, created_at, deadline)
                new_version = None
                return True
            raise StorageError(
                f"the session changed under {_ATTEMPTS} rotations in a row; it was not rotated"
            )
        finally:
            if new_version is not None:  # failed or cancelled after the copy: no orphan
                with trio.move_on_after(_CLEANUP_SECONDS, shield=True):
                    await self._discard(new_id, new_version)

    async def _discard(self, session_id: str, version: int) -> None:
        """Delete a copy no client knows about (best effort; it expires anyway)."""
        try:
            await self._store.invalidate_if(session_id, version=version)
        except WriteConflict:
            pass  # a logout that followed the forward deleted it already
        except UNAVAILABLE as exc:
            logger.warning("could not delete an unused session copy: %r", exc)
        await checkpoint()

    async def _refresh(self, session: Session, now: float) -> None:
        """Slide the idle timeout of an unchanged session (a conflict means it moved on)."""
        assert session._payload is not None
        deadline = self._deadline(session)
        raw = self._record(session._created_at, session._now, deadline, session._payload)
        ttl = self._ttl(session._created_at, session._now, deadline, now)
        if ttl <= 0:
            await checkpoint()
            return
        try:
            session._version = await self._write(session._id, raw, session._version, ttl)
        except WriteConflict:
            return  # noqa: ASYNC910 (another request wrote, so refreshed, it; or it ended)
        session._refreshed_at = session._now
        session._stale = False

    # ---------------------------------------------------------------- logout

    async def _end(self, session_id: str, version: int | None) -> None:
        """Delete a session for good: this must succeed, or the request fails (503).

        *version* is the one this request loaded, if any. A rotation's forward left
        under the id is followed, so a logout racing a rotation ends the new id too. A
        failed logout is remembered: until its delete succeeds, this process refuses to
        load that id (the next request with it retries the delete, and fails too if it
        fails again), so the old cookie cannot be used even before the storage is back.
        """
        await checkpoint()  # a cancelled logout did not start; a started one completes
        self._revoking[session_id] = None
        self._revoking.move_to_end(session_id)
        if len(self._revoking) > _REVOKING_MAX:
            self._revoking.popitem(last=False)
            logger.error("too many logouts failed; the oldest is no longer retried")
        await self._revoke(session_id, version)

    async def _revoke(self, session_id: str, version: int | None) -> None:
        with trio.move_on_after(_CLEANUP_SECONDS, shield=True) as scope:
            await self._kill(session_id, version, forwards=3)
        if scope.cancelled_caught:
            raise StorageError("the session storage did not complete a logout in time")
        self._revoking.pop(session_id, None)

    async def _kill(self, session_id: str, version: int | None, *, forwards: int) -> None:
        for _ in range(_ATTEMPTS):
            if version is None:
                try:
                    found = await self._store.read_versioned(session_id)
                except SessionNotFound:
                    return  # noqa: ASYNC910 (storage methods checkpoint, also when they raise)
                version = found.version
                target = found.data[4:].decode("ascii", "replace")
                if found.data[:4] == _MOVED and forwards and _ISSUED_ID(target):
                    await self._kill(target, None, forwards=forwards - 1)
            try:
                await self._store.invalidate_if(session_id, version=version)
                return
            except WriteConflict:
                version = None  # changed meanwhile (maybe into a forward): look again
        await self.storage.invalidate(session_id)  # contested too long: delete it anyway

    async def delete(self, session_id: str) -> None:
        """Kill a session by id from outside a request (e.g. an administrator's logout)."""
        await self._end(session_id, None)
