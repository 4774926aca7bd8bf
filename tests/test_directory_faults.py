"""Fault injection: make the Nth file-system call of an operation fail, for every N.

The storage module's ``os`` is replaced by a stand-in whose Nth call of a file function
raises ``OSError`` (ENOSPC or EIO). For every N up to the operation's last call, the
operation must raise a clean `StorageError`, leave the old value intact (a write that
failed after its rename has replaced the value whole), leave no temporary file, and leak
no file descriptor.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_sessions import DirectoryStorage, SessionNotFound, StorageError
from trio_sessions.storages import directory as directory_module

FILE_FUNCTIONS = frozenset(
    {"open", "close", "read", "write", "fstat", "fsync", "lseek", "replace", "rename"}
    | {"link", "unlink", "makedirs", "mkdir", "scandir", "stat"}
)
WRITE = frozenset(["open", "write", "fsync", "close", "replace"])
READ = frozenset(["open", "fstat", "read", "close"])
OLD = b"old value " * 10
NEW_SMALL = b"new value " * 100
NEW_LARGE = bytes(range(256)) * 1000  # 250 KiB: streams in four chunks
SID = "fault-injection"


class FaultyOs:
    """Stands in for `os`; the *fail_at*-th call of a file function raises OSError."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.fail_at = 0
        self.calls: list[str] = []
        self.failed: str | None = None

    def arm(self, fail_at: int) -> None:
        self.fail_at, self.calls, self.failed = fail_at, [], None

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name not in FILE_FUNCTIONS:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            if len(self.calls) == self.fail_at:
                self.failed = name
                if name == "close":
                    real(*args, **kwargs)  # close releases the descriptor even when it fails
                raise OSError(self.code, os.strerror(self.code))
            return real(*args, **kwargs)

        return call


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    parts = []
    while chunk := await stream.receive_some():
        parts.append(chunk)
    return b"".join(parts)


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


SCENARIOS: dict[str, Scenario] = {
    "write_bytes over a value": Scenario(
        OLD, lambda s: s.write_bytes(SID, NEW_SMALL), NEW_SMALL, "replace", WRITE
    ),
    "write_bytes into an empty root": Scenario(
        None, lambda s: s.write_bytes(SID, NEW_SMALL), NEW_SMALL, "replace", WRITE
    ),
    "streamed write over a value": Scenario(
        OLD, lambda s: s.write(SID, provider_of(NEW_LARGE)), NEW_LARGE, "replace", WRITE
    ),
    "streamed write into an empty root": Scenario(
        None, lambda s: s.write(SID, provider_of(NEW_LARGE)), NEW_LARGE, "replace", WRITE
    ),
    "invalidate": Scenario(
        OLD, lambda s: s.invalidate(SID), None, "unlink", frozenset(["unlink", "fsync"])
    ),
    "read_bytes": Scenario(NEW_LARGE, lambda s: s.read_bytes(SID), NEW_LARGE, None, READ),
    "streamed read": Scenario(NEW_LARGE, lambda s: s.read(SID, read_all), NEW_LARGE, None, READ),
}


def temp_files(root: str) -> list[Path]:
    return list(Path(root).rglob("*.tmp"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def current(storage: DirectoryStorage) -> bytes | None:
    try:
        return await storage.read_bytes(SID)
    except SessionNotFound:
        return None


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_every_failing_call_leaves_a_clean_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, code: int
) -> None:
    scenario = SCENARIOS[name]
    faulty = FaultyOs(code)
    monkeypatch.setattr(directory_module, "os", faulty)
    failures: dict[str, int] = {}
    with trio.fail_after(60):
        for fail_at in range(1, 200):
            storage = DirectoryStorage(tmp_path / str(fail_at))
            faulty.arm(0)
            if scenario.old is not None:
                await storage.write_bytes(SID, scenario.old)
            fds = open_fds()
            faulty.arm(fail_at)
            try:
                await scenario.operation(storage)
            except StorageError as exc:
                cause = exc.__cause__
            else:
                cause = None
            assert isinstance(cause, OSError) == (faulty.failed is not None), (fail_at, cause)
            assert not isinstance(cause, OSError) or cause.errno == code
            failed, calls = faulty.failed, faulty.calls[: fail_at - 1]
            faulty.arm(0)
            committed = failed is None or scenario.commit in calls
            assert await current(storage) == (scenario.new if committed else scenario.old)
            assert not temp_files(storage.root), "a temporary file stayed"
            assert open_fds() == fds, "a file descriptor leaked"
            if failed is None:
                break
            failures[failed] = failures.get(failed, 0) + 1
        else:
            raise AssertionError("the operation never completed")
    print(f"{name}, {errno.errorcode[code]}: {sum(failures.values())} failing calls {failures}")
    assert scenario.essential <= failures.keys()
