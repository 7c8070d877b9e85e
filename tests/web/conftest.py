"""Route tests of the portal and the admin console: each on a live server over a fresh
SQLite database (the browser behaviour is the same on PostgreSQL; the services' own tests
cover both databases)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.config import Settings
from tests.support.clock import FakeClock
from tests.support.web import WebHarness, sqlite_database, web_harness


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return sqlite_database(tmp_path)


@pytest.fixture
def web(settings: Settings, clock: FakeClock) -> Iterator[WebHarness]:
    yield from web_harness(settings, clock)
