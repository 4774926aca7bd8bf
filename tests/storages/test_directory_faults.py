"""Fault injection: make the Nth file-system call of an operation fail, for every N.

The storage module's ``os`` and ``fcntl`` are replaced by stand-ins whose Nth call of a
file function raises ``OSError`` (ENOSPC or EIO). For every N up to the operation's last
call, the operation must raise a clean `StorageError` naming the folder and the system's
message, leave the old value (and its version) intact (a write that failed after its
rename has replaced the value whole), leave no temporary file, leave the quota's count
right, and leak no file descriptor.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_sessions import (
    DirectoryStorage,
    PurgeResult,
    SessionNotFound,
    StorageError,
    WriteConflict,
)
from trio_sessions.storages import _directory as directory_module
from trio_sessions.testing import read_all

FILE_FUNCTIONS = frozenset(
    {"open", "close", "read", "write", "fstat", "fsync", "lseek", "replace", "rename"}
    | {"link", "unlink", "makedirs", "mkdir", "scandir", "stat", "listdir", "rmdir"}
    | {"pread", "pwrite", "flock", "writev"}
)
WRITE = frozenset(["open", "fstat", "fsync", "close", "flock", "replace"])
WRITE_SMALL = WRITE | {"writev"}
WRITE_LARGE = WRITE | {"write"}
COUNTED = frozenset(["stat", "pwrite"])  # the replaced file's size, the quota's count
READ = frozenset(["open", "fstat", "read", "close"])
OLD = b"old value " * 10
NEW_SMALL = b"new value " * 100
NEW_LARGE = bytes(range(256)) * 1000  # 250 KiB: streams in four chunks
SID = "fault-injection"


class FaultyOs:
    """Stands in for `os` and `fcntl`; the *fail_at*-th file call raises OSError."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.fail_at = 0
        self.calls: list[str] = []
        self.failed: str | None = None

    def arm(self, fail_at: int) -> None:
        self.fail_at, self.calls, self.failed = fail_at, [], None

    def module(self, real: Any) -> Any:
        """A stand-in for the module *real* whose file functions count toward fail_at."""
        faults = self

        class Module:
            def __getattr__(self, name: str) -> Any:
                function = getattr(real, name)
                return faults.wrap(name, function) if name in FILE_FUNCTIONS else function

        return Module()

    def wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if len(self.calls) == self.fail_at:
                self.failed = name
                if name == "close":
                    real(*args, **kwargs)  # close releases the descriptor even when it fails
                raise OSError(self.code, os.strerror(self.code))
            return real(*args, **kwargs)

        return call


def provider_of(value: bytes) -> Callable[[trio.abc.SendStream], Awaitable[None]]:
    async def provider(stream: trio.abc.SendStream) -> None:
        for start in range(0, len(value), 64 * 1024):
            await stream.send_all(value[start : start + 64 * 1024])

    return provider


@dataclass(frozen=True)
class Scenario:
    old: bytes | None  # the value before the operation (None: absent)
    operation: Callable[[DirectoryStorage], Awaitable[object]]
    new: bytes | None  # the value after it succeeds
    commit: str | None  # the call after which the new state is in place
    essential: frozenset[str]  # calls each run must have made fail at least once
    quota: bool = False  # with a quota, whose count must stay right
    expired: bool = False  # the old value has expired when the operation runs


async def compare_and_set(storage: DirectoryStorage) -> None:
    version = (await storage.read_versioned(SID)).version
    await storage.write_bytes_if(SID, NEW_SMALL, version=version)


async def compare_and_delete(storage: DirectoryStorage) -> None:
    version = (await storage.read_versioned(SID)).version
    await storage.invalidate_if(SID, version=version)


DELETE = frozenset(["unlink", "fsync", "flock", "stat"])


SCENARIOS: dict[str, Scenario] = {
    "write_bytes over a value": Scenario(
        OLD, lambda s: s.write_bytes(SID, NEW_SMALL), NEW_SMALL, "replace", WRITE_SMALL
    ),
    "write_bytes into an empty root": Scenario(
        None, lambda s: s.write_bytes(SID, NEW_SMALL), NEW_SMALL, "replace", WRITE_SMALL
    ),
    "streamed write over a value": Scenario(
        OLD, lambda s: s.write(SID, provider_of(NEW_LARGE)), NEW_LARGE, "replace", WRITE_LARGE
    ),
    "streamed write into an empty root": Scenario(
        None, lambda s: s.write(SID, provider_of(NEW_LARGE)), NEW_LARGE, "replace", WRITE_LARGE
    ),
    "invalidate": Scenario(
        OLD, lambda s: s.invalidate(SID), None, "unlink", frozenset(["unlink", "fsync"])
    ),
    "write_bytes_if": Scenario(OLD, compare_and_set, NEW_SMALL, "replace", WRITE_SMALL),
    "write_bytes_if creating": Scenario(
        None,
        lambda s: s.write_bytes_if(SID, NEW_SMALL, version=None),
        NEW_SMALL,
        "replace",
        WRITE_SMALL,
    ),
    "write_bytes_if conflicting": Scenario(
        OLD,
        lambda s: s.write_bytes_if(SID, NEW_SMALL, version=1),
        OLD,
        None,
        frozenset(["open", "fstat", "writev", "fsync", "close", "flock", "read", "unlink"]),
    ),
    "invalidate_if": Scenario(OLD, compare_and_delete, None, "unlink", DELETE),
    "write_bytes with a quota": Scenario(
        OLD,
        lambda s: s.write_bytes(SID, NEW_SMALL),
        NEW_SMALL,
        "replace",
        WRITE_SMALL | COUNTED,
        quota=True,
    ),
    "streamed write with a quota": Scenario(
        None,
        lambda s: s.write(SID, provider_of(NEW_LARGE)),
        NEW_LARGE,
        "replace",
        WRITE_LARGE | COUNTED,
        True,
    ),
    "invalidate with a quota": Scenario(
        OLD, lambda s: s.invalidate(SID), None, "unlink", DELETE | {"pwrite"}, quota=True
    ),
    "purge with a quota": Scenario(
        OLD, lambda s: s.purge(), None, "unlink", DELETE | {"pwrite"}, quota=True, expired=True
    ),
    "read_bytes": Scenario(NEW_LARGE, lambda s: s.read_bytes(SID), NEW_LARGE, None, READ),
    "streamed read": Scenario(NEW_LARGE, lambda s: s.read(SID, read_all), NEW_LARGE, None, READ),
}


def temp_files(root: str) -> list[Path]:
    return list(Path(root).rglob("*.tmp"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def current(storage: DirectoryStorage) -> tuple[bytes, int] | None:
    try:
        found = await storage.read_versioned(SID)
    except SessionNotFound:
        return None
    return found.data, found.version


async def files_on_disk(storage: DirectoryStorage) -> tuple[int, int]:
    stats = await storage.scan()
    return stats.sessions, stats.bytes


def ledger(storage: DirectoryStorage) -> tuple[int, int] | None:
    """The quota's count; ``None`` if not made yet (the next write counts the files)."""
    path = Path(storage.root) / ".quota"
    if not path.exists():
        return None
    raw = path.read_bytes()
    if not raw:
        return None  # made, then a failure came before its first count
    assert raw[:4] == b"TSqt"
    return int.from_bytes(raw[4:12]), int.from_bytes(raw[12:20])


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_every_failing_call_leaves_a_clean_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, code: int
) -> None:
    scenario = SCENARIOS[name]
    faulty = FaultyOs(code)
    monkeypatch.setattr(directory_module, "os", faulty.module(os))
    monkeypatch.setattr(directory_module, "fcntl", faulty.module(fcntl))
    failures: dict[str, int] = {}
    now = [1000.0]  # a clock the test may set back, to see an expired value
    max_sessions = 10 if scenario.quota else None
    with trio.fail_after(60):
        for fail_at in range(1, 200):
            root = tmp_path / str(fail_at)
            storage = DirectoryStorage(root, wall_clock=lambda: now[0], max_sessions=max_sessions)
            faulty.arm(0)
            if scenario.old is not None:
                await storage.write_bytes(SID, scenario.old, ttl=10 if scenario.expired else None)
            before = await current(storage)
            if scenario.expired:
                now[0] += 20
            fds = open_fds()
            faulty.arm(fail_at)
            try:
                await scenario.operation(storage)
            except StorageError as exc:
                cause, conflict = exc.__cause__, False
                message = str(exc)
            except WriteConflict:
                cause, conflict = None, True
            else:
                cause, conflict = None, False
            failed, calls = faulty.failed, faulty.calls[: fail_at - 1]
            if cause is None:
                # No error: the operation completed. A failing call it did not report can
                # only be a clean-up once the outcome was decided (closing a descriptor,
                # removing the temporary file of a lost race).
                assert failed in (None, "close", "unlink"), (fail_at, failed)
            else:
                assert isinstance(cause, OSError), (fail_at, cause)
                assert cause.errno == code
                assert storage.root in message, message
                assert os.strerror(code) in message, message
            faulty.arm(0)
            committed = cause is None or scenario.commit in calls
            if scenario.expired:
                now[0] -= 20  # see whether the expired value is still there
            after = await current(storage)
            if not committed:
                assert after == before, "a failed operation changed the value or its version"
            elif scenario.new is None:
                assert after is None
            else:
                assert after is not None
                assert after[0] == scenario.new
            if conflict and failed == "unlink":
                # Removing the temporary file of a lost race failed: it stays for purge().
                assert len(temp_files(storage.root)) == 1
                assert await storage.purge(temp_grace=-1) == PurgeResult(0, 0, 1)
            assert not temp_files(storage.root), "a temporary file stayed"
            assert open_fds() == fds, "a file descriptor leaked"
            if scenario.quota and (counted := ledger(storage)) is not None:
                assert counted == await files_on_disk(storage), "the quota miscounts"
            if failed is None:
                break
            failures[failed] = failures.get(failed, 0) + 1
        else:
            raise AssertionError("the operation never completed")
    print(f"{name}, {errno.errorcode[code]}: {sum(failures.values())} failing calls {failures}")
    assert scenario.essential <= failures.keys()
