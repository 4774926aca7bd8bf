"""MemoryStorage against the cost floor of an in-memory session store on trio.

Prints CPU microseconds per operation pair and ratios to baselines measured in the same
run (CPU time of this process, so that other processes on a busy machine count less):

* ``bytes pair``: ``write_bytes`` + ``read_bytes`` of a 1 KiB session vs a dict set + get
  with two ``trio.lowlevel.checkpoint()`` calls, what any async API over a dict costs at
  least (goal <= 1.15x);
* ``stream pair``: ``write`` (one ``send_all``) + ``read`` (a consumer reading to EOF) of
  the same payload vs the bytes pair (goal <= 1.4x). Both pairs offer two schedule points
  (the consumer's second call, which reports the end, only checks for cancellation), so
  what the stream pair adds is Python: two stream objects, the provider's and the
  consumer's frames and three calls on the streams, each a cancellation check. The run
  also measures ``bytes pair + 1 checkpoint``: what one more schedule point would cost;
* ``conditional pair``: ``read_versioned`` + ``write_bytes_if`` (what the session layer
  does), vs the bytes pair;
* memory per stored 1 KiB session with a ttl (goal <= 1,300 B) and without, counted by
  ``tracemalloc`` in a fresh child process after storing 100,000 sessions with fresh
  43-character ids: ids, payloads and the structures that hold them, next to a dict
  holding the same ids and payloads;
* with ``--steps``: what the pairs are made of, one step at a time (a coroutine call,
  trio's two halves of a checkpoint, the stream objects and calls, and for comparison
  what streaming through a task would add: a nursery, a task, a channel hop), in
  nanoseconds of CPU per step: the medians over alternating blocks in one ``trio.run``,
  less an empty loop;
* with ``--flood``: 100,000 writes of 2 KiB into new sessions of ``MemoryStorage()``
  with its default bounds, while 100 sessions keep being read: what is held at the end
  (slow: tracemalloc counts every allocation).

Candidates run in alternating order, in rounds of a fresh ``trio.run`` each; ratios are
the medians of the ratios within each round. ``--code DIR`` measures the ``trio_sessions``
of another checkout (say a ``git worktree`` of the commit before a change) in the same
run: each round then runs in two child processes, one per checkout, in alternating order.

Run: ``python -m benchmarks.memory [--iterations N] [--rounds R] [--code DIR] [--steps]
[--flood]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable

import trio
from trio.lowlevel import checkpoint

from trio_sessions import MemoryStorage

from .suite._core import ROOT, read_all, run_child

PAYLOAD = bytes(range(256)) * 4  # 1 KiB
SESSION_ID = "benchmark-session-0123456789abcdef0123456789abc"
TTL = 1800
FOOTPRINT_SESSIONS = 100_000


async def dict_pair(n: int) -> None:
    store: dict[str, bytes] = {}
    for _ in range(n):
        store[SESSION_ID] = PAYLOAD
        await checkpoint()
        value = store.get(SESSION_ID)
        await checkpoint()
        assert value is PAYLOAD


async def bytes_pair(n: int) -> None:
    storage = MemoryStorage()
    for _ in range(n):
        await storage.write_bytes(SESSION_ID, PAYLOAD)
        value = await storage.read_bytes(SESSION_ID)
        assert value is PAYLOAD


async def bytes_pair_and_checkpoint(n: int) -> None:
    storage = MemoryStorage()
    for _ in range(n):
        await storage.write_bytes(SESSION_ID, PAYLOAD)
        value = await storage.read_bytes(SESSION_ID)
        await checkpoint()
        assert value is PAYLOAD


async def stream_pair(n: int) -> None:
    storage = MemoryStorage()

    async def provider(stream: trio.abc.SendStream) -> None:
        await stream.send_all(PAYLOAD)

    for _ in range(n):
        await storage.write(SESSION_ID, provider)
        value = await storage.read(SESSION_ID, read_all)
        assert value == PAYLOAD


async def conditional_pair(n: int) -> None:
    storage = MemoryStorage()
    await storage.write_bytes(SESSION_ID, PAYLOAD, ttl=TTL)
    for _ in range(n):
        found = await storage.read_versioned(SESSION_ID)
        await storage.write_bytes_if(SESSION_ID, PAYLOAD, version=found.version, ttl=TTL)


CASES: dict[str, Callable[[int], Awaitable[None]]] = {
    "dict+2 checkpoints": dict_pair,
    "bytes pair": bytes_pair,
    "bytes pair+1 checkpoint": bytes_pair_and_checkpoint,
    "stream pair": stream_pair,
    "conditional pair": conditional_pair,
}


def measure(fn: Callable[[int], Awaitable[None]], n: int) -> float:
    """CPU microseconds per iteration of *fn*, in a fresh trio.run."""
    start = time.process_time()
    trio.run(fn, n)
    return (time.process_time() - start) / n * 1e6


def one_round(iterations: int, reverse: bool) -> dict[str, float]:
    """CPU microseconds per pair of every case, in alternating order."""
    names = list(CASES)
    return {
        name: measure(CASES[name], iterations) for name in (reversed(names) if reverse else names)
    }


# A child that measures one round with the trio_sessions of another checkout: that
# checkout is the child's PYTHONPATH, and the benchmarks package is this checkout's,
# loaded from its folder (a checkout passed as --code may hold no such benchmark, or an
# older one).
_CHILD = """\
import importlib.util, json, os, sys
code, package, iterations, reverse = sys.argv[1:]
import trio_sessions
if not os.path.realpath(trio_sessions.__file__).startswith(os.path.realpath(code) + os.sep):
    raise SystemExit(f"trio_sessions came from {trio_sessions.__file__}, not from {code}")
spec = importlib.util.spec_from_file_location(
    "benchmarks", os.path.join(package, "__init__.py"), submodule_search_locations=[package]
)
sys.modules["benchmarks"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sys.modules["benchmarks"])
from benchmarks.memory import one_round
print(json.dumps(one_round(int(iterations), reverse == "1")))
"""


def child_round(code: str, iterations: int, reverse: bool) -> dict[str, float]:
    package = os.path.dirname(os.path.abspath(__file__))
    command = [sys.executable, "-c", _CHILD, code, package, str(iterations), str(int(reverse))]
    env = {**os.environ, "PYTHONPATH": code}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, cwd=code, env=env
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"a round with the trio_sessions of {code} failed: {tail[0]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def report(runs: dict[str, list[float]]) -> None:
    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(runs[a], runs[b], strict=True))

    print(f"{'case':<26}{'median us/pair':>16}{'min':>9}{'max':>9}")
    for name, values in runs.items():
        med = statistics.median(values)
        print(f"{name:<26}{med:>16.2f}{min(values):>9.2f}{max(values):>9.2f}")
    print()
    rows = [
        ("bytes pair", "dict+2 checkpoints", "goal <= 1.15x"),
        ("stream pair", "bytes pair", "goal <= 1.4x"),
        ("bytes pair+1 checkpoint", "bytes pair", "one more schedule point"),
        ("conditional pair", "bytes pair", ""),
    ]
    for a, b, note in rows:
        print(f"{a + ' / ' + b:<52}{ratio(a, b):>6.2f}x  {note}")


def speed(iterations: int, rounds: int, code: str | None = None) -> None:
    checkouts = [str(ROOT)] if code is None else [str(ROOT), os.path.abspath(code)]
    runs: dict[str, dict[str, list[float]]] = {c: {name: [] for name in CASES} for c in checkouts}
    for round_ in range(rounds):
        reverse = round_ % 2 == 1
        for checkout in reversed(checkouts) if reverse else checkouts:
            if code is None:
                figures = one_round(iterations, reverse)
            else:
                figures = child_round(checkout, iterations, reverse)
            for name, value in figures.items():
                runs[checkout][name].append(value)
    for n, checkout in enumerate(checkouts):
        if code is not None:
            print(("\n" if n else "") + f"trio_sessions of {checkout}:")
        report(runs[checkout])


# -------------------------------------------------------------------------- steps


async def _nothing() -> None:
    pass


def _step_cases(storage: MemoryStorage) -> dict[str, Callable[[], Awaitable[object]]]:
    from trio_sessions._streams import ReadStream, WriteStream

    send, receive = trio.open_memory_channel[bytes](1)

    async def provider(stream: trio.abc.SendStream) -> None:
        await stream.send_all(PAYLOAD)

    async def stream_object() -> None:  # noqa: ASYNC124 (measures the objects alone)
        WriteStream(len(PAYLOAD)).finish()
        ReadStream(PAYLOAD)

    async def send_all() -> None:
        stream = WriteStream(len(PAYLOAD))
        await stream.send_all(PAYLOAD)

    async def nursery() -> None:
        async with trio.open_nursery():
            pass

    async def task() -> None:
        async with trio.open_nursery() as nursery:  # noqa: ASYNC112 (what a task costs)
            nursery.start_soon(_nothing)

    async def hop() -> None:
        await send.send(PAYLOAD)
        await receive.receive()

    return {
        "empty loop": _nothing,
        "coroutine call": _nothing,
        "checkpoint_if_cancelled": trio.lowlevel.checkpoint_if_cancelled,
        "cancel_shielded_checkpoint": trio.lowlevel.cancel_shielded_checkpoint,
        "WriteStream+ReadStream": stream_object,
        "send_all (+WriteStream)": send_all,
        "receive_some, data": lambda: ReadStream(PAYLOAD).receive_some(),
        "receive_some, the end": lambda: ReadStream(b"").receive_some(),
        "write_bytes": lambda: storage.write_bytes(SESSION_ID, PAYLOAD),
        "read_bytes": lambda: storage.read_bytes(SESSION_ID),
        "write, one send_all": lambda: storage.write(SESSION_ID, provider),
        "read to the end": lambda: storage.read(SESSION_ID, read_all),
        "nursery, empty": nursery,
        "nursery + one task": task,
        "channel send+receive": hop,
    }


def steps(blocks: int, per_block: int = 1000) -> None:
    async def run() -> dict[str, list[float]]:
        storage = MemoryStorage()
        await storage.write_bytes(SESSION_ID, PAYLOAD)
        cases = _step_cases(storage)
        runs: dict[str, list[float]] = {name: [] for name in cases}
        for block in range(blocks):
            for name in reversed(cases) if block % 2 else cases:
                call = cases[name]
                start = time.process_time_ns()
                if name == "empty loop":
                    for _ in range(per_block):
                        pass
                else:
                    for _ in range(per_block):
                        await call()
                runs[name].append((time.process_time_ns() - start) / per_block)
        return runs

    runs = trio.run(run)
    base = runs.pop("empty loop")
    print(f"\n{'step':<28}{'ns of CPU':>10}  (medians of {blocks} blocks, less an empty loop)")
    for name, values in runs.items():
        cost = statistics.median(x - y for x, y in zip(values, base, strict=True))
        print(f"{name:<28}{cost:>10,.0f}")


# ------------------------------------------------------------------------- memory


def _held(kind: str, count: int) -> float:
    """Traced bytes per session that *kind* keeps after storing *count* fresh sessions."""
    trio.run(trio.lowlevel.checkpoint)  # trio's first run allocates caches of its own
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ids = [secrets.token_urlsafe(32) for _ in range(count)]
    payloads = [(n.to_bytes(8, "little") * 128) for n in range(count)]  # 1 KiB each
    kept: object
    if kind == "dict":
        kept = dict(zip(ids, payloads, strict=True))
    else:
        storage = MemoryStorage(max_entries=None, max_bytes=None)
        ttl = TTL if kind == "ttl" else None

        async def fill(ids: list[str], payloads: list[bytes]) -> None:
            for session_id, data in zip(ids, payloads, strict=True):
                await storage.write_bytes(session_id, data, ttl=ttl)

        trio.run(fill, ids, payloads)
        kept = storage
    del ids, payloads
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    del kept
    return held / count


def footprint(count: int) -> None:
    figures = {}
    for kind in ("dict", "ttl", "no ttl"):
        output = run_child("benchmarks.memory", "--held", kind, "--count", str(count), what=kind)
        figures[kind] = float(output)
    print(f"\nmemory per 1 KiB session ({count:,} sessions, tracemalloc):")
    print(f"  dict of ids and payloads        {figures['dict']:>7,.0f} B")
    for kind, note in (("ttl", "  (goal <= 1,300 B)"), ("no ttl", "")):
        extra = figures[kind] - figures["dict"]
        label = f"MemoryStorage, {kind}"
        print(f"  {label:<32}{figures[kind]:>7,.0f} B  (+{extra:,.0f} B){note}")


def flood() -> None:
    async def run() -> None:
        storage = MemoryStorage()
        users = [secrets.token_urlsafe(32) for _ in range(100)]
        for session_id in users:
            await storage.write_bytes(session_id, b"user", ttl=TTL)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for n in range(100_000):
            payload = n.to_bytes(8, "little") * 256
            await storage.write_bytes(secrets.token_urlsafe(32), payload, ttl=TTL)
            if n % 1000 == 999:
                for session_id in users:
                    await storage.read_bytes(session_id)
        held, peak = (figure - before for figure in tracemalloc.get_traced_memory())
        tracemalloc.stop()
        stats = storage.statistics()
        survivors = 0
        for session_id in users:
            survivors += await storage.read_bytes(session_id) == b"user"
        print("\nflood: 100,000 new 2 KiB sessions into MemoryStorage() (defaults):")
        print(f"  {stats}")
        print(f"  held {held / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB (tracemalloc)")
        print(f"  active users' sessions kept: {survivors} of {len(users)}")

    trio.run(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--count", type=int, default=FOOTPRINT_SESSIONS)
    parser.add_argument("--flood", action="store_true", help="also run the flood (slow)")
    parser.add_argument("--code", help="also measure the trio_sessions of another checkout")
    parser.add_argument("--steps", action="store_true", help="also time each step of the pairs")
    parser.add_argument("--held", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.held:
        print(_held(args.held, args.count))
        return
    speed(args.iterations, args.rounds, args.code)
    if args.steps:
        steps(args.rounds)
    footprint(args.count)
    if args.flood:
        flood()


if __name__ == "__main__":
    main()
