"""`DirectoryStorage`: one file per session under a root directory.

Layout: the file of a session is named by the BLAKE2b hash of its id and fanned out into
two levels of folders, ``ROOT/3f/a9/3fa9...`` (64 hex digits), so an id never becomes a
path and a listing does not reveal live ids. A file holds a header (magic, format,
expiry, version, payload length, CRC-32 of the payload) and the payload. Files are never
changed in place: a write creates a temporary file (``.<random>.tmp``) beside its target,
``fsync``\\ s it and renames it over the target, so a reader that opened a file reads one
complete value, whatever happens meanwhile.

Every change of a session's name (a rename, an unlink) happens under an exclusive
``flock`` of its fan-out folder, taken on a descriptor of its own, so it excludes other
threads and other processes alike and dies with its holder. A conditional write checks
the stored version and renames under that lock; reads take no lock.

Folders are opened one level at a time, relative to their parent's descriptor, with
``O_NOFOLLOW``, and checked with ``fstat``: owned by this process's user and writable by
no one else. A symbolic link or a foreign folder is refused, never followed.

All file work runs in worker threads under a `trio.CapacityLimiter`, one thread hop per
operation for values up to one chunk (64 KiB); a larger one streams chunk by chunk. A hop
is `trio.lowlevel.start_thread_soon` with nothing around it (`_in_thread`): under load,
every system call a worker makes may hand the interpreter's lock to the event loop's
thread and back, so the calls a hop adds count.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import math
import os
import secrets
import shlex
import stat
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, final

import trio

from .._abc import DEFAULT_MAX_SIZE, PurgeResult
from .._base import ConditionalBase
from .._errors import SessionNotFound, StorageError

if TYPE_CHECKING:
    import outcome  # trio's own dependency

try:
    import fcntl
except ImportError:  # not a POSIX system: the constructor says so
    fcntl = None  # type: ignore[assignment]

__all__ = ["DirectoryScan", "DirectoryStorage"]

logger = logging.getLogger(__name__)
R = TypeVar("R")

_MAGIC = b"TSsn"
_FORMAT = 2
#: magic, format, expiry (wall-clock seconds, inf: never), version, payload length, CRC-32
_HEADER = struct.Struct(">4sB3xdQQI")
#: format 1 (no version): read, never written
_HEADER_V1 = struct.Struct(">4sB3xdQI")
_CHUNK = 64 * 1024
#: What the first read of a session file asks for: a file this size is read whole.
_FIRST_READ = _HEADER.size + _CHUNK
_NAME_LENGTH = 64
_HEX = frozenset("0123456789abcdef")
_TEMP_SUFFIX = ".tmp"
#: The shared count of session files and payload bytes, kept when a quota is set.
_QUOTA_FILE = ".quota"
_QUOTA = struct.Struct(">4sQQ")
_QUOTA_MAGIC = b"TSqt"
#: Names a storage root may hold besides its fan-out folders.
_ROOT_EXTRAS = frozenset({_QUOTA_FILE, "lost+found"})
_RETRIES = 8  # a purge may remove an empty folder a writer was about to use: try again
_ANY = -1  # the expected version of an unconditional write (versions are >= 1)
#: A change to the quota ledger (sessions, payload bytes), or how to compute it.
_Delta = tuple[int, int] | Callable[[], tuple[int, int]]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
_DIRECTORY = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
_LEDGER = os.O_RDWR | _NOFOLLOW | _CLOEXEC


@dataclass(frozen=True, slots=True)
class DirectoryScan:
    """What `DirectoryStorage.scan` found (from file sizes: no payload is read)."""

    #: Session files, including expired ones that `~DirectoryStorage.purge` has not removed.
    sessions: int
    #: Payload bytes in those files.
    bytes: int
    #: Temporary files: writes in progress, or debris of a crash.
    temporary: int


# ------------------------------------------------------------ file primitives
# Blocking functions, run in worker threads. They call the `os` and `fcntl` modules only
# (looked up at call time), so tests can make any of these calls fail.


def _os_text(exc: OSError) -> str:
    if exc.errno is None:
        return str(exc)
    return f"[Errno {exc.errno}] {exc.strerror}"


@contextmanager
def _os_errors(action: str, path: str) -> Iterator[None]:
    """Turn an `OSError` into a `StorageError` naming *path* and the system's message."""
    try:
        yield
    except OSError as exc:
        raise StorageError(
            f"DirectoryStorage could not {action} in {path}: {_os_text(exc)}"
        ) from exc


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


def _refuse(path: str, why: str, fix: str) -> StorageError:
    return StorageError(f"DirectoryStorage refuses {path}: {why}; {fix}")


def _check_dir(fd: int, path: str) -> None:
    """Refuse a folder another user owns or may write to."""
    info = os.fstat(fd)
    uid = os.geteuid()
    if info.st_uid != uid:
        raise _refuse(
            path,
            f"it is owned by uid {info.st_uid}, not by uid {uid} that runs this process, so "
            "that user could read or replace its sessions",
            f"give it to this user (chown {uid} {shlex.quote(path)}) or choose another root",
        )
    if info.st_mode & 0o022:
        raise _refuse(
            path,
            f"other users may write to it (mode {stat.S_IMODE(info.st_mode):04o})",
            f"restrict it: chmod 700 {shlex.quote(path)}",
        )


def _not_a_directory(name: str, dir_fd: int | None, path: str) -> StorageError | None:
    """Explain why *name* could not be opened as a folder: a link, or not a folder."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None  # e.g. a file where a parent folder should be: the error says it
    if stat.S_ISLNK(info.st_mode):
        with suppress(OSError):
            path = f"{path} (a link to {os.readlink(name, dir_fd=dir_fd)})"
        return _refuse(
            path,
            "it is a symbolic link, which DirectoryStorage never follows",
            "use the real directory as the root; inside a root, remove the link",
        )
    return _refuse(path, "it is not a directory", "remove it or choose another root")


def _open_dir(name: str, dir_fd: int | None, path: str, create: bool, durable: bool) -> int | None:
    """Open the folder *name* (relative to *dir_fd*), checked; ``None`` if it is missing.

    With *create*, a missing folder is made (mode 0700) first.
    """
    fd = _open_folder(name, dir_fd, path)
    if fd is None:
        if not create:
            return None
        if dir_fd is None:
            os.makedirs(os.path.dirname(name), exist_ok=True)
        try:
            os.mkdir(name, 0o700, dir_fd=dir_fd)
        except FileExistsError:
            pass
        else:
            if durable:
                _sync_parent(dir_fd, name)
        fd = _open_folder(name, dir_fd, path)
        if fd is None:  # a purge removed it at once: the caller tries again
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    try:
        _check_dir(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_folder(name: str, dir_fd: int | None, path: str) -> int | None:
    try:
        return os.open(name, _DIRECTORY, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            refusal = _not_a_directory(name, dir_fd, path)
            if refusal is not None:
                raise refusal from exc
        raise


def _sync_parent(dir_fd: int | None, name: str) -> None:
    if dir_fd is not None:
        os.fsync(dir_fd)
        return
    fd = os.open(os.path.dirname(name), os.O_RDONLY | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Head(NamedTuple):
    expires_at: float
    version: int
    length: int
    crc: int


def _temp_and_version() -> tuple[str, int]:
    """A temporary file's name and the version of the value it will hold: one system call."""
    raw = secrets.token_bytes(16)
    return f".{raw[:8].hex()}{_TEMP_SUFFIX}", int.from_bytes(raw[8:]) >> 1 or 1


def _not_abandoned(raise_cancel: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED  # a started hop runs to its end; the caller waits


async def _in_thread(limiter: trio.CapacityLimiter, fn: Callable[[], R]) -> R:
    """Run *fn* in one of trio's cached worker threads and return (or raise) its outcome.

    What `trio.to_thread.run_sync` does with ``abandon_on_cancel=False``, less what this
    module never uses: it renames no thread (two system calls per hop), copies no
    context, and supports no `trio.from_thread` calls. Waiting for the *limiter* can be
    cancelled; once *fn* has started, the caller waits for it (a cancellation takes
    effect at the caller's next checkpoint).
    """
    task = trio.lowlevel.current_task()
    borrower = object()  # the task may hold the limiter itself (a shared one)
    await limiter.acquire_on_behalf_of(borrower)
    try:
        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[R]) -> None:  # in the worker thread
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        trio.lowlevel.start_thread_soon(fn, deliver)
        result: R = await trio.lowlevel.wait_task_rescheduled(_not_abandoned)
        return result
    finally:
        limiter.release_on_behalf_of(borrower)


def _legacy_version(header: bytes, info: os.stat_result) -> int:
    """The version of a format-1 file: the same in every process, new with every write."""
    seed = header + struct.pack(">QQ", info.st_ino, info.st_mtime_ns)
    return int.from_bytes(hashlib.blake2b(seed, digest_size=8).digest()) >> 1 or 1


def _read_head(fd: int, want: int | None) -> tuple[_Head, bytes] | None:
    """Read the header and at least *want* payload bytes (``None``: all of them).

    Returns ``None`` if the file is not a valid session file. A file of up to a chunk
    takes one read and no ``fstat``: a read of a regular file that returns less than
    asked has reached its end (should one stop short anyway, the rest is read before
    the file is judged truncated). A larger file is measured with ``fstat``, and its
    payload gets a read of its own (no copy); the descriptor is left after what was
    returned.
    """
    try:
        raw = os.read(fd, _FIRST_READ + 1)
    except OSError:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None  # a folder or a device where a session file should be
        raise
    while 0 < len(raw) < _HEADER.size:  # short of a header: damaged, or a short read
        part = os.read(fd, _FIRST_READ + 1 - len(raw))
        if not part:
            break
        raw += part
    info = os.fstat(fd) if len(raw) > _FIRST_READ else None
    if len(raw) < _HEADER_V1.size or raw[:4] != _MAGIC:
        return None
    if raw[4] == _FORMAT and len(raw) >= _HEADER.size:
        _, _, expires_at, version, length, crc = _HEADER.unpack_from(raw)
        start = _HEADER.size
    elif raw[4] == 1:
        _, _, expires_at, length, crc = _HEADER_V1.unpack_from(raw)
        start = _HEADER_V1.size
        info = info or os.fstat(fd)
        version = _legacy_version(raw[:start], info)
    else:
        return None
    if math.isnan(expires_at) or version < 1:
        return None
    if info is None and len(raw) < start + length:
        rest = _read_exact(fd, start + length - len(raw))  # a short read, or truncated
        if rest is None:
            return None
        raw += rest
    size = len(raw) if info is None else info.st_size
    if not stat.S_ISREG(info.st_mode if info else stat.S_IFREG) or size != start + length:
        return None  # truncated, trailing garbage, or not a file
    head = _Head(expires_at, version, length, crc)
    if info is None:
        return head, raw[start:]  # the descriptor is at the end of the file
    if want is None:
        os.lseek(fd, start, os.SEEK_SET)
        payload = _read_exact(fd, length)
        return None if payload is None else (head, payload)
    first = raw[start : start + want]
    os.lseek(fd, start + len(first), os.SEEK_SET)
    return head, first


def _payload_size(file_size: int) -> int:
    """The payload bytes a session file counts for (statistics and quota)."""
    return max(0, file_size - _HEADER.size)


def _unreadable(path: str) -> None:
    logger.warning("unreadable session file in %s: treated as absent, purge() removes it", path)


def _intact(fd: int, head: _Head, first: bytes) -> bool:
    """Whether the rest of the payload matches the header's CRC (reads it all)."""
    crc, remaining = zlib.crc32(first), head.length - len(first)
    while remaining > 0:
        chunk = os.read(fd, min(remaining, _CHUNK))
        if not chunk:
            return False
        crc = zlib.crc32(chunk, crc)
        remaining -= len(chunk)
    return crc == head.crc


def _live_version(leaf_fd: int, name: str, now: float, whole: bool) -> int | None:
    """The version of the live value in *name*: ``None`` if missing, expired or unreadable.

    The payload's checksum is checked only if *whole*: a reader that found the payload
    damaged expects no version, one that read a version knows the payload was intact.
    """
    try:
        fd = os.open(name, _READ, dir_fd=leaf_fd)
    except FileNotFoundError:
        return None
    try:
        found = _read_head(fd, 0)
        if found is None or found[0].expires_at <= now:
            return None
        if whole and not _intact(fd, found[0], found[1]):
            return None
        return found[0].version
    finally:
        os.close(fd)


def _file_size(leaf_fd: int, name: str) -> int | None:
    try:
        return os.stat(name, dir_fd=leaf_fd, follow_symlinks=False).st_size
    except FileNotFoundError:
        return None


def _read_counts(fd: int) -> tuple[int, int] | None:
    """The (sessions, payload bytes) of the quota ledger; ``None`` if new or damaged."""
    raw = os.pread(fd, _QUOTA.size, 0)
    if len(raw) != _QUOTA.size or raw[:4] != _QUOTA_MAGIC:
        return None
    _, sessions, size = _QUOTA.unpack(raw)
    return sessions, size


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(_TEMP_SUFFIX)


def _is_session(name: str, prefix: str) -> bool:
    return len(name) == _NAME_LENGTH and name.startswith(prefix) and _HEX.issuperset(name)


def _fanout(dir_fd: int) -> list[str]:
    """The names of the two-hex-digit entries of a folder (links included: they are refused)."""
    return sorted(n for n in os.listdir(dir_fd) if len(n) == 2 and _HEX.issuperset(n))


def _remove_if_empty(name: str, dir_fd: int) -> int:
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            return 0
        raise
    return 1


def _count_leaf(leaf_fd: int, prefix: str, totals: list[int]) -> bool:
    """Add a folder's session files, their payload bytes and its temporary files to *totals*."""
    for name in os.listdir(leaf_fd):
        if _is_temp(name):
            totals[2] += 1
        elif _is_session(name, prefix):
            with suppress(FileNotFoundError):
                info = os.stat(name, dir_fd=leaf_fd, follow_symlinks=False)
                if stat.S_ISREG(info.st_mode):
                    totals[0] += 1
                    totals[1] += _payload_size(info.st_size)
    return False


@final
class _Place:
    """The open, checked folders of one session (root first, its fan-out folder last)."""

    __slots__ = ("_fds", "leaf", "name", "path", "root")

    def __init__(self, name: str, path: str) -> None:
        self.name, self.path = name, path  # the file's name, and its folder's path
        self.root = self.leaf = -1
        self._fds: list[int] = []

    def hold(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def close(self, quiet: bool = False) -> None:
        """Close every descriptor; *quiet*: ignore errors (the operation failed anyway)."""
        fds, self._fds = self._fds, []
        error = None
        for fd in reversed(fds):
            try:
                os.close(fd)
            except OSError as exc:
                error = error or exc
        if error is not None and not quiet:
            raise error

    def __enter__(self) -> _Place:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close(quiet=exc_info[0] is not None)


@contextmanager
def _locked(leaf_fd: int) -> Iterator[None]:
    """Hold the exclusive lock of a fan-out folder: its names change only under it."""
    fcntl.flock(leaf_fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(leaf_fd, fcntl.LOCK_UN)


def _check_count(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TypeError(f"{what} must be a positive int or None (got {value!r})")
    return value


# ------------------------------------------------------------------- storage


@final
class DirectoryStorage(ConditionalBase):
    """Sessions as files under *root*: crash-safe, streaming, safe for several processes.

    * *root*: the directory (created, mode 0700, with the first write); give each
      application its own. It must be a real directory (not a symbolic link) owned by
      the user running the process and writable by no one else, and so must every
      folder in it; otherwise operations raise `StorageError` saying what to fix.
    * *fsync*: flush each write (and invalidation) to disk before returning. Without it, a
      crash of the machine (not of the process) may lose recent writes, never tear one.
    * *max_size*: the largest payload accepted, in bytes.
    * *max_sessions*, *max_bytes*: a quota for the whole root, shared by every process
      on it: a write that would create a session beyond *max_sessions*, or bring the
      payload bytes beyond *max_bytes*, raises `StorageError` and stores nothing.
      Expired sessions count until `purge` removes them.
    * *wall_clock*: returns wall-clock seconds (default `time.time`); expiry times are stored
      in the files, so they survive restarts and are shared by every process on *root*.
    * *limiter*: bounds the worker threads doing this storage's file work (default: a
      new `trio.CapacityLimiter` of 8); pass one to share a bound between storages.

    The constructor checks an existing *root* (one ``lstat``): a symbolic link, or a
    directory others may write to, raises `StorageError` at once.

    Reads never create, change or remove anything: expired and unreadable files stay
    until `purge` (run it periodically, e.g. ``trio-sessions purge ROOT`` from cron).
    An unreadable file reads as absent and logs a warning. A streaming read sees one
    consistent file; should its checksum fail at the end, the read raises `StorageError`.
    If flushing the directory fails after the rename, `write` raises `StorageError`
    although the new value is in place (it may not survive a power loss).
    """

    _chunk_size = _CHUNK

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fsync: bool = True,
        max_size: int = DEFAULT_MAX_SIZE,
        max_sessions: int | None = None,
        max_bytes: int | None = None,
        wall_clock: Callable[[], float] = time.time,
        limiter: trio.CapacityLimiter | None = None,
    ) -> None:
        super().__init__(max_size=max_size)
        if fcntl is None or os.name != "posix":
            raise RuntimeError("DirectoryStorage needs a POSIX system (flock, openat)")
        path = os.fspath(root) if isinstance(root, str | os.PathLike) else root
        if not isinstance(path, str):
            raise TypeError(
                f"root must be a str or os.PathLike[str] path, not {type(path).__name__}; "
                "decode a bytes path with os.fsdecode()"
            )
        if not path or "\x00" in path:
            raise ValueError(
                f"root must name a directory, e.g. '/var/lib/myapp/sessions' (got {path!r})"
            )
        if not isinstance(fsync, bool):
            raise TypeError(f"fsync must be True or False (got {fsync!r})")
        if not callable(wall_clock):
            raise TypeError(
                "wall_clock must be a callable returning seconds since the epoch"
                f" (got {wall_clock!r})"
            )
        if limiter is not None and not isinstance(limiter, trio.CapacityLimiter):
            raise TypeError(f"limiter must be a trio.CapacityLimiter or None (got {limiter!r})")
        self._max_sessions = _check_count(max_sessions, "max_sessions")
        self._max_bytes = _check_count(max_bytes, "max_bytes")
        self._quota = self._max_sessions is not None or self._max_bytes is not None
        self._root = os.path.abspath(path)
        self._fsync = fsync
        self._wall_clock = wall_clock
        self._limiter = limiter if limiter is not None else trio.CapacityLimiter(8)
        self._check_existing_root()

    def _check_existing_root(self) -> None:
        try:
            info = os.lstat(self._root)
        except FileNotFoundError:
            return
        except OSError as exc:
            message = f"DirectoryStorage could not open {self._root}: {_os_text(exc)}"
            raise StorageError(message) from exc
        if stat.S_ISLNK(info.st_mode):
            raise _refuse(
                self._root,
                "it is a symbolic link, which DirectoryStorage never follows",
                f"use the real directory: {os.path.realpath(self._root)}",
            )
        if not stat.S_ISDIR(info.st_mode):
            raise _refuse(self._root, "it is not a directory", "choose another root")
        if info.st_mode & 0o022:
            raise _refuse(
                self._root,
                f"other users may write to it (mode {stat.S_IMODE(info.st_mode):04o})",
                f"restrict it: chmod 700 {shlex.quote(self._root)}",
            )

    @property
    def root(self) -> str:
        """The absolute path of the root directory."""
        return self._root

    def _failure(self, action: str, exc: BaseException) -> StorageError:
        text = _os_text(exc) if isinstance(exc, OSError) else repr(exc)
        return StorageError(f"DirectoryStorage could not {action} in {self._root}: {text}")

    async def _run(self, fn: Callable[..., R], *args: Any) -> R:
        return await _in_thread(self._limiter, functools.partial(fn, *args))

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("DirectoryStorage is closed")

    # ---------------------------------------------------------------- places

    def _where(self, session_id: str) -> tuple[str, str]:
        """The file name of *session_id* and the path of its fan-out folder."""
        name = hashlib.blake2b(session_id.encode(), digest_size=32).hexdigest()
        return name, f"{self._root}{os.sep}{name[:2]}{os.sep}{name[2:4]}"

    def _place(
        self, where: tuple[str, str], create: bool, size: int | None = None
    ) -> _Place | None:
        """Open the root and the session's two fan-out folders, each checked, relative to
        the one before; ``None`` if one is missing.

        With *create*, missing folders are made; with a *size* too, the quota is checked
        first, before anything is made.
        """
        place = _Place(*where)
        name, root, path = place.name, self._root, place.path
        levels = [(root, root), (name[:2], path[:-3]), (name[2:4], path)]
        fd: int | None = None
        try:
            for folder, folder_path in levels:
                fd = _open_dir(folder, fd, folder_path, create, self._fsync)
                if fd is None:
                    place.close()
                    return None
                place.hold(fd)
                if place.root < 0:
                    place.root = fd
                    if size is not None:
                        self._precheck(fd, name, place.path, size)
        except BaseException:
            place.close(quiet=True)
            raise
        assert fd is not None
        place.leaf = fd
        return place

    def _prepare(self, where: tuple[str, str], size: int) -> tuple[_Place, str, int, int]:
        """Make the session's folders and a temporary file in them.

        Returns the place, the file's name and descriptor, and the version of the value
        the file will hold.
        """
        for attempt in range(_RETRIES):
            last = attempt == _RETRIES - 1
            try:
                place = self._place(where, True, size if self._quota else None)
                assert place is not None
            except FileNotFoundError:  # a purge removed a folder on our way down
                if last:
                    raise
                continue
            temp, version = _temp_and_version()
            try:
                fd = os.open(temp, _CREATE, 0o600, dir_fd=place.leaf)
            except FileNotFoundError:
                place.close(quiet=True)
                if last:
                    raise
                continue  # the folder was empty, and a purge removed it: make it again
            except BaseException:
                place.close(quiet=True)
                raise
            return place, temp, fd, version
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------- quota

    def _quota_error(self, sessions: int, size: int, add: int, grow: int) -> StorageError | None:
        fix = f"purge() expired sessions or raise the quota of {self._root}"
        if add > 0 and self._max_sessions is not None and sessions + add > self._max_sessions:
            return StorageError(
                f"DirectoryStorage quota reached: {sessions} sessions stored, "
                f"max_sessions={self._max_sessions}; {fix}"
            )
        if grow > 0 and self._max_bytes is not None and size + grow > self._max_bytes:
            return StorageError(
                f"DirectoryStorage quota reached: {size} payload bytes stored, this write "
                f"adds {grow}, max_bytes={self._max_bytes}; {fix}"
            )
        return None

    def _precheck(self, root_fd: int, name: str, path: str, size: int) -> None:
        """Refuse early (before making any folder) a write the quota will refuse."""
        try:
            fd = os.open(_QUOTA_FILE, _LEDGER & ~os.O_RDWR, dir_fd=root_fd)
        except FileNotFoundError:
            return
        try:
            counts = _read_counts(fd)
        finally:
            os.close(fd)
        if counts is None or self._quota_error(*counts, 1, size) is None:
            return
        old = None  # near the quota: does the write replace a session?
        with ExitStack() as fds:
            top = _open_dir(name[:2], root_fd, path[:-3], False, False)
            if top is not None:
                fds.callback(os.close, top)
                leaf = _open_dir(name[2:4], top, path, False, False)
                if leaf is not None:
                    fds.callback(os.close, leaf)
                    old = _file_size(leaf, name)
        add, grow = (1, size) if old is None else (0, size - _payload_size(old))
        error = self._quota_error(*counts, add, grow)
        if error is not None:
            raise error

    def _counted(self, root_fd: int, delta: _Delta, change: Callable[[], None]) -> None:
        """Make *change* (a rename or an unlink), counting *delta* in the ledger if kept.

        Called under the lock of the folder whose file changes. The ledger is changed
        first, so a change the quota refuses does not happen, and restored if the change
        fails. *delta* may be a function, called only if there is a ledger.
        """
        counted = self._account(root_fd, delta, True)
        try:
            change()
        except BaseException:
            if counted is not None:
                with suppress(Exception):
                    self._account(root_fd, (-counted[0], -counted[1]), False)
            raise

    def _account(self, root_fd: int, delta: _Delta, enforce: bool) -> tuple[int, int] | None:
        """Add *delta* (sessions, payload bytes) to the shared ledger, if there is one.

        With a quota, a missing ledger is made (counting what the root holds) and, if
        *enforce*, a change that would exceed the quota raises its `StorageError`.
        Returns the delta added, or ``None`` if there is no ledger.
        """
        flags = _LEDGER | (os.O_CREAT if self._quota else 0)
        try:
            fd = os.open(_QUOTA_FILE, flags, 0o600, dir_fd=root_fd)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
            if callable(delta):
                delta = delta()
            counts = _read_counts(fd)
            if counts is None:  # new, or damaged: count what is there
                counts = self._tally(root_fd)
                os.pwrite(fd, _QUOTA.pack(_QUOTA_MAGIC, *counts), 0)
            if self._quota and enforce:
                error = self._quota_error(*counts, *delta)
                if error is not None:
                    raise error
            sessions, size = max(0, counts[0] + delta[0]), max(0, counts[1] + delta[1])
            os.pwrite(fd, _QUOTA.pack(_QUOTA_MAGIC, sessions, size), 0)
        except BaseException:
            os.close(fd)
            raise
        with suppress(OSError):  # the count is written: a failing close cannot undo it
            os.close(fd)
        return delta

    def _tally(self, root_fd: int) -> tuple[int, int]:
        """Count the session files and their payload bytes (for a new ledger)."""
        totals = [0, 0, 0]

        def count_leaf(root: int, leaf: int, prefix: str) -> bool:
            return _count_leaf(leaf, prefix, totals)

        for top in _fanout(root_fd):
            self._walk("count", top, count_leaf, False)
        return totals[0], totals[1]

    # ---------------------------------------------------------- whole values

    async def _load(self, session_id: str) -> bytes | None:
        first, rest, _ = await self._run(self._open_file, session_id, self._wall_clock(), None)
        assert rest is None
        return first

    async def _load_versioned(self, session_id: str) -> tuple[bytes, int] | None:
        first, rest, version = await self._run(
            self._open_file, session_id, self._wall_clock(), None
        )
        assert rest is None
        return None if first is None else (first, version)

    def _open_file(
        self, session_id: str, now: float, chunk: int | None
    ) -> tuple[bytes | None, _Source | None, int]:
        """Read ``(payload, None, version)``, or with *chunk* its first bytes and a source."""
        where = self._where(session_id)
        with _os_errors("load", where[1]):
            place = self._place(where, False)
            if place is None:
                return None, None, 0
            streaming = False
            try:
                try:
                    fd = place.hold(os.open(place.name, _READ, dir_fd=place.leaf))
                except FileNotFoundError:
                    return None, None, 0
                found = _read_head(fd, chunk)
                if found is None:
                    _unreadable(place.path)
                    return None, None, 0
                head, first = found
                if head.expires_at <= now:
                    return None, None, 0
                if len(first) < head.length:
                    # The source keeps the file (this version of it) and its folders open.
                    streaming = True
                    return first, _Source(self, place, fd, head, first), head.version
                if zlib.crc32(first) != head.crc:
                    _unreadable(place.path)
                    return None, None, 0
                return first, None, head.version
            except BaseException:
                place.close(quiet=True)
                raise
            finally:
                if not streaming:
                    place.close()

    async def _store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        await self._store_if(session_id, data, ttl, _ANY)

    async def _store_if(
        self, session_id: str, data: bytes, ttl: float | None, version: int | None
    ) -> int | None:
        now = self._wall_clock()  # on the event loop's thread: the clock may be trio's
        expires_at = math.inf if ttl is None else now + ttl
        return await self._run(self._write_file, session_id, data, expires_at, version, now)

    def _write_file(
        self, session_id: str, data: bytes, expires_at: float, expect: int | None, now: float
    ) -> int | None:
        where = self._where(session_id)
        with _os_errors("store", where[1]):
            temp = _TempFile(self, where, len(data))
            try:
                temp.write(data, expires_at)
                version = temp.commit(expect, now)
            except BaseException:
                temp.discard()
                raise
            temp.close()
            return version

    async def _delete(self, session_id: str) -> None:
        await self._run(self._remove_file, session_id, _ANY, 0.0)

    async def _delete_if(self, session_id: str, version: int) -> bool:
        return await self._run(self._remove_file, session_id, version, self._wall_clock())

    def _remove_file(self, session_id: str, expect: int, now: float) -> bool:
        where = self._where(session_id)
        with _os_errors("delete", where[1]):
            place = self._place(where, False)
            if place is None:
                return False
            with place:
                name, leaf = place.name, place.leaf
                with _locked(leaf):
                    if expect != _ANY and _live_version(leaf, name, now, False) != expect:
                        return False
                    old = _file_size(leaf, name)
                    if old is None:
                        return False
                    delta = (-1, -_payload_size(old))
                    self._counted(place.root, delta, lambda: os.unlink(name, dir_fd=leaf))
                if self._fsync:
                    os.fsync(leaf)
                return True

    # ------------------------------------------------------------- streaming

    async def _open_source(self, session_id: str) -> tuple[bytes, _Source | None]:
        first, source, _ = await self._run(self._open_file, session_id, self._wall_clock(), _CHUNK)
        if first is None:
            raise SessionNotFound()
        return first, source

    async def _open_sink(self, session_id: str, ttl: float | None) -> _Sink:
        temp = await self._run(self._open_temp, session_id)
        return _Sink(self, temp, ttl)

    def _open_temp(self, session_id: str) -> _TempFile:
        where = self._where(session_id)
        with _os_errors("store", where[1]):
            temp = _TempFile(self, where, 0)
            try:
                os.lseek(temp.fd, _HEADER.size, os.SEEK_SET)  # the header comes last
            except BaseException:
                temp.discard()
                raise
            return temp

    # ----------------------------------------------------------- maintenance

    async def purge(self, *, temp_grace: float = 3600.0) -> PurgeResult:
        """Remove expired sessions, unreadable files, stale temporary files, empty folders.

        A temporary file counts as stale when it was last modified more than
        *temp_grace* seconds ago (by the file system's clock): a write that is still in
        progress keeps its file fresh. Safe while other processes use *root*: a file is
        removed under its folder's lock and only if it is still the one found dead, and
        a writer whose folder a purge removed makes it again. Reads each session file
        whole (to check it), one worker-thread hop per first-level folder.
        """
        self._check_open()
        if isinstance(temp_grace, bool) or not isinstance(temp_grace, int | float):
            raise TypeError(f"temp_grace must be a number of seconds (got {temp_grace!r})")
        if math.isnan(temp_grace):
            raise ValueError("temp_grace must be a number of seconds, not NaN")
        now, stale_before = self._wall_clock(), time.time() - temp_grace
        counts = dict.fromkeys(("expired", "corrupt", "temporary", "folders"), 0)

        def purge_leaf(root_fd: int, leaf_fd: int, prefix: str) -> bool:
            return self._purge_leaf(root_fd, leaf_fd, prefix, now, stale_before, counts)

        for top in await self._run(self._list_root, "purge"):
            counts["folders"] += await self._run(self._walk, "purge", top, purge_leaf, True)
        return PurgeResult(**counts)

    async def scan(self) -> DirectoryScan:
        """Walk the root: count session files, payload bytes and temporary files.

        It reads file sizes, no payload, but visits every folder: run it from a tool
        (``trio-sessions stats``), not per request.
        """
        self._check_open()
        totals = [0, 0, 0]

        def count_leaf(root_fd: int, leaf_fd: int, prefix: str) -> bool:
            return _count_leaf(leaf_fd, prefix, totals)

        for top in await self._run(self._list_root, "count"):
            await self._run(self._walk, "count", top, count_leaf, False)
        return DirectoryScan(*totals)

    def _list_root(self, action: str) -> list[str]:
        with _os_errors(action, self._root):
            root_fd = self._open_root()
            if root_fd is None:
                return []
            try:
                return _fanout(root_fd)
            finally:
                os.close(root_fd)

    def _open_root(self) -> int | None:
        return _open_dir(self._root, None, self._root, False, False)

    def _walk(
        self, action: str, top: str, visit: Callable[[int, int, str], bool], prune: bool
    ) -> int:
        """Call ``visit(root_fd, folder_fd, prefix)`` for each fan-out folder in ROOT/*top*.

        Every folder is opened as operations open them, checked. With *prune*, a folder
        *visit* says it emptied, and then *top* if empty, is removed; returns how many.
        """
        removed = 0
        top_path = os.path.join(self._root, top)
        with _os_errors(action, top_path), ExitStack() as fds:
            root_fd = self._open_root()
            if root_fd is None:
                return 0
            fds.callback(os.close, root_fd)
            top_fd = _open_dir(top, root_fd, top_path, False, False)
            if top_fd is None:
                return 0
            fds.callback(os.close, top_fd)
            for sub in _fanout(top_fd):
                path = os.path.join(top_path, sub)
                with _os_errors(action, path):
                    leaf_fd = _open_dir(sub, top_fd, path, False, False)
                    if leaf_fd is None:
                        continue
                    try:
                        emptied = visit(root_fd, leaf_fd, top + sub)
                    finally:
                        os.close(leaf_fd)
                    if prune and emptied:
                        removed += _remove_if_empty(sub, top_fd)
            if prune and not os.listdir(top_fd):
                removed += _remove_if_empty(top, root_fd)
        return removed

    def _purge_leaf(
        self,
        root_fd: int,
        leaf_fd: int,
        prefix: str,
        now: float,
        stale_before: float,
        counts: dict[str, int],
    ) -> bool:
        """Purge one fan-out folder; return whether it was left empty."""
        left = removed = 0
        for name in os.listdir(leaf_fd):
            if _is_temp(name):
                try:
                    info = os.stat(name, dir_fd=leaf_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # a write committed (or discarded) it meanwhile
                if info.st_mtime < stale_before:
                    with suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=leaf_fd)
                        counts["temporary"] += 1
                        continue
            elif _is_session(name, prefix):
                verdict = self._bury(root_fd, leaf_fd, name, now)
                if verdict is not None:
                    counts[verdict] += 1
                    removed += 1
                    continue
            left += 1
        if removed and self._fsync:
            os.fsync(leaf_fd)
        return left == 0

    def _bury(self, root_fd: int, leaf_fd: int, name: str, now: float) -> str | None:
        """Remove *name* if it is expired or unreadable: ``"expired"``, ``"corrupt"`` or None."""
        try:
            fd = os.open(name, _READ, dir_fd=leaf_fd)
        except FileNotFoundError:
            return None
        try:
            found = _read_head(fd, _CHUNK)
            if found is None or not _intact(fd, *found):
                verdict = "corrupt"
            elif found[0].expires_at <= now:
                verdict = "expired"
            else:
                return None
            dead = os.fstat(fd)
            with _locked(leaf_fd):
                info = os.stat(name, dir_fd=leaf_fd, follow_symlinks=False)
                if (info.st_dev, info.st_ino) != (dead.st_dev, dead.st_ino):
                    return None  # a writer replaced it meanwhile: that value stays
                delta = (-1, -_payload_size(info.st_size))
                self._counted(root_fd, delta, lambda: os.unlink(name, dir_fd=leaf_fd))
            return verdict
        except FileNotFoundError:
            return None
        finally:
            os.close(fd)


@final
class _TempFile:
    """A temporary file beside a session's file that becomes it on `commit`."""

    def __init__(self, storage: DirectoryStorage, where: tuple[str, str], size: int) -> None:
        self.storage = storage
        self.place, self.temp, self.fd, self.version = storage._prepare(where, size)
        self.committed = False
        self.crc = self.length = 0

    def append(self, data: bytes) -> None:
        _write_all(self.fd, data)
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)

    def write(self, data: bytes, expires_at: float) -> None:
        """Write a whole value and its header with one call (no copy of the value)."""
        self.length, self.crc = len(data), zlib.crc32(data)
        header = self._header(expires_at)
        written = os.writev(self.fd, [header, data])
        if written < len(header):
            _write_all(self.fd, header[written:])
            written = len(header)
        _write_all(self.fd, data[written - len(header) :])

    def seal(self, expires_at: float) -> None:
        """Write the header of a value written with `append`."""
        os.lseek(self.fd, 0, os.SEEK_SET)
        _write_all(self.fd, self._header(expires_at))

    def _header(self, expires_at: float) -> bytes:
        return _HEADER.pack(_MAGIC, _FORMAT, expires_at, self.version, self.length, self.crc)

    def _delta(self) -> tuple[int, int]:
        """What replacing the session's file with this one changes in the ledger."""
        old = _file_size(self.place.leaf, self.place.name)
        return (1, self.length) if old is None else (0, self.length - _payload_size(old))

    def commit(self, expect: int | None, now: float) -> int | None:
        """Make the file the session's, if its live version is *expect* (`_ANY`: always).

        Returns the new version, or ``None`` (the file stays temporary) on a conflict.
        """
        storage, place, temp = self.storage, self.place, self.temp
        if storage._fsync:
            os.fsync(self.fd)
        fd, self.fd = self.fd, -1
        os.close(fd)
        name, leaf = place.name, place.leaf
        with _locked(leaf):
            if expect != _ANY and _live_version(leaf, name, now, expect is None) != expect:
                return None
            rename = lambda: os.replace(temp, name, src_dir_fd=leaf, dst_dir_fd=leaf)  # noqa: E731
            storage._counted(place.root, self._delta, rename)
            self.committed = True  # from here on, a failure cannot bring the old value back
        if storage._fsync:
            os.fsync(leaf)
        return self.version

    def close(self) -> None:
        """Release a committed file's folders (errors propagate), or discard the file."""
        if self.committed:
            self.place.close()
        else:
            self.discard()

    def discard(self) -> None:
        """Close everything and remove the temporary file if it is still there; never raises."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            with suppress(OSError):
                os.close(fd)
        if not self.committed:
            self.committed = True  # nothing left to remove
            try:
                os.unlink(self.temp, dir_fd=self.place.leaf)
            except OSError as exc:
                message = "could not remove a temporary file in %s (%s): purge() removes it"
                logger.warning(message, self.place.path, _os_text(exc))
        self.place.close(quiet=True)


@final
class _Source:
    """`ChunkSource` of a streaming read: the open file, read one chunk per thread hop."""

    def __init__(
        self, storage: DirectoryStorage, place: _Place, fd: int, head: _Head, first: bytes
    ) -> None:
        self._storage, self._place, self._fd = storage, place, fd
        self._remaining, self._crc, self._expected = (
            head.length - len(first),
            zlib.crc32(first),
            head.crc,
        )

    async def read(self) -> bytes:
        if self._fd < 0:
            return b""  # noqa: ASYNC910 (the base class checkpoints)
        return await self._storage._run(self._read)

    async def aclose(self) -> None:  # noqa: ASYNC910 (the base class checkpoints)
        if self._fd >= 0:
            await self._storage._run(self._close)

    def _read(self) -> bytes:
        path = self._place.path
        with _os_errors("read", path):
            chunk = os.read(self._fd, min(self._remaining, _CHUNK))
            self._remaining -= len(chunk)
            self._crc = zlib.crc32(chunk, self._crc)
            if not chunk or self._remaining == 0:
                self._close()
                if self._remaining or self._crc != self._expected:
                    _unreadable(path)
                    raise StorageError(f"a session file in {path} is corrupted")
            return chunk

    def _close(self) -> None:
        self._fd = -1
        self._place.close()


@final
class _Sink:
    """`ChunkSink` of a streaming write: chunks go to a temporary file, 64 KiB per hop."""

    def __init__(self, storage: DirectoryStorage, temp: _TempFile, ttl: float | None) -> None:
        self._storage, self._temp, self._ttl = storage, temp, ttl
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._path = temp.place.path

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
            await self._storage._run(self._append, self._take())

    def _append(self, data: bytes) -> None:
        with _os_errors("store", self._path):
            self._temp.append(data)

    async def commit(self) -> None:
        now = self._storage._wall_clock()
        expires_at = math.inf if self._ttl is None else now + self._ttl
        await self._storage._run(self._commit, self._take(), expires_at, now)

    def _commit(self, rest: bytes, expires_at: float, now: float) -> None:
        with _os_errors("store", self._path):
            try:
                self._temp.append(rest)
                self._temp.seal(expires_at)
                self._temp.commit(_ANY, now)
            except BaseException:
                self._temp.discard()
                raise
            self._temp.close()

    async def abort(self) -> None:
        await self._storage._run(self._temp.discard)


def root_problem(path: str) -> str | None:
    """Why *path* is not a storage root one may purge or count, or ``None`` if it is one.

    A root is a directory (not a link) that holds only fan-out folders (two hex digits)
    and the storage's own files; the storage checks owners and modes itself. Blocking:
    for command-line tools.
    """
    try:
        info = os.lstat(path)
    except OSError as exc:
        return f"{path} cannot be opened: {_os_text(exc)}"
    if stat.S_ISLNK(info.st_mode):
        return f"{path} is a symbolic link; give the real directory: {os.path.realpath(path)}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} is not a directory"
    try:
        names = os.listdir(path)
    except OSError as exc:
        return f"{path} cannot be listed: {_os_text(exc)}"
    foreign = sorted(
        n for n in names if not (len(n) == 2 and _HEX.issuperset(n)) and n not in _ROOT_EXTRAS
    )
    if foreign:
        shown = ", ".join(repr(n) for n in foreign[:3])
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        return (
            f"{path} is not a DirectoryStorage root: it holds {shown}{more}, and a root holds "
            "only two-hex-digit folders"
        )
    return None
