"""DirectoryStorage's quota: a bound on sessions and bytes shared by every process on a root.

A write beyond the quota raises `StorageError` (which the integrations answer with 503)
and stores nothing, not even a folder; rewriting or removing a stored session always
works. The flood from several processes is in test_directory_processes.py; the one here
runs in this process (``TRIO_SESSIONS_LOCAL_FLOOD`` writes, default 5,000).
"""

from __future__ import annotations

import itertools
import os
import time
from collections import Counter
from pathlib import Path

import httpx2 as httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from trio_sessions import CookieOptions, DirectoryStorage, SessionNotFound, StorageError
from trio_sessions._demo import open_server
from trio_sessions.asgi import SessionMiddleware
from trio_sessions.testing import ManualClock

FLOOD = int(os.environ.get("TRIO_SESSIONS_LOCAL_FLOOD", "5000"))


def entries(root: Path) -> tuple[int, int, int]:
    """(session files, fan-out folders, bytes on disk in session files) under *root*."""
    files = folders = size = 0
    for path in root.rglob("*"):
        if path.is_dir():
            folders += 1
        elif path.name != ".quota":
            files += 1
            size += path.stat().st_size
    return files, folders, size


def ledger(root: Path) -> tuple[int, int]:
    raw = (root / ".quota").read_bytes()
    return int.from_bytes(raw[4:12]), int.from_bytes(raw[12:20])


async def provider(stream: trio.abc.SendStream) -> None:
    await stream.send_all(b"s" * 200_000)


async def test_max_sessions_refuses_new_sessions_only(tmp_path: Path) -> None:
    storage = DirectoryStorage(tmp_path, max_sessions=3)
    with trio.fail_after(10):
        for sid in ("a", "b", "c"):
            await storage.write_bytes(sid, b"v")
        before = entries(tmp_path)
        message = (
            "DirectoryStorage quota reached: 3 sessions stored, max_sessions=3; purge() "
            f"expired sessions or raise the quota of {tmp_path}"
        )
        with pytest.raises(StorageError) as caught:
            await storage.write_bytes("d", b"v")
        assert str(caught.value) == message
        with pytest.raises(StorageError, match="quota reached"):
            await storage.write_bytes_if("d", b"v", version=None)
        with pytest.raises(StorageError, match="quota reached"):
            await storage.write("d", provider)
        assert entries(tmp_path) == before  # not even a folder for the refused session
        with pytest.raises(SessionNotFound):
            await storage.read_bytes("d")
        # Stored sessions stay usable: rewritten, conditionally too, and removed.
        await storage.write_bytes("a", b"rewritten")
        version = (await storage.read_versioned("b")).version
        await storage.write_bytes_if("b", b"rewritten", version=version)
        await storage.write("c", provider)
        await storage.invalidate("a")
        await storage.write_bytes("d", b"v")  # room again
        assert ledger(tmp_path) == (3, len(b"rewritten") + 200_000 + 1)


async def test_max_bytes_counts_payload_bytes(tmp_path: Path) -> None:
    storage = DirectoryStorage(tmp_path, max_bytes=1000)
    with trio.fail_after(10):
        await storage.write_bytes("a", b"x" * 600)
        with pytest.raises(StorageError, match=r"600 payload bytes stored, this write adds 500"):
            await storage.write_bytes("b", b"x" * 500)
        await storage.write_bytes("b", b"x" * 400)  # exactly at the quota
        with pytest.raises(StorageError, match="max_bytes=1000"):
            await storage.write_bytes("a", b"x" * 601)  # a rewrite that grows
        await storage.write_bytes("a", b"x" * 100)  # one that shrinks
        await storage.write_bytes("c", b"x" * 500)
        assert ledger(tmp_path) == (3, 1000)
        assert (await storage.scan()).bytes == 1000


async def test_expired_sessions_count_until_purged(tmp_path: Path) -> None:
    clock = ManualClock()
    storage = DirectoryStorage(tmp_path, max_sessions=2, wall_clock=clock)
    with trio.fail_after(10):
        await storage.write_bytes("a", b"v", ttl=10)
        await storage.write_bytes("b", b"v", ttl=10)
        clock.advance(11)
        with pytest.raises(StorageError, match="purge"):
            await storage.write_bytes("c", b"v")
        await storage.write_bytes("a", b"renewed")  # the expired file's place is taken
        purged = await storage.purge()
        assert (purged.expired, purged.folders) == (1, 2)
        await storage.write_bytes("c", b"v")
        assert ledger(tmp_path) == (2, len(b"renewed") + 1)


async def test_every_storage_on_a_root_shares_the_count(tmp_path: Path) -> None:
    early = DirectoryStorage(tmp_path)  # no quota: sessions written before one was set
    with trio.fail_after(10):
        for n in range(5):
            await early.write_bytes(f"early-{n}", b"v")
        first = DirectoryStorage(tmp_path, max_sessions=8)
        second = DirectoryStorage(tmp_path, max_sessions=8)
        await first.write_bytes("first", b"v")  # counts what is there: 5 + 1
        await second.write_bytes("second", b"v")
        await early.write_bytes("late", b"v")  # a storage without a quota keeps the count
        with pytest.raises(StorageError, match="8 sessions stored"):
            await first.write_bytes("one-too-many", b"v")
        await early.invalidate("early-0")
        await second.write_bytes("fits", b"v")
        assert ledger(tmp_path) == (8, 8) == ((await first.scan()).sessions, 8)
        # A lost or damaged count is made again from what the root holds.
        (tmp_path / ".quota").write_bytes(b"garbage")
        with pytest.raises(StorageError, match="8 sessions stored"):
            await first.write_bytes("one-too-many", b"v")
        assert ledger(tmp_path) == (8, 8)


async def test_a_flood_of_new_sessions_stays_under_the_quota(tmp_path: Path) -> None:
    quota = 1000
    storage = DirectoryStorage(tmp_path, fsync=False, max_sessions=quota, max_bytes=quota * 200)
    legitimate = {f"user-{n}": f"user={n}".encode() for n in range(100)}
    counter = itertools.count()
    stored = refused = 0

    async def flood() -> None:
        nonlocal stored, refused
        for n in counter:
            if n >= FLOOD:
                return
            try:
                await storage.write_bytes(f"anonymous-{n}", b"cart=" + b"x" * 150)
            except StorageError as exc:
                if "quota reached" not in str(exc):
                    raise
                refused += 1
            else:
                stored += 1

    start = time.monotonic()
    with trio.fail_after(600):
        for sid, value in legitimate.items():
            await storage.write_bytes(sid, value)
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(flood)
        # The legitimate sessions survive the flood and stay usable.
        for sid, value in legitimate.items():
            assert await storage.read_bytes(sid) == value
            await storage.write_bytes(sid, value + b";seen")
    elapsed = time.monotonic() - start
    files, folders, size = entries(tmp_path)
    assert stored == quota - len(legitimate)
    assert refused == FLOOD - stored
    assert files == quota
    assert folders <= 2 * quota  # refused writes made no folder
    assert size <= quota * (36 + 200)
    print(
        f"flood: {FLOOD} new-session writes in {elapsed:.1f} s, {stored} stored, {refused} "
        f"refused; on disk {files} files, {folders} folders, {size} bytes"
    )


async def count(request: Request) -> PlainTextResponse:  # noqa: ASYNC124 (a framework view)
    request.session["n"] = request.session.get("n", 0) + 1
    return PlainTextResponse(str(request.session["n"]))


async def test_an_app_answers_503_at_the_quota_and_its_users_keep_working(
    tmp_path: Path,
) -> None:
    quota, users, visitors = 100, 20, 400
    storage = DirectoryStorage(tmp_path, fsync=False, max_sessions=quota)
    cookie = CookieOptions(name="sid")
    app = Starlette(
        routes=[Route("/", count)],
        middleware=[Middleware(SessionMiddleware, storage=storage, cookie=cookie)],
    )
    statuses: Counter[int] = Counter()
    with trio.fail_after(300):
        async with open_server(app) as url, httpx.AsyncClient(base_url=url) as client:
            logged_in = []
            for _ in range(users):
                response = await client.get("/")
                logged_in.append(response.headers["set-cookie"].split(";")[0])
            for _ in range(visitors):  # each without a cookie: a new session each
                statuses[(await client.get("/")).status_code] += 1
            for user in logged_in:  # the users stored before are still served, and saved
                response = await client.get("/", headers={"Cookie": user})
                assert (response.status_code, response.text) == (200, "2")
    assert statuses == {200: quota - users, 503: visitors - (quota - users)}
    assert (await storage.scan()).sessions == quota
