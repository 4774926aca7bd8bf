"""DirectoryStorage on a shared host: foreign or open folders and symbolic links are refused.

A local attacker who can create the root or a fan-out folder before the application, or
swap a folder for a link, must get nothing: no session read or written through it. Every
refusal names the path and says what to do. Also: the constructor's argument checks, and
the messages of file-system errors.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_sessions import DirectoryStorage, SessionNotFound, StorageError
from trio_sessions.testing import read_all

NOBODY = 65534
SID = "victim-session"


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in root.rglob("*")
    }


def give_away(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make *path* belong to another user (as root: really; otherwise: pretend we are one)."""
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    else:
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)


async def provider(stream: trio.abc.SendStream) -> None:
    await stream.send_all(b"streamed " * 20_000)


def operations(storage: DirectoryStorage) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "write_bytes": lambda: storage.write_bytes(SID, b"secret"),
        "write": lambda: storage.write(SID, provider),
        "read_bytes": lambda: storage.read_bytes(SID),
        "read": lambda: storage.read(SID, read_all),
        "read_versioned": lambda: storage.read_versioned(SID),
        "write_bytes_if": lambda: storage.write_bytes_if(SID, b"x", version=None),
        "invalidate": lambda: storage.invalidate(SID),
        "invalidate_if": lambda: storage.invalidate_if(SID, version=1),
        "purge": storage.purge,
        "scan": storage.scan,
    }


async def assert_refused(storage: DirectoryStorage, path: Path, *words: str) -> None:
    """Every operation raises a StorageError naming *path* and containing *words*."""
    for name, operation in operations(storage).items():
        with pytest.raises(StorageError) as caught:
            await operation()
        message = str(caught.value)
        assert str(path) in message, (name, message)
        for word in words:
            assert word in message, (name, message)


async def test_a_root_others_may_write_to_is_refused_at_construction(tmp_path: Path) -> None:  # noqa: ASYNC124
    root = tmp_path / "sessions"
    root.mkdir()
    os.chmod(root, 0o777)
    with pytest.raises(StorageError) as caught:
        DirectoryStorage(root)
    assert str(caught.value) == (
        f"DirectoryStorage refuses {root}: other users may write to it (mode 0777); "
        f"restrict it: chmod 700 {root}"
    )
    assert tree(root) == []


async def test_a_root_pre_created_by_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The attack: another local user creates the root first, world-writable, and waits.
    root = tmp_path / "sessions"
    root.mkdir(mode=0o700)
    give_away(root, monkeypatch)
    os.chmod(root, 0o777)
    with pytest.raises(StorageError, match="chmod 700"):
        DirectoryStorage(root)
    # Made private but still theirs: refused at the first operation, nothing written.
    os.chmod(root, 0o700)
    storage = DirectoryStorage(root)
    with trio.fail_after(10):
        await assert_refused(storage, root, "owned by uid", "chown")
    assert tree(root) == []


async def test_a_linked_root_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(StorageError, match=r"symbolic link.*use the real directory"):
        DirectoryStorage(link)
    # Linked after construction: refused by every operation.
    root = tmp_path / "later"
    storage = DirectoryStorage(root)
    root.symlink_to(real)
    with trio.fail_after(10):
        await assert_refused(storage, root, "symbolic link")
    assert tree(real) == []


async def fanout_of(storage: DirectoryStorage) -> tuple[Path, Path]:
    """Write the session once and return its two fan-out folders."""
    await storage.write_bytes(SID, b"genuine")
    (path,) = files(Path(storage.root))
    return path.parent.parent, path.parent


@pytest.mark.parametrize("level", ["first", "second"])
async def test_a_linked_fanout_folder_is_never_followed(tmp_path: Path, level: str) -> None:
    storage = DirectoryStorage(tmp_path / "root")
    elsewhere = tmp_path / "elsewhere"
    with trio.fail_after(10):
        top, leaf = await fanout_of(storage)
        # The attacker swaps the folder for a link to one of their own, holding a copy
        # of the session file (which a followed link would let us read).
        folder = top if level == "first" else leaf
        folder.rename(elsewhere)
        folder.symlink_to(elsewhere)
        before = snapshot(elsewhere)
        await assert_refused(storage, folder, "symbolic link", "remove the link")
    # Nothing was written, created or removed through the link.
    assert snapshot(elsewhere) == before


@pytest.mark.parametrize("level", ["first", "second"])
async def test_an_open_or_foreign_fanout_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, level: str
) -> None:
    storage = DirectoryStorage(tmp_path / "root")
    with trio.fail_after(10):
        top, leaf = await fanout_of(storage)
        folder = top if level == "first" else leaf
        os.chmod(folder, 0o777)
        await assert_refused(storage, folder, "mode 0777", f"chmod 700 {folder}")
        os.chmod(folder, 0o700)
        assert await storage.read_bytes(SID) == b"genuine"
        give_away(folder, monkeypatch)
        await assert_refused(storage, folder, "owned by uid")


async def test_a_foreign_root_holding_a_victims_session_gives_nothing_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The attack of the report: the victim's application writes into a root the attacker
    # made; the attacker renames the victim's file onto their own session's file.
    root = tmp_path / "shared"
    storage = DirectoryStorage(root)
    with trio.fail_after(10):
        await storage.write_bytes("attacker-session", b"user=mallory")
        give_away(root, monkeypatch)
        with pytest.raises(StorageError, match="owned by uid"):
            await storage.write_bytes("victim-session", b"user=alice")
        with pytest.raises(StorageError, match="owned by uid"):
            await storage.read_bytes("attacker-session")
    assert [path.read_bytes()[-12:] for path in files(root)] == [b"user=mallory"]


async def test_new_files_and_folders_are_private(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        storage = DirectoryStorage(tmp_path / "a" / "root")
        with trio.fail_after(10):
            await storage.write_bytes(SID, b"x")
            await storage.write(SID, provider)
            await storage.write_bytes_if("other", b"y", version=None)
    finally:
        os.umask(old)
    paths = [os.path.join(storage.root, path) for path in tree(Path(storage.root))]
    modes = {path: stat.S_IMODE(os.stat(path).st_mode) for path in paths}
    assert set(modes.values()) == {0o700, 0o600}
    folders = {path for path in paths if stat.S_ISDIR(os.stat(path).st_mode)}
    for path, mode in modes.items():
        assert mode == (0o700 if path in folders else 0o600), path
    assert stat.S_IMODE(os.stat(storage.root).st_mode) == 0o700


# ------------------------------------------------------------------ arguments


BAD_ARGUMENTS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"root": ""}, ValueError, "root must name a directory"),
    ({"root": b"/tmp/sessions"}, TypeError, "os.fsdecode"),
    ({"root": 42}, TypeError, "root must be a str or os.PathLike"),
    ({"root": "/tmp/a\x00b"}, ValueError, "root must name a directory"),
    ({"fsync": "no"}, TypeError, "fsync must be True or False"),
    ({"fsync": 0}, TypeError, "fsync must be True or False"),
    ({"max_size": True}, ValueError, "max_size must be a positive int"),
    ({"max_size": 2.5}, ValueError, "max_size must be a positive int"),
    ({"max_sessions": True}, TypeError, "max_sessions must be a positive int or None"),
    ({"max_sessions": 2.5}, TypeError, "max_sessions must be a positive int or None"),
    ({"max_sessions": 0}, TypeError, "max_sessions must be a positive int or None"),
    ({"max_bytes": 1e9}, TypeError, "max_bytes must be a positive int or None"),
    ({"max_bytes": False}, TypeError, "max_bytes must be a positive int or None"),
    ({"wall_clock": 5}, TypeError, "wall_clock must be a callable"),
    ({"limiter": 8}, TypeError, "limiter must be a trio.CapacityLimiter"),
]


@pytest.mark.parametrize(
    ("arguments", "error", "message"), BAD_ARGUMENTS, ids=[repr(a) for a, _, _ in BAD_ARGUMENTS]
)
def test_bad_arguments_are_refused_at_construction(
    tmp_path: Path, arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    arguments = {"root": tmp_path / "root", **arguments}
    with pytest.raises(error, match=message.replace("(", r"\(").replace(".", r"\.")):
        DirectoryStorage(**arguments)
    assert list(tmp_path.iterdir()) == []


async def test_purge_checks_its_grace(tmp_path: Path) -> None:
    storage = DirectoryStorage(tmp_path)
    for bad, error in (("60", TypeError), (True, TypeError), (float("nan"), ValueError)):
        with pytest.raises(error, match="temp_grace"):
            await storage.purge(temp_grace=bad)  # type: ignore[arg-type]


async def test_errors_name_the_folder_and_the_system_message(tmp_path: Path) -> None:
    parent = tmp_path / "x"
    parent.mkdir()
    storage = DirectoryStorage(parent / "root")
    parent.rmdir()
    parent.write_bytes(b"a file where the root's parent should be")
    with trio.fail_after(10):
        with pytest.raises(StorageError) as caught:
            await storage.write_bytes(SID, b"x")
        folder = storage._where(SID)[1]
        assert str(caught.value) == (
            f"DirectoryStorage could not store in {folder}: [Errno 20] Not a directory"
        )
        assert isinstance(caught.value.__cause__, NotADirectoryError)
        with pytest.raises(StorageError, match=r"could not load in .*: \[Errno 20\]"):
            await storage.read_bytes(SID)
        with pytest.raises(SessionNotFound):
            await DirectoryStorage(tmp_path / "missing").read_bytes(SID)
