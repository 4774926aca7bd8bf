"""A SessionStorage written directly: a wrapper that times another storage's operations."""

import time
from collections import Counter, defaultdict
from typing import TypeVar, final

import trio

from trio_sessions import Consumer, MemoryStorage, Provider, SessionStorage
from trio_sessions.testing import ManualClock, check_storage

T = TypeVar("T")


@final
class TimedStorage(SessionStorage):
    """Delegates every operation to *inner* and adds up the time each kind took."""

    def __init__(self, inner: SessionStorage) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)

    def _record(self, operation: str, started: float) -> None:
        self.calls[operation] += 1
        self.seconds[operation] += time.perf_counter() - started

    @property
    def max_size(self) -> int:
        return self.inner.max_size

    async def write(self, session_id: str, provider: Provider, *, ttl: float | None = None) -> None:
        started = time.perf_counter()
        try:
            await self.inner.write(session_id, provider, ttl=ttl)
        finally:
            self._record("write", started)

    async def read(self, session_id: str, consumer: Consumer[T]) -> T:
        started = time.perf_counter()
        try:
            return await self.inner.read(session_id, consumer)
        finally:
            self._record("read", started)

    async def invalidate(self, session_id: str) -> None:
        started = time.perf_counter()
        try:
            await self.inner.invalidate(session_id)
        finally:
            self._record("invalidate", started)

    async def write_bytes(self, session_id: str, data: bytes, *, ttl: float | None = None) -> None:
        started = time.perf_counter()
        try:
            await self.inner.write_bytes(session_id, data, ttl=ttl)
        finally:
            self._record("write", started)

    async def read_bytes(self, session_id: str) -> bytes:
        started = time.perf_counter()
        try:
            return await self.inner.read_bytes(session_id)
        finally:
            self._record("read", started)

    async def aclose(self) -> None:
        await self.inner.aclose()


def make_storage(clock: ManualClock) -> TimedStorage:
    return TimedStorage(MemoryStorage(clock=clock))


async def main() -> None:
    report = await check_storage(make_storage, max_examples=5)
    print(report.format())
    assert report.passed


if __name__ == "__main__":
    trio.run(main)
