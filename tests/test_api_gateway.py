"""The gateway API (``/gateway/v1``) over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from backend.domain import totp
from backend.domain.stepup import ADMINISTRATOR
from tests.support.api import ADMIN, ApiHarness, assert_problem
from tests.support.clock import FakeClock
from tests.support.process import wait_for

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
START = "/gateway/v1/authentications"
VERIFY = "/gateway/v1/otp/verify"


def waiting(api: ApiHarness) -> int:
    """How many long-polls the server has parked on its outcome bus."""
    for _ in range(100):
        try:
            count: int = api.server_services.bus.waiting  # type: ignore[attr-defined]
        except RuntimeError:  # the server's loop changed the dict while we counted
            continue
        return count
    raise AssertionError("could not read the bus")


def oath_user(api: ApiHarness, name: str) -> str:
    """A user with only a standard OATH token; returns its seed."""
    api.add_user(name)
    return api.run(api.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, name)).seed


def verify(api: ApiHarness, user: str, code: str, **extra: Any) -> httpx.Response:
    return api.gateway.post(VERIFY, json={"user": user, "code": code, **extra})


# -- bearer tokens ----------------------------------------------------------------------------


def test_bearer_token_refusals(api: ApiHarness) -> None:
    api.add_user("alice")
    api.device("alice")
    auth_id = api.start("alice")["id"]
    revoked = api.run(api.services.tokens.create(ADMIN, "old-bridge"))
    api.run(api.services.tokens.revoke(ADMIN, "old-bridge"))
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", START, {"user": "alice"}),
        ("GET", f"{START}/{auth_id}", None),
        ("POST", f"{START}/{auth_id}/code", {"code": "123456"}),
        ("POST", f"{START}/{auth_id}/cancel", None),
        ("POST", VERIFY, {"user": "alice", "code": "123456"}),
    ]
    credentials: list[dict[str, str]] = [
        {},
        {"Authorization": f"Basic {api.token}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {api.token} extra"},
        {"Authorization": "Bearer omfa_" + "x" * 40},
        {"Authorization": "Bearer " + api.token[len("omfa_") :]},
        {"Authorization": f"Bearer {revoked}"},
    ]
    plain = api.client()
    before = len(api.refusals())
    for method, path, body in calls:
        for headers in credentials:
            response = plain.request(method, path, json=body, headers=headers)
            assert_problem(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"
    assert len(api.refusals()) - before == len(calls) * len(credentials)
    assert api.status(auth_id)["state"] == "pending"  # nothing was cancelled or answered
    accepted = plain.get(f"{START}/{auth_id}", headers={"authorization": f"bearer {api.token}"})
    assert accepted.status_code == 200


# -- starting -------------------------------------------------------------------------------


def test_start_push_otp_and_auto(api: ApiHarness, clock: FakeClock) -> None:
    api.add_user("alice")
    api.device("alice")
    oath_user(api, "olga")

    push = api.start("alice", "push", context={"client_name": "vpn", "client_ip": "192.0.2.1"})
    otp = api.start("Alice", "otp")
    auto = api.start("ALICE", "auto")
    auto_oath = api.start("olga", "auto")

    assert (push["method"], otp["method"], auto["method"], auto_oath["method"]) == (
        "push",
        "otp",
        "push",
        "otp",
    )
    for started in (push, otp, auto):
        assert started["user"] == "alice"
        assert started["state"] == "pending"
        assert started["answered_at"] is None
        assert started["number"] is None
        assert len({push["id"], otp["id"], auto["id"], auto_oath["id"]}) == 4
    assert push["id"].startswith("ch_")
    created = push["created_at"]
    assert api.status(push["id"]) == push
    assert push["expires_at"] > created
    response = api.gateway.post(START, json={"user": "olga", "method": "push"})
    assert_problem(response, 409, "user-not-enrolled")
    assert "push" in response.json()["detail"]


def test_idempotency_key_returns_the_same_authentication(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    first = api.start("alice", idempotency_key="radius-17-abc")
    again = api.start("alice", idempotency_key="radius-17-abc")
    other = api.start("alice", idempotency_key="radius-18-abc")

    assert again == first
    assert other["id"] != first["id"]
    assert sorted(c["id"] for c in phone.pending()) == sorted([first["id"], other["id"]])
    starts = api.run(api.services.audit.query(action="auth.start"))
    assert len(starts) == 2
    # Once answered, a retransmission still gets the same (now final) authentication.
    phone.answer(first["id"], "approve")
    assert api.start("alice", idempotency_key="radius-17-abc")["id"] == first["id"]
    assert api.status(first["id"])["state"] == "approved"
    # Keys belong to one gateway token: another gateway's key starts its own challenge.
    token = api.run(api.services.tokens.create(ADMIN, "second-bridge"))
    second = api.client(headers={"Authorization": f"Bearer {token}"})
    response = second.post(START, json={"user": "alice", "idempotency_key": "radius-17-abc"})
    assert response.status_code == 201
    assert response.json()["id"] not in {first["id"], other["id"]}
    # The same key for a different user is a client bug, not a retransmission.
    api.add_user("bob")
    api.device("bob")
    clash = api.client(headers={"Authorization": f"Bearer {api.token}"}).post(
        START, json={"user": "bob", "idempotency_key": "radius-17-abc"}
    )
    assert clash.status_code == 409
    assert clash.json()["type"].endswith("/conflict")


# -- long-poll ------------------------------------------------------------------------------


def test_long_poll_returns_as_soon_as_the_device_answers(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    auth_id = api.start("alice")["id"]
    poller = api.client(headers={"Authorization": f"Bearer {api.token}"})
    result: dict[str, Any] = {}

    def poll() -> None:
        started = time.monotonic()
        result["response"] = poller.get(f"{START}/{auth_id}", params={"wait": "30"})
        result["returned"] = time.monotonic()
        result["elapsed"] = result["returned"] - started

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    wait_for(lambda: waiting(api) == 1, 10, "the long-poll to park", every=0.002)
    answered = time.monotonic()
    assert phone.answer(auth_id, "deny") == "denied"
    thread.join(timeout=10)

    assert not thread.is_alive(), "the long-poll did not return after the answer"
    assert result["response"].status_code == 200
    assert result["response"].json()["state"] == "denied"
    assert result["response"].json()["answered_at"] is not None
    assert result["elapsed"] < 10, "returned only near the wait limit"
    assert result["returned"] - answered < 5
    assert waiting(api) == 0


def test_long_poll_returns_at_once_when_already_final(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    auth_id = api.start("alice")["id"]
    phone.answer(auth_id, "approve")
    started = time.monotonic()
    assert api.status(auth_id, wait=30)["state"] == "approved"
    assert time.monotonic() - started < 5


@sqlite_only
def test_long_poll_returns_pending_when_the_wait_elapses(api: ApiHarness) -> None:
    api.add_user("alice")
    api.device("alice")
    auth_id = api.start("alice")["id"]
    started = time.monotonic()
    assert api.status(auth_id, wait=0.5)["state"] == "pending"
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 5
    assert waiting(api) == 0


@sqlite_only
def test_invalid_wait_is_refused(api: ApiHarness) -> None:
    api.add_user("alice")
    api.device("alice")
    auth_id = api.start("alice")["id"]
    for wait in ("soon", "-1", "61", "nan", "inf", "1e9", ""):
        response = api.gateway.get(f"{START}/{auth_id}", params={"wait": wait})
        assert_problem(response, 400, "invalid-request")
    assert api.status(auth_id, wait=0)["state"] == "pending"


def test_status_of_unknown_and_expired_authentications(api: ApiHarness, clock: FakeClock) -> None:
    api.add_user("alice", challenge_ttl_seconds=10)
    api.device("alice")
    auth_id = api.start("alice")["id"]
    assert_problem(api.gateway.get(f"{START}/ch_nothing"), 404, "not-found")
    clock.advance(10)
    assert api.status(auth_id)["state"] == "expired"
    assert api.status(auth_id, wait=30)["state"] == "expired"


# -- codes and cancel -----------------------------------------------------------------------


def test_code_submission_accepts_or_keeps_pending(api: ApiHarness, clock: FakeClock) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    assert phone.device is not None
    secret = phone.device.totp_secret
    auth_id = api.start("alice", "otp")["id"]
    right = totp.current_code(secret, clock())
    wrong = f"{(int(right) + 1) % 1_000_000:06d}"

    rejected = api.gateway.post(f"{START}/{auth_id}/code", json={"code": wrong})
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["result"] == "reject"
    assert rejected.json()["reason"] == "wrong-code"
    assert rejected.json()["authentication"]["state"] == "pending"

    accepted = api.gateway.post(f"{START}/{auth_id}/code", json={"code": right})
    assert accepted.json()["result"] == "accept"
    assert accepted.json()["authentication"]["state"] == "approved"
    assert api.status(auth_id)["state"] == "approved"

    again = api.gateway.post(f"{START}/{auth_id}/code", json={"code": right})
    assert_problem(again, 409, "challenge-closed")
    missing = api.gateway.post(f"{START}/ch_nothing/code", json={"code": right})
    assert_problem(missing, 404, "not-found")


def test_code_submission_after_expiry(api: ApiHarness, clock: FakeClock) -> None:
    api.add_user("alice", challenge_ttl_seconds=10)
    phone = api.device("alice")
    assert phone.device is not None
    auth_id = api.start("alice", "otp")["id"]
    clock.advance(10)
    code = totp.current_code(phone.device.totp_secret, clock())
    response = api.gateway.post(f"{START}/{auth_id}/code", json={"code": code})
    assert_problem(response, 410, "challenge-expired")
    assert api.status(auth_id)["state"] == "expired"


def test_cancel(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    auth_id = api.start("alice")["id"]

    cancelled = api.gateway.post(f"{START}/{auth_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert api.gateway.post(f"{START}/{auth_id}/cancel").json()["state"] == "cancelled"
    assert api.status(auth_id)["state"] == "cancelled"
    assert phone.pending() == []
    assert_problem(api.gateway.post(f"{START}/ch_nothing/cancel"), 404, "not-found")
    answered = api.start("alice")["id"]
    phone.answer(answered, "approve")
    assert api.gateway.post(f"{START}/{answered}/cancel").json()["state"] == "approved"


# -- one-call OTP verification -----------------------------------------------------------------


def test_otp_verify_accept_wrong_replay_and_malformed(api: ApiHarness, clock: FakeClock) -> None:
    seed = oath_user(api, "olga")
    api.set_policy("otp_max_failures", 20, user="olga")
    code = totp.current_code(seed, clock())
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"

    accepted = verify(api, "OLGA", code, context={"client_name": "vpn", "client_ip": "192.0.2.9"})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"result": "accept", "reason": "ok", "user": "olga"}
    assert verify(api, "olga", code).json()["reason"] == "replayed"
    assert verify(api, "olga", wrong).json()["reason"] == "wrong-code"
    for malformed in ("12345", "1234567", "abcdef", " 12345"):
        response = verify(api, "olga", malformed)
        assert response.json() == {"result": "reject", "reason": "malformed-code", "user": "olga"}
    too_long = verify(api, "olga", "1" * 17)
    assert_problem(too_long, 400, "invalid-request")
    assert "code" in too_long.json()["detail"]
    clock.advance(30)
    assert verify(api, "olga", totp.current_code(seed, clock())).json()["result"] == "accept"
    results = [row.result for row in api.run(api.services.audit.query(action="otp.verify"))]
    assert results.count("accept") == 2
    assert results.count("reject") == 6


def test_otp_lockout(api: ApiHarness, clock: FakeClock) -> None:
    seed = oath_user(api, "olga")
    api.set_policy("otp_max_failures", 3, user="olga")
    api.set_policy("otp_lockout_seconds", 60, user="olga")
    code = totp.current_code(seed, clock())
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"

    reasons = [verify(api, "olga", wrong).json()["reason"] for _ in range(3)]
    assert reasons == ["wrong-code", "wrong-code", "locked"]
    locked = verify(api, "olga", code)
    assert_problem(locked, 429, "otp-locked")
    clock.advance(61)
    assert verify(api, "olga", totp.current_code(seed, clock())).json()["result"] == "accept"


# -- users that cannot sign in ---------------------------------------------------------------


def test_users_that_cannot_sign_in_get_distinct_answers(api: ApiHarness, clock: FakeClock) -> None:
    seeds = {name: oath_user(api, name) for name in ("dora", "bert")}
    api.add_user("nora")  # no authenticator at all
    api.run(api.services.users.set_disabled(ADMIN, "dora", True))
    api.run(api.services.users.set_blocked(ADMIN, "bert", True, "fraud reported"))
    expected = {
        "nobody": (404, "unknown-user"),
        "nora": (409, "user-not-enrolled"),
        "dora": (403, "user-disabled"),
        "bert": (403, "user-blocked"),
    }
    for user, (status, type_) in expected.items():
        code = totp.current_code(seeds.get(user, totp.new_seed()), clock())
        for method in ("push", "otp", "auto"):
            response = api.gateway.post(START, json={"user": user, "method": method})
            assert_problem(response, status, type_)
        assert_problem(verify(api, user, code), status, type_)
        rows = [r for r in api.refusals() if r.result == type_]
        assert len(rows) == 4
        assert {r.user_name for r in rows} == {user}
        assert {r.actor for r in rows} == {"gateway:gateway"}
    invalid = api.gateway.post(START, json={"user": "no spaces allowed"})
    assert invalid.status_code == 400
    assert invalid.headers["content-type"] == "application/problem+json"
    api.run(api.services.users.set_blocked(ADMIN, "bert", False))
    assert verify(api, "bert", totp.current_code(seeds["bert"], clock())).json()["result"] == (
        "accept"
    )


def test_concurrent_starts_with_one_idempotency_key_make_one_challenge(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    copies = 4
    barrier = threading.Barrier(copies)
    ids: list[str] = []
    statuses: list[int] = []
    clients = [api.client(headers={"Authorization": f"Bearer {api.token}"}) for _ in range(copies)]

    def start(client: httpx.Client) -> None:
        barrier.wait(timeout=10)
        response = client.post(START, json={"user": "alice", "idempotency_key": "retransmit-1"})
        statuses.append(response.status_code)
        ids.append(response.json().get("id", response.text))

    threads = [threading.Thread(target=start, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads)

    assert statuses == [201] * copies
    assert len(set(ids)) == 1
    assert [c["id"] for c in phone.pending()] == ids[:1]
    assert len(api.run(api.services.audit.query(action="auth.start"))) == 1
