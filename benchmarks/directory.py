"""DirectoryStorage against the raw file sequence and two file caches, same payload.

Part 1, microseconds per operation (one task, median of the repeats, cases interleaved):

* DirectoryStorage ``write_bytes`` (fsync on and off) and ``read_bytes`` vs the *raw
  one-hop sequence*: the same system calls (temporary file, write, fsync, close,
  ``os.replace``, fsync of the directory; or open, read, close) in one
  ``trio.to_thread.run_sync`` call with no framework around them (goal: <= 1.3x);
* cachelib's ``FileSystemCache`` (Flask-Session's file backend) and ``diskcache.Cache``,
  each called through one thread hop and directly on the event loop. Neither fsyncs
  each write, so compare them with the fsync-off figures.

Part 2, event-loop lateness: a task sleeps 1 ms in a loop while 8 tasks alternate writes
and reads; its lateness p50/p99/max in ms (goal for DirectoryStorage: p50 <= 1 ms,
p99 <= max(2 ms, 1.5x the raw one-hop sequence's p99)), next to the peers called
directly on the loop, which block it.

Run: ``python benchmarks/directory.py [--ops N] [--repeats R] [--seconds S] [--payload B]``
(needs the ``bench`` extra for cachelib and diskcache).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import random
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trio_sessions import DirectoryStorage

IDS = [f"benchmark-session-{n:02d}-{'x' * 20}" for n in range(64)]
HEADER = bytes(28)
FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


# ----------------------------------------------------- the raw one-hop sequence


def raw_path(root: str, session_id: str) -> tuple[str, str]:
    name = hashlib.blake2b(session_id.encode(), digest_size=32).hexdigest()
    directory = os.path.join(root, name[:2], name[2:4])
    return directory, os.path.join(directory, name)


def raw_write(root: str, session_id: str, data: bytes, fsync: bool) -> None:
    directory, path = raw_path(root, session_id)
    temp = os.path.join(directory, f".{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(temp, FLAGS, 0o600)
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(temp, FLAGS, 0o600)
    try:
        os.write(fd, HEADER)
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    if fsync:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def raw_read(root: str, session_id: str) -> bytes:
    fd = os.open(raw_path(root, session_id)[1], os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fstat(fd)
        os.read(fd, len(HEADER))
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ candidates

Op = Callable[[str], Awaitable[object]]


class Candidate:
    """A way to write and read the payload, over a fresh directory."""

    def __init__(self, name: str, payload: bytes, make: Callable[[str, bytes], tuple[Op, Op]]):
        self.name, self.payload, self.make = name, payload, make

    def open(self) -> tuple[str, Op, Op]:
        root = tempfile.mkdtemp(prefix="bench-directory-")
        write, read = self.make(root, self.payload)
        return root, write, read


def directory(fsync: bool) -> Callable[[str, bytes], tuple[Op, Op]]:
    def make(root: str, payload: bytes) -> tuple[Op, Op]:
        storage = DirectoryStorage(root, fsync=fsync)
        return (lambda sid: storage.write_bytes(sid, payload)), storage.read_bytes

    return make


def raw(fsync: bool) -> Callable[[str, bytes], tuple[Op, Op]]:
    def make(root: str, payload: bytes) -> tuple[Op, Op]:
        limiter = trio.CapacityLimiter(8)

        async def write(sid: str) -> None:
            await trio.to_thread.run_sync(raw_write, root, sid, payload, fsync, limiter=limiter)

        async def read(sid: str) -> bytes:
            return await trio.to_thread.run_sync(raw_read, root, sid, limiter=limiter)

        return write, read

    return make


def peer(kind: str, hop: bool) -> Callable[[str, bytes], tuple[Op, Op]]:
    def make(root: str, payload: bytes) -> tuple[Op, Op]:
        cache: Any
        if kind == "cachelib":
            cachelib: Any = importlib.import_module("cachelib")
            cache = cachelib.FileSystemCache(root, threshold=0, default_timeout=0)
        else:
            diskcache: Any = importlib.import_module("diskcache")
            cache = diskcache.Cache(root)
        limiter = trio.CapacityLimiter(8)

        async def write(sid: str) -> None:
            if hop:
                await trio.to_thread.run_sync(cache.set, sid, payload, limiter=limiter)
            else:
                cache.set(sid, payload)
                await trio.lowlevel.checkpoint()

        async def read(sid: str) -> object:
            if hop:
                return await trio.to_thread.run_sync(cache.get, sid, limiter=limiter)
            value = cache.get(sid)
            await trio.lowlevel.checkpoint()
            return value

        return write, read

    return make


# ------------------------------------------------------------------ measuring


def per_op(candidate: Candidate, ops: int, which: str) -> float:
    """Microseconds per write (or per read of written ids), one task, one trio.run."""
    root, write, read = candidate.open()

    async def main() -> float:
        for sid in IDS:
            await write(sid)
        fn = write if which == "write" else read
        count = ops // 5 if which == "write" and "fsync=on" in candidate.name else ops
        start = time.perf_counter()
        for n in range(count):
            await fn(IDS[n % len(IDS)])
        return (time.perf_counter() - start) / count * 1e6

    try:
        return trio.run(main)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def lateness(candidate: Candidate | None, seconds: float) -> list[float]:
    """Lateness (ms) of a 1 ms sleep loop while 8 tasks hammer *candidate* (or nothing)."""
    root, write, read = candidate.open() if candidate else ("", None, None)
    late: list[float] = []

    async def hammer(seed: int, stop: trio.Event) -> None:
        assert write is not None
        assert read is not None
        rng = random.Random(seed)
        for _ in range(1_000_000):  # bounded by count as well as by time
            if stop.is_set():
                return
            sid = rng.choice(IDS)
            await write(sid)
            await read(sid)

    async def main() -> None:
        if write is not None:
            for sid in IDS:
                await write(sid)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            if write is not None:
                for seed in range(8):
                    nursery.start_soon(hammer, seed, stop)
            deadline = trio.current_time() + seconds
            while trio.current_time() < deadline:
                start = trio.current_time()
                await trio.sleep(0.001)
                late.append((trio.current_time() - start - 0.001) * 1000)
            stop.set()

    try:
        trio.run(main)
    finally:
        if root:
            shutil.rmtree(root, ignore_errors=True)
    return late


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ops", type=int, default=2000, help="operations per measurement (fsync=on writes: 1/5)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per lateness run")
    parser.add_argument("--payload", type=int, default=4096, help="bytes")
    args = parser.parse_args()
    payload = bytes(range(256)) * (args.payload // 256) + b"p" * (args.payload % 256)
    cases = {
        "directory fsync=on": directory(True),
        "raw one-hop fsync=on": raw(True),
        "directory fsync=off": directory(False),
        "raw one-hop fsync=off": raw(False),
        "cachelib one hop": peer("cachelib", True),
        "cachelib on loop": peer("cachelib", False),
        "diskcache one hop": peer("diskcache", True),
        "diskcache on loop": peer("diskcache", False),
    }
    candidates = {name: Candidate(name, payload, make) for name, make in cases.items()}
    figures: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for which in ("write", "read"):
            for name, candidate in candidates.items():
                figures.setdefault((name, which), []).append(per_op(candidate, args.ops, which))
    med = {key: statistics.median(values) for key, values in figures.items()}
    print(f"payload {len(payload)} bytes, {args.ops} ops x {args.repeats} repeats, one task")
    print(f"{'case':<24}{'write us/op':>12}{'read us/op':>12}")
    for name in candidates:
        print(f"{name:<24}{med[name, 'write']:>12.1f}{med[name, 'read']:>12.1f}")
    print()
    for setting in ("on", "off"):
        ratio = (
            med[f"directory fsync={setting}", "write"]
            / med[f"raw one-hop fsync={setting}", "write"]
        )
        print(f"write fsync={setting:<3} directory / raw one-hop: {ratio:.2f}x  (goal <= 1.3x)")
    ratio = med["directory fsync=off", "read"] / med["raw one-hop fsync=off", "read"]
    print(f"read              directory / raw one-hop: {ratio:.2f}x  (goal <= 1.3x)")
    print()
    print(f"event-loop lateness of a 1 ms sleep loop, 8 tasks writing+reading, {args.seconds:g} s")
    print(f"{'case':<24}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'samples':>9}")
    rows: dict[str, list[float]] = {"idle (no load)": lateness(None, args.seconds)}
    for name in (
        "directory fsync=on",
        "raw one-hop fsync=on",
        "directory fsync=off",
        "raw one-hop fsync=off",
        "cachelib on loop",
        "diskcache on loop",
    ):
        rows[name] = lateness(candidates[name], args.seconds)
    for name, late in rows.items():
        p50, p99 = percentile(late, 50), percentile(late, 99)
        print(f"{name:<24}{p50:>9.3f}{p99:>9.3f}{max(late):>9.3f}{len(late):>9}")
    print()
    for setting in ("on", "off"):
        mine, base = rows[f"directory fsync={setting}"], rows[f"raw one-hop fsync={setting}"]
        goal = max(2.0, 1.5 * percentile(base, 99))
        print(
            f"directory fsync={setting:<3}: p50 {percentile(mine, 50):.3f} ms (goal <= 1), "
            f"p99 {percentile(mine, 99):.3f} ms (goal <= {goal:.3f})"
        )


if __name__ == "__main__":
    main()
