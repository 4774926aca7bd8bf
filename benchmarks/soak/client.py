"""A minimal HTTP/1.1 client on trio and h11: one keep-alive connection, cookies by hand.

The soak suite needs to know exactly which cookie each request carried and what each
response set, so there is no cookie jar here: the caller passes the cookie and reads
`Response.session_cookie`.
"""

from __future__ import annotations

import json
import select
from dataclasses import dataclass
from typing import Any

import h11
import trio

#: The session cookie's name in the soak app.
COOKIE = "session"


class HttpError(Exception):
    """The request got no complete response: connection refused, reset, closed or timed out."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        for header, value in self.headers:
            if header == key:
                return value.decode("latin-1")
        return None

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def session_cookie(self) -> str | None:
        """What the response did to the session cookie: ``None`` if nothing, ``""`` if it
        deleted it, else the new value."""
        found = None
        for header, value in self.headers:
            if header != b"set-cookie":
                continue
            text = value.decode("latin-1")
            pair, _, attributes = text.partition(";")
            name, _, cookie = pair.strip().partition("=")
            if name != COOKIE:
                continue
            attrs = attributes.lower().replace(" ", "")
            deleted = not cookie or "max-age=0" in attrs or "expires=thu,01jan1970" in attrs
            found = "" if deleted else cookie
        return found


class Connection:
    """One keep-alive connection, reopened after any failure, and before a request if
    the server closed it while it was idle (a killed server's connections are reset)."""

    def __init__(self, host: str, port: int, *, limit: float = 10.0) -> None:
        self.host = host
        self.port = port
        #: Seconds a request may take before it counts as unanswered.
        self.limit = limit
        self._stream: trio.SocketStream | None = None
        self._h11: h11.Connection | None = None

    async def aclose(self) -> None:
        stream, self._stream, self._h11 = self._stream, None, None
        if stream is not None:
            await stream.aclose()

    async def request(self, method: str, target: str, *, cookie: str | None = None) -> Response:
        """Send one request; raise `HttpError` if no complete response came in time."""
        with trio.move_on_after(self.limit) as scope:
            try:
                return await self._request(method, target, cookie)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self.aclose()
                raise HttpError(f"{type(exc).__name__}: {exc}") from exc
            except h11.ProtocolError as exc:
                await self.aclose()
                raise HttpError(f"protocol error: {exc}") from exc
        assert scope.cancelled_caught
        await self.aclose()
        raise HttpError("timed out")

    async def _request(self, method: str, target: str, cookie: str | None) -> Response:
        if self._stream is not None and self._closed_by_peer(self._stream):
            await self.aclose()  # as any client's pool: never send on a dead connection
        if self._stream is None or self._h11 is None:
            self._stream = await trio.open_tcp_stream(self.host, self.port)
            self._h11 = h11.Connection(our_role=h11.CLIENT)
        stream, conn = self._stream, self._h11
        headers = [("Host", f"{self.host}:{self.port}"), ("Content-Length", "0")]
        if cookie:
            headers.append(("Cookie", f"{COOKIE}={cookie}"))
        data = conn.send(h11.Request(method=method, target=target, headers=headers))
        await stream.send_all((data or b"") + (conn.send(h11.EndOfMessage()) or b""))
        status = 0
        response_headers: tuple[tuple[bytes, bytes], ...] = ()
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                chunk = await stream.receive_some(65536)
                conn.receive_data(chunk)
                if not chunk and conn.their_state is not h11.DONE:
                    # next_event raises RemoteProtocolError for a truncated message
                    continue
            elif isinstance(event, h11.Response):
                status = event.status_code
                response_headers = tuple((bytes(k), bytes(v)) for k, v in event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise HttpError("the server closed the connection")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            await self.aclose()
        return Response(status, response_headers, bytes(body))

    @staticmethod
    def _closed_by_peer(stream: trio.SocketStream) -> bool:
        """Whether an idle connection is readable: the other end closed or reset it (or
        sent something unasked, which makes it unusable too)."""
        readable, _, _ = select.select([stream.socket.fileno()], [], [], 0)
        return bool(readable)
