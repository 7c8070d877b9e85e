"""End to end over real sockets: a gateway starts a push, the privacyIDEA Authenticator (as
tests/support/piapp.py plays it, over HTTPS through a TLS front) polls and approves, and the
gateway gets its answer -- through the gateway API's long-poll, and through the RADIUS bridge
over UDP (pyrad), as an RD Gateway / NPS-style gateway in push mode would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pyrad import packet as pyrad_packet

from backend.config import Settings
from backend.domain.stepup import ADMINISTRATOR
from tests.fakes.tls import make_tls
from tests.support.api import ADMIN
from tests.support.bridge import RadiusLab
from tests.support.clock import FakeClock
from tests.support.piapp import PiApp, PiLab, PushRequest, TlsFront
from tests.support.process import wait_for

SECRET = "pipush-radius-secret"


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    """Gateways waiting for their answer run here while the test plays the phone."""
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def next_request(app: PiApp, timeout: float = 10) -> PushRequest:
    """Poll as a user pulling to refresh would, until a request shows (bounded)."""
    seen: list[PushRequest] = []

    def arrived() -> bool:
        seen.extend(app.poll())
        return bool(seen)

    wait_for(arrived, timeout, "the sign-in to show in the app", every=0.1)
    assert len(seen) == 1, seen
    return seen[0]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_gateway_long_poll_wakes_when_an_rsa_4096_phone_approves(
    settings: Settings, clock: FakeClock, tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    """The app's real key size (RSA-4096) once, end to end."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    with PiLab(settings, clock, tmp_path) as lab:
        lab.api.add_user("alice")
        app = lab.enrol("alice", key=key)
        assert app.token_update().status_code == 200
        started = lab.api.start("alice", "push", context={"client_name": "rdgw"})
        sent = time.monotonic()
        waiting: Future[dict[str, Any]] = pool.submit(lab.api.status, started["id"], 25)
        request = next_request(app)
        assert request.question == "Sign-in to rdgw"
        assert app.accept(request).json() == {"result": {"status": True, "value": True}}
        outcome = waiting.result(timeout=30)
        assert outcome["state"] == "approved"
        assert time.monotonic() - sent < 20  # woken by the answer, not by the 25 s limit


class PiRadiusLab(RadiusLab):
    """:class:`RadiusLab` whose backend's public URL is an HTTPS front for the app, while
    the bridge talks plain HTTP to the backend (its own network, as in production)."""

    def __init__(self, home: Path) -> None:
        self.tls = make_tls(home / "tls")
        self.front = TlsFront(self.tls)
        super().__init__(home, public_url=self.front.url)
        self._phones: list[PiApp] = []

    def __enter__(self) -> PiRadiusLab:
        super().__enter__()
        self.front.start(self.api.server.port)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for phone in self._phones:
            phone.close()
        self.close_pyrad_clients()
        try:
            self.front.close()
        finally:
            super().__exit__(exc_type, exc, tb)

    def phone_for(self, user: str) -> PiApp:
        self.unenrolled_user(user)
        offer = self.api.run(self.api.services.pipush.create_enrollment(ADMIN, ADMINISTRATOR, user))
        phone = PiApp(self.api.clock, self.tls.client_context())
        self._phones.append(phone)
        phone.scan(offer.uri)
        assert phone.rollout().status_code == 200
        return phone


@pytest.mark.parametrize("answer", ["accept", "not-me"])
def test_a_radius_push_is_answered_from_the_app(
    tmp_path: Path, pool: ThreadPoolExecutor, answer: str
) -> None:
    with PiRadiusLab(tmp_path) as lab:
        lab.client("rdgw", ["127.0.0.9"], SECRET, mode="push", primary="none")
        phone = lab.phone_for("bob")
        gateway = lab.pyrad("127.0.0.9", SECRET, timeout=30, retries=1)
        packet = gateway.CreateAuthPacket(code=pyrad_packet.AccessRequest, User_Name="bob")
        reply: Future[Any] = pool.submit(gateway.SendPacket, packet)
        request = next_request(phone)
        assert not reply.done()  # held until the phone answers
        if answer == "accept":
            phone.accept(request)
            assert reply.result(timeout=30).code == pyrad_packet.AccessAccept
        else:
            phone.decline(request, "unknown_trigger")
            assert reply.result(timeout=30).code == pyrad_packet.AccessReject
            assert len(lab.api.fraud_reports()) == 1
        assert len(lab.audit("bob", "auth.start")) == 1
