"""The two Redis clients that run natively on trio, behind one small interface.

`RedisStorage` speaks to the server through a `Driver`: a handful of commands (GET, SET
with PX, DEL, PEXPIRE and Lua scripts). `driver_for` picks the driver from the client's
type, and `connect` creates (and later closes) a client from a URL. Neither client is
imported unless it is used: both are optional dependencies.
"""

from __future__ import annotations

import hashlib
import sys
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, final

import trio

from .._base import collapse_group
from .._errors import StorageError

if TYPE_CHECKING:
    import coredis
    import glide

__all__ = ["DRIVERS", "Driver", "DriverName", "LuaScript", "connect", "driver_for"]

DriverName = Literal["glide", "coredis"]
DRIVERS: tuple[DriverName, ...] = ("glide", "coredis")

_EXTRA = {"glide": "redis-glide", "coredis": "redis-coredis"}


@dataclass(frozen=True)
class LuaScript:
    """A Lua script, sent by its SHA1 digest once the server knows it."""

    source: str
    sha1: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha1", digest)


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


@final
class GlideDriver:
    """valkey-glide's `GlideClient` or `GlideClusterClient` (Rust core, trio via anyio)."""

    name: DriverName = "glide"

    def __init__(self, client: glide.GlideClient | glide.GlideClusterClient) -> None:
        import glide

        self._client = client
        self._glide = glide
        self._scripts: dict[LuaScript, glide.Script] = {}
        self._expiries: dict[int, glide.ExpirySet] = {}  # building one costs a few us

    async def get(self, key: bytes) -> object:
        return await self._client.get(key)

    async def set(self, key: bytes, value: bytes, px: int | None) -> None:
        expiry = None
        if px is not None:
            expiry = self._expiries.get(px)
            if expiry is None:
                if len(self._expiries) >= 64:
                    self._expiries.clear()
                expiry = self._glide.ExpirySet(self._glide.ExpiryType.MILLSEC, px)
                self._expiries[px] = expiry
        await self._client.set(key, value, expiry=expiry)

    async def delete(self, key: bytes) -> None:
        await self._client.delete([key])

    async def pexpire(self, key: bytes, px: int) -> object:
        return await self._client.pexpire(key, px)

    async def eval(self, script: LuaScript, keys: Sequence[bytes], args: Sequence[bytes]) -> object:
        compiled = self._scripts.get(script)
        if compiled is None:
            compiled = self._scripts[script] = self._glide.Script(script.source)  # type: ignore[no-untyped-call]
        return await self._client.invoke_script(compiled, keys=list(keys), args=list(args))


@final
class CoredisDriver:
    """coredis's `Redis` or `RedisCluster` (pure Python, anyio), with bytes replies."""

    name: DriverName = "coredis"

    def __init__(self, client: coredis.Redis[bytes] | coredis.RedisCluster[bytes]) -> None:
        from coredis.exceptions import NoScriptError

        if client.decode_responses:
            raise ValueError("a coredis client for RedisStorage needs decode_responses=False")
        self._client = client
        self._no_script = NoScriptError

    async def get(self, key: bytes) -> object:
        return await self._client.get(key)

    async def set(self, key: bytes, value: bytes, px: int | None) -> None:
        await self._client.set(key, value, px=px)

    async def delete(self, key: bytes) -> None:
        await self._client.delete([key])

    async def pexpire(self, key: bytes, px: int) -> object:
        return await self._client.pexpire(key, px)

    async def eval(self, script: LuaScript, keys: Sequence[bytes], args: Sequence[bytes]) -> object:
        try:
            return await self._client.evalsha(script.sha1, keys, args)
        except self._no_script:
            return await self._client.eval(script.source, keys, args)


def driver_for(client: object) -> Driver:
    """The driver for *client*, from its type; `TypeError` for anything else.

    Only a module that is already imported can have made *client*, so this imports
    neither client library.
    """
    glide = sys.modules.get("glide")
    if glide is not None and isinstance(client, glide.GlideClient | glide.GlideClusterClient):
        return GlideDriver(client)
    coredis = sys.modules.get("coredis")
    if coredis is not None and isinstance(client, coredis.Redis | coredis.RedisCluster):
        return CoredisDriver(client)
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
            f"pip install 'trio-sessions[{_EXTRA[driver]}]'"
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
