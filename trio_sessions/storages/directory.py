"""`DirectoryStorage`: one file per session under a root directory.

Layout: the file of a session is named by the BLAKE2b hash of its id and fanned out into
two levels of subdirectories, ``ROOT/3f/a9/3fa9...`` (64 hex digits), so an id never
becomes a path and a listing does not reveal live ids. A file holds a small header
(magic, format version, expiry, payload length, CRC-32 of the payload) and the payload.

A write creates a temporary file (``.<random>.tmp``) beside its target, writes the header
and the payload, ``fsync``\\ s it, renames it over the target with `os.replace` (atomic,
also across processes) and ``fsync``\\ s the directory. Readers open the target only, so
they see the complete old file or the complete new one; a reader that already opened
the old file keeps reading it whole. On any failure or cancellation the temporary file
is removed; after a crash, `DirectoryStorage.purge` sweeps it.

All file work runs in worker threads under a `trio.CapacityLimiter`. A value that fits
one chunk (64 KiB) costs one thread hop per operation; a larger one streams chunk by
chunk, one hop each, so memory stays O(chunk) whatever the session's size.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
import struct
import time
import zlib
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar, final

import trio

from .._abc import DEFAULT_MAX_SIZE
from .._base import StorageBase
from .._errors import SessionNotFound, StorageError

__all__ = ["DirectoryPurgeResult", "DirectoryStorage", "DirectoryStorageStatistics"]

logger = logging.getLogger(__name__)
R = TypeVar("R")

_MAGIC = b"TSsn"
_VERSION = 1
#: magic, version, expiry (wall-clock seconds, inf: never), payload length, payload CRC-32
_HEADER = struct.Struct(">4sB3xdQI")
_CHUNK = 64 * 1024
_NAME_LENGTH = 64
_HEX = frozenset("0123456789abcdef")
_TEMP_SUFFIX = ".tmp"
_CLOEXEC = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_READ = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | _CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC
_DIRECTORY = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC


@dataclass(frozen=True, slots=True)
class DirectoryStorageStatistics:
    """What `DirectoryStorage.statistics` reports (from file sizes: no payload is read)."""

    #: Session files, including expired ones that `~DirectoryStorage.purge` has not removed.
    sessions: int
    #: Payload bytes in those files.
    bytes: int
    #: Temporary files: writes in progress, or debris of a crash.
    temporary: int


@dataclass(frozen=True, slots=True)
class DirectoryPurgeResult:
    """What `DirectoryStorage.purge` removed."""

    #: Expired sessions.
    expired: int
    #: Unreadable session files (truncated, corrupted, or of an unknown format).
    corrupt: int
    #: Temporary files older than the grace period.
    temporary: int


# ------------------------------------------------------------ file primitives
# Blocking functions, run in worker threads. They call the `os` module only (looked up
# at call time), so tests can make any of these calls fail.


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, size: int) -> bytes | None:
    """Read *size* bytes, or return ``None`` if the file ends first."""
    parts = []
    while size > 0:
        part = os.read(fd, size)
        if not part:
            return None
        parts.append(part)
        size -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _sync_directory(path: str) -> None:
    if os.name != "posix":
        return  # directories cannot be opened for fsync elsewhere
    fd = os.open(path, _DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_header(fd: int) -> tuple[float, int, int] | None:
    """Return ``(expires_at, length, crc)`` of an open session file, ``None`` if invalid."""
    size = os.fstat(fd).st_size
    raw = _read_exact(fd, _HEADER.size)
    if raw is None:
        return None
    magic, version, expires_at, length, crc = _HEADER.unpack(raw)
    if magic != _MAGIC or version != _VERSION or math.isnan(expires_at):
        return None
    if size != _HEADER.size + length:
        return None  # truncated, or trailing garbage
    return expires_at, length, crc


def _open_session(path: str) -> int | None:
    try:
        return os.open(path, _READ)
    except FileNotFoundError:
        return None


def _unreadable(path: str) -> None:
    logger.warning("unreadable session file %s: treated as absent, purge() removes it", path)


def _judge(path: str, now: float) -> str | None:
    """``"expired"``, ``"corrupt"`` or ``None`` (live or missing); reads the payload's CRC."""
    fd = _open_session(path)
    if fd is None:
        return None
    try:
        header = _read_header(fd)
        if header is None:
            return "corrupt"
        expires_at, length, crc = header
        actual = 0
        while length > 0:
            chunk = os.read(fd, min(length, _CHUNK))
            if not chunk:
                return "corrupt"
            actual = zlib.crc32(chunk, actual)
            length -= len(chunk)
        if actual != crc:
            return "corrupt"
        return "expired" if expires_at <= now else None
    finally:
        os.close(fd)


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(_TEMP_SUFFIX)


def _is_session(name: str, prefix: str) -> bool:
    return len(name) == _NAME_LENGTH and name.startswith(prefix) and _HEX.issuperset(name)


def _fanout(path: str) -> list[str]:
    """The names of *path*'s two-hex-digit subdirectories (none if *path* is missing)."""
    try:
        with os.scandir(path) as entries:
            return sorted(
                e.name
                for e in entries
                if len(e.name) == 2 and _HEX.issuperset(e.name) and e.is_dir(follow_symlinks=False)
            )
    except FileNotFoundError:
        return []


def _make_directories(directory: str, durable: bool) -> None:
    """Create the root and the two fan-out levels, private; other writers may race us."""
    top = os.path.dirname(directory)
    root = os.path.dirname(top)
    os.makedirs(root, 0o700, exist_ok=True)
    for path in (top, directory):
        with suppress(FileExistsError):
            os.mkdir(path, 0o700)
    if durable:
        _sync_directory(root)
        _sync_directory(top)


class _TempFile:
    """A temporary file beside *target* that becomes *target* on `commit`."""

    def __init__(self, directory: str, target: str, durable: bool) -> None:
        self.target = target
        self.durable = durable
        self.crc = 0
        self.length = 0
        path = os.path.join(directory, f".{secrets.token_hex(8)}{_TEMP_SUFFIX}")
        try:
            self.fd = os.open(path, _CREATE, 0o600)
        except FileNotFoundError:
            _make_directories(directory, durable)
            self.fd = os.open(path, _CREATE, 0o600)
        self.path: str | None = path

    def write(self, data: bytes) -> None:
        _write_all(self.fd, data)
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)

    def commit(self, expires_at: float | None = None) -> None:
        """Write the header (unless written already), then make the file the target."""
        if expires_at is not None:
            os.lseek(self.fd, 0, os.SEEK_SET)
            _write_all(self.fd, _HEADER.pack(_MAGIC, _VERSION, expires_at, self.length, self.crc))
        if self.durable:
            os.fsync(self.fd)
        fd, self.fd = self.fd, -1
        os.close(fd)
        assert self.path is not None
        os.replace(self.path, self.target)
        self.path = None  # committed: from here on, a failure cannot bring the old value back
        if self.durable:
            _sync_directory(os.path.dirname(self.target))

    def discard(self) -> None:
        """Close and remove the file if it is still there; never raises."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            with suppress(OSError):
                os.close(fd)
        if self.path is not None:
            path, self.path = self.path, None
            with suppress(OSError):
                os.unlink(path)


# ------------------------------------------------------------------- storage


@final
class DirectoryStorage(StorageBase):
    """Sessions as files under *root*: crash-safe, streaming, safe for several processes.

    * *root*: the directory (created with the first write); give each application its own.
    * *fsync*: flush each write (and invalidation) to disk before returning. Without it, a
      crash of the machine (not of the process) may lose recent writes, never tear one.
    * *max_size*: the largest payload accepted, in bytes.
    * *clock*: returns wall-clock seconds (default `time.time`); expiry times are stored
      in the files, so they survive restarts and are shared by every process on *root*.
    * *limiter*: bounds the worker threads doing this storage's file work (default: a
      new `trio.CapacityLimiter` of 8); pass one to share a bound between storages.

    Reads never create, change or remove anything: expired and unreadable files stay
    until `purge` (run it periodically, e.g. ``trio-sessions purge ROOT`` from cron).
    An unreadable file reads as absent and logs a warning. A streaming read sees one
    consistent file; should its checksum fail at the end, the read raises `StorageError`.
    If flushing the directory fails after the rename, `write` raises `StorageError`
    although the new value is in place (it may not survive a power loss).
    """

    _chunk_size = _CHUNK
    _hooks_yield = True  # every hook is one thread hop

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fsync: bool = True,
        max_size: int = DEFAULT_MAX_SIZE,
        clock: Callable[[], float] = time.time,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        super().__init__(max_size=max_size)
        self._root = os.path.abspath(os.fspath(root))
        self._fsync = fsync
        self._clock = clock
        self._limiter = limiter if limiter is not None else trio.CapacityLimiter(8)

    @property
    def root(self) -> str:
        """The absolute path of the root directory."""
        return self._root

    def _path(self, session_id: str) -> tuple[str, str]:
        """The directory and the file of *session_id*."""
        name = hashlib.blake2b(session_id.encode(), digest_size=32).hexdigest()
        directory = os.path.join(self._root, name[:2], name[2:4])
        return directory, os.path.join(directory, name)

    def _expiry(self, ttl: float | None) -> float:
        # Called on the event loop's thread: the clock may be trio.current_time.
        return math.inf if ttl is None else self._clock() + ttl

    async def _run(self, fn: Callable[..., R], *args: Any) -> R:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def _maintain(self, action: str, fn: Callable[..., R], *args: Any) -> R:
        try:
            return await self._run(fn, *args)
        except OSError as exc:
            raise self._failure(action, exc) from exc

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("DirectoryStorage is closed")

    # ---------------------------------------------------------- whole values

    async def _store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        directory, path = self._path(session_id)
        await self._run(self._write_file, directory, path, data, self._expiry(ttl))

    def _write_file(self, directory: str, path: str, data: bytes, expires_at: float) -> None:
        temp = _TempFile(directory, path, self._fsync)
        try:
            _write_all(
                temp.fd, _HEADER.pack(_MAGIC, _VERSION, expires_at, len(data), zlib.crc32(data))
            )
            _write_all(temp.fd, data)
            temp.commit()
        except BaseException:
            temp.discard()
            raise

    async def _load(self, session_id: str) -> bytes | None:
        first, rest = await self._run(self._open_file, self._path(session_id)[1], self._clock(), 0)
        assert rest is None
        return first

    def _open_file(self, path: str, now: float, chunk: int) -> tuple[bytes | None, _Source | None]:
        """Read the whole payload (``chunk == 0``), or its first *chunk* bytes."""
        fd = _open_session(path)
        if fd is None:
            return None, None
        try:
            header = _read_header(fd)
            if header is None:
                _unreadable(path)
                return None, None
            expires_at, length, crc = header
            if expires_at <= now:
                return None, None
            first = _read_exact(fd, length if chunk == 0 else min(length, chunk))
            if first is None:  # shorter than its header said a moment ago
                _unreadable(path)
                return None, None
            if len(first) < length:
                source = _Source(self, fd, length - len(first), zlib.crc32(first), crc, path)
                fd = -1  # the source owns it now: it keeps this version of the file open
                return first, source
            if zlib.crc32(first) != crc:
                _unreadable(path)
                return None, None
            return first, None
        finally:
            if fd >= 0:
                os.close(fd)

    async def _delete(self, session_id: str) -> None:
        await self._run(self._remove_file, self._path(session_id)[1])

    def _remove_file(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        if self._fsync:
            _sync_directory(os.path.dirname(path))

    # ------------------------------------------------------------- streaming

    async def _open_source(self, session_id: str) -> tuple[bytes, _Source | None]:
        path = self._path(session_id)[1]
        first, source = await self._run(self._open_file, path, self._clock(), _CHUNK)
        if first is None:
            raise SessionNotFound()
        return first, source

    async def _open_sink(self, session_id: str, ttl: float | None) -> _Sink:
        directory, path = self._path(session_id)
        temp = await self._run(self._open_temp, directory, path)
        return _Sink(self, temp, ttl)

    def _open_temp(self, directory: str, path: str) -> _TempFile:
        temp = _TempFile(directory, path, self._fsync)
        try:
            os.lseek(temp.fd, _HEADER.size, os.SEEK_SET)  # commit() writes the header
        except BaseException:
            temp.discard()
            raise
        return temp

    # ----------------------------------------------------------- maintenance

    async def purge(self, *, temp_grace: float = 3600.0) -> DirectoryPurgeResult:
        """Remove expired sessions, unreadable session files and stale temporary files.

        A temporary file counts as stale when it was last modified more than
        *temp_grace* seconds ago (by the file system's clock): a write that is still in
        progress keeps its file fresh. Safe while other processes use *root*: a session
        rewritten while purge looks at it is kept. Reads each session file whole (to
        check it), one worker-thread hop per first-level directory.
        """
        self._check_open()
        now, stale_before = self._clock(), time.time() - temp_grace
        counts = {"expired": 0, "corrupt": 0, "temporary": 0}
        for top in await self._maintain("purge", _fanout, self._root):
            found = await self._maintain("purge", self._purge_top, top, now, stale_before)
            for kind, count in found.items():
                counts[kind] += count
        return DirectoryPurgeResult(**counts)

    def _purge_top(self, top: str, now: float, stale_before: float) -> dict[str, int]:
        counts = {"expired": 0, "corrupt": 0, "temporary": 0}
        for sub in _fanout(os.path.join(self._root, top)):
            directory = os.path.join(self._root, top, sub)
            with suppress(FileNotFoundError), os.scandir(directory) as entries:
                names = [e.name for e in entries if e.is_file(follow_symlinks=False)]
            for name in names:
                path = os.path.join(directory, name)
                if _is_temp(name):
                    with suppress(FileNotFoundError):
                        if os.stat(path, follow_symlinks=False).st_mtime < stale_before:
                            os.unlink(path)
                            counts["temporary"] += 1
                elif (
                    _is_session(name, top + sub)
                    and (verdict := _judge(path, now))
                    and self._take(directory, path, now)
                ):
                    counts[verdict] += 1
        return counts

    def _take(self, directory: str, path: str, now: float) -> bool:
        """Remove the dead file at *path*, unless a writer replaced it meanwhile."""
        grave = os.path.join(directory, f".{secrets.token_hex(8)}{_TEMP_SUFFIX}")
        try:
            os.rename(path, grave)  # whatever is at *path* now is ours alone
        except FileNotFoundError:
            return False
        if _judge(grave, now) is None:  # a fresh value arrived: put it back
            try:
                os.link(grave, path)
            except FileExistsError:
                pass  # ... unless an even newer one did: that one wins
            except OSError:
                os.rename(grave, path)  # a file system without hard links
                return False
            os.unlink(grave)
            return False
        os.unlink(grave)
        if self._fsync:
            _sync_directory(directory)
        return True

    async def statistics(self) -> DirectoryStorageStatistics:
        """Count session files, payload bytes and temporary files (reads no payload)."""
        self._check_open()
        totals = [0, 0, 0]
        for top in await self._maintain("count", _fanout, self._root):
            for i, count in enumerate(await self._maintain("count", self._count_top, top)):
                totals[i] += count
        return DirectoryStorageStatistics(*totals)

    def _count_top(self, top: str) -> tuple[int, int, int]:
        sessions = size = temporary = 0
        for sub in _fanout(os.path.join(self._root, top)):
            with suppress(FileNotFoundError), os.scandir(os.path.join(self._root, top, sub)) as it:
                for entry in it:
                    if _is_temp(entry.name):
                        temporary += 1
                    elif _is_session(entry.name, top + sub) and entry.is_file(
                        follow_symlinks=False
                    ):
                        with suppress(FileNotFoundError):
                            size += max(0, entry.stat(follow_symlinks=False).st_size - _HEADER.size)
                            sessions += 1
        return sessions, size, temporary


@final
class _Source:
    """`ChunkSource` of a streaming read: the open file, read one chunk per thread hop."""

    def __init__(
        self, storage: DirectoryStorage, fd: int, remaining: int, crc: int, expected: int, path: str
    ) -> None:
        self._storage, self._fd, self._remaining, self._path = storage, fd, remaining, path
        self._crc, self._expected = crc, expected

    async def read(self) -> bytes:
        if self._fd < 0:
            return b""  # noqa: ASYNC910 (the base class checkpoints)
        return await self._storage._run(self._read)

    async def aclose(self) -> None:  # noqa: ASYNC910 (the base class checkpoints)
        if self._fd >= 0:
            await self._storage._run(self._close)

    def _read(self) -> bytes:
        chunk = os.read(self._fd, min(self._remaining, _CHUNK))
        self._remaining -= len(chunk)
        self._crc = zlib.crc32(chunk, self._crc)
        if not chunk or self._remaining == 0:
            self._close()
            if self._remaining or self._crc != self._expected:
                _unreadable(self._path)
                raise StorageError("the session file is corrupted")
        return chunk

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


@final
class _Sink:
    """`ChunkSink` of a streaming write: chunks go to a temporary file, 64 KiB per hop."""

    def __init__(self, storage: DirectoryStorage, temp: _TempFile, ttl: float | None) -> None:
        self._storage, self._temp, self._ttl = storage, temp, ttl
        self._pending: list[bytes] = []
        self._pending_size = 0

    def _take(self) -> bytes:
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        return data

    async def write(self, chunk: bytes) -> None:  # noqa: ASYNC910 (the base class checkpoints)
        # A provider may send small pieces: gather them into chunks before a thread hop.
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= _CHUNK:
            await self._storage._run(self._temp.write, self._take())

    async def commit(self) -> None:
        expires_at = self._storage._expiry(self._ttl)
        await self._storage._run(self._commit, self._take(), expires_at)

    def _commit(self, rest: bytes, expires_at: float) -> None:
        try:
            self._temp.write(rest)
            self._temp.commit(expires_at)
        except BaseException:
            self._temp.discard()
            raise

    async def abort(self) -> None:
        await self._storage._run(self._temp.discard)
