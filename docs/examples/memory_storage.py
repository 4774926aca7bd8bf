"""MemoryStorage with a bounded number of sessions."""

import trio

from trio_sessions import MemoryStorage, new_session_id


async def main() -> None:
    async with MemoryStorage(max_entries=2, max_size=16 * 1024) as storage:
        ids = [new_session_id() for _ in range(3)]
        for sid in ids:
            await storage.write_bytes(sid, b"{}", ttl=1800)
        # Beyond max_entries the least recently used session went.
        print(storage.statistics())
        print("expired sessions removed:", (await storage.purge()).expired)


if __name__ == "__main__":
    trio.run(main)
