"""Sign-in history (services.sign_ins.recent) and the portal's "My sign-ins" with "this wasn't
me", which files the fraud report through the app's path; users see their own only."""

from __future__ import annotations

import re

import httpx
import pytest

from backend.errors import BadRequest, NotFound
from backend.services.context import SignInContext
from tests.support.api import ADMIN
from tests.support.web import WebHarness, csrf_from, sign_in

VPN = SignInContext("vpn-gw", "198.51.100.7", "nas-1")


def signed_in(web: WebHarness, name: str) -> httpx.Client:
    web.add_user(name, push_limit=0, push_max_unanswered=0)
    browser = web.browser()
    assert sign_in(browser, name).status_code == 303
    return browser


def start(web: WebHarness, user: str, context: SignInContext = VPN) -> str:
    view = web.run(web.services.challenges.start(ADMIN, user, "push", context))
    web.clock.advance(1)
    return view.id


def test_recent_lists_newest_first_pages_on_and_filters_by_user(web: WebHarness) -> None:
    web.add_user("alice", push_limit=0, push_max_unanswered=0)
    web.add_user("bob")
    phone = web.device("alice")
    web.device("bob")
    ids = [start(web, "alice") for _ in range(5)]
    bobs = start(web, "bob", SignInContext("wifi", "203.0.113.5"))
    phone.answer(ids[4], "approve")
    recent = web.services.sign_ins.recent

    rows = web.run(recent("alice"))
    assert [r.challenge_id for r in rows] == ids[::-1]
    newest = rows[0]
    assert (newest.client_name, newest.client_ip, newest.nas_identifier) == (
        "vpn-gw",
        "198.51.100.7",
        "nas-1",
    )
    assert (newest.method, newest.state, newest.fraud_reported) == ("push", "approved", False)
    assert newest.user_name == "alice"
    assert rows[1].state == "pending"

    first = web.run(recent("alice", limit=2))
    second = web.run(recent("alice", limit=2, before_id=first[-1].challenge_id))
    third = web.run(recent("alice", limit=2, before_id=second[-1].challenge_id))
    paged = [r.challenge_id for r in first + second + third]
    assert paged == ids[::-1]
    everyone = web.run(recent(None))
    assert [r.challenge_id for r in everyone][:2] == [bobs, ids[4]]
    assert {r.user_name for r in everyone} == {"alice", "bob"}
    with pytest.raises(NotFound):
        web.run(recent("alice", before_id=bobs))  # bob's sign-in is no anchor for alice
    with pytest.raises(BadRequest):
        web.run(recent("alice", limit=0))

    web.clock.advance(61)  # the pending ones timed out (nothing has read them since)
    assert {r.state for r in web.run(recent("alice"))[1:]} == {"expired"}


def test_the_page_lists_my_sign_ins_only(web: WebHarness) -> None:
    alice = signed_in(web, "alice")
    assert "No sign-ins yet." in alice.get("/portal/sign-ins").text
    web.add_user("bob")
    phone = web.device("alice")
    web.device("bob")
    mine = start(web, "alice")
    phone.answer(mine, "approve")
    start(web, "bob", SignInContext("bobs-gw", "203.0.113.99"))
    page = alice.get("/portal/sign-ins").text
    assert "vpn-gw (nas-1)" in page
    assert "198.51.100.7" in page
    assert "approved" in page
    assert f'href="/portal/sign-ins/{mine}/report"' in page
    assert "bobs-gw" not in page
    assert "203.0.113.99" not in page


def test_the_page_pages_through_older_sign_ins(web: WebHarness) -> None:
    alice = signed_in(web, "alice")
    web.device("alice")
    ids = [start(web, "alice") for _ in range(27)]
    page = alice.get("/portal/sign-ins").text
    older = re.search(r'href="(/portal/sign-ins\?before=[^"]+)"', page)
    assert older is not None
    assert ids[2] in page
    assert ids[1] not in page
    rest = alice.get(older.group(1)).text
    assert ids[1] in rest
    assert ids[0] in rest
    assert "Older sign-ins" not in rest


def test_this_wasnt_me_files_the_report_through_the_fraud_path(web: WebHarness) -> None:
    alice = signed_in(web, "alice")
    phone = web.device("alice")
    approved = start(web, "alice")
    phone.answer(approved, "approve")
    waiting = start(web, "alice")
    path = f"/portal/sign-ins/{approved}/report"
    confirm = alice.get(path)
    assert confirm.status_code == 200
    assert "your account is usually blocked" in confirm.text
    assert web.fraud_reports() == []  # asking changes nothing
    done = alice.post(path, data={"csrf_token": csrf_from(confirm.text)})
    assert done.status_code == 303
    assert done.headers["location"] == "/portal/sign-ins"
    page = alice.get("/portal/sign-ins").text
    assert "The sign-in is reported as not yours" in page
    assert "Your account is now blocked" in page
    [report] = web.fraud_reports()
    assert (report.challenge_id, report.state) == (approved, "open")
    assert web.user("alice").blocked  # the policy's default, as for the app's answer
    # The same path as the app: the other pending sign-in is cancelled, audited as alice's.
    assert web.run(web.services.challenges.get(waiting)).state == "cancelled"
    assert web.audit("fraud.report", "alice")[0].actor == "portal:alice"
    assert "reported" in page
    assert f'href="/portal/sign-ins/{approved}/report"' not in page
    # Reporting again files nothing new.
    again = alice.post(path, data={"csrf_token": csrf_from(page)})
    assert again.status_code == 303
    assert len(web.fraud_reports()) == 1
    # The admin console's list has it (the same FraudService).
    assert [r.challenge_id for r in web.run(web.services.fraud.list("open"))] == [approved]


def test_another_user_cannot_report_or_see_my_sign_in(web: WebHarness) -> None:
    signed_in(web, "alice")
    web.device("alice")
    mine = start(web, "alice")
    bob = signed_in(web, "bob")
    path = f"/portal/sign-ins/{mine}/report"
    assert bob.get(path).status_code == 404
    token = csrf_from(bob.get("/portal/sign-ins").text)
    assert bob.post(path, data={"csrf_token": token}).status_code == 404
    assert bob.get(f"/portal/sign-ins?before={mine}").status_code == 404
    assert web.fraud_reports() == []
    assert not web.user("alice").blocked


def test_the_report_needs_the_csrf_token(web: WebHarness) -> None:
    alice = signed_in(web, "alice")
    web.device("alice")
    mine = start(web, "alice")
    assert alice.post(f"/portal/sign-ins/{mine}/report", data={}).status_code == 403
    assert web.fraud_reports() == []
    assert [r.result for r in web.refusals()] == ["csrf-failed"]
