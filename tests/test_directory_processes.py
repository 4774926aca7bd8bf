"""DirectoryStorage across processes: SIGKILL mid-write, concurrent processes, peak memory.

Each test starts worker processes (tests/directory_worker.py) and stops every one it
started by its pid. Counts can be raised through environment variables:
``TRIO_SESSIONS_CRASH_KILLS`` / ``TRIO_SESSIONS_CRASH_WRITES`` (defaults 20 / 2000) and
``TRIO_SESSIONS_HAMMER_SECONDS`` (default 3).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from contextlib import suppress
from pathlib import Path

import pytest
import trio

from trio_sessions import DirectoryPurgeResult, DirectoryStorage, SessionNotFound

from .directory_worker import IDS, parse_value, read_all

WORKER = str(Path(__file__).with_name("directory_worker.py"))
KILLS = int(os.environ.get("TRIO_SESSIONS_CRASH_KILLS", "20"))
WRITES = int(os.environ.get("TRIO_SESSIONS_CRASH_WRITES", "2000"))
HAMMER_SECONDS = float(os.environ.get("TRIO_SESSIONS_HAMMER_SECONDS", "3"))

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses SIGKILL and /proc")


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
            started = {(w, int(s)) for _, w, s in (line.split() for line in lines)}
            await check_every_id(storage, started)
        leftovers = len(temp_files(root))
        writes = _completed(await _log_lines(log))
        result = await storage.purge(temp_grace=0)
        assert result == DirectoryPurgeResult(expired=0, corrupt=0, temporary=leftovers)
        assert temp_files(root) == []
        present = await check_every_id(storage, started)
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
