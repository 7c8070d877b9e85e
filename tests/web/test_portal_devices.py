"""Portal "My devices": list, rename, remove (confirmed), mark lost (a lost device can neither
answer nor give accepted codes); every URL is the owner's only; every change audited."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import update

from backend.authenticator.client import AppClient, AuthenticatorError
from backend.domain.stepup import ADMINISTRATOR
from backend.services.context import SignInContext
from backend.store.tables import devices_t
from tests.support.api import ADMIN
from tests.support.web import (
    WebHarness,
    csrf_from,
    post_form,
    sign_in,
)


def signed_in(web: WebHarness, name: str) -> httpx.Client:
    web.add_user(name)
    browser = web.browser()
    assert sign_in(browser, name).status_code == 303
    return browser


def device_id(phone: AppClient) -> str:
    assert phone.device is not None
    return phone.device.device_id


def test_the_list_shows_each_device_and_an_invalid_push_token(web: WebHarness) -> None:
    browser = signed_in(web, "alice")
    assert "You have no devices." in browser.get("/portal/devices").text
    phone = web.device("alice")
    web.run(web.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice", "Aegis"))

    async def invalid() -> None:
        async with web.services.db.write() as conn:
            await conn.execute(
                update(devices_t)
                .where(devices_t.c.id == device_id(phone))
                .values(push_token="tok", push_status="invalid", push_error="Unregistered")
            )

    web.run(invalid())
    page = browser.get("/portal/devices").text
    assert "alice&#39;s phone" in page
    assert "OpenMFA app" in page
    assert "(reference authenticator)" in page
    assert "Aegis" in page
    assert "codes only (standard OATH app)" in page
    assert "push lost — open the app to renew" in page
    assert 'data-label="Last used"' in page  # stacks readably on a phone


def test_rename(web: WebHarness) -> None:
    browser = signed_in(web, "alice")
    phone = web.device("alice")
    path = f"/portal/devices/{device_id(phone)}/rename"
    done = post_form(browser, path, {"name": "  Work\tphone  "}, page="/portal/devices")
    assert done.status_code == 303
    assert "Renamed to “Work phone”." in browser.get("/portal/devices").text
    assert web.run(web.services.devices.get(device_id(phone))).name == "Work phone"
    row = web.audit("device.rename", "alice")[0]
    assert (row.actor, row.detail) == ("portal:alice", f"{device_id(phone)} Work phone")
    empty = post_form(browser, path, {"name": "   "}, page="/portal/devices")
    assert empty.status_code == 303
    assert "may not be empty" in browser.get("/portal/devices").text
    assert web.run(web.services.devices.get(device_id(phone))).name == "Work phone"


def test_remove_asks_first_then_the_device_is_gone(web: WebHarness) -> None:
    browser = signed_in(web, "alice")
    phone = web.device("alice")
    path = f"/portal/devices/{device_id(phone)}/remove"
    confirm = browser.get(path)
    assert confirm.status_code == 200
    assert "Remove “alice&#39;s phone”?" in confirm.text
    assert web.run(web.services.devices.get(device_id(phone))).state == "pending"  # GET: nothing
    done = browser.post(path, data={"csrf_token": csrf_from(confirm.text)})
    assert done.status_code == 303
    assert "is removed" in browser.get("/portal/devices").text
    assert web.run(web.services.devices.get(device_id(phone))).state == "removed"
    assert web.audit("device.remove", "alice")[0].actor == "portal:alice"
    with pytest.raises(AuthenticatorError):
        phone.pending()
    assert browser.get(path).status_code == 404  # removed: no longer one of mine


def test_a_lost_device_cannot_answer_or_give_codes(web: WebHarness) -> None:
    browser = signed_in(web, "alice")
    phone = web.device("alice")
    other = web.device("alice")  # the new phone
    path = f"/portal/devices/{device_id(phone)}/lost"
    confirm = browser.get(path)
    assert "Mark “alice&#39;s phone” lost?" in confirm.text
    assert browser.post(path, data={"csrf_token": csrf_from(confirm.text)}).status_code == 303
    page = browser.get("/portal/devices").text
    assert "marked lost — it cannot approve anything" in page
    assert web.run(web.services.devices.get(device_id(phone))).state == "lost"
    row = web.audit("device.lost", "alice")[0]
    assert (row.actor, row.result, row.detail) == ("portal:alice", "ok", device_id(phone))

    with pytest.raises(AuthenticatorError) as refused:
        phone.pending()
    assert refused.value.status == 401
    lost_code = phone.code(web.clock.now)
    result = web.run(web.services.otp.verify(ADMIN, "alice", lost_code, SignInContext()))
    if lost_code != other.code(web.clock.now):  # (a one-in-a-million same code)
        assert not result.accepted
    push = web.run(web.services.challenges.start(ADMIN, "alice", "push", SignInContext("vpn")))
    assert [c["id"] for c in other.pending()] == [push.id]  # the other phone still works
    assert browser.get(path).status_code == 303  # already lost: back to the list, said so
    # A lost device can still be removed from the list.
    remove = f"/portal/devices/{device_id(phone)}/remove"
    assert post_form(browser, remove, {}).status_code == 303
    assert web.run(web.services.devices.get(device_id(phone))).state == "removed"
    assert "marked lost" not in browser.get("/portal/devices").text


def test_another_user_gets_404_for_each_of_my_devices(web: WebHarness) -> None:
    alice = signed_in(web, "alice")
    phone = web.device("alice")
    bob = signed_in(web, "bob")
    token = csrf_from(bob.get("/portal/devices").text)
    mine = device_id(phone)
    for path in (f"/portal/devices/{mine}/remove", f"/portal/devices/{mine}/lost"):
        assert bob.get(path).status_code == 404, path
        assert bob.post(path, data={"csrf_token": token}).status_code == 404, path
    renamed = bob.post(
        f"/portal/devices/{mine}/rename", data={"csrf_token": token, "name": "mine now"}
    )
    assert renamed.status_code == 404
    assert bob.get("/portal/devices/dev_nope/remove").status_code == 404  # same answer
    device = web.run(web.services.devices.get(mine))
    assert (device.name, device.state) == ("alice's phone", "pending")
    assert "alice&#39;s phone" not in bob.get("/portal/devices").text
    assert "alice&#39;s phone" in alice.get("/portal/devices").text


def test_device_forms_need_the_csrf_token(web: WebHarness) -> None:
    browser = signed_in(web, "alice")
    mine = device_id(web.device("alice"))
    for action, data in (("rename", {"name": "x"}), ("remove", {}), ("lost", {})):
        response = browser.post(f"/portal/devices/{mine}/{action}", data=data)
        assert response.status_code == 403, action
    assert web.run(web.services.devices.get(mine)).state == "pending"
    assert [r.result for r in web.refusals()] == ["csrf-failed"] * 3
