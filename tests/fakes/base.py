"""What the push fakes (:mod:`tests.fakes.apns`, :mod:`tests.fakes.fcm`,
:mod:`tests.fakes.webpush_service`) share: their TLS files, the requests and violations they
record, and waiting for their state to change; for the two served with asyncio streams (FCM,
Web Push) also the TLS listener, its connections, stop() and the HTTP/1.1 (h11) plumbing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import h11

from tests.fakes.tls import TlsFiles, make_tls

RequestT = TypeVar("RequestT")


class PushFake(Generic[RequestT]):
    """The shape both push fakes share (docs: the push contract): ``url``, ``ca_file``,
    ``requests``, ``violations``, :meth:`wait_for`, :meth:`wait_until`."""

    #: how the fake names itself in assertion messages ("APNs fake")
    label: ClassVar[str]
    #: the folder below ``directory`` its TLS files go to when none are given
    tls_folder: ClassVar[str]

    def __init__(self, directory: Path, tls: TlsFiles | None) -> None:
        self._directory = directory
        self._tls = tls
        self.requests: list[RequestT] = []
        self.violations: list[str] = []
        self.connections_made = 0
        #: seconds every answer waits before it is sent (a slow service)
        self.delay = 0.0
        self._changed: asyncio.Event | None = None
        self.url = ""
        self.port = 0

    @property
    def ca_file(self) -> Path:
        """The CA certificate a client must trust to reach :attr:`url` (``*_ca_file``)."""
        if self._tls is None:
            raise RuntimeError("start() the fake first")
        return self._tls.ca_file

    def _starting(self) -> TlsFiles:
        """The TLS files to serve (made now unless given); waiting works from here on."""
        if self._tls is None:
            self._tls = make_tls(self._directory / self.tls_folder)
        self._changed = asyncio.Event()
        return self._tls

    def assert_clean(self) -> None:
        """Fail the test when anything on the wire was not what the service expects."""
        if self.violations:
            raise AssertionError(
                f"{self.label} saw wire-format violations:\n" + "\n".join(self.violations)
            )

    # -- waiting -----------------------------------------------------------------------------

    # The fakes' shared shape (push contract) takes timeouts as arguments: hence the noqa.
    async def wait_until(
        self,
        condition: Callable[[], bool],
        timeout: float,  # noqa: ASYNC109
        what: str,
    ) -> None:
        """Wait until ``condition()`` holds (re-checked whenever the fake's state changes)."""
        if self._changed is None:
            raise RuntimeError("start() the fake first")
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.label}: timed out after {timeout} s waiting for {what}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[RequestT]:  # noqa: ASYNC109
        """Wait until ``count`` requests were received (answered or not); return them all."""
        await self.wait_until(lambda: len(self.requests) >= count, timeout, f"{count} requests")
        return list(self.requests)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def _violation(self, text: str) -> None:
        self.violations.append(text)
        self._notify()


@dataclass
class Reply:
    """One answer of a stream-served fake: status, body, extra headers."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


class StreamPushFake(PushFake[RequestT]):
    """A push fake served with :func:`asyncio.start_server` over TLS on 127.0.0.1: the
    listener, its connection tasks and :meth:`stop`. A subclass serves one connection in
    :meth:`_connection`, bracketed by :meth:`_opened` and :meth:`_closed`."""

    def __init__(self, directory: Path, tls: TlsFiles | None) -> None:
        super().__init__(directory, tls)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        #: set by stop(): delayed or held answers give up waiting
        self._stopping: asyncio.Event | None = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _dispatch(self, request: h11.Request, body: bytes) -> Reply:
        raise NotImplementedError

    async def _serve_h11(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_event_size: int,
        max_body: int,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Answer HTTP/1.1 requests on one connection with :meth:`_dispatch` until either
        side closes it; ``headers`` go before Content-Length in every response. Protocol
        errors propagate (the caller ends the connection)."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_event_size)
        while True:
            event = await next_h11_event(conn, reader)
            if isinstance(event, h11.ConnectionClosed):
                break
            if not isinstance(event, h11.Request):
                self._violation(f"unexpected HTTP event {type(event).__name__}")
                break
            body = await read_h11_body(conn, reader, max_body)
            reply = await self._dispatch(event, body)
            out = [*headers, ("content-length", str(len(reply.body))), *reply.headers]
            await write_h11_reply(conn, writer, reply.status, out, reply.body)
            if conn.our_state is h11.MUST_CLOSE:
                break
            conn.start_next_cycle()

    async def _listen(self, alpn: Sequence[str] = ()) -> None:
        """Listen on an ephemeral port of 127.0.0.1 with TLS, offering ``alpn``."""
        tls = self._starting()
        self._stopping = asyncio.Event()
        self._server = await asyncio.start_server(
            self._connection, "127.0.0.1", 0, ssl=tls.server_context(alpn=alpn)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"

    async def stop(self, *, check: bool = True, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Close every connection and the listener; with ``check``, raise on violations."""
        if self._stopping is not None:
            self._stopping.set()
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait_for(
                    asyncio.gather(*self._tasks, return_exceptions=True), timeout
                )
            await self._server.wait_closed()
            self._server = None
        if check:
            self.assert_clean()

    def _opened(self, writer: asyncio.StreamWriter) -> asyncio.Task[None]:
        """Track a new connection (stop() closes it); its task."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections_made += 1
        return task

    async def _closed(self, writer: asyncio.StreamWriter, task: asyncio.Task[None]) -> None:
        """Close a connection and stop tracking it."""
        self._writers.discard(writer)
        writer.close()
        # Cancelled by stop(): end quietly (asyncio logs a connection task that ends
        # cancelled as an error of its own).
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await writer.wait_closed()
        self._tasks.discard(task)
        self._notify()


async def next_h11_event(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    """The next HTTP/1.1 event, reading from ``reader`` as needed."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(65536))


async def read_h11_body(conn: h11.Connection, reader: asyncio.StreamReader, limit: int) -> bytes:
    """The request body after its ``h11.Request``; over ``limit`` bytes is a protocol error."""
    body = bytearray()
    while True:
        part = await next_h11_event(conn, reader)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > limit:
                raise h11.RemoteProtocolError("body too large")
        elif isinstance(part, h11.EndOfMessage):
            return bytes(body)
        else:
            raise h11.RemoteProtocolError(f"unexpected {type(part).__name__}")


async def write_h11_reply(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    status: int,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    """Send one whole HTTP/1.1 response."""
    writer.write(conn.send(h11.Response(status_code=status, headers=headers)))
    writer.write(conn.send(h11.Data(data=body)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()
