"""MS-CHAPv2 without EAP relayed through the bridge (``primary radius``) to FreeRADIUS's
``mschap`` module, with a push before the final Accept.

The client is ours, written from RFC 2759 (tests/support/mschap.py) and checked here against
the RFC's test vectors; pyrad carries the packets and, being an independent implementation,
decrypts the MS-MPPE keys of the bridge's Accept with the gateway's secret. Those keys must
be the ones RFC 3079 derives on the client side, and MS-CHAP2-Success must carry the
authenticator response the client expects: both prove the relay end to end.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pyrad import packet as pyrad_packet

from tests.support import mschap
from tests.support.bridge import RadiusLab
from tests.support.eap import eap_upstream
from tests.support.freeradius import FreeRadius, free_udp_port, unavailable_reason
from tests.support.process import wait_for

# -- the client against RFC 2759 9.2 and RFC 3079 3.5.3 ---------------------------------------

AUTH_CHALLENGE = bytes.fromhex("5B5D7C7D7B3F2F3E3C2C602132262628")
PEER_CHALLENGE = bytes.fromhex("21402324255E262A28295F2B3A337C7E")
NT_RESPONSE = bytes.fromhex("82309ECD8D708B5EA08FAA3981CD83544233114A3D85D6DF")


def test_md4_rfc1320_vectors() -> None:
    assert mschap.md4(b"").hex() == "31d6cfe0d16ae931b73c59d7e0c089c0"
    assert mschap.md4(b"abc").hex() == "a448017aaf21d8525fc10ae87aa6729d"
    assert mschap.md4(b"1234567890" * 8).hex() == "e33b4ddc9c38f2199c3e7b164fcc0536"


def test_rfc2759_test_vectors() -> None:
    assert mschap.challenge_hash(PEER_CHALLENGE, AUTH_CHALLENGE, "User").hex().upper() == (
        "D02E4386BCE91226"
    )
    assert mschap.nt_password_hash("clientPass").hex().upper() == (
        "44EBBA8D5312B8D611474411F56989AE"
    )
    assert mschap.md4(mschap.nt_password_hash("clientPass")).hex().upper() == (
        "41C00C584BD2D91C4017A2A12FA59F3F"
    )
    assert (
        mschap.generate_nt_response(AUTH_CHALLENGE, PEER_CHALLENGE, "User", "clientPass")
        == NT_RESPONSE
    )
    assert (
        mschap.generate_authenticator_response(
            "clientPass", NT_RESPONSE, PEER_CHALLENGE, AUTH_CHALLENGE, "User"
        )
        == "S=407A5589115FD0D6209F510FE9C04566932CDA56"
    )


def test_rfc3079_test_vectors() -> None:
    master = mschap.master_key("clientPass", NT_RESPONSE)
    assert master.hex().upper() == "FDECE3717A8C838CB388E527AE3CDD31"
    # "SendStartKey128" is the server's send key, which is the client's receive key.
    server_send = mschap.asymmetric_start_key(master, 16, send=True, server=True)
    assert server_send.hex().upper() == "8B7CDC149B993A1BA118CB153F56DCCB"
    send, receive = mschap.client_keys("clientPass", NT_RESPONSE)
    assert receive == server_send
    assert send == mschap.asymmetric_start_key(master, 16, send=False, server=True)
    assert send != receive


# -- through the bridge -----------------------------------------------------------------------

REASON = unavailable_reason()
needs_freeradius = pytest.mark.skipif(REASON is not None, reason=REASON or "")

UPSTREAM_SECRET = "mschap-upstream-secret-1"
GATEWAY_SECRET = "mschap-gateway-secret-1"
PASSWORDS = {
    "CORP\\mia": "mia-pw-1",
    "noah": "noah-pw-2",
    "olga": "olga-pw-3",
    "paul": "p-4",
    "rita": "rita-pw-5",
}
_sources = itertools.count(60)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadiusLab]:
    with RadiusLab(tmp_path_factory.mktemp("radius-mschap")) as running:
        yield running


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreeRadius]:
    port = free_udp_port()
    directory = tmp_path_factory.mktemp("mschap-upstream")
    # debug: the log has one "Received Access-Request" line per request it got.
    with eap_upstream(
        port, directory, users=PASSWORDS, secret=UPSTREAM_SECRET, debug=True
    ) as server:
        yield server


@pytest.fixture(autouse=True)
def _close_clients(lab: RadiusLab) -> Iterator[None]:
    yield
    lab.close_pyrad_clients()


def gateway(lab: RadiusLab, upstream: FreeRadius, name: str, **changes: Any) -> str:
    """A bridge client with primary radius towards ``upstream``; its source address."""
    source = f"127.0.0.{next(_sources)}"
    lab.upstream_client(name, source, GATEWAY_SECRET, upstream, UPSTREAM_SECRET, **changes)
    return source


def mschap_request(
    client: Any, user: str, password: str, ident: int = 7
) -> tuple[Any, bytes, bytes, bytes]:
    """An Access-Request with MS-CHAP-Challenge and MS-CHAP2-Response (no User-Password);
    also the two challenges and the NT-Response, for checking the answer. Like Windows, the
    challenge hash takes the name without its domain (FreeRADIUS's
    ``with_ntdomain_hack``, NPS alike)."""
    auth_challenge, peer_challenge = os.urandom(16), os.urandom(16)
    bare = user.rpartition("\\")[2]
    nt_response = mschap.generate_nt_response(auth_challenge, peer_challenge, bare, password)
    packet = client.CreateAuthPacket(code=pyrad_packet.AccessRequest, User_Name=user)
    packet["NAS-Identifier"] = "rras-test"
    packet["MS-CHAP-Challenge"] = auth_challenge
    packet["MS-CHAP2-Response"] = mschap.ms_chap2_response(ident, peer_challenge, nt_response)
    return packet, auth_challenge, peer_challenge, nt_response


def upstream_requests(upstream: FreeRadius) -> int:
    return len(re.findall(r"Received Access-Request Id", upstream.log))


@needs_freeradius
def test_approved_mschapv2_gets_success_and_reencrypted_keys(
    lab: RadiusLab, upstream: FreeRadius
) -> None:
    source = gateway(lab, upstream, "rras-ok")
    phone = lab.user("mia")  # the gateway sends CORP\mia; the bridge strips the domain
    client = lab.pyrad(source, GATEWAY_SECRET, timeout=30)
    user, password = "CORP\\mia", PASSWORDS["CORP\\mia"]
    packet, auth_challenge, peer_challenge, nt_response = mschap_request(client, user, password)
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(client.SendPacket, packet)
        wait_for(lambda: len(phone.pending()) == 1, 15, "the push")
        phone.answer(phone.pending()[0]["id"], "approve")
        reply = running.result(timeout=30)
    assert reply.code == pyrad_packet.AccessAccept
    success = reply["MS-CHAP2-Success"][0]
    assert success[0] == 7  # the Ident of our response
    expected = mschap.generate_authenticator_response(
        password, nt_response, peer_challenge, auth_challenge, "mia"
    )
    assert success[1:43].decode() == expected
    # pyrad decrypts the keys with the gateway's secret and our Request Authenticator.
    send, receive = mschap.client_keys(password, nt_response)
    assert reply["MS-MPPE-Send-Key"] == [receive]  # the NAS's send key: the client's receive
    assert reply["MS-MPPE-Recv-Key"] == [send]


@needs_freeradius
def test_wrong_password_relays_the_upstreams_ms_chap_error(
    lab: RadiusLab, upstream: FreeRadius
) -> None:
    source = gateway(lab, upstream, "rras-wrong")
    phone = lab.user("noah")
    client = lab.pyrad(source, GATEWAY_SECRET)
    packet, *_ = mschap_request(client, "noah", "not-the-password")
    reply = client.SendPacket(packet)
    assert reply.code == pyrad_packet.AccessReject
    error = reply["MS-CHAP-Error"][0]
    assert "E=691" in error  # FreeRADIUS's own error, relayed as it came
    assert phone.pending() == []
    assert lab.audit("noah", "auth.start") == []


@needs_freeradius
def test_denied_push_is_a_reject_with_ms_chap_error(lab: RadiusLab, upstream: FreeRadius) -> None:
    source = gateway(lab, upstream, "rras-deny")
    phone = lab.user("olga")
    client = lab.pyrad(source, GATEWAY_SECRET, timeout=30)
    packet, *_ = mschap_request(client, "olga", PASSWORDS["olga"], ident=9)
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(client.SendPacket, packet)
        wait_for(lambda: len(phone.pending()) == 1, 15, "the push")
        phone.answer(phone.pending()[0]["id"], "deny")
        reply = running.result(timeout=30)
    assert reply.code == pyrad_packet.AccessReject
    assert "MS-MPPE-Send-Key" not in reply
    assert "MS-CHAP2-Success" not in reply
    error = reply["MS-CHAP-Error"][0]
    assert error.startswith("\t") or "E=691 R=0" in error  # Ident 9, then the text
    assert "denied" in error


@needs_freeradius
def test_retransmissions_reach_the_upstream_once_and_push_once(
    lab: RadiusLab, upstream: FreeRadius
) -> None:
    source = gateway(lab, upstream, "rras-retry")
    phone = lab.user("paul")
    client = lab.pyrad(source, GATEWAY_SECRET)
    packet, *_ = mschap_request(client, "paul", PASSWORDS["paul"])
    datagram = packet.RequestPacket()
    before = upstream_requests(upstream)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(20)
        for _ in range(3):  # the gateway retransmits the same request while the push waits
            sock.sendto(datagram, ("127.0.0.1", lab.port))
        wait_for(lambda: len(phone.pending()) == 1, 15, "the push")
        wait_for(lambda: lab.bridge.held == 1, 10, "the request held")
        sock.sendto(datagram, ("127.0.0.1", lab.port))
        phone.answer(phone.pending()[0]["id"], "approve")
        first, _ = sock.recvfrom(4096)
        sock.sendto(datagram, ("127.0.0.1", lab.port))  # after the answer: from the cache
        again, _ = sock.recvfrom(4096)
    assert first[0] == pyrad_packet.AccessAccept
    assert again == first  # byte for byte, the same salts included
    assert upstream_requests(upstream) - before == 1
    assert len(lab.audit("paul", "auth.start")) == 1


@needs_freeradius
def test_relay_needs_primary_radius_and_is_audited(lab: RadiusLab, tmp_path: Path) -> None:
    source = f"127.0.0.{next(_sources)}"
    lab.client("rras-none", [source], GATEWAY_SECRET, mode="push", primary="none")
    phone = lab.user("quinn")
    client = lab.pyrad(source, GATEWAY_SECRET)
    packet, *_ = mschap_request(client, "quinn", "whatever")
    reply = client.SendPacket(packet)
    assert reply.code == pyrad_packet.AccessReject
    assert phone.pending() == []
    wait_for(lambda: bool(lab.audit("quinn", "radius.relay_refused")), 10, "the audit record")


def chap_request(client: Any, user: str, password: str) -> Any:
    """CHAP as RFC 2865 5.3 allows it: no CHAP-Challenge, the Request Authenticator is the
    challenge; CHAP-Password = Ident + MD5(Ident + password + challenge) (RFC 1994)."""
    packet = client.CreateAuthPacket(code=pyrad_packet.AccessRequest, User_Name=user)
    packet.authenticator = packet.CreateAuthenticator()
    ident = 0x42
    digest = hashlib.md5(bytes((ident,)) + password.encode() + packet.authenticator).digest()  # noqa: S324 - CHAP
    packet["CHAP-Password"] = bytes((ident,)) + digest
    packet["NAS-Identifier"] = "chap-gw"
    return packet


@needs_freeradius
def test_chap_is_relayed_with_the_gateways_authenticator_as_challenge(
    lab: RadiusLab, upstream: FreeRadius
) -> None:
    # The upstream hop has another Request Authenticator, so the bridge must send the
    # gateway's along as CHAP-Challenge or the upstream could not check the response.
    source = gateway(lab, upstream, "chap-gw")
    phone = lab.user("rita")
    client = lab.pyrad(source, GATEWAY_SECRET, timeout=30)
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(client.SendPacket, chap_request(client, "rita", PASSWORDS["rita"]))
        wait_for(lambda: len(phone.pending()) == 1, 15, "the push")
        phone.answer(phone.pending()[0]["id"], "approve")
        assert running.result(timeout=30).code == pyrad_packet.AccessAccept
    wrong = client.SendPacket(chap_request(client, "rita", "guess"))
    assert wrong.code == pyrad_packet.AccessReject
    assert len(lab.audit("rita", "auth.start")) == 1
