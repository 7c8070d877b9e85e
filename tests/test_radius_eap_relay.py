"""EAP relayed through the bridge, end to end with real parts: ``eapol_test`` (wpa_supplicant)
as the supplicant, the bridge with ``primary radius``, FreeRADIUS as the upstream running
PEAP/EAP-MSCHAPv2 and EAP-TTLS/PAP, the push answered by the reference authenticator.

eapol_test checks the MS-MPPE keys of the final Access-Accept against the keys it derived
from the TLS tunnel itself ("MPPE keys OK: 1  mismatch: 0"): they only match when the bridge
re-encrypted them for the gateway hop (RFC 2548 salt encryption), so every SUCCESS below is
also the proof of the re-encryption.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.bridge import RadiusLab
from tests.support.eap import (
    EapolResult,
    Method,
    eap_upstream,
    eapol_config,
    eapol_test,
    eapol_test_binary,
)
from tests.support.freeradius import FreeRadius, free_udp_port, unavailable_reason
from tests.support.process import wait_for

REASON = unavailable_reason() or (
    None if eapol_test_binary() else "eapol_test not installed (Debian package eapoltest)"
)
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

UPSTREAM_SECRET = "eap-upstream-secret-1"
GATEWAY_SECRET = "eap-gateway-secret-1"
PASSWORDS = {
    "alice": "alice-pw-1",
    "bob": "bob-pw-2",
    "carol": "carol-pw-3",
    "dave": "dave-pw-4",
    "erin": "erin-pw-5",
    "frank": "frank-pw-6",
    "grace": "grace-pw-7",
}
_sources = itertools.count(40)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RadiusLab]:
    with RadiusLab(tmp_path_factory.mktemp("radius-eap")) as running:
        yield running


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreeRadius]:
    port = free_udp_port()
    directory = tmp_path_factory.mktemp("eap-upstream")
    with eap_upstream(port, directory, users=PASSWORDS, secret=UPSTREAM_SECRET) as server:
        yield server


def gateway(lab: RadiusLab, upstream: FreeRadius, name: str, **changes: object) -> str:
    """A bridge client with primary radius towards ``upstream``; its source address."""
    source = f"127.0.0.{next(_sources)}"
    lab.upstream_client(name, source, GATEWAY_SECRET, upstream, UPSTREAM_SECRET, **changes)
    return source


def sign_in(
    lab: RadiusLab,
    upstream: FreeRadius,
    tmp_path: Path,
    source: str,
    method: Method,
    user: str,
    *,
    outer: str | None = "anonymous@corp",
    password: str | None = None,
) -> EapolResult:
    assert upstream.directory is not None
    config = eapol_config(
        tmp_path / f"{method}-{user}.conf",
        method,
        identity=user,
        password=password or PASSWORDS[user],
        ca_cert=upstream.directory / "ca.pem",
        anonymous_identity=outer,
    )
    return eapol_test(config, lab.port, GATEWAY_SECRET, source=source, timeout=40)


@pytest.mark.parametrize("method", ["peap", "ttls"])
def test_approved_push_gives_success_and_the_mppe_keys_match(
    lab: RadiusLab, upstream: FreeRadius, tmp_path: Path, method: Method
) -> None:
    source = gateway(lab, upstream, f"wifi-{method}")
    user = "alice" if method == "peap" else "bob"
    phone = lab.user(user)
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(sign_in, lab, upstream, tmp_path, source, method, user)
        # The outer identity is anonymous: the push goes to the inner user FreeRADIUS names.
        wait_for(lambda: len(phone.pending()) == 1, 30, "the push to the inner user")
        phone.answer(phone.pending()[0]["id"], "approve")
        result = running.result(timeout=60)
    assert result.success, result.output[-3000:]
    assert result.mppe_ok, result.output[-3000:]
    assert len(lab.audit(user, "auth.start")) == 1  # one push for the whole conversation


def test_denied_push_is_an_eap_failure(
    lab: RadiusLab, upstream: FreeRadius, tmp_path: Path
) -> None:
    source = gateway(lab, upstream, "wifi-deny")
    phone = lab.user("carol")
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(sign_in, lab, upstream, tmp_path, source, "peap", "carol")
        wait_for(lambda: len(phone.pending()) == 1, 30, "the push")
        phone.answer(phone.pending()[0]["id"], "deny")
        result = running.result(timeout=60)
    assert not result.success
    assert "EAP-Failure" in result.output or "CTRL-EVENT-EAP-FAILURE" in result.output
    assert not result.mppe_ok


def test_slow_approval_within_the_window_succeeds_after_retransmissions(
    lab: RadiusLab, upstream: FreeRadius, tmp_path: Path
) -> None:
    source = gateway(lab, upstream, "wifi-slow")
    phone = lab.user("dave")
    core = lab.bridge.bridge.core
    absorbed = core.counters.get("absorbed", 0)
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(sign_in, lab, upstream, tmp_path, source, "peap", "dave")
        wait_for(lambda: len(phone.pending()) == 1, 30, "the push")
        # The user is slow: eapol_test retransmits the held request (every 3 s) meanwhile.
        wait_for(
            lambda: core.counters.get("absorbed", 0) > absorbed, 15, "a retransmission absorbed"
        )
        phone.answer(phone.pending()[0]["id"], "approve")
        result = running.result(timeout=60)
    assert result.success, result.output[-3000:]
    assert result.mppe_ok
    assert len(lab.audit("dave", "auth.start")) == 1  # retransmissions sent no second push


def test_outer_identity_of_someone_else_does_not_get_the_push(
    lab: RadiusLab, upstream: FreeRadius, tmp_path: Path
) -> None:
    # The attack: mallory knows grace's password. She puts her own name as PEAP's outer
    # identity (nobody checks it) and grace's inside, hoping to approve on her own phone.
    source = gateway(lab, upstream, "wifi-spoof")
    mallory = lab.user("mallory")
    grace = lab.user("grace")
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(
            sign_in, lab, upstream, tmp_path, source, "peap", "grace", outer="mallory"
        )
        wait_for(lambda: len(grace.pending()) == 1, 30, "the push to the inner user")
        assert mallory.pending() == []
        grace.answer(grace.pending()[0]["id"], "deny")
        result = running.result(timeout=60)
    assert not result.success
    assert lab.audit("mallory", "auth.start") == []


def test_wrong_password_is_relayed_failure_without_a_push(
    lab: RadiusLab, upstream: FreeRadius, tmp_path: Path
) -> None:
    source = gateway(lab, upstream, "wifi-wrong")
    phone = lab.user("frank")
    started = time.monotonic()
    result = sign_in(lab, upstream, tmp_path, source, "peap", "frank", password="guess")
    assert not result.success
    assert time.monotonic() - started < 30  # refused by the upstream, not timed out
    assert phone.pending() == []
    assert lab.audit("frank", "auth.start") == []


def test_anonymous_outer_identity_without_inner_name_is_refused(
    lab: RadiusLab, tmp_path: Path
) -> None:
    port = free_udp_port()
    with eap_upstream(
        port,
        tmp_path / "no-inner",
        users=PASSWORDS,
        secret=UPSTREAM_SECRET,
        return_inner_name=False,
    ) as quiet:
        source = gateway(lab, quiet, "wifi-anon")
        phone = lab.user("anonymous")  # even a user called "anonymous" gets no push
        result = sign_in(lab, quiet, tmp_path, source, "peap", "alice", outer="anonymous@corp")
        assert not result.success
        assert phone.pending() == []
        wait_for(
            lambda: bool(lab.audit("anonymous@corp", "radius.relay_refused")),
            10,
            "the refusal's audit record",
        )
        # Without an anonymous outer identity the outer name is the user.
        alice = lab.user("erin")
        with ThreadPoolExecutor(max_workers=1) as pool:
            running = pool.submit(sign_in, lab, quiet, tmp_path, source, "ttls", "erin", outer=None)
            wait_for(lambda: len(alice.pending()) == 1, 30, "the push to the outer name")
            alice.answer(alice.pending()[0]["id"], "approve")
            named = running.result(timeout=60)
        assert named.success, named.output[-3000:]
        assert named.mppe_ok
