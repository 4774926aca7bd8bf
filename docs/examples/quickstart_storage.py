"""Store, read and delete one session in memory."""

import trio

from trio_sessions import MemoryStorage, new_session_id


async def main() -> None:
    async with MemoryStorage() as storage:
        sid = new_session_id()
        await storage.write_bytes(sid, b'{"user": 42}', ttl=1800)
        print(await storage.read_bytes(sid))
        await storage.invalidate(sid)


if __name__ == "__main__":
    trio.run(main)
