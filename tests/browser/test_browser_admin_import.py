"""The console's Import page in headless Chromium: choose a file, see the preview (nothing
written yet), confirm, and find the users and the hardware token created; no script errors or
CSP violations on the way."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.test_browser_admin import _admin_signs_in, _watch
from tests.support.web import WebHarness

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"


def test_admin_imports_users_then_a_token(
    live_app: WebHarness, browser_page: Page, tmp_path: Path
) -> None:
    problems = _watch(browser_page)
    _admin_signs_in(browser_page, live_app)
    users = tmp_path / "users.csv"
    users.write_text(
        "name,email,display_name,phone,admin\n"
        "alice,alice@example.com,Alice Liddell,+44 20 7946 0000,no\n"
        "bob,bob@example.com,Bob Builder,,no\n"
    )
    browser_page.get_by_role("navigation", name="Main").get_by_role("link", name="Import").click()
    browser_page.get_by_role("heading", name="Import from a CSV file").wait_for()
    browser_page.get_by_label("Users:", exact=False).first.check()
    browser_page.get_by_label("CSV file").set_input_files(str(users))
    browser_page.get_by_role("button", name="Preview").click()
    expect(browser_page.get_by_text("2 user(s) will be created")).to_be_visible()
    assert [u.user.name for u in live_app.run(live_app.services.users.list())] == ["root"]
    browser_page.get_by_role("button", name="Confirm: import 2 user(s)").click()
    expect(browser_page.get_by_text("2 user(s) created, 0 skipped.")).to_be_visible()
    assert live_app.user("alice").display_name == "Alice Liddell"

    tokens = tmp_path / "tokens.csv"
    tokens.write_text(
        "upn,serial number,secret key,time interval,manufacturer,model\n"
        f"alice@example.com,C302-7,{SECRET},60,Token2,C302\n"
    )
    browser_page.get_by_label("Hardware tokens", exact=False).check()
    browser_page.get_by_label("CSV file").set_input_files(str(tokens))
    browser_page.get_by_role("button", name="Preview").click()
    expect(browser_page.get_by_text("1 hardware token(s) will be added")).to_be_visible()
    assert SECRET not in browser_page.content()
    browser_page.get_by_role("button", name="Confirm: import 1 token(s)").click()
    expect(browser_page.get_by_text("1 hardware token(s) added.")).to_be_visible()
    browser_page.goto(live_app.url + "/admin/users/alice")
    expect(browser_page.get_by_text("Token2 C302 (serial C302-7)")).to_be_visible()
    assert problems == []
