"""Signing in to the portal through the real page in headless Chromium."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import ConsoleMessage, Page

from tests.support.web import PASSWORD, WebHarness


def test_user_signs_in_and_out_through_the_page(
    live_app: WebHarness, browser_page: Page, tmp_path: Path
) -> None:
    live_app.add_user("alice", display_name="Alice Liddell")
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # CSP violations ("Refused to load / execute ... Content Security Policy") and script
        # errors; the 401 of the wrong password is expected and not one of them.
        if "Content Security Policy" in message.text or "Uncaught" in message.text:
            problems.append(message.text)

    browser_page.on("console", on_console)
    browser_page.on("pageerror", lambda error: problems.append(str(error)))
    browser_page.goto(live_app.url + "/portal/")  # not signed in: the sign-in page
    assert browser_page.url == live_app.url + "/portal/sign-in"
    browser_page.get_by_label("User name").fill("alice")
    browser_page.get_by_label("Password").fill("not the password")
    browser_page.get_by_role("button", name="Sign in").click()
    assert browser_page.get_by_role("alert").inner_text() == "The user name or password is wrong."

    browser_page.get_by_label("Password").fill(PASSWORD)
    browser_page.get_by_role("button", name="Sign in").click()
    browser_page.get_by_role("heading", name="Hello, Alice Liddell").wait_for()
    assert browser_page.url == live_app.url + "/portal/"
    # The stylesheet loaded under the CSP: the header has its dark background.
    header_bg = browser_page.locator(".site-header").evaluate(
        "el => getComputedStyle(el).backgroundColor"
    )
    assert header_bg == "rgb(20, 38, 63)"
    browser_page.screenshot(path=str(tmp_path / "portal-home.png"))

    browser_page.get_by_role("button", name="Sign out").click()
    browser_page.get_by_role("status").filter(has_text="You are signed out.").wait_for()
    assert problems == []


def test_admin_approves_the_push_and_the_page_continues_by_itself(
    live_app: WebHarness, browser_page: Page
) -> None:
    from backend.services.context import SignInContext
    from tests.support.api import ADMIN

    live_app.add_user("root", admin=True)
    phone = live_app.device("root")
    first = phone.code(live_app.clock.now)
    assert live_app.run(
        live_app.services.otp.verify(ADMIN, "root", first, SignInContext())
    ).accepted

    browser_page.goto(live_app.url + "/admin/sign-in")
    browser_page.get_by_label("User name").fill("root")
    browser_page.get_by_label("Password").fill(PASSWORD)
    browser_page.get_by_role("button", name="Continue").click()
    browser_page.get_by_role("button", name="Send a push to my phone").click()
    browser_page.get_by_text("Waiting for your approval on the phone").wait_for()
    [challenge] = phone.pending()
    assert phone.answer(challenge["id"], "approve") == "approved"
    # admin-verify.js polls, sees "approved" and submits the form: no click needed.
    browser_page.get_by_role("heading", name="Dashboard").wait_for()
    assert browser_page.url == live_app.url + "/admin/"
