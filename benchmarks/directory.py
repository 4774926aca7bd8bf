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

Part 3, locking across processes: throughput (operations per second, summed over 1 or 8
processes) of plain writes and compare-and-sets of 16 shared ids (fsync off, or on with
``--lock-fsync``), for ways to
make a compare-and-set atomic against every other write of the id:

* ``no lock``: the plain write sequence (the baseline; a compare-and-set without a lock
  is not atomic, so it has no row);
* ``folder flock``: what DirectoryStorage does: the temporary file is written and flushed
  first, then ``flock`` of the fan-out folder is held for the version check and the rename;
* ``folder flock, whole write``: the same lock held from before the temporary file is
  made until after the rename (longer hold: the write and its fsync inside);
* ``lock file``: ``flock`` of a per-session lock file (``NAME.lock``, one more file per
  session, never removed) around the check and the rename;
* ``DirectoryStorage``: ``write_bytes`` and ``write_bytes_if`` through trio (one task
  per process, so a thread hop each).

A compare-and-set reads the stored version first, then writes if it is unchanged: a
conflict counts as an operation too. Each cell also shows the CPU time per operation
(user + system, over all processes), which a busy machine disturbs less than throughput:
lock waits cost no CPU, so they show in throughput only. ``--lock-seconds`` sets the
time per cell, and ``--lock-repeats`` how many times each runs (interleaved; the median
is shown).

The candidates of parts 1 and 2 are the benchmark suite's (`benchmarks.suite._targets`),
and so is the raw sequence, which writes a header of DirectoryStorage's size.

Run: ``python -m benchmarks.directory [--ops N] [--repeats R] [--seconds S] [--payload B]
[--lock-seconds S] [--lock-repeats N] [--lock-fsync] [--only-locks]`` (needs the ``bench``
extra for cachelib and diskcache).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import multiprocessing
import os
import random
import secrets
import shutil
import statistics
import tempfile
import time
from typing import Any

import trio

from trio_sessions import DirectoryStorage, SessionNotFound, WriteConflict

from .suite import _targets as t
from .suite._core import Target, heartbeat_lateness, percentile

IDS = [f"benchmark-session-{n:02d}-{'x' * 20}" for n in range(64)]

# ------------------------------------------------------------------ candidates


def candidates() -> dict[str, Target]:
    """Every case of parts 1 and 2 by its name; the storages' files in a new temporary
    directory each time a case is opened."""
    return {
        "directory fsync=on": t.directory_storage(True, None),
        "raw one-hop fsync=on": t.raw_files(True, None),
        "directory fsync=off": t.directory_storage(False, None),
        "raw one-hop fsync=off": t.raw_files(False, None),
        "cachelib one hop": t.file_cache("cachelib", None),
        "cachelib on loop": t.file_cache("cachelib", None, on_loop=True),
        "diskcache one hop": t.file_cache("diskcache", None),
        "diskcache on loop": t.file_cache("diskcache", None, on_loop=True),
    }


# ------------------------------------------------------------------ measuring


def per_op(name: str, target: Target, payload: bytes, ops: int, which: str) -> float:
    """Microseconds per write (or per read of written ids), one task, one trio.run."""

    async def main() -> float:
        async with target.open() as candidate:
            for sid in IDS:
                await candidate.write(sid, payload)
            fn = candidate.write if which == "write" else candidate.read
            args = (payload,) if which == "write" else ()
            count = ops // 5 if which == "write" and "fsync=on" in name else ops
            start = time.perf_counter()
            for n in range(count):
                await fn(IDS[n % len(IDS)], *args)
            return (time.perf_counter() - start) / count * 1e6

    return trio.run(main)


def lateness(target: Target | None, payload: bytes, seconds: float) -> list[float]:
    """Lateness (ms) of a 1 ms sleep loop while 8 tasks hammer *target* (or nothing)."""

    async def main() -> list[float]:
        if target is None:
            return await heartbeat_lateness(None, IDS, payload, tasks=0, seconds=seconds)
        async with target.open() as candidate:
            for sid in IDS:
                await candidate.write(sid, payload)
            return await heartbeat_lateness(candidate, IDS, payload, tasks=8, seconds=seconds)

    return trio.run(main)


# ------------------------------------------------------- locking across processes

LOCK_IDS = [f"locked-session-{n:02d}" for n in range(16)]
LOCK_VARIANTS = ["no lock", "folder flock", "folder flock, whole write", "lock file"]


def stored_version(directory: str, name: str) -> int | None:
    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return t.header_version(os.read(fd, t.HEADER_SIZE))
    finally:
        os.close(fd)


@contextlib.contextmanager
def flocked(path: str, flags: int) -> Any:
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


LOCK_FILE = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC


def locked_write(
    variant: str, root: str, sid: str, data: bytes, cas: bool, fsync: bool = False
) -> None:
    """One plain write or compare-and-set of *sid* with the raw calls, locked per *variant*."""
    directory, path = t.raw_path(root, sid)
    name = os.path.basename(path)
    expected = stored_version(directory, name) if cas else None
    header = t.raw_header(random.getrandbits(63) or 1)
    whole = variant == "folder flock, whole write"
    with flocked(directory, t.FOLDER) if whole else contextlib.nullcontext():
        temp = os.path.join(directory, f".{secrets.token_hex(8)}.tmp")
        fd = os.open(temp, t.CREATE, 0o600)
        try:
            os.write(fd, header + data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if variant == "folder flock":
            lock: Any = flocked(directory, t.FOLDER)
        elif variant == "lock file":
            lock = flocked(path + ".lock", LOCK_FILE)
        else:
            lock = contextlib.nullcontext()
        with lock:
            if cas and stored_version(directory, name) != expected:
                os.unlink(temp)
                return
            os.replace(temp, path)
        if fsync:
            t.sync_directory(directory)


def lock_worker(
    case: tuple[str, bool], root: str, seconds: float, fsync: bool, barrier: Any, results: Any
) -> None:
    """Run *case* for *seconds* once every process is ready; put (operations, CPU seconds)."""
    variant, cas = case
    rng = random.Random(os.getpid())
    payload = b"p" * 1024
    barrier.wait()
    start = cpu_seconds()
    if variant == "DirectoryStorage":
        ops = trio.run(storage_worker, root, cas, seconds, fsync, rng, payload)
    else:
        ops, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            locked_write(variant, root, rng.choice(LOCK_IDS), payload, cas, fsync)
            ops += 1
    results.put((ops, cpu_seconds() - start))


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


async def storage_worker(
    root: str, cas: bool, seconds: float, fsync: bool, rng: random.Random, payload: bytes
) -> int:
    storage = DirectoryStorage(root, fsync=fsync)
    ops, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        sid = rng.choice(LOCK_IDS)
        if cas:
            try:
                version: int | None = (await storage.read_versioned(sid)).version
            except SessionNotFound:
                version = None
            with contextlib.suppress(WriteConflict):
                await storage.write_bytes_if(sid, payload, version=version)
        else:
            await storage.write_bytes(sid, payload)
        ops += 1
    return ops


def lock_throughput(
    case: tuple[str, bool], processes: int, seconds: float, fsync: bool
) -> tuple[float, float]:
    """Operations per second of *case*, summed over *processes*, on a fresh root, and
    the CPU microseconds an operation took."""
    root = tempfile.mkdtemp(prefix="bench-directory-locks-")
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [
        context.Process(target=lock_worker, args=(case, root, seconds, fsync, barrier, results))
        for _ in range(processes)
    ]
    try:
        for sid in LOCK_IDS:  # the folders exist, the ids hold a value of the same format
            _seed(root, sid)
        for worker in workers:
            worker.start()
        counts = [results.get(timeout=120 + seconds) for _ in workers]
        ops, cpu = sum(c[0] for c in counts), sum(c[1] for c in counts)
        return ops / seconds, cpu / max(ops, 1) * 1e6
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
                worker.join()
        shutil.rmtree(root, ignore_errors=True)


def _seed(root: str, sid: str) -> None:
    async def write() -> None:
        await DirectoryStorage(root, fsync=False).write_bytes(sid, b"p")

    trio.run(write)


def locking(seconds: float, repeats: int, fsync: bool) -> None:
    variants = [*LOCK_VARIANTS, "DirectoryStorage"]
    cases = [(variant, cas) for variant in variants for cas in (False, True)]
    cases.remove(("no lock", True))  # not atomic: nothing to measure
    figures: dict[tuple[tuple[str, bool], int], list[tuple[float, float]]] = {}
    for _ in range(repeats):  # interleaved, so that a busy moment hits every case alike
        for case in cases:
            for processes in (1, 8):
                figures.setdefault((case, processes), []).append(
                    lock_throughput(case, processes, seconds, fsync)
                )
    rate = {key: statistics.median(f[0] for f in values) for key, values in figures.items()}
    cpu = {key: statistics.median(f[1] for f in values) for key, values in figures.items()}
    print(
        f"locking across processes: {len(LOCK_IDS)} shared ids, 1 KiB, "
        f"fsync {'on' if fsync else 'off'} (median of {repeats} x {seconds:g} s): "
        "operations per second, CPU microseconds per operation"
    )
    print(f"{'case':<44}{'1 process':>17}{'8 processes':>17}{'ops/s vs no lock':>20}")
    base = rate[("no lock", False), 1], rate[("no lock", False), 8]
    for case in cases:
        label = f"{case[0]}: {'compare-and-set' if case[1] else 'write'}"
        cells = [f"{rate[case, n]:>7.0f} {cpu[case, n]:>5.0f} us" for n in (1, 8)]
        ratios = f"{rate[case, 1] / base[0]:.2f}x / {rate[case, 8] / base[1]:.2f}x"
        print(f"{label:<44}{cells[0]:>17}{cells[1]:>17}{ratios:>20}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ops", type=int, default=2000, help="operations per measurement (fsync=on writes: 1/5)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per lateness run")
    parser.add_argument("--payload", type=int, default=4096, help="bytes")
    parser.add_argument("--lock-seconds", type=float, default=2.0, help="per locking cell")
    parser.add_argument("--lock-repeats", type=int, default=3)
    parser.add_argument("--lock-fsync", action="store_true", help="part 3 with fsync on")
    parser.add_argument("--only-locks", action="store_true", help="part 3 only")
    args = parser.parse_args()
    if args.only_locks:
        locking(args.lock_seconds, args.lock_repeats, args.lock_fsync)
        return
    payload = bytes(range(256)) * (args.payload // 256) + b"p" * (args.payload % 256)
    cases = candidates()
    figures: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for which in ("write", "read"):
            for name, target in cases.items():
                figures.setdefault((name, which), []).append(
                    per_op(name, target, payload, args.ops, which)
                )
    med = {key: statistics.median(values) for key, values in figures.items()}
    print(f"payload {len(payload)} bytes, {args.ops} ops x {args.repeats} repeats, one task")
    print(f"{'case':<24}{'write us/op':>12}{'read us/op':>12}")
    for name in cases:
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
    rows: dict[str, list[float]] = {"idle (no load)": lateness(None, payload, args.seconds)}
    for name in (
        "directory fsync=on",
        "raw one-hop fsync=on",
        "directory fsync=off",
        "raw one-hop fsync=off",
        "cachelib on loop",
        "diskcache on loop",
    ):
        rows[name] = lateness(cases[name], payload, args.seconds)
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
    print()
    locking(args.lock_seconds, args.lock_repeats, args.lock_fsync)


if __name__ == "__main__":
    main()
