"""Server-side sessions vs Quart's signed-cookie sessions, over real HTTP on loopback.

The same Quart-Trio app is served by Hypercorn's trio worker in a separate process with:

* ``cookie``: Quart's default ``SecureCookieSessionInterface`` (the baseline);
* ``memory``: `trio_sessions.quart` with a `MemoryStorage`;
* ``directory``: `trio_sessions.quart` with a `DirectoryStorage` (fsync on every write);
* ``directory-nofsync``: the same without fsync;
* ``cache-directory``: a cache over the fsync'd directory;
* ``redis``: `RedisStorage` (glide) on a private Valkey started by this script;
* ``redis-coredis``: the same with the coredis driver;
* ``redis-nopipeline``: glide without automatic pipelining (``pipeline=False``);
* ``memory+raw-glide``: ``memory``, plus the two commands that ``redis`` sends per request
  (``GET``, then ``EVALSHA`` of its conditional-write script on a key of the session)
  sent by a bare glide client in the view: the client's own cost, without RedisStorage
  (``redis`` minus this is what RedisStorage and its driver add).

``/count`` increments a counter in the session (so it saves it); ``/plain`` never
touches the session. ``--mix 0.8`` sends 80% of requests to ``/plain``: with
``autoload=["/count"]`` those cost no storage operation (a checkout without
``autoload`` loads every session). ``--code DIR`` serves the ``trio_sessions`` of another
checkout (e.g. ``git worktree add /tmp/before COMMIT``) beside this one, as
``VARIANT@before``, to compare two versions in one run.

A bounded load generator (its own process, plain HTTP/1.1 over keep-alive sockets, one
session per connection) sends a fixed number of requests per connection and reports
requests per second, the server's CPU time per request and its threads' context switches
per request (a storage that works in worker threads pays for each: while the event loop's
thread is busy, a worker's system call hands the interpreter's lock over and back).
For the variants that use Redis it also prints the commands the Redis server ran per
request (``INFO commandstats``, the calls inside scripts included). Variants are
interleaved within each repeat so drift affects all alike; ratios are
against the cookie baseline measured in the same run (goal >= 0.8x).

Run: ``python -m benchmarks.web [--requests N] [--connections C] [--repeats R] [--mix F]
[--variants cookie,directory,redis] [--code DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import trio

VARIANTS = (
    "cookie",
    "memory",
    "directory",
    "directory-nofsync",
    "cache-directory",
    "redis",
    "redis-coredis",
    "redis-nopipeline",
    "memory+raw-glide",
)
SECRET = b"benchmark-secret-key-0123456789abcdef"


def build_app(variant: str, root: str) -> Any:
    import inspect

    from quart import request, session
    from quart_trio import QuartTrio

    from trio_sessions import CookieOptions, DirectoryStorage, MemoryStorage, open_cache_storage
    from trio_sessions.quart import init_app

    app = QuartTrio("benchmark")
    app.secret_key = SECRET
    app.config["SESSION_COOKIE_SECURE"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    if variant != "cookie":
        storage: Any
        if variant.startswith("memory"):
            storage = MemoryStorage()
        elif variant.startswith("redis"):
            from trio_sessions import open_redis_storage

            url = os.environ["BENCH_REDIS_URL"]
            driver: Literal["glide", "coredis"] = (
                "coredis" if variant == "redis-coredis" else "glide"
            )
            pipeline = variant != "redis-nopipeline"
            storage = lambda: open_redis_storage(url, driver=driver, pipeline=pipeline)  # noqa: E731
        elif variant == "cache-directory":
            storage = lambda: open_cache_storage(DirectoryStorage(root))  # noqa: E731
        else:
            storage = DirectoryStorage(root, fsync=variant == "directory")
        options: dict[str, Any] = {"secret_key": SECRET, "cookie": CookieOptions(name="session")}
        if "autoload" in inspect.signature(init_app).parameters:
            options["autoload"] = ["/count"]  # /plain never loads its session
        init_app(app, storage, **options)

    raw = raw_glide(app) if variant == "memory+raw-glide" else None

    @app.get("/count")
    async def count() -> str:  # noqa: ASYNC124 (a Quart view)
        session["n"] = session.get("n", 0) + 1
        if raw is not None:
            await raw(request.cookies.get("session", ""))
        return f"hello #{session['n']}"

    @app.get("/plain")
    async def plain() -> str:  # noqa: ASYNC124 (a Quart view)
        return "no session here"

    return app


def raw_glide(app: Any) -> Callable[[str], Awaitable[None]]:
    """A bare glide client for *app*'s lifetime; the returned function sends, for a
    session's cookie, the ``GET`` and the conditional-write ``EVALSHA`` that RedisStorage
    sends for the session."""
    import glide

    from trio_sessions.storages._redis import _STORE_IF

    state: dict[str, Any] = {}
    script = glide.Script(_STORE_IF.source)  # type: ignore[no-untyped-call]

    async def connect() -> None:
        host, _, port = os.environ["BENCH_REDIS_URL"].removeprefix("redis://").partition(":")
        address = glide.NodeAddress(host, int(port.partition("/")[0]))
        state["client"] = await glide.GlideClient.create(glide.GlideClientConfiguration([address]))

    async def close() -> None:
        await state["client"].close()

    app.before_serving(connect)
    app.after_serving(close)

    async def send(cookie: str) -> None:
        key = b"raw-bench:{" + cookie.encode() + b"}"
        stored = await state["client"].get(key)
        header = b"\xfe\x01" + os.urandom(8)
        expected = b"" if stored is None else stored[:10]
        await state["client"].invoke_script(
            script, keys=[key], args=[expected, header + b"x" * 40, b"3600000"]
        )

    return send


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

    async def get(self, path: bytes = b"/count") -> bytes:
        cookie = b"Cookie: " + self.cookie + b"\r\n" if self.cookie else b""
        await self.stream.send_all(
            b"GET "
            + path
            + b" HTTP/1.1\r\nHost: "
            + self.host.encode()
            + b"\r\n"
            + cookie
            + b"\r\n"
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


async def load(url: str, requests: int, connections: int, mix: float) -> float:
    """Send *requests* per connection over *connections*; return requests per second.

    A fraction *mix* of them (spread evenly) go to ``/plain``, the others to ``/count``.
    """
    host, _, port = url.removeprefix("http://").partition(":")
    streams = [await trio.open_tcp_stream(host, int(port)) for _ in range(connections)]
    clients = [Connection(stream, f"{host}:{port}") for stream in streams]
    await clients[0].get()  # warm up the server (imports, first session)
    for client in clients:
        client.cookie = b""

    async def user(client: Connection) -> None:
        counted = 0
        for i in range(1, requests + 1):
            if math.floor(i * mix) > math.floor((i - 1) * mix):
                await client.get(b"/plain")
                continue
            counted += 1
            body = await client.get()
            if not body.endswith(b"#%d" % counted):
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


def context_switches(pid: int) -> int:
    """Context switches of a process's live threads so far (Linux), or 0 elsewhere."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/status") as file:
                for line in file:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.partition(":")[2])
    return total


def server_commands(redis: Any) -> dict[str, int]:
    """How many times the Redis server ran each command so far (``INFO commandstats``)."""
    if redis is None:
        return {}
    calls: dict[str, int] = {}
    for line in redis.command("INFO", "commandstats").decode().splitlines():
        name, _, value = line.partition(":")
        if name.startswith("cmdstat_"):
            calls[name.removeprefix("cmdstat_")] = int(value.split(",")[0].partition("=")[2])
    return calls


def measure(
    variant: str, requests: int, connections: int, mix: float, code: str | None, redis: Any
) -> tuple[float, float, float, dict[str, float]]:
    """Requests per second, the server's CPU milliseconds and context switches per request,
    and the Redis server's commands per request (by name; scripts' own calls included)."""
    redis_url = "" if redis is None else redis.url
    env = {**os.environ, "BENCH_REDIS_URL": redis_url}
    if code is not None:  # serve another checkout's trio_sessions
        env["PYTHONPATH"] = os.pathsep.join([code, env.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory(prefix="trio-sessions-bench-") as root:
        server = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", variant, "--root", root],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=code or os.getcwd(),
        )
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            if not url.startswith("http://127.0.0.1:"):
                raise RuntimeError(f"{variant} server did not start")
            calls = server_commands(redis)
            before, switches = cpu_seconds(server.pid), context_switches(server.pid)
            rate = trio.run(load, url, requests, connections, mix)
            count = requests * connections + 1
            cpu = (cpu_seconds(server.pid) - before) / count * 1e3
            switched = (context_switches(server.pid) - switches) / count
            commands = {
                name: (n - calls.get(name, 0)) / count
                for name, n in server_commands(redis).items()
                if n > calls.get(name, 0) and not name.startswith(("info", "client"))
            }
            return rate, cpu, switched, commands
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
    parser.add_argument("--variants", default="cookie,memory,directory,directory-nofsync")
    parser.add_argument("--mix", type=float, default=0.0, help="share of requests to /plain")
    parser.add_argument("--code", help="another checkout to serve beside this one")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.root)
        return
    if not 0 <= args.mix < 1:
        parser.error("--mix must be at least 0 and below 1")
    variants = args.variants.split(",")
    runs = [(variant, None) for variant in variants]
    if args.code:
        runs += [(variant, args.code) for variant in variants if variant != "cookie"]
    with contextlib.ExitStack() as stack:
        redis = None
        if any("redis" in variant or "glide" in variant for variant in variants):
            from trio_sessions.testing.servers import redis_server

            redis = stack.enter_context(redis_server())
        results: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        switches: dict[str, list[float]] = {}
        commands: dict[str, dict[str, float]] = {}
        for _ in range(args.repeats):
            for variant, code in runs:
                name = variant if code is None else f"{variant}@before"
                rate, milliseconds, switched, sent = measure(
                    variant, args.requests, args.connections, args.mix, code, redis
                )
                results.setdefault(name, []).append(rate)
                cpu.setdefault(name, []).append(milliseconds)
                switches.setdefault(name, []).append(switched)
                if sent:
                    commands[name] = sent  # the last repeat's
    workload = (
        "every request saves its session"
        if not args.mix
        else f"{args.mix:.0%} of requests never touch the session, the others save it"
    )
    print(
        f"{args.connections} connections x {args.requests} requests, "
        f"{args.repeats} repeats, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f} at the end; {workload}"
    )
    print(
        f"{'variant':<26}{'median req/s':>14}{'min':>7}{'max':>7}{'vs cookie':>11}"
        f"{'server CPU ms/req':>19}{'vs cookie':>11}{'switches/req':>14}"
    )
    base_rate = statistics.median(results["cookie"]) if "cookie" in results else None
    base_cpu = statistics.median(cpu["cookie"]) if "cookie" in cpu else None
    for variant, values in results.items():
        rate, milliseconds = statistics.median(values), statistics.median(cpu[variant])
        rate_ratio = f"{rate / base_rate:.2f}x" if base_rate else "-"
        # As a throughput ratio: cookie's CPU per request over this variant's.
        cpu_ratio = f"{base_cpu / milliseconds:.2f}x" if base_cpu else "-"
        print(
            f"{variant:<26}{rate:>14.0f}{min(values):>7.0f}{max(values):>7.0f}{rate_ratio:>11}"
            f"{milliseconds:>19.2f}{cpu_ratio:>11}{statistics.median(switches[variant]):>14.1f}"
        )
    for variant, sent in commands.items():
        counts = ", ".join(f"{name} {n:.2f}" for name, n in sorted(sent.items()))
        print(f"{variant}: Redis server commands per request (scripts' own included): {counts}")
    print("both ratio columns are throughput ratios against Quart's cookie sessions; the CPU")
    print("one is steadier on a busy machine, the req/s one includes waiting for disk;")
    print("switches/req: the server threads' context switches (a worker thread's system")
    print("calls hand the interpreter's lock to the event loop's thread and back)")


if __name__ == "__main__":
    main()
