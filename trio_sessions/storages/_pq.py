"""libpq driven by trio: one connection, and a small pool of them.

Everything goes through psycopg's public low-level wrapper `psycopg.pq`: libpq in
non-blocking mode, its socket waited on with `trio.lowlevel.wait_readable` and
`~trio.lowlevel.wait_writable`. Nothing blocks the event loop:

* connecting uses ``connect_start``/``connect_poll``; host names are resolved first
  with `trio.socket.getaddrinfo` (in a thread) and handed to libpq as ``hostaddr``,
  so libpq itself never waits on DNS. Every other libpq option (TLS included) passes
  through the connection string untouched;
* a statement is prepared once per connection, then run with binary parameters and
  results (``send_query_prepared``, ``flush``, ``consume_input``, ``is_busy``,
  ``get_result``);
* a caller cancelled while its statement runs leaves the connection only once the
  statement is over: its reply is drained, after a cancel request to the server if it
  does not come at once. A connection whose state is in doubt is closed, never reused,
  so a reply can only reach the caller that sent the statement.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final, final

import trio
from psycopg import DatabaseError, OperationalError, errors, pq
from trio.lowlevel import (
    cancel_shielded_checkpoint,
    checkpoint,
    notify_closing,
    wait_readable,
    wait_writable,
)

__all__ = [
    "Connection",
    "Pool",
    "Statement",
    "connect",
    "parse",
    "resolve",
]

_POLL_OK: Final = pq.PollingStatus.OK
_POLL_READING: Final = pq.PollingStatus.READING
_POLL_WRITING: Final = pq.PollingStatus.WRITING
_CONN_OK: Final = pq.ConnStatus.OK
_IDLE: Final = pq.TransactionStatus.IDLE
_RESULT_OK: Final = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)
_BINARY: Final = pq.Format.BINARY
_DUPLICATE_STATEMENT: Final = "42P05"

#: A cancelled caller first waits this long for its statement's reply to arrive by
#: itself (most statements take well under a millisecond) before asking the server to
#: cancel the statement.
CANCEL_DELAY = 0.005
#: The longest a cancelled caller waits for its statement to end on the server; after
#: that (the server is unreachable) the connection is closed.
CANCEL_GRACE = 5.0
#: Reconnection attempts after a failure wait this long at first, doubling up to the cap.
BACKOFF_FIRST, BACKOFF_CAP = 0.05, 1.0
#: How long one connection attempt may take, unless the connection string sets
#: ``connect_timeout``.
CONNECT_LIMIT = 10.0


@final
class Statement:
    """A statement, prepared under *name* on each connection at its first use.

    *types* are the parameters' type oids; parameters and results travel in binary.
    """

    __slots__ = ("formats", "name", "sql", "types")

    def __init__(self, name: str, sql: str, types: Sequence[int]) -> None:
        self.name = name.encode()
        self.sql = sql.encode()
        self.types = list(types)
        self.formats = [_BINARY] * len(self.types)


# ------------------------------------------------------------------ connecting


def _join(options: dict[str, str]) -> bytes:
    """A ``key='value'`` connection string, quoted as libpq reads it."""
    quoted = (v.replace("\\", "\\\\").replace("'", "\\'") for v in options.values())
    return " ".join(f"{k}='{v}'" for k, v in zip(options, quoted, strict=True)).encode()


def parse(conninfo: str) -> dict[str, str]:
    """The options set in *conninfo* (a URL or ``key=value`` string); `ValueError` if
    libpq cannot read it."""
    try:
        parsed = pq.Conninfo.parse(conninfo.encode())
    except DatabaseError as exc:
        raise ValueError(f"invalid PostgreSQL connection string: {exc}") from None
    return {o.keyword.decode(): o.val.decode() for o in parsed if o.val is not None}


async def resolve(conninfo: str) -> tuple[bytes, float | None]:
    """Return *conninfo* with its host names resolved, and its ``connect_timeout``.

    Each name in ``host`` becomes one entry per address in ``host``/``hostaddr``/``port``
    (libpq tries them in order, as it would have), keeping the name for TLS
    verification and password lookup. Socket directories and given ``hostaddr`` stay.
    """
    options = parse(conninfo)
    options.setdefault("fallback_application_name", "trio-sessions")
    timeout = float(options.get("connect_timeout") or 0) or None
    hosts = options.get("host", os.environ.get("PGHOST", "")).split(",")
    if options.get("hostaddr", os.environ.get("PGHOSTADDR")) or all(
        not h or h.startswith(("/", "@")) for h in hosts
    ):
        await checkpoint()
        return _join(options), timeout
    ports = options.get("port", os.environ.get("PGPORT", "")).split(",")
    ports = ports * len(hosts) if len(ports) == 1 else ports
    targets: list[tuple[str, str, str]] = []  # (host, hostaddr, port)
    failure: OSError | None = None
    for host, port in zip(hosts, ports, strict=False):
        if not host or host.startswith(("/", "@")):
            targets.append((host, "", port))
            continue
        try:
            found = await trio.socket.getaddrinfo(host, port or None, type=socket.SOCK_STREAM)
        except OSError as exc:
            failure = exc  # libpq would go on to the next host
            continue
        for address in dict.fromkeys(str(info[4][0]) for info in found):
            targets.append((host, address, port))
    if not targets:
        raise OperationalError(f"could not resolve {options['host']!r}: {failure}")
    for key, values in zip(("host", "hostaddr", "port"), zip(*targets, strict=True), strict=True):
        options[key] = ",".join(values)
    # At least one host went through getaddrinfo, a checkpoint.
    return _join(options), timeout  # noqa: ASYNC910


def _close(pg: pq.abc.PGconn) -> None:
    try:
        fd = pg.socket
    except OperationalError:
        pass
    else:
        notify_closing(fd)
    pg.finish()


async def _poll(started: pq.abc.PGconn | pq.abc.PGcancelConn, poll: Callable[[], int]) -> None:
    """Drive a connection (or cancel request) started in non-blocking mode to its end."""
    while True:
        state = poll()
        if state == _POLL_OK:
            return  # noqa: ASYNC910 (a helper: its callers wait on the socket around it)
        if state == _POLL_READING:
            await wait_readable(started.socket)
        elif state == _POLL_WRITING:
            await wait_writable(started.socket)
        else:
            raise OperationalError(started.get_error_message())


async def connect(conninfo: str) -> Connection:
    """Open a connection without blocking; cancelling it closes what was opened.

    Gives up after the connection string's ``connect_timeout`` (libpq leaves that to
    the application in non-blocking mode), else after `CONNECT_LIMIT` seconds.
    """
    resolved, timeout = await resolve(conninfo)
    pg = pq.PGconn.connect_start(resolved)
    try:
        if pg.status == pq.ConnStatus.BAD:
            raise OperationalError(pg.get_error_message())
        timeout = timeout or CONNECT_LIMIT
        with trio.move_on_after(timeout) as scope:
            await _poll(pg, pg.connect_poll)
        if scope.cancelled_caught:
            raise OperationalError(f"connecting timed out after {timeout} s")
        pg.nonblocking = 1
    except BaseException:
        _close(pg)
        raise
    return Connection(pg)


def _sqlstate(result: pq.abc.PGresult) -> str:
    return (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode()


def _error(result: pq.abc.PGresult) -> DatabaseError:
    state = _sqlstate(result)
    try:
        cls = errors.lookup(state)
    except KeyError:
        cls = DatabaseError
    return cls(result.get_error_message(), info=result)  # type: ignore[return-value]


# ------------------------------------------------------------------ one connection


@final
class Connection:
    """One libpq connection, used by one task at a time."""

    __slots__ = ("_fd", "_notices", "_prepared", "broken", "cancel_requests", "idle_since", "pg")

    def __init__(self, pg: pq.abc.PGconn) -> None:
        self.pg = pg
        self._fd = pg.socket
        self._prepared: set[bytes] = set()
        #: Set when the connection's state is in doubt: it must not be reused.
        self.broken = False
        self.cancel_requests = 0
        self.idle_since = 0.0
        # libpq reports what the server says outside a statement as a notice.
        self._notices = 0

        def count(result: pq.abc.PGresult) -> None:
            self._notices += 1

        pg.notice_handler = count

    @property
    def usable(self) -> bool:
        """Whether the connection can take the next statement (nothing left in flight)."""
        pg = self.pg
        return not self.broken and pg.status == _CONN_OK and pg.transaction_status == _IDLE

    def alive(self) -> bool:
        """Read what the server sent while the connection was idle (a shutdown, EOF)."""
        notices = self._notices
        try:
            self.pg.consume_input()
        except OperationalError:
            return False
        self.pg.is_busy()  # parses what was read
        # A server ending a connection sends an error, then closes it: the error may
        # arrive alone, as a notice. A notice while idle is rare: do not keep such a one.
        return self._notices == notices and self.usable

    def close(self) -> None:
        self.broken = True
        _close(self.pg)

    async def query(self, statement: Statement, params: Sequence[bytes | None]) -> pq.abc.PGresult:
        """Run a prepared statement; return its one result (binary)."""
        pg = self.pg
        if statement.name not in self._prepared:
            await self._send(pg.send_prepare, statement.name, statement.sql, statement.types)
            # A server error means not prepared (the connection is fine). After a
            # cancelled attempt it may be: preparing again then says it already is.
            results = await self._round_trip()
            if not (results and _sqlstate(results[0]) == _DUPLICATE_STATEMENT):
                _one(results)
            self._prepared.add(statement.name)
        send = pg.send_query_prepared
        await self._send(send, statement.name, params, statement.formats, _BINARY)
        return _one(await self._round_trip())

    async def execute(self, sql: bytes) -> list[pq.abc.PGresult]:
        """Run ``;``-separated statements without parameters, in one transaction;
        return their results (text format)."""
        await self._send(self.pg.send_query, sql)
        results = await self._round_trip()
        for result in results:
            _one([result])
        return results

    async def _send(self, send: Callable[..., None], *args: Any) -> None:  # noqa: ASYNC910
        """Queue a message (libpq sends what it can at once); a lost connection fails
        here, after a schedule point like every other outcome of an operation."""
        try:
            send(*args)
        except OperationalError:
            self.broken = True
            await cancel_shielded_checkpoint()
            raise

    async def _round_trip(self) -> list[pq.abc.PGresult]:
        try:
            while self.pg.flush():
                await wait_writable(self._fd)
        except BaseException:
            self.broken = True  # part of a message may be out: nothing can follow it
            raise
        try:
            return await self._drain()
        except trio.Cancelled:
            await self._settle()  # noqa: ASYNC102 (shielded inside, with a deadline)
            raise
        except BaseException:
            self.broken = True
            raise

    async def _drain(self) -> list[pq.abc.PGresult]:
        pg = self.pg
        results: list[pq.abc.PGresult] = []
        while True:  # noqa: ASYNC913 (waits whenever the reply is incomplete)
            while pg.is_busy():
                await wait_readable(self._fd)
                pg.consume_input()
            result = pg.get_result()
            if result is None:
                return results  # noqa: ASYNC910 (the caller waited for the reply)
            results.append(result)

    async def _settle(self) -> None:  # noqa: ASYNC910 (runs under a cancellation)
        """After a cancellation: let the statement end (cancelled on the server if it
        does not end at once) and drain its reply, so the next caller gets its own."""
        try:
            with trio.move_on_after(CANCEL_GRACE, shield=True):
                with trio.move_on_after(CANCEL_DELAY):
                    await self._drain()
                    return
                self.cancel_requests += 1
                await self._cancel_on_server()
                await self._drain()
                return
        except Exception:
            pass
        self.broken = True

    async def _cancel_on_server(self) -> None:
        if pq.version() < 170000:  # an older libpq only has a blocking cancel request
            await trio.to_thread.run_sync(self.pg.get_cancel().cancel, abandon_on_cancel=True)
            return
        cancel = self.pg.cancel_conn()
        try:
            cancel.start()
            await _poll(cancel, cancel.poll)
        finally:
            with contextlib.suppress(OperationalError):
                notify_closing(cancel.socket)
            cancel.finish()


def _one(results: list[pq.abc.PGresult]) -> pq.abc.PGresult:
    for result in results:
        if result.status not in _RESULT_OK:
            raise _error(result)
    if len(results) != 1:
        raise OperationalError(f"expected one result from the server, got {len(results)}")
    return results[0]


# ------------------------------------------------------------------------ the pool


@final
class _Attempt:
    """One connection being opened, and who waits for it."""

    __slots__ = ("abandoned", "background", "connection", "done", "error")

    def __init__(self, *, background: bool = False) -> None:
        self.background = background  # for the idle list, not for a caller
        self.abandoned = False  # its caller was cancelled: the idle list takes it
        self.connection: Connection | None = None
        self.error: BaseException | None = None
        self.done = trio.Event()


@final
class Pool:
    """Up to *max_size* connections, opened on demand and closed after *max_idle* seconds
    unused (down to *min_size*).

    `maintain` is the pool's own task: it keeps *min_size* connections, closes idle and
    dead ones, and reconnects with backoff after a failed attempt. Callers get a
    connection in arrival order. While the server is unreachable (an attempt failed and
    the pool's task has not reconnected yet), a caller without an idle connection fails
    at once rather than trying again itself.
    """

    def __init__(self, conninfo: str, *, max_size: int, min_size: int, max_idle: float) -> None:
        self._conninfo = conninfo
        self._max_size, self._min_size, self._max_idle = max_size, min_size, max_idle
        self._slots = trio.Semaphore(max_size)  # one per task holding or opening a connection
        self._idle: list[Connection] = []  # most recently used last
        self._open = self._opened = self._discarded = self._cancels = 0
        self._down: Exception | None = None
        self._wake = trio.Event()
        self._closed = False
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        """Open connections in *nursery* from now on. Start `maintain` there once the
        first connection is made (so that opening makes just one)."""
        self._nursery = nursery

    def counters(self) -> tuple[int, int, int, int, int]:
        """Connections open and idle now; opened, discarded, cancel requests so far."""
        return self._open, len(self._idle), self._opened, self._discarded, self._cancels

    async def query(self, statement: Statement, params: Sequence[bytes | None]) -> pq.abc.PGresult:
        connection = await self._acquire()
        try:
            return await connection.query(statement, params)
        finally:
            self._release(connection)

    async def execute(self, sql: bytes) -> list[pq.abc.PGresult]:
        connection = await self._acquire()
        try:
            return await connection.execute(sql)
        finally:
            self._release(connection)

    async def _acquire(self) -> Connection:
        if self._closed:
            await checkpoint()
            raise trio.ClosedResourceError("the connection pool is closed")
        if self._down is not None and not self._idle:
            await checkpoint()
            raise OperationalError(f"the server is unreachable: {self._down}")
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            await self._slots.acquire()
        try:
            while self._idle:
                connection = self._idle.pop()
                if connection.alive():
                    return connection  # noqa: ASYNC910 (the caller's statement waits next)
                self._discard(connection)
            if self._closed:  # while waiting for a slot
                raise trio.ClosedResourceError("the connection pool is closed")
            down = self._down
        except BaseException:
            self._slots.release()
            raise
        if down is None:
            return await self._connect()  # the attempt holds the slot from here
        self._slots.release()
        await checkpoint()
        raise OperationalError(f"the server is unreachable: {down}")

    async def _connect(self) -> Connection:
        """Open a connection for a caller holding a slot, who found no idle connection.

        The attempt runs in the pool's nursery, holding the caller's slot: a caller
        cancelled meanwhile leaves, and the connection joins the idle ones when it is
        ready (short deadlines never stop connections from being made).
        """
        assert self._nursery is not None
        attempt = _Attempt()
        self._nursery.start_soon(self._open_one, attempt)
        try:
            await attempt.done.wait()
        except BaseException:
            if attempt.connection is None:
                attempt.abandoned = True
            else:  # ready, but the caller was cancelled before it could take it
                self._release(attempt.connection)
            raise
        if attempt.connection is None:
            assert attempt.error is not None
            raise attempt.error
        return attempt.connection

    async def _open_one(self, attempt: _Attempt) -> None:  # noqa: ASYNC910 (a task)
        """Open a connection; the attempt holds a slot, which goes with the connection to
        its caller, or is released here."""
        self._open += 1
        connection: Connection | None = None
        try:
            connection = await connect(self._conninfo)
        except Exception as exc:
            self._down = attempt.error = exc
            self._wake.set()
        finally:
            if connection is None:
                self._open -= 1
                self._slots.release()
                attempt.error = attempt.error or trio.ClosedResourceError("the pool is closed")
            else:
                self._opened += 1
                self._down = None
                if attempt.abandoned or attempt.background:
                    self._release(connection)
                else:
                    attempt.connection = connection
            attempt.done.set()

    def _release(self, connection: Connection) -> None:
        self._slots.release()
        self._cancels += connection.cancel_requests
        connection.cancel_requests = 0
        if self._closed or not connection.usable:
            self._discard(connection)
        else:
            connection.idle_since = trio.current_time()
            self._idle.append(connection)

    def _discard(self, connection: Connection) -> None:
        self._open -= 1
        if not self._closed:
            self._discarded += 1
            self._wake.set()
        connection.close()

    async def maintain(self) -> None:
        """The pool's own task: runs until cancelled."""
        backoff = BACKOFF_FIRST
        while True:
            if self._down is not None or self._open < self._min_size:
                try:
                    self._slots.acquire_nowait()
                except trio.WouldBlock:
                    # Every slot holds a connection or an attempt: nothing to add.
                    self._down = None
                else:
                    attempt = _Attempt(background=True)
                    await self._open_one(attempt)
                    if attempt.error is None:
                        backoff = BACKOFF_FIRST
                    else:
                        await trio.sleep(backoff * random.uniform(0.5, 1.0))
                        backoff = min(2 * backoff, BACKOFF_CAP)
                    continue
            self._prune()
            with trio.move_on_after(self._max_idle / 2):
                await self._wake.wait()
            self._wake = trio.Event()

    def _prune(self) -> None:
        """Close dead idle connections, and those unused for *max_idle* beyond *min_size*."""
        now = trio.current_time()
        idle, self._idle = self._idle, []
        for connection in idle:
            if not connection.alive():
                self._discard(connection)
            elif now - connection.idle_since >= self._max_idle and self._open > self._min_size:
                self._open -= 1
                connection.close()
            else:
                self._idle.append(connection)

    def close(self) -> None:
        """Close idle connections now, busy ones when their callers release them."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            self._discard(connection)
