"""DirectoryStorage across processes: SIGKILL mid-write, concurrent processes, peak memory,
compare-and-set races, logouts racing them, a lock holder killed, a flood under a quota.

Each test starts worker processes (tests/directory_worker.py) and stops every one it
started by its pid. Counts can be raised through environment variables:
``TRIO_SESSIONS_CRASH_KILLS`` / ``TRIO_SESSIONS_CRASH_WRITES`` (defaults 20 / 2000),
``TRIO_SESSIONS_HAMMER_SECONDS`` (default 3), ``TRIO_SESSIONS_CAS_WINS`` (wins per
process, default 300), ``TRIO_SESSIONS_RACE_ROUNDS`` (default 100) and
``TRIO_SESSIONS_FLOOD`` (new-session writes in all, default 100,000).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_sessions import DirectoryStorage, PurgeResult, SessionNotFound
from trio_sessions.testing import read_all

from .directory_worker import CAS_ID, IDS, make_value, parse_value, race_id

WORKER = str(Path(__file__).with_name("directory_worker.py"))
KILLS = int(os.environ.get("TRIO_SESSIONS_CRASH_KILLS", "20"))
WRITES = int(os.environ.get("TRIO_SESSIONS_CRASH_WRITES", "2000"))
HAMMER_SECONDS = float(os.environ.get("TRIO_SESSIONS_HAMMER_SECONDS", "3"))
CAS_WINS = int(os.environ.get("TRIO_SESSIONS_CAS_WINS", "300"))
RACE_ROUNDS = int(os.environ.get("TRIO_SESSIONS_RACE_ROUNDS", "100"))
FLOOD = int(os.environ.get("TRIO_SESSIONS_FLOOD", "100000"))

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="uses SIGKILL and /proc"),
    pytest.mark.slow,  # several processes, kills and floods
]


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.tmp") if p.is_file()]


async def check_every_id(storage: DirectoryStorage, started: set[tuple[str, int]]) -> int:
    """Every id holds a complete value whose write had started, or nothing; return how many."""
    present = 0
    for sid in IDS:
        try:
            whole = await storage.read_bytes(sid)
            streamed = await storage.read(sid, read_all)
        except SessionNotFound:
            continue
        present += 1
        for value in (whole, streamed):
            parsed = parse_value(value)
            assert parsed is not None, f"{sid}: a torn value of {len(value)} bytes"
            assert parsed in started, f"{sid}: {parsed} was never written"
    return present


async def test_sigkill_during_writes_never_tears_a_session(tmp_path: Path) -> None:
    root, log = tmp_path / "root", tmp_path / "writes.log"
    rng = random.Random(20)
    storage = DirectoryStorage(root)
    kills = 0
    mine: set[tuple[str, int]] = set()
    with trio.fail_after(240):
        while kills < KILLS or _completed(await _log_lines(log)) < WRITES:
            assert kills < 20 * KILLS, "the workers write too slowly"
            command = [sys.executable, WORKER, "crash", str(root), str(log), str(kills), ""]
            command[-1] = str(kills % 2)  # fsync on every other run
            process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
            try:
                assert process.stdout is not None
                with trio.fail_after(60):
                    assert (await process.stdout.receive_some()).startswith(b"ready")
                await trio.sleep(rng.uniform(0.05, 0.55))  # then kill it at a random moment
            finally:
                process.send_signal(signal.SIGKILL)
                with trio.CancelScope(shield=True):
                    await process.wait()
                    if process.stdout is not None:
                        await process.stdout.aclose()
            assert process.returncode == -signal.SIGKILL
            kills += 1
            lines = await _log_lines(log)
            started = {(w, int(s)) for _, w, s in (line.split() for line in lines)} | mine
            await check_every_id(storage, started)
            # The killed process may have held a folder's lock: it died with it, so a
            # compare-and-set of every id goes through (fail_after: a stale lock hangs).
            with trio.fail_after(20):
                for n, sid in enumerate(IDS):
                    mine.add(("t", kills * 100 + n))
                    value = make_value("t", kills * 100 + n, 40)
                    try:
                        version = (await storage.read_versioned(sid)).version
                    except SessionNotFound:
                        await storage.write_bytes_if(sid, value, version=None)
                    else:
                        await storage.write_bytes_if(sid, value, version=version)
        leftovers = len(temp_files(root))
        writes = _completed(await _log_lines(log))
        result = await storage.purge(temp_grace=0)
        assert result == PurgeResult(expired=0, corrupt=0, temporary=leftovers)
        assert temp_files(root) == []
        present = await check_every_id(storage, started | mine)
    print(f"crash test: {kills} kills, {writes} completed writes, {present}/{len(IDS)} ids set,")
    print(f"            0 torn, {leftovers} temporary files left by kills, all purged")


def _completed(lines: list[str]) -> int:
    return sum(line.startswith("done ") for line in lines)


async def _log_lines(log: Path) -> list[str]:
    if not await trio.Path(log).exists():
        return []
    text = await trio.Path(log).read_text()
    # The last line may be cut short by the kill.
    return [line for line in text.splitlines() if line.count(" ") == 2]


async def test_four_processes_share_one_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    results: list[dict[str, int]] = []

    async def worker(seed: int) -> None:
        command = [sys.executable, WORKER, "hammer", str(root), str(seed), str(HAMMER_SECONDS)]
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
        results.append(json.loads(done.stdout))

    with trio.fail_after(HAMMER_SECONDS + 60):
        async with trio.open_nursery() as nursery:
            for seed in range(4):
                nursery.start_soon(worker, seed)
        totals = sum((Counter(r) for r in results), Counter())
        assert totals["torn"] == 0
        assert totals["writes"] > 0
        assert totals["foreign"] > 0, "no process read another's value: nothing was shared"
        storage = DirectoryStorage(root)
        await storage.purge(temp_grace=0)
        assert temp_files(root) == []
        for sid in IDS:
            with suppress(SessionNotFound):
                assert parse_value(await storage.read_bytes(sid)) is not None
    print(f"4 processes, {HAMMER_SECONDS:g} s: {dict(totals)}")


async def test_a_64_mib_session_streams_in_bounded_memory(tmp_path: Path) -> None:
    command = [sys.executable, WORKER, "rss", str(tmp_path / "root"), "64"]
    with trio.fail_after(120):
        done = await trio.run_process(command, capture_stdout=True)
    result = json.loads(done.stdout)
    assert result["size"] == result["whole"] == 64 * 1024 * 1024
    assert result["digest_ok"]
    assert result["write_peak_kib"] <= 8 * 1024
    assert result["peak_kib"] <= 8 * 1024
    # The control: reading the same session whole does raise the peak by 64 MiB.
    assert result["read_bytes_peak_kib"] >= 60 * 1024
    print(f"64 MiB streamed: {result}")


async def run_workers(commands: list[list[str]]) -> list[dict[str, Any]]:
    """Run the workers at once; return what each printed (JSON), in order."""
    results: list[dict[str, Any]] = [{} for _ in commands]

    async def worker(n: int) -> None:
        done = await trio.run_process(commands[n], capture_stdout=True, capture_stderr=True)
        results[n] = json.loads(done.stdout)

    async with trio.open_nursery() as nursery:
        for n in range(len(commands)):
            nursery.start_soon(worker, n)
    return results


async def test_compare_and_set_across_processes_has_one_winner_per_version(
    tmp_path: Path,
) -> None:
    root = str(tmp_path / "root")
    storage = DirectoryStorage(root)
    with trio.fail_after(300):
        await storage.write_bytes(CAS_ID, b"initial")
        initial = (await storage.read_versioned(CAS_ID)).version
        commands = [[sys.executable, WORKER, "cas", root, str(n), str(CAS_WINS)] for n in range(4)]
        results = await run_workers(commands)
        final = await storage.read_versioned(CAS_ID)
    wins = [tuple(win) for result in results for win in result["wins"]]
    conflicts = sum(result["conflicts"] for result in results)
    # Exactly one write succeeded per version read: no version was the base of two wins...
    successor = dict(wins)
    assert len(successor) == len(wins), "two compare-and-sets succeeded from one version"
    # ... and the wins form one chain from the first version to the stored one: every
    # successful write saw the result of the one before it, none was lost.
    chain, version = 0, initial
    while version in successor:
        version = successor[version]
        chain += 1
    assert chain == len(wins) == 4 * CAS_WINS
    assert version == final.version
    assert parse_value(final.data) is not None
    assert conflicts > 0, "the processes never raced"
    print(f"compare-and-set: 4 processes, {len(wins)} wins in one chain, {conflicts} conflicts")


async def test_a_logout_racing_compare_and_sets_is_never_undone(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    storage = DirectoryStorage(root, fsync=False)
    with trio.fail_after(300):
        for n in range(RACE_ROUNDS):
            await storage.write_bytes(race_id(n), b"logged in")
        commands = [
            *([sys.executable, WORKER, "race", root, str(n), str(RACE_ROUNDS)] for n in range(3)),
            [sys.executable, WORKER, "logout", root, "7", str(RACE_ROUNDS)],
        ]
        *racers, logout = await run_workers(commands)
        resurrected = []
        for n in range(RACE_ROUNDS):
            try:
                await storage.read_bytes(race_id(n))
            except SessionNotFound:
                continue
            resurrected.append(n)
    wins = sum(sum(result["wins"]) for result in racers)
    assert resurrected == [], f"{len(resurrected)} sessions came back after their logout"
    assert logout["raced"] == RACE_ROUNDS, "a logout came before any compare-and-set"
    print(f"logout race: {RACE_ROUNDS} rounds, {wins} compare-and-sets won, 0 resurrected")


async def test_a_process_killed_holding_a_lock_releases_it(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    storage = DirectoryStorage(root)
    with trio.fail_after(60):
        await storage.write_bytes("locked-session", b"old")
        version = (await storage.read_versioned("locked-session")).version
        command = [sys.executable, WORKER, "stall", root, "locked-session"]
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
        try:
            assert process.stdout is not None
            assert (await process.stdout.receive_some()).startswith(b"locked")
            async with trio.open_nursery() as nursery:
                done = trio.Event()

                async def write() -> None:
                    await storage.write_bytes_if("locked-session", b"new", version=version)
                    done.set()

                nursery.start_soon(write)
                await trio.sleep(0.5)
                assert not done.is_set(), "a write went through a folder another one locked"
                process.send_signal(signal.SIGKILL)
        finally:
            process.send_signal(signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await process.wait()
                if process.stdout is not None:
                    await process.stdout.aclose()
        # The killed write never renamed: the compare-and-set saw the old version.
        assert await storage.read_bytes("locked-session") == b"new"
        assert len(temp_files(Path(root))) == 1  # the killed write's, for purge
        assert (await storage.purge(temp_grace=0)).temporary == 1


async def test_a_flood_from_several_processes_stays_under_the_quota(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    quota, each = 1000, FLOOD // 4
    storage = DirectoryStorage(root, fsync=False, max_sessions=quota)
    legitimate = {f"user-{n}": f"user={n}".encode() for n in range(100)}
    start = time.monotonic()
    with trio.fail_after(900):
        for sid, value in legitimate.items():
            await storage.write_bytes(sid, value)
        commands = [
            [sys.executable, WORKER, "flood", root, str(n), str(each), str(quota)] for n in range(4)
        ]
        results = await run_workers(commands)
        for sid, value in legitimate.items():
            assert await storage.read_bytes(sid) == value
            await storage.write_bytes(sid, value + b";seen")  # still usable at the quota
        stats = await storage.scan()
    elapsed = time.monotonic() - start
    stored = sum(result["stored"] for result in results)
    refused = sum(result["refused"] for result in results)
    assert stored == quota - len(legitimate)
    assert refused == 4 * each - stored
    assert stats.sessions == quota
    print(
        f"flood: 4 processes, {4 * each} new-session writes in {elapsed:.1f} s: {stored} stored, "
        f"{refused} refused (503), {stats.sessions} sessions on disk, legitimate ones intact"
    )
