"""Limits and anti-replay state hold across nodes (issue 18, item 3): two apps (two nodes, each
with its own services container and pools) on one database, attacked at once through both.

Each scenario runs on PostgreSQL (the several-nodes set-up) and on SQLite (two processes on
one file behave the same way). The per-address web sign-in limit failed here before it moved
into the database: each node counted its own, so two nodes let twice the limit through.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from backend.config import Settings
from backend.domain import signing, totp
from backend.domain.stepup import ADMINISTRATOR
from tests.support.api import ADMIN, ApiHarness, assert_problem
from tests.support.clock import FakeClock
from tests.support.web import PASSWORD, WebHarness, csrf_from, sign_in

COPIES = 40
LIMIT = 5
Request = tuple[str, str, bytes, dict[str, str]]  # node URL, path, body, headers


@pytest.fixture
def nodes(settings: Settings, clock: FakeClock) -> Iterator[tuple[WebHarness, WebHarness]]:
    """Node A and node B: two live apps on the same database (and the same clock)."""
    with WebHarness(settings, clock) as a, WebHarness(settings, clock) as b:
        yield a, b


async def _at_once(requests: list[Request]) -> list[httpx.Response]:
    """POST every request concurrently, each on a connection of its own."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as http:
        sent = [http.post(url + path, content=body, headers=h) for url, path, body, h in requests]
        return list(await asyncio.gather(*sent))


def _split(nodes: tuple[ApiHarness, ApiHarness], count: int) -> list[str]:
    """``count`` node URLs, alternating A and B."""
    return [nodes[n % 2].url for n in range(count)]


def _json(token: str, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    return json.dumps(payload).encode(), headers


def _verify_count(nodes: tuple[ApiHarness, ApiHarness]) -> int:
    return sum(node.server_services.hasher.counts["verify"] for node in nodes)


# -- codes: one accept ----------------------------------------------------------------------------


def test_one_code_sent_40_times_through_two_nodes_is_accepted_once(
    nodes: tuple[WebHarness, WebHarness], clock: FakeClock
) -> None:
    a, _ = nodes
    a.add_user("olga")
    seed = a.run(a.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "olga")).seed
    body, headers = _json(a.token, {"user": "olga", "code": totp.current_code(seed, clock())})

    answers = asyncio.run(
        _at_once([(url, "/gateway/v1/otp/verify", body, headers) for url in _split(nodes, COPIES)])
    )

    assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
    reasons = sorted(r.json()["reason"] for r in answers)
    assert reasons == ["ok"] + ["replayed"] * (COPIES - 1)
    rows = a.run(a.services.audit.query(action="otp.verify", limit=1000))
    assert [row.result for row in rows].count("accept") == 1


# -- the per-user lockout -----------------------------------------------------------------------


def test_wrong_passwords_through_two_nodes_lock_the_user_after_the_same_total(
    nodes: tuple[WebHarness, WebHarness],
) -> None:
    a, b = nodes
    a.run(a.services.users.add(ADMIN, "alice", password=PASSWORD))
    a.set_policy("otp_max_failures", LIMIT, user="alice")
    token = a.run(a.services.tokens.create(ADMIN, "bridge1", scope="bridge"))
    checked_before = _verify_count(nodes)
    path = "/gateway/v1/password/verify"
    guesses = [
        (url, path, *_json(token, {"user": "alice", "password": f"guess {n}"}))
        for n, url in enumerate(_split(nodes, COPIES))
    ]

    answers = asyncio.run(_at_once(guesses))

    assert {r.status_code for r in answers} <= {200, 429}
    assert all(r.json()["result"] == "reject" for r in answers if r.status_code == 200)
    assert _verify_count(nodes) - checked_before == LIMIT  # argon2 checks run on both nodes
    for node in nodes:  # the right password, now, on either node
        right = asyncio.run(
            _at_once([(node.url, path, *_json(token, {"user": "alice", "password": PASSWORD}))])
        )[0]
        assert_problem(right, 429, "otp-locked")
    assert b.user("alice").otp_locked_until is not None


# -- the per-address web sign-in limit -----------------------------------------------------------


def test_an_address_that_failed_on_node_a_is_refused_on_node_b(
    settings: Settings, clock: FakeClock
) -> None:
    limited = settings.model_copy(
        update={"web_sign_in_address_limit": 3, "web_sign_in_address_window_seconds": 600}
    )
    with WebHarness(limited, clock) as a, WebHarness(limited, clock) as b:
        a.add_user("alice", otp_max_failures=100)
        for _ in range(3):
            assert sign_in(a.browser(), "alice", "wrong").status_code == 401
        refused = sign_in(b.browser(), "alice")  # even the right password waits
        assert refused.status_code == 429
        assert "Too many failed sign-ins from your network" in refused.text
        details = [row.detail for row in b.audit("web.sign_in")]
        assert details.count("portal: address-limited") == 1
        clock.advance(601)
        assert sign_in(b.browser(), "alice").status_code == 303


def test_concurrent_guesses_through_two_nodes_check_at_most_the_address_limit(
    settings: Settings, clock: FakeClock
) -> None:
    limited = settings.model_copy(update={"web_sign_in_address_limit": 3})
    with WebHarness(limited, clock) as a, WebHarness(limited, clock) as b:
        a.add_user("alice", otp_max_failures=100)
        browser = a.browser()  # one session: its cookie and CSRF token serve both nodes
        page = browser.get("/portal/sign-in")
        form = {"csrf_token": csrf_from(page.text), "username": "alice", "password": "guess"}
        cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
        headers = {"content-type": "application/x-www-form-urlencoded", "cookie": cookie}
        body = str(httpx.QueryParams(form)).encode()
        checked_before = _verify_count((a, b))

        answers = asyncio.run(
            _at_once([(url, "/portal/sign-in", body, headers) for url in _split((a, b), 10)])
        )

        assert sorted({r.status_code for r in answers}) == [401, 429]
        assert _verify_count((a, b)) - checked_before == 3  # not 3 per node
        details = [row.detail for row in a.audit("web.sign_in")]
        assert details.count("portal: wrong-password") == 3
        assert details.count("portal: address-limited") == 7


# -- the push-fatigue guard ---------------------------------------------------------------------


def test_the_push_limit_counts_pushes_started_at_once_through_both_nodes(
    nodes: tuple[WebHarness, WebHarness],
) -> None:
    a, _ = nodes
    a.add_user("alice")
    a.device("alice")
    a.set_policy("push_limit", 3, user="alice")
    body, headers = _json(a.token, {"user": "alice", "method": "push"})

    answers = asyncio.run(
        _at_once([(url, "/gateway/v1/authentications", body, headers) for url in _split(nodes, 12)])
    )

    assert sorted(r.status_code for r in answers) == [201] * 3 + [429] * 9, [
        r.text for r in answers
    ]
    for refused in (r for r in answers if r.status_code == 429):
        assert_problem(refused, 429, "push-limited")
    assert len(a.run(a.services.audit.query(action="push.limited", limit=100))) == 9


# -- app API nonces -----------------------------------------------------------------------------


def test_a_signed_app_request_replayed_to_the_other_node_is_refused_and_audited(
    nodes: tuple[WebHarness, WebHarness], clock: FakeClock
) -> None:
    a, b = nodes
    a.add_user("alice")
    phone = a.device("alice")
    assert phone.device is not None
    auth_id = a.start("alice")["id"]
    path = f"/app/v1/challenges/{auth_id}/answer"
    body = b'{"answer": "deny"}'
    signed = signing.sign_request(
        phone.device.key(), phone.device.device_id, "POST", path, body, int(clock().timestamp())
    )
    headers = {**signed, "content-type": "application/json"}

    first = a.http.post(path, content=body, headers=headers)
    again = b.http.post(path, content=body, headers=headers)

    assert first.status_code == 200, first.text
    problem = assert_problem(again, 401, "replayed-request")
    rows = [row for row in b.refusals() if row.request_id == problem["request_id"]]
    assert [row.result for row in rows] == ["replayed-request"]


def test_wrong_codes_through_two_nodes_lock_the_user_after_the_same_total(
    nodes: tuple[WebHarness, WebHarness], clock: FakeClock
) -> None:
    a, _ = nodes
    a.add_user("olga")
    seed = a.run(a.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "olga")).seed
    a.set_policy("otp_max_failures", LIMIT, user="olga")
    right = totp.current_code(seed, clock())
    wrong = {f"{(int(right) + n) % 1_000_000:06d}" for n in range(1000, 1000 + COPIES)}
    guesses = [
        (url, "/gateway/v1/otp/verify", *_json(a.token, {"user": "olga", "code": code}))
        for url, code in zip(_split(nodes, COPIES), sorted(wrong), strict=True)
    ]

    answers = asyncio.run(_at_once(guesses))

    checked = [r.json()["reason"] for r in answers if r.status_code == 200]
    assert sorted(checked) == ["locked"] + ["wrong-code"] * (LIMIT - 1)  # the 5th locks
    for refused in (r for r in answers if r.status_code != 200):
        assert_problem(refused, 429, "otp-locked")
    for node in nodes:  # the right code too, on either node, while locked
        body, headers = _json(a.token, {"user": "olga", "code": right})
        after = asyncio.run(_at_once([(node.url, "/gateway/v1/otp/verify", body, headers)]))[0]
        assert_problem(after, 429, "otp-locked")


def test_wrong_pins_through_two_nodes_check_at_most_the_limit(
    nodes: tuple[WebHarness, WebHarness], clock: FakeClock
) -> None:
    a, _ = nodes
    a.add_user("alice", require_pin=True, pin_max_failures=LIMIT, pin_lockout_seconds=300)
    phone = a.device("alice", pin="4711")
    assert phone.device is not None
    push = a.start("alice")["id"]
    path = f"/app/v1/challenges/{push}/answer"
    checked_before = _verify_count(nodes)
    guesses: list[Request] = []
    for n, url in enumerate(_split(nodes, COPIES)):
        body = json.dumps({"answer": "approve", "pin": f"{1000 + n:04d}"}).encode()
        signed = signing.sign_request(
            phone.device.key(), phone.device.device_id, "POST", path, body, int(clock().timestamp())
        )
        guesses.append((url, path, body, {**signed, "content-type": "application/json"}))

    answers = asyncio.run(_at_once(guesses))

    kinds = {(r.status_code, r.json()["type"].rsplit("/", 1)[-1]) for r in answers}
    assert kinds <= {(403, "wrong-pin"), (429, "pin-locked"), (409, "challenge-closed")}
    assert _verify_count(nodes) - checked_before == LIMIT  # argon2 checks on both nodes
    assert a.status(push)["state"] == "denied"
