"""The ``account_notices`` outbox on SQLite and PostgreSQL: migration 0006 makes the table the
code declares and downgrades cleanly; workers of two nodes never send one notice twice; a
refused notice is retried after its pause and then given up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from backend.config import Settings
from backend.domain.stepup import ADMINISTRATOR
from backend.notify.mail import MailSender
from backend.notify.notices import NoticeMailer
from backend.services import Services
from backend.services.context import Actor
from backend.store import migrations
from backend.store.tables import account_notices_t
from tests.support.clock import FakeClock
from tests.support.smtp import SmtpServer

ADMIN = Actor("cli:root", "local")
PIN = "583719"


def _columns(database_url: str) -> set[str] | None:
    def describe(sync_conn: Any) -> set[str] | None:
        found = inspect(sync_conn)
        if not found.has_table("account_notices"):
            return None
        return {c["name"] for c in found.get_columns("account_notices")}

    async def run() -> set[str] | None:
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(describe)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_the_migrated_table_matches_the_code(database_url: str) -> None:
    assert _columns(database_url) == {c.name for c in account_notices_t.columns}


def test_0007_downgrades_and_upgrades_again(database_url: str) -> None:
    config = migrations.alembic_config(database_url)
    command.downgrade(config, "0006")
    assert _columns(database_url) is None
    command.upgrade(config, "head")
    assert _columns(database_url) == {c.name for c in account_notices_t.columns}


# -- the worker on both databases -----------------------------------------------------------


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
async def services(
    settings: Settings, clock: FakeClock, smtp: SmtpServer
) -> AsyncIterator[Services]:
    """Services as an `openmfa` command opens them (no worker of their own), with mail set up."""
    mail = settings.model_copy(
        update={
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "smtp_security": "none",
            "mail_from": "OpenMFA <mfa@example.com>",
        }
    )
    opened = await Services.open(mail, clock=clock, push=False, notify=False)
    try:
        yield opened
    finally:
        await opened.close()


def _mailer(services: Services, clock: FakeClock, port: int) -> NoticeMailer:
    sender = MailSender("127.0.0.1", port, "none", "OpenMFA <mfa@example.com>")
    return NoticeMailer(services.db, services.audit, clock, sender, retry_delays=(10.0,))


@pytest.mark.anyio
async def test_two_workers_racing_send_each_notice_once(
    services: Services, clock: FakeClock, smtp: SmtpServer
) -> None:
    """Two nodes (two workers on one database) claim the same due notices at once."""
    users = [await services.users.add(ADMIN, f"user{i}", f"user{i}@example.com") for i in range(6)]
    for user in users:
        await services.users.set_pin(ADMIN, ADMINISTRATOR, user.name, PIN)
    first, second = (_mailer(services, clock, smtp.port) for _ in range(2))
    counts = await asyncio.gather(first.send_due(), second.send_due())
    assert sum(counts) == len(users)
    received = await asyncio.to_thread(smtp.wait_for, len(users))
    assert sorted(r.rcpt_tos[0] for r in received) == sorted(u.email for u in users)
    assert await first.send_due() == 0  # nothing left due
    assert smtp.conversations == len(users)


@pytest.mark.anyio
async def test_a_refused_notice_is_due_again_after_the_pause_then_given_up(
    services: Services, clock: FakeClock, smtp: SmtpServer
) -> None:
    await services.users.add(ADMIN, "alice", "alice@example.com")
    await services.users.set_pin(ADMIN, ADMINISTRATOR, "alice", PIN)
    mailer = _mailer(services, clock, smtp.port)
    smtp.refuse_next(2, "451 4.3.0 later")
    assert await mailer.send_due() == 1
    assert await mailer.send_due() == 0  # not due before its pause
    clock.advance(11)
    assert await mailer.send_due() == 1  # the last of its two attempts
    rows = await services.audit.query("alice", action="notice.mail")
    assert [row.result for row in rows] == ["failed", "retry"]
    assert "451" in rows[0].detail
