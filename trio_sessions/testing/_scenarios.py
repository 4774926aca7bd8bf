"""Scenario checks: concurrency, ids, size, errors and checkpoints, streams, ttl, close."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from .._abc import SessionStorage
from .._errors import InvalidSessionId, SessionNotFound, SessionTooLarge
from ._context import (
    Context,
    _expect,
    _failing_consumer,
    _failing_provider,
    _ids,
    _pieces,
    _provider,
    _raises_itself,
    _read_or_none,
    _recognizable,
)
from ._tools import ManualClock, read_all

__all__ = [
    "check_close",
    "check_concurrency",
    "check_errors_and_checkpoints",
    "check_ids",
    "check_size",
    "check_streams",
    "check_ttl",
]


# --------------------------------------------------------------- concurrency check


async def _concurrency(storage: SessionStorage, seed: int) -> None:
    rng = random.Random(seed)
    ids = _ids(2)
    written: dict[str, set[bytes]] = {sid: set() for sid in ids}
    done = trio.Event()
    problems: list[str] = []

    async def writer(n: int) -> None:
        for seq in range(12):
            sid = rng.choice(ids)
            size = rng.choice([3, 700, 5000, 90 * 1024])
            value = _recognizable(n, seq, size)
            written[sid].add(value)  # before the write: a reader may see it at once
            if rng.random() < 0.5:
                await storage.write(sid, _provider(_pieces(value, rng.randint(2, 6))))
            else:
                await storage.write_bytes(sid, value)
            if rng.random() < 0.2:
                await storage.invalidate(sid)

    async def reader() -> None:
        reads = 0
        while not done.is_set() and reads < 2000:
            reads += 1
            sid = rng.choice(ids)
            try:
                if rng.random() < 0.5:
                    value = await storage.read_bytes(sid)
                else:
                    value = await storage.read(sid, lambda s: read_all(s, rng.choice([None, 4096])))
            except SessionNotFound:
                continue
            if value not in written[sid]:
                problems.append(f"a reader saw {len(value)} bytes that no writer wrote whole")
                done.set()

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(reader)
        async with trio.open_nursery() as writers:
            for n in range(3):
                writers.start_soon(writer, n)
        done.set()
    _expect(not problems, problems[0] if problems else "")


def check_concurrency(ctx: Context) -> None:
    """Readers racing writers and invalidations see only complete values."""
    for seed in range(max(1, min(ctx.max_examples // 20, 5))):
        ctx.example = f"seed={seed}"
        ctx.run_with_storage(lambda storage, clock: _concurrency(storage, seed))  # noqa: B023
    ctx.example = None


# ------------------------------------------------------------------ id policy check

HOSTILE_IDS: list[Any] = [
    "",
    ".",
    "..",
    "/",
    "\\",
    "../etc/passwd",
    "..\\..\\x",
    "a/b",
    "a\\b",
    "a\x00b",
    "\x00",
    "%2e%2e",
    "%2F",
    "C:",
    "C:\\x",
    "a b",
    "a\n",
    "a\r\nSet-Cookie: x=y",
    "a.b",
    "é",
    "\uff41",
    "٣",
    "\u202e",
    "😀",
    "x" * 257,
    "x" * 10_000,
    " a",
    "a ",
    "*",
    "a;b",
    None,
    b"abc",
    123,
    ["a"],
]


async def _hostile(storage: SessionStorage, bad_ids: list[Any]) -> None:
    (canary,) = _ids(1)
    await storage.write_bytes(canary, b"canary")

    async def never_provider(stream: trio.abc.SendStream) -> None:
        raise AssertionError("a provider was called for an invalid id")

    async def never_consumer(stream: trio.abc.ReceiveStream) -> None:
        raise AssertionError("a consumer was called for an invalid id")

    for bad in bad_ids:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: storage.read(bad, never_consumer),  # noqa: B023
            lambda: storage.read_bytes(bad),  # noqa: B023
            lambda: storage.write(bad, never_provider),  # noqa: B023
            lambda: storage.write_bytes(bad, b"x"),  # noqa: B023
            lambda: storage.invalidate(bad),  # noqa: B023
        ]
        for call in calls:
            try:
                await call()
            except InvalidSessionId:
                pass
            else:
                raise AssertionError(f"id {bad!r:.40} was accepted")
    _expect(await storage.read_bytes(canary) == b"canary", "invalid ids disturbed a session")
    for good in ("a" * 256, "-", "_", "Az09-_"):
        await storage.write_bytes(good, b"ok")
        _expect(await storage.read_bytes(good) == b"ok", f"valid id {good!r:.20} failed")
        await storage.invalidate(good)


def check_ids(ctx: Context) -> None:
    """Invalid ids raise InvalidSessionId from every method and touch nothing."""
    ctx.example = "fixed list of hostile ids"
    ctx.run_with_storage(lambda storage, clock: _hostile(storage, HOSTILE_IDS))
    import re

    from .._ids import SESSION_ID_PATTERN

    valid = re.compile(SESSION_ID_PATTERN, re.ASCII)

    @ctx.settings()
    @given(st.lists(st.text(max_size=300).filter(lambda s: not valid.fullmatch(s)), max_size=20))
    def test(bad_ids: list[str]) -> None:
        ctx.example = f"ids: {bad_ids!r:.500}"
        ctx.run_with_storage(lambda storage, clock: _hostile(storage, bad_ids))

    test()
    ctx.example = None


# ---------------------------------------------------------------- size limit check


async def _size(storage: SessionStorage) -> None:
    limit = storage.max_size
    sid, missing = _ids(2)
    await storage.write_bytes(sid, b"before")
    big = b"s" * (limit + 1)
    attempts: list[tuple[str, Callable[[str], Awaitable[None]]]] = [
        ("write_bytes", lambda s: storage.write_bytes(s, big)),
        ("write", lambda s: storage.write(s, _provider(_pieces(big, 5)))),
        ("write (one piece)", lambda s: storage.write(s, _provider([big]))),
    ]
    for label, attempt in attempts:
        for target in (sid, missing):
            try:
                await attempt(target)
            except SessionTooLarge:
                pass
            else:
                raise AssertionError(f"{label} stored {limit + 1} bytes with max_size={limit}")
    _expect(await storage.read_bytes(sid) == b"before", "an oversized write changed the value")
    _expect(await _read_or_none(storage, missing) is None, "an oversized write stored something")

    async def swallowing(stream: trio.abc.SendStream) -> None:
        with suppress(SessionTooLarge):
            await stream.send_all(big)

    try:
        await storage.write(sid, swallowing)
    except SessionTooLarge:
        pass
    else:
        raise AssertionError("write() succeeded after its provider swallowed SessionTooLarge")
    _expect(await storage.read_bytes(sid) == b"before", "an oversized write changed the value")
    exact = b"e" * limit
    await storage.write(sid, _provider(_pieces(exact, 4)))
    _expect(await storage.read_bytes(sid) == exact, "a payload of exactly max_size was refused")


def check_size(ctx: Context) -> None:
    """Payloads above max_size raise SessionTooLarge and store nothing."""
    ctx.run_with_storage(lambda storage, clock: _size(storage))


# ------------------------------------------------ errors, checkpoints and streams


async def _errors_and_checkpoints(storage: SessionStorage) -> None:
    sid, missing = _ids(2)
    with trio.testing.assert_checkpoints():
        await storage.write_bytes(sid, b"value")
    with trio.testing.assert_checkpoints():
        await storage.read_bytes(sid)
    with trio.testing.assert_checkpoints():
        await storage.write(sid, _provider([]))

    async def ignore(stream: trio.abc.ReceiveStream) -> None:
        pass

    with trio.testing.assert_checkpoints():
        await storage.read(sid, ignore)
    for call in (
        lambda: storage.read_bytes(missing),
        lambda: storage.read(missing, ignore),
    ):
        with trio.testing.assert_checkpoints():
            try:
                await call()
            except SessionNotFound:
                pass
            else:
                raise AssertionError("reading a missing session did not raise SessionNotFound")
    with trio.testing.assert_checkpoints():
        await storage.invalidate(missing)  # idempotent
    with trio.testing.assert_checkpoints():
        await storage.invalidate(sid)
    await storage.invalidate(sid)

    # Under a cancelled scope, a write either does not happen or completes.
    await storage.write_bytes(sid, b"old")
    with trio.CancelScope() as scope:
        scope.cancel()
        await storage.write_bytes(sid, b"new")
    _expect(await storage.read_bytes(sid) in (b"old", b"new"), "a cancelled write left a mix")
    _expect(scope.cancelled_caught, "write_bytes() under a cancelled scope is not a checkpoint")

    # Callback exceptions propagate as themselves, even after streaming began.
    for pieces in ([], [b"x" * 1000], [b"y" * 100_000] * 3):
        provider, error = _failing_provider(pieces)
        await _raises_itself(lambda: storage.write(sid, provider), error, "provider")  # noqa: B023
        _expect(await storage.read_bytes(sid) in (b"old", b"new"), "a failed write changed data")
    await storage.write_bytes(sid, b"z" * 300_000 if storage.max_size >= 300_000 else b"z")
    consumer, error = _failing_consumer(10)
    await _raises_itself(lambda: storage.read(sid, consumer), error, "consumer")


def check_errors_and_checkpoints(ctx: Context) -> None:
    """Every method checkpoints; callback errors propagate as themselves."""
    ctx.run_with_storage(lambda storage, clock: _errors_and_checkpoints(storage))


async def _streams(storage: SessionStorage) -> None:
    (sid,) = _ids(1)
    value = bytes(range(256)) * 1200  # 300 KiB: several chunks for streaming backends
    if storage.max_size < len(value):
        value = value[: storage.max_size]

    async def provider(stream: trio.abc.SendStream) -> None:
        busy = 0

        async def send_nothing() -> None:
            nonlocal busy
            try:
                await stream.send_all(b"")
            except trio.BusyResourceError:
                busy += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_nothing)
            nursery.start_soon(send_nothing)
        if busy != 1:
            raise AssertionError("concurrent send_all() calls did not raise BusyResourceError")
        await stream.send_all(value)
        await stream.aclose()
        await stream.aclose()  # idempotent
        try:
            await stream.send_all(b"late")
        except trio.ClosedResourceError:
            pass
        else:
            raise AssertionError("send_all() after aclose() did not raise ClosedResourceError")

    await storage.write(sid, provider)

    async def consumer(stream: trio.abc.ReceiveStream) -> bytes:
        for bad in (0, -1):
            try:
                await stream.receive_some(bad)
            except ValueError:
                pass
            else:
                raise AssertionError(f"receive_some({bad}) did not raise ValueError")
        data = await read_all(stream, 1000)
        _expect(await stream.receive_some() == b"", "receive_some() after the end must be b''")
        await stream.aclose()
        try:
            await stream.receive_some()
        except trio.ClosedResourceError:
            pass
        else:
            raise AssertionError("receive_some() after aclose() did not raise ClosedResourceError")
        return data

    _expect(await storage.read(sid, consumer) == value, "streamed value came back different")

    async def early(stream: trio.abc.ReceiveStream) -> bytes:
        data = b""  # receive_some(n) may return fewer than n bytes
        while len(data) < 5 and (chunk := await stream.receive_some(5 - len(data))):
            data += chunk
        return data

    _expect(
        await storage.read(sid, early) == value[:5],
        "an early-stopping consumer got the wrong bytes",
    )
    _expect(await storage.read_bytes(sid) == value, "stopping a read early changed the value")


def check_streams(ctx: Context) -> None:
    """The streams given to callbacks keep the trio.abc stream contracts."""
    ctx.run_with_storage(lambda storage, clock: _streams(storage))


# -------------------------------------------------------------------- ttl check


async def _ttl(storage: SessionStorage, clock: ManualClock, controlled: bool) -> None:
    a, b, c = _ids(3)
    for bad in (0, -1, math.nan, math.inf):
        try:
            await storage.write_bytes(a, b"x", ttl=bad)
        except ValueError:
            pass
        else:
            raise AssertionError(f"ttl={bad} was accepted")
    if controlled:
        await storage.write_bytes(a, b"short", ttl=10)
        await storage.write(b, _provider([b"forever"]))
        await storage.write_bytes(c, b"renewed", ttl=10)
        clock.advance(6)
        _expect(await storage.read_bytes(a) == b"short", "a session expired early")
        await storage.write_bytes(c, b"renewed", ttl=10)  # a rewrite restarts the ttl
        clock.advance(6)
        _expect(await _read_or_none(storage, a) is None, "a session outlived its ttl")
        _expect(await storage.read_bytes(c) == b"renewed", "a rewrite did not renew the ttl")
        clock.advance(365 * 24 * 3600)
        _expect(await storage.read_bytes(b) == b"forever", "ttl=None expired")
        _expect(await _read_or_none(storage, c) is None, "a session outlived its ttl")
        await storage.write_bytes(c, b"again", ttl=5)
        await storage.write_bytes(c, b"no ttl")  # a rewrite without ttl removes expiry
        clock.advance(100)
        _expect(await storage.read_bytes(c) == b"no ttl", "a rewrite without ttl kept the old ttl")
    else:
        await storage.write_bytes(a, b"short", ttl=0.5)
        await storage.write_bytes(b, b"forever")
        _expect(await storage.read_bytes(a) == b"short", "a session expired early")
        await trio.sleep(1.5)
        _expect(await _read_or_none(storage, a) is None, "a session outlived its ttl")
        _expect(await storage.read_bytes(b) == b"forever", "ttl=None expired")


def check_ttl(ctx: Context) -> None:
    """Sessions expire after their ttl; ttl=None never expires; bad ttls are refused."""
    ctx.run_with_storage(lambda storage, clock: _ttl(storage, clock, ctx.clock_controlled))


# ------------------------------------------------------------------ close check


async def _close(storage: SessionStorage) -> None:
    (sid,) = _ids(1)
    await storage.write_bytes(sid, b"x")
    await storage.aclose()
    await storage.aclose()  # idempotent

    async def provider(stream: trio.abc.SendStream) -> None:
        await stream.send_all(b"y")

    async def consumer(stream: trio.abc.ReceiveStream) -> bytes:
        return await read_all(stream)

    for call in (
        lambda: storage.read_bytes(sid),
        lambda: storage.read(sid, consumer),
        lambda: storage.write_bytes(sid, b"y"),
        lambda: storage.write(sid, provider),
        lambda: storage.invalidate(sid),
    ):
        try:
            await call()
        except trio.ClosedResourceError:
            pass
        else:
            raise AssertionError("an operation after aclose() did not raise ClosedResourceError")


def check_close(ctx: Context) -> None:
    """aclose() is idempotent and later operations raise trio.ClosedResourceError."""
    ctx.run_with_storage(lambda storage, clock: _close(storage))
