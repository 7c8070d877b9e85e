"""The privacyIDEA Authenticator endpoint over real HTTPS, driven by a client that speaks the
app's wire format (tests/support/piapp.py): rollout, poll, answers, token update, refusals.

Gateways start sign-ins through the gateway API over real HTTP; the server's clock is a
:class:`FakeClock` that the phone reads too (phones keep NTP time), so windows and expiry are
tested by moving it, never by sleeping.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from backend.config import Settings
from backend.domain.stepup import ADMINISTRATOR
from backend.services.pipush import ENDPOINT_PATH
from backend.store.tables import devices_t, pipush_nonces_t, users_t
from tests.support.api import ADMIN
from tests.support.clock import FakeClock
from tests.support.piapp import PiApp, PiLab, RolloutExpired, dart_timestamp

OK = {"result": {"status": True, "value": True}}
REFUSED_ANSWER = {"status": True, "value": False}


@pytest.fixture
def lab(settings: Settings, clock: FakeClock, tmp_path: Path) -> Iterator[PiLab]:
    with PiLab(settings, clock, tmp_path) as running:
        yield running


def refusals(lab: PiLab, type_: str) -> list[Any]:
    return [row for row in lab.api.refusals() if row.result == type_]


def device_row(lab: PiLab, device_id: str) -> Any:
    async def load() -> Any:
        async with lab.api.services.db.read() as conn:
            return (await conn.execute(select(devices_t).where(devices_t.c.id == device_id))).one()

    return lab.api.run(load())


def user_blocked(lab: PiLab, user: str) -> bool:
    async def load() -> bool:
        async with lab.api.services.db.read() as conn:
            row = (
                await conn.execute(select(users_t.c.blocked).where(users_t.c.name == user))
            ).one()
            return bool(row.blocked)

    return lab.api.run(load())


def one_request(app: PiApp) -> Any:
    requests = app.poll()
    assert len(requests) == 1, (requests, app.last_error)
    return requests[0]


def error_message(response: Any) -> str:
    body = response.json()
    assert body["result"]["status"] is False, body
    return str(body["result"]["error"]["message"])


# -- enrolment and rollout ----------------------------------------------------------------------


def test_the_qr_code_and_the_rollout_turn_a_pending_device_active(lab: PiLab) -> None:
    lab.api.add_user("alice")
    offer = lab.api.run(
        lab.api.services.pipush.create_enrollment(ADMIN, ADMINISTRATOR, "alice", "Alice's phone")
    )
    parts = urlsplit(offer.uri)
    assert (parts.scheme, parts.netloc, parts.path) == ("otpauth", "pipush", "/alice")
    params = {key: values[0] for key, values in parse_qs(parts.query).items()}
    assert params.pop("enrollment_credential")
    assert params == {
        "url": lab.front.url + ENDPOINT_PATH,
        "ttl": str(600 // 60),  # the policy's activation_code_ttl_seconds, in minutes
        "issuer": "OpenMFA",
        "v": "1",
        "serial": offer.serial,
        "sslverify": "1",
        "poll_only": "True",
    }
    assert lab.api.run(lab.api.services.devices.get(offer.device_id)).state == "pending"

    app = lab.phone()
    app.scan(offer.uri)
    response = app.rollout()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["result"] == {"status": True, "value": True}
    assert body["detail"]["rollout_state"] == "enrolled"
    assert "\n" not in body["detail"]["public_key"]
    assert app.token is not None
    assert app.token.server_key is not None

    device = lab.api.run(lab.api.services.devices.get(offer.device_id))
    assert (device.state, device.kind, device.name, device.platform) == (
        "active",
        "pipush",
        "Alice's phone",
        "android",
    )
    stored = device_row(lab, offer.device_id)
    assert stored.public_key == app.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert stored.server_key_enc is not None
    assert b"PRIVATE" not in stored.server_key_enc  # sealed, not PEM
    actions = [row.action for row in lab.api.run(lab.api.services.audit.query(user_name="alice"))]
    assert actions[:2] == ["pipush.rollout", "pipush.enrol"]


def test_the_qr_code_asks_for_the_phone_lock_when_policy_wants_a_pin(lab: PiLab) -> None:
    lab.api.add_user("bob", require_pin=True)
    offer = lab.api.run(lab.api.services.pipush.create_enrollment(ADMIN, ADMINISTRATOR, "bob"))
    assert parse_qs(urlsplit(offer.uri).query)["pin"] == ["True"]
    assert device_row(lab, offer.device_id).app_lock is True


def test_the_ios_empty_post_is_refused_and_does_not_use_up_the_credential(lab: PiLab) -> None:
    lab.api.add_user("carol")
    offer = lab.api.run(lab.api.services.pipush.create_enrollment(ADMIN, ADMINISTRATOR, "carol"))
    app = lab.phone()
    app.scan(offer.uri)
    probe = app.ios_network_check()
    assert probe.status_code == 400
    assert "nothing to do" in error_message(probe)
    assert refusals(lab, "invalid-request")  # audited like every refusal
    assert lab.api.run(lab.api.services.devices.get(offer.device_id)).state == "pending"

    response = app.rollout(ios=True)  # sends the empty POST again first, as iOS does
    assert response.status_code == 200, response.text
    assert lab.api.run(lab.api.services.devices.get(offer.device_id)).state == "active"


def test_the_credential_is_single_use_and_must_match_the_serial(lab: PiLab) -> None:
    lab.api.add_user("dave")
    offer = lab.api.run(lab.api.services.pipush.create_enrollment(ADMIN, ADMINISTRATOR, "dave"))
    other = lab.api.run(lab.api.services.pipush.create_enrollment(ADMIN, ADMINISTRATOR, "dave"))

    thief = lab.phone()
    token = thief.scan(offer.uri)
    token.credential = parse_qs(urlsplit(other.uri).query)["enrollment_credential"][0]
    response = thief.rollout()
    assert response.status_code == 400
    assert "unknown serial or enrolment credential" in thief.last_error

    first, second = lab.phone(), lab.phone()
    first.scan(offer.uri)
    second.scan(offer.uri)
    assert first.rollout().status_code == 200
    again = second.rollout()
    assert again.status_code == 400
    assert "already used" in second.last_error
    assert refusals(lab, "activation-code-invalid")
    assert refusals(lab, "activation-code-used")[0].user_name == "dave"


def test_an_expired_enrolment_is_refused_and_the_device_removed(
    lab: PiLab, clock: FakeClock
) -> None:
    lab.api.add_user("erin")
    offer = lab.api.run(
        lab.api.services.pipush.create_enrollment(ADMIN, ADMINISTRATOR, "erin", ttl_seconds=120)
    )
    app = lab.phone()
    token = app.scan(offer.uri)
    clock.advance(121)
    with pytest.raises(RolloutExpired):  # the app gives up by itself after the ttl...
        app.rollout()
    token.expires += timedelta(hours=1)  # ...and a phone whose clock lags is refused
    response = app.rollout()
    assert response.status_code == 400
    assert "expired" in app.last_error
    assert lab.api.run(lab.api.services.devices.get(offer.device_id)).state == "removed"
    assert refusals(lab, "activation-code-expired")[0].user_name == "erin"


def test_an_enrolment_that_expired_unused_is_tidied_up_by_the_next_one(
    lab: PiLab, clock: FakeClock
) -> None:
    lab.api.add_user("fay")
    stale = lab.api.run(
        lab.api.services.pipush.create_enrollment(ADMIN, ADMINISTRATOR, "fay", ttl_seconds=60)
    )
    clock.advance(61)
    fresh = lab.api.run(lab.api.services.pipush.create_enrollment(ADMIN, ADMINISTRATOR, "fay"))
    devices = lab.api.run(lab.api.services.devices.list_for_user("fay"))
    assert [d.id for d in devices] == [fresh.device_id]
    assert lab.api.run(lab.api.services.devices.get(stale.device_id)).state == "removed"


def test_a_weak_or_malformed_phone_key_is_refused(lab: PiLab) -> None:
    lab.api.add_user("gus")
    offer = lab.api.run(lab.api.services.pipush.create_enrollment(ADMIN, ADMINISTRATOR, "gus"))
    weak = lab.phone(key=rsa.generate_private_key(public_exponent=65537, key_size=1024))  # noqa: S505
    weak.scan(offer.uri)
    assert weak.rollout().status_code == 400
    assert "at least 2048 bits" in weak.last_error
    garbage = lab.phone()
    token = garbage.scan(offer.uri)
    response = garbage._post(
        token.url,
        {
            "enrollment_credential": token.credential,
            "serial": token.serial,
            "fbtoken": "no_firebase_token",
            "pubkey": base64.b64encode(b"not a key").decode(),
        },
    )
    assert response.status_code == 400
    assert "pubkey" in error_message(response)
    # Neither attempt used the credential up.
    good = lab.phone()
    good.scan(offer.uri)
    assert good.rollout().status_code == 200


def test_push_needs_a_rolled_out_token(lab: PiLab) -> None:
    lab.api.add_user("hal")
    lab.api.run(lab.api.services.pipush.create_enrollment(ADMIN, ADMINISTRATOR, "hal"))
    response = lab.api.gateway.post(
        "/gateway/v1/authentications", json={"user": "hal", "method": "push"}
    )
    assert response.status_code == 409, response.text
    assert response.json()["type"].endswith("/user-not-enrolled")


# -- poll ---------------------------------------------------------------------------------------


def test_a_poll_shows_each_pending_push_once_signed_for_the_app(lab: PiLab) -> None:
    app = lab.enrol("ivy")
    assert app.poll() == []
    started = lab.api.start("ivy", "push", context={"client_name": "vpn", "client_ip": "192.0.2.7"})
    request = one_request(app)
    assert request.url == lab.front.url + ENDPOINT_PATH
    assert request.title == "OpenMFA"
    assert request.question == "Sign-in to vpn from 192.0.2.7"
    assert request.options is None
    assert request.decline_reason is True  # the signed capabilities verified
    assert len(request.nonce) == 32
    assert app.poll() == []  # the same nonce again: the app already knows it
    raw = app.poll_response().json()["result"]["value"]
    assert [item["nonce"] for item in raw] == [request.nonce]
    assert lab.api.status(started["id"])["state"] == "pending"


def test_the_poll_timestamp_must_be_within_a_minute(lab: PiLab, clock: FakeClock) -> None:
    app = lab.enrol("jack")
    lab.api.start("jack", "push")
    for skew in (-61, 61):
        response = app.poll_response(timestamp=dart_timestamp(clock() + timedelta(seconds=skew)))
        assert response.status_code == 403
        assert "clock is off" in error_message(response)
    assert len(refusals(lab, "stale-request")) == 2
    assert refusals(lab, "stale-request")[0].user_name == "jack"
    assert len(app.poll(timestamp=dart_timestamp(clock() - timedelta(seconds=59)))) == 1
    stamp = clock().replace(microsecond=123000)  # Dart drops zero microseconds: 3 digits
    assert dart_timestamp(stamp).endswith(".123Z")
    assert app.poll_response(timestamp=dart_timestamp(stamp)).status_code == 200
    bad = app.poll_response(timestamp="yesterday")
    assert bad.status_code == 400
    assert "ISO-8601" in error_message(bad)


def test_a_poll_with_a_wrong_signature_is_refused(lab: PiLab) -> None:
    app = lab.enrol("kim")
    lab.api.start("kim", "push")
    stranger = PiApp(lab.clock, lab.tls.client_context())
    stamp = dart_timestamp(lab.clock())
    forged = stranger.sign(f"{app.serial}|{stamp}")
    stranger.close()
    for signature in (forged, "not*base32"):
        response = app.poll_response(timestamp=stamp, signature=signature)
        assert response.status_code == 403
        assert "signature" in error_message(response)
    other_message = app.sign(f"{app.serial}|{dart_timestamp(lab.clock() + timedelta(seconds=1))}")
    assert app.poll_response(timestamp=stamp, signature=other_message).status_code == 403
    assert len(refusals(lab, "bad-signature")) == 3
    unknown = dataclasses.replace(app.token, serial="OMFA0000000000000000") if app.token else None
    app.token = unknown
    response = app.poll_response()
    assert response.status_code == 403
    assert "unknown serial" in error_message(response)


def test_no_poll_answer_ever_holds_a_malformed_item(lab: PiLab) -> None:
    app = lab.enrol("lea")
    lab.api.set_policy("push_max_unanswered", 0, user="lea")
    lab.api.set_policy("push_limit", 0, user="lea")
    displays = [
        "Sign-in | to VPN",  # the separator of the signed string
        "Line one\nline two\ttabbed\r\n",
        "Anmeldung bei Büro — 東京 ✓",
        "x" * 256,
        # (C0 controls and DEL never get this far: the gateway API refuses them)
        "\u2028\u2029 zero-width\u200b\u00ad",
        "",
    ]
    for display in displays:
        lab.api.start("lea", "push", context={"client_name": "gw", "display": display})
    requests = app.poll()
    assert (app.dropped_batches, app.dropped_items) == (0, 0)
    assert len(requests) == len(displays)
    for request in requests:
        assert "|" not in request.question
        assert request.question.isprintable()
        assert len(request.question) <= 200
    assert requests[2].question == "Anmeldung bei Büro — 東京 ✓"


def test_the_device_list_says_the_token_is_answered_by_opening_the_app(lab: PiLab) -> None:
    lab.enrol("ned")
    device = lab.api.run(lab.api.services.devices.list_for_user("ned"))[0]
    assert device.push_summary == "polling (privacyIDEA app: open the app to answer)"


def test_a_removed_token_can_no_longer_poll(lab: PiLab) -> None:
    app = lab.enrol("max")
    device = lab.api.run(lab.api.services.devices.list_for_user("max"))[0]
    lab.api.run(lab.api.services.devices.remove(ADMIN, ADMINISTRATOR, device.id))
    response = app.poll_response()
    assert response.status_code == 403
    assert "removed" in error_message(response)


# -- answers ------------------------------------------------------------------------------------


def test_accept_approves_the_sign_in(lab: PiLab) -> None:
    app = lab.enrol("nia")
    started = lab.api.start("nia", "push")
    response = app.accept(one_request(app))
    assert (response.status_code, response.json()) == (200, OK)
    assert lab.api.status(started["id"])["state"] == "approved"
    rows = lab.api.run(lab.api.services.audit.query(user_name="nia", action="challenge.answer"))
    assert rows[0].result == "approved"
    assert rows[0].actor.startswith("device:dev_")


def test_cancelled_denies_without_a_fraud_report(lab: PiLab) -> None:
    app = lab.enrol("oli")
    started = lab.api.start("oli", "push")
    response = app.decline(one_request(app), "cancelled")
    assert response.json() == OK
    assert lab.api.status(started["id"])["state"] == "denied"
    assert lab.api.fraud_reports() == []
    assert not user_blocked(lab, "oli")


@pytest.mark.parametrize("negotiated", [True, False], ids=["not-me", "plain-decline"])
def test_not_me_and_a_plain_decline_report_fraud(lab: PiLab, negotiated: bool) -> None:
    app = lab.enrol("pia")
    started = lab.api.start("pia", "push")
    request = one_request(app)
    # An app before 4.8 (no capabilities) sends a plain decline, and only for "not me".
    request = dataclasses.replace(request, decline_reason=negotiated)
    response = app.decline(request, "unknown_trigger")
    assert response.json() == OK
    assert lab.api.status(started["id"])["state"] == "fraud"
    reports = lab.api.fraud_reports()
    assert [(r.challenge_id, r.state) for r in reports] == [(started["id"], "open")]
    assert reports[0].device_id is not None
    assert user_blocked(lab, "pia")  # policy fraud_blocks_user (default on)
    assert lab.api.run(lab.api.services.audit.query(user_name="pia", action="fraud.report"))


def test_number_matching_offers_a_choice_and_a_wrong_one_denies(lab: PiLab) -> None:
    app = lab.enrol("quinn")
    lab.api.set_policy("number_matching", True, user="quinn")
    right = lab.api.start("quinn", "push")
    request = one_request(app)
    assert request.options is not None
    assert len(request.options) == 3
    assert str(right["number"]) in request.options
    assert request.question.endswith("Choose the number shown at the sign-in.")
    assert app.accept(request, str(right["number"])).json() == OK
    assert lab.api.status(right["id"])["state"] == "approved"

    wrong = lab.api.start("quinn", "push")
    request = one_request(app)
    assert request.options is not None
    choice = next(option for option in request.options if option != str(wrong["number"]))
    response = app.accept(request, choice)
    assert response.status_code == 200
    assert response.json()["result"] == REFUSED_ANSWER
    assert lab.api.status(wrong["id"])["state"] == "denied"
    assert refusals(lab, "wrong-number")[0].user_name == "quinn"

    missing = lab.api.start("quinn", "push")
    assert app.accept(one_request(app)).json()["result"] == REFUSED_ANSWER  # no choice at all
    assert lab.api.status(missing["id"])["state"] == "denied"


def test_a_nonce_is_spent_by_the_first_verified_answer(lab: PiLab) -> None:
    app = lab.enrol("rex")
    started = lab.api.start("rex", "push")
    request = one_request(app)
    stranger = PiApp(lab.clock, lab.tls.client_context())
    forged = stranger.sign(f"{request.nonce}|{request.serial}")
    stranger.close()
    bad = app.answer(request, decline=False, reason=None, signature=forged)
    assert bad.json()["result"] == REFUSED_ANSWER
    assert "signature" in bad.json()["detail"]["message"]
    assert lab.api.status(started["id"])["state"] == "pending"  # a forgery decides nothing

    assert app.accept(request).json() == OK  # the nonce was not spent by the forgery
    replay = app.decline(request, "unknown_trigger")
    assert replay.json()["result"] == REFUSED_ANSWER
    assert lab.api.status(started["id"])["state"] == "approved"
    assert lab.api.fraud_reports() == []
    assert [r.user_name for r in refusals(lab, "replayed-request")] == ["rex"]
    assert [r.user_name for r in refusals(lab, "bad-signature")] == ["rex"]

    unknown = dataclasses.replace(request, nonce="A" * 32)
    assert app.accept(unknown).json()["result"] == REFUSED_ANSWER
    assert refusals(lab, "not-found")


def test_an_answer_after_the_challenge_expired_is_refused(lab: PiLab, clock: FakeClock) -> None:
    app = lab.enrol("sam")
    started = lab.api.start("sam", "push")
    request = one_request(app)
    clock.advance(3600)
    response = app.accept(request)
    assert response.json()["result"] == REFUSED_ANSWER
    assert "expired" in response.json()["detail"]["message"]
    assert lab.api.status(started["id"])["state"] == "expired"
    assert app.poll() == []


def test_an_answer_for_another_tokens_nonce_is_refused(lab: PiLab) -> None:
    mine, theirs = lab.enrol("tia"), lab.enrol("uma")
    started = lab.api.start("uma", "push")
    request = one_request(theirs)
    assert mine.poll() == []  # another user's sign-in never shows
    foreign = dataclasses.replace(request, serial=mine.serial)
    assert mine.accept(foreign).json()["result"] == REFUSED_ANSWER
    assert lab.api.status(started["id"])["state"] == "pending"


def test_the_phone_lock_stands_for_the_pin_only_if_the_token_was_enrolled_with_it(
    lab: PiLab,
) -> None:
    lab.api.add_user("vic", require_pin=True)
    locked = lab.enrol("vic")
    assert locked.token is not None
    assert locked.token.pin
    started = lab.api.start("vic", "push")
    assert locked.accept(one_request(locked)).json() == OK
    assert lab.api.status(started["id"])["state"] == "approved"

    unlocked = lab.enrol("walt")  # enrolled while no PIN was asked for
    lab.api.set_policy("require_pin", True, user="walt")
    started = lab.api.start("walt", "push")
    request = one_request(unlocked)
    response = unlocked.accept(request)
    assert response.json()["result"] == REFUSED_ANSWER
    assert "enrol it again" in response.json()["detail"]["message"]
    assert lab.api.status(started["id"])["state"] == "pending"
    assert refusals(lab, "pin-required")[0].user_name == "walt"
    assert unlocked.decline(request, "cancelled").json()["result"] == REFUSED_ANSWER  # spent


def test_nonce_rows_of_ended_challenges_are_cleared(lab: PiLab, clock: FakeClock) -> None:
    app = lab.enrol("xena")
    lab.api.start("xena", "push")
    one_request(app)
    clock.advance(3600)
    assert app.poll() == []

    async def count() -> int:
        async with lab.api.services.db.read() as conn:
            return len((await conn.execute(select(pipush_nonces_t))).all())

    assert lab.api.run(count()) == 0


# -- token update -------------------------------------------------------------------------------


def test_the_token_update_is_verified_and_audited(lab: PiLab, clock: FakeClock) -> None:
    app = lab.enrol("yara")
    response = app.token_update()
    assert (response.status_code, response.json()) == (200, OK)
    rows = lab.api.run(lab.api.services.audit.query(user_name="yara", action="pipush.token_update"))
    assert len(rows) == 1
    assert app.token_update(dart_timestamp(clock() - timedelta(minutes=4))).status_code == 200
    stale = app.token_update(dart_timestamp(clock() - timedelta(minutes=6)))
    assert stale.status_code == 403
    assert "clock is off" in error_message(stale)
    assert app.token is not None
    forged = app._post(
        app.token.url,
        {
            "new_fb_token": "no_firebase_token",
            "serial": app.serial,
            "timestamp": dart_timestamp(clock()),
            "signature": app.sign("something else"),
        },
    )
    assert forged.status_code == 403
    assert refusals(lab, "bad-signature")[0].user_name == "yara"


# -- malformed requests -------------------------------------------------------------------------


def test_malformed_requests_get_clear_errors_in_the_apps_format(lab: PiLab) -> None:
    app = lab.enrol("zoe")
    assert app.token is not None
    url = app.token.url
    http = app.http
    too_big = http.post(
        url,
        content=b"nonce=" + b"A" * 9000,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert too_big.status_code == 413
    assert "at most 8192 bytes" in error_message(too_big)
    twice = http.post(
        url,
        content=b"serial=a&serial=b&pubkey=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert twice.status_code == 400
    assert "serial is given twice" in error_message(twice)
    as_json = http.post(url, json={"nonce": "x"})
    assert as_json.status_code == 400
    assert "x-www-form-urlencoded" in error_message(as_json)
    no_serial = http.get(url + "?timestamp=x&signature=y")
    assert no_serial.status_code == 400
    assert "serial is required" in error_message(no_serial)
    bad_decline = app._post(url, {"serial": app.serial, "nonce": "N", "decline": "yes"})
    assert bad_decline.json()["result"] == REFUSED_ANSWER
    bad_reason = app._post(
        url,
        {
            "serial": app.serial,
            "nonce": "N",
            "decline": "1",
            "decline_reason": "bored",
            "signature": "AAAA",
        },
    )
    assert "decline_reason must be one of" in bad_reason.json()["detail"]["message"]
    assert len(refusals(lab, "invalid-request")) == 5
    assert refusals(lab, "payload-too-large")
    assert lab.api.refusals()[0].detail.startswith(f"POST {ENDPOINT_PATH} (answer)")
