"""Disabling, blocking and unblocking do everything that goes with them, from every path."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from backend.domain.challenge import Answer, ChallengeState
from backend.domain.stepup import ADMINISTRATOR
from backend.services import Services
from backend.services.context import Actor, SignInContext

pytestmark = pytest.mark.anyio
ADMIN = Actor("test:admin")


async def _signed_in_user(services: Services, name: str) -> tuple[str, str]:
    """A user with a device, a pending push and a portal session: (challenge id, cookie)."""
    user = await services.users.add(ADMIN, name)
    offer = await services.activation.create_code(ADMIN, ADMINISTRATOR, name)
    key = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    await services.activation.activate(ADMIN, offer.code, key, "reference")
    view = await services.challenges.start(ADMIN, name, "push", SignInContext("vpn"))
    cookie, _ = await services.web_sessions.create("portal", user_id=user.id)
    return view.id, cookie


@pytest.mark.parametrize("action", ["disable", "block", "reset_devices"])
async def test_taking_access_away_cancels_sign_ins_and_ends_web_sessions(
    services: Services, action: str
) -> None:
    challenge_id, cookie = await _signed_in_user(services, "alice")
    # Resetting devices changes factors: it takes the administrator's proof (step-up rule).
    proof = (ADMINISTRATOR,) if action == "reset_devices" else ()
    change = await getattr(services.access, action)(ADMIN, *proof, "alice")
    assert (change.cancelled, change.sessions_ended) == (1, 1)
    assert (await services.challenges.get(challenge_id)).state is ChallengeState.CANCELLED
    assert await services.web_sessions.load("portal", cookie) is None
    ended = await services.audit.query(user_name="alice", action="web.sessions_end")
    assert [entry.detail for entry in ended] == [f"1 ({action.replace('_', '-')})"]


async def test_enable_gives_access_back_and_touches_nothing_else(services: Services) -> None:
    await _signed_in_user(services, "alice")
    await services.access.disable(ADMIN, "alice")
    change = await services.access.enable(ADMIN, "alice")
    assert (change.user.state, change.cancelled, change.sessions_ended) == ("active", 0, 0)


async def test_unblock_reviews_the_open_fraud_reports(services: Services) -> None:
    challenge_id, _ = await _signed_in_user(services, "alice")
    device = (await services.devices.list_for_user("alice"))[0]
    await services.challenges.answer(ADMIN, device, challenge_id, Answer.FRAUD)
    assert (await services.users.get("alice")).blocked  # the default fraud policy
    [report] = await services.fraud.list()
    change = await services.access.unblock(ADMIN, "alice")
    assert change.reviewed == (report.id,)
    assert not change.user.blocked
    assert (await services.fraud.get(report.id)).state == "reviewed"
