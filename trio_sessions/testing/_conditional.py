"""The check of conditional writes (compare-and-set), for storages that offer them."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import trio
import trio.testing

from .._abc import ConditionalStorage, SessionStorage, conditional
from .._errors import InvalidSessionId, SessionNotFound, SessionTooLarge, WriteConflict
from ._context import (
    Context,
    NotApplicable,
    _expect,
    _ids,
    _patterned,
    _pieces,
    _provider,
    _read_or_none,
    _recognizable,
)
from ._tools import ManualClock

__all__ = ["check_conditional"]


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
