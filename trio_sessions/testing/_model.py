"""The model check: random operation sequences against a dict model of the contract."""

from __future__ import annotations

import math
from dataclasses import dataclass

import trio
import trio.testing
from hypothesis import example, given
from hypothesis import strategies as st

from .._abc import SessionStorage
from .._errors import SessionNotFound
from ._context import (
    Context,
    _expect,
    _failing_consumer,
    _failing_provider,
    _ids,
    _patterned,
    _pieces,
    _provider,
    _raises_itself,
    _read_or_none,
)
from ._tools import ManualClock, read_all

__all__ = ["check_model"]


# ------------------------------------------------------------------ the model check


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
            failing, error = _failing_provider(_pieces(op.value, op.pieces)[: op.n])
            await _raises_itself(lambda: storage.write(sid, failing), error, "provider")  # noqa: B023
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
                got = await storage.read(sid, lambda s: read_all(s, max_bytes))  # noqa: B023
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
            consumer, error = _failing_consumer(1)
            try:
                await _raises_itself(lambda: storage.read(sid, consumer), error, "consumer")  # noqa: B023
            except SessionNotFound:
                _expect(expected(sid) is None, "read() lost a stored value")
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
