"""A user from Active Directory (the Samba DC of tests/support/samba_dc.py) signs in to the
portal with the directory password through the real page in headless Chromium; a password
that expired in AD gets the page's "change it in your directory" message."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page
from sqlalchemy import update

from backend.directory.settings import DirectorySettings
from backend.store.tables import users_t
from tests.support.api import ADMIN
from tests.support.samba_dc import SambaDC
from tests.support.web import WebHarness


def test_directory_user_signs_in_with_the_ad_password(
    live_app: WebHarness, browser_page: Page, samba_dc: SambaDC, tmp_path: Path
) -> None:
    view = live_app.run(
        live_app.services.directories.add(
            ADMIN,
            DirectorySettings(
                name="corp",
                urls=(samba_dc.url,),
                ca_pem=samba_dc.ca_file.read_text(),
                bind_dn=samba_dc.bind_dn,
                base_dn=samba_dc.base_dn,
                kind="ad",
            ),
            samba_dc.bind_password,
        )
    )
    names = {"ok": samba_dc.new_name("web"), "expired": samba_dc.new_name("web")}
    password = "Web-Passw0rd-2026!"
    for name in names.values():
        samba_dc.add_user(name, password, display_name=f"Directory {name}")
        live_app.add_user(name, password="a stale local password", display_name=f"Dir {name}")

        async def tie(name: str = name) -> None:
            async with live_app.services.db.write() as conn:
                await conn.execute(
                    update(users_t)
                    .where(users_t.c.name_key == name.casefold())
                    .values(directory_id=view.id, external_id=samba_dc.guid(name))
                )

        live_app.run(tie())
    samba_dc.must_change(names["expired"])

    page = browser_page
    page.goto(live_app.url + "/portal/sign-in")
    page.get_by_label("User name").fill(names["ok"])
    page.get_by_label("Password").fill("a stale local password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "The user name or password is wrong."

    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name=f"Hello, Dir {names['ok']}").wait_for()
    assert page.url == live_app.url + "/portal/"
    page.screenshot(path=str(tmp_path / "directory-user-home.png"))
    page.get_by_role("button", name="Sign out").click()

    page.goto(live_app.url + "/portal/sign-in")
    page.get_by_label("User name").fill(names["expired"])
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    assert "You must change your password first" in page.get_by_role("alert").inner_text()
    reasons = [r.detail for r in live_app.audit("web.sign_in", names["expired"].casefold())]
    assert reasons == ["portal: must-change"]
