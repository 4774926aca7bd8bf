"""Sessions in Redis or Valkey, handed to a web framework as a factory.

Needs a server: ``python redis_storage.py redis://127.0.0.1:6379/0``.
"""

import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import trio

from trio_sessions import RedisStorage, new_session_id, open_redis_storage


def redis_sessions(url: str) -> Callable[[], AbstractAsyncContextManager[RedisStorage]]:
    # init_app(app, redis_sessions(url)) or Middleware(SessionMiddleware, storage=...)
    return lambda: open_redis_storage(url, driver="glide", prefix="myapp:")


async def main(url: str) -> None:
    async with redis_sessions(url)() as storage:
        sid = new_session_id()
        await storage.write_bytes(sid, b'{"user": 42}', ttl=1800)
        await storage.touch(sid, 1800)  # slide the expiry without rewriting the value
        print(await storage.read_bytes(sid), "under", storage.key(sid))
        await storage.invalidate(sid)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
