"""A CacheStorage in front of a DirectoryStorage, opened both ways."""

import tempfile

import trio

from trio_sessions import CacheStorage, DirectoryStorage, new_session_id, open_cache_storage


async def with_its_own_nursery(root: str) -> None:
    async with (
        DirectoryStorage(root) as delegate,
        open_cache_storage(delegate, idle_timeout=60, max_entries=10_000) as cache,
    ):
        sid = new_session_id()
        await cache.write_bytes(sid, b'{"user": 42}', ttl=1800)
        for _ in range(3):
            await cache.read_bytes(sid)  # served from memory
        print(cache.statistics())
    # The cache is closed here, then the directory: the delegate outlives its cache.


async def in_a_nursery_you_own(root: str) -> None:
    async with DirectoryStorage(root) as delegate, trio.open_nursery() as nursery:
        cache = CacheStorage(delegate, idle_timeout=60)
        await nursery.start(cache.run)  # ready when start() returns
        sid = new_session_id()
        await cache.write_bytes(sid, b"{}", ttl=1800)
        print(await cache.read_bytes(sid))
        await cache.aclose()  # run() returns, so the nursery can finish


async def main(root: str) -> None:
    await with_its_own_nursery(root)
    await in_a_nursery_you_own(root)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as root:
        trio.run(main, root)
