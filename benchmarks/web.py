"""Server-side sessions vs Quart's signed-cookie sessions, over real HTTP on loopback.

The same Quart-Trio app (every request increments a counter in the session, so every
request saves it) is served by Hypercorn's trio worker in a separate process with:

* ``cookie``: Quart's default ``SecureCookieSessionInterface`` (the baseline);
* ``memory``: `trio_sessions.quart` with a `MemoryStorage`;
* ``directory``: `trio_sessions.quart` with a `DirectoryStorage` (fsync on every write);
* ``directory-nofsync``: the same without fsync.

A bounded load generator (its own process, plain HTTP/1.1 over keep-alive sockets, one
session per connection) sends a fixed number of requests per connection and reports
requests per second. Variants are interleaved within each repeat so drift affects all
alike; ratios are against the cookie baseline measured in the same run (goal >= 0.8x).

Run: ``python benchmarks/web.py [--requests N] [--connections C] [--repeats R]``
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

VARIANTS = ("cookie", "memory", "directory", "directory-nofsync")
SECRET = b"benchmark-secret-key-0123456789abcdef"


def build_app(variant: str, root: str) -> Any:
    from quart import session
    from quart_trio import QuartTrio

    from trio_sessions import CookieOptions, DirectoryStorage, MemoryStorage
    from trio_sessions.quart import init_app

    app = QuartTrio("benchmark")
    app.secret_key = SECRET
    app.config["SESSION_COOKIE_SECURE"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    if variant != "cookie":
        storage: Any = (
            MemoryStorage()
            if variant == "memory"
            else DirectoryStorage(root, fsync=variant == "directory")
        )
        init_app(app, storage, secret_key=SECRET, cookie=CookieOptions(name="session"))

    @app.get("/")
    async def index() -> str:  # noqa: ASYNC124 (a Quart view)
        session["n"] = session.get("n", 0) + 1
        return f"hello #{session['n']}"

    return app


def serve(variant: str, root: str) -> None:
    """Child process: serve the app until SIGTERM; print the URL first."""
    from trio_sessions._demo import open_server

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with open_server(build_app(variant, root)) as url:
                print(url, flush=True)
                async for _ in signals:
                    break

    trio.run(run)


class Connection:
    """A minimal HTTP/1.1 keep-alive client: one user with one session."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.buffer = b""
        self.cookie = b""

    async def _read_until(self, marker: bytes) -> int:
        while (index := self.buffer.find(marker)) < 0:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk
        return index

    async def get(self) -> bytes:
        cookie = b"Cookie: " + self.cookie + b"\r\n" if self.cookie else b""
        await self.stream.send_all(
            b"GET / HTTP/1.1\r\nHost: " + self.host.encode() + b"\r\n" + cookie + b"\r\n"
        )
        end = await self._read_until(b"\r\n\r\n")
        head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"set-cookie" and value.strip().startswith(b"session="):
                self.cookie = value.strip().split(b";")[0]
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected response: {head[:80]!r}")
        while len(self.buffer) < length:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return body


async def load(url: str, requests: int, connections: int) -> float:
    """Send *requests* per connection over *connections*; return requests per second."""
    host, _, port = url.removeprefix("http://").partition(":")
    streams = [await trio.open_tcp_stream(host, int(port)) for _ in range(connections)]
    clients = [Connection(stream, f"{host}:{port}") for stream in streams]
    await clients[0].get()  # warm up the server (imports, first session)
    for client in clients:
        client.cookie = b""

    async def user(client: Connection) -> None:
        for i in range(1, requests + 1):
            body = await client.get()
            if not body.endswith(b"#%d" % i):
                raise RuntimeError(f"the session lost its count: {body!r} at request {i}")

    with trio.fail_after(300):  # bounded in time as well as in count
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(user, client)
        elapsed = time.perf_counter() - start
    for stream in streams:
        await stream.aclose()
    return requests * connections / elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux), or NaN elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rpartition(")")[2].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(variant: str, requests: int, connections: int) -> tuple[float, float]:
    """Requests per second, and the server's CPU milliseconds per request."""
    with tempfile.TemporaryDirectory(prefix="trio-sessions-bench-") as root:
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", variant, "--root", root],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            if not url.startswith("http://127.0.0.1:"):
                raise RuntimeError(f"{variant} server did not start")
            before = cpu_seconds(server.pid)
            rate = trio.run(load, url, requests, connections)
            cpu = (cpu_seconds(server.pid) - before) / (requests * connections + 1) * 1e3
            return rate, cpu
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="per connection")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.root)
        return
    variants = args.variants.split(",")
    results: dict[str, list[float]] = {variant: [] for variant in variants}
    cpu: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(args.repeats):
        for variant in variants:
            rate, milliseconds = measure(variant, args.requests, args.connections)
            results[variant].append(rate)
            cpu[variant].append(milliseconds)
    print(
        f"{args.connections} connections x {args.requests} requests, "
        f"{args.repeats} repeats, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the end; every request saves its session"
    )
    print(
        f"{'variant':<20}{'median req/s':>14}{'min':>7}{'max':>7}{'vs cookie':>11}"
        f"{'server CPU ms/req':>19}{'vs cookie':>11}"
    )
    base_rate = statistics.median(results["cookie"]) if "cookie" in results else None
    base_cpu = statistics.median(cpu["cookie"]) if "cookie" in cpu else None
    for variant, values in results.items():
        rate, milliseconds = statistics.median(values), statistics.median(cpu[variant])
        rate_ratio = f"{rate / base_rate:.2f}x" if base_rate else "-"
        # As a throughput ratio: cookie's CPU per request over this variant's.
        cpu_ratio = f"{base_cpu / milliseconds:.2f}x" if base_cpu else "-"
        print(
            f"{variant:<20}{rate:>14.0f}{min(values):>7.0f}{max(values):>7.0f}{rate_ratio:>11}"
            f"{milliseconds:>19.2f}{cpu_ratio:>11}"
        )
    print("goal: memory and directory >= 0.80x of cookie (both columns are throughput ratios;")
    print("the CPU one is steadier on a busy machine, the req/s one includes waiting for disk)")


if __name__ == "__main__":
    main()
