"""`RedisStorage`: sessions in Redis or Valkey, shared by every process and host.

Each session is one string key: the prefix, then a hash of the id in braces (a Cluster
hash tag), so a keyspace dump does not reveal live ids. The value starts with a 10-byte
header: a 2-byte format mark, then the value's version (a random 63-bit int, big-endian),
which every write replaces. Writes are ``SET ... PX`` (a key is never left without its
ttl); invalidation is ``DEL``. Conditional writes and deletes are Lua scripts on the one
key that compare the stored header with the expected one, so they are atomic and work in
a Cluster; plain reads are one ``GET`` and strip the header.

Values larger than one chunk stream in both directions, holding O(chunk) memory:

* a write appends chunk by chunk to a temporary key (a script appends and renews the
  temporary key's short ttl in one step, and checks the length so a repeated append is
  caught), then a commit script checks the length, ``RENAME``\\ s it into place and sets
  the final ttl, atomically: readers see the old value or the new one;
* a read copies the value to a temporary snapshot key in the same step that reads the
  first chunk, then reads the snapshot by ranges: a write meanwhile cannot mix values.

Temporary keys share the session key's hash tag (so one Cluster slot holds both) and
expire by themselves if their writer or reader vanishes.

A value without the header (written before the header existed) is read as it is; reading
it with its version stores it again with a header, keeping its ttl.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, final

import trio

from .._abc import DEFAULT_MAX_SIZE
from .._base import ChunkSink, ChunkSource, ConditionalBase, check_ttl
from .._errors import SessionNotFound, StorageError
from .._ids import check_session_id
from ._redis_drivers import (
    DEFAULT_MAX_BATCH,
    Driver,
    DriverName,
    LuaScript,
    RedisClient,
    RedisStorageStatistics,
    connect,
    driver_for,
)

__all__ = [
    "DriverName",
    "RedisClient",
    "RedisStorage",
    "RedisStorageStatistics",
    "open_redis_storage",
]

#: Bytes per command when a value streams.
CHUNK_SIZE = 64 * 1024
#: How long a temporary key outlives its last use, in milliseconds.
TEMPORARY_TTL_MS = 60_000
#: How many ids' keys are remembered (sessions in use right now).
_RECENT_KEYS = 4096
#: How long cleanup of a temporary key may take before it is left to expire.
_CLEANUP_SECONDS = 2.0

#: Starts every stored value, before its 8-byte version: the format of this header.
MAGIC = b"\xfe\x01"
#: Bytes before the session's data in a stored value.
HEADER_SIZE = len(MAGIC) + 8

# KEYS[1] session key; ARGV[1] the expected header ("": only if no value is stored),
# ARGV[2] the new stored value, ARGV[3] ttl (ms) or "". Returns 1 if stored, else 0.
_STORE_IF = LuaScript(
    "if ARGV[1] == '' then\n"
    "  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end\n"
    "elseif redis.call('GETRANGE', KEYS[1], 0, 9) ~= ARGV[1] then return 0 end\n"
    "if ARGV[3] == '' then redis.call('SET', KEYS[1], ARGV[2])\n"
    "else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end\n"
    "return 1\n"
)
# KEYS[1] session key; ARGV[1] the expected header. Returns 1 if deleted, else 0.
_DELETE_IF = LuaScript(
    "if redis.call('GETRANGE', KEYS[1], 0, 9) ~= ARGV[1] then return 0 end\n"
    "return redis.call('DEL', KEYS[1])\n"
)
# KEYS[1] session key; ARGV[1] MAGIC, ARGV[2] a new header. Returns the stored value,
# after giving it the header (and so a version) if it had none; nil if missing.
_UPGRADE = LuaScript(
    "local value = redis.call('GET', KEYS[1])\n"
    "if not value or (string.sub(value, 1, 2) == ARGV[1] and #value >= 10) then\n"
    "  return value\n"
    "end\n"
    "value = ARGV[2] .. value\n"
    "redis.call('SET', KEYS[1], value, 'KEEPTTL')\n"
    "return value\n"
)
# KEYS[1] temporary key; ARGV[1] chunk, ARGV[2] ttl (ms). Returns the new length.
_APPEND = LuaScript(
    "local n = redis.call('APPEND', KEYS[1], ARGV[1])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
    "return n\n"
)
# KEYS[1] temporary key, KEYS[2] session key; ARGV[1] expected length, ARGV[2] ttl (ms)
# or "". Returns 1 if committed, 0 if the temporary value is not the expected one.
_COMMIT = LuaScript(
    "if redis.call('STRLEN', KEYS[1]) ~= tonumber(ARGV[1]) then return 0 end\n"
    "redis.call('RENAME', KEYS[1], KEYS[2])\n"
    "if ARGV[2] == '' then redis.call('PERSIST', KEYS[2])\n"
    "else redis.call('PEXPIRE', KEYS[2], ARGV[2]) end\n"
    "return 1\n"
)
# KEYS[1] session key, KEYS[2] snapshot key; ARGV[1] chunk size, ARGV[2] ttl (ms).
# Returns {} if missing, {value} if it fits one chunk, else {first chunk, length} after
# copying the value to the snapshot key.
_OPEN = LuaScript(
    "local n = redis.call('STRLEN', KEYS[1])\n"
    "local size = tonumber(ARGV[1])\n"
    "if n <= size then\n"
    "  local value = redis.call('GET', KEYS[1])\n"
    "  if value then return {value} end\n"
    "  return {}\n"
    "end\n"
    "redis.call('COPY', KEYS[1], KEYS[2], 'REPLACE')\n"
    "redis.call('PEXPIRE', KEYS[2], ARGV[2])\n"
    "return {redis.call('GETRANGE', KEYS[1], 0, size - 1), n}\n"
)
# KEYS[1] snapshot key; ARGV[1] start, ARGV[2] end (inclusive), ARGV[3] ttl (ms).
_RANGE = LuaScript(
    "local chunk = redis.call('GETRANGE', KEYS[1], ARGV[1], ARGV[2])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "return chunk\n"
)


def _new_header() -> tuple[bytes, int]:
    """A header with a fresh version (random, so never reused: no counter restarts)."""
    version = secrets.randbits(63) or 1
    return MAGIC + version.to_bytes(8, "big"), version


def _has_header(stored: bytes) -> bool:
    return stored[:2] == MAGIC and len(stored) >= HEADER_SIZE


def _check_max_batch(max_batch: int) -> None:
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 2:
        raise ValueError(f"max_batch must be an int >= 2 (got {max_batch!r})")


def _px(ttl: float | None) -> bytes:
    return b"" if ttl is None else str(_milliseconds(ttl)).encode()


def _milliseconds(ttl: float) -> int:
    """A ttl in whole milliseconds, rounded up: a session never expires early."""
    return max(1, math.ceil(ttl * 1000))


def _unexpected(reply: object) -> StorageError:
    return StorageError(f"unexpected reply from the server: {type(reply).__name__}")


@final
class RedisStorage(ConditionalBase):
    """Sessions in Redis or Valkey (single server or Cluster), with conditional writes.

    :param client: a connected client, owned by the caller: a valkey-glide
        ``GlideClient`` or ``GlideClusterClient``, or a coredis ``Redis`` or
        ``RedisCluster`` (with ``decode_responses=False``, inside its ``async with``).
        `aclose` does not close it.
    :param prefix: starts every key this storage uses.
    :param max_size: the largest payload accepted, in bytes.
    :param pipeline: send the commands that concurrent tasks issue in one scheduler tick
        as one non-atomic batch (a command issued while nothing is in flight still goes
        out at once, alone). ``False`` sends every command on its own.
    :param max_batch: the most commands one batch carries.

    The client's own settings decide timeouts, retries, TLS and authentication. A lost
    connection, a timeout or an error reply (``LOADING``, ``READONLY``, ...) raises
    `StorageError` with the client's exception as ``__cause__``; both clients reconnect by
    themselves once the server is back. An operation that fails or is cancelled after
    its command was sent may or may not have been applied, but never partly.
    Requires Redis >= 6.2 or Valkey (``COPY``).
    """

    _chunk_size = CHUNK_SIZE

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "trio-sessions:",
        max_size: int = DEFAULT_MAX_SIZE,
        pipeline: bool = True,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        super().__init__(max_size=max_size)
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        _check_max_batch(max_batch)
        self._driver: Driver = driver_for(client, pipeline=bool(pipeline), max_batch=max_batch)
        self._prefix = prefix.encode()
        self._recent_keys: dict[str, bytes] = {}

    @property
    def driver(self) -> DriverName:
        """Which client library this storage uses: ``"glide"`` or ``"coredis"``."""
        return self._driver.name

    def statistics(self) -> RedisStorageStatistics:
        """How this storage's commands went to the server: alone or in batches."""
        return self._driver.statistics()

    def key(self, session_id: str) -> bytes:
        """The key that holds *session_id*: the prefix and a hash of the id in braces."""
        return self._key(check_session_id(session_id))

    def _key(self, session_id: str) -> bytes:
        # A request reads and then writes the same session: hash it once.
        key = self._recent_keys.get(session_id)
        if key is None:
            if len(self._recent_keys) >= _RECENT_KEYS:
                self._recent_keys.clear()
            digest = hashlib.sha256(session_id.encode()).digest()
            key = self._prefix + b"{" + base64.urlsafe_b64encode(digest).rstrip(b"=") + b"}"
            self._recent_keys[session_id] = key
        return key

    async def touch(self, session_id: str, ttl: float) -> bool:
        """Let the session expire *ttl* seconds from now (sliding expiry), without
        rewriting its value. Returns whether the session exists.
        """
        self._check(session_id)
        if check_ttl(ttl) is None:
            raise TypeError("touch() needs a ttl in seconds, not None")
        key = self._key(session_id)
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            reply = await self._driver.pexpire(key, _milliseconds(ttl))
        except Exception as exc:
            raise self._failure("touch", exc) from exc
        await trio.lowlevel.cancel_shielded_checkpoint()
        return bool(reply)

    # ------------------------------------------------------------------ hooks

    async def _load(self, session_id: str) -> bytes | None:
        stored = await self._driver.get(self._key(session_id))
        if type(stored) is bytes:
            return stored[HEADER_SIZE:] if _has_header(stored) else stored
        if stored is None:
            return None
        raise _unexpected(stored)

    async def _store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        px = None if ttl is None else _milliseconds(ttl)
        header, _ = _new_header()
        await self._driver.set(self._key(session_id), header + data, px)

    async def _delete(self, session_id: str) -> None:
        await self._driver.delete(self._key(session_id))

    async def _load_versioned(self, session_id: str) -> tuple[bytes, int] | None:
        key = self._key(session_id)
        stored = await self._driver.get(key)
        if stored is None:
            return None
        if type(stored) is not bytes:
            raise _unexpected(stored)
        if not _has_header(stored):
            # Written before values had a version: give it one (keeping its ttl).
            stored = await self._driver.eval(_UPGRADE, [key], [MAGIC, _new_header()[0]])
            if stored is None:
                return None
            if type(stored) is not bytes or not _has_header(stored):
                raise _unexpected(stored)
        return stored[HEADER_SIZE:], int.from_bytes(stored[len(MAGIC) : HEADER_SIZE], "big")

    async def _store_if(
        self, session_id: str, data: bytes, ttl: float | None, version: int | None
    ) -> int | None:
        expected = b"" if version is None else MAGIC + version.to_bytes(8, "big")
        header, new_version = _new_header()
        args = [expected, header + data, _px(ttl)]
        reply = await self._driver.eval(_STORE_IF, [self._key(session_id)], args)
        if reply == 1:
            return new_version
        if reply == 0:
            return None
        raise _unexpected(reply)

    async def _delete_if(self, session_id: str, version: int) -> bool:
        expected = MAGIC + version.to_bytes(8, "big")
        reply = await self._driver.eval(_DELETE_IF, [self._key(session_id)], [expected])
        if reply == 1 or reply == 0:
            return bool(reply)
        raise _unexpected(reply)

    async def _open_source(self, session_id: str) -> tuple[bytes, ChunkSource | None]:
        key = self._key(session_id)
        snapshot = key + b":r:" + secrets.token_hex(8).encode()
        # A value whose data fits one chunk comes back whole, header included.
        args = [str(CHUNK_SIZE + HEADER_SIZE).encode(), str(TEMPORARY_TTL_MS).encode()]
        try:
            reply = await self._driver.eval(_OPEN, [key, snapshot], args)
        except BaseException:
            await _discard(self._driver, snapshot)  # noqa: ASYNC102 (it shields itself)
            raise
        if not isinstance(reply, list) or len(reply) > 2:
            raise _unexpected(reply)
        if not reply:
            raise SessionNotFound()
        first = reply[0]
        if type(first) is not bytes:
            raise _unexpected(first)
        data = first[HEADER_SIZE:] if _has_header(first) else first
        if len(reply) == 1:
            return data, None
        length = reply[1]
        if type(length) is not int or length <= len(first):
            raise _unexpected(length)
        return data, _SnapshotSource(self._driver, snapshot, len(first), length)

    async def _open_sink(self, session_id: str, ttl: float | None) -> ChunkSink:
        key = self._key(session_id)
        temporary = key + b":w:" + secrets.token_hex(8).encode()
        await trio.lowlevel.checkpoint()
        return _TemporarySink(self._driver, key, temporary, ttl, _new_header()[0])


async def _discard(driver: Driver, key: bytes) -> None:  # noqa: ASYNC910
    """Delete a temporary key, briefly; failing that (server unreachable), its ttl will.

    Cleanup is shielded on purpose and never raises.
    """
    with trio.move_on_after(_CLEANUP_SECONDS, shield=True), suppress(Exception):  # noqa: ASYNC912
        await driver.delete(key)


@final
class _TemporarySink:
    """Appends a large value to a temporary key, then renames it into place."""

    def __init__(
        self, driver: Driver, key: bytes, temporary: bytes, ttl: float | None, header: bytes
    ) -> None:
        self._driver = driver
        self._key = key
        self._temporary = temporary
        self._ttl = _px(ttl)
        self._header = header  # goes before the first chunk
        self._length = 0

    async def write(self, chunk: bytes) -> None:
        if self._header:
            chunk, self._header = self._header + chunk, b""
        args = [chunk, str(TEMPORARY_TTL_MS).encode()]
        length = await self._driver.eval(_APPEND, [self._temporary], args)
        self._length += len(chunk)
        if length != self._length:
            # A repeated append (a retry after a lost reply) or an expired temporary key.
            raise StorageError("the temporary value does not have the expected length")

    async def commit(self) -> None:
        args = [str(self._length).encode(), self._ttl]
        done = await self._driver.eval(_COMMIT, [self._temporary, self._key], args)
        if done != 1:
            raise StorageError("the temporary value was lost before it was committed")

    async def abort(self) -> None:
        await _discard(self._driver, self._temporary)


@final
class _SnapshotSource:
    """Reads a large value by ranges from a private snapshot key."""

    def __init__(self, driver: Driver, snapshot: bytes, offset: int, length: int) -> None:
        self._driver = driver
        self._snapshot = snapshot
        self._offset = offset
        self._length = length

    async def read(self) -> bytes:
        start = self._offset
        if start >= self._length:
            await trio.lowlevel.checkpoint()
            return b""
        end = min(start + CHUNK_SIZE, self._length)
        args = [str(start).encode(), str(end - 1).encode(), str(TEMPORARY_TTL_MS).encode()]
        chunk = await self._driver.eval(_RANGE, [self._snapshot], args)
        if type(chunk) is not bytes or len(chunk) != end - start:
            raise StorageError("the snapshot of the value expired while it was read")
        self._offset = end
        return chunk

    async def aclose(self) -> None:
        await _discard(self._driver, self._snapshot)


@asynccontextmanager
async def open_redis_storage(
    url: str,
    *,
    driver: DriverName,
    cluster: bool = False,
    prefix: str = "trio-sessions:",
    max_size: int = DEFAULT_MAX_SIZE,
    pipeline: bool = True,
    max_batch: int = DEFAULT_MAX_BATCH,
    **client_options: Any,
) -> AsyncIterator[RedisStorage]:
    """Connect to *url* with the chosen client, yield a `RedisStorage`, close both.

    :param url: ``redis://[[user]:password@]host[:port][/db]``; ``rediss://`` for TLS
        (``valkey://`` and ``valkeys://`` too). With *cluster*, any one node.
    :param driver: ``"glide"`` (valkey-glide, the ``redis-glide`` extra) or
        ``"coredis"`` (the ``redis-coredis`` extra). There is no default and no fallback.
    :param cluster: connect to a Redis Cluster.
    :param prefix: starts every key the storage uses.
    :param max_size: the largest payload accepted, in bytes.
    :param pipeline: batch the commands of concurrent tasks (see `RedisStorage`).
    :param max_batch: the most commands one batch carries.
    :param client_options: passed to the client: for glide, keyword arguments of
        ``GlideClientConfiguration`` / ``GlideClusterClientConfiguration`` (for example
        ``request_timeout``, ``reconnect_strategy``, ``credentials``,
        ``advanced_config``); for coredis, of ``Redis`` / ``RedisCluster`` (for example
        ``stream_timeout``, ``ssl_context``, ``max_connections``).
    :raises StorageError: if glide cannot connect (coredis connects on first use).
    """
    _check_max_batch(max_batch)
    options = dict(client_options)
    async with connect(url, driver=driver, cluster=cluster, options=options) as client:
        storage = RedisStorage(
            client, prefix=prefix, max_size=max_size, pipeline=pipeline, max_batch=max_batch
        )
        try:
            yield storage
        finally:
            await storage.aclose()
