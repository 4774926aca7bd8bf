"""Use session stores written for asyncio from trio, through trio-asyncio.

Requires the ``asyncio`` extra: ``pip install "trio-sessions[asyncio]"``.
"""

from __future__ import annotations

from ._asyncio_bridge import AsyncioByteStore as AsyncioByteStore
from ._asyncio_bridge import AsyncioStorage as AsyncioStorage
from ._asyncio_bridge import open_asyncio_storage as open_asyncio_storage

__all__ = ["AsyncioByteStore", "AsyncioStorage", "open_asyncio_storage"]
