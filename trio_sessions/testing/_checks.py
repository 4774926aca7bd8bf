"""The conformance checks: each one drives a fresh storage and asserts the contract."""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio
import trio.testing
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from .._abc import ConditionalStorage, SessionStorage, conditional
from .._errors import InvalidSessionId, SessionNotFound, SessionTooLarge, WriteConflict

T = TypeVar("T")

__all__ = ["CHECKS", "Context", "ManualClock", "NotApplicable", "StorageFactory"]


class ManualClock:
    """A clock that only moves when told to.

    The harness passes one to your storage factory; a storage that takes a ``clock``
    argument (a callable returning seconds, like `MemoryStorage` or `DirectoryStorage`)
    should use it, so that expiry is checked without sleeping.
    """

    def __init__(self, start: float = 1_000_000_000.0) -> None:
        self._now = start

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._now += seconds


#: What the harness needs: a callable that takes a `ManualClock` and returns an async
#: context manager yielding a fresh storage (a `SessionStorage` is one already).
StorageFactory = Callable[[ManualClock], AbstractAsyncContextManager[SessionStorage]]


@dataclass
class Context:
    """How the checks reach the storage under test."""

    open_storage: StorageFactory
    #: Whether the storage reads time from the clock it is given (else: real sleeps).
    clock_controlled: bool
    max_examples: int
    #: Runs an async function to completion from the (synchronous) check.
    run: Callable[[Callable[[], Awaitable[Any]]], Any]
    #: Seconds each async step may take before it counts as hung.
    timeout: float = 60.0
    #: The last failing example, in a readable form (hypothesis replays the shrunk one last).
    example: str | None = field(default=None)

    def run_with_storage(
        self, body: Callable[[SessionStorage, ManualClock], Awaitable[None]]
    ) -> None:
        async def main() -> None:
            clock = ManualClock()
            with trio.fail_after(self.timeout):
                async with self.open_storage(clock) as storage:
                    await body(storage, clock)

        self.run(main)

    def settings(self) -> settings:
        return settings(
            max_examples=self.max_examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            # No "explain" phase: it reruns the failing example many times for little gain.
            phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        )


class NotApplicable(Exception):
    """Raised by a check of an optional capability that the storage does not offer."""


class ProviderFailed(Exception):
    """Raised by the harness's failing providers."""


class ConsumerFailed(Exception):
    """Raised by the harness's failing consumers."""


def _expect(condition: object, message: str) -> None:
    """Fail the check (an explicit raise: ``python -O`` must not disable the harness)."""
    if not condition:
        raise AssertionError(message)


def _ids(count: int) -> list[str]:
    prefix = secrets.token_hex(6)  # fresh per example: leftovers never interfere
    return [f"conformance-{prefix}-{n}" for n in range(count)]


def _pieces(value: bytes, count: int) -> list[bytes]:
    step = max(1, -(-len(value) // count))
    return [value[i : i + step] for i in range(0, len(value), step)] or [b""]


def _provider(pieces: list[bytes], *, close: bool = False) -> Callable[[Any], Awaitable[None]]:
    async def provider(stream: trio.abc.SendStream) -> None:
        for piece in pieces:
            await stream.send_all(piece)
        if close:
            await stream.aclose()

    return provider


async def _read_all(stream: trio.abc.ReceiveStream, max_bytes: int | None = None) -> bytes:
    parts = []
    while chunk := await stream.receive_some(max_bytes):
        parts.append(bytes(chunk))
    return b"".join(parts)


async def _read_or_none(storage: SessionStorage, session_id: str) -> bytes | None:
    try:
        return await storage.read_bytes(session_id)
    except SessionNotFound:
        return None


# ------------------------------------------------------------------ the model check


def _patterned(size: int, seed: int) -> bytes:
    """A value of *size* bytes that differs from others by its seed (cheap to generate)."""
    return (bytes([seed]) + bytes(range(256)) * (size // 256 + 1))[:size]


# Random small values; larger ones are patterned: drawing every byte would be slow.
_VALUES = st.one_of(
    st.binary(max_size=64),
    st.builds(_patterned, st.integers(1000, 5000), st.integers(0, 255)),
    st.builds(_patterned, st.integers(60 * 1024, 300 * 1024), st.integers(0, 255)),
)
# Expiry boundaries never coincide with sums of advances, so no op lands exactly on one.
_TTLS = st.sampled_from([None, 1.3, 7.7, 31.1])
_KEY = st.integers(0, 2)


@dataclass(frozen=True)
class Op:
    kind: str
    key: int = 0
    value: bytes = b""
    pieces: int = 1
    ttl: float | None = None
    n: int = 0

    def __repr__(self) -> str:
        value = f"<{len(self.value)} bytes>" if len(self.value) > 16 else repr(self.value)
        return (
            f"{self.kind}(key={self.key}, value={value}, pieces={self.pieces}, "
            f"ttl={self.ttl}, n={self.n})"
        )


def _ops(clock_controlled: bool) -> st.SearchStrategy[list[Op]]:
    choices = [
        st.builds(Op, st.just("write_bytes"), _KEY, _VALUES, st.just(1), _TTLS),
        st.builds(Op, st.just("write"), _KEY, _VALUES, st.integers(1, 6), _TTLS),
        st.builds(Op, st.just("write_closing"), _KEY, _VALUES, st.integers(1, 6), _TTLS),
        st.builds(
            Op, st.just("write_failing"), _KEY, _VALUES, st.integers(1, 6), n=st.integers(0, 6)
        ),
        st.builds(
            Op, st.just("write_cancelled"), _KEY, _VALUES, st.integers(1, 6), n=st.integers(0, 6)
        ),
        st.builds(
            Op,
            st.just("cancel_after"),
            _KEY,
            _VALUES,
            st.integers(1, 4),
            _TTLS,
            n=st.integers(0, 8),
        ),
        st.builds(Op, st.just("read"), _KEY, n=st.sampled_from([1, 7, 4096, 0])),
        st.builds(Op, st.just("read_partial"), _KEY, n=st.integers(0, 3000)),
        st.builds(Op, st.just("read_failing"), _KEY),
        st.builds(Op, st.just("read_bytes"), _KEY),
        st.builds(Op, st.just("invalidate"), _KEY),
    ]
    if clock_controlled:
        advance = st.builds(Op, st.just("advance"), n=st.sampled_from([1, 8, 40]))
        choices += [advance, advance, advance]  # time passing matters as much as any operation
    return st.lists(st.one_of(choices), min_size=2, max_size=40)


async def _run_model(storage: SessionStorage, clock: ManualClock, ops: list[Op]) -> None:
    ids = _ids(3)
    model: dict[str, tuple[bytes, float]] = {}

    def expected(session_id: str) -> bytes | None:
        entry = model.get(session_id)
        if entry is None or entry[1] <= clock():
            return None
        return entry[0]

    def remember(session_id: str, value: bytes, ttl: float | None) -> None:
        model[session_id] = (value, math.inf if ttl is None else clock() + ttl)

    async def check(session_id: str, op: Op) -> None:
        got = await _read_or_none(storage, session_id)
        _expect(got == expected(session_id), f"after {op!r}: stored value differs from the model")

    for op in ops:
        sid = ids[op.key]
        if op.kind == "write_bytes":
            await storage.write_bytes(sid, op.value, ttl=op.ttl)
            remember(sid, op.value, op.ttl)
        elif op.kind in ("write", "write_closing"):
            pieces = _pieces(op.value, op.pieces)
            await storage.write(
                sid, _provider(pieces, close=op.kind == "write_closing"), ttl=op.ttl
            )
            remember(sid, op.value, op.ttl)
        elif op.kind == "write_failing":
            pieces = _pieces(op.value, op.pieces)[: op.n]
            error = ProviderFailed()

            async def failing(stream: trio.abc.SendStream) -> None:
                for piece in pieces:  # noqa: B023
                    await stream.send_all(piece)
                raise error  # noqa: B023

            try:
                await storage.write(sid, failing)
            except ProviderFailed as exc:
                _expect(exc is error, "the provider's exception must propagate as itself")
            else:
                raise AssertionError("write() swallowed the provider's exception")
            await check(sid, op)
        elif op.kind == "write_cancelled":
            pieces = _pieces(op.value, op.pieces)[: op.n]
            with trio.CancelScope() as scope:

                async def cancelling(stream: trio.abc.SendStream) -> None:
                    for piece in pieces:  # noqa: B023
                        await stream.send_all(piece)
                    scope.cancel()
                    await trio.lowlevel.checkpoint()

                await storage.write(sid, cancelling)
                raise AssertionError("write() returned although its provider was cancelled")
            await check(sid, op)
        elif op.kind == "cancel_after":
            await _cancel_after(storage, clock, sid, op, model)
        elif op.kind == "read":
            # Small reads exercise reassembly; keep them to ~64 calls per value.
            max_bytes = max(op.n, len(expected(sid) or b"") // 64) if op.n else None
            try:
                got = await storage.read(sid, lambda s: _read_all(s, max_bytes))  # noqa: B023
            except SessionNotFound:
                got = None
            _expect(got == expected(sid), f"{op!r} returned a value that differs from the model")
        elif op.kind == "read_partial":
            want = expected(sid)

            async def partial(stream: trio.abc.ReceiveStream) -> bytes:
                data = b""
                while len(data) < op.n and (chunk := await stream.receive_some(op.n - len(data))):  # noqa: B023
                    data += chunk
                return data

            try:
                got = await storage.read(sid, partial)
            except SessionNotFound:
                got = None
            _expect(got == (None if want is None else want[: op.n]), f"{op!r}: wrong prefix")
        elif op.kind == "read_failing":
            consumer_error = ConsumerFailed()

            async def failing_consumer(stream: trio.abc.ReceiveStream) -> None:
                await stream.receive_some(1)
                raise consumer_error  # noqa: B023

            try:
                await storage.read(sid, failing_consumer)
            except ConsumerFailed as exc:
                _expect(exc is consumer_error, "the consumer's exception must propagate as itself")
            except SessionNotFound:
                _expect(expected(sid) is None, "read() lost a stored value")
            else:
                raise AssertionError("read() swallowed the consumer's exception")
        elif op.kind == "read_bytes":
            await check(sid, op)
        elif op.kind == "invalidate":
            await storage.invalidate(sid)
            model.pop(sid, None)
        elif op.kind == "advance":
            clock.advance(op.n)
        else:  # pragma: no cover
            raise AssertionError(op.kind)
    for sid in ids:
        await check(sid, Op("end"))


async def _cancel_after(
    storage: SessionStorage,
    clock: ManualClock,
    sid: str,
    op: Op,
    model: dict[str, tuple[bytes, float]],
) -> None:
    """Run a write (or invalidate) and cancel it after *n* scheduler turns."""
    before = model.get(sid)
    old = None if before is None or before[1] <= clock() else before[0]
    mode = op.pieces % 3
    async with trio.open_nursery() as nursery:

        async def operation() -> None:
            if mode == 0:
                await storage.write_bytes(sid, op.value, ttl=op.ttl)
            elif mode == 1:
                await storage.write(sid, _provider(_pieces(op.value, 3)), ttl=op.ttl)
            else:
                await storage.invalidate(sid)
            nursery.cancel_scope.cancel()

        nursery.start_soon(operation)
        for _ in range(op.n):
            await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    got = await _read_or_none(storage, sid)
    new = None if mode == 2 else op.value
    if got == new and got != old:
        if new is None:
            model.pop(sid, None)
        else:
            model[sid] = (new, math.inf if op.ttl is None else clock() + op.ttl)
    elif got == new and new is not None:
        # The new value equals the old one: whether the write happened shows only in the
        # expiry, which the model cannot tell. Start this id afresh.
        await storage.invalidate(sid)
        model.pop(sid, None)
    else:
        _expect(
            got == old, f"{op!r}: a cancelled operation left a value that is neither old nor new"
        )


def check_model(ctx: Context) -> None:
    """Random sequences of operations agree with a dict model of the contract."""

    @ctx.settings()
    @given(ops=_ops(ctx.clock_controlled))
    @example(ops=[Op("write", 0, _patterned(70_000, 1), 3), Op("read_partial", 0, n=10)])
    @example(ops=[Op("write_bytes", 0, b"x"), Op("write_cancelled", 0, b"yy", 2, n=1)])
    @example(
        ops=[Op("write_bytes", 1, b"t", ttl=1.3), Op("advance", n=8)]
        if ctx.clock_controlled
        else [Op("write_bytes", 1, b"t", ttl=1.3), Op("invalidate", 1)]
    )
    def test(ops: list[Op]) -> None:
        try:
            ctx.run_with_storage(lambda storage, clock: _run_model(storage, clock, ops))
        except BaseException:
            ctx.example = f"operations: {ops!r}"
            raise

    test()


# --------------------------------------------------------------- concurrency check


def _recognizable(writer: int, seq: int, size: int) -> bytes:
    tag = f"<{writer}:{seq}>".encode()
    return (tag * (size // len(tag) + 1))[:size]


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
                    value = await storage.read(
                        sid, lambda s: _read_all(s, rng.choice([None, 4096]))
                    )
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
        error = ProviderFailed()

        async def provider(stream: trio.abc.SendStream) -> None:
            for piece in pieces:  # noqa: B023
                await stream.send_all(piece)
            raise error  # noqa: B023

        try:
            await storage.write(sid, provider)
        except ProviderFailed as exc:
            _expect(exc is error, "the provider's exception did not propagate as itself")
        except BaseExceptionGroup as group:
            message = f"a provider's error reached the caller wrapped: {group!r}"
            raise AssertionError(message) from group
        else:
            raise AssertionError("write() swallowed the provider's exception")
        _expect(await storage.read_bytes(sid) in (b"old", b"new"), "a failed write changed data")
    await storage.write_bytes(sid, b"z" * 300_000 if storage.max_size >= 300_000 else b"z")
    consumer_error = ConsumerFailed()

    async def consumer(stream: trio.abc.ReceiveStream) -> None:
        await stream.receive_some(10)
        raise consumer_error

    try:
        await storage.read(sid, consumer)
    except ConsumerFailed as exc:
        _expect(exc is consumer_error, "the consumer's exception did not propagate as itself")
    except BaseExceptionGroup as group:
        message = f"a consumer's error reached the caller wrapped: {group!r}"
        raise AssertionError(message) from group
    else:
        raise AssertionError("read() swallowed the consumer's exception")


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
        data = await _read_all(stream, 1000)
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
        return await _read_all(stream)

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


# ------------------------------------------------------------------ conditional writes


async def _conflicts(call: Callable[[], Awaitable[object]], what: str) -> None:
    with trio.testing.assert_checkpoints():
        try:
            await call()
        except WriteConflict:
            return
    raise AssertionError(f"{what} did not raise WriteConflict")


async def _version_of(storage: ConditionalStorage, session_id: str) -> int | None:
    try:
        found = await storage.read_versioned(session_id)
    except SessionNotFound:
        return None
    _expect(
        type(found.version) is int and found.version >= 1,
        f"read_versioned() returned version {found.version!r}, not a positive int",
    )
    _expect(
        found.data == await storage.read_bytes(session_id),
        "read_versioned() and read_bytes() disagree on the value",
    )
    return found.version


async def _conditional_semantics(
    storage: ConditionalStorage, clock: ManualClock, controlled: bool
) -> None:
    a, b, c, d = _ids(4)
    with trio.testing.assert_checkpoints():
        try:
            await storage.read_versioned(a)
        except SessionNotFound:
            pass
        else:
            raise AssertionError("read_versioned() of a missing session did not raise")
    await _conflicts(
        lambda: storage.write_bytes_if(a, b"x", version=1),
        "a write expecting a version of a missing session",
    )
    _expect(await _version_of(storage, a) is None, "a conflicting write stored a value")
    await _conflicts(
        lambda: storage.invalidate_if(a, version=1),
        "a delete expecting a version of a missing session",
    )

    with trio.testing.assert_checkpoints():
        v1 = await storage.write_bytes_if(a, b"one", version=None)
    _expect(
        await _version_of(storage, a) == v1, "read_versioned() did not return the written version"
    )
    await _conflicts(
        lambda: storage.write_bytes_if(a, b"two", version=None), "creating a session that exists"
    )
    v2 = await storage.write_bytes_if(a, b"two", version=v1)
    _expect(v2 != v1, "a conditional write kept the old version")
    _expect(await storage.read_bytes(a) == b"two", "a conditional write was not stored")
    await _conflicts(
        lambda: storage.write_bytes_if(a, b"stale", version=v1), "a write expecting an old version"
    )
    await _conflicts(
        lambda: storage.invalidate_if(a, version=v1), "a delete expecting an old version"
    )
    _expect(await storage.read_bytes(a) == b"two", "a conflicting operation changed the value")

    # Every kind of write gives a new version.
    await storage.write_bytes(a, b"plain")
    v3 = await _version_of(storage, a)
    _expect(v3 not in (None, v1, v2), "write_bytes() did not give the value a new version")
    await _conflicts(
        lambda: storage.write_bytes_if(a, b"stale", version=v2), "a write after write_bytes()"
    )
    big = _patterned(min(storage.max_size, 300_000), 7)
    await storage.write(a, _provider(_pieces(big, 5)))
    v4 = await _version_of(storage, a)
    _expect(v4 not in (None, v1, v2, v3), "write() did not give the value a new version")
    _expect(await storage.read_bytes(a) == big, "a streamed value was not stored whole")
    v5 = await storage.write_bytes_if(a, big[:1000], version=v4)
    found = await storage.read_versioned(a)
    _expect(
        (found.data, found.version) == (big[:1000], v5),
        "read_versioned() does not match the last conditional write",
    )

    # After invalidate, every conditional operation expecting a version fails.
    await storage.invalidate(a)
    await _conflicts(
        lambda: storage.write_bytes_if(a, b"revived", version=v5), "a write after invalidate()"
    )
    await _conflicts(lambda: storage.invalidate_if(a, version=v5), "a delete after invalidate()")
    _expect(
        await _version_of(storage, a) is None, "a conditional write revived an invalidated session"
    )

    # invalidate_if with the right version deletes.
    vb = await storage.write_bytes_if(b, b"b", version=None)
    with trio.testing.assert_checkpoints():
        await storage.invalidate_if(b, version=vb)
    _expect(
        await _version_of(storage, b) is None,
        "invalidate_if() with the stored version did not delete",
    )

    # Limits and ids are checked before anything happens.
    vc = await storage.write_bytes_if(c, b"c", version=None)
    try:
        await storage.write_bytes_if(c, b"x" * (storage.max_size + 1), version=vc)
    except SessionTooLarge:
        pass
    else:
        raise AssertionError("a conditional write above max_size was accepted")
    _expect(await _version_of(storage, c) == vc, "a refused oversized write changed the session")
    for bad in ("../x", "", "a b"):
        for call in (
            lambda: storage.read_versioned(bad),  # noqa: B023
            lambda: storage.write_bytes_if(bad, b"x", version=None),  # noqa: B023
            lambda: storage.invalidate_if(bad, version=1),  # noqa: B023
        ):
            try:
                await call()
            except InvalidSessionId:
                pass
            else:
                raise AssertionError(f"an invalid id {bad!r} was accepted by a conditional method")
    for bad_version in (0, -1, True, 1.5, "1"):
        try:
            await storage.write_bytes_if(c, b"x", version=bad_version)  # type: ignore[arg-type]
        except TypeError:
            pass
        else:
            raise AssertionError(f"version={bad_version!r} was accepted")

    # Expiry: an expired session has no version; it may be created again.
    if controlled:
        vd = await storage.write_bytes_if(d, b"d", version=None, ttl=10)
        clock.advance(11)
    else:
        vd = await storage.write_bytes_if(d, b"d", version=None, ttl=0.5)
        await trio.sleep(1.5)
    await _conflicts(
        lambda: storage.write_bytes_if(d, b"late", version=vd),
        "a write expecting the version of an expired session",
    )
    _expect(await _version_of(storage, d) is None, "a conditional write revived an expired session")
    await storage.write_bytes_if(d, b"fresh", version=None, ttl=60)
    _expect(
        await storage.read_bytes(d) == b"fresh", "an expired session could not be created again"
    )


async def _conditional_race(storage: ConditionalStorage, seed: int) -> None:
    """Racers write with the same version (one wins); a logout racing them always wins."""
    rng = random.Random(seed)
    (sid,) = _ids(1)
    for round_ in range(6):
        await storage.write_bytes(sid, b"base")
        version = (await storage.read_versioned(sid)).version
        winners: list[bytes] = []
        logout = round_ % 2 == 1

        async def racer(n: int) -> None:
            for _ in range(rng.randint(0, 3)):  # shuffle the start order
                await trio.lowlevel.checkpoint()
            value = _recognizable(n, round_, rng.choice([5, 2000]))  # noqa: B023
            try:
                await storage.write_bytes_if(sid, value, version=version)  # noqa: B023
            except WriteConflict:
                return
            winners.append(value)  # noqa: B023

        async def logger_out() -> None:
            for _ in range(rng.randint(0, 3)):
                await trio.lowlevel.checkpoint()
            await storage.invalidate(sid)

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(racer, n)
            if logout:
                nursery.start_soon(logger_out)
        _expect(
            len(winners) <= 1,
            f"{len(winners)} conditional writes expecting the same version all succeeded",
        )
        stored = await _read_or_none(storage, sid)
        if logout:
            _expect(stored is None, "a conditional write racing invalidate() revived the session")
        else:
            _expect(
                len(winners) == 1, "no conditional write succeeded, with no conflict to lose to"
            )
            _expect(stored == winners[0], "the stored value is not the one whose write succeeded")


def check_conditional(ctx: Context) -> None:
    """Conditional writes (when offered) compare and set atomically; invalidate wins."""

    async def body(storage: SessionStorage, clock: ManualClock) -> None:
        capable = conditional(storage)
        if capable is None:
            raise NotApplicable(f"{type(storage).__name__} offers no conditional writes")
        await _conditional_semantics(capable, clock, ctx.clock_controlled)
        for seed in range(max(1, min(ctx.max_examples // 10, 5))):
            ctx.example = f"race seed={seed}"
            await _conditional_race(capable, seed)
        ctx.example = None

    ctx.run_with_storage(body)


#: Every check, by name, in the order they run.
CHECKS: dict[str, Callable[[Context], None]] = {
    "errors_and_checkpoints": check_errors_and_checkpoints,
    "streams": check_streams,
    "ids": check_ids,
    "size": check_size,
    "ttl": check_ttl,
    "close": check_close,
    "model": check_model,
    "concurrency": check_concurrency,
    "conditional": check_conditional,
}
