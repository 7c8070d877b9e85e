"""Browser tests: headless Debian Chromium driven by the Python ``playwright`` package.

Playwright's own browser download does not work here; ``.ci/install-tools`` installs Debian's
``chromium`` and :data:`CHROMIUM` is launched directly. Where Chromium or playwright is missing,
or Chromium cannot start, the tests are skipped with the reason (shown by ``-ra``).

``live_app``: the whole app (``create_app``) on a live uvicorn server on 127.0.0.1 with a
fresh SQLite home and a fake clock, as :class:`~tests.support.web.WebHarness` (set-up through
``live_app.services``). ``browser_page``: a fresh page (own cookies) in a 1280x800 window;
``mobile_page``: the same at a phone's size.

Playwright's sync API runs its own event loop; it must not start inside a running asyncio
loop, so browser tests are plain (sync) test functions, like these fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from backend.config import Settings
from tests.support.clock import FakeClock
from tests.support.web import WebHarness, sqlite_database, web_harness

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = os.environ.get("OPENMFA_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """Browser tests run on SQLite only."""
    return sqlite_database(tmp_path)


@pytest.fixture
def live_app(settings: Settings, clock: FakeClock) -> Iterator[WebHarness]:
    """The app on a live HTTP server (``live_app.url``) with its services at hand."""
    yield from web_harness(settings, clock)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One headless Chromium per test module."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("browser tests need the playwright package: pip install -e '.[test]'")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"browser tests need Chromium at {CHROMIUM}: run `make tools` (as root)")
    manager = sync_playwright()
    playwright = manager.start()
    try:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        except Error as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            pytest.skip(f"Chromium at {CHROMIUM} did not start: {first_line}")
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def browser_page(chromium: Browser) -> Iterator[Page]:
    """A new page in its own browser context (own cookies), desktop size."""
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def mobile_page(chromium: Browser) -> Iterator[Page]:
    """A new page at a phone's size (the portal is often opened on the phone itself)."""
    context = chromium.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
    )
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        yield page
    finally:
        context.close()
