"""What every check shares: the context, callbacks and small helpers."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio
import trio.testing
from hypothesis import HealthCheck, Phase, settings

from .._abc import SessionStorage
from .._errors import SessionNotFound
from ._tools import ManualClock, StorageFactory

__all__ = ["Context", "NotApplicable"]

T = TypeVar("T")


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


async def _read_or_none(storage: SessionStorage, session_id: str) -> bytes | None:
    try:
        return await storage.read_bytes(session_id)
    except SessionNotFound:
        return None


def _patterned(size: int, seed: int) -> bytes:
    """A value of *size* bytes that differs from others by its seed (cheap to generate)."""
    return (bytes([seed]) + bytes(range(256)) * (size // 256 + 1))[:size]


def _recognizable(writer: int, seq: int, size: int) -> bytes:
    tag = f"<{writer}:{seq}>".encode()
    return (tag * (size // len(tag) + 1))[:size]


def _failing_provider(pieces: list[bytes]) -> tuple[Callable[[Any], Awaitable[None]], Exception]:
    """A provider that sends *pieces*, then raises its own error (returned beside it)."""
    error = ProviderFailed()

    async def provider(stream: trio.abc.SendStream) -> None:
        for piece in pieces:
            await stream.send_all(piece)
        raise error

    return provider, error


def _failing_consumer(receive: int) -> tuple[Callable[[Any], Awaitable[None]], Exception]:
    """A consumer that receives up to *receive* bytes, then raises its own error."""
    error = ConsumerFailed()

    async def consumer(stream: trio.abc.ReceiveStream) -> None:
        await stream.receive_some(receive)
        raise error

    return consumer, error


async def _raises_itself(call: Callable[[], Awaitable[object]], error: Exception, who: str) -> None:
    """*call* must raise *error*, the callback's own exception, unwrapped."""
    try:
        await call()
    except type(error) as exc:
        _expect(exc is error, f"the {who}'s exception did not propagate as itself")
    except BaseExceptionGroup as group:
        raise AssertionError(f"a {who}'s error reached the caller wrapped: {group!r}") from group
    else:
        raise AssertionError(f"the storage swallowed the {who}'s exception")
