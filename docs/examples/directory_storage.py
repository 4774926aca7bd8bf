"""DirectoryStorage: sessions as files that survive restarts, small and large."""

import tempfile

import trio

from trio_sessions import DirectoryStorage, new_session_id

CHUNK = b"x" * 65536


async def send_four_mib(stream: trio.abc.SendStream) -> None:
    for _ in range(64):
        await stream.send_all(CHUNK)


async def count_bytes(stream: trio.abc.ReceiveStream) -> int:
    total = 0
    while chunk := await stream.receive_some():
        total += len(chunk)
    return total


async def main(root: str) -> None:
    storage = DirectoryStorage(root, max_size=8 * 1024 * 1024)
    async with storage:
        sid = new_session_id()
        await storage.write_bytes(sid, b'{"cart": [1, 2]}', ttl=3600)
        print(await storage.read_bytes(sid))

        # A large session streams to disk and back in 64 KiB chunks.
        big = new_session_id()
        await storage.write(big, send_four_mib, ttl=3600)
        print(await storage.read(big, count_bytes), "bytes read back")

        print(await storage.scan())
        print(await storage.purge())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as root:
        trio.run(main, root)
