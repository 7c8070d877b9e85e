"""What an answer re-checks at the moment it is written (issue 13).

* Finding 16: a device marked lost (or removed) between its signature check and its answer
  never answers, and never comes back to ``active``: the answer's write is conditional on
  the device still being live, in the answer's own transaction.
* The quick answer path re-checks that the user is neither blocked nor disabled: a block
  commits before the user's pending pushes are cancelled, and an approval in between must
  not pass.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.authenticator.client import AppClient, AuthenticatorError
from backend.config import Settings
from backend.domain import signing
from backend.domain.challenge import Answer
from backend.domain.stepup import ADMINISTRATOR
from backend.errors import BadSignature
from backend.services.context import Actor
from backend.services.devices import DeviceRecord
from tests.support.api import ADMIN, ApiHarness
from tests.support.clock import FakeClock
from tests.support.piapp import PiApp, PiLab

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
RACES = 30


def device_state(api: ApiHarness, device_id: str) -> str:
    return api.run(api.services.devices.get(device_id)).state


def signed_answer(phone: AppClient, auth_id: str, answer: str) -> tuple[str, bytes, dict[str, str]]:
    """The target, body and headers of an answer, signed now and sent later."""
    assert phone.device is not None
    target = f"/app/v1/challenges/{auth_id}/answer"
    body = json.dumps({"answer": answer}).encode()
    headers = signing.sign_request(
        phone.device.key(), phone.device.device_id, "POST", target, body, int(time.time())
    )
    return target, body, headers | {"content-type": "application/json"}


def checked_device(api: ApiHarness, phone: AppClient, auth_id: str, answer: str) -> DeviceRecord:
    """The device as the app API holds it after the signature check of an answer."""
    target, body, headers = signed_answer(phone, auth_id, answer)
    return api.run(api.services.devices.authenticate("POST", target, headers, body))


# -- finding 16: a lost device never answers ----------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "policy"),
    [
        ("approve", {}),  # the quick path
        ("deny", {}),  # the quick path
        ("fraud", {}),  # the full path
        ("approve", {"require_pin": True}),  # the full path, with the PIN check
    ],
    ids=["approve", "deny", "fraud", "approve-with-pin"],
)
def test_a_device_marked_lost_after_its_signature_check_cannot_answer(
    api: ApiHarness, answer: str, policy: dict[str, Any]
) -> None:
    api.add_user("alice", **policy)
    phone = api.device("alice", pin="4711" if policy else None)
    assert phone.device is not None
    auth_id = api.start("alice")["id"]
    device = checked_device(api, phone, auth_id, answer)
    assert device.state == "pending"

    api.run(api.services.devices.mark_lost(ADMIN, ADMINISTRATOR, device.id))
    actor = Actor(f"device:{device.id}")
    with pytest.raises(BadSignature, match="lost or removed"):
        api.run(
            api.services.challenges.answer(
                actor, device, auth_id, Answer(answer), pin="4711" if policy else None
            )
        )

    assert device_state(api, device.id) == "lost"
    assert api.status(auth_id)["state"] == "pending"
    assert api.fraud_reports() == []
    assert not api.run(api.services.users.get("alice")).blocked


@sqlite_only
def test_a_removed_device_after_its_signature_check_cannot_answer(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    auth_id = api.start("alice")["id"]
    device = checked_device(api, phone, auth_id, "approve")

    api.run(api.services.devices.remove(ADMIN, ADMINISTRATOR, device.id))
    with pytest.raises(BadSignature):
        api.run(
            api.services.challenges.answer(
                Actor(f"device:{device.id}"), device, auth_id, Answer.APPROVE
            )
        )

    assert device_state(api, device.id) == "removed"
    assert api.status(auth_id)["state"] == "pending"


@sqlite_only
def test_marking_lost_while_the_answer_is_in_flight_never_leaves_the_device_active(
    api: ApiHarness,
) -> None:
    """The review's race (3 of 83 tries brought a lost device back), over real HTTP."""
    # Many pushes in a row: the fatigue guard would stop them (it is not what is tested).
    api.add_user("alice", push_limit=0, push_max_unanswered=0, deny_limit_per_device=0)
    outcomes: list[int] = []

    async def mark_lost(device_id: str, head_start: int) -> None:
        # A varying head start for the answer spreads the tries over the interleavings.
        for _ in range(head_start):
            await asyncio.sleep(0)
        await api.services.devices.mark_lost(ADMIN, ADMINISTRATOR, device_id)

    async def race(phone: AppClient, auth_id: str, head_start: int) -> int:
        assert phone.device is not None
        target, body, headers = signed_answer(phone, auth_id, "approve")
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
            response, _ = await asyncio.gather(
                http.post(target, content=body, headers=headers),
                mark_lost(phone.device.device_id, head_start),
            )
        return response.status_code

    for attempt in range(RACES):
        phone = api.device("alice")
        assert phone.device is not None
        auth_id = api.start("alice")["id"]
        status = api.run(race(phone, auth_id, attempt))
        outcomes.append(status)
        assert device_state(api, phone.device.device_id) == "lost"
        state = api.status(auth_id)["state"]
        assert (status, state) in {(200, "approved"), (401, "pending")}, (status, state)
        api.run(api.services.challenges.cancel(ADMIN, auth_id))

    assert set(outcomes) <= {200, 401}


@sqlite_only
def test_an_answer_after_lost_is_refused_over_http(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    assert phone.device is not None
    auth_id = api.start("alice")["id"]
    api.run(api.services.devices.mark_lost(ADMIN, ADMINISTRATOR, phone.device.device_id))

    with pytest.raises(AuthenticatorError) as refused:
        phone.answer(auth_id, "approve")

    assert (refused.value.status, refused.value.type) == (401, "bad-signature")
    assert device_state(api, phone.device.device_id) == "lost"
    assert api.status(auth_id)["state"] == "pending"


@sqlite_only
def test_a_device_marked_lost_after_its_signature_check_keeps_its_push_token(
    api: ApiHarness,
) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    assert phone.device is not None
    body = json.dumps({"push_token": "attacker"}).encode()
    headers = signing.sign_request(
        phone.device.key(),
        phone.device.device_id,
        "PUT",
        "/app/v1/device/push-token",
        body,
        int(time.time()),
    )
    device = api.run(
        api.services.devices.authenticate("PUT", "/app/v1/device/push-token", headers, body)
    )

    api.run(api.services.devices.mark_lost(ADMIN, ADMINISTRATOR, device.id))
    with pytest.raises(BadSignature):
        api.run(api.services.devices.update_push_token(ADMIN, device, "attacker"))

    after = api.run(api.services.devices.get(device.id))
    assert (after.state, after.push_token) == ("lost", None)


# -- the quick path re-checks the user ------------------------------------------------------------


@sqlite_only
@pytest.mark.parametrize("change", ["blocked", "disabled"])
def test_an_approval_after_the_user_was_blocked_or_disabled_is_refused(
    api: ApiHarness, change: str
) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    auth_id = api.start("alice")["id"]
    # The first half of AccessService.block / disable: the flag is committed; the pending
    # pushes are cancelled only after it, so an approval can arrive in between.
    if change == "blocked":
        api.run(api.services.users.set_blocked(ADMIN, "alice", True, "test"))
    else:
        api.run(api.services.users.set_disabled(ADMIN, "alice", True))

    with pytest.raises(AuthenticatorError) as refused:
        phone.answer(auth_id, "approve")

    assert (refused.value.status, refused.value.type) == (403, f"user-{change}")
    assert api.status(auth_id)["state"] == "pending"
    # Deny stays possible (the user says no to a sign-in they did not start).
    assert phone.answer(auth_id, "deny") == "denied"


# -- the privacyIDEA path -------------------------------------------------------------------------

PI_RACES = 8


@sqlite_only
def test_a_pipush_token_marked_lost_while_its_answer_is_in_flight_stays_lost(
    settings: Settings, clock: FakeClock, tmp_path: Path
) -> None:
    """The review saw this path bring a lost token back too: its signature check and nonce
    are one transaction, the answer another."""
    with PiLab(settings, clock, tmp_path) as lab:
        lab.api.add_user("alice", push_limit=0, push_max_unanswered=0, deny_limit_per_device=0)
        for head_start in range(PI_RACES):
            app = lab.enrol("alice")
            device_id = next(
                d.id
                for d in lab.api.run(lab.api.services.devices.list_for_user("alice"))
                if d.kind == "pipush"
            )
            started = lab.api.start("alice", "push")
            request = app.poll()[0]

            async def race(
                app: PiApp = app,
                request: Any = request,
                device_id: str = device_id,
                head_start: int = head_start,
            ) -> Any:
                async def lose() -> None:
                    for _ in range(head_start):
                        await asyncio.sleep(0)
                    await lab.api.services.devices.mark_lost(ADMIN, ADMINISTRATOR, device_id)

                response, _ = await asyncio.gather(asyncio.to_thread(app.accept, request), lose())
                return response.json()["result"]["value"]

            approved = lab.api.run(race())
            assert lab.api.run(lab.api.services.devices.get(device_id)).state == "lost"
            state = lab.api.status(started["id"])["state"]
            assert (approved, state) in {(True, "approved"), (False, "pending")}, (approved, state)
            lab.api.run(lab.api.services.challenges.cancel(ADMIN, started["id"]))
