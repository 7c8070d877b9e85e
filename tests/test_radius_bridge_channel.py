"""A bridge on the wait channel (``--channel auto``, the default) over real UDP and a live
backend: code checks, ``password,code`` and held pushes go over the one WebSocket.

The cut of the channel under held pushes (re-attach within the grace, then the failmode) is
tested with real processes and ``kill -9`` in tests/test_radius_bridge_cut.py, whose
standalone bridge runs with the channel on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pyrad import packet as pyrad_packet

from radius_bridge.channel import BackendChannel
from tests.support.bridge import BridgeThread, RadiusLab, bridge_settings
from tests.support.process import wait_for
from tests.test_radius_bridge import PASSWORD, SECRET, access_request, first

ACCEPT, REJECT, CHALLENGE = (
    pyrad_packet.AccessAccept,
    pyrad_packet.AccessReject,
    pyrad_packet.AccessChallenge,
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadiusLab]:
    with RadiusLab(tmp_path_factory.mktemp("channel-lab")) as running:
        yield running


@pytest.fixture(autouse=True)
def _close_clients(lab: RadiusLab) -> Iterator[None]:
    yield
    lab.close_pyrad_clients()


def channel_of(bridge: BridgeThread) -> BackendChannel:
    channels = bridge.bridge.backend.channels
    assert len(channels) == 1, "the bridge has no wait channel"
    channel = next(iter(channels.values()))
    wait_for(lambda: channel.connected, 10, "the wait channel to open")
    return channel


def test_code_checks_and_password_code_go_over_the_channel(lab: RadiusLab) -> None:
    channel = channel_of(lab.bridge)
    lab.client("otp-gw", ["127.0.0.2"], SECRET, mode="otp", primary="local")
    device = lab.user("olga", password=PASSWORD)
    client = lab.pyrad("127.0.0.2", SECRET)
    before = channel.calls
    answer = client.SendPacket(access_request(client, "olga", f"{PASSWORD},{device.code()}"))
    assert answer.code == ACCEPT
    assert channel.calls - before == 2  # the password, then the code
    wrong = client.SendPacket(access_request(client, "olga", f"nope,{device.code()}"))
    assert wrong.code == REJECT
    asked = client.SendPacket(access_request(client, "olga", PASSWORD))
    assert asked.code == CHALLENGE
    replayed = client.SendPacket(
        access_request(client, "olga", device.code(), state=first(asked, "State"))
    )
    # The code was spent by the first sign-in: "wrong code, try again".
    assert replayed.code == CHALLENGE
    assert first(replayed, "Reply-Message").startswith("Wrong code")
    assert channel.opened == 1
    assert lab.bridge.metric("openmfa_radius_wait_channel_open", {"backend": lab.api.url}) == 1


def test_a_held_push_waits_on_the_channel_and_is_approved(lab: RadiusLab) -> None:
    channel = channel_of(lab.bridge)
    lab.client("push-gw", ["127.0.0.3"], SECRET, mode="push", primary="none")
    device = lab.user("paul")
    client = lab.pyrad("127.0.0.3", SECRET, timeout=30)
    with ThreadPoolExecutor(max_workers=1) as pool:
        reply = pool.submit(client.SendPacket, access_request(client, "paul"))
        wait_for(lambda: channel.watching == 1, 10, "the push to be watched on the channel")
        pending = device.pending()
        assert len(pending) == 1
        held = lab.api.server_services.bus.held()  # type: ignore[attr-defined]
        assert pending[0]["id"] in held
        device.answer(str(pending[0]["id"]), "approve")
        answer: Any = reply.result(timeout=30)
    assert answer.code == ACCEPT
    assert channel.watching == 0


def test_a_backend_without_the_channel_is_used_over_http(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that answers the upgrade with a bare 403 (no such WebSocket route: an older
    backend behind a WebSocket-capable server) is not a refused token: HTTP serves."""
    old = RadiusLab(tmp_path)
    routes = old.api.app.router.routes
    routes[:] = [r for r in routes if getattr(r, "path", "") != "/gateway/v1/channel"]
    caplog.set_level(logging.INFO, "openmfa.radius")
    with old:
        (channel,) = old.bridge.bridge.backend.channels.values()
        wait_for(
            lambda: any(
                "does not serve the wait channel" in r.getMessage() for r in caplog.records
            ),
            10,
            "the bridge to find no channel",
        )
        old.client("old-gw", ["127.0.0.4"], SECRET, mode="otp", primary="local")
        device = old.user("vera", password=PASSWORD)
        client = old.pyrad("127.0.0.4", SECRET)
        try:
            answer = client.SendPacket(
                access_request(client, "vera", f"{PASSWORD},{device.code()}")
            )
        finally:
            old.close_pyrad_clients()
        assert answer.code == ACCEPT
        assert not channel.connected
        assert channel.calls == 0
        assert old.bridge.metric("openmfa_radius_wait_channel_open", {"backend": old.api.url}) == 0
        assert old.bridge.bridge.core.credential_refused is None
    assert not [r for r in caplog.records if "refused the channel's token" in r.getMessage()]


def test_channel_off_keeps_http(lab: RadiusLab) -> None:
    settings = bridge_settings(lab.api.url, lab.token, channel="off")
    with BridgeThread(settings) as bridge:
        assert bridge.bridge.backend.channels == {}
