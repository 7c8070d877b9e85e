"""Screenshots of the portal and the admin console for docs/screenshots/ (and the README).

    .venv/bin/python -m tests.browser.screenshots [--out docs/screenshots]

Starts the whole app (as the browser tests do: a live server on 127.0.0.1 with a fresh SQLite
home in a temporary directory) with demo data: users, an activated reference authenticator,
sign-ins approved, denied, timed out and reported as fraud, RADIUS clients and API tokens; then
drives headless Chromium (``/usr/bin/chromium``, or ``OPENMFA_TEST_CHROMIUM``) over the main
pages and saves one PNG per page at desktop size (1280 wide, full page), and a few at a phone's
size (390x844). Nothing here is a test; it fails loudly when a page is missing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from backend.authenticator.client import AppClient
from backend.config import load_settings
from backend.domain.radius import ClientChanges
from backend.services.context import SignInContext
from backend.store import migrations
from tests.support.api import ADMIN
from tests.support.clock import FakeClock
from tests.support.slapd import Slapd, running_slapd
from tests.support.web import PASSWORD, WebHarness

CHROMIUM = os.environ.get("OPENMFA_TEST_CHROMIUM", "/usr/bin/chromium")
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@contextmanager
def demo_app(home: Path) -> Iterator[tuple[WebHarness, AppClient]]:
    """The app with demo data, on a live server."""
    url = f"sqlite+aiosqlite:///{home / 'openmfa.db'}"
    with ThreadPoolExecutor(max_workers=1) as pool:  # alembic runs asyncio.run() itself
        pool.submit(migrations.upgrade, url).result()
    settings = load_settings(
        config_file=None,
        home=home,
        public_url="https://mfa.example.com",
        issuer="OpenMFA",
        radius_port=0,  # the screenshots show no Status-Server result
    )
    app = WebHarness(settings, FakeClock())
    with app:
        yield app, _demo_data(app)


#: The demo users' phones beyond the administrator's (alice steps up with hers).
PHONES: dict[str, AppClient] = {}


def _demo_data(app: WebHarness) -> AppClient:
    """Users, devices, sign-ins, clients, tokens; the administrator's phone."""
    app.add_user("root", admin=True, display_name="Rita Root")
    root = app.device("root")
    # The first code makes the app device active: from then on admin sign-in asks for one.
    first = root.code(app.clock.now)
    app.run(app.services.otp.verify(ADMIN, "root", first, SignInContext("admin console")))
    app.add_user("alice", display_name="Alice Liddell", push_limit=0)
    app.add_user("bob", display_name="Bob Builder")
    app.add_user("carol", display_name="Carol Chen")
    # Carol enrols her first app on the phone screenshot: an administrator opened the window.
    app.run(app.services.factors.allow_enrolment(ADMIN, "carol", 1))
    app.add_user("dave", display_name="Dave Diaz")
    app.run(app.services.users.set_disabled(ADMIN, "dave", True))
    alice = app.device("alice")
    PHONES["alice"] = alice
    bob = app.device("bob")
    gateways = [("rdgw", "RDGW01"), ("asa1", "asa-hq")]
    answers = ["approve", "approve", "deny", "approve", "approve"]
    for i, answer in enumerate(answers):
        name, nas = gateways[i % 2]
        started = app.start(
            "alice",
            "push",
            context={
                "client_name": name,
                "client_ip": f"198.51.100.{20 + i}",
                "nas_identifier": nas,
            },
        )
        alice.answer(started["id"], answer)
        app.clock.advance(20)  # the app signs with the real time: stay within the skew
    app.start("alice", "push", context={"client_name": "rdgw", "client_ip": "198.51.100.40"})
    app.clock.advance(90)  # that one times out (the challenge lives 60 s)
    code = alice.code(app.clock.now)
    app.run(app.services.otp.verify(ADMIN, "alice", code, SignInContext("asa1", "198.51.100.41")))
    fraud = app.start(
        "bob",
        "push",
        context={"client_name": "asa1", "client_ip": "203.0.113.66", "nas_identifier": "asa-hq"},
    )
    bob.answer(fraud["id"], "fraud")

    clients = app.services.radius_clients
    app.run(
        clients.add(
            ADMIN,
            "rdgw",
            ClientChanges(
                addresses=["10.0.1.10"], secret="x" * 32, mode="push", number_matching="off"
            ),
        )
    )
    app.run(
        clients.add(
            ADMIN,
            "asa1",
            ClientChanges(
                addresses=["10.0.0.1", "10.0.0.2"],
                secret="y" * 32,
                mode="challenge",
                primary="radius",
                upstream_host="10.0.0.5",
                upstream_secret="z" * 24,
                reply_attributes=["Filter-Id=vpn-users"],
            ),
        )
    )
    app.run(
        clients.add(
            ADMIN,
            "wlc",
            ClientChanges(
                addresses=["10.10.0.0/28"],
                secret="w" * 32,
                require_message_authenticator=False,
                unenrolled="allow",
                exempt_users=["svc-monitoring"],
            ),
        )
    )
    app.run(app.services.tokens.create(ADMIN, "radius-dmz", scope="bridge"))
    app.run(app.services.tokens.create(ADMIN, "vpn-portal", scope="gateway"))
    return root


def _sign_in(
    page: object, app: WebHarness, area: str, name: str, phone: AppClient | None = None
) -> None:
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    page.goto(f"{app.url}/{area}/sign-in")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Continue" if area == "admin" else "Sign in").click()
    if phone is not None:
        app.clock.advance(30)  # a code is accepted once per time step
        page.get_by_label("Code from your authenticator app").fill(phone.code(app.clock.now))
        page.get_by_role("button", name="Verify code").click()
    page.wait_for_url(f"{app.url}/{area}/")


def take(out: Path) -> list[Path]:
    """Start the demo app and save the screenshots into ``out``; the files written."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        demo_app(Path(tmp)) as (app, root),
        running_slapd(Path(tmp) / "slapd") as slapd,
        sync_playwright() as pw,
    ):
        _demo_directory(app, slapd)
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)

        def shot(page: object, name: str, full: bool = True) -> None:
            from playwright.sync_api import Page

            assert isinstance(page, Page)
            page.wait_for_load_state("networkidle")
            path = out / f"{name}.png"
            page.screenshot(path=str(path), full_page=full, animations="disabled")
            saved.append(path)

        desktop = browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
        page = desktop.new_page()
        page.goto(app.url + "/portal/sign-in")
        shot(page, "portal-sign-in")
        _sign_in(page, app, "portal", "alice")
        page.goto(app.url + "/portal/activate")  # adding a factor: the step-up comes first
        shot(page, "portal-step-up")
        app.clock.advance(30)  # a code is accepted once per time step
        page.get_by_label("Code from your authenticator app").fill(
            PHONES["alice"].code(app.clock.now)
        )
        page.get_by_role("button", name="Verify code").click()
        page.get_by_role("button", name="Generate activation code").click()
        page.locator("img, svg").first.wait_for()
        shot(page, "portal-activate")
        page.goto(app.url + "/portal/devices")
        shot(page, "portal-devices")
        page.goto(app.url + "/portal/sign-ins")
        shot(page, "portal-sign-ins")

        admin = browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
        page = admin.new_page()
        _sign_in(page, app, "admin", "root", root)
        for name, path in (
            ("admin-dashboard", "/admin/"),
            ("admin-users", "/admin/users"),
            ("admin-user", "/admin/users/alice"),
            ("admin-clients", "/admin/clients"),
            ("admin-client", "/admin/clients/asa1/edit"),
            ("admin-tokens", "/admin/tokens"),
            ("admin-fraud", "/admin/fraud"),
            ("admin-audit", "/admin/audit"),
        ):
            response = page.goto(app.url + path)
            if response is None or response.status != 200:
                raise SystemExit(f"{path} answered {response.status if response else 'nothing'}")
            shot(page, name)
        _import_preview(page, app.url)
        shot(page, "admin-import")
        page.goto(app.url + "/admin/directories")
        shot(page, "admin-directories")

        phone = browser.new_context(
            viewport=PHONE,  # type: ignore[arg-type]
            device_scale_factor=2,
            is_mobile=True,
            has_touch=True,
        )
        page = phone.new_page()
        _sign_in(page, app, "portal", "carol")
        page.goto(app.url + "/portal/activate")
        page.get_by_role("button", name="Generate activation code").click()
        page.locator("img, svg").first.wait_for()
        shot(page, "phone-portal-activate")
        phone_admin = browser.new_context(
            viewport=PHONE,  # type: ignore[arg-type]
            device_scale_factor=2,
            is_mobile=True,
            has_touch=True,
        )
        page = phone_admin.new_page()
        _sign_in(page, app, "admin", "root", root)
        page.goto(app.url + "/admin/")
        shot(page, "phone-admin-dashboard")
        browser.close()
    return saved


def _demo_directory(app: WebHarness, slapd: Slapd) -> None:
    """An OpenLDAP directory with a VPN group, synced once and dry-run once since."""

    people = ["erin", "frank", "gina", "hank", "ivy", "jack"]
    for uid in people:
        slapd.add_user(uid, "Demo-Passw0rd!", email=f"{uid}@example.com")
    group = slapd.add_group("vpn-users", *people[:5])
    settings = slapd.directory_settings("corp-ldap", group_dn=group)
    app.run(app.services.directories.add(ADMIN, settings, slapd.bind_password))
    app.run(app.services.directory_sync.run(ADMIN, "corp-ldap"))
    slapd.add_members("vpn-users", "jack")
    slapd.remove_members("vpn-users", "hank")
    app.run(app.services.directory_sync.run(ADMIN, "corp-ldap", dry_run=True))


def _import_preview(page: object, url: str) -> None:
    """The Import page showing the preview of a hardware-token file (nothing written)."""
    rows = [
        ("alice", "C302-0001", "Token2", "C302", 30),
        ("bob@example.com", "C302-0002", "Token2", "C302", 30),
        ("carol", "OTPC200-88", "Feitian", "OTP c200", 60),
    ]
    content = "upn,serial number,secret key,time interval,manufacturer,model\n" + "".join(
        f"{upn},{serial},JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP,{period},{maker},{model}\n"
        for upn, serial, maker, model, period in rows
    )
    page.goto(url + "/admin/import")  # type: ignore[attr-defined]
    page.get_by_label("Hardware tokens", exact=False).check()  # type: ignore[attr-defined]
    page.get_by_label("CSV file").set_input_files(  # type: ignore[attr-defined]
        {"name": "tokens.csv", "mimeType": "text/csv", "buffer": content.encode()}
    )
    page.get_by_role("button", name="Preview").click()  # type: ignore[attr-defined]
    page.get_by_text("will be added").wait_for()  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to put the PNGs")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        sys.stderr.write(f"screenshots need Chromium at {CHROMIUM} (make tools)\n")
        return 1
    for path in take(args.out):
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
