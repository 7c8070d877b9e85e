"""Retention (docs/operations.md, "Retention"): the planner's cutoffs, the settings' bounds,
and the pruner on SQLite and PostgreSQL — rows past the cutoff go, newer ones and pending ones
stay, every delete is bounded by the batch size, a dry run deletes nothing, and
``openmfa prune`` prints the counts."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from backend.config import Settings, load_settings
from backend.domain.retention import TABLES, RetentionPolicy, plan
from backend.errors import ConfigurationError
from backend.services import Services
from backend.services.context import Actor
from backend.services.retention import PruneDuty, Pruner, policy_from
from backend.store.tables import (
    account_notices_t,
    activation_codes_t,
    audit_t,
    challenges_t,
    devices_t,
    directories_t,
    directory_syncs_t,
    invitations_t,
    pipush_nonces_t,
    used_nonces_t,
    users_t,
    web_sessions_t,
)
from tests.support.cli import run_in_process
from tests.support.clock import FakeClock

ADMIN = Actor("cli:root", "local")
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
POLICY = RetentionPolicy(
    challenge_days=180,
    audit_days=400,
    expired_days=7,
    notice_days=90,
    directory_syncs=3,
    web_session_max_hours=12,
)


# -- the planner (pure) -------------------------------------------------------------------------


def test_plan_gives_one_cutoff_per_table_from_the_settings() -> None:
    cutoffs = {c.table: c for c in plan(POLICY, NOW)}
    assert tuple(cutoffs) == TABLES
    assert cutoffs["audit_events"].before == NOW - timedelta(days=400)
    assert cutoffs["challenges"].before == NOW - timedelta(days=180)
    assert cutoffs["used_nonces"].before == NOW - timedelta(days=7)
    assert cutoffs["account_notices"].before == NOW - timedelta(days=90)
    # Past the longest a session lives, plus the grace: a live session is never cut.
    assert cutoffs["web_sessions"].before == NOW - timedelta(days=7, hours=12)
    assert cutoffs["directory_syncs"].keep_last == 3
    assert cutoffs["directory_syncs"].before is None


def test_zero_keeps_for_ever_and_a_nonce_is_kept_until_it_expires() -> None:
    keep = RetentionPolicy(
        challenge_days=0,
        audit_days=0,
        expired_days=0,
        notice_days=0,
        directory_syncs=0,
        web_session_max_hours=12,
    )
    cutoffs = {c.table: c for c in plan(keep, NOW)}
    for name in ("challenges", "audit_events", "account_notices", "directory_syncs"):
        assert not cutoffs[name].prunes, name
    # expired_days 0: gone once expired, never before (the nonce is what refuses a replay).
    assert cutoffs["used_nonces"].before == NOW


def test_planner_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="audit_days"):
        RetentionPolicy(
            challenge_days=1,
            audit_days=-1,
            expired_days=1,
            notice_days=1,
            directory_syncs=1,
            web_session_max_hours=1,
        )
    with pytest.raises(ValueError, match="timezone"):
        plan(POLICY, NOW.replace(tzinfo=None))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("retention_audit_days", "-1"),
        ("retention_challenge_days", "36501"),
        ("retention_batch_size", "0"),
        ("retention_batch_size", "1000001"),
        ("retention_directory_syncs", "many"),
        ("retention_batch_pause_seconds", "-0.5"),
        ("retention_interval_minutes", "-1"),
    ],
)
def test_settings_are_validated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    # Through the environment, as an operator would give them (text to be parsed).
    monkeypatch.setenv("OPENMFA_" + name.upper(), value)
    with pytest.raises(ConfigurationError, match=name):
        load_settings(home=tmp_path)


def test_defaults_are_what_the_docs_say(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path)
    assert settings.retention_audit_days == 400
    assert settings.retention_challenge_days == 180
    assert settings.retention_batch_size == 1000
    assert policy_from(settings).audit_days == 400


# -- the pruner on a real database ---------------------------------------------------------------


async def _seed(conn: AsyncConnection, now: datetime) -> dict[str, Any]:
    """Rows on both sides of each cutoff (POLICY-like defaults of the settings fixture)."""
    old, new = now - timedelta(days=500), now - timedelta(days=1)
    user_id = (
        await conn.execute(
            insert(users_t)
            .values(name_key="alice", name="alice", created_at=old)
            .returning(users_t.c.id)
        )
    ).scalar_one()
    await conn.execute(
        insert(devices_t).values(
            id="dev1", user_id=user_id, kind="pipush", seed_enc=b"x", state="active", created_at=old
        )
    )

    def challenge(cid: str, state: str, created: datetime, expires: datetime) -> dict[str, Any]:
        return {
            "id": cid,
            "user_id": user_id,
            "method": "push",
            "state": state,
            "created_at": created,
            "expires_at": expires,
        }

    await conn.execute(
        insert(challenges_t),
        [
            challenge("old-done", "approved", old, old + timedelta(minutes=2)),
            challenge("old-stale", "pending", old, old + timedelta(minutes=2)),
            # Pending and live (a long wait that began long ago): never pruned.
            challenge("old-live", "pending", old, now + timedelta(minutes=2)),
            challenge("new-done", "denied", new, new + timedelta(minutes=2)),
        ],
    )
    await conn.execute(
        insert(pipush_nonces_t),
        [
            {
                "nonce": "n-old",
                "challenge_id": "old-done",
                "device_id": "dev1",
                "created_at": old,
                "expires_at": old + timedelta(minutes=2),
            },
            {
                "nonce": "n-live",
                "challenge_id": "old-live",
                "device_id": "dev1",
                "created_at": now,
                "expires_at": now + timedelta(minutes=2),
            },
        ],
    )
    await conn.execute(
        insert(audit_t),
        [
            {"at": now - timedelta(days=401), "actor": "a", "action": "x", "result": "ok"},
            {"at": now - timedelta(days=399), "actor": "a", "action": "x", "result": "ok"},
        ],
    )
    await conn.execute(
        insert(used_nonces_t),
        [
            {"device_id": "dev1", "nonce": "u-old", "expires_at": now - timedelta(days=8)},
            {"device_id": "dev1", "nonce": "u-new", "expires_at": now - timedelta(days=6)},
            {"device_id": "dev1", "nonce": "u-live", "expires_at": now + timedelta(minutes=5)},
        ],
    )
    for t, key in ((activation_codes_t, "code_hash"), (invitations_t, "token_hash")):
        await conn.execute(
            insert(t),
            [
                {
                    "user_id": user_id,
                    key: "a" * 64,
                    "created_at": old,
                    "expires_at": now - timedelta(days=8),
                },
                {
                    "user_id": user_id,
                    key: "b" * 64,
                    "created_at": now,
                    "expires_at": now + timedelta(days=1),
                },
            ],
        )

    def session(id_hash: str, seen: datetime) -> dict[str, Any]:
        return {
            "id_hash": id_hash,
            "kind": "portal",
            "csrf_secret": "c",
            "flash": "[]",
            "created_at": seen,
            "last_seen_at": seen,
        }

    await conn.execute(
        insert(web_sessions_t),
        [session("s-old", now - timedelta(days=8)), session("s-new", now - timedelta(hours=1))],
    )

    def notice(state: str, created: datetime) -> dict[str, Any]:
        return {
            "user_id": user_id,
            "change": "factor.added",
            "recipient": "a@example.org",
            "actor": "a",
            "created_at": created,
            "state": state,
            "next_attempt_at": created,
        }

    await conn.execute(
        insert(account_notices_t),
        [notice("sent", old), notice("failed", old), notice("pending", old), notice("sent", new)],
    )
    directory_id = (
        await conn.execute(
            insert(directories_t)
            .values(
                name="corp",
                name_key="corp",
                kind="ldap",
                urls="[]",
                bind_dn="cn=x",
                bind_password_enc=b"x",
                base_dn="dc=x",
                attributes="{}",
                connect_timeout=1.0,
                search_timeout=1.0,
                page_size=100,
                sync_interval=0,
                disable_percent=10,
                disable_minimum=1,
                created_at=old,
                updated_at=old,
            )
            .returning(directories_t.c.id)
        )
    ).scalar_one()
    await conn.execute(
        insert(directory_syncs_t),
        [
            {
                "directory_id": directory_id,
                "actor": "a",
                "state": "done",
                "started_at": now - timedelta(hours=i),
                "report": "{}",
            }
            for i in range(1, 9)
        ],
    )
    return {"user_id": user_id}


async def _count(services: Services, table: Any) -> int:
    async with services.db.read() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


async def _ids(services: Services, column: Any) -> set[Any]:
    async with services.db.read() as conn:
        return set((await conn.scalars(select(column))).all())


def _pruner(services: Services, settings: Settings, **kw: Any) -> Pruner:
    policy = policy_from(settings.model_copy(update={"retention_directory_syncs": 3}))
    return Pruner(services.db, services.audit, services.clock, policy, **kw)


@pytest.mark.anyio
async def test_old_rows_go_new_and_pending_ones_stay(
    services: Services, settings: Settings, clock: FakeClock
) -> None:
    async with services.db.write() as conn:
        await _seed(conn, clock())
    counts = await _pruner(services, settings).run(ADMIN)
    assert counts == {
        "pipush_nonces": 1,
        "challenges": 2,
        "audit_events": 1,
        "used_nonces": 1,
        "activation_codes": 1,
        "invitations": 1,
        "web_sessions": 1,
        "account_notices": 2,
        "directory_syncs": 5,
        "nodes": 0,  # tests/test_node_duties.py
        "address_limits": 0,  # tests/test_address_limits.py prunes those
    }
    assert await _ids(services, challenges_t.c.id) == {"old-live", "new-done"}
    assert await _ids(services, pipush_nonces_t.c.nonce) == {"n-live"}
    assert await _ids(services, used_nonces_t.c.nonce) == {"u-new", "u-live"}
    assert await _ids(services, web_sessions_t.c.id_hash) == {"s-new"}
    assert await _ids(services, account_notices_t.c.state) == {"pending", "sent"}
    # The newest three reports of the directory stay.
    starts = await _ids(services, directory_syncs_t.c.started_at)
    assert len(starts) == 3
    assert min(starts) >= clock() - timedelta(hours=3, seconds=1)
    # The pass itself is audited with its counts (and that row is new, so it stays).
    async with services.db.read() as conn:
        detail = await conn.scalar(
            select(audit_t.c.detail).where(audit_t.c.action == "retention.prune")
        )
    assert detail is not None
    assert "challenges 2" in detail
    # A second pass finds nothing more.
    again = await _pruner(services, settings).run(ADMIN)
    assert not any(again.values())


@pytest.mark.anyio
async def test_dry_run_counts_and_deletes_nothing(
    services: Services, settings: Settings, clock: FakeClock
) -> None:
    async with services.db.write() as conn:
        await _seed(conn, clock())
    before = {t: await _count(services, t) for t in (challenges_t, audit_t, directory_syncs_t)}
    counts = await _pruner(services, settings).run(ADMIN, dry_run=True)
    assert counts["challenges"] == 2
    assert counts["directory_syncs"] == 5
    assert counts["audit_events"] == 1
    after = {t: await _count(services, t) for t in (challenges_t, audit_t, directory_syncs_t)}
    assert after == before  # not even an audit row for a dry run


@pytest.mark.anyio
async def test_batches_are_bounded_with_a_pause_between(
    services: Services, settings: Settings, clock: FakeClock
) -> None:
    old = clock() - timedelta(days=500)
    async with services.db.write() as conn:
        await conn.execute(
            insert(audit_t),
            [{"at": old, "actor": "a", "action": "x", "result": "ok"} for _ in range(250)],
        )
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    pruner = _pruner(services, settings, batch_size=100, pause=0.25, sleep=sleep)
    counts = await pruner.run(ADMIN)
    assert counts["audit_events"] == 250
    assert pruner.largest_batch == 100
    assert pauses == [0.25, 0.25]  # after each full batch: 100, 100, then 50 ends it
    assert await _count(services, audit_t) == 1  # the pass's own audit row


@pytest.mark.anyio
async def test_the_duty_prunes_in_the_background_and_stops(
    services: Services, settings: Settings, clock: FakeClock
) -> None:
    async with services.db.write() as conn:
        await conn.execute(
            insert(audit_t),
            {"at": clock() - timedelta(days=500), "actor": "a", "action": "x", "result": "ok"},
        )
    duty = PruneDuty(_pruner(services, settings), interval=3600, first_delay=0)
    await duty.start()
    try:
        counts = await asyncio.wait_for(duty.wait_pass(), timeout=30)
    finally:
        await duty.close()
    assert counts["audit_events"] == 1
    assert await _count(services, audit_t) == 1


def test_openmfa_prune_prints_counts_per_table(tmp_path: Path) -> None:
    env = {"OPENMFA_HOME": str(tmp_path)}
    assert run_in_process(["db", "upgrade"], env).returncode == 0

    async def seed() -> None:
        opened = await Services.open(load_settings(home=tmp_path), push=False, notify=False)
        try:
            async with opened.db.write() as conn:
                await _seed(conn, opened.clock())
        finally:
            await opened.close()

    asyncio.run(seed())
    dry = run_in_process(["prune", "--dry-run", "--json"], env)
    assert dry.returncode == 0, dry.stderr
    shown = json.loads(dry.stdout)
    assert shown["dry_run"] is True
    assert shown["rows"]["challenges"] == 2
    assert shown["rows"]["directory_syncs"] == 0
    done = run_in_process(["prune"], env)
    assert done.returncode == 0, done.stderr
    assert "REMOVED" in done.stdout
    assert "audit_events" in done.stdout
    assert "before" in done.stdout
    assert "newest 100 per directory" in done.stdout
    again = run_in_process(["prune", "--json"], env)
    assert not any(json.loads(again.stdout)["rows"].values())
