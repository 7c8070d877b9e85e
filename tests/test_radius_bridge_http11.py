"""The bridge's lean HTTP/1.1 transport against a real uvicorn server on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from radius_bridge.http11 import LeanTransport
from tests.support.server import LiveServer

pytestmark = pytest.mark.anyio


async def echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "body": body.decode(),
            "encoding": request.headers.get("accept-encoding"),
            "peer": request.client.port if request.client else None,
        }
    )


async def chunked(request: Request) -> Response:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b'{"a": ', b'"chunk', b'ed"}'):
            yield part

    return StreamingResponse(parts(), media_type="application/json")


async def not_modified(request: Request) -> Response:
    return Response(status_code=304, headers={"etag": '"r1"'})


async def close(request: Request) -> Response:
    return JSONResponse({"closing": True}, headers={"connection": "close"})


async def slow(request: Request) -> Response:
    await asyncio.sleep(float(request.query_params["s"]))
    return JSONResponse({"slept": True})


APP = Starlette(
    routes=[
        Route("/echo", echo, methods=["GET", "POST"]),
        Route("/chunked", chunked),
        Route("/304", not_modified),
        Route("/close", close),
        Route("/slow", slow),
    ]
)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with LiveServer(APP) as live:
        yield live


def client(server: LiveServer, transport: LeanTransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, transport=transport, timeout=5)


async def test_requests_reuse_one_keep_alive_connection(server: LiveServer) -> None:
    transport = LeanTransport(max_connections=4)
    async with client(server, transport) as http:
        first = await http.post("/echo?x=1", json={"k": "v"})
        second = await http.get("/echo")
    assert first.status_code == 200
    assert first.json()["body"] == '{"k":"v"}'
    assert first.json()["query"] == "x=1"
    assert first.json()["encoding"] == "identity"
    assert first.json()["peer"] == second.json()["peer"]  # the same connection
    assert transport.connections == 0  # closed with the client


async def test_chunked_bodies_and_bodyless_statuses(server: LiveServer) -> None:
    async with client(server, LeanTransport()) as http:
        assert (await http.get("/chunked")).json() == {"a": "chunked"}
        not_modified = await http.get("/304")
        assert (not_modified.status_code, not_modified.content) == (304, b"")
        assert not_modified.headers["etag"] == '"r1"'
        # The connection is still in step after both.
        assert (await http.get("/echo")).status_code == 200


async def test_connection_close_is_honoured(server: LiveServer) -> None:
    transport = LeanTransport()
    async with client(server, transport) as http:
        first = await http.get("/echo")
        assert (await http.get("/close")).json() == {"closing": True}
        after = await http.get("/echo")
    assert first.json()["peer"] != after.json()["peer"]


async def test_idle_connections_expire_before_the_server_drops_them(server: LiveServer) -> None:
    transport = LeanTransport(keepalive_expiry=0.05)
    async with client(server, transport) as http:
        first = await http.get("/echo")
        await asyncio.sleep(0.1)  # longer than the expiry: time must pass for this test
        second = await http.get("/echo")
    assert first.json()["peer"] != second.json()["peer"]


async def test_a_connection_closed_by_the_server_is_not_reused(server: LiveServer) -> None:
    # A server that answers once and then closes (as on its keep-alive timeout).
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    accepted: list[int] = []
    closed = asyncio.Event()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        for _ in range(2):
            conn, _ = await loop.sock_accept(listener)
            accepted.append(1)
            await loop.sock_recv(conn, 65536)
            await loop.sock_sendall(conn, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            conn.close()  # no Connection: close header, just gone
            closed.set()

    task = asyncio.create_task(serve())
    transport = LeanTransport()
    async with httpx.AsyncClient(transport=transport, timeout=5) as http:
        assert (await http.get(f"http://127.0.0.1:{port}/")).text == "ok"
        await asyncio.wait_for(closed.wait(), 5)  # the server has closed the connection
        assert (await http.get(f"http://127.0.0.1:{port}/")).text == "ok"
    await task
    listener.close()
    assert len(accepted) == 2


async def test_the_pool_bounds_connections_and_queues(server: LiveServer) -> None:
    transport = LeanTransport(max_connections=2)
    async with client(server, transport) as http:
        replies = await asyncio.gather(*(http.get("/slow?s=0.05") for _ in range(6)))
        peers = {(await http.get("/echo")).json()["peer"]}
    assert all(r.json() == {"slept": True} for r in replies)
    assert len(peers) == 1
    assert transport.connections == 0


async def test_timeouts_and_refused_connections_are_httpx_errors(server: LiveServer) -> None:
    transport = LeanTransport()
    async with client(server, transport) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/slow?s=1", timeout=0.1)
        assert transport.connections == 0  # a timed-out connection is never reused
        assert (await http.get("/echo")).status_code == 200
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    async with httpx.AsyncClient(transport=LeanTransport(), timeout=5) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/")


async def test_cancelled_requests_free_their_connection(server: LiveServer) -> None:
    transport = LeanTransport(max_connections=1)
    async with client(server, transport) as http:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await http.get("/slow?s=1")
        # The only connection slot is free again.
        assert (await http.get("/echo")).status_code == 200
