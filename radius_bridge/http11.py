"""A lean HTTP/1.1 keep-alive transport for ``httpx.AsyncClient`` (plain TCP or TLS).

Why not httpx's own transport: on the project's 2-core machine a request through
httpx's default transport (httpcore + h11 + anyio) costs ~1.3 ms of CPU in the client, where
the server side of the same request costs ~0.1 ms; the whole httpx client stack costs ~1.5
ms, a raw asyncio keep-alive request ~0.08 ms (measured with ``time.process_time``, see
docs/performance.md). At the bridge's target of 1,000 code checks a second that is the
difference between needing 1.5 cores for HTTP alone and needing a sixth of one. Each held
push also keeps a long-poll connection open, and this transport's connection (an asyncio
stream pair) is a fraction of httpcore's memory.

So the bridge keeps ``httpx.AsyncClient`` as its API (``httpx.ASGITransport`` in-process,
``httpx.MockTransport`` in tests) and plugs in this transport for real sockets. It does
only what the gateway API needs: one request at a time per connection (no pipelining),
``Content-Length`` or chunked bodies, keep-alive with an idle expiry, TLS through
:mod:`ssl` with certificate verification. No proxies, no HTTP/2, no redirects.

Errors are httpx's exception classes, so callers handle one family: ``ConnectError`` /
``ConnectTimeout`` (never reached the server), ``ReadTimeout`` / ``WriteTimeout``,
``RemoteProtocolError`` (the server closed or spoke nonsense; on a reused idle connection
before any byte of the response, the request was not processed), ``ReadError`` /
``WriteError`` (the connection broke).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass, field

import httpx

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024  # the clients document is the largest answer
Origin = tuple[str, str, int]


@dataclass(eq=False, slots=True)
class _Connection:
    origin: Origin
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        """Still open, not closed by the server, not idle for too long."""
        return (
            now - self.idle_since < expiry
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


@dataclass(slots=True)
class _Pool:
    idle: dict[Origin, deque[_Connection]] = field(default_factory=dict)
    in_use: set[_Connection] = field(default_factory=set)
    opening: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


def _timeouts(request: httpx.Request) -> tuple[float | None, float | None, float | None]:
    timeout = request.extensions.get("timeout", {})
    return timeout.get("connect"), timeout.get("read"), timeout.get("write")


class LeanTransport(httpx.AsyncBaseTransport):
    """Keep-alive connections per origin, at most ``max_connections`` in all.

    ``keepalive_expiry`` must stay below the server's keep-alive timeout (uvicorn: 5 s),
    or a request may be written into a connection the server is closing.
    """

    def __init__(
        self,
        max_connections: int = 64,
        keepalive_expiry: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._pool = _Pool()
        self._closed = False

    # -- the pool ----------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Open connections (in use and idle)."""
        return len(self._pool.in_use) + sum(len(q) for q in self._pool.idle.values())

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def _acquire(self, origin: Origin, connect_timeout: float | None) -> _Connection:
        pool = self._pool
        while True:
            if self._closed:
                raise httpx.ConnectError("the transport is closed")
            now = time.monotonic()
            idle = pool.idle.get(origin)
            while idle:
                connection = idle.pop()  # most recent first: the likeliest to be alive
                if connection.usable(now, self.keepalive_expiry):
                    pool.in_use.add(connection)
                    return connection
                connection.close()
            if self.connections + pool.opening < self.max_connections:
                break
            if not self._evict_idle():
                # Full with connections in use: wait for one to come back. The caller's
                # own deadline bounds the wait (httpx's pool timeout is not applied).
                waiter = asyncio.get_running_loop().create_future()
                pool.waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in pool.waiters:
                        pool.waiters.remove(waiter)
        pool.opening += 1
        try:
            connection = await self._connect(origin, connect_timeout)
        finally:
            pool.opening -= 1
            self._wake()
        pool.in_use.add(connection)
        return connection

    def _evict_idle(self) -> bool:
        """Close one idle connection of any origin to make room; True if there was one."""
        for queue in self._pool.idle.values():
            if queue:
                queue.popleft().close()
                return True
        return False

    def _wake(self) -> None:
        while self._pool.waiters:
            waiter = self._pool.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, connection: _Connection, reusable: bool) -> None:
        self._pool.in_use.discard(connection)
        if reusable and not self._closed:
            connection.idle_since = time.monotonic()
            self._pool.idle.setdefault(connection.origin, deque()).append(connection)
        else:
            connection.close()
        self._wake()

    async def _connect(self, origin: Origin, within: float | None) -> _Connection:
        scheme, host, port = origin
        tls = self._ssl() if scheme == "https" else None
        try:
            async with asyncio.timeout(within):
                reader, writer = await asyncio.open_connection(
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                    limit=MAX_HEADER_BYTES,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(origin, reader, writer)

    # -- one request -----------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on a pooled connection and read the whole response."""
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"{scheme!r} URLs are not supported")
        port = url.port or (443 if scheme == "https" else 80)
        origin: Origin = (scheme, url.host, port)
        connect_timeout, read_timeout, write_timeout = _timeouts(request)
        body = await request.aread()
        head = [f"{request.method} {url.raw_path.decode('ascii')} HTTP/1.1\r\n".encode()]
        for name, value in request.headers.raw:
            if name.lower() == b"accept-encoding":
                continue  # asked for below: bodies are small JSON, never worth decoding
            head.append(name + b": " + value + b"\r\n")
        head.append(b"accept-encoding: identity\r\n")
        if body and "content-length" not in request.headers:
            head.append(b"content-length: %d\r\n" % len(body))
        head.append(b"\r\n")
        data = b"".join(head) + body

        status, headers, content = await self.exchange(
            origin, data, request.method, connect_timeout, read_timeout, write_timeout
        )
        return httpx.Response(
            status,
            headers=headers,
            content=content,
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def exchange(
        self,
        origin: Origin,
        data: bytes,
        method: str,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        write_timeout: float | None = None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Send a request already in wire form on a pooled connection; (status, headers,
        body). The long-poll path of the bridge calls this directly: a held push then costs
        one coroutine and one connection, without httpx's request and response objects."""
        connection = await self._acquire(origin, connect_timeout)
        reusable = False
        try:
            try:
                connection.writer.write(data)
                if write_timeout is None:
                    await connection.writer.drain()
                else:
                    async with asyncio.timeout(write_timeout):
                        await connection.writer.drain()
            except TimeoutError:
                raise httpx.WriteTimeout("writing the request timed out") from None
            except OSError as exc:
                raise httpx.WriteError(f"writing the request failed: {exc}") from exc
            try:
                if read_timeout is None:
                    status, headers, content, keep = await self._read_response(
                        connection.reader, method
                    )
                else:
                    async with asyncio.timeout(read_timeout):
                        status, headers, content, keep = await self._read_response(
                            connection.reader, method
                        )
            except TimeoutError:
                raise httpx.ReadTimeout("reading the response timed out") from None
            except ConnectionError as exc:
                raise httpx.ReadError(f"reading the response failed: {exc}") from exc
            reusable = keep
        finally:
            # Anything but a complete exchange (an error, a cancellation) leaves the
            # connection in an unknown state: it is closed, never reused.
            self._release(connection, reusable)
        return status, headers, content

    @staticmethod
    async def _read_response(
        reader: asyncio.StreamReader, method: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            raise httpx.RemoteProtocolError(
                "the server closed the connection without a response"
                if not exc.partial
                else "the server closed the connection in the middle of the headers"
            ) from None
        except asyncio.LimitOverrunError:
            raise httpx.RemoteProtocolError("response headers too large") from None
        lines = raw[:-4].split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
            raise httpx.RemoteProtocolError("not an HTTP/1.x response")
        try:
            status = int(status_line[1])
        except ValueError:
            raise httpx.RemoteProtocolError("malformed status line") from None
        headers: list[tuple[bytes, bytes]] = []
        length: int | None = None
        chunked = False
        keep = status_line[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise httpx.RemoteProtocolError("malformed header line")
            name, value = name.strip(), value.strip()
            headers.append((name, value))
            lower = name.lower()
            if lower == b"content-length":
                if not value.isdigit():
                    raise httpx.RemoteProtocolError("malformed Content-Length")
                length = int(value)
            elif lower == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif lower == b"connection":
                tokens = value.lower()
                keep = b"close" not in tokens and (keep or b"keep-alive" in tokens)
        try:
            if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                content = b""
            elif chunked:
                content = await LeanTransport._read_chunked(reader)
            elif length is not None:
                if length > MAX_BODY_BYTES:
                    raise httpx.RemoteProtocolError("response body too large")
                content = await reader.readexactly(length)
            else:
                content = await reader.read(MAX_BODY_BYTES)  # until the server closes
                keep = False
        except asyncio.IncompleteReadError:
            raise httpx.RemoteProtocolError("the server closed the connection mid-body") from None
        return status, headers, content, keep

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise httpx.RemoteProtocolError("malformed chunk size") from None
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise httpx.RemoteProtocolError("response body too large")
            parts.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise httpx.RemoteProtocolError("malformed chunk")

    def abort_in_use(self) -> int:
        """Abort every connection carrying a request now: each request fails at once as if
        the server had closed the connection (``RemoteProtocolError``), so its caller can
        go elsewhere. The pool stays open. How many were aborted."""
        connections = list(self._pool.in_use)
        for connection in connections:
            with contextlib.suppress(Exception):
                connection.writer.transport.abort()
        return len(connections)

    async def aclose(self) -> None:
        """Close every connection; requests waiting for one fail."""
        self._closed = True
        for queue in self._pool.idle.values():
            for connection in queue:
                connection.close()
        self._pool.idle.clear()
        for connection in list(self._pool.in_use):
            connection.close()
        while self._pool.waiters:
            waiter = self._pool.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
