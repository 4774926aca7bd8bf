"""MemoryStorage against the cost floor of an in-memory session store on trio.

Prints microseconds per operation pair and ratios to baselines measured in the same run:

* ``bytes pair``: ``write_bytes`` + ``read_bytes`` vs a dict set + get with two
  ``trio.lowlevel.checkpoint()`` calls (what any async API over a dict costs at least);
* ``stream pair``: ``write`` (one ``send_all``) + ``read`` (a consumer reading to EOF)
  of the same 1 KiB payload vs the bytes pair.

Run: ``python benchmarks/memory.py [--iterations N] [--repeats R]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Awaitable, Callable

import trio

from trio_sessions import MemoryStorage

PAYLOAD = bytes(range(256)) * 4  # 1 KiB
SESSION_ID = "benchmark-session-0123456789abcdef0123456789abc"


async def dict_pair(n: int) -> None:
    store: dict[str, bytes] = {}
    for _ in range(n):
        store[SESSION_ID] = PAYLOAD
        await trio.lowlevel.checkpoint()
        value = store.get(SESSION_ID)
        await trio.lowlevel.checkpoint()
        assert value is PAYLOAD


async def bytes_pair(n: int) -> None:
    storage = MemoryStorage()
    for _ in range(n):
        await storage.write_bytes(SESSION_ID, PAYLOAD)
        value = await storage.read_bytes(SESSION_ID)
        assert value is PAYLOAD


async def stream_pair(n: int) -> None:
    storage = MemoryStorage()

    async def provider(stream: trio.abc.SendStream) -> None:
        await stream.send_all(PAYLOAD)

    async def consumer(stream: trio.abc.ReceiveStream) -> bytes:
        parts = []
        while chunk := await stream.receive_some():
            parts.append(chunk)
        return b"".join(parts)

    for _ in range(n):
        await storage.write(SESSION_ID, provider)
        value = await storage.read(SESSION_ID, consumer)
        assert value == PAYLOAD


def measure(fn: Callable[[int], Awaitable[None]], n: int, repeats: int) -> list[float]:
    """Microseconds per iteration, one figure per repeat, each in a fresh trio.run."""
    figures = []
    for _ in range(repeats):
        start = time.perf_counter()
        trio.run(fn, n)
        figures.append((time.perf_counter() - start) / n * 1e6)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    # Interleave the candidates within each repeat so drift affects all alike.
    runs: dict[str, list[float]] = {"dict+2 checkpoints": [], "bytes pair": [], "stream pair": []}
    fns = {"dict+2 checkpoints": dict_pair, "bytes pair": bytes_pair, "stream pair": stream_pair}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            runs[name] += measure(fn, args.iterations, 1)
    med = {name: statistics.median(v) for name, v in runs.items()}
    print(f"{'case':<22}{'median us/pair':>16}{'min':>9}{'max':>9}")
    for name, values in runs.items():
        print(f"{name:<22}{med[name]:>16.2f}{min(values):>9.2f}{max(values):>9.2f}")
    print()
    ratio1 = med["bytes pair"] / med["dict+2 checkpoints"]
    ratio2 = med["stream pair"] / med["bytes pair"]
    print(f"bytes pair / dict+2 checkpoints: {ratio1:.2f}x  (goal <= 2.0x)")
    print(f"stream pair / bytes pair:        {ratio2:.2f}x  (goal <= 2.0x)")


if __name__ == "__main__":
    main()
