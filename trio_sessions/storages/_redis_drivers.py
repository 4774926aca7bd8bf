"""The two Redis clients that run natively on trio, behind one small interface.

`RedisStorage` speaks to the server through a `Driver`: a handful of commands (GET, SET
with PX, DEL, PEXPIRE and Lua scripts). `driver_for` picks the driver from the client's
type, and `connect` creates (and later closes) a client from a URL. Neither client is
imported unless it is used: both are optional dependencies.

A driver can pipeline automatically (`AutoPipeline`): while one command is in flight,
the commands that other tasks issue go out together, as one non-atomic batch, at the end
of the scheduler tick in which they were issued.
"""

from __future__ import annotations

import copy
import hashlib
import sys
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, final

import outcome
import trio

from .._base import collapse_group
from .._errors import StorageError

if TYPE_CHECKING:
    import coredis
    import glide

#: What `RedisStorage` takes: a client of either library, for a single server or a
#: Cluster. (A string at run time, so that neither library is imported.)
RedisClient: TypeAlias = "glide.GlideClient | glide.GlideClusterClient | coredis.Redis[bytes] | coredis.RedisCluster[bytes]"  # noqa: E501

__all__ = [
    "DRIVERS",
    "AutoPipeline",
    "Driver",
    "DriverName",
    "LuaScript",
    "RedisClient",
    "RedisStorageStatistics",
    "connect",
    "driver_for",
]

DriverName = Literal["glide", "coredis"]
DRIVERS: tuple[DriverName, ...] = ("glide", "coredis")

_EXTRA = {"glide": "redis-glide", "coredis": "redis-coredis"}

#: Default for the most commands one batch carries.
DEFAULT_MAX_BATCH = 128


@dataclass(frozen=True)
class LuaScript:
    """A Lua script, sent by its SHA1 digest once the server knows it."""

    source: str
    sha1: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha1", digest)


@final
@dataclass(frozen=True, slots=True)
class RedisStorageStatistics:
    """What `RedisStorage.statistics` reports: how commands went to the server."""

    #: Commands sent on their own: nothing else was in flight, or nothing else was ready.
    direct: int
    #: Batches sent, each carrying the commands that tasks issued in one scheduler tick.
    batches: int
    #: Commands sent in those batches.
    batched: int
    #: ``(size, count)`` pairs: how many batches carried each number of commands.
    batch_sizes: tuple[tuple[int, int], ...]
    #: Commands whose caller was cancelled before they were sent: they never were.
    withdrawn: int
    #: Replies dropped because their caller was cancelled while the command was in flight
    #: (the command may have run).
    dropped: int

    @property
    def commands(self) -> int:
        """Commands sent, alone or in batches."""
        return self.direct + self.batched

    @property
    def mean_batch(self) -> float:
        """Commands per batch, on average (0.0 before the first batch)."""
        return self.batched / self.batches if self.batches else 0.0


# A command: (kind, key, two arguments). Kinds are small ints, compared by identity.
_GET, _SET, _DELETE, _PEXPIRE, _EVAL, _EVAL_SOURCE = range(6)
Command = tuple[int, bytes, Any, Any]
Reply = outcome.Outcome[object]


class _NoScript(Exception):
    """A batched EVALSHA found the server without the script (it restarted)."""


class Driver(Protocol):
    """What `RedisStorage` needs from a client. Every key of one call shares a slot."""

    name: DriverName

    async def get(self, key: bytes) -> object: ...

    async def set(self, key: bytes, value: bytes, px: int | None) -> None:
        """SET, with PX *px* milliseconds unless ``None`` (which clears any expiry)."""

    async def delete(self, key: bytes) -> None: ...

    async def pexpire(self, key: bytes, px: int) -> object: ...

    async def eval(self, script: LuaScript, keys: Sequence[bytes], args: Sequence[bytes]) -> object:
        """Run *script* (EVALSHA, loading it first if the server lost it)."""

    def statistics(self) -> RedisStorageStatistics: ...


_current_task = trio.lowlevel.current_task
_wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled
_reschedule = trio.lowlevel.reschedule
_ABORTED = trio.lowlevel.Abort.SUCCEEDED


def _session_of(key: bytes) -> bytes:
    """The session key that *key* belongs to: itself, or the session key that starts a
    temporary key (everything up to the hash tag's closing brace)."""
    end = key.rfind(b"}")
    return key if end < 0 else key[: end + 1]


class _Fence:
    """Holds back commands on one session while an abandoned command on it may run."""

    __slots__ = ("count", "lifted")

    def __init__(self) -> None:
        self.count = 0
        self.lifted = trio.Event()


class _Waiter:
    """One task's command waiting in a batch; ``task`` is ``None`` once it left."""

    __slots__ = ("command", "fence", "pipeline", "sent", "task")

    def __init__(self, command: Command, task: trio.lowlevel.Task, pipeline: AutoPipeline) -> None:
        self.command = command
        self.task: trio.lowlevel.Task | None = task
        self.pipeline = pipeline
        self.sent = False  # handed to the client: it may run, now or later
        self.fence: bytes | None = None

    def abort(self, _: object) -> trio.lowlevel.Abort:
        self.task = None  # cancelled: its command is not sent, or its reply is dropped
        if self.sent:
            # Its command may still be on its way (a connection of its own, not even
            # written yet): nothing later on the same session may overtake it.
            self.pipeline._raise_fence(self)
        return _ABORTED


@final
class AutoPipeline:
    """Sends the commands of concurrent tasks together, one batch per scheduler tick.

    A command issued while nothing is in flight goes out at once, alone: a lone task
    pays nothing. Otherwise it joins the open batch, which a short-lived task sends one
    tick later, when every task that was ready in that tick has added its command
    (up to *max_batch* commands; a full batch goes out and a new one opens).

    The batch is sent and awaited by a system task of its own, not by any caller, so a
    caller that is cancelled only leaves: before its batch is sent, its command is never
    sent; after, its reply is dropped. No other caller is affected, and no reply can go
    to anyone but the caller of its command.

    A command whose caller left after it was sent may still run later: its batch may
    not even be written yet, and the next batch can go out on another connection and
    overtake it. So until its reply is in, every new command on the same session (the
    key, or a temporary key under the same hash tag) waits: a cancelled write or
    invalidation never lands after the operations that follow it.

    With *detach* every command goes through a system task, even a lone one (a client
    with several connections, coredis, needs it: a lone command sent by its caller and
    abandoned could not be waited for). Without it, a lone command is sent by its
    caller, which is only safe for a client that keeps commands in order (glide: one
    connection per node).
    """

    def __init__(
        self,
        send_one: Callable[[Command], Awaitable[object]],
        send_batch: Callable[[list[Command]], Awaitable[list[Reply]]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        detach: bool = False,
    ) -> None:
        self._send_one = send_one
        self._send_batch = send_batch
        self._max_batch = max_batch
        self._detach = detach
        self._fences: dict[bytes, _Fence] = {}
        self._in_flight = 0
        self._open: list[_Waiter] | None = None
        self._direct = 0
        self._batches = 0
        self._batched = 0
        self._sizes: dict[int, int] = {}
        self._withdrawn = 0
        self._dropped = 0

    def statistics(self) -> RedisStorageStatistics:
        return RedisStorageStatistics(
            direct=self._direct,
            batches=self._batches,
            batched=self._batched,
            batch_sizes=tuple(sorted(self._sizes.items())),
            withdrawn=self._withdrawn,
            dropped=self._dropped,
        )

    async def call(self, command: Command) -> object:
        if self._fences:
            session = _session_of(command[1])
            while (fence := self._fences.get(session)) is not None:
                await fence.lifted.wait()  # cancelled here, it is never sent
        batch = self._open
        if batch is None:
            if not self._in_flight and not self._detach:
                self._direct += 1
                self._in_flight += 1
                try:
                    return await self._send_one(command)
                finally:
                    self._in_flight -= 1
            batch = self._open = []
            trio.lowlevel.spawn_system_task(self._flush, batch, name="trio_sessions.redis.batch")
        waiter = _Waiter(command, _current_task(), self)
        batch.append(waiter)
        if len(batch) >= self._max_batch:
            self._open = None  # full: its task sends it as it is; the next command opens one
        return await _wait_task_rescheduled(waiter.abort)

    async def _flush(self, batch: list[_Waiter]) -> None:
        # One tick after the batch opened: every task that was ready then has joined.
        if self._open is batch:
            self._open = None
        waiters = [waiter for waiter in batch if waiter.task is not None]
        self._withdrawn += len(batch) - len(waiters)
        if not waiters:
            return  # noqa: ASYNC910 (a task of its own: nobody to return to)
        for waiter in waiters:
            waiter.sent = True
        self._in_flight += 1
        try:
            if len(waiters) == 1:
                self._direct += 1
                replies = [await self._send_alone(waiters[0].command)]
            else:
                self._batches += 1
                self._batched += len(waiters)
                self._sizes[len(waiters)] = self._sizes.get(len(waiters), 0) + 1
                replies = await self._send_batch([waiter.command for waiter in waiters])
        except trio.Cancelled:
            # Only the end of the run cancels this task; whoever still waits is told.
            self._deliver_failure(waiters, StorageError("the event loop is shutting down"))
            raise
        except Exception as exc:
            self._deliver_failure(waiters, exc)
            return  # noqa: ASYNC910
        finally:
            self._in_flight -= 1
            # The replies are in (or the connection is gone): nothing of it runs later.
            for waiter in waiters:
                if waiter.fence is not None:
                    self._lower_fence(waiter)
        for waiter, reply in zip(waiters, replies, strict=True):
            task, waiter.task = waiter.task, None
            if task is None:
                self._dropped += 1
            else:
                _reschedule(task, reply)

    def _raise_fence(self, waiter: _Waiter) -> None:
        session = waiter.fence = _session_of(waiter.command[1])
        fence = self._fences.get(session)
        if fence is None:
            fence = self._fences[session] = _Fence()
        fence.count += 1

    def _lower_fence(self, waiter: _Waiter) -> None:
        session, waiter.fence = waiter.fence, None
        assert session is not None
        fence = self._fences[session]
        fence.count -= 1
        if not fence.count:
            del self._fences[session]
            fence.lifted.set()

    async def _send_alone(self, command: Command) -> Reply:
        try:
            return outcome.Value(await self._send_one(command))
        except Exception as exc:
            return outcome.Error(exc)  # noqa: ASYNC910 (it failed: no need)

    def _deliver_failure(self, waiters: list[_Waiter], exc: BaseException) -> None:
        for waiter in waiters:
            task, waiter.task = waiter.task, None
            if task is None:
                self._dropped += 1
            else:
                # Each caller raises an exception of its own: one instance raised in
                # several tasks would collect all their tracebacks.
                trio.lowlevel.reschedule(task, outcome.Error(_clone(exc)))


def _clone(exc: BaseException) -> BaseException:
    """A fresh exception like *exc* (same type and message), caused by *exc*."""
    try:
        clone = copy.copy(exc)
    except Exception:
        clone = StorageError(f"the batch failed: {exc!r}")
    if clone is exc:
        clone = StorageError(f"the batch failed: {exc!r}")
    clone.__traceback__ = None
    clone.__cause__ = exc
    return clone


def _direct_statistics(commands: int) -> RedisStorageStatistics:
    return RedisStorageStatistics(commands, 0, 0, (), 0, 0)


class _Driver:
    """What both drivers share: the command tuples, direct or through an `AutoPipeline`."""

    _client: Any
    _commands: int
    _pipeline: AutoPipeline | None
    _call: Callable[[Command], Awaitable[object]]

    def _start(self, *, pipeline: bool, max_batch: int, detach: bool = False) -> None:
        self._commands = 0
        self._pipeline = None
        self._call = self._send_one
        if pipeline or detach:
            # Without *pipeline* but with *detach*: every command alone, in order.
            self._pipeline = AutoPipeline(
                self._send_one,
                self._send_batch,
                max_batch=max_batch if pipeline else 1,
                detach=detach,
            )
            self._call = self._pipeline.call

    async def _send_one(self, command: Command) -> object:
        self._commands += 1
        kind, key, a, b = command
        client = self._client
        if kind is _GET:
            return await client.get(key)
        if kind is _SET:
            return await self._set_one(key, a, b)
        if kind is _DELETE:
            return await client.delete([key])
        if kind is _PEXPIRE:
            return await client.pexpire(key, a)
        keys, args = b
        if kind is _EVAL_SOURCE:
            return await self._eval_source_one(a, keys, args)
        return await self._eval_one(a, keys, args)

    # A command sent on its own: the two that each client spells its own way.
    async def _set_one(self, key: bytes, value: bytes, px: int | None) -> object:
        raise NotImplementedError

    async def _eval_one(self, script: LuaScript, keys: list[bytes], args: list[bytes]) -> object:
        raise NotImplementedError

    async def _eval_source_one(
        self, script: LuaScript, keys: list[bytes], args: list[bytes]
    ) -> object:
        raise NotImplementedError

    async def _send_batch(self, commands: list[Command]) -> list[Reply]:
        raise NotImplementedError

    def statistics(self) -> RedisStorageStatistics:
        if self._pipeline is None:
            return _direct_statistics(self._commands)
        return self._pipeline.statistics()

    async def get(self, key: bytes) -> object:
        return await self._call((_GET, key, None, None))

    async def set(self, key: bytes, value: bytes, px: int | None) -> None:
        await self._call((_SET, key, value, px))

    async def delete(self, key: bytes) -> None:
        await self._call((_DELETE, key, None, None))

    async def pexpire(self, key: bytes, px: int) -> object:
        return await self._call((_PEXPIRE, key, px, None))


@final
class GlideDriver(_Driver):
    """valkey-glide's `GlideClient` or `GlideClusterClient` (Rust core, trio via anyio).

    With *pipeline*, concurrent commands go out as non-atomic glide batches; in a
    Cluster glide routes each command of a batch to the node that owns its key's slot.
    """

    name: DriverName = "glide"

    def __init__(
        self,
        client: glide.GlideClient | glide.GlideClusterClient,
        *,
        pipeline: bool = True,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        import glide

        self._client = client
        self._glide = glide
        self._cluster = isinstance(client, glide.GlideClusterClient)
        self._scripts: dict[LuaScript, glide.Script] = {}
        self._expiries: dict[int, glide.ExpirySet] = {}  # building one costs a few us
        self._start(pipeline=pipeline, max_batch=max_batch)
        # A batch's methods cost microseconds per command (a lock, option objects); the
        # batch builds its list of (request type, arguments) here instead, with the
        # request types that its own methods use.
        self._batch_class = glide.ClusterBatch if self._cluster else glide.Batch
        probe = self._batch_class(False)
        probe.get(b"k").set(b"k", b"v").delete([b"k"]).pexpire(b"k", 1).custom_command([b"k"])
        self._types = tuple(request_type for request_type, _ in probe.commands)

    async def eval(self, script: LuaScript, keys: Sequence[bytes], args: Sequence[bytes]) -> object:
        command = (_EVAL, keys[0], script, (list(keys), list(args)))
        try:
            return await self._call(command)
        except _NoScript:
            # The batch's EVALSHA did not run: send it alone, which loads the script.
            return await self._send_one(command)

    def _expiry(self, px: int) -> glide.ExpirySet:
        expiry = self._expiries.get(px)
        if expiry is None:
            if len(self._expiries) >= 64:
                self._expiries.clear()
            expiry = self._glide.ExpirySet(self._glide.ExpiryType.MILLSEC, px)
            self._expiries[px] = expiry
        return expiry

    def _script(self, script: LuaScript) -> glide.Script:
        compiled = self._scripts.get(script)
        if compiled is None:
            compiled = self._scripts[script] = self._glide.Script(script.source)  # type: ignore[no-untyped-call]
        return compiled

    async def _set_one(self, key: bytes, value: bytes, px: int | None) -> object:
        expiry = None if px is None else self._expiry(px)
        return await self._client.set(key, value, expiry=expiry)

    async def _eval_one(self, script: LuaScript, keys: list[bytes], args: list[bytes]) -> object:
        return await self._client.invoke_script(self._script(script), keys=keys, args=args)

    async def _send_batch(self, commands: list[Command]) -> list[Reply]:
        self._commands += len(commands)
        batch = self._batch_class(False)
        get, set_, delete, pexpire, custom = self._types
        add = batch.commands.append
        for kind, key, a, b in commands:
            if kind is _GET:
                add((get, [key]))
            elif kind is _SET:
                add((set_, [key, a] if b is None else [key, a, b"PX", b"%d" % b]))
            elif kind is _DELETE:
                add((delete, [key]))
            elif kind is _PEXPIRE:
                add((pexpire, [key, b"%d" % a]))
            else:
                keys, args = b
                add((custom, [b"EVALSHA", a.sha1, b"%d" % len(keys), *keys, *args]))
        replies = await self._client.exec(batch, raise_on_error=False)
        if not isinstance(replies, list) or len(replies) != len(commands):
            raise StorageError(f"a batch of {len(commands)} commands got {replies!r} in reply")
        result: list[Reply] = []
        for (kind, _, _, _), reply in zip(commands, replies, strict=True):
            if isinstance(reply, Exception):
                if kind is _EVAL and "NoScript" in str(reply):
                    reply = _NoScript(str(reply))
                result.append(outcome.Error(reply))
            else:
                result.append(outcome.Value(reply))
        return result


@final
class CoredisDriver(_Driver):
    """coredis's `Redis` or `RedisCluster` (pure Python, anyio), with bytes replies.

    With *pipeline*, concurrent commands go out as coredis non-transactional pipelines
    (in a Cluster, coredis splits one by node).
    """

    name: DriverName = "coredis"

    def __init__(
        self,
        client: coredis.Redis[bytes] | coredis.RedisCluster[bytes],
        *,
        pipeline: bool = True,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        from coredis.exceptions import NoScriptError

        if client.decode_responses:
            raise ValueError("a coredis client for RedisStorage needs decode_responses=False")
        self._client = client
        self._no_script = NoScriptError
        # coredis spreads commands over a pool of connections (a pipeline holds one of
        # its own until its replies are in), with no order between them: every command
        # goes through the AutoPipeline, which keeps a cancelled command from being
        # overtaken by the next ones on its session.
        self._start(pipeline=pipeline, max_batch=max_batch, detach=True)

    async def eval(self, script: LuaScript, keys: Sequence[bytes], args: Sequence[bytes]) -> object:
        command = (_EVAL, keys[0], script, (list(keys), list(args)))
        try:
            return await self._call(command)
        except (_NoScript, self._no_script):
            # EVALSHA did not run: the server lost its scripts (a restart). EVAL, in
            # order with the other commands on the session like any command.
            return await self._call((_EVAL_SOURCE, *command[1:]))

    async def _set_one(self, key: bytes, value: bytes, px: int | None) -> object:
        return await self._client.set(key, value, px=px)

    async def _eval_one(self, script: LuaScript, keys: list[bytes], args: list[bytes]) -> object:
        return await self._client.evalsha(script.sha1, keys, args)

    async def _eval_source_one(
        self, script: LuaScript, keys: list[bytes], args: list[bytes]
    ) -> object:
        return await self._client.eval(script.source, keys, args)

    async def _send_batch(self, commands: list[Command]) -> list[Reply]:
        self._commands += len(commands)
        async with self._client.pipeline(transaction=False, raise_on_error=False) as pipe:
            for kind, key, a, b in commands:
                if kind is _GET:
                    pipe.get(key)
                elif kind is _SET:
                    pipe.set(key, a, px=b)
                elif kind is _DELETE:
                    pipe.delete([key])
                elif kind is _PEXPIRE:
                    pipe.pexpire(key, a)
                elif kind is _EVAL_SOURCE:
                    pipe.eval(a.source, *b)
                else:
                    pipe.evalsha(a.sha1, *b)
        replies = pipe.results
        if not isinstance(replies, tuple) or len(replies) != len(commands):
            raise StorageError(f"a batch of {len(commands)} commands got {replies!r} in reply")
        result: list[Reply] = []
        for reply in replies:
            if isinstance(reply, self._no_script):
                result.append(outcome.Error(_NoScript(str(reply))))
            elif isinstance(reply, Exception):
                result.append(outcome.Error(reply))
            else:
                result.append(outcome.Value(reply))
        return result


def driver_for(
    client: RedisClient, *, pipeline: bool = True, max_batch: int = DEFAULT_MAX_BATCH
) -> Driver:
    """The driver for *client*, from its type; `TypeError` for anything else.

    Only a module that is already imported can have made *client*, so this imports
    neither client library.
    """
    glide = sys.modules.get("glide")
    if glide is not None and isinstance(client, glide.GlideClient | glide.GlideClusterClient):
        return GlideDriver(client, pipeline=pipeline, max_batch=max_batch)
    coredis = sys.modules.get("coredis")
    if coredis is not None and isinstance(client, coredis.Redis | coredis.RedisCluster):
        return CoredisDriver(client, pipeline=pipeline, max_batch=max_batch)
    raise TypeError(
        "RedisStorage needs a valkey-glide GlideClient or GlideClusterClient, or a coredis "
        f"Redis or RedisCluster client, not {type(client).__module__}.{type(client).__qualname__}"
    )


#: How long getting a coredis connection may take once it cannot be cancelled.
_CONNECT_SECONDS = 10.0
_SHIELDED_POOLS: dict[type[Any], type[Any]] = {}


def _shielded_pool(base: type[Any]) -> type[Any]:
    """A subclass of coredis's connection pool class *base* that cancellation cannot break.

    coredis loses a pool slot for good when a command is cancelled while its pool opens
    a connection; once all slots are gone every command waits forever. This pool lets a
    connection attempt finish (within `_CONNECT_SECONDS`) before a cancellation lands.
    """
    pool = _SHIELDED_POOLS.get(base)
    if pool is None:

        class ShieldedPool(base):  # type: ignore[misc]
            async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
                with trio.CancelScope(shield=True), trio.fail_after(_CONNECT_SECONDS):
                    return await super().get_connection(*args, **kwargs)

        ShieldedPool.__name__ = ShieldedPool.__qualname__ = f"Shielded{base.__name__}"
        pool = _SHIELDED_POOLS[base] = ShieldedPool
    return pool


def _unreachable(host: str, port: int, exc: Exception) -> StorageError:
    return StorageError(f"could not connect to {host}:{port}: {exc!r}")


def _require(driver: DriverName) -> Any:
    module = "glide" if driver == "glide" else "coredis"
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(
            f"driver={driver!r} needs the {module} package: "
            f'pip install "trio-sessions[{_EXTRA[driver]}]"'
        ) from exc


@asynccontextmanager
async def connect(
    url: str, *, driver: DriverName, cluster: bool, options: dict[str, Any]
) -> AsyncIterator[Any]:
    """Create a client for *url* with *driver*; close it on exit.

    *url* is ``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS;
    ``valkey://`` and ``valkeys://`` are the same). *options* go to the client: keyword
    arguments of coredis's ``Redis`` / ``RedisCluster``, or of glide's
    ``GlideClientConfiguration`` / ``GlideClusterClientConfiguration``.
    """
    if driver not in DRIVERS:
        raise ValueError(f"driver must be one of {', '.join(map(repr, DRIVERS))}, not {driver!r}")
    parts = urllib.parse.urlsplit(url)
    scheme = {"redis": "redis", "valkey": "redis", "rediss": "rediss", "valkeys": "rediss"}.get(
        parts.scheme
    )
    if scheme is None or not parts.hostname:
        raise ValueError("url must look like redis://host:port/db (or rediss:// for TLS)")
    if parts.query or parts.fragment:
        raise ValueError("pass client settings as keyword arguments, not in the url")
    db = int(parts.path.strip("/") or 0)
    if cluster and db:
        raise ValueError("a Redis Cluster has only database 0")
    username = urllib.parse.unquote(parts.username) if parts.username else None
    password = None if parts.password is None else urllib.parse.unquote(parts.password)
    host, port = parts.hostname, parts.port or 6379
    if driver == "coredis":
        coredis = _require(driver)
        settings: dict[str, Any] = {"host": host, "port": port, "ssl": scheme == "rediss"}
        settings.update(username=username, password=password)
        if cluster:
            settings["connection_pool_cls"] = _shielded_pool(coredis.pool.ClusterConnectionPool)
            client = coredis.RedisCluster(**{**settings, **options})
        else:
            settings["db"] = db
            settings["connection_pool_cls"] = _shielded_pool(coredis.pool.ConnectionPool)
            client = coredis.Redis(**{**settings, **options})
        # The client runs its connections in a task group, which wraps whatever the
        # body raises in an exception group: unwrap it when it is the only error.
        error: BaseException | None = None
        try:
            async with AsyncExitStack() as stack:
                try:
                    await stack.enter_async_context(client)
                except Exception as exc:
                    raise _unreachable(host, port, exc) from exc
                try:
                    yield client
                except BaseException as exc:
                    error = exc
                    raise
        except BaseExceptionGroup as group:
            if error is None or collapse_group(group) is not error:
                raise
        else:
            return
        raise error
    glide = _require(driver)
    if password is not None or username:
        credentials = glide.ServerCredentials(password=password or "", username=username)
        options.setdefault("credentials", credentials)
    options.setdefault("use_tls", scheme == "rediss")
    # glide's own default backs off for seconds after a long outage; retry at least
    # every 0.4 s so that sessions work again soon after the server is back.
    options.setdefault("reconnect_strategy", glide.BackoffStrategy(4, 25, 2))
    addresses = [glide.NodeAddress(host, port)]
    if cluster:
        config = glide.GlideClusterClientConfiguration(addresses, **options)
        create = glide.GlideClusterClient.create
    else:
        if db:
            options.setdefault("database_id", db)
        config = glide.GlideClientConfiguration(addresses, **options)
        create = glide.GlideClient.create
    try:
        client = await create(config)
    except Exception as exc:
        raise _unreachable(host, port, exc) from exc
    try:
        yield client
    finally:
        with trio.CancelScope(shield=True):
            await client.close()
