"""A streaming backend: values kept as chunks, as an object store with multipart uploads."""

import math
from collections.abc import Callable

import trio
from trio.lowlevel import cancel_shielded_checkpoint

from trio_sessions import ChunkSink, ChunkSource, SessionNotFound, StorageBase
from trio_sessions.testing import check_storage

CHUNK = 16 * 1024


class ChunkedStorage(StorageBase):
    """Each value is a list of chunks; values above one chunk stream in and out."""

    _chunk_size = CHUNK  # larger values go through _open_sink / _open_source

    def __init__(self, *, clock: Callable[[], float] = trio.current_time) -> None:
        super().__init__()
        self._clock = clock
        self._objects: dict[str, tuple[list[bytes], float]] = {}

    def _live(self, session_id: str) -> list[bytes] | None:
        found = self._objects.get(session_id)
        return None if found is None or found[1] <= self._clock() else found[0]

    def _put(self, session_id: str, chunks: list[bytes], ttl: float | None) -> None:
        expires = math.inf if ttl is None else self._clock() + ttl
        self._objects[session_id] = (chunks, expires)  # one assignment: atomic

    # Every hook is a schedule point: these touch only memory, so they end with one.

    async def _load(self, session_id: str) -> bytes | None:
        chunks = self._live(session_id)
        await cancel_shielded_checkpoint()
        return None if chunks is None else b"".join(chunks)

    async def _store(self, session_id: str, data: bytes, ttl: float | None) -> None:
        self._put(session_id, [data], ttl)
        await cancel_shielded_checkpoint()

    async def _delete(self, session_id: str) -> None:
        self._objects.pop(session_id, None)
        await cancel_shielded_checkpoint()

    async def _open_source(self, session_id: str) -> tuple[bytes, ChunkSource | None]:
        chunks = self._live(session_id)
        await cancel_shielded_checkpoint()
        if chunks is None:
            raise SessionNotFound()
        return chunks[0], _Download(chunks[1:])  # the first chunk, then the rest

    async def _open_sink(self, session_id: str, ttl: float | None) -> ChunkSink:
        await cancel_shielded_checkpoint()
        return _Upload(self, session_id, ttl)


class _Upload:
    """A multipart upload: parts stay invisible until `commit`."""

    def __init__(self, storage: ChunkedStorage, session_id: str, ttl: float | None) -> None:
        self._storage, self._session_id, self._ttl = storage, session_id, ttl
        self._parts: list[bytes] = []

    async def write(self, chunk: bytes) -> None:
        self._parts.append(chunk)
        await cancel_shielded_checkpoint()

    async def commit(self) -> None:
        self._storage._put(self._session_id, self._parts, self._ttl)
        await cancel_shielded_checkpoint()

    async def abort(self) -> None:
        self._parts = []
        await cancel_shielded_checkpoint()


class _Download:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def read(self) -> bytes:
        await cancel_shielded_checkpoint()
        return self._chunks.pop(0) if self._chunks else b""

    async def aclose(self) -> None:
        await cancel_shielded_checkpoint()


async def main() -> None:
    report = await check_storage(ChunkedStorage, max_examples=20)
    print(report.format())


if __name__ == "__main__":
    trio.run(main)
