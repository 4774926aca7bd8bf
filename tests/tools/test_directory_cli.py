"""``trio-sessions purge DIR``, ``trio-sessions stats DIR`` and the built-in check target."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio

from trio_sessions import DirectoryStorage
from trio_sessions._cli import main


def populate(root: Path) -> None:
    """Two live sessions, one expired, one unreadable file and one stale temporary file."""

    async def fill() -> None:
        past = DirectoryStorage(root, wall_clock=lambda: time.time() - 1000)
        await past.write_bytes("expired", b"gone", ttl=10)
        storage = DirectoryStorage(root)
        await storage.write_bytes("live-1", b"x" * 100)
        await storage.write_bytes("live-2", b"y" * 50, ttl=3600)
        await storage.write_bytes("broken", b"z" * 10)

    trio.run(fill)
    by_size = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    broken = next(p for p in by_size if p.stat().st_size == 36 + 10)
    broken.write_bytes(b"garbage")
    temp = broken.parent / ".0000111122223333.tmp"
    temp.write_bytes(b"half")
    os.utime(temp, (time.time() - 7200, time.time() - 7200))


def test_stats_and_purge_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    populate(tmp_path)
    assert main(["stats", str(tmp_path)]) == 0
    # Four session files (one unreadable: its size says 0 payload bytes), one temporary.
    assert capsys.readouterr().out == "sessions: 4\nbytes: 154\ntemporary files: 1\n"
    assert main(["purge", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "purged 1 expired sessions, 1 unreadable files and 1 stale temporary files" in out
    assert main(["stats", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "sessions: 2\nbytes: 150\ntemporary files: 0\n"

    async def read_back() -> tuple[bytes, bytes]:
        storage = DirectoryStorage(tmp_path)
        return await storage.read_bytes("live-1"), await storage.read_bytes("live-2")

    assert trio.run(read_back) == (b"x" * 100, b"y" * 50)


def test_purge_keeps_fresh_temporary_files_within_the_grace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    populate(tmp_path)
    assert main(["purge", str(tmp_path), "--temp-grace", "86400"]) == 0
    assert "and 0 stale temporary files" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["purge", "stats"])
def test_a_missing_directory_is_an_error(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, str(tmp_path / "missing")])
    assert exited.value.code == 2  # a usage error
    assert f"{str(tmp_path / 'missing')!r} is not a directory" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()


def test_purge_needs_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["purge"])
    assert "DIR" in capsys.readouterr().err


def test_check_runs_the_directory_storage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--only", "ttl", "--only", "close", "--max-examples", "2"]) == 0
    out = capsys.readouterr().out
    assert "== DirectoryStorage" in out
    assert "FAIL" not in out


@pytest.mark.parametrize("command", ["purge", "stats"])
def test_a_directory_that_is_not_a_storage_root_is_refused(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A mistyped path, such as /etc: purged, it would lose whatever looks like a session.
    (tmp_path / "passwd").write_text("root:x:0:0\n")
    (tmp_path / "ab").mkdir()
    with pytest.raises(SystemExit) as caught:
        main([command, str(tmp_path)])
    assert caught.value.code == (
        f"error: {tmp_path} is not a DirectoryStorage root: it holds 'passwd', and a root "
        "holds only two-hex-digit folders"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ab", "passwd"]


@pytest.mark.parametrize("command", ["purge", "stats"])
def test_an_unsafe_root_is_refused(tmp_path: Path, command: str) -> None:
    populate(tmp_path / "root")
    os.chmod(tmp_path / "root", 0o777)
    with pytest.raises(SystemExit, match=r"other users may write to it .*chmod 700"):
        main([command, str(tmp_path / "root")])
    os.chmod(tmp_path / "root", 0o700)
    (tmp_path / "link").symlink_to(tmp_path / "root")
    with pytest.raises(SystemExit, match="is a symbolic link"):
        main([command, str(tmp_path / "link")])


def test_a_root_with_a_quota_keeps_its_count_through_purge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def fill() -> None:
        past = DirectoryStorage(tmp_path, wall_clock=lambda: time.time() - 1000, max_sessions=10)
        await past.write_bytes("expired", b"gone", ttl=10)
        await DirectoryStorage(tmp_path, max_sessions=10).write_bytes("live", b"kept")

    trio.run(fill)
    assert main(["purge", str(tmp_path)]) == 0
    raw = (tmp_path / ".quota").read_bytes()
    assert (int.from_bytes(raw[4:12]), int.from_bytes(raw[12:20])) == (1, 4)
    assert main(["stats", str(tmp_path)]) == 0
    assert capsys.readouterr().out.endswith("sessions: 1\nbytes: 4\ntemporary files: 0\n")
