"""The lifecycle of a storage with background work, written once.

Such a storage (`CacheStorage`, `PostgresStorage`) has a public constructor that does
no I/O, a ``run`` method to start in a nursery (``await nursery.start(storage.run)``:
ready when that returns) and ``aclose``. Its ``open_*`` function is made here from the
class: the same arguments, the storage running in a nursery of its own for the
``async with`` block, as trio-websocket pairs ``open_websocket_url`` with a
nursery-taking variant.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import ParamSpec, Protocol, TypeVar

import trio

from ._base import collapsed_errors

__all__ = ["Runnable", "opener", "running"]


class Runnable(Protocol):
    """A storage whose background work runs in a caller's nursery."""

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...  # noqa: ASYNC114

    async def aclose(self) -> None: ...


R = TypeVar("R", bound=Runnable)
P = ParamSpec("P")


@asynccontextmanager
async def running(storage: R) -> AsyncIterator[R]:
    """Run *storage* in a nursery of its own for the block; close it on the way out."""
    # The storage's task fails only while it starts, so a group holds one real error.
    with collapsed_errors():
        async with trio.open_nursery() as nursery:
            await nursery.start(storage.run)
            try:
                yield storage
            finally:
                with trio.CancelScope(shield=True):
                    await storage.aclose()


def opener(cls: Callable[P, R], name: str, doc: str) -> Callable[P, AbstractAsyncContextManager[R]]:
    """The ``open_*`` function of *cls*: it takes the arguments of *cls* (checked when
    it is called, before any I/O) and returns `running` of the new storage."""

    def open_storage(*args: P.args, **kwargs: P.kwargs) -> AbstractAsyncContextManager[R]:
        return running(cls(*args, **kwargs))

    open_storage.__name__ = open_storage.__qualname__ = name
    open_storage.__module__ = cls.__module__
    open_storage.__doc__ = doc
    # help(), Sphinx and IDEs show the arguments of the class, not *args, **kwargs.
    signature = inspect.signature(cls)
    returns = f"AbstractAsyncContextManager[{getattr(cls, '__name__', 'storage')}]"
    vars(open_storage)["__signature__"] = signature.replace(return_annotation=returns)
    return open_storage
