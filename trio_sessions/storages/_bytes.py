"""`BytesStorage`: write a backend as three byte-level methods; streaming comes free."""

from __future__ import annotations

from abc import abstractmethod

from trio.lowlevel import cancel_shielded_checkpoint

from .._abc import DEFAULT_MAX_SIZE
from .._base import StorageBase

__all__ = ["BytesStorage"]


class BytesStorage(StorageBase):
    """Base class for storages that keep each session as one ``bytes`` value.

    Subclass it and implement `load`, `store` and `delete` (and `close` if the backend
    holds resources). The base class provides the whole `SessionStorage` contract on top:
    the provider and consumer streams, id validation, the size limit, checkpoints,
    translation of backend exceptions into `StorageError`, and closing. Your methods are
    only called with valid ids and payloads within ``max_size``.

    Expiry is yours to keep: `store` receives the ttl in seconds (or ``None``) and `load`
    must return ``None`` once it has passed. A key-value server does this natively (e.g.
    ``SET ... PX``); otherwise store the deadline next to the value.

    The methods may be called concurrently from several tasks; each `store` must replace
    the value atomically.
    """

    def __init__(self, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        super().__init__(max_size=max_size)

    @abstractmethod
    async def load(self, session_id: str) -> bytes | None:
        """Return the stored value, or ``None`` if there is none or it expired."""

    @abstractmethod
    async def store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        """Replace the value atomically; expire it after *ttl* seconds unless ``None``."""

    @abstractmethod
    async def delete(self, session_id: str) -> None:
        """Delete the value. A missing value is not an error."""

    async def close(self) -> None:
        """Release resources; called once, by `aclose`."""

    # Your methods may or may not await I/O; the hooks end with a schedule point either
    # way, as the base class's rule asks.

    async def _load(self, session_id: str) -> bytes | None:
        data: object = await self.load(session_id)
        await cancel_shielded_checkpoint()
        if data is None or type(data) is bytes:
            return data
        if isinstance(data, bytearray | memoryview):
            return bytes(data)
        raise TypeError(f"{type(self).__name__}.load() returned {type(data).__name__}")

    async def _store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        await self.store(session_id, data, ttl)
        await cancel_shielded_checkpoint()

    async def _delete(self, session_id: str) -> None:
        await self.delete(session_id)
        await cancel_shielded_checkpoint()

    async def _close(self) -> None:
        await self.close()
