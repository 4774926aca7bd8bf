"""Hostile ids: every one raises InvalidSessionId or is a normal miss, and touches nothing.

An audit hook (PEP 578) records every file-system access the process makes while the
ids are tried: invalid ids must cause none at all, valid ones (misses) only reads inside
the root, and nothing may be created anywhere. ``TRIO_SESSIONS_HOSTILE_IDS`` sets how
many ids to try (default 100,000).
"""

from __future__ import annotations

import os
import random
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_sessions import SESSION_ID_PATTERN, DirectoryStorage, InvalidSessionId, SessionNotFound

TOTAL = int(os.environ.get("TRIO_SESSIONS_HOSTILE_IDS", "100000"))
VALID = re.compile(SESSION_ID_PATTERN, re.ASCII)
FOLDER_OR_HASH = re.compile(r"[0-9a-f]{2}|[0-9a-f]{64}")

FIXED: list[Any] = [
    *("", ".", "..", "...", "/", "//", "\\", "\\\\", "\x00", "a\x00", "\x00a", "C:", "c:", "C:\\"),
    *("C:/x", "\\\\?\\C:\\x", "\\\\server\\share", "/etc/passwd", "../../../../etc/passwd"),
    *("..\\..\\windows\\win.ini", "%2e%2e", "%2e%2e%2f", "%2F", "%00", "..%2f..%2f", "%c0%ae"),
    *("~", "~root", "$HOME", "${HOME}", "*", "?", "a*b", "[a]", "a b", " ", "\t", "\n", "\r\n"),
    *("a\r\nSet-Cookie: x=y", "é", "\u00e9", "e\u0301", "\uff41", "\u0661", "\u202e", "\u200b"),
    *(
        "😀",
        "\ud800",
        "\udfff",
        "\ufeff",
        "\uff41\uff42\uff43",
        "İ",
        "ß",
        "x" * 257,
        "x" * 10_240,
        "a.b",
    ),
    *("a/b", "a\\b", ".hidden", "a.tmp", ".0123456789abcdef.tmp", "a;b", "a,b", "a:b", "a|b"),
    *("<a>", '"a"', "'a'", "a=b", "a&b", "a#b", "a+b", "a%b", "a@b", "a!b", "\x7f", "\x1b[31m"),
    None,
    b"abc",
    b"../x",
    123,
    1.5,
    ["a"],
    ("a",),
    {"a": 1},
    object(),
    # Valid ids, including ones that look like paths or devices on some system: misses.
    *("CON", "NUL", "PRN", "AUX", "COM1", "LPT1", "-", "_", "--", "-rf", "a" * 256, "0" * 64),
]
HOSTILE = [f for f in FIXED if isinstance(f, str) and not VALID.fullmatch(f) and len(f) < 100]
BENIGN = ["abc", "session", "0123456789", "-", "_", "A" * 40]


CHANGES = frozenset(
    {"os.mkdir", "os.rename", "os.rmdir", "os.link", "os.symlink", "os.truncate", "os.chmod"}
    | {"os.chown", "os.utime", "os.chdir", "shutil.copyfile", "shutil.move", "shutil.rmtree"}
)


class AccessLog:
    """File-system accesses seen by the audit hook while `recording` is set."""

    def __init__(self) -> None:
        self.recording = False
        self.lock = threading.Lock()
        self.accesses: list[tuple[str, str, bool]] = []  # event, path, creates or changes

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.recording:
            return
        if event == "open":
            path, _, flags = args
            changes = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
        elif event in ("os.scandir", "os.listdir", "os.remove"):
            # (invalidating a missing session tries an unlink; the snapshot shows its effect)
            path, changes = args[0], False
        elif event in CHANGES:
            path, changes = args[0], True
        else:
            return
        if isinstance(path, str | bytes | os.PathLike):
            path = os.fsdecode(path)
            # A bare name is opened relative to a folder's descriptor (the audit event
            # does not say which): keep it as it is, to check it cannot lead elsewhere.
            if os.sep in path:
                path = os.path.abspath(path)
            with self.lock:
                self.accesses.append((event, path, changes))

    def take(self) -> list[tuple[str, str, bool]]:
        with self.lock:
            taken, self.accesses = self.accesses, []
        return taken


ACCESS_LOG = AccessLog()
sys.addaudithook(ACCESS_LOG.hook)


@contextmanager
def recording() -> Iterator[AccessLog]:
    ACCESS_LOG.take()
    ACCESS_LOG.recording = True
    try:
        yield ACCESS_LOG
    finally:
        ACCESS_LOG.recording = False


def snapshot(path: Path) -> list[str]:
    return sorted(str(p) for p in path.rglob("*"))


async def never_provider(stream: trio.abc.SendStream) -> None:  # noqa: ASYNC124
    raise AssertionError("a provider was called for an invalid id")


async def never_consumer(stream: trio.abc.ReceiveStream) -> None:  # noqa: ASYNC124
    raise AssertionError("a consumer was called for an invalid id")


async def try_ids(storage: DirectoryStorage, ids: list[Any]) -> tuple[int, int]:
    """Try every operation with each id; return (invalid, valid) counts."""
    with recording() as log:
        return await _try_ids(storage, ids, log)


async def _try_ids(storage: DirectoryStorage, ids: list[Any], log: AccessLog) -> tuple[int, int]:
    invalid = [i for i in ids if not (isinstance(i, str) and VALID.fullmatch(i))]
    valid = [i for i in ids if isinstance(i, str) and VALID.fullmatch(i)]
    for bad in invalid:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: storage.read_bytes(bad),  # noqa: B023
            lambda: storage.read(bad, never_consumer),  # noqa: B023
            lambda: storage.write_bytes(bad, b"x"),  # noqa: B023
            lambda: storage.write(bad, never_provider),  # noqa: B023
            lambda: storage.invalidate(bad),  # noqa: B023
        ]
        for call in calls:
            try:
                await call()
            except InvalidSessionId:
                continue
            raise AssertionError(f"{bad!r:.60} was accepted")
    assert log.take() == [], "an invalid id reached the file system"
    for good in valid:
        with pytest.raises(SessionNotFound):
            await storage.read_bytes(good)
        with pytest.raises(SessionNotFound):
            await storage.read(good, never_consumer)
        await storage.invalidate(good)
    for event, path, changes in log.take():
        assert not changes, f"{event} {path}: a miss tried to create or change something"
        if os.path.isabs(path):
            assert os.path.commonpath([storage.root, path]) == storage.root, f"{event} outside root"
        else:  # relative to the root or one of its folders: a fan-out folder or a hash
            assert FOLDER_OR_HASH.fullmatch(path), f"{event} {path!r}: not a storage name"
    return len(invalid), len(valid)


def generated_ids(rng: random.Random, count: int) -> Iterator[str]:
    """Fragments of hostile ids glued together, with some random code points and lengths."""
    for _ in range(count):
        kind = rng.random()
        if kind < 0.6:  # at least one hostile fragment among benign ones
            parts = [rng.choice(HOSTILE), *rng.choices(BENIGN + HOSTILE, k=rng.randint(0, 3))]
            rng.shuffle(parts)
            yield "".join(parts)
        elif kind < 0.8:
            length = rng.randint(1, 40)
            yield "".join(chr(rng.randint(0, 0x2FFFF)) for _ in range(length))
        elif kind < 0.99:
            yield "a" * rng.randint(257, 20_000)
        else:
            alphabet = "abcXYZ019-_"
            yield "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 256)))  # valid


async def test_fixed_and_generated_hostile_ids(tmp_path: Path) -> None:
    root = tmp_path / "root"
    storage = DirectoryStorage(root)
    with trio.fail_after(120):
        await storage.write_bytes("canary", b"canary")
        before = snapshot(tmp_path)
        counts = await try_ids(storage, FIXED)
        rng = random.Random(1234)
        batch = 5000
        while sum(counts) < TOTAL:
            more = await try_ids(storage, list(generated_ids(rng, batch)))
            counts = (counts[0] + more[0], counts[1] + more[1])
        assert snapshot(tmp_path) == before
        assert await storage.read_bytes("canary") == b"canary"
    print(f"hostile ids: {counts[0]} invalid, {counts[1]} valid misses, 0 accesses outside root")
    assert counts[0] >= TOTAL * 0.9


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ids=st.lists(
        st.one_of(
            st.text(max_size=300),
            st.text(st.characters(codec="ascii"), max_size=300),
            st.from_regex(VALID, fullmatch=True),
            st.binary(max_size=20),
            st.none(),
            st.integers(),
        ),
        max_size=100,
    )
)
async def test_hypothesis_hostile_ids(tmp_path: Path, ids: list[Any]) -> None:
    root = tmp_path / "hypothesis-root"
    storage = DirectoryStorage(root)
    with trio.fail_after(30):
        await try_ids(storage, ids)
    assert not root.exists()
