"""Client addresses behind a reverse proxy, over real HTTP: a forwarding header counts only
from a peer in ``trusted_proxies``, and then its right-most untrusted entry is the client in
audit rows, in the sign-in address limit and in the access log. The test client connects from
127.0.0.1, which is the trusted proxy in one set of tests and an untrusted client in the other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import httpx
import pytest

from backend.config import Settings
from tests.support.api import ADMIN
from tests.support.clock import FakeClock
from tests.support.web import WebHarness, csrf_from, sign_in

GUESSES = 8


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def lines() -> Iterator[_Lines]:
    handler = _Lines()
    loggers = [logging.getLogger("openmfa.access"), logging.getLogger("openmfa.http")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.addHandler(handler)
        each.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.removeHandler(handler)
            each.setLevel(level)


def _behind(settings: Settings, proxies: list[str], **more: object) -> Settings:
    return settings.model_copy(
        update={
            "trusted_proxies": tuple(proxies),
            "web_sign_in_address_limit": 3,
            **more,
        }
    )


def _sources(web: WebHarness, detail: str) -> list[str]:
    return [row.source for row in web.audit("web.sign_in") if row.detail == detail]


def test_an_untrusted_peer_cannot_choose_its_address(
    settings: Settings, clock: FakeClock, lines: _Lines
) -> None:
    with WebHarness(_behind(settings, ["10.0.0.0/8"]), clock) as web:
        web.add_user("alice")
        for n in range(3):  # a new address in every request does not escape the limit
            spoofed = {"X-Forwarded-For": f"203.0.113.{n}", "Forwarded": f"for=203.0.113.{n}"}
            browser = web.browser(headers=spoofed)
            assert sign_in(browser, "alice", "wrong").status_code == 401
        spoofed = {"X-Forwarded-For": "203.0.113.99"}
        assert sign_in(web.browser(headers=spoofed), "alice").status_code == 429
        assert set(_sources(web, "portal: wrong-password")) == {"127.0.0.1"}
    access = [r for r in lines.records if r.name == "openmfa.access"]
    assert access
    assert {getattr(r, "client", None) for r in access} == {"127.0.0.1"}
    assert not any(hasattr(r, "peer") for r in access)


async def _guesses(web: WebHarness, client: str) -> list[int]:
    """``GUESSES`` wrong passwords at once from ``client``, behind the proxy (us)."""
    headers = {"X-Forwarded-For": f"198.51.100.66, {client}"}  # the left one: client-made
    async with httpx.AsyncClient(
        base_url=web.url,
        timeout=60.0,
        headers=headers,
        limits=httpx.Limits(max_connections=GUESSES, max_keepalive_connections=0),
    ) as http:
        page = await http.get("/portal/sign-in")
        form = {"csrf_token": csrf_from(page.text), "username": "alice", "password": "guess"}
        answers = await asyncio.gather(
            *(http.post("/portal/sign-in", data=form) for _ in range(GUESSES))
        )
    return sorted(a.status_code for a in answers)


def test_behind_a_trusted_proxy_each_client_has_its_own_sign_in_limit(
    settings: Settings, clock: FakeClock, lines: _Lines
) -> None:
    with WebHarness(_behind(settings, ["127.0.0.0/8"]), clock) as web:
        web.add_user("alice", otp_max_failures=100)

        async def both() -> list[list[int]]:
            return list(
                await asyncio.gather(_guesses(web, "203.0.113.5"), _guesses(web, "203.0.113.6"))
            )

        first, second = asyncio.run(both())
        assert first == second == [401] * 3 + [429] * (GUESSES - 3)
        wrong = _sources(web, "portal: wrong-password")
        assert sorted(wrong) == ["203.0.113.5"] * 3 + ["203.0.113.6"] * 3
        limited = _sources(web, "portal: address-limited")
        assert sorted(limited) == ["203.0.113.5"] * 5 + ["203.0.113.6"] * 5
        # A third client behind the same proxy is not limited by the first two.
        browser = web.browser(headers={"X-Forwarded-For": "203.0.113.7"})
        assert sign_in(browser, "alice").status_code == 303
    access = [r for r in lines.records if r.name == "openmfa.access"]
    posts = [r for r in access if r.getMessage().startswith("POST /portal/sign-in")]
    assert {(getattr(r, "client", ""), getattr(r, "peer", "")) for r in posts} == {
        ("203.0.113.5", "127.0.0.1"),
        ("203.0.113.6", "127.0.0.1"),
        ("203.0.113.7", "127.0.0.1"),
    }


def test_the_gateway_api_names_the_forwarded_client_in_its_audit_rows(
    settings: Settings, clock: FakeClock
) -> None:
    behind = _behind(settings, ["127.0.0.1"], trusted_proxy_header="forwarded")
    with WebHarness(behind, clock) as web:
        token = web.run(web.services.tokens.create(ADMIN, "vpn", "gateway"))
        http = web.client(
            headers={
                "Authorization": f"Bearer {token}",
                # Only the configured header is read: X-Forwarded-For is the client's word.
                "X-Forwarded-For": "192.0.2.1",
                "Forwarded": 'for="[2001:db8::5]:4711";proto=https',
            }
        )
        answer = http.post(
            "/gateway/v1/otp/verify",
            json={"user": "nobody", "code": "123456", "context": {}},
        )
        assert answer.status_code < 500, answer.text
        rows = web.run(web.services.audit.query(None, None, None, 100))
        gateway_rows = [row for row in rows if row.actor.startswith("gateway:")]
        assert gateway_rows
        assert {row.source for row in gateway_rows} == {"2001:db8::5"}
        refused = http.get("/gateway/v1/authentications/nope", headers={"Authorization": ""})
        assert refused.status_code == 401
        anonymous = web.run(web.services.audit.query(None, None, "request.refused", 100))
        assert anonymous
        assert {row.source for row in anonymous} == {"2001:db8::5"}


def test_a_malformed_header_from_a_trusted_proxy_uses_the_peer_and_is_logged_once(
    settings: Settings, clock: FakeClock, lines: _Lines
) -> None:
    with WebHarness(_behind(settings, ["127.0.0.1"]), clock) as web:
        web.add_user("alice")
        browser = web.browser(headers={"X-Forwarded-For": "203.0.113.5, proxy.example"})
        for _ in range(3):
            assert sign_in(browser, "alice", "wrong").status_code == 401
        assert set(_sources(web, "portal: wrong-password")) == {"127.0.0.1"}
    warnings = [r for r in lines.records if r.name == "openmfa.http"]
    assert len(warnings) == 1
    assert "'proxy.example'" in warnings[0].getMessage()
    assert warnings[0].levelno == logging.WARNING
