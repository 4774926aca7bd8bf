"""DirectoryStorage beyond the shared contract: layout, format, purge, threads, cancellation."""

from __future__ import annotations

import fcntl
import logging
import math
import os
import stat
import struct
import threading
import time
import zlib
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trio_sessions import (
    DirectoryScan,
    DirectoryStorage,
    PurgeResult,
    SessionNotFound,
    StorageError,
    Versioned,
    WriteConflict,
)
from trio_sessions.storages import _directory as directory_module
from trio_sessions.testing import ManualClock, read_all

SMALL = b"small session"
LARGE = bytes(range(256)) * 1200  # 300 KiB: streams in several chunks


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under *root* (directories map to None), for before/after comparisons."""
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = None if path.is_dir() else path.read_bytes()
    return found


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def temp_files(root: Path) -> list[Path]:
    return [p for p in files(root) if p.name.endswith(".tmp")]


def session_file(root: Path) -> Path:
    (path,) = [p for p in files(root) if not p.name.endswith(".tmp")]
    return path


def provider_of(
    value: bytes, piece: int = 10_000
) -> Callable[[trio.abc.SendStream], Awaitable[None]]:
    async def provider(stream: trio.abc.SendStream) -> None:
        for start in range(0, len(value), piece):
            await stream.send_all(value[start : start + piece])

    return provider


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def storage(tmp_path: Path, clock: ManualClock) -> DirectoryStorage:
    return DirectoryStorage(tmp_path / "root", wall_clock=clock)


async def test_file_names_are_hashes_in_two_fanout_levels(storage: DirectoryStorage) -> None:
    ids = [f"user-{n}-{'x' * n}" for n in range(20)]
    with trio.fail_after(10):
        for session_id in ids:
            await storage.write_bytes(session_id, SMALL)
    root = Path(storage.root)
    paths = files(root)
    assert len(paths) == len(ids)
    for path in paths:
        first, second, name = path.relative_to(root).parts
        assert len(name) == 64
        assert name.startswith(first + second)
        assert int(name, 16) >= 0
    listing = "\n".join(tree(root))
    assert not any(session_id in listing for session_id in ids)


async def test_files_are_private(storage: DirectoryStorage) -> None:
    with trio.fail_after(10):
        await storage.write_bytes("private", SMALL)
    path = session_file(Path(storage.root))
    for item in (path, path.parent, path.parent.parent, Path(storage.root)):
        assert stat.S_IMODE(item.stat().st_mode) & 0o077 == 0, item


async def test_reads_of_unknown_ids_create_nothing(storage: DirectoryStorage) -> None:
    root = Path(storage.root)
    with trio.fail_after(10):
        for session_id in ("unknown", "a" * 256):
            with pytest.raises(SessionNotFound):
                await storage.read_bytes(session_id)
            with pytest.raises(SessionNotFound):
                await storage.read(session_id, read_all)
            await storage.invalidate(session_id)
        assert tree(root.parent) == {}
        await storage.write_bytes("known", SMALL)
        before = tree(root)
        for session_id in ("unknown", "other"):
            with pytest.raises(SessionNotFound):
                await storage.read_bytes(session_id)
            await storage.invalidate(session_id)
        assert await storage.scan() == DirectoryScan(1, len(SMALL), 0)
        assert tree(root) == before


async def test_invalidate_removes_only_its_own_file(storage: DirectoryStorage) -> None:
    with trio.fail_after(10):
        await storage.write_bytes("one", SMALL)
        await storage.write("two", provider_of(LARGE))
        await storage.invalidate("one")
        assert len(files(Path(storage.root))) == 1
        assert await storage.read_bytes("two") == LARGE
        with pytest.raises(SessionNotFound):
            await storage.read_bytes("one")


async def test_expiry_survives_a_restart_and_purge_removes_it(
    tmp_path: Path, clock: ManualClock
) -> None:
    with trio.fail_after(10):
        first = DirectoryStorage(tmp_path, wall_clock=clock)
        await first.write_bytes("short", b"a", ttl=10)
        await first.write("long", provider_of(LARGE), ttl=100)
        await first.write_bytes("forever", b"c")
        await first.aclose()
        second = DirectoryStorage(tmp_path, wall_clock=clock)
        clock.advance(50)
        with pytest.raises(SessionNotFound):
            await second.read_bytes("short")
        assert await second.read("long", read_all) == LARGE
        assert len(files(tmp_path)) == 3  # a read changes nothing
        # The session's two fan-out folders are left empty, and go too.
        assert await second.purge() == PurgeResult(1, 0, 0, folders=2)
        assert len(files(tmp_path)) == 2
        clock.advance(10_000_000)
        assert await second.purge() == PurgeResult(1, 0, 0, folders=2)
        assert await second.read_bytes("forever") == b"c"
        top, sub, name = session_file(tmp_path).relative_to(tmp_path).parts
        assert tree(tmp_path).keys() == {f"{top}", f"{top}/{sub}", f"{top}/{sub}/{name}"}


async def test_a_file_holds_its_version_in_a_format_2_header(
    storage: DirectoryStorage, clock: ManualClock
) -> None:
    with trio.fail_after(10):
        version = await storage.write_bytes_if("versioned", SMALL, version=None, ttl=60)
        raw = session_file(Path(storage.root)).read_bytes()
        magic, fmt, expires_at, stored, length, crc = struct.unpack(">4sB3xdQQI", raw[:36])
        assert (magic, fmt, stored, length, raw[36:]) == (b"TSsn", 2, version, len(SMALL), SMALL)
        assert crc == zlib.crc32(SMALL)
        assert expires_at == clock() + 60
        assert 1 <= version < 2**63
        assert (await storage.read_versioned("versioned")).version == version


def format_1_file(data: bytes, expires_at: float = math.inf) -> bytes:
    """A session file as the first release wrote it (no version in the header)."""
    return struct.pack(">4sB3xdQI", b"TSsn", 1, expires_at, len(data), zlib.crc32(data)) + data


@pytest.mark.parametrize("value", [SMALL, LARGE], ids=["small", "large"])
async def test_files_of_the_first_format_stay_readable_and_writable(
    tmp_path: Path, clock: ManualClock, value: bytes
) -> None:
    with trio.fail_after(10):
        storage = DirectoryStorage(tmp_path, wall_clock=clock)
        await storage.write_bytes("old-session", b"placeholder")
        path = session_file(tmp_path)
        path.write_bytes(format_1_file(value))
        assert await storage.read_bytes("old-session") == value
        assert await storage.read("old-session", read_all) == value
        # Every process derives the same version from the file, and keeps it.
        first = await storage.read_versioned("old-session")
        second = await DirectoryStorage(tmp_path).read_versioned("old-session")
        assert first == second
        assert first.data == value
        assert await storage.purge() == PurgeResult(0, 0, 0)
        assert (await storage.read_versioned("old-session")).version == first.version
        # A compare-and-set with it works, and writes the current format.
        with pytest.raises(WriteConflict):
            await storage.write_bytes_if("old-session", b"x", version=None)
        new = await storage.write_bytes_if("old-session", b"new", version=first.version)
        assert path.read_bytes()[4] == 2
        assert (await storage.read_versioned("old-session")).version == new
        # Expiry in an old file still counts.
        path.write_bytes(format_1_file(b"short", clock() + 10))
        clock.advance(11)
        with pytest.raises(SessionNotFound):
            await storage.read_versioned("old-session")
        assert (await storage.purge()).expired == 1


async def test_a_damaged_file_can_be_replaced_by_a_creating_write(
    storage: DirectoryStorage,
) -> None:
    with trio.fail_after(10):
        await storage.write_bytes("damaged", LARGE)
        path = session_file(Path(storage.root))
        path.write_bytes(_flip_last_byte(path.read_bytes()))
        with pytest.raises(SessionNotFound):
            await storage.read_versioned("damaged")
        # Read as absent, so a write expecting no session must succeed.
        version = await storage.write_bytes_if("damaged", b"fresh", version=None)
        assert await storage.read_versioned("damaged") == Versioned(b"fresh", version)


def _truncate_payload(data: bytes) -> bytes:
    return data[:-1]


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "empty": lambda data: b"",
    "half header": lambda data: data[:10],
    "header only": lambda data: data[:36],
    "truncated payload": _truncate_payload,
    "trailing garbage": lambda data: data + b"x",
    "bad magic": lambda data: b"XXXX" + data[4:],
    "unknown version": lambda data: data[:4] + b"\x63" + data[5:],
    "flipped payload byte": _flip_last_byte,
    "nan expiry": lambda data: data[:8] + b"\x7f\xf8" + bytes(6) + data[16:],
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS), ids=list(CORRUPTIONS))
@pytest.mark.parametrize("value", [SMALL, LARGE], ids=["small", "large"])
async def test_unreadable_files_read_as_absent_and_purge_removes_them(
    storage: DirectoryStorage, caplog: pytest.LogCaptureFixture, corrupt: str, value: bytes
) -> None:
    with trio.fail_after(10):
        await storage.write_bytes("victim-session", value)
        path = session_file(Path(storage.root))
        path.write_bytes(CORRUPTIONS[corrupt](path.read_bytes()))
        with caplog.at_level(logging.WARNING, logger=directory_module.__name__):
            with pytest.raises(SessionNotFound):
                await storage.read_bytes("victim-session")
            if corrupt == "flipped payload byte" and value is LARGE:
                # A streaming read finds a bad checksum only at the end.
                with pytest.raises(StorageError):
                    await storage.read("victim-session", read_all)
            else:
                with pytest.raises(SessionNotFound):
                    await storage.read("victim-session", read_all)
        assert caplog.records, "no warning was logged"
        assert all("victim" not in record.getMessage() for record in caplog.records)
        assert path.exists()
        assert await storage.purge() == PurgeResult(0, corrupt=1, temporary=0, folders=2)
        assert not path.exists()
        assert tree(Path(storage.root)) == {}
        await storage.write_bytes("victim-session", b"new")
        assert await storage.read_bytes("victim-session") == b"new"


@pytest.mark.parametrize("kind", ["folder", "fifo"])
async def test_a_folder_or_a_fifo_in_place_of_a_session_file_reads_as_absent(
    storage: DirectoryStorage, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    with trio.fail_after(10):
        await storage.write_bytes("victim-session", SMALL)
        path = session_file(Path(storage.root))
        path.unlink()
        if kind == "folder":
            path.mkdir(mode=0o700)
        else:
            os.mkfifo(path, 0o600)
        with caplog.at_level(logging.WARNING, logger=directory_module.__name__):
            for read in (storage.read_bytes, storage.read_versioned):
                with pytest.raises(SessionNotFound):
                    await read("victim-session")
        assert caplog.records, "no warning was logged"
        # No version either: a write expecting one conflicts.
        with pytest.raises(WriteConflict):
            await storage.write_bytes_if("victim-session", b"x", version=1)


@pytest.mark.parametrize("value", [SMALL, LARGE], ids=["small", "large"])
async def test_short_reads_are_not_taken_for_damage(
    storage: DirectoryStorage, monkeypatch: pytest.MonkeyPatch, value: bytes
) -> None:
    """A file system may return fewer bytes than asked before the end of a file."""

    class ShortReads:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def read(fd: int, size: int) -> bytes:
            return os.read(fd, min(size, 7))

    with trio.fail_after(10):
        version = await storage.write_bytes_if("short", value, version=None)
        monkeypatch.setattr(directory_module, "os", ShortReads())
        assert await storage.read_versioned("short") == Versioned(value, version)
        assert await storage.read("short", read_all) == value
        version = await storage.write_bytes_if("short", value[::-1], version=version)
        assert await storage.read_bytes("short") == value[::-1]
        with pytest.raises(WriteConflict):
            await storage.write_bytes_if("short", b"", version=None)


async def test_temporary_files_are_ignored_and_stale_ones_purged(storage: DirectoryStorage) -> None:
    with trio.fail_after(10):
        await storage.write_bytes("kept", SMALL)
        directory = session_file(Path(storage.root)).parent
        fresh = directory / ".0123456789abcdef.tmp"
        stale = directory / ".fedcba9876543210.tmp"
        for path in (fresh, stale):
            path.write_bytes(b"half a write")
        old = time.time() - 7200
        os.utime(stale, (old, old))
        assert await storage.read_bytes("kept") == SMALL
        assert await storage.scan() == DirectoryScan(1, len(SMALL), 2)
        assert await storage.purge() == PurgeResult(expired=0, corrupt=0, temporary=1)
        assert fresh.exists()
        assert not stale.exists()
        assert await storage.purge(temp_grace=-1) == PurgeResult(0, 0, 1)
        assert temp_files(Path(storage.root)) == []
        assert await storage.read_bytes("kept") == SMALL


async def test_purge_and_statistics_leave_foreign_files_alone(storage: DirectoryStorage) -> None:
    root = Path(storage.root)
    with trio.fail_after(10):
        await storage.write_bytes("mine", SMALL)
        foreign = [root / "README", root / "zz" / "notes.txt", root / "ab" / "cd" / ("0" * 64)]
        for path in foreign:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"not a session")
        assert await storage.scan() == DirectoryScan(1, len(SMALL), 0)
        assert await storage.purge(temp_grace=-1) == PurgeResult(0, 0, 0)
        assert all(path.exists() for path in foreign)


async def test_purge_keeps_a_session_rewritten_while_it_looks(
    storage: DirectoryStorage, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(10):
        await storage.write_bytes("racy", b"old", ttl=1)
        clock.advance(2)
        other = DirectoryStorage(storage.root)  # another process, renewing the session
        real_flock = fcntl.flock
        renewed: list[bool] = []

        def flock_after_a_rewrite(fd: int, operation: int) -> None:
            # Purge found the file expired and now takes the folder's lock to remove it:
            # just before, the other process rewrites the session.
            if operation == fcntl.LOCK_EX and not renewed:
                renewed.append(True)
                other._write_file("racy", b"renewed", math.inf, -1, 0.0)
            real_flock(fd, operation)

        monkeypatch.setattr(fcntl, "flock", flock_after_a_rewrite)
        assert await storage.purge() == PurgeResult(expired=0, corrupt=0, temporary=0)
        monkeypatch.undo()
        assert renewed
        assert await storage.read_bytes("racy") == b"renewed"
        assert temp_files(Path(storage.root)) == []


async def test_purge_ignores_a_temporary_file_committed_while_it_looks(
    storage: DirectoryStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(10):
        await storage.write_bytes("busy", SMALL)
        (session_file(Path(storage.root)).parent / ".0123456789abcdef.tmp").write_bytes(b"x")
        real_stat = os.stat

        def stat_after_a_commit(name: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            if str(name).endswith(".tmp"):  # the writer renames it just now
                os.unlink(name, dir_fd=kwargs["dir_fd"])
            return real_stat(name, *args, **kwargs)

        monkeypatch.setattr(os, "stat", stat_after_a_commit)
        assert await storage.purge(temp_grace=-1) == PurgeResult(0, 0, 0)
        monkeypatch.undo()
        assert await storage.read_bytes("busy") == SMALL


@pytest.fixture
def thread_hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The jobs given to worker threads (however the storage starts them)."""
    hops: list[str] = []
    real_start = trio.lowlevel.start_thread_soon
    real_run_sync = trio.to_thread.run_sync

    def name(fn: Callable[..., Any]) -> str:
        fn = getattr(fn, "func", fn)  # a functools.partial
        return getattr(fn, "__name__", repr(fn))

    def start(fn: Callable[[], Any], deliver: Callable[[Any], object], name_: Any = None) -> None:
        hops.append(name(fn))
        real_start(fn, deliver, name_)

    async def run_sync(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        hops.append(name(fn))  # (trio.to_thread does not go through trio.lowlevel's name)
        return await real_run_sync(fn, *args, **kwargs)

    monkeypatch.setattr(trio.lowlevel, "start_thread_soon", start)
    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync)
    return hops


async def test_one_thread_hop_per_small_operation(
    storage: DirectoryStorage, thread_hops: list[str]
) -> None:
    operations: list[Callable[[], Awaitable[object]]] = [
        lambda: storage.write_bytes("hops", SMALL),
        lambda: storage.read_bytes("hops"),
        lambda: storage.write("hops", provider_of(SMALL * 100, piece=7)),
        lambda: storage.read("hops", read_all),
        lambda: storage.invalidate("hops"),
        lambda: storage.write_bytes_if("hops", SMALL, version=None),
        lambda: storage.read_versioned("hops"),
        lambda: storage.write_bytes_if("hops", SMALL, version=1),  # a conflict
        lambda: storage.invalidate_if("hops", version=1),  # a conflict
    ]
    with trio.fail_after(10):
        for operation in operations:
            thread_hops.clear()
            with suppress(WriteConflict):
                await operation()
            assert len(thread_hops) == 1, thread_hops


async def test_large_values_stream_chunk_by_chunk(
    storage: DirectoryStorage, thread_hops: list[str]
) -> None:
    chunks = -(-len(LARGE) // (64 * 1024))
    with trio.fail_after(10):
        await storage.write("big", provider_of(LARGE))
        # open, a hop per 64 KiB gathered from the provider's 10 KB pieces, commit
        assert len(thread_hops) <= 1 + chunks + 1, thread_hops
        thread_hops.clear()
        assert await storage.read("big", read_all) == LARGE
        assert len(thread_hops) == chunks  # the first chunk comes with the open


async def test_the_limiter_bounds_worker_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = trio.CapacityLimiter(2)
    storage = DirectoryStorage(tmp_path, limiter=limiter)
    lock = threading.Lock()
    running = peak = 0
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.005)  # in a worker thread
        real_fsync(fd)
        with lock:
            running -= 1

    monkeypatch.setattr(os, "fsync", slow_fsync)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for n in range(16):
                nursery.start_soon(storage.write_bytes, f"id-{n}", SMALL)
    assert peak == 2


@pytest.mark.parametrize("value", [SMALL, LARGE], ids=["small", "large"])
async def test_a_cancelled_write_completes_or_leaves_nothing(
    storage: DirectoryStorage, value: bytes
) -> None:
    outcomes = set()
    with trio.fail_after(30):
        # Cancel at moments spread over the write, from before it starts to after it ends.
        for delay in [0.0, *(n * 0.0003 for n in range(40)), 0.5]:
            await storage.write_bytes("cancelled", b"old")

            async def write() -> None:
                await storage.write("cancelled", provider_of(value))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                await trio.sleep(delay)
                nursery.cancel_scope.cancel()
            got = await storage.read_bytes("cancelled")
            assert got in (b"old", value)
            outcomes.add(got)
            assert temp_files(Path(storage.root)) == []
    assert outcomes == {b"old", value}


async def test_a_failing_provider_leaves_the_old_value_and_no_temporary_file(
    storage: DirectoryStorage,
) -> None:
    class Failed(Exception):
        pass

    async def failing(stream: trio.abc.SendStream) -> None:
        await stream.send_all(LARGE)
        raise Failed

    with trio.fail_after(10):
        await storage.write_bytes("kept", b"old")
        with pytest.raises(Failed):
            await storage.write("kept", failing)
        assert await storage.read_bytes("kept") == b"old"
        assert temp_files(Path(storage.root)) == []


async def test_a_reader_keeps_the_version_it_opened(storage: DirectoryStorage) -> None:
    new = bytes(reversed(LARGE))
    with trio.fail_after(10):
        await storage.write("snapshot", provider_of(LARGE))

        async def consumer(stream: trio.abc.ReceiveStream) -> bytes:
            first = bytes(await stream.receive_some())
            await storage.write("snapshot", provider_of(new))
            return first + await read_all(stream)

        assert await storage.read("snapshot", consumer) == LARGE
        assert await storage.read_bytes("snapshot") == new


async def test_maintenance_after_close_raises(storage: DirectoryStorage) -> None:
    await storage.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await storage.purge()
    with pytest.raises(trio.ClosedResourceError):
        await storage.scan()
