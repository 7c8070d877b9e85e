"""The RADIUS bridge over real UDP, against a live backend over real HTTP.

Gateways are played by Debian's ``radclient`` (sending from 127.0.0.1) and pyrad's client
(bound to other loopback addresses, one per test, so each test has a RADIUS client of its
own). The phone is the reference authenticator. Nothing waits by sleeping: tests wait
(bounded) for what they can observe -- the device's pending list, audit rows, the bridge's
metrics and client-list revision.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pyrad import packet as pyrad_packet
from pyrad.client import Timeout

from backend.authenticator.client import AppClient
from radius_bridge.config import ListenAddress
from radius_bridge.protocol import packet as codec
from tests.support.api import ADMIN
from tests.support.bridge import BridgeThread, RadiusLab, bridge_settings
from tests.support.freeradius import free_udp_port, radclient, radclient_binary
from tests.support.process import free_port, wait_for

needs_radclient = pytest.mark.skipif(
    radclient_binary() is None, reason="radclient not installed (apt-get install freeradius-utils)"
)

SECRET = "bridge-test-secret-0"
PASSWORD = "correct horse battery"
ACCEPT, REJECT, CHALLENGE = (
    pyrad_packet.AccessAccept,
    pyrad_packet.AccessReject,
    pyrad_packet.AccessChallenge,
)
_addresses = itertools.count(2)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadiusLab]:
    with RadiusLab(tmp_path_factory.mktemp("radius-lab")) as running:
        yield running


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    """Gateways waiting for a held answer run here while the test plays the phone."""
    with ThreadPoolExecutor(max_workers=8) as executor:
        yield executor


@pytest.fixture(autouse=True)
def _close_clients(lab: RadiusLab) -> Iterator[None]:
    yield
    lab.close_pyrad_clients()


@pytest.fixture
def source() -> str:
    """A loopback address of this test's own (its RADIUS client's address)."""
    return f"127.0.0.{next(_addresses)}"


def name_of(request: pytest.FixtureRequest) -> str:
    """A user / client name unique to the test (also across its parameters)."""
    name = request.node.name.removeprefix("test_")
    param = name[name.find("[") :].strip("[]") if "[" in name else ""
    return f"{name.split('[')[0][:28]}-{param}".rstrip("-")


# -- helpers --------------------------------------------------------------------------------------


def access_request(
    client: Any,
    user: str,
    password: str | None = None,
    state: bytes | None = None,
    **attributes: Any,
) -> Any:
    request = client.CreateAuthPacket(code=pyrad_packet.AccessRequest, User_Name=user)
    if password is not None:
        request["User-Password"] = request.PwCrypt(password)
    if state is not None:
        request["State"] = state
    for key, value in attributes.items():
        request[key.replace("_", "-")] = value
    return request


def first(reply: Any, name: str) -> Any:
    values = reply.get(name) or [None]
    return values[0]


def one_pending(device: AppClient) -> str:
    """Wait until the phone shows exactly one challenge; its id."""
    wait_for(lambda: len(device.pending()) >= 1, 10, "the push to reach the phone")
    pending = device.pending()
    assert len(pending) == 1, pending
    return str(pending[0]["id"])


def starts(lab: RadiusLab, user: str) -> int:
    """Authentications the backend started for ``user`` (one per push / code challenge)."""
    return len(lab.audit(user, "auth.start"))


def held_until(lab: RadiusLab, count: int) -> None:
    wait_for(lambda: lab.bridge.held >= count, 10, f"{count} request(s) held by the bridge")


def gateway_with_local_password(
    lab: RadiusLab, source: str, request: pytest.FixtureRequest, mode: str, timeout: float = 10
) -> tuple[str, AppClient, Any]:
    """A client of this test's own at ``source`` (``mode``, primary local), its user (named
    after the test, password PASSWORD, enrolled) and a pyrad gateway: (name, phone, gateway)."""
    name = name_of(request)
    lab.client(name, [source], SECRET, mode=mode, primary="local")
    device = lab.user(name, password=PASSWORD)
    return name, device, lab.pyrad(source, SECRET, timeout=timeout)


def status_server(
    lab: RadiusLab, source: str, secret: str, bridge: BridgeThread, timeout: float = 0.5
) -> int | None:
    """Send Status-Server from ``source`` to ``bridge``: the reply code, or None when nothing
    came back (unknown client or wrong secret)."""
    client = lab.pyrad(source, secret, timeout=timeout)
    client.authport = bridge.port()
    try:
        reply = client.SendPacket(client.CreateAuthPacket(code=pyrad_packet.StatusServer))
    except Timeout:
        return None
    return int(reply.code)


# -- push mode ------------------------------------------------------------------------------------


@needs_radclient
def test_push_is_held_until_the_phone_approves(
    lab: RadiusLab, pool: ThreadPoolExecutor, request: pytest.FixtureRequest
) -> None:
    lab.client("radclient", ["127.0.0.1"], SECRET, mode="push", primary="none")
    user = name_of(request)
    device = lab.user(user)
    # RD Gateway via NPS: only User-Name, the password was checked by NPS.
    reply: Future[Any] = pool.submit(radclient, lab.port, SECRET, {"User-Name": user}, timeout=30)
    challenge_id = one_pending(device)
    assert not reply.done()  # held, not answered
    device.answer(challenge_id, "approve")
    answer = reply.result(timeout=30)
    assert answer.code == "Access-Accept"
    assert answer.names[0] == "Message-Authenticator"  # BlastRADIUS: always first
    assert starts(lab, user) == 1
    # The decision is logged and counted.
    assert (
        lab.bridge.metric(
            "openmfa_radius_responses_total", {"client": "radclient", "code": "accept"}
        )
        >= 1
    )


@needs_radclient
def test_push_denied_on_the_phone_is_rejected_with_a_message(
    lab: RadiusLab, pool: ThreadPoolExecutor, request: pytest.FixtureRequest
) -> None:
    lab.client("radclient", ["127.0.0.1"], SECRET, mode="push", primary="none")
    user = name_of(request)
    device = lab.user(user)
    reply = pool.submit(radclient, lab.port, SECRET, {"User-Name": user}, timeout=30)
    device.answer(one_pending(device), "deny")
    answer = reply.result(timeout=30)
    assert answer.code == "Access-Reject"
    assert answer.get("Reply-Message") == "Sign-in denied on your phone"


def test_retransmissions_while_a_push_is_pending_make_one_push_and_one_answer(
    lab: RadiusLab, source: str, request: pytest.FixtureRequest
) -> None:
    lab.client(name_of(request), [source], SECRET, mode="push", primary="none")
    user = name_of(request)
    device = lab.user(user)
    client = lab.pyrad(source, SECRET)
    datagram = access_request(client, user, NAS_Identifier="asa").RequestPacket()
    absorbed = lab.bridge.metric("openmfa_radius_duplicates_total", {"outcome": "absorbed"})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(30)
        # The gateway retransmits the same packet (same Id, same authenticator) while the
        # user reaches for the phone.
        sock.sendto(datagram, ("127.0.0.1", lab.port))
        challenge_id = one_pending(device)
        for _ in range(4):
            sock.sendto(datagram, ("127.0.0.1", lab.port))
        wait_for(
            lambda: (
                lab.bridge.metric("openmfa_radius_duplicates_total", {"outcome": "absorbed"})
                >= absorbed + 4
            ),
            10,
            "the bridge to absorb the four copies",
        )
        assert len(device.pending()) == 1
        assert starts(lab, user) == 1  # exactly one challenge in the backend
        device.answer(challenge_id, "approve")
        answer = sock.recv(4096)
        assert answer[0] == codec.ACCESS_ACCEPT
        assert answer[1] == datagram[1]
        # A copy arriving after the answer gets the same bytes from the cache.
        sock.sendto(datagram, ("127.0.0.1", lab.port))
        assert sock.recv(4096) == answer
    assert starts(lab, user) == 1


def test_a_new_request_for_a_user_with_a_pending_push_joins_it(
    lab: RadiusLab, source: str, pool: ThreadPoolExecutor, request: pytest.FixtureRequest
) -> None:
    lab.client(name_of(request), [source], SECRET, mode="push", primary="none")
    user = name_of(request)
    device = lab.user(user)
    station = {"Calling_Station_Id": "203.0.113.9", "NAS_Identifier": "vpn-1"}
    first_try = pool.submit(
        lab.pyrad(source, SECRET, timeout=30).SendPacket,
        access_request(lab.pyrad(source, SECRET), user, **station),
    )
    challenge_id = one_pending(device)
    # An old AnyConnect resends as a *new* request (new Id and authenticator).
    second_client = lab.pyrad(source, SECRET, timeout=30)
    second_try = pool.submit(
        second_client.SendPacket, access_request(second_client, user, **station)
    )
    held_until(lab, 2)
    assert len(device.pending()) == 1
    device.answer(challenge_id, "approve")
    assert first_try.result(30).code == ACCEPT
    assert second_try.result(30).code == ACCEPT
    assert starts(lab, user) == 1


def test_requests_without_calling_station_id_never_share_a_push(
    lab: RadiusLab, source: str, pool: ThreadPoolExecutor, request: pytest.FixtureRequest
) -> None:
    """Issue 13 finding 4: two Access-Requests for one user, neither with Calling-Station-Id,
    shared one push, and the user's approval accepted the attacker's request too."""
    lab.client(name_of(request), [source], SECRET, mode="push", primary="none")
    user = name_of(request)
    device = lab.user(user)
    users_client = lab.pyrad(source, SECRET, timeout=30)
    users_try = pool.submit(users_client.SendPacket, access_request(users_client, user))
    users_challenge = one_pending(device)
    attackers_client = lab.pyrad(source, SECRET, timeout=30)
    attackers_try = pool.submit(attackers_client.SendPacket, access_request(attackers_client, user))
    wait_for(lambda: len(device.pending()) == 2, 10, "a second push for the second request")
    assert starts(lab, user) == 2
    device.answer(users_challenge, "approve")
    assert users_try.result(30).code == ACCEPT
    # The other request is decided by its own push, which the user denies.
    (attackers_challenge,) = [c["id"] for c in device.pending() if c["id"] != users_challenge]
    device.answer(str(attackers_challenge), "deny")
    assert attackers_try.result(30).code == REJECT


# -- challenge and otp modes ----------------------------------------------------------------------


def test_challenge_mode_with_the_code_from_the_app(
    lab: RadiusLab, source: str, request: pytest.FixtureRequest
) -> None:
    name, device, client = gateway_with_local_password(lab, source, request, "challenge")
    first_round = client.SendPacket(access_request(client, name, PASSWORD))
    assert first_round.code == CHALLENGE
    state = first(first_round, "State")
    assert state is not None
    assert len(state) >= 16
    assert first(first_round, "Reply-Message") == (
        "Approve the sign-in on your phone, or type the code from the app"
    )
    assert len(device.pending()) == 1  # the push went out with the challenge
    second = client.SendPacket(access_request(client, name, device.code(), state=state))
    assert second.code == ACCEPT


def test_challenge_mode_with_an_empty_answer_waits_for_the_push(
    lab: RadiusLab, source: str, pool: ThreadPoolExecutor, request: pytest.FixtureRequest
) -> None:
    name, device, client = gateway_with_local_password(
        lab, source, request, "challenge", timeout=30
    )
    state = first(client.SendPacket(access_request(client, name, PASSWORD)), "State")
    challenge_id = one_pending(device)
    # The user pressed OK with the field empty: the bridge holds it for the phone.
    held = pool.submit(client.SendPacket, access_request(client, name, "", state=state))
    held_until(lab, 1)
    device.answer(challenge_id, "approve")
    assert held.result(30).code == ACCEPT


def test_wrong_code_then_right_code(
    lab: RadiusLab, source: str, request: pytest.FixtureRequest
) -> None:
    name, device, client = gateway_with_local_password(lab, source, request, "challenge")
    state = first(client.SendPacket(access_request(client, name, PASSWORD)), "State")
    right = device.code()
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"
    again = client.SendPacket(access_request(client, name, wrong, state=state))
    assert again.code == CHALLENGE
    assert first(again, "Reply-Message").startswith("Wrong code, try again.")
    new_state = first(again, "State")
    assert new_state != state
    accepted = client.SendPacket(access_request(client, name, right, state=new_state))
    assert accepted.code == ACCEPT


def test_otp_mode_asks_for_the_code(
    lab: RadiusLab, source: str, request: pytest.FixtureRequest
) -> None:
    name, device, client = gateway_with_local_password(lab, source, request, "otp")
    asked = client.SendPacket(access_request(client, name, PASSWORD))
    assert asked.code == CHALLENGE
    assert first(asked, "Reply-Message") == "Type the code from your authenticator app"
    assert device.pending() == []  # otp mode sends no push
    accepted = client.SendPacket(
        access_request(client, name, device.code(), state=first(asked, "State"))
    )
    assert accepted.code == ACCEPT


@pytest.mark.parametrize("mode", ["push", "challenge", "otp"])
def test_password_comma_code_in_one_round_in_every_mode(
    lab: RadiusLab, source: str, mode: str, request: pytest.FixtureRequest
) -> None:
    name, device, client = gateway_with_local_password(lab, source, request, mode)
    answer = client.SendPacket(access_request(client, name, f"{PASSWORD},{device.code()}"))
    assert answer.code == ACCEPT
    assert device.pending() == []  # no push was needed
    wrong_password = client.SendPacket(access_request(client, name, f"nope,{device.code()}"))
    assert wrong_password.code == REJECT


def test_expired_and_replayed_states_are_rejected(
    lab: RadiusLab, source: str, request: pytest.FixtureRequest
) -> None:
    name, device, client = gateway_with_local_password(lab, source, request, "otp")
    state = first(client.SendPacket(access_request(client, name, PASSWORD)), "State")
    assert (
        client.SendPacket(access_request(client, name, device.code(), state=state)).code == ACCEPT
    )
    replayed = client.SendPacket(access_request(client, name, device.code(), state=state))
    assert replayed.code == REJECT
    assert first(replayed, "Reply-Message") == "Sign-in expired or already used. Start again"

    state = first(client.SendPacket(access_request(client, name, PASSWORD)), "State")
    lab.bridge.advance(301)  # States live 300 s
    expired = client.SendPacket(access_request(client, name, device.code(), state=state))
    assert expired.code == REJECT
    assert first(expired, "Reply-Message") == "Sign-in expired or already used. Start again"


# -- refusals -------------------------------------------------------------------------------------


def test_a_blocked_user_is_rejected_at_once_without_a_push(
    lab: RadiusLab, source: str, request: pytest.FixtureRequest
) -> None:
    name = name_of(request)
    lab.client(name, [source], SECRET, mode="push", primary="none")
    device = lab.user(name)
    lab.api.run(lab.api.services.users.set_blocked(ADMIN, name, True, "lost phone"))
    client = lab.pyrad(source, SECRET)
    began = time.monotonic()
    answer = client.SendPacket(access_request(client, name))
    assert time.monotonic() - began < 2  # not held
    assert answer.code == REJECT
    assert first(answer, "Reply-Message") == "Your sign-in is blocked. Contact your help desk"
    assert device.pending() == []
    assert starts(lab, name) == 0


@pytest.mark.parametrize("policy", ["reject", "allow"])
def test_unenrolled_user_per_the_client_policy(
    lab: RadiusLab, source: str, policy: str, request: pytest.FixtureRequest
) -> None:
    name = name_of(request)
    lab.client(name, [source], SECRET, mode="push", primary="local", unenrolled=policy)
    lab.unenrolled_user(name, password=PASSWORD)
    client = lab.pyrad(source, SECRET)
    answer = client.SendPacket(access_request(client, name, PASSWORD))
    if policy == "reject":
        assert answer.code == REJECT
        assert "not set up" in first(answer, "Reply-Message")
        assert lab.audit(name, "radius.unenrolled_allowed") == []
    else:
        assert answer.code == ACCEPT
        wait_for(
            lambda: len(lab.audit(name, "radius.unenrolled_allowed")) == 1,
            10,
            "the bridge's audit row",
        )
    # Whatever the policy, the password still counts.
    assert client.SendPacket(access_request(client, name, "wrong")).code == REJECT


def test_a_user_name_with_a_newline_is_rejected_and_audited(
    lab: RadiusLab, source: str, request: pytest.FixtureRequest
) -> None:
    """Issue 13 finding 8: ``alice\n`` passed the name check as an unknown user, so a
    client with ``unenrolled allow`` answered Access-Accept without a second factor."""
    name = name_of(request)
    lab.client(name, [source], SECRET, mode="push", primary="none", unenrolled="allow")
    device = lab.user(name)
    client = lab.pyrad(source, SECRET)
    answer = client.SendPacket(access_request(client, name + "\n"))
    assert answer.code == REJECT
    assert device.pending() == []
    wait_for(
        lambda: len(lab.audit(name + "\\n", "radius.invalid_attribute")) == 1,
        10,
        "the bridge's audit row",
    )
    (row,) = lab.audit(name + "\\n", "radius.invalid_attribute")
    assert row.result == "reject"
    assert "User-Name holds a control character" in row.detail
    assert lab.audit(name, "radius.unenrolled_allowed") == []


def test_exempt_user_skips_the_second_factor_and_is_audited(
    lab: RadiusLab, source: str, request: pytest.FixtureRequest
) -> None:
    name = name_of(request)
    lab.client(name, [source], SECRET, mode="push", primary="local", exempt_users=[name])
    device = lab.user(name, password=PASSWORD)
    client = lab.pyrad(source, SECRET)
    assert client.SendPacket(access_request(client, name, PASSWORD)).code == ACCEPT
    assert device.pending() == []
    wait_for(lambda: len(lab.audit(name, "radius.exempt_user")) == 1, 10, "the audit row")


# -- packets the bridge must not answer -----------------------------------------------------------


@needs_radclient
def test_missing_and_wrong_message_authenticator_are_dropped(lab: RadiusLab) -> None:
    lab.client("radclient", ["127.0.0.1"], SECRET, mode="push", primary="none")
    missing = lab.bridge.metric(
        "openmfa_radius_dropped_total", {"reason": "missing-message-authenticator"}
    )
    wrong = lab.bridge.metric("openmfa_radius_wrong_secret_total", {"client": "radclient"})
    unsigned = radclient(
        lab.port, SECRET, {"User-Name": "nobody"}, timeout=0.5, message_authenticator=False
    )
    assert unsigned.code is None
    assert (
        lab.bridge.metric(
            "openmfa_radius_dropped_total", {"reason": "missing-message-authenticator"}
        )
        == missing + 1
    )
    # Another secret: the Message-Authenticator does not verify. Dropped and counted.
    forged = radclient(lab.port, "not-the-secret", {"User-Name": "nobody"}, timeout=0.5)
    assert forged.code is None
    assert (
        lab.bridge.metric("openmfa_radius_wrong_secret_total", {"client": "radclient"}) == wrong + 1
    )
    # The client itself still works.
    assert radclient(lab.port, SECRET, {}, code="status").code == "Access-Accept"


def test_a_message_authenticator_tampered_in_transit_is_dropped(
    lab: RadiusLab, source: str, request: pytest.FixtureRequest
) -> None:
    lab.client(name_of(request), [source], SECRET, mode="push", primary="none")
    client = lab.pyrad(source, SECRET)
    datagram = bytearray(access_request(client, "mallory").RequestPacket())
    datagram[-1] ^= 0x01  # pyrad puts the Message-Authenticator last
    before = lab.bridge.metric(
        "openmfa_radius_dropped_total", {"reason": "bad-message-authenticator"}
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.sendto(bytes(datagram), ("127.0.0.1", lab.port))
        wait_for(
            lambda: (
                lab.bridge.metric(
                    "openmfa_radius_dropped_total", {"reason": "bad-message-authenticator"}
                )
                == before + 1
            ),
            10,
            "the drop to be counted",
        )
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(4096)


def test_unknown_clients_are_dropped_silently(lab: RadiusLab, source: str) -> None:
    # No client is configured for this address.
    before = lab.bridge.metric("openmfa_radius_dropped_total", {"reason": "unknown-client"})
    client = lab.pyrad(source, SECRET, timeout=0.3)
    with pytest.raises(Timeout):
        client.SendPacket(access_request(client, "nobody"))
    assert lab.bridge.metric("openmfa_radius_dropped_total", {"reason": "unknown-client"}) == (
        before + 1
    )


@needs_radclient
def test_garbage_datagrams_never_crash_the_bridge(lab: RadiusLab) -> None:
    lab.client("radclient", ["127.0.0.1"], SECRET, mode="push", primary="none")
    malformed = lab.bridge.metric("openmfa_radius_dropped_total", {"reason": "malformed"})
    rng = random.Random(4)
    garbage = [b"", b"\x01", os.urandom(19), b"\x01\x00\x00\x14" + bytes(16) + b"\x01\x00"]
    garbage += [
        bytes(rng.getrandbits(8) for _ in range(rng.randrange(20, 300))) for _ in range(200)
    ]
    # Headers that claim lengths the datagram does not have, attributes of length 0 and 1.
    garbage += [b"\x01\x07\x10\x00" + bytes(16), b"\x01\x07\x00\x16" + bytes(16) + b"\x02\x00"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in garbage:
            sock.sendto(datagram, ("127.0.0.1", lab.port))
    # Everything was looked at (and dropped); the bridge still answers.
    wait_for(
        lambda: (
            lab.bridge.metric("openmfa_radius_dropped_total", {"reason": "malformed"}) > malformed
        ),
        10,
        "the malformed datagrams to be counted",
    )
    assert radclient(lab.port, SECRET, {}, code="status").code == "Access-Accept"


# -- protocol details -----------------------------------------------------------------------------


@needs_radclient
def test_status_server_is_answered_per_client(lab: RadiusLab) -> None:
    lab.client("radclient", ["127.0.0.1"], SECRET, mode="push", primary="none")
    answer = radclient(lab.port, SECRET, {}, code="status")
    assert answer.code == "Access-Accept"
    assert answer.names == ["Message-Authenticator"]
    assert radclient(lab.port, "other-secret", {}, code="status", timeout=0.5).code is None


def test_proxy_state_is_copied_back_in_order(
    lab: RadiusLab, source: str, request: pytest.FixtureRequest
) -> None:
    name, device, client = gateway_with_local_password(lab, source, request, "otp")
    packet = access_request(client, name, f"{PASSWORD},{device.code()}")
    packet.AddAttribute("Proxy-State", b"nps-1")
    packet.AddAttribute("Proxy-State", b"\x00\xffsecond")
    answer = client.SendPacket(packet)
    assert answer.code == ACCEPT
    assert answer["Proxy-State"] == [b"nps-1", b"\x00\xffsecond"]


def test_client_changes_apply_without_a_restart(
    lab: RadiusLab, source: str, request: pytest.FixtureRequest
) -> None:
    name = name_of(request)
    lab.client(name, [source], SECRET, mode="push", primary="local")
    device = lab.user(name, password=PASSWORD)
    old = lab.pyrad(source, SECRET, timeout=0.5)
    # Push mode: the code in the password field still works in one round.
    assert old.SendPacket(access_request(old, name, f"{PASSWORD},{device.code()}")).code == ACCEPT
    # The operator rotates the secret and switches to otp mode.
    lab.client(name, [source], "rotated-secret-1", mode="otp", primary="local")
    with pytest.raises(Timeout):  # the old secret is now a wrong secret: dropped
        old.SendPacket(access_request(old, name, PASSWORD))
    new = lab.pyrad(source, "rotated-secret-1")
    asked = new.SendPacket(access_request(new, name, PASSWORD))
    assert asked.code == CHALLENGE  # otp mode now
    # Removing the client: its packets are from an unknown client.
    lab.api.run(lab.api.services.radius_clients.remove(ADMIN, name))
    revision = lab.api.run(lab.api.services.radius_clients.revision())
    wait_for(lambda: lab.bridge.revision == revision, 10, "the bridge to drop the client")
    gone = lab.pyrad(source, "rotated-secret-1", timeout=0.3)
    with pytest.raises(Timeout):
        gone.SendPacket(access_request(gone, name, PASSWORD))


# -- shutdown and overload ------------------------------------------------------------------------


def test_a_restarted_bridge_rejoins_the_held_push_on_retransmission(
    lab: RadiusLab, source: str, request: pytest.FixtureRequest
) -> None:
    """Held requests are not answered on shutdown; the gateway's retransmission reaches the
    restarted bridge, carries the same authenticator (so the same idempotency key), and
    rejoins the authentication the phone answered meanwhile: one push, one Accept."""
    name = name_of(request)
    lab.client(name, [source], SECRET, mode="push", primary="none")
    device = lab.user(name)
    udp = free_udp_port()
    settings = bridge_settings(lab.api.url, lab.token, listen=("127.0.0.1",))
    settings = replace(settings, listen=(ListenAddress("127.0.0.1", udp),))
    datagram = access_request(lab.pyrad(source, SECRET), name).RequestPacket()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(0.5)
        with BridgeThread(settings) as first:
            sock.sendto(datagram, ("127.0.0.1", udp))
            challenge_id = one_pending(device)
            wait_for(lambda: first.held == 1, 10, "the request to be held")
            first.stop()
            assert first.held == 0
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # left unanswered: no reject, no fail-safe accept
        device.answer(challenge_id, "approve")
        with BridgeThread(settings) as second:
            sock.settimeout(10)
            sock.sendto(datagram, ("127.0.0.1", udp))  # the gateway retransmits
            answer = sock.recv(4096)
            assert (
                second.metric("openmfa_radius_responses_total", {"client": name, "code": "accept"})
                == 1
            )
    assert answer[0] == codec.ACCESS_ACCEPT
    assert starts(lab, name) == 1
    assert device.pending() == []


def test_requests_beyond_the_limit_are_dropped_not_queued(
    lab: RadiusLab, source: str, pool: ThreadPoolExecutor, request: pytest.FixtureRequest
) -> None:
    name = name_of(request)
    lab.client(name, [source], SECRET, mode="push", primary="none")
    device = lab.user(name)
    other = f"{name}-2"
    lab.user(other)
    settings = bridge_settings(lab.api.url, lab.token, max_held=1)
    with BridgeThread(settings) as small:
        client = lab.pyrad(source, SECRET, timeout=30)
        client.authport = small.port()
        held = pool.submit(client.SendPacket, access_request(client, name))
        wait_for(lambda: small.held == 1, 10, "the first request to be held")
        extra = lab.pyrad(source, SECRET, timeout=0.3)
        extra.authport = small.port()
        with pytest.raises(Timeout):  # dropped: the gateway will retransmit
            extra.SendPacket(access_request(extra, other))
        assert small.metric("openmfa_radius_dropped_total", {"reason": "overload"}) == 1
        assert starts(lab, other) == 0
        device.answer(one_pending(device), "approve")
        assert held.result(30).code == ACCEPT
        # Room again: the retransmission is served.
        retry = lab.pyrad(source, SECRET, timeout=5)
        retry.authport = small.port()
        assert retry.SendPacket(access_request(retry, f"{name}-3")).code == REJECT  # unknown


def test_a_clients_file_is_read_again_when_it_changes(
    lab: RadiusLab, source: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Standalone with --clients-file: edits apply within seconds; a broken file keeps the
    last good list (and is counted), a fixed one is picked up."""
    name = name_of(request)
    path = tmp_path / "clients.json"

    def write(revision: str, secret: str) -> None:
        entry = {"name": name, "addresses": [source], "secret": secret, "mode": "push"}
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"revision": revision, "clients": [entry]}))
        os.replace(temporary, path)  # as an editor or config tool saves it: atomically

    def answer(secret: str) -> int | None:
        return status_server(lab, source, secret, bridge, timeout=0.3)

    write("f1", "file-secret-1")
    settings = replace(
        bridge_settings(lab.api.url, lab.token), clients_file=path, refresh_seconds=0.1
    )
    with BridgeThread(settings) as bridge:
        assert bridge.revision == "f1"
        assert answer("file-secret-1") == ACCEPT
        write("f2", "file-secret-2")
        wait_for(lambda: bridge.revision == "f2", 10, "the bridge to read the new file")
        assert answer("file-secret-1") is None  # now a wrong secret
        assert answer("file-secret-2") == ACCEPT

        failures = bridge.metric("openmfa_radius_client_refresh_failures_total")
        path.write_text("{ not json")
        wait_for(
            lambda: bridge.metric("openmfa_radius_client_refresh_failures_total") > failures,
            10,
            "the broken file to be noticed",
        )
        assert bridge.revision == "f2"
        assert answer("file-secret-2") == ACCEPT  # the last good list stays
        write("f3", "file-secret-3")
        wait_for(lambda: bridge.revision == "f3", 10, "the fixed file to be read")


def test_a_bridge_restarted_while_the_backend_is_down_serves_from_its_clients_cache(
    lab: RadiusLab, source: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """--clients-cache: the list fetched from the backend is kept (sealed) on disk; a bridge
    that starts while the backend is down serves from it instead of dropping everything."""
    name = name_of(request)
    secret = f"{name}-cache-secret"
    lab.client(name, [source], secret)
    cache = tmp_path / "clients.cache"

    with BridgeThread(bridge_settings(lab.api.url, lab.token, clients_cache=cache)) as bridge:
        assert status_server(lab, source, secret, bridge) == ACCEPT
        revision = bridge.revision
    assert cache.stat().st_mode & 0o777 == 0o600
    assert secret.encode() not in cache.read_bytes()  # sealed, not a copy of the secrets

    unreachable = f"http://127.0.0.1:{free_port()}"
    with BridgeThread(bridge_settings(unreachable, lab.token, clients_cache=cache)) as bridge:
        assert bridge.revision == revision
        assert status_server(lab, source, secret, bridge) == ACCEPT

    # The key comes from the token: a cache saved under another token is not trusted.
    with BridgeThread(bridge_settings(unreachable, "omfa_other", clients_cache=cache)) as bridge:
        assert bridge.revision is None
        assert status_server(lab, source, secret, bridge) is None


# -- a revoked bridge token (issue 13 finding 15) -------------------------------------------------


def pyrad_to(lab: RadiusLab, bridge: BridgeThread, source: str, secret: str) -> Any:
    client = lab.pyrad(source, secret, timeout=10)
    client.authport = bridge.port()
    return client


def test_a_revoked_bridge_token_rejects_everyone_whatever_the_failmode(
    lab: RadiusLab, source: str, request: pytest.FixtureRequest
) -> None:
    """A 401 was taken as "backend down": with failmode safe, alice and an unknown user got
    Access-Accept as soon as the bridge's token was revoked."""
    name = name_of(request)
    exempt = f"{name}-exempt"
    lab.client(
        name,
        [source],
        SECRET,
        mode="push",
        primary="none",
        failmode="safe",
        unenrolled="allow",
        exempt_users=[exempt],
    )
    device = lab.user(name)
    token = lab.api.run(lab.api.services.tokens.create(ADMIN, name, scope="bridge"))
    with BridgeThread(bridge_settings(lab.api.url, token)) as bridge:
        wait_for(lambda: bridge.revision == lab.bridge.revision, 10, "the client list")
        lab.api.run(lab.api.services.tokens.revoke(ADMIN, name))
        for user in (name, f"nobody-{name}", exempt):
            client = pyrad_to(lab, bridge, source, SECRET)
            assert client.SendPacket(access_request(client, user)).code == REJECT, user
        assert device.pending() == []
        assert lab.audit(name, "radius.failsafe_accept") == []
        assert lab.audit(f"nobody-{name}", "radius.unenrolled_allowed") == []


def test_a_bridge_restarted_with_a_revoked_token_does_not_serve_its_cache(
    lab: RadiusLab, source: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from radius_bridge.runner import StartupError

    name = name_of(request)
    lab.client(name, [source], SECRET, mode="push", primary="none", failmode="safe")
    token = lab.api.run(lab.api.services.tokens.create(ADMIN, name, scope="bridge"))
    cache = tmp_path / "clients.cache"
    settings = bridge_settings(lab.api.url, token, clients_cache=cache)
    with BridgeThread(settings) as bridge:
        assert status_server(lab, source, SECRET, bridge) == ACCEPT
    assert cache.exists()
    lab.api.run(lab.api.services.tokens.revoke(ADMIN, name))
    with pytest.raises(StartupError, match="refused this bridge's token"), BridgeThread(settings):
        pass
    assert not cache.exists()  # the revoked token's cache is gone for good


# -- fair shares of the held pool (issue 13 finding 17) ----------------------------------------


def test_one_client_flooding_cannot_take_every_held_slot(
    lab: RadiusLab, pool: ThreadPoolExecutor, request: pytest.FixtureRequest
) -> None:
    """With one global --max-held, a single client holding requests starved every other
    gateway: their requests were dropped as "overload" until the flood stopped."""
    name = name_of(request)
    flooder, other = f"127.0.0.{next(_addresses)}", f"127.0.0.{next(_addresses)}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as black_hole:
        # An upstream RADIUS server that never answers: each request the flooding client
        # sends is held for the upstream's timeout, without any user or push.
        black_hole.bind(("127.0.0.1", 0))
        lab.client(
            f"{name}-a",
            [flooder],
            SECRET,
            mode="push",
            primary="radius",
            upstream_host="127.0.0.1",
            upstream_port=black_hole.getsockname()[1],
            upstream_secret="upstream-secret-0",
            upstream_timeout=20.0,
        )
        lab.client(f"{name}-b", [other], SECRET, mode="push", primary="none")
        device = lab.user(name)
        token = lab.api.run(lab.api.services.tokens.create(ADMIN, name, scope="bridge"))
        with BridgeThread(bridge_settings(lab.api.url, token, max_held=8)) as bridge:
            wait_for(lambda: bridge.revision == lab.bridge.revision, 10, "the client list")
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.bind((flooder, 0))
            with sender:
                for number in range(40):
                    attributes = codec.encode_attribute(codec.USER_NAME, f"flood{number}".encode())
                    packet = codec.encode_request(
                        number, SECRET.encode(), attributes, password=b"guess"
                    )
                    sender.sendto(packet, ("127.0.0.1", bridge.port()))
                wait_for(
                    lambda: (
                        bridge.metric("openmfa_radius_dropped_total", {"reason": "overload"})
                        + bridge.held
                        >= 40
                    ),
                    10,
                    "the flood to be held or dropped",
                )
                assert bridge.held == 6  # three quarters of 8: the rest stays for others
                client = pyrad_to(lab, bridge, other, SECRET)
                client.timeout = 30
                answer = pool.submit(client.SendPacket, access_request(client, name))
                device.answer(one_pending(device), "approve")
                assert answer.result(30).code == ACCEPT
            bridge.stop()


# -- a client added a moment ago ------------------------------------------------------------------


def test_a_client_added_a_moment_ago_is_answered_at_once(
    lab: RadiusLab, source: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """The bridge learnt of a new client only at its next periodic refresh: the gateway's
    first request, sent right after `openmfa client add`, was dropped as "unknown client"."""
    name = name_of(request)
    token = lab.api.run(lab.api.services.tokens.create(ADMIN, name, scope="bridge"))
    caplog.set_level(logging.WARNING, "openmfa.radius")
    stranger = f"127.0.0.{next(_addresses)}"
    with BridgeThread(bridge_settings(lab.api.url, token, refresh_seconds=3600)) as bridge:
        # A stranger: the list is re-read, the datagram still dropped, and the log says so
        # (once; the recheck does not swallow the line).
        assert status_server(lab, stranger, SECRET, bridge, timeout=0.5) is None
        wait_for(
            lambda: any(
                f"unknown client {stranger}" in record.getMessage() for record in caplog.records
            ),
            5,
            "the log line about the unknown client",
        )
        # Added behind the bridge's back (no refresh for an hour): the first datagram from
        # the new address makes the bridge look again before it drops anything.
        from backend.domain.radius import ClientChanges

        lab.api.run(
            lab.api.services.radius_clients.add(
                ADMIN, name, ClientChanges(addresses=[source], secret=SECRET)
            )
        )
        bridge.advance(1.0)  # the recheck is rate-limited to one a second (bridge clock)
        assert status_server(lab, source, SECRET, bridge, timeout=3) == ACCEPT
        # Within the second, strangers cost nothing more: dropped at once.
        assert status_server(lab, stranger, SECRET, bridge, timeout=0.3) is None
        assert bridge.metric("openmfa_radius_dropped_total", {"reason": "unknown-client"}) == 2
