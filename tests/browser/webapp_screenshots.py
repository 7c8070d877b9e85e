"""Screenshots of the web authenticator at a phone's size for docs/screenshots/webapp-*.png.

    .venv/bin/python -m tests.browser.webapp_screenshots [--out docs/screenshots]

Starts the app on a live server with a fresh SQLite home and the Web Push fake (as the
browser tests do), activates the web app in headless Chromium from the portal's link for two
users, and saves: the app right after activation, a sign-in with number matching, and the
offline codes with the network cut. Nothing here is a test; it fails loudly when a step does
not work.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from backend.config import load_settings
from backend.store import migrations
from tests.browser.screenshots import CHROMIUM, DEFAULT_OUT
from tests.browser.webapp_support import LivePushService, activate, open_phone, start_push
from tests.support.clock import FakeClock
from tests.support.geoip import write_database
from tests.support.web import WebHarness


@contextmanager
def app_with_push(home: Path) -> Iterator[tuple[WebHarness, LivePushService]]:
    """The app on a live server, pushing to the Web Push fake (so the app shows push on)."""
    url = f"sqlite+aiosqlite:///{home / 'openmfa.db'}"
    with ThreadPoolExecutor(max_workers=1) as pool:  # alembic runs asyncio.run() itself
        pool.submit(migrations.upgrade, url).result()
    with LivePushService(home / "push") as push:
        settings = load_settings(
            config_file=None,
            home=home,
            public_url="https://mfa.example.com",
            radius_port=0,
            geoip_database=write_database(home / "city.mmdb"),  # 203.0.113.7: Berlin
        )
        app = WebHarness(push.settings(settings), FakeClock())
        with app:
            yield app, push


def take(out: Path) -> list[Path]:
    """Drive the app and save the PNGs; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []

    def shot(page: Page, name: str) -> None:
        path = out / f"webapp-{name}.png"
        page.screenshot(path=str(path))
        saved.append(path)

    with tempfile.TemporaryDirectory() as home, app_with_push(Path(home)) as (app, push):
        app.add_user("dana", display_name="Dana Scully", number_matching=True)
        app.add_user("erik", display_name="Erik Berg")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            with open_phone(browser, app, subscriptions=[push.fake.subscription()]) as page:
                activate(page, app, "dana")
                expect(page.locator("#push-status")).to_have_text("Notifications: on")
                shot(page, "activation")

                started = start_push(
                    app,
                    "dana",
                    context={
                        "client_name": "vpn-asa",
                        "client_ip": "203.0.113.7",
                        "display": "Sign in to VPN-ASA from 203.0.113.7",
                    },
                )
                page.goto(f"{app.url}/app/#challenge={started['id']}")
                number = page.get_by_label("Number shown on the sign-in screen")
                number.wait_for()
                number.fill(str(started["number"]))
                number.blur()
                shot(page, "challenge")
                page.get_by_role("button", name="Deny").click()
                page.locator("#ch-result").wait_for()

                page.get_by_role("button", name="Back").click()
                activate(page, app, "erik")
                page.wait_for_function("() => navigator.serviceWorker.controller !== null")
                page.context.set_offline(True)
                page.reload()
                page.locator("#offline").wait_for()
                page.locator(".code").nth(1).wait_for()
                shot(page, "offline")
                page.context.set_offline(False)
            browser.close()
    return saved


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
