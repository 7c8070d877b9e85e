"""The app API (``/app/v1``) over real HTTP, driven by the reference authenticator."""

from __future__ import annotations

import subprocess
import threading

import pytest

from backend.authenticator.client import AppClient, AuthenticatorError
from backend.domain import totp
from tests.support.api import ApiHarness, assert_problem, new_key, signed_request
from tests.support.clock import FakeClock

# The core flows run on both databases; the rest on SQLite only, to keep the suite quick.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def refused(call: object, *args: object, **kwargs: object) -> AuthenticatorError:
    """The AuthenticatorError a client call raises."""
    assert callable(call)
    with pytest.raises(AuthenticatorError) as info:
        call(*args, **kwargs)
    return info.value


# -- activation ---------------------------------------------------------------------------------


def test_activation_returns_device_and_a_seed_that_oathtool_agrees_with(
    api: ApiHarness, clock: FakeClock
) -> None:
    api.add_user("alice")
    key, public = new_key()
    code = api.activation_code("alice")

    response = signed_request(
        api.http,
        "POST",
        "/app/v1/activate",
        key,
        "activation",
        {"code": code, "public_key": public, "platform": "android", "name": "Pixel"},
    )

    assert response.status_code == 201, response.text
    data = response.json()
    assert data["device_id"].startswith("dev_")
    assert data["user"] == "alice"
    assert data["totp"] == {
        "secret": data["totp"]["secret"],
        "algorithm": "SHA1",
        "digits": 6,
        "period": 30,
    }
    assert (data["require_pin"], data["has_pin"]) == (False, False)
    secret = data["totp"]["secret"]
    at = clock().strftime("%Y-%m-%d %H:%M:%S UTC")
    oath = subprocess.run(
        ["oathtool", "--totp", "-b", "--now", at, secret],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    assert oath.stdout.strip() == totp.current_code(secret, clock())
    # The server agrees too: the seed it handed out is the one it checks codes against.
    verified = api.gateway.post(
        "/gateway/v1/otp/verify", json={"user": "alice", "code": oath.stdout.strip()}
    )
    assert verified.json()["result"] == "accept"
    devices = api.run(api.services.devices.list_for_user("alice"))
    assert [(d.id, d.platform, d.name) for d in devices] == [
        (data["device_id"], "android", "Pixel")
    ]


@sqlite_only
def test_activation_with_pin_sets_it(api: ApiHarness) -> None:
    api.add_user("alice", require_pin=True)
    client = AppClient(transport=api.transport)
    client.activate(api.activation_uri("alice"), pin="4711")
    user = api.run(api.services.users.get("alice"))
    assert user.has_pin


@sqlite_only
def test_activation_with_a_trivial_pin_is_refused_and_the_code_stays_usable(
    api: ApiHarness,
) -> None:
    api.add_user("alice")
    uri = api.activation_uri("alice")
    error = refused(AppClient(transport=api.transport).activate, uri, pin="1234")
    assert (error.status, error.type) == (400, "invalid-policy")
    assert AppClient(transport=api.transport).activate(uri).user == "alice"


# -- pending, get, answer --------------------------------------------------------------------


@sqlite_only
def test_pending_list_and_get_show_the_context_but_not_the_number(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    assert phone.pending() == []
    started = api.start(
        "alice",
        context={"client_name": "vpn", "client_ip": "192.0.2.7", "nas_identifier": "asa-1"},
    )

    pending = phone.pending()
    one = phone.challenge(started["id"])

    assert [c["id"] for c in pending] == [started["id"]]
    assert pending[0] == one
    assert one["state"] == "pending"
    assert (one["client_name"], one["client_ip"], one["nas_identifier"]) == (
        "vpn",
        "192.0.2.7",
        "asa-1",
    )
    assert one["display"] == "Sign-in to vpn from 192.0.2.7"
    assert one["number_required"] is False
    assert "number" not in one


@pytest.mark.parametrize(
    ("answer", "state"), [("approve", "approved"), ("deny", "denied"), ("fraud", "fraud")]
)
def test_answer_ends_the_challenge(api: ApiHarness, answer: str, state: str) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    started = api.start("alice")

    assert phone.answer(started["id"], answer) == state

    assert api.status(started["id"])["state"] == state
    assert phone.pending() == []
    assert phone.challenge(started["id"])["state"] == state


@sqlite_only
def test_first_answer_makes_the_device_active(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    assert [d.state for d in api.run(api.services.devices.list_for_user("alice"))] == ["pending"]
    phone.answer(api.start("alice")["id"], "approve")
    devices = api.run(api.services.devices.list_for_user("alice"))
    assert [d.state for d in devices] == ["active"]
    assert devices[0].activated_at is not None


@sqlite_only
def test_repeated_answer_is_idempotent_and_a_different_one_is_refused(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    auth_id = api.start("alice")["id"]

    assert phone.answer(auth_id, "approve") == "approved"
    assert phone.answer(auth_id, "approve") == "approved"
    error = refused(phone.answer, auth_id, "deny")

    assert (error.status, error.type) == (409, "challenge-closed")
    assert api.status(auth_id)["state"] == "approved"


@sqlite_only
def test_answer_after_expiry_is_refused_and_the_challenge_expires(
    api: ApiHarness, clock: FakeClock
) -> None:
    api.add_user("alice", challenge_ttl_seconds=10)
    phone = api.device("alice")
    auth_id = api.start("alice")["id"]
    clock.advance(10)

    error = refused(phone.answer, auth_id, "approve")

    assert (error.status, error.type) == (410, "challenge-expired")
    assert api.status(auth_id)["state"] == "expired"
    assert phone.pending() == []


@sqlite_only
def test_another_users_challenge_is_not_found(api: ApiHarness) -> None:
    api.add_user("alice")
    api.add_user("bob")
    alice_phone = api.device("alice")
    bob_phone = api.device("bob")
    auth_id = api.start("alice")["id"]

    for call, args in ((bob_phone.challenge, ()), (bob_phone.answer, ("approve",))):
        error = refused(call, auth_id, *args)
        assert (error.status, error.type) == (404, "not-found")
    assert bob_phone.pending() == []
    assert alice_phone.challenge(auth_id)["state"] == "pending"
    error = refused(alice_phone.challenge, "ch_does-not-exist")
    assert (error.status, error.type) == (404, "not-found")


# -- PIN ---------------------------------------------------------------------------------------


def test_pin_policy_requires_the_right_pin_and_locks_after_failures(api: ApiHarness) -> None:
    api.add_user("alice", require_pin=True, pin_max_failures=3)
    phone = api.device("alice", pin="4711")
    first = api.start("alice")["id"]

    error = refused(phone.answer, first, "approve")
    assert (error.status, error.type) == (403, "pin-required")
    error = refused(phone.answer, first, "approve", pin="9999")
    assert (error.status, error.type) == (403, "wrong-pin")
    assert phone.answer(first, "approve", pin="4711") == "approved"  # resets the counter

    second = api.start("alice")["id"]
    for _ in range(2):
        error = refused(phone.answer, second, "approve", pin="0000")
        assert (error.status, error.type) == (403, "wrong-pin")
    error = refused(phone.answer, second, "approve", pin="0000")
    assert (error.status, error.type) == (429, "pin-locked")
    assert api.status(second)["state"] == "denied"  # a wrong PIN past the limit denies

    third = api.start("alice")["id"]
    error = refused(phone.answer, third, "approve", pin="4711")
    assert (error.status, error.type) == (429, "pin-locked")  # the right one too, while locked
    assert api.status(third)["state"] == "denied"
    pin_rows = api.run(api.services.audit.query(action="pin.verify"))
    assert [row.result for row in pin_rows] == ["locked", "locked", "wrong", "wrong", "wrong"]


# -- number matching ---------------------------------------------------------------------------


@pytest.mark.parametrize("number", [None, "wrong"])
@sqlite_only
def test_number_matching_refuses_a_missing_or_wrong_number_and_denies(
    api: ApiHarness, number: str | None
) -> None:
    api.add_user("alice", number_matching=True)
    phone = api.device("alice")
    started = api.start("alice")
    assert 10 <= started["number"] <= 99
    assert phone.challenge(started["id"])["number_required"] is True
    sent = None if number is None else (started["number"] + 1) % 100

    error = refused(phone.answer, started["id"], "approve", number=sent)

    assert (error.status, error.type) == (403, "wrong-number")
    assert api.status(started["id"])["state"] == "denied"
    error = refused(phone.answer, started["id"], "approve", number=started["number"])
    assert (error.status, error.type) == (409, "challenge-closed")


@sqlite_only
def test_number_matching_approves_with_the_right_number(api: ApiHarness) -> None:
    api.add_user("alice", number_matching=True)
    phone = api.device("alice")
    started = api.start("alice")
    assert phone.answer(started["id"], "approve", number=started["number"]) == "approved"
    assert api.status(started["id"])["state"] == "approved"


@sqlite_only
def test_otp_challenges_carry_no_number_and_are_not_offered_to_the_app(api: ApiHarness) -> None:
    api.add_user("alice", number_matching=True)
    phone = api.device("alice")
    started = api.start("alice", method="otp")
    assert started["number"] is None
    assert phone.pending() == []
    error = refused(phone.answer, started["id"], "approve")
    assert (error.status, error.type) == (404, "not-found")


# -- device management ------------------------------------------------------------------------


@sqlite_only
def test_push_token_update(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    assert phone.device is not None

    phone.update_push_token("fcm:new-token-1")
    assert api.run(api.services.devices.get(phone.device.device_id)).push_token == (
        "fcm:new-token-1"
    )
    phone.update_push_token(None)
    assert api.run(api.services.devices.get(phone.device.device_id)).push_token is None
    error = refused(phone.update_push_token, "bad\ntoken")
    assert (error.status, error.type) == (400, "invalid-request")


@sqlite_only
def test_deactivated_device_is_refused(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    auth_id = api.start("alice")["id"]
    assert phone.device is not None

    phone.deactivate()

    assert api.run(api.services.devices.get(phone.device.device_id)).state == "removed"
    for call, args in (
        (phone.pending, ()),
        (phone.answer, (auth_id, "approve")),
        (phone.deactivate, ()),
    ):
        error = refused(call, *args)
        assert (error.status, error.type) == (401, "bad-signature")
    response = api.gateway.post("/gateway/v1/authentications", json={"user": "alice"})
    assert_problem(response, 409, "user-not-enrolled")


# -- fraud -------------------------------------------------------------------------------------


def test_fraud_report_blocks_the_user_and_cancels_their_other_challenges(
    api: ApiHarness,
) -> None:
    api.add_user("alice")
    api.add_user("bob")
    phone = api.device("alice")
    bob_phone = api.device("bob")
    reported = api.start("alice", context={"client_name": "vpn", "client_ip": "203.0.113.9"})
    other = api.start("alice")
    bobs = api.start("bob")

    assert phone.answer(reported["id"], "fraud") == "fraud"

    assert api.status(reported["id"])["state"] == "fraud"
    assert api.status(other["id"])["state"] == "cancelled"
    assert api.status(bobs["id"])["state"] == "pending"
    reports = api.fraud_reports()
    assert phone.device is not None
    assert [(r.challenge_id, r.device_id, r.client_ip, r.state) for r in reports] == [
        (reported["id"], phone.device.device_id, "203.0.113.9", "open")
    ]
    user = api.run(api.services.users.get("alice"))
    assert user.blocked
    assert reported["id"] in user.blocked_reason
    response = api.gateway.post("/gateway/v1/authentications", json={"user": "alice"})
    assert_problem(response, 403, "user-blocked")
    assert phone.pending() == []
    error = refused(phone.answer, other["id"], "approve")
    assert (error.status, error.type) == (409, "challenge-closed")
    assert bob_phone.answer(bobs["id"], "approve") == "approved"
    actions = {row.action for row in api.run(api.services.audit.query(user_name="alice"))}
    assert {"fraud.report", "challenge.cancel", "challenge.answer"} <= actions


@sqlite_only
def test_fraud_without_blocking_policy_only_records(api: ApiHarness) -> None:
    api.add_user("alice", fraud_blocks_user=False)
    phone = api.device("alice")
    reported = api.start("alice")
    other = api.start("alice")

    assert phone.answer(reported["id"], "fraud") == "fraud"

    assert len(api.fraud_reports()) == 1
    assert not api.run(api.services.users.get("alice")).blocked
    assert api.status(other["id"])["state"] == "pending"


# -- races -------------------------------------------------------------------------------------


def test_concurrent_answers_exactly_one_wins(api: ApiHarness) -> None:
    api.add_user("alice")
    phones = {"approve": api.device("alice"), "deny": api.device("alice")}
    auth_id = api.start("alice")["id"]
    barrier = threading.Barrier(len(phones))
    outcomes: dict[str, str] = {}

    def answer(kind: str) -> None:
        barrier.wait(timeout=10)
        try:
            outcomes[kind] = phones[kind].answer(auth_id, kind)
        except AuthenticatorError as exc:
            outcomes[kind] = f"{exc.status} {exc.type}"

    threads = [threading.Thread(target=answer, args=(kind,)) for kind in phones]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads)

    final = api.status(auth_id)["state"]
    assert final in {"approved", "denied"}
    winner = "approve" if final == "approved" else "deny"
    loser = "deny" if winner == "approve" else "approve"
    assert outcomes == {winner: final, loser: "409 challenge-closed"}
    answers = api.run(api.services.audit.query(action="challenge.answer"))
    assert [row.result for row in answers] == [final]
