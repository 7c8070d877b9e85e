"""The bridge next to FreeRADIUS 3.2, both ways an operator deploys it:

* FreeRADIUS as the **upstream** primary authenticator (``primary radius``, the place NPS
  takes with Active Directory): what it grants (Class, Filter-Id, vendor attributes) must
  reach the gateway on the final Access-Accept, also after a challenge round;
* FreeRADIUS as a **proxy in front of** the bridge (the way NPS forwards to the MFA
  server), with a push held open for the phone behind it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pyrad import packet as pyrad_packet

from tests.support.bridge import RadiusLab
from tests.support.freeradius import FreeRadius, free_udp_port, radclient, unavailable_reason
from tests.support.process import wait_for

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")

UPSTREAM_SECRET = "upstream-secret-9"
BRIDGE_SECRET = "bridge-secret-9"
_sources = itertools.count(20)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadiusLab]:
    with RadiusLab(tmp_path_factory.mktemp("radius-fr")) as running:
        yield running


@pytest.fixture(autouse=True)
def _close_clients(lab: RadiusLab) -> Iterator[None]:
    yield
    lab.close_pyrad_clients()


def request(client: Any, user: str, password: str, state: bytes | None = None) -> Any:
    packet = client.CreateAuthPacket(code=pyrad_packet.AccessRequest, User_Name=user)
    packet["User-Password"] = packet.PwCrypt(password)
    if state is not None:
        packet["State"] = state
    return packet


def test_upstream_attributes_reach_the_final_accept_after_a_challenge(
    lab: RadiusLab, tmp_path: Path
) -> None:
    upstream_port = free_udp_port()
    source = f"127.0.0.{next(_sources)}"
    with FreeRadius.upstream(
        upstream_port,
        # The upstream checks the name as the gateway sent it, domain and all (as NPS does
        # against Active Directory); OpenMFA knows the user as plain "frank".
        users={"CONTOSO\\frank": "ad-password"},
        reply=[("Class", "vpn-staff"), ("Filter-Id", "staff-acl")],
        user_reply={"CONTOSO\\frank": [("Cisco-AVPair", "shell:priv-lvl=15")]},
        secret=UPSTREAM_SECRET,
        directory=tmp_path / "upstream",
    ) as upstream:
        lab.client(
            "asa-fr",
            [source],
            BRIDGE_SECRET,
            mode="challenge",
            primary="radius",
            upstream_host="127.0.0.1",
            upstream_port=upstream_port,
            upstream_secret=UPSTREAM_SECRET,
            upstream_timeout=5.0,
            reply_attributes=["Session-Timeout=3600"],
        )
        device = lab.user("frank")
        client = lab.pyrad(source, BRIDGE_SECRET)

        # A wrong AD password: rejected by the upstream, no push, no attributes.
        wrong = client.SendPacket(request(client, "CONTOSO\\frank", "guess"))
        assert wrong.code == pyrad_packet.AccessReject
        assert "Class" not in wrong
        assert "Filter-Id" not in wrong
        assert device.pending() == []

        challenge = client.SendPacket(request(client, "CONTOSO\\frank", "ad-password"))
        assert challenge.code == pyrad_packet.AccessChallenge
        assert "Class" not in challenge  # granted only on the final Accept
        state = challenge["State"][0]
        accept = client.SendPacket(request(client, "CONTOSO\\frank", device.code(), state))
        assert accept.code == pyrad_packet.AccessAccept
        assert accept["Class"] == [b"vpn-staff"]
        assert accept["Filter-Id"] == ["staff-acl"]
        assert accept["Cisco-AVPair"] == ["shell:priv-lvl=15"]
        assert accept["Session-Timeout"] == [3600]  # the client's own reply attribute
        assert "Login OK" in upstream.log


def test_upstream_down_is_a_rejection_within_its_timeout(lab: RadiusLab) -> None:
    source = f"127.0.0.{next(_sources)}"
    dead_port = free_udp_port()  # nothing listens: ICMP port unreachable, then the timeout
    lab.client(
        "asa-dead",
        [source],
        BRIDGE_SECRET,
        mode="push",
        primary="radius",
        upstream_host="127.0.0.1",
        upstream_port=dead_port,
        upstream_secret=UPSTREAM_SECRET,
        upstream_timeout=1.0,
        failmode="safe",  # the failmode covers the second factor, never the password
    )
    lab.user("gina")
    client = lab.pyrad(source, BRIDGE_SECRET)
    answer = client.SendPacket(request(client, "gina", "whatever"))
    assert answer.code == pyrad_packet.AccessReject


def test_freeradius_proxy_in_front_of_the_bridge_with_a_held_push(
    lab: RadiusLab, tmp_path: Path
) -> None:
    # FreeRADIUS forwards from 127.0.0.1 with the bridge's secret, like NPS with a remote
    # RADIUS server group; the gateway talks to FreeRADIUS with its own secret.
    lab.client("nps-like", ["127.0.0.1"], BRIDGE_SECRET, mode="push", primary="none")
    device = lab.user("henry")
    proxy_port = free_udp_port()
    with (
        FreeRadius.proxy(
            proxy_port,
            home=("127.0.0.1", lab.port),
            secret_in="gateway-secret",
            secret_home=BRIDGE_SECRET,
            response_window=60,
            directory=tmp_path / "proxy",
        ),
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        reply = pool.submit(
            radclient, proxy_port, "gateway-secret", {"User-Name": "henry"}, timeout=40
        )
        wait_for(lambda: len(device.pending()) == 1, 15, "the push behind the proxy")
        wait_for(lambda: lab.bridge.held == 1, 10, "the bridge to hold the request")
        device.answer(device.pending()[0]["id"], "approve")
        answer = reply.result(timeout=40)
        assert answer.code == "Access-Accept"
        assert len(lab.audit("henry", "auth.start")) == 1
