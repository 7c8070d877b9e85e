"""Shared fixtures: a migrated database (SQLite, and PostgreSQL: this machine's, or a
throw-away server where none answers), services on a fake clock, a live server over real
HTTP, and the ``openmfa`` command."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from backend.config import Settings, load_settings
from backend.services import Services
from backend.store import migrations
from tests.support.api import ApiHarness, harness
from tests.support.cli import run_in_process
from tests.support.clock import FakeClock
from tests.support.database import migrated_sqlite
from tests.support.pg_cluster import running_pg_cluster
from tests.support.samba_dc import SambaDC, running_samba_dc
from tests.support.slapd import Slapd, running_slapd

if TYPE_CHECKING:
    from tests.support.cluster import ApnsService, NodeCluster

PG_ADMIN_URL = os.environ.get(
    "OPENMFA_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
_pg_reason: str | None = None
_pg_checked = False


def _postgres_unavailable() -> str | None:
    """Why the server at PG_ADMIN_URL cannot be used, or ``None`` when it can."""
    global _pg_checked, _pg_reason
    if _pg_checked:
        return _pg_reason
    _pg_checked = True

    async def probe() -> None:
        import asyncpg

        conn = await asyncpg.connect(_plain(PG_ADMIN_URL), timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:  # any failure means: no usable server here
        _pg_reason = f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({type(exc).__name__}: {exc})"
    return _pg_reason


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def pytest_report_header(config: pytest.Config) -> str:
    """Say up front which PostgreSQL server the PostgreSQL variants use."""
    reason = _postgres_unavailable()
    if reason is None:
        return f"PostgreSQL variants: on ({PG_ADMIN_URL})"
    return (
        f"PostgreSQL variants: on a throw-away server from Debian's binaries, started per "
        f"worker when first needed - {reason}"
    )


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    """The PostgreSQL server of this session: OPENMFA_TEST_PG_URL (by default this machine's
    on 127.0.0.1:5432) or, where none answers, a throw-away one (tests/support/pg_cluster.py)
    for this session (one per xdist worker), removed at its end. Where neither can be had
    the PostgreSQL tests fail with both reasons: they are never skipped."""
    reason = _postgres_unavailable()
    if reason is None:
        yield PG_ADMIN_URL
        return
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(running_pg_cluster(replica=False))
        except Exception as exc:  # no binaries, initdb failed, ...: say so, never skip
            pytest.fail(
                f"{reason}, and no throw-away server could be started: {exc}", pytrace=False
            )
        url = cluster.url("postgres")
        sys.stderr.write(f"throw-away PostgreSQL {url} in {cluster.directory}\n")
        yield url


@pytest.fixture
def apns(tmp_path: Path) -> Iterator[ApnsService]:
    """The APNs fake of the several-node scenarios (tests/support/cluster.py), closed after."""
    from tests.support.cluster import ApnsService

    service = ApnsService(tmp_path / "apns")
    try:
        yield service
    finally:
        service.close()


@pytest.fixture
def cluster(tmp_path: Path, apns: ApnsService, postgres_admin_url: str) -> Iterator[NodeCluster]:
    """Two running ``openmfa run`` nodes on a fresh database of the session's PostgreSQL
    server, pushing to ``apns`` (tests/support/cluster.py)."""
    from tests.support.cluster import NodeCluster

    with NodeCluster(
        tmp_path / "cluster", nodes_wanted=2, env=apns.env, admin_url=postgres_admin_url
    ) as running:
        yield running


@pytest.fixture(scope="session")
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    import asyncpg

    name = f"openmfa_test_{secrets.token_hex(4)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(_plain(postgres_admin_url), timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = postgres_admin_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        yield migrated_sqlite(tmp_path)
        return
    base: str = request.getfixturevalue("postgres_url")
    # One schema-fresh database per test: drop and recreate every table through Alembic.
    _reset_postgres(base)
    migrations.upgrade(base)
    yield base


def _reset_postgres(url: str) -> None:
    import asyncpg

    async def reset() -> None:
        conn = await asyncpg.connect(_plain(url), timeout=5)
        try:
            await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
        finally:
            await conn.close()

    asyncio.run(reset())


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings on a temporary home, fast argon2 limits kept at OWASP's minimum."""
    return load_settings(
        config_file=None,
        home=tmp_path,
        database_url=database_url if not database_url.startswith("sqlite") else "",
        public_url="http://127.0.0.1:8080",
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def api(settings: Settings, clock: FakeClock) -> Iterator[ApiHarness]:
    """The app on a live HTTP server with its services."""
    yield from harness(settings, clock)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def services(settings: Settings, clock: FakeClock) -> AsyncIterator[Services]:
    opened = await Services.open(settings, clock=clock)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(scope="session")
def samba_dc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaDC]:
    """A Samba AD DC for the whole run, shared by the xdist workers (tests/support/samba_dc.py).

    The workers of one run share their base directory's parent; a run without xdist uses
    its own base directory. Tests create uniquely named entries (``samba_dc.new_name``).
    """
    base = tmp_path_factory.getbasetemp()
    run_directory = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with running_samba_dc(run_directory) as dc:
        yield dc


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """An OpenLDAP server for this worker's session (tests/support/slapd.py); tests create
    uniquely named entries (``slapd.new_name``). For a server of your own (e.g. to
    ``bulk_add`` thousands of users), use ``tests.support.slapd.running_slapd(tmp_path)``."""
    with running_slapd(tmp_path_factory.mktemp("slapd")) as server:
        yield server


def openmfa(
    home: Path, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the ``openmfa`` command against ``home``, in this process (tests/support/cli.py)."""
    result = run_in_process(args, {"OPENMFA_HOME": str(home)}, stdin)
    if check and result.returncode != 0:
        raise AssertionError(
            f"openmfa {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
    return result


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests (``@pytest.mark.slow``) run only when asked for with ``-m slow``."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="soak test: run with `pytest -m slow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
