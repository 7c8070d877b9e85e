"""The RadSec listener's bounds (radius_bridge.radsec) over real TLS sockets, with a handler
that speaks the runner's interface and lets the test decide when each request finishes:
in-flight bound and backpressure, connection limit, idle timeout."""

from __future__ import annotations

import asyncio
import ssl
import struct
from pathlib import Path
from typing import Any

import pytest

from radius_bridge.config import ListenAddress
from radius_bridge.model import ClientConfig
from radius_bridge.radsec import (
    RadsecConnection,
    RadsecLimits,
    RadsecServer,
    server_context,
)
from tests.support.process import until
from tests.support.radsec import Issued, TestCa

CLIENT = ClientConfig(name="gw", networks=(), secret=b"radsec")


class Handler:
    """Counts events; each packet gets a future the test resolves (its "decision")."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.refused: list[str] = []
        self.received: list[tuple[bytes, asyncio.Future[None]]] = []
        self.arrived = asyncio.Event()

    def radsec_client(
        self, digest: bytes, peer: tuple[Any, ...], subject: str
    ) -> ClientConfig | None:
        return CLIENT

    def radsec_refused(self, peer: tuple[Any, ...], why: str) -> None:
        self.refused.append(why)

    def radsec_event(self, event: str) -> None:
        self.events.append(event)

    def stream_received(
        self, data: bytes, client: ClientConfig, connection: RadsecConnection
    ) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # The "answer" is the request echoed back once the test decides it.
        future.add_done_callback(lambda _: connection.send(data))
        self.received.append((data, future))
        self.arrived.set()
        return future


def packet(identifier: int) -> bytes:
    return struct.pack("!BBH", 1, identifier, 20) + bytes(16)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCa, Issued, Issued]:
    ca = TestCa(tmp_path_factory.mktemp("pki"), "bounds CA")
    return ca, ca.issue("server", server=True), ca.issue("gateway")


async def serve(
    pki: tuple[TestCa, Issued, Issued], limits: RadsecLimits
) -> tuple[RadsecServer, Handler, ssl.SSLContext]:
    ca, server_cert, gateway = pki
    handler = Handler()
    server = RadsecServer(
        handler,
        ListenAddress("127.0.0.1", 0),
        server_context(server_cert.cert_file, server_cert.key_file, Path(ca.ca_file)),
        limits,
    )
    await server.start()
    client = ssl.create_default_context(cafile=str(ca.ca_file))
    client.load_cert_chain(gateway.cert_file, gateway.key_file)
    return server, handler, client


def test_in_flight_is_bounded_and_answers_go_out_in_decision_order(
    pki: tuple[TestCa, Issued, Issued],
) -> None:
    async def run() -> None:
        server, handler, context = await serve(pki, RadsecLimits(max_in_flight=2))
        try:
            port = server.bound.port
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            writer.write(b"".join(packet(i) for i in range(5)))
            await writer.drain()
            await until(lambda: len(handler.received) == 2, "two requests in flight")
            handler.received[1][1].set_result(None)  # the second is decided first
            assert (await reader.readexactly(20))[1] == 1
            await until(lambda: len(handler.received) >= 3, "the third request")
            # One decided, so exactly one more was handed over: the bound held.
            assert len(handler.received) == 3
            for _, future in handler.received:
                if not future.done():
                    future.set_result(None)
            await until(lambda: len(handler.received) == 5, "every request")
            for _, future in handler.received:
                if not future.done():
                    future.set_result(None)
            answers = {(await reader.readexactly(20))[1] for _ in range(4)}
            assert answers == {0, 2, 3, 4}
            writer.close()
        finally:
            await server.close()

    asyncio.run(run())


def test_connections_beyond_the_limit_are_closed(pki: tuple[TestCa, Issued, Issued]) -> None:
    async def run() -> None:
        server, handler, context = await serve(pki, RadsecLimits(max_connections=1))
        try:
            port = server.bound.port
            _, first = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            await until(lambda: "accepted" in handler.events, "the first connection")

            async def second() -> None:
                reader, _ = await asyncio.open_connection("127.0.0.1", port, ssl=context)
                await reader.readexactly(1)

            with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
                await second()
            assert "over-limit" in handler.events
            first.close()
        finally:
            await server.close()

    asyncio.run(run())


def test_an_idle_connection_is_closed_but_not_one_holding_a_request(
    pki: tuple[TestCa, Issued, Issued],
) -> None:
    async def run() -> None:
        server, handler, context = await serve(pki, RadsecLimits(idle_timeout=0.3))
        try:
            port = server.bound.port
            idle_reader, idle = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            busy_reader, busy = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            busy.write(packet(7))
            await busy.drain()
            await until(lambda: len(handler.received) == 1, "the held request")
            assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # closed when idle
            assert handler.events.count("idle-closed") == 1
            # Several idle timeouts later (the time passing is what is tested) the connection
            # holding a request is still open.
            await asyncio.sleep(1.0)
            handler.received[0][1].set_result(None)
            assert (await busy_reader.readexactly(20))[1] == 7
            busy.close()
            idle.close()
        finally:
            await server.close()

    asyncio.run(run())


def test_standalone_settings(tmp_path: Path) -> None:
    from radius_bridge.cli import build_parser, settings_from
    from radius_bridge.config import BridgeConfigError, load_bridge_settings

    token = tmp_path / "token"
    token.write_text("omfa_token")
    token.chmod(0o600)
    base = ["--backend", "https://mfa.example.com", "--token-file", str(token)]
    with pytest.raises(BridgeConfigError, match="RadSec needs"):
        settings_from(build_parser().parse_args([*base, "--radsec-listen", "127.0.0.1"]))
    settings = settings_from(
        build_parser().parse_args(
            [
                *base,
                "--radsec-listen",
                "127.0.0.2",
                "--radsec-listen",
                "[::1]:3000",
                "--radsec-cert-file",
                "c.pem",
                "--radsec-key-file",
                "k.pem",
                "--radsec-client-ca-file",
                "ca.pem",
            ]
        )
    )
    assert settings.radsec_listen == (
        ListenAddress("127.0.0.2", 2083),
        ListenAddress("::1", 3000),
    )
    from_env = load_bridge_settings(
        environ={
            "OPENMFA_BRIDGE_BACKEND": "https://mfa.example.com",
            "OPENMFA_BRIDGE_TOKEN": "omfa_token",
            "OPENMFA_BRIDGE_RADSEC_LISTEN": "127.0.0.1:2084",
            "OPENMFA_BRIDGE_RADSEC_CERT_FILE": "c.pem",
            "OPENMFA_BRIDGE_RADSEC_KEY_FILE": "k.pem",
            "OPENMFA_BRIDGE_RADSEC_CLIENT_CA_FILE": "ca.pem",
            "OPENMFA_BRIDGE_RADSEC_IDLE_TIMEOUT": "30",
        }
    )
    assert from_env.radsec_listen == (ListenAddress("127.0.0.1", 2084),)
    assert from_env.radsec_idle_timeout == 30.0
    plain = {"OPENMFA_BRIDGE_BACKEND": "https://mfa.example.com", "OPENMFA_BRIDGE_TOKEN": "t0k"}
    assert load_bridge_settings(environ=plain).radsec_listen == ()  # off by default
