"""Database URLs with several hosts (libpq's form) become what SQLAlchemy, asyncpg and pg_dump
take (backend/store/urls.py), and a node connects through them to whichever host answers."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from backend.config import load_settings
from backend.doctor.gather import run_checks
from backend.errors import ConfigurationError
from backend.store import urls
from backend.store.database import Database
from tests.support.process import Cli, free_port

pytestmark = pytest.mark.anyio

MULTI = "postgresql://openmfa:s3cret@pg1,pg2:5433/openmfa?target_session_attrs=read-write"


def test_several_hosts_go_in_the_query_for_sqlalchemy() -> None:
    converted = urls.sqlalchemy_url(MULTI)
    assert converted == (
        "postgresql+asyncpg://openmfa:s3cret@/openmfa"
        "?host=pg1:5432&host=pg2:5433&target_session_attrs=read-write"
    )
    parsed = make_url(converted)
    assert parsed.query["host"] == ("pg1:5432", "pg2:5433")
    assert parsed.password == "s3cret"


def test_sqlalchemy_hands_asyncpg_every_host_and_the_session_attrs() -> None:
    from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg

    _, options = PGDialect_asyncpg().create_connect_args(make_url(urls.sqlalchemy_url(MULTI)))
    assert options["host"] == ["pg1", "pg2"]
    assert options["port"] == [5432, 5433]
    assert options["target_session_attrs"] == "read-write"


def test_several_hosts_without_session_attrs_get_read_write() -> None:
    converted = urls.sqlalchemy_url("postgresql://u@pg1,pg2/db")
    assert converted.endswith("&target_session_attrs=read-write")
    assert urls.asyncpg_dsn("postgresql://u@pg1,pg2/db") == (
        "postgresql://u@pg1,pg2/db?target_session_attrs=read-write"
    )
    # An operator's own choice stays.
    assert "any" in urls.sqlalchemy_url("postgresql://u@a,b/db?target_session_attrs=any")


def test_the_conversion_is_idempotent_and_round_trips_to_libpq() -> None:
    once = urls.sqlalchemy_url(MULTI)
    assert urls.sqlalchemy_url(once) == once
    assert urls.asyncpg_dsn(once) == (
        "postgresql://openmfa:s3cret@pg1:5432,pg2:5433/openmfa?target_session_attrs=read-write"
    )


def test_one_host_is_left_as_written() -> None:
    written = "postgresql+asyncpg://openmfa:p%40ss@db.example:5432/openmfa?ssl=require"
    assert urls.sqlalchemy_url(written) == written
    assert urls.sqlalchemy_url("postgresql://db/openmfa") == "postgresql+asyncpg://db/openmfa"
    assert (
        urls.asyncpg_dsn(written)
        == "postgresql://openmfa:p%40ss@db.example:5432/openmfa?ssl=require"
    )
    assert (
        urls.sqlalchemy_url("sqlite+aiosqlite:////x/openmfa.db")
        == "sqlite+aiosqlite:////x/openmfa.db"
    )


def test_libpqs_connect_timeout_is_the_per_host_timeout_not_a_server_setting() -> None:
    url = urls.sqlalchemy_url("postgresql://u@pg1,pg2/db?connect_timeout=3&application_name=x")
    assert urls.connect_timeout(url) == 3.0
    assert urls.asyncpg_dsn(url) == (
        "postgresql://u@pg1:5432,pg2:5432/db?target_session_attrs=read-write&application_name=x"
    )
    assert urls.connect_timeout("postgresql://u@pg1/db?connect_timeout=0") is None  # libpq: none
    assert urls.connect_timeout("postgresql://u@pg1/db") is None


def test_the_display_lists_every_host_and_never_the_password() -> None:
    shown = urls.display_url(urls.sqlalchemy_url(MULTI))
    assert shown == (
        "postgresql://openmfa:***@pg1:5432,pg2:5433/openmfa?target_session_attrs=read-write"
    )
    assert "s3cret" not in shown
    assert urls.host_list(MULTI) == ["pg1:5432", "pg2:5433"]


@pytest.mark.parametrize(
    "bad",
    [
        "postgresql://u@pg1:notaport,pg2/db",
        "postgresql://u@pg1,,pg2/db",
        "postgresql://u@[::1]:5432,[::2]:5432/db",
        "postgresql+psycopg://u@pg1/db",
        "postgresql://u@pg1/db?connect_timeout=soon",
    ],
)
def test_malformed_urls_are_refused_at_start_without_the_password(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_settings(
            config_file=None, home=tmp_path, database_url=bad.replace("u@", "u:pw-SENTINEL@")
        )
    assert "SENTINEL" not in str(refused.value)


def test_settings_resolve_the_operators_form(tmp_path: Path) -> None:
    settings = load_settings(config_file=None, home=tmp_path, database_url=MULTI)
    assert settings.resolved_database_url == urls.sqlalchemy_url(MULTI)
    assert not settings.uses_sqlite


def behind_a_dead_host(postgres_url: str, password: str = "") -> str:
    """libpq's multi-host form of ``postgres_url``: a closed port first, then the server."""
    real = urls.parse(postgres_url)
    [server] = real.hosts
    dead = urls.Host("127.0.0.1", free_port())
    userinfo = f"{real.user}:{password}@" if password else real.userinfo(hide_password=False)
    return f"postgresql://{userinfo}{dead.netloc()},{server.netloc()}/{real.database}"


@pytest.mark.postgres
async def test_a_node_connects_past_a_dead_first_host(postgres_url: str) -> None:
    """Host list "closed port, then the real server": the ORM engine and the raw asyncpg pool
    both end on the server that answers."""
    db = Database(urls.sqlalchemy_url(behind_a_dead_host(postgres_url)))
    try:
        async with db.read() as conn:
            assert (await conn.execute(text("SELECT NOT pg_is_in_recovery()"))).scalar() is True
        assert await db.run_statement("SELECT 1") == [(1,)]
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_upgrade_and_doctor_show_every_host_and_no_password(
    tmp_path: Path, postgres_url: str
) -> None:
    """`openmfa db upgrade` (Alembic) migrates through the multi-host URL; it and the doctor
    name every host, never the password (the test server trusts, ignoring it)."""
    url = behind_a_dead_host(postgres_url, password="s3cret-Pa55")
    hosts = ",".join(urls.host_list(url))
    cli = Cli(tmp_path, OPENMFA_DATABASE_URL=url)
    upgraded = await asyncio.to_thread(cli, "db", "upgrade")
    assert "s3cret-Pa55" not in upgraded.stdout + upgraded.stderr
    assert f"postgres:***@{hosts}/" in upgraded.stdout
    assert "target_session_attrs=read-write" in upgraded.stdout
    settings = load_settings(config_file=None, home=tmp_path, database_url=url, radius_port=0)
    findings = await run_checks(settings, "test")
    [database] = [f for f in findings if f.check == "database"]
    assert database.level == "ok", database
    assert hosts in database.message
    assert "s3cret" not in " ".join(f.message + f.fix for f in findings)


@pytest.mark.postgres
@pytest.mark.parametrize("given", ["setting", "url"])
async def test_a_hung_first_host_costs_its_timeout_not_the_connection(
    postgres_url: str, given: str
) -> None:
    """A first host that accepts and never answers (a frozen server): asyncpg alone spends
    its whole timeout there and never tries the next host; here each host gets
    ``connect_timeout`` of its own (the setting, or libpq's parameter in the URL) and the
    node ends on the server that answers."""
    real = urls.parse(postgres_url)
    [server] = real.hosts
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # the kernel completes handshakes; nobody ever speaks
        hung = urls.Host("127.0.0.1", silent.getsockname()[1])
        url = urls.sqlalchemy_url(
            f"postgresql://{real.userinfo(hide_password=False)}{hung.netloc()},"
            f"{server.netloc()}/{real.database}" + ("?connect_timeout=1" if given == "url" else "")
        )
        db = Database(url, connect_timeout=1.0 if given == "setting" else 30.0)
        try:
            started = time.monotonic()
            async with db.read() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
            assert await db.run_statement("SELECT 1") == [(1,)]
            assert time.monotonic() - started < 5  # two connections, ~1 s each on the hung host
        finally:
            await db.dispose()
