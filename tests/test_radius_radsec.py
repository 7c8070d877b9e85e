"""RadSec (RADIUS over TLS, RFC 6614) through the real bridge against a live backend.

Gateways are Debian's ``radclient`` behind ``radsecproxy`` (UDP in, RadSec with mutual TLS
out, as a gateway-side proxy runs in production), and a hand-made TLS socket sending
pyrad-built packets for the framing edge cases. Certificates come from throw-away CAs made
per module. The phone is the reference authenticator. Nothing waits by sleeping.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import ssl
import struct
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pyrad import packet as pyrad_packet

from radius_bridge.config import ListenAddress
from tests.support.bridge import RadiusLab, pyrad_dictionary
from tests.support.freeradius import radclient, radclient_binary
from tests.support.process import wait_for
from tests.support.radsec import Issued, Radsecproxy, RadsecSocket, TestCa, radsecproxy_binary

needs_radsecproxy = pytest.mark.skipif(
    radsecproxy_binary() is None or radclient_binary() is None,
    reason="radsecproxy / radclient not installed (apt-get install radsecproxy freeradius-utils)",
)

PASSWORD = "correct horse battery"
UDP_SECRET = "gateway-to-radsecproxy-secret"
_names = itertools.count(1)


class Pki:
    """The bridge's CA (server and gateway certificates) and a stranger's CA."""

    def __init__(self, directory: Path) -> None:
        self.ca = TestCa(directory / "ca", "OpenMFA RadSec test CA")
        self.server = self.ca.issue("bridge", server=True)
        self.other_ca = TestCa(directory / "other", "Someone else's CA")

    def gateway(self) -> Issued:
        """A fresh client certificate from the right CA."""
        return self.ca.issue(f"gateway-{next(_names)}")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("radsec-pki"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RadiusLab]:
    options = {
        "radsec_listen": (ListenAddress("127.0.0.1", 0),),
        "radsec_cert_file": pki.server.cert_file,
        "radsec_key_file": pki.server.key_file,
        "radsec_client_ca_file": pki.ca.ca_file,
        "radsec_handshake_timeout": 5.0,
    }
    with RadiusLab(tmp_path_factory.mktemp("radsec-lab"), bridge_options=options) as running:
        yield running


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=24) as executor:
        yield executor


def radsec_port(lab: RadiusLab) -> int:
    return lab.bridge.bridge.radsec[0].bound.port


def metric(lab: RadiusLab, event: str) -> float:
    return lab.bridge.metric("openmfa_radius_radsec_connections_total", {"event": event})


def name_of(request: pytest.FixtureRequest) -> str:
    return request.node.name.removeprefix("test_")[:40].replace("_", "-")


def radsec_client(
    lab: RadiusLab, name: str, certificate: Issued, addresses: list[str] | None = None, **kw: Any
) -> None:
    lab.client(name, addresses, None, radsec_fingerprints=[certificate.fingerprint], **kw)


def request_packet(user: str, password: str | None = None, identifier: int = 1) -> Any:
    """A pyrad Access-Request signed with the RadSec secret."""
    request = pyrad_packet.AuthPacket(
        code=pyrad_packet.AccessRequest,
        id=identifier,
        secret=b"radsec",
        dict=pyrad_dictionary(),
    )
    request["User-Name"] = user
    if password is not None:
        request["User-Password"] = request.PwCrypt(password)
    request.add_message_authenticator()
    return request


def answer_of(request: Any, data: bytes) -> Any:
    """The reply to ``request``, checked (authenticator and Message-Authenticator)."""
    reply = request.CreateReply(packet=data)
    assert request.VerifyReply(reply, data), "bad Response Authenticator"
    assert reply.verify_message_authenticator(original_authenticator=request.authenticator)
    return reply


def refusals(lab: RadiusLab) -> list[Any]:
    return lab.audit("", "radius.radsec_refused")


# -- with radsecproxy in front --------------------------------------------------------------------


@needs_radsecproxy
def test_password_and_code_accepted_through_radsecproxy(
    lab: RadiusLab, pki: Pki, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = name_of(request)
    certificate = pki.gateway()
    radsec_client(lab, name, certificate, mode="otp", primary="local")
    device = lab.user(name, password=PASSWORD)
    with Radsecproxy(tmp_path, radsec_port(lab), pki.ca, certificate, UDP_SECRET) as proxy:
        answer = radclient(
            proxy.port,
            UDP_SECRET,
            {"User-Name": name, "User-Password": f"{PASSWORD},{device.code()}"},
            timeout=10,
        )
        assert answer.code == "Access-Accept", proxy.log()
        wrong = radclient(
            proxy.port,
            UDP_SECRET,
            {"User-Name": name, "User-Password": f"nope,{device.code()}"},
            timeout=10,
        )
        assert wrong.code == "Access-Reject"


@needs_radsecproxy
def test_many_held_pushes_share_one_tls_connection(
    lab: RadiusLab,
    pki: Pki,
    pool: ThreadPoolExecutor,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    name = name_of(request)
    certificate = pki.gateway()
    radsec_client(lab, name, certificate, mode="push", primary="none")
    users = [f"{name[:30]}-{i}" for i in range(12)]
    devices = {user: lab.user(user) for user in users}
    accepted = metric(lab, "accepted")
    with Radsecproxy(tmp_path, radsec_port(lab), pki.ca, certificate, UDP_SECRET) as proxy:
        replies: dict[str, Future[Any]] = {
            user: pool.submit(radclient, proxy.port, UDP_SECRET, {"User-Name": user}, timeout=40)
            for user in users
        }
        wait_for(lambda: lab.bridge.held >= len(users), 20, "every push to be held")
        assert not any(reply.done() for reply in replies.values())
        # Approve in reverse order: answers go back as they are decided, not in request order.
        for user in reversed(users):
            device = devices[user]
            wait_for(lambda d=device: len(d.pending()) >= 1, 20, f"the push to reach {user}")
            pending = device.pending()
            assert len(pending) == 1, (user, pending)
            device.answer(str(pending[0]["id"]), "approve")
        for user, reply in replies.items():
            assert reply.result(timeout=40).code == "Access-Accept", user
    # radsecproxy multiplexed all of them over a single TLS connection.
    assert metric(lab, "accepted") == accepted + 1


@needs_radsecproxy
def test_a_certificate_from_another_ca_gets_no_connection_and_is_audited(
    lab: RadiusLab, pki: Pki, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = name_of(request)
    rogue = pki.other_ca.issue(f"rogue-{next(_names)}")
    # Even bound to a client by fingerprint: the chain must verify against the client CA.
    radsec_client(lab, name, rogue)
    lab.unenrolled_user(name)
    before, refused = metric(lab, "accepted"), metric(lab, "refused")
    with Radsecproxy(tmp_path, radsec_port(lab), pki.ca, rogue, UDP_SECRET) as proxy:
        answer = radclient(proxy.port, UDP_SECRET, {"User-Name": name}, timeout=2)
        assert answer.code is None
    assert metric(lab, "accepted") == before
    wait_for(lambda: metric(lab, "refused") > refused, 10, "the refusal to be counted")
    wait_for(
        lambda: any("TLS handshake failed" in row.detail for row in refusals(lab)),
        10,
        "the refused handshake to be audited",
    )


# -- by hand over a TLS socket ------------------------------------------------------------------


def test_status_server_is_answered_as_keep_alive(
    lab: RadiusLab, pki: Pki, request: pytest.FixtureRequest
) -> None:
    certificate = pki.gateway()
    radsec_client(lab, name_of(request), certificate)
    status = pyrad_packet.AuthPacket(
        code=pyrad_packet.StatusServer, id=7, secret=b"radsec", dict=pyrad_dictionary()
    )
    status.add_message_authenticator()
    with RadsecSocket(radsec_port(lab), pki.ca, certificate) as gateway:
        gateway.send(status.RequestPacket())
        reply = answer_of(status, gateway.receive())
        assert reply.code == pyrad_packet.AccessAccept
        assert reply.id == 7


def test_framing_two_packets_in_one_write_and_one_packet_in_many(
    lab: RadiusLab, pki: Pki, request: pytest.FixtureRequest
) -> None:
    name = name_of(request)
    certificate = pki.gateway()
    radsec_client(lab, name, certificate, mode="otp", primary="local")
    device = lab.user(name, password=PASSWORD)
    first = request_packet(name, f"{PASSWORD},{device.code()}", identifier=1)
    second = request_packet(name, f"wrong,{device.code()}", identifier=2)
    third = request_packet(name, "wrong,000000", identifier=3)
    with RadsecSocket(radsec_port(lab), pki.ca, certificate) as gateway:
        gateway.send(first.RequestPacket() + second.RequestPacket())
        answers = {}
        for _ in range(2):
            data = gateway.receive()
            answers[data[1]] = data
        assert answer_of(first, answers[1]).code == pyrad_packet.AccessAccept
        assert answer_of(second, answers[2]).code == pyrad_packet.AccessReject
        for byte in third.RequestPacket():  # one octet per TLS record
            gateway.send(bytes((byte,)))
        assert answer_of(third, gateway.receive()).code == pyrad_packet.AccessReject


def test_a_length_beyond_4096_closes_the_connection(
    lab: RadiusLab, pki: Pki, request: pytest.FixtureRequest
) -> None:
    certificate = pki.gateway()
    radsec_client(lab, name_of(request), certificate)
    closed = metric(lab, "bad-length")
    with RadsecSocket(radsec_port(lab), pki.ca, certificate) as gateway:
        gateway.send(struct.pack("!BBH", 1, 9, 4097) + bytes(60))
        assert gateway.closed_by_peer()
    assert metric(lab, "bad-length") == closed + 1


def test_wrong_secret_inside_tls_is_dropped(
    lab: RadiusLab, pki: Pki, request: pytest.FixtureRequest
) -> None:
    """The secret on RadSec is "radsec" whatever the client's UDP secret is."""
    name = name_of(request)
    certificate = pki.gateway()
    lab.client(
        name,
        ["127.0.0.1"],
        "udp-secret-of-this-client",
        radsec_fingerprints=[certificate.fingerprint],
    )
    dropped = lab.bridge.metric(
        "openmfa_radius_dropped_total", {"reason": "bad-message-authenticator"}
    )
    wrong = pyrad_packet.AuthPacket(
        code=pyrad_packet.AccessRequest,
        id=3,
        secret=b"udp-secret-of-this-client",
        dict=pyrad_dictionary(),
    )
    wrong["User-Name"] = name
    wrong.add_message_authenticator()
    status = pyrad_packet.AuthPacket(
        code=pyrad_packet.StatusServer, id=4, secret=b"radsec", dict=pyrad_dictionary()
    )
    status.add_message_authenticator()
    with RadsecSocket(radsec_port(lab), pki.ca, certificate) as gateway:
        gateway.send(wrong.RequestPacket() + status.RequestPacket())
        # Only the Status-Server is answered: the request signed with the UDP secret is not.
        assert answer_of(status, gateway.receive()).id == 4
    assert (
        lab.bridge.metric("openmfa_radius_dropped_total", {"reason": "bad-message-authenticator"})
        == dropped + 1
    )


def test_a_held_push_is_answered_on_its_connection(
    lab: RadiusLab, pki: Pki, pool: ThreadPoolExecutor, request: pytest.FixtureRequest
) -> None:
    name = name_of(request)
    certificate = pki.gateway()
    radsec_client(lab, name, certificate, mode="push", primary="none")
    device = lab.user(name)
    held = request_packet(name, identifier=40)
    status = pyrad_packet.AuthPacket(
        code=pyrad_packet.StatusServer, id=41, secret=b"radsec", dict=pyrad_dictionary()
    )
    status.add_message_authenticator()
    with RadsecSocket(radsec_port(lab), pki.ca, certificate, timeout=30) as gateway:
        gateway.send(held.RequestPacket())
        wait_for(lambda: len(device.pending()) == 1, 10, "the push to reach the phone")
        # The connection stays usable while the push is held: Status-Server is answered first.
        gateway.send(status.RequestPacket())
        assert answer_of(status, gateway.receive()).id == 41
        device.answer(str(device.pending()[0]["id"]), "approve")
        assert answer_of(held, gateway.receive()).code == pyrad_packet.AccessAccept


def test_unbinding_a_certificate_closes_its_open_connection(
    lab: RadiusLab, pki: Pki, request: pytest.FixtureRequest
) -> None:
    """Removing a client (or its certificate) must not leave an established connection
    serving it with the settings it had."""
    from tests.support.api import ADMIN

    name = name_of(request)
    certificate = pki.gateway()
    radsec_client(lab, name, certificate)
    status = pyrad_packet.AuthPacket(
        code=pyrad_packet.StatusServer, id=9, secret=b"radsec", dict=pyrad_dictionary()
    )
    status.add_message_authenticator()
    with RadsecSocket(radsec_port(lab), pki.ca, certificate) as gateway:
        gateway.send(status.RequestPacket())
        assert answer_of(status, gateway.receive()).id == 9
        service = lab.api.services.radius_clients
        lab.api.run(service.remove(ADMIN, name))
        revision = lab.api.run(service.revision())
        wait_for(lambda: lab.bridge.revision == revision, 10, "the bridge to drop the client")
        assert gateway.closed_by_peer()
    lab._clients.discard(name)


def test_a_certificate_bound_to_no_client_is_closed_unread_and_audited(
    lab: RadiusLab, pki: Pki
) -> None:
    stranger = pki.gateway()  # right CA, but no client holds its fingerprint
    status = pyrad_packet.AuthPacket(
        code=pyrad_packet.StatusServer, id=1, secret=b"radsec", dict=pyrad_dictionary()
    )
    status.add_message_authenticator()
    before = metric(lab, "accepted")
    try:
        gateway = RadsecSocket(radsec_port(lab), pki.ca, stranger)
    except (ssl.SSLError, ConnectionError):
        pass  # closed during the handshake (TLS 1.3 may report it here): also no connection
    else:
        with gateway:
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                gateway.send(status.RequestPacket())
            assert gateway.closed_by_peer()
    assert metric(lab, "accepted") == before
    wait_for(
        lambda: any(stranger.fingerprint in row.detail for row in refusals(lab)),
        10,
        "the refused certificate to be audited",
    )


def test_no_client_certificate_no_connection(lab: RadiusLab, pki: Pki) -> None:
    refused = metric(lab, "refused")

    def connect_without_certificate() -> None:
        with RadsecSocket(radsec_port(lab), pki.ca, None) as gateway:
            gateway.send(bytes(20))
            gateway.receive()

    with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
        connect_without_certificate()
    wait_for(lambda: metric(lab, "refused") > refused, 10, "the handshake to be refused")


def test_a_peer_outside_the_clients_addresses_is_refused(
    lab: RadiusLab, pki: Pki, request: pytest.FixtureRequest
) -> None:
    certificate = pki.gateway()
    radsec_client(lab, name_of(request), certificate, addresses=["192.0.2.0/24"])
    before = metric(lab, "accepted")
    try:
        gateway = RadsecSocket(radsec_port(lab), pki.ca, certificate)
    except (ssl.SSLError, ConnectionError):
        pass
    else:
        with gateway:
            assert gateway.closed_by_peer()
    assert metric(lab, "accepted") == before
    wait_for(
        lambda: any(
            certificate.fingerprint in row.detail and "outside" in row.detail
            for row in refusals(lab)
        ),
        10,
        "the refusal to be audited",
    )


def test_udp_datagrams_never_match_a_radsec_only_client(
    lab: RadiusLab, pki: Pki, request: pytest.FixtureRequest
) -> None:
    """A RadSec-only client (no secret of its own) at 127.0.0.0/8 must not capture UDP from
    there: a datagram signed with "radsec" is dropped as coming from an unknown client."""
    name = name_of(request)
    certificate = pki.gateway()
    radsec_client(lab, name, certificate, addresses=["127.0.0.0/8"])
    assert lab.bridge.bridge.core.clients.get(name) is not None
    unknown = lab.bridge.metric("openmfa_radius_dropped_total", {"reason": "unknown-client"})
    status = pyrad_packet.AuthPacket(
        code=pyrad_packet.StatusServer, id=5, secret=b"radsec", dict=pyrad_dictionary()
    )
    status.add_message_authenticator()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.254", 0))
        sock.sendto(status.RequestPacket(), ("127.0.0.1", lab.port))
    wait_for(
        lambda: (
            lab.bridge.metric("openmfa_radius_dropped_total", {"reason": "unknown-client"})
            > unknown
        ),
        10,
        "the datagram to be dropped as from an unknown client",
    )


# -- openmfa run's settings ------------------------------------------------------------------


def test_openmfa_run_binds_radsec_beside_udp(tmp_path: Path, pki: Pki) -> None:
    from backend.config import load_settings
    from backend.errors import ConfigurationError
    from backend.server import _Radius
    from tests.support.freeradius import free_udp_port

    with pytest.raises(ConfigurationError, match="radius_radsec_cert_file"):
        load_settings(home=tmp_path, radius_radsec_listen="127.0.0.1:0")
    with pytest.raises(ConfigurationError, match="radius_radsec_listen"):
        load_settings(home=tmp_path, radius_radsec_listen="not-an-address")
    with pytest.raises(ConfigurationError, match="built-in bridge"):
        load_settings(
            home=tmp_path,
            radius_port=0,
            radius_radsec_listen="127.0.0.1:0",
            radius_radsec_cert_file=pki.server.cert_file,
            radius_radsec_key_file=pki.server.key_file,
            radius_radsec_client_ca_file=pki.ca.ca_file,
        )
    files = {
        "radius_radsec_cert_file": pki.server.cert_file,
        "radius_radsec_key_file": pki.server.key_file,
        "radius_radsec_client_ca_file": pki.ca.ca_file,
    }
    settings = load_settings(
        home=tmp_path,
        radius_host="127.0.0.1",
        radius_port=free_udp_port(),
        radius_radsec_listen="127.0.0.1:0",
        **files,
    )
    radius = _Radius(settings)
    try:
        (sock,) = radius.radsec_sockets.values()
        assert sock.type == socket.SOCK_STREAM
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        radius.close_sockets()
    # A key that does not load stops the start with one clear line, and frees the ports.
    broken = load_settings(
        home=tmp_path,
        radius_host="127.0.0.1",
        radius_port=settings.radius_port,
        radius_radsec_listen="127.0.0.1:0",
        **{**files, "radius_radsec_key_file": pki.ca.ca_file},
    )
    with pytest.raises(ConfigurationError, match="RadSec certificate"):
        _Radius(broken)
    _Radius(settings).close_sockets()  # the UDP port was released


def test_a_stalled_handshake_is_dropped_after_the_handshake_timeout(lab: RadiusLab) -> None:
    """A peer that connects and never says hello holds a slot for the handshake timeout
    (5 s in this lab), not for ever; the refusal is counted and audited."""
    refused = metric(lab, "refused")
    with socket.create_connection(("127.0.0.1", radsec_port(lab)), timeout=30) as raw:
        assert raw.recv(1) == b""  # closed by the bridge
    # The socket closes a moment before the refusal is counted.
    wait_for(lambda: metric(lab, "refused") == refused + 1, 10, "the refusal to be counted")
    wait_for(
        lambda: any("timeout" in row.detail for row in refusals(lab)),
        10,
        "the stalled handshake to be audited",
    )


def test_openmfa_run_serves_radsec_end_to_end(tmp_path: Path, pki: Pki) -> None:
    """The bridge built into `openmfa run`, configured by its settings, a client added with
    `openmfa client add --radsec`, a push approved on the phone over one TLS connection."""
    from tests.support.freeradius import free_udp_port
    from tests.support.process import Cli, ServerProcess, free_port
    from tests.test_radius_bridge_process import enrol, env_for, pending_one

    certificate = pki.gateway()
    port, tcp = free_port(), free_port()
    env = env_for(
        port,
        OPENMFA_RADIUS_HOST="127.0.0.1",
        OPENMFA_RADIUS_PORT=str(free_udp_port()),
        OPENMFA_RADIUS_RADSEC_LISTEN=f"127.0.0.1:{tcp}",
        OPENMFA_RADIUS_RADSEC_CERT_FILE=str(pki.server.cert_file),
        OPENMFA_RADIUS_RADSEC_KEY_FILE=str(pki.server.key_file),
        OPENMFA_RADIUS_RADSEC_CLIENT_CA_FILE=str(pki.ca.ca_file),
    )
    cli = Cli(tmp_path, **env)
    cli("db", "upgrade")
    with ServerProcess(tmp_path, port, env) as server:
        cli("client", "add", "branch", "--radsec", "--cert-fingerprint", certificate.fingerprint)
        device = enrol(cli, "dora")
        held = request_packet("dora", identifier=77)

        status = pyrad_packet.AuthPacket(
            code=pyrad_packet.StatusServer, id=1, secret=b"radsec", dict=pyrad_dictionary()
        )
        status.add_message_authenticator()

        def connect() -> RadsecSocket | None:
            # Until the built-in bridge has read the new client, the connection is refused.
            gateway = RadsecSocket(tcp, pki.ca, certificate, timeout=30)
            try:
                gateway.send(status.RequestPacket())
                answer_of(status, gateway.receive())
            except (ssl.SSLError, ConnectionError, EOFError):
                gateway.close()
                return None
            return gateway

        connected: list[RadsecSocket] = []

        def accepted() -> bool:
            gateway = connect()
            if gateway is not None:
                connected.append(gateway)
            return gateway is not None

        wait_for(accepted, 20, "the built-in bridge to accept the gateway's certificate")
        with connected[0] as gateway:
            gateway.send(held.RequestPacket())
            device.answer(pending_one(device), "approve")
            assert answer_of(held, gateway.receive()).code == pyrad_packet.AccessAccept
        assert "Traceback" not in server.log
