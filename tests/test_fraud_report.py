"""Fraud reports at the service level: the user's own "this wasn't me" (through the same path
as the app's ``fraud`` answer), listing, reviewing, and unblocking.
"""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backend.domain import totp
from backend.domain.challenge import Answer
from backend.domain.stepup import ADMINISTRATOR
from backend.errors import Conflict, NotFound, UserBlocked
from backend.services import Services
from backend.services.context import Actor, SignInContext
from backend.services.devices import DeviceRecord
from tests.support.clock import FakeClock

pytestmark = pytest.mark.anyio
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
ADMIN = Actor("cli:root", "local")
PORTAL = Actor("portal:alice", "198.51.100.4")
WHERE = SignInContext("vpn-gateway", "203.0.113.9", "asa-1")


async def app_device(services: Services, user: str) -> DeviceRecord:
    """A new user with an activated app device."""
    await services.users.add(ADMIN, user, email=f"{user}@example.com")
    offer = await services.activation.create_code(ADMIN, ADMINISTRATOR, user)
    public = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    activated = await services.activation.activate(ADMIN, offer.code, public, "android", name="P")
    return await services.devices.get(activated.device_id)


async def test_this_wasnt_me_on_a_pending_sign_in_is_the_apps_fraud_answer(
    services: Services,
) -> None:
    await app_device(services, "alice")
    reported = await services.challenges.start(ADMIN, "alice", "push", WHERE)
    other = await services.challenges.start(ADMIN, "alice", "otp", WHERE)
    waiting = asyncio.create_task(services.challenges.wait(reported.id, 30))

    report = await services.fraud.report_sign_in(PORTAL, "ALICE", reported.id)

    # The gateway waiting on it learns at once (the outcome bus), as for the app's answer.
    woken = await asyncio.wait_for(waiting, 10)
    assert woken.state == "fraud"
    assert (await services.challenges.get(other.id)).state == "cancelled"
    assert (report.state, report.challenge_id, report.challenge_state) == (
        "open",
        reported.id,
        "fraud",
    )
    assert (report.device_id, report.client_name, report.client_ip, report.nas_identifier) == (
        None,
        "vpn-gateway",
        "203.0.113.9",
        "asa-1",
    )
    assert report.user_blocked
    user = await services.users.get("alice")
    assert user.blocked
    assert reported.id in user.blocked_reason
    with pytest.raises(UserBlocked):
        await services.challenges.start(ADMIN, "alice", "otp", WHERE)
    rows = await services.audit.query(user_name="alice")
    answer = next(r for r in rows if r.action == "challenge.answer")
    assert (answer.result, answer.detail, answer.actor) == (
        "fraud",
        f"{reported.id} by portal",
        "portal:alice",
    )
    assert any(r.action == "fraud.report" and r.result == "blocked" for r in rows)


@sqlite_only
async def test_this_wasnt_me_on_an_approved_sign_in_files_a_report_and_keeps_history(
    services: Services, clock: FakeClock
) -> None:
    await services.users.add(ADMIN, "alice")
    oath = await services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")
    signed_in = await services.challenges.start(ADMIN, "alice", "otp", WHERE)
    view, result = await services.challenges.verify_code(
        ADMIN, signed_in.id, totp.current_code(oath.seed, clock())
    )
    assert (view.state, result.accepted) == ("approved", True)
    clock.advance(3600)  # an hour later the user sees it in the portal's history

    report = await services.fraud.report_sign_in(PORTAL, "alice", signed_in.id)
    again = await services.fraud.report_sign_in(PORTAL, "alice", signed_in.id)

    assert again.id == report.id  # a second click files nothing new
    assert (await services.challenges.get(signed_in.id)).state == "approved"  # history stays
    assert (report.challenge_state, report.created_at, report.device_id) == (
        "approved",
        clock.now,
        None,
    )
    assert len(await services.fraud.list("all")) == 1
    assert (await services.users.get("alice")).blocked


@sqlite_only
async def test_an_expired_sign_in_can_be_reported_too(services: Services, clock: FakeClock) -> None:
    await app_device(services, "alice")
    push = await services.challenges.start(ADMIN, "alice", "push", WHERE)
    clock.advance(3600)

    report = await services.fraud.report_sign_in(PORTAL, "alice", push.id)

    assert report.challenge_state == "expired"


@sqlite_only
async def test_only_the_users_own_sign_ins_can_be_reported(services: Services) -> None:
    await app_device(services, "alice")
    await app_device(services, "bob")
    bobs = await services.challenges.start(ADMIN, "bob", "push", WHERE)

    for user, challenge in (("alice", bobs.id), ("alice", "ch_nope")):
        with pytest.raises(NotFound):
            await services.fraud.report_sign_in(PORTAL, user, challenge)
    assert await services.fraud.list("all") == []
    assert (await services.challenges.get(bobs.id)).state == "pending"


@sqlite_only
async def test_without_the_blocking_policy_the_report_is_only_recorded(
    services: Services,
) -> None:
    await app_device(services, "alice")
    await services.policies.set(ADMIN, "fraud_blocks_user", "false", "alice")
    push = await services.challenges.start(ADMIN, "alice", "push", WHERE)

    report = await services.fraud.report_sign_in(PORTAL, "alice", push.id)

    assert not report.user_blocked
    assert not (await services.users.get("alice")).blocked


@sqlite_only
async def test_list_filters_and_orders_newest_first_and_review_marks_one(
    services: Services, clock: FakeClock
) -> None:
    ids = []
    for user in ("alice", "bob", "carol"):
        device = await app_device(services, user)
        push = await services.challenges.start(ADMIN, user, "push", WHERE)
        await services.challenges.answer(ADMIN, device, push.id, Answer.FRAUD)
        ids.append((await services.fraud.list("all", user))[0].id)
        clock.advance(60)

    reviewed = await services.fraud.review(ADMIN, ids[1])

    assert (reviewed.state, reviewed.reviewed_by, reviewed.reviewed_at) == (
        "reviewed",
        "cli:root",
        clock.now,
    )
    assert reviewed.user_blocked  # reviewing does not unblock
    assert [r.id for r in await services.fraud.list()] == [ids[2], ids[0]]
    assert [r.id for r in await services.fraud.list("reviewed")] == [ids[1]]
    assert [r.id for r in await services.fraud.list("all")] == ids[::-1]
    assert [r.user_name for r in await services.fraud.list("all", "BOB")] == ["bob"]
    (row,) = await services.audit.query(action="fraud.review")
    assert (row.user_name, row.result, row.actor) == ("bob", "reviewed", "cli:root")
    with pytest.raises(Conflict, match="already reviewed by cli:root"):
        await services.fraud.review(ADMIN, ids[1])
    for unknown in (0, 999, 2**70):
        with pytest.raises(NotFound, match=f"no fraud report {unknown}"):
            await services.fraud.review(ADMIN, unknown)


@sqlite_only
async def test_review_open_for_user_closes_only_that_users_open_reports(
    services: Services,
) -> None:
    await services.policies.set(ADMIN, "fraud_blocks_user", "false")
    await app_device(services, "alice")
    await app_device(services, "bob")
    for user in ("alice", "alice", "bob"):
        sign_in = await services.challenges.start(ADMIN, user, "otp", WHERE)
        await services.fraud.report_sign_in(PORTAL, user, sign_in.id)

    closed = await services.fraud.review_open_for_user(ADMIN, "alice", "on unblock")

    assert len(closed) == 2
    assert [r.user_name for r in await services.fraud.list("open")] == ["bob"]
    rows = await services.audit.query(action="fraud.review")
    assert sorted(r.detail for r in rows) == [f"report {i} on unblock" for i in closed]
    assert await services.fraud.review_open_for_user(ADMIN, "alice", "on unblock") == ()
