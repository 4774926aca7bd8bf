"""The asyncio bridge: the storage contract over a byte store written for asyncio.

The store's coroutines run as asyncio tasks on a trio-asyncio loop, inside the caller's
trio run. Everything else (ids, ttl checks, size limits, streams, checkpoints, error
translation, closing) comes from `StorageBase`, as for every built-in backend.

trio-asyncio is imported when a storage is opened, so this module (and the docs built
from it) import without the ``asyncio`` extra.
"""

from __future__ import annotations

import asyncio
from abc import ABCMeta
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar, cast, final

import trio

from ._abc import DEFAULT_MAX_SIZE
from ._base import StorageBase, collapsed_errors
from ._errors import StorageError

if TYPE_CHECKING:
    from trio_asyncio import TrioEventLoop

__all__ = ["AsyncioByteStore", "AsyncioStorage", "open_asyncio_storage"]

T = TypeVar("T")
_T = TypeVar("_T")

#: How long closing may wait for the asyncio side to release its resources.
CLOSE_GRACE = 10.0


class AsyncioByteStore(Protocol):
    """What `open_asyncio_storage` adapts: three asyncio coroutine methods.

    The asyncio twin of `~trio_sessions.BytesStorage`. The methods run on an asyncio event
    loop (trio-asyncio's), are only called with valid ids and payloads within
    ``max_size``, and may be called concurrently. ``store`` replaces the value atomically
    and expires it after *ttl* seconds unless ``None``; ``load`` returns ``None`` for a
    missing or expired session; ``delete`` of a missing session is not an error.
    """

    async def load(self, session_id: str, /) -> bytes | None: ...

    async def store(self, session_id: str, data: bytes, ttl: float | None, /) -> None: ...

    async def delete(self, session_id: str, /) -> None: ...


async def _call_in_asyncio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    # The coroutine object is created here, inside the asyncio task: asyncio code may
    # look for its running loop as soon as it is called.
    return await fn(*args)


@final
class _OpenedOnly(ABCMeta):
    """Classes made only by their ``open_*`` function (like `trio.Nursery`)."""

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            f"{cls.__name__} has no public constructor: open one with"
            " 'async with open_asyncio_storage(store) as storage'"
        )

    def _create(cls: type[_T], *args: Any, **kwargs: Any) -> _T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc,no-any-return]


class AsyncioStorage(StorageBase, metaclass=_OpenedOnly):
    """The `SessionStorage` that `open_asyncio_storage` yields: its hooks run on the
    asyncio side."""

    def __init__(
        self,
        loop: TrioEventLoop,
        store: AsyncioByteStore,
        close: Callable[[], Awaitable[object]] | None,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        super().__init__(max_size=max_size)
        self._loop = loop
        self._backend = store
        self._release = close

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await ``fn(*args)`` as an asyncio task and return its result.

        Cancelling the calling trio task cancels the asyncio task and waits for it to
        finish unwinding, so nothing of the call is still running when `trio.Cancelled`
        arrives. An `asyncio.CancelledError` that did not come from our caller (the loop
        shutting down, the store cancelling itself) is a backend failure.
        """
        try:
            result: T = await self._loop.run_aio_coroutine(_call_in_asyncio(fn, *args))
        except asyncio.CancelledError as exc:
            # asyncio's cancellation, not trio's: trio's arrives as trio.Cancelled.
            message = f"{type(self).__name__}: the asyncio call was cancelled"
            raise StorageError(message) from exc  # noqa: ASYNC104
        return result

    async def _load(self, session_id: str) -> bytes | None:
        data: object = await self._call(self._backend.load, session_id)
        if data is None or type(data) is bytes:
            return data
        if isinstance(data, bytes | bytearray | memoryview):
            return bytes(data)
        raise TypeError(f"{type(self._backend).__name__}.load() returned {type(data).__name__}")

    async def _store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        await self._call(self._backend.store, session_id, data, ttl)

    async def _delete(self, session_id: str) -> None:
        await self._call(self._backend.delete, session_id)

    async def _close(self) -> None:
        release, self._release = self._release, None
        if release is None:
            return  # noqa: ASYNC910 (a hook: aclose() checkpoints)
        # Closing must release connections even when the caller is being cancelled; the
        # grace period bounds it (the asyncio side is cancelled when it runs out).
        with trio.move_on_after(CLOSE_GRACE, shield=True):
            try:
                await self._call(release)
            except StorageError:
                raise
            except Exception as exc:
                raise self._failure("close", exc) from exc


@asynccontextmanager
async def _asyncio_loop() -> AsyncIterator[TrioEventLoop]:
    """Join the trio-asyncio loop of the enclosing ``open_loop()``, or open one."""
    import trio_asyncio

    loop = trio_asyncio.current_loop.get()
    if loop is not None and not loop.is_closed():
        await trio.lowlevel.checkpoint()
        yield loop
        return
    # open_loop's nurseries group whatever passes through them; one error (the caller's
    # own, usually) comes out as itself.
    with collapsed_errors():
        async with trio_asyncio.open_loop() as loop:
            yield loop


async def _enter(
    loop: TrioEventLoop,
    store: AsyncioByteStore | AbstractAsyncContextManager[AsyncioByteStore],
    name: str,
) -> tuple[AsyncioByteStore, Callable[[], Awaitable[object]] | None]:
    """Enter *store* on the asyncio side if it is a context manager; return its exit."""
    if not hasattr(store, "__aenter__"):
        for method in ("load", "store", "delete"):
            if not callable(getattr(store, method, None)):
                raise TypeError(f"{type(store).__name__} has no {method}() method")
        await trio.lowlevel.checkpoint()
        return store, None
    manager = cast(AbstractAsyncContextManager[AsyncioByteStore], store)
    try:
        entered = await loop.run_aio_coroutine(_call_in_asyncio(manager.__aenter__))
    except (Exception, asyncio.CancelledError) as exc:
        message = f"could not open {name}: {exc!r}"
        raise StorageError(message) from exc  # noqa: ASYNC104 (asyncio's cancellation)

    async def release() -> None:
        await manager.__aexit__(None, None, None)

    return entered, release


@asynccontextmanager
async def open_asyncio_storage(
    store: AsyncioByteStore | AbstractAsyncContextManager[AsyncioByteStore],
    *,
    max_size: int = DEFAULT_MAX_SIZE,
) -> AsyncIterator[AsyncioStorage]:
    """Use a byte store written for asyncio as a `SessionStorage`.

    *store* has asyncio coroutine methods ``load``, ``store`` and ``delete`` (see
    `AsyncioByteStore`), or is an asyncio async context manager that yields such an
    object: it is entered on the asyncio loop when the storage opens and exited when it
    closes, which is where a store opens and closes its client (a connection pool, say).

    The storage runs the store's coroutines on the trio-asyncio loop of the enclosing
    ``trio_asyncio.open_loop()`` block if there is one, else on a loop it opens for its
    own lifetime. Cancelling a trio task cancels its asyncio call, and the trio call
    returns only once that call has finished unwinding. An exception from the store
    becomes `StorageError` with the original as ``__cause__``.

    Requires the ``asyncio`` extra (trio-asyncio).
    """
    async with _asyncio_loop() as loop:
        backend, release = await _enter(loop, store, "AsyncioStorage")
        try:
            storage = AsyncioStorage._create(loop, backend, release, max_size=max_size)
        except BaseException:
            if release is not None:
                with trio.move_on_after(CLOSE_GRACE, shield=True):
                    await loop.run_aio_coroutine(_call_in_asyncio(release))
            raise
        try:
            yield storage
        finally:
            await storage.aclose()
