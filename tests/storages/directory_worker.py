"""A separate process driving a DirectoryStorage, for tests/storages/test_directory_processes.py.

    python directory_worker.py crash ROOT LOG SEED FSYNC   write until killed (bounded)
    python directory_worker.py hammer ROOT SEED SECONDS    write, read, purge; print counts
    python directory_worker.py rss ROOT MIB                stream a session; print peak RSS
    python directory_worker.py cas ROOT SEED WINS          compare-and-set one id; print wins
    python directory_worker.py race ROOT SEED ROUNDS       compare-and-set ids until logged out
    python directory_worker.py logout ROOT SEED ROUNDS     log those ids out amid the race
    python directory_worker.py stall ROOT SID              stop inside a write, holding its lock
    python directory_worker.py flood ROOT SEED COUNT MAX   create sessions under a quota

Values are recognizable: ``<writer:seq:size>`` and then bytes derived from that tag, so
a reader can tell a complete value from a torn, mixed or truncated one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TextIO

import trio

from trio_sessions import DirectoryStorage, SessionNotFound, StorageError, WriteConflict
from trio_sessions.storages import _directory as directory_module
from trio_sessions.testing import read_all

IDS = [f"shared-session-{n}" for n in range(12)]
SIZES = [40, 900, 5_000, 30_000, 70_000, 150_000, 300_000]  # the larger ones stream


def make_value(writer: str, seq: int, size: int) -> bytes:
    tag = f"<{writer}:{seq}:{size}>".encode()
    filler = hashlib.sha256(tag).digest() * (size // 32 + 1)
    return (tag + filler)[: max(size, len(tag))]


def parse_value(value: bytes) -> tuple[str, int] | None:
    """Return (writer, seq) if *value* is one complete value written by make_value."""
    end = value.find(b">")
    if not value.startswith(b"<") or end < 0:
        return None
    try:
        writer, seq, size = value[1:end].decode().split(":")
        if make_value(writer, int(seq), int(size)) != value:
            return None
        return writer, int(seq)
    except ValueError:
        return None


def provider_of(value: bytes) -> Callable[[trio.abc.SendStream], Awaitable[None]]:
    async def provider(stream: trio.abc.SendStream) -> None:
        for start in range(0, len(value), 16 * 1024):
            await stream.send_all(value[start : start + 16 * 1024])

    return provider


async def write_one(storage: DirectoryStorage, rng: random.Random, sid: str, value: bytes) -> None:
    if len(value) > 64 * 1024 or rng.random() < 0.3:
        await storage.write(sid, provider_of(value))
    else:
        await storage.write_bytes(sid, value)


async def crash(root: str, log: TextIO, seed: int, fsync: bool) -> None:
    """Write recognizable values to IDS from 4 tasks until killed (at most 60 s)."""
    storage = DirectoryStorage(root, fsync=fsync)
    rng = random.Random(seed)
    writer = f"c{seed}"
    counter = iter(range(1_000_000))
    ready = trio.Event()

    async def task() -> None:
        for seq in counter:
            sid, size = rng.choice(IDS), rng.choice(SIZES)
            print(f"start {writer} {seq}", file=log, flush=True)  # before: a crash may land
            await write_one(storage, rng, sid, make_value(writer, seq, size))
            print(f"done {writer} {seq}", file=log, flush=True)
            if not ready.is_set():
                ready.set()
                print("ready", flush=True)

    with trio.move_on_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(task)


async def hammer(root: str, seed: int, seconds: float) -> None:
    """Write, read, invalidate and purge the shared IDS; print what was seen as JSON."""
    storage = DirectoryStorage(root)
    rng = random.Random(seed)
    writer = f"h{seed}"
    counts = {"writes": 0, "reads": 0, "misses": 0, "foreign": 0, "torn": 0, "purges": 0}
    deadline = trio.current_time() + seconds
    for seq in range(200_000):
        if trio.current_time() > deadline:
            break
        sid, action = rng.choice(IDS), rng.random()
        if action < 0.4:
            ttl = 0.05 if rng.random() < 0.2 else None  # some expire, for purge to race
            value = make_value(writer, seq, rng.choice(SIZES))
            if ttl is None:
                await write_one(storage, rng, sid, value)
            else:
                await storage.write_bytes(sid, value, ttl=ttl)
            counts["writes"] += 1
        elif action < 0.95:
            try:
                if rng.random() < 0.5:
                    value = await storage.read_bytes(sid)
                else:
                    value = await storage.read(sid, read_all)
            except SessionNotFound:
                counts["misses"] += 1
                continue
            counts["reads"] += 1
            parsed = parse_value(value)
            if parsed is None:
                counts["torn"] += 1
            elif parsed[0] != writer:
                counts["foreign"] += 1
        elif action < 0.99:
            await storage.invalidate(sid)
        else:
            await storage.purge(temp_grace=60)
            counts["purges"] += 1
    print(json.dumps(counts), flush=True)


def memory_kib() -> dict[str, int]:
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # VmHWM := VmRSS


async def rss(root: str, mib: int) -> None:
    """Stream a *mib* MiB session in and out in 64 KiB chunks; print peak RSS growth."""
    size = mib * 1024 * 1024
    storage = DirectoryStorage(root, max_size=size)
    chunk = 64 * 1024
    expected = hashlib.sha256()

    async def provider(stream: trio.abc.SendStream) -> None:
        for n in range(size // chunk):
            piece = n.to_bytes(8, "big") * (chunk // 8)
            expected.update(piece)
            await stream.send_all(piece)

    async def consumer(stream: trio.abc.ReceiveStream) -> tuple[str, int]:
        digest, total = hashlib.sha256(), 0
        while piece := await stream.receive_some(chunk):
            digest.update(piece)
            total += len(piece)
        return digest.hexdigest(), total

    await storage.write("warm-up", provider_of(b"w" * 300_000))  # threads, buffers
    await storage.read("warm-up", read_all)
    reset_peak()
    baseline = memory_kib()["VmRSS"]
    await storage.write("big", provider)
    written = memory_kib()["VmHWM"] - baseline
    digest, total = await storage.read("big", consumer)
    streamed = memory_kib()["VmHWM"] - baseline
    # A control: the same value read whole must show up, or the measurement is blind.
    reset_peak()
    baseline = memory_kib()["VmRSS"]
    whole = len(await storage.read_bytes("big"))
    buffered = memory_kib()["VmHWM"] - baseline
    result = {
        "size": total,
        "whole": whole,
        "digest_ok": digest == expected.hexdigest(),
        "write_peak_kib": written,
        "peak_kib": streamed,
        "read_bytes_peak_kib": buffered,
    }
    print(json.dumps(result), flush=True)


CAS_ID = "cas-target"


async def cas(root: str, seed: int, wins: int) -> None:
    """Compare-and-set CAS_ID until *wins* writes succeeded; print each (read, written)."""
    storage = DirectoryStorage(root, fsync=False)
    rng = random.Random(seed)
    won: list[tuple[int, int]] = []
    conflicts = 0
    for seq in range(1_000_000):
        if len(won) >= wins:
            break
        found = await storage.read_versioned(CAS_ID)
        value = make_value(f"w{seed}", seq, rng.choice([40, 900, 5_000]))
        try:
            version = await storage.write_bytes_if(CAS_ID, value, version=found.version)
        except WriteConflict:
            conflicts += 1
            continue
        won.append((found.version, version))
    print(json.dumps({"wins": won, "conflicts": conflicts}), flush=True)


def race_id(n: int) -> str:
    return f"race-round-{n}"


async def race(root: str, seed: int, rounds: int) -> None:
    """For each round's id: compare-and-set it until it is gone; print wins per round.

    A round ends when the id is gone, or after 500 attempts (the logout comes within a
    few: more means it was undone, which the test then finds).
    """
    storage = DirectoryStorage(root, fsync=False)
    wins = [0] * rounds
    for n in range(rounds):
        for seq in range(500):
            try:
                found = await storage.read_versioned(race_id(n))
            except SessionNotFound:
                break
            value = make_value(f"r{seed}", n * 1000 + seq, 100)
            try:
                await storage.write_bytes_if(race_id(n), value, version=found.version)
            except WriteConflict:
                continue
            wins[n] += 1
    print(json.dumps({"wins": wins}), flush=True)


async def logout(root: str, seed: int, rounds: int) -> None:
    """For each round's id: once a racer wrote it, wait a moment, then invalidate it."""
    storage = DirectoryStorage(root, fsync=False)
    rng = random.Random(seed)
    raced = 0
    for n in range(rounds):
        initial = (await storage.read_versioned(race_id(n))).version
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (await storage.read_versioned(race_id(n))).version != initial:
                raced += 1
                break
        await trio.sleep(rng.uniform(0, 0.003))
        await storage.invalidate(race_id(n))
    print(json.dumps({"raced": raced}), flush=True)


async def stall(root: str, sid: str) -> None:
    """Start a write of *sid* and stop just before its rename, holding the folder's lock."""
    real_os = os

    class Stalling:
        def __getattr__(self, name: str) -> object:
            return getattr(real_os, name)

        @staticmethod
        def replace(*args: object, **kwargs: object) -> None:
            print("locked", flush=True)
            time.sleep(60)  # in the storage's worker thread, lock held, until killed

    setattr(directory_module, "os", Stalling())  # noqa: B010 (the module keeps it private)
    await DirectoryStorage(root).write_bytes(sid, b"never stored")


async def flood(root: str, seed: int, count: int, quota: int) -> None:
    """Try to create *count* new sessions under a quota of *quota*; print what happened."""
    storage = DirectoryStorage(root, fsync=False, max_sessions=quota)
    stored = refused = 0
    ids = iter(range(count))

    async def task() -> None:
        nonlocal stored, refused
        for n in ids:
            try:
                await storage.write_bytes(f"flood-{seed}-{n}", b"cart=" + b"x" * 150)
            except StorageError as exc:
                if "quota reached" not in str(exc):
                    raise
                refused += 1
            else:
                stored += 1

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(task)
    print(json.dumps({"stored": stored, "refused": refused}), flush=True)


def main(argv: list[str]) -> None:
    mode, root, *rest = argv
    if mode == "crash":
        log_path, seed, fsync = rest
        with open(log_path, "a") as log:
            trio.run(crash, root, log, int(seed), fsync == "1")
    elif mode == "hammer":
        seed, seconds = rest
        trio.run(hammer, root, int(seed), float(seconds))
    elif mode == "rss":
        (mib,) = rest
        trio.run(rss, root, int(mib))
    elif mode in ("cas", "race", "logout"):
        seed, count = rest
        trio.run({"cas": cas, "race": race, "logout": logout}[mode], root, int(seed), int(count))
    elif mode == "stall":
        (sid,) = rest
        trio.run(stall, root, sid)
    elif mode == "flood":
        seed, count, quota = rest
        trio.run(flood, root, int(seed), int(count), int(quota))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
