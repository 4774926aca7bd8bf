"""A storage wrapper for session-layer tests: counts operations and injects faults."""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trio_sessions import (
    ConditionalStorage,
    MemoryStorage,
    SessionStorage,
    StorageError,
    Versioned,
)
from trio_sessions._abc import Consumer, Provider, T

READS = ("read", "read_bytes", "read_versioned")
WRITES = ("write", "write_bytes", "write_bytes_if")
DELETES = ("invalidate", "invalidate_if")


class Fault(StorageError):
    """An injected backend failure."""


class Spy(ConditionalStorage):
    """Delegates to another storage (a MemoryStorage by default).

    * ``ops`` counts the operations by method name;
    * ``fail`` is a set of method names (or kinds: "read", "write", "delete") that raise
      a `Fault` before doing anything; ``fail_after`` the same, after the operation
      happened (a reply lost on the way back);
    * ``hooks`` maps a method name to an async callable run before the operation once.
    """

    def __init__(self, inner: SessionStorage | None = None) -> None:
        self.inner = inner if inner is not None else MemoryStorage()
        self.ops: Counter[str] = Counter()
        self.fail: set[str] = set()
        self.fail_after: set[str] = set()
        self.hooks: dict[str, Callable[[], Awaitable[object]]] = {}
        self.error: Callable[[], Exception] = lambda: Fault("injected backend failure")

    @property
    def conditional_writes(self) -> bool:
        return isinstance(self.inner, ConditionalStorage) and self.inner.conditional_writes

    @property
    def max_size(self) -> int:
        return self.inner.max_size

    def count(self, *kinds: tuple[str, ...]) -> int:
        return sum(self.ops[name] for kind in kinds for name in kind)

    def _armed(self, name: str, armed: set[str]) -> bool:
        kind = "read" if name in READS else "write" if name in WRITES else "delete"
        return name in armed or kind in armed

    async def _call(self, name: str, call: Callable[[], Awaitable[Any]]) -> Any:
        hook = self.hooks.pop(name, None)
        if hook is not None:
            await hook()
        self.ops[name] += 1
        if self._armed(name, self.fail):
            await trio.lowlevel.checkpoint()
            raise self.error()
        result = await call()
        if self._armed(name, self.fail_after):
            raise self.error()
        return result

    async def write(self, session_id: str, provider: Provider, *, ttl: float | None = None) -> None:
        await self._call("write", lambda: self.inner.write(session_id, provider, ttl=ttl))

    async def read(self, session_id: str, consumer: Consumer[T]) -> T:
        result: T = await self._call("read", lambda: self.inner.read(session_id, consumer))
        return result

    async def invalidate(self, session_id: str) -> None:
        await self._call("invalidate", lambda: self.inner.invalidate(session_id))

    async def write_bytes(self, session_id: str, data: bytes, *, ttl: float | None = None) -> None:
        await self._call("write_bytes", lambda: self.inner.write_bytes(session_id, data, ttl=ttl))

    async def read_bytes(self, session_id: str) -> bytes:
        result: bytes = await self._call("read_bytes", lambda: self.inner.read_bytes(session_id))
        return result

    def _conditional(self) -> ConditionalStorage:
        assert isinstance(self.inner, ConditionalStorage)
        return self.inner

    async def read_versioned(self, session_id: str) -> Versioned:
        inner = self._conditional()
        result: Versioned = await self._call(
            "read_versioned", lambda: inner.read_versioned(session_id)
        )
        return result

    async def write_bytes_if(
        self, session_id: str, data: bytes, *, version: int | None, ttl: float | None = None
    ) -> int:
        inner = self._conditional()
        result: int = await self._call(
            "write_bytes_if",
            lambda: inner.write_bytes_if(session_id, data, version=version, ttl=ttl),
        )
        return result

    async def invalidate_if(self, session_id: str, *, version: int) -> None:
        inner = self._conditional()
        await self._call("invalidate_if", lambda: inner.invalidate_if(session_id, version=version))

    async def aclose(self) -> None:
        await self.inner.aclose()


class PlainSpy(SessionStorage):
    """The same, for a storage without conditional writes (the weaker guarantees)."""

    def __init__(self) -> None:
        self.spy = Spy()

    @property
    def max_size(self) -> int:
        return self.spy.max_size

    async def write(self, session_id: str, provider: Provider, *, ttl: float | None = None) -> None:
        await self.spy.write(session_id, provider, ttl=ttl)

    async def read(self, session_id: str, consumer: Consumer[T]) -> T:
        return await self.spy.read(session_id, consumer)

    async def invalidate(self, session_id: str) -> None:
        await self.spy.invalidate(session_id)

    async def write_bytes(self, session_id: str, data: bytes, *, ttl: float | None = None) -> None:
        await self.spy.write_bytes(session_id, data, ttl=ttl)

    async def read_bytes(self, session_id: str) -> bytes:
        return await self.spy.read_bytes(session_id)

    async def aclose(self) -> None:
        await self.spy.aclose()


def disk_full() -> Exception:
    """What a storage raises when its disk is full."""
    cause = OSError(errno.ENOSPC, "No space left on device")
    error = StorageError(f"could not store: {cause}")
    error.__cause__ = cause
    return error
