"""Opening the storage of a web application when its server starts, closing it when it stops."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeAlias, final

import trio
from trio.lowlevel import checkpoint

from .._abc import SessionStorage

__all__ = ["UNOPENED", "StorageSource", "check_source", "open_storage_source"]

#: A storage, or a zero-argument callable returning an async context manager that yields
#: one (for storages that own background tasks, e.g. ``lambda: open_cache_storage(...)``).
StorageSource: TypeAlias = (
    "SessionStorage | Callable[[], AbstractAsyncContextManager[SessionStorage]]"
)


def check_source(source: object) -> None:
    """Refuse, at construction, what cannot become a storage (a clear TypeError)."""
    if isinstance(source, SessionStorage):
        return
    if hasattr(source, "__aenter__"):
        raise TypeError(
            f"storage is an async context manager ({type(source).__name__}), which can be "
            "entered only once: pass a function that makes one, e.g. "
            "`lambda: open_cache_storage(...)`, so it is opened when the server starts"
        )
    if not callable(source):
        raise TypeError(
            "storage must be a SessionStorage or a zero-argument callable returning an "
            f"async context manager that yields one, not {type(source).__name__}"
        )


@asynccontextmanager
async def _borrowed(storage: SessionStorage) -> AsyncIterator[SessionStorage]:
    await checkpoint()
    yield storage


def _as_context(source: StorageSource) -> AbstractAsyncContextManager[SessionStorage]:
    check_source(source)
    if isinstance(source, SessionStorage):
        return _borrowed(source)  # the caller owns and closes it
    context = source()
    if not hasattr(context, "__aenter__"):
        raise TypeError(
            f"the storage factory returned {type(context).__name__}, not an async context "
            "manager yielding a SessionStorage (e.g. `lambda: open_cache_storage(...)`)"
        )
    return context


@asynccontextmanager
async def _checked(source: StorageSource) -> AsyncIterator[SessionStorage]:
    async with _as_context(source) as storage:
        if not isinstance(storage, SessionStorage):
            raise TypeError(
                f"the storage factory's context manager yielded {type(storage).__name__}, "
                "not a SessionStorage"
            )
        yield storage


async def open_storage_source(  # noqa: ASYNC114
    source: StorageSource,
    *,
    task_status: trio.TaskStatus[tuple[SessionStorage, Callable[[], Awaitable[None]]]] = (
        trio.TASK_STATUS_IGNORED
    ),
) -> None:
    """Keep *source* open in the calling nursery: ``await nursery.start(open_storage_source, s)``.

    Starts with ``(storage, stop)``; awaiting ``stop()`` closes a storage this task
    opened (a plain `SessionStorage` is left to its owner) and returns once it is closed.
    """
    stop_requested = trio.Event()
    stopped = trio.Event()

    async def stop() -> None:
        stop_requested.set()
        await stopped.wait()

    try:
        async with _checked(source) as storage:
            task_status.started((storage, stop))
            await stop_requested.wait()
    finally:
        stopped.set()


@final
class _Unopened(SessionStorage):
    """Stands in for a storage that the server's startup has not opened yet."""

    __slots__ = ()

    max_size = 0

    def _fail(self) -> RuntimeError:
        return RuntimeError(
            "the session storage is not open yet: it opens when the server starts the "
            "application (lifespan startup), and closes when it stops"
        )

    async def write(self, session_id: str, provider: Any, *, ttl: float | None = None) -> None:
        raise self._fail()

    async def read(self, session_id: str, consumer: Any) -> Any:
        raise self._fail()

    async def invalidate(self, session_id: str) -> None:
        raise self._fail()

    async def write_bytes(self, session_id: str, data: bytes, *, ttl: float | None = None) -> None:
        raise self._fail()

    async def read_bytes(self, session_id: str) -> bytes:
        raise self._fail()

    async def aclose(self) -> None:
        await checkpoint()


UNOPENED: SessionStorage = _Unopened()
