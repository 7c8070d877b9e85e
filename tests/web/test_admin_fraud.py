"""Admin console, fraud reports: the list with its context, state filter, one-click unblock
and mark reviewed, review keeping the block, stale clicks, CSRF and access control."""

from __future__ import annotations

import re

import httpx

from backend.domain.challenge import Answer
from backend.services.context import SignInContext
from tests.support.api import ADMIN
from tests.support.web import WebHarness, post_form, sign_in


def fraud_answer(web: WebHarness, user: str, gateway: str = "vpn-gw") -> int:
    """A push the user's phone answers "fraud"; the report's id."""
    view = web.run(
        web.services.challenges.start(
            ADMIN, user, "push", SignInContext(gateway, "203.0.113.5", "nas-7")
        )
    )
    device = web.run(web.services.devices.list_for_user(user))[0]
    web.run(web.services.challenges.answer(ADMIN, device, view.id, Answer.FRAUD))
    return int(web.run(web.services.fraud.list("all", user))[0].id)


def click(browser: httpx.Client, path: str) -> httpx.Response:
    return post_form(browser, path, {}, page="/admin/fraud?state=all")


def test_open_reports_are_listed_with_their_context(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    empty = browser.get("/admin/fraud")
    assert "No open fraud reports" in empty.text
    web.add_user("alice", display_name="Alice A")
    web.device("alice")
    report = fraud_answer(web, "alice")
    html = browser.get("/admin/fraud").text
    assert f"Report {report}" in html
    assert 'href="/admin/users/alice">alice</a>' in html
    assert "Alice A" in html
    assert "vpn-gw" in html
    assert "(nas-7)" in html
    assert "203.0.113.5" in html
    assert "alice&#39;s phone (reference)" in html
    assert "user blocked" in html
    assert "Unblock and mark reviewed" in html
    assert "Mark reviewed, keep blocked" in html
    assert "No reviewed fraud reports" in browser.get("/admin/fraud?state=reviewed").text
    assert browser.get("/admin/fraud?state=bogus").status_code == 400


def test_unblock_and_mark_reviewed_in_one_click(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    web.add_user("alice")
    web.device("alice")
    first = fraud_answer(web, "alice")
    # A second report (the portal's "this wasn't me" on a code sign-in: the open report
    # mutes pushes) while blocked.
    web.run(web.services.users.set_blocked(ADMIN, "alice", False))
    view = web.run(web.services.challenges.start(ADMIN, "alice", "otp", SignInContext()))
    web.run(web.services.fraud.report_sign_in(ADMIN, "alice", view.id))
    assert web.user("alice").blocked
    second = web.run(web.services.fraud.list("open", "alice"))[0].id
    assert second != first

    response = click(browser, f"/admin/fraud/{first}/resolve")
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/fraud"
    assert not web.user("alice").blocked
    assert {r.state for r in web.fraud_reports()} == {"reviewed"}
    page = browser.get("/admin/fraud").text
    assert "alice unblocked; open report(s)" in page
    assert "No open fraud reports" in page
    assert web.audit("user.unblock", "alice")[0].actor == "admin:root"
    reviews = web.audit("fraud.review", "alice")
    assert len(reviews) == 2
    assert {r.actor for r in reviews} == {"admin:root"}
    reviewed = browser.get("/admin/fraud?state=reviewed").text
    assert reviewed.count("by admin:root") == 2

    # A second click (another tab, another admin) changes nothing and says why.
    stale = click(browser, f"/admin/fraud/{first}/resolve")
    assert stale.status_code == 303
    assert "already reviewed by admin:root" in browser.get("/admin/fraud").text


def test_mark_reviewed_keeps_the_user_blocked(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    web.add_user("alice")
    web.device("alice")
    report = fraud_answer(web, "alice")
    response = click(browser, f"/admin/fraud/{report}/review")
    assert response.status_code == 303
    assert web.user("alice").blocked
    assert [r.state for r in web.fraud_reports()] == ["reviewed"]
    assert "The user stays blocked." in browser.get("/admin/fraud").text


def test_a_report_that_did_not_block_is_just_marked_reviewed(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    web.add_user("alice", fraud_blocks_user=False)
    web.device("alice")
    report = fraud_answer(web, "alice")
    html = browser.get("/admin/fraud").text
    assert "user blocked" not in html
    assert ">Mark reviewed</button>" in html
    assert click(browser, f"/admin/fraud/{report}/resolve").status_code == 303
    assert [r.state for r in web.fraud_reports()] == ["reviewed"]
    assert web.audit("user.unblock") == []


def test_unknown_reports_csrf_and_access(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    web.add_user("alice")
    web.device("alice")
    report = fraud_answer(web, "alice")
    assert click(browser, "/admin/fraud/999/resolve").status_code == 404
    assert click(browser, "/admin/fraud/abc/resolve").status_code == 404
    assert browser.post(f"/admin/fraud/{report}/resolve").status_code == 403
    assert web.user("alice").blocked
    web.add_user("bob")
    portal = web.browser()
    assert sign_in(portal, "bob").status_code == 303
    forged = web.browser(cookies={"omfa_admin": portal.cookies.get("omfa_portal") or ""})
    assert forged.get("/admin/fraud").status_code == 303
    page = browser.get("/admin/fraud").text
    assert re.search(rf"Report {report} ", page)


def test_unicode_digits_in_ids_are_refused_cleanly(web: WebHarness) -> None:
    """str.isdigit() is true for "²", which int() refuses: an id made of such digits was a 500
    (the same class as issue 13 finding 8, validation that lets through more than it means)."""
    browser = web.admin_browser("root")
    assert click(browser, "/admin/fraud/%C2%B2/resolve").status_code == 404
    assert browser.get("/admin/audit", params={"before": "\u00b2"}).status_code == 200
