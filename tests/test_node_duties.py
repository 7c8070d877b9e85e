"""Duties that run once across nodes (issue 18): the fraud-mail resend at start runs on one
of two nodes only, a directory sync left ``running`` by a dead process is marked failed and
no longer blocks the next sync, and the duties of a node that stops move to the other."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select, update

from backend.app import _duties
from backend.config import Settings, load_settings
from backend.domain.challenge import Answer
from backend.domain.leases import DIRECTORY_SYNC, FRAUD_MAIL, RETENTION
from backend.errors import Conflict
from backend.services import Services
from backend.services.context import Actor, SignInContext
from backend.services.directory_sync import ORPHANED, run_lease
from backend.services.leases import Leases
from backend.services.retention import Pruner
from backend.store.tables import directory_syncs_t, fraud_reports_t, nodes_t
from backend.tasks import LeasedDuty
from tests.fakes.directory import FakeDirectories, FakeDirectory
from tests.support.cli import run_in_process
from tests.support.clock import FakeClock
from tests.support.directories import add_directory_row
from tests.support.smtp import SmtpServer
from tests.test_fraud_mail import app_device, mail_settings

pytestmark = pytest.mark.anyio
ADMIN = Actor("test:admin")


@asynccontextmanager
async def node(
    settings: Settings, clock: FakeClock
) -> AsyncIterator[tuple[Services, list[LeasedDuty]]]:
    """One ``openmfa run`` node as its lifespan builds it: services with a node row, duties."""
    services = await Services.open(settings, clock=clock, push=False, node=True)
    duties = _duties(services, clock)
    try:
        for duty in duties:
            await duty.start()
        yield services, duties
    finally:
        for duty in duties:
            await duty.close()
        await services.close()


def duty(duties: list[LeasedDuty], name: str) -> LeasedDuty:
    (found,) = [d for d in duties if d.name == name]
    return found


async def pending_report(services: Services) -> int:
    """A fraud report left ``pending`` (as by a process that died before mailing it)."""
    device = await app_device(services, "alice")
    view = await services.challenges.start(
        ADMIN, "alice", "push", SignInContext("vpn", "203.0.113.9", "asa-1")
    )
    await services.challenges.answer(Actor(f"device:{device.id}"), device, view.id, Answer.FRAUD)
    (report,) = await services.fraud.list("all", "alice")
    async with services.db.write() as conn:
        await conn.execute(
            update(fraud_reports_t)
            .where(fraud_reports_t.c.id == report.id)
            .values(notify_state="pending", notify_attempts=0)
        )
    return report.id


async def test_fraud_mail_left_pending_is_resent_by_one_of_two_nodes(
    settings: Settings, clock: FakeClock
) -> None:
    with SmtpServer() as smtp:
        configured = mail_settings(
            settings, smtp.port, node_heartbeat_seconds=0.5, node_timeout_seconds=2
        )
        # An earlier process (no mail configured there) left a report pending.
        plain = await Services.open(settings, clock=clock, push=False, notify=False)
        try:
            report_id = await pending_report(plain)
        finally:
            await plain.close()

        async with (
            node(configured, clock) as (a, a_duties),
            node(configured, clock) as (
                b,
                b_duties,
            ),
        ):
            resenders = [duty(a_duties, FRAUD_MAIL), duty(b_duties, FRAUD_MAIL)]
            async with asyncio.timeout(20):
                while not any(d.holding for d in resenders):
                    await asyncio.wait(
                        [asyncio.ensure_future(d.wait_held()) for d in resenders],
                        return_when=asyncio.FIRST_COMPLETED,
                    )
            assert a.fraud_mailer is not None
            assert b.fraud_mailer is not None
            # The other node tries again (retry 0.5 s) and must not resend meanwhile.
            [waiting] = [d for d in resenders if not d.holding]
            tried = waiting.claims
            async with asyncio.timeout(20):
                while waiting.claims < tried + 2:  # noqa: ASYNC110 - a counter, bounded
                    await asyncio.sleep(0.01)
            await a.fraud_mailer.wait_idle()
            await b.fraud_mailer.wait_idle()
            assert sorted(d.holding for d in resenders) == [False, True]
            assert sum(d.runs for d in resenders) == 1
            assert a.nodes is not None
            held = [FRAUD_MAIL in n.leases for n in await a.nodes.list()]  # openmfa nodes
            assert sorted(held) == [False, True]
        sent = await _report_state(configured, clock, report_id)
    assert sent == ("sent", 1)
    assert len(smtp.messages) == 1


async def _report_state(settings: Settings, clock: FakeClock, report_id: int) -> tuple[str, int]:
    services = await Services.open(settings, clock=clock, push=False, notify=False)
    try:
        async with services.db.read() as conn:
            row = (
                await conn.execute(
                    select(fraud_reports_t.c.notify_state, fraud_reports_t.c.notify_attempts).where(
                        fraud_reports_t.c.id == report_id
                    )
                )
            ).one()
        return str(row.notify_state), int(row.notify_attempts)
    finally:
        await services.close()


async def test_a_node_that_stops_hands_its_duties_to_the_other_at_once(
    settings: Settings, clock: FakeClock
) -> None:
    fast = settings.model_copy(update={"node_heartbeat_seconds": 0.2, "node_timeout_seconds": 30})
    async with node(fast, clock) as (a, a_duties):
        async with asyncio.timeout(10):
            await duty(a_duties, DIRECTORY_SYNC).wait_held()
        async with node(fast, clock) as (b, b_duties):
            assert not duty(b_duties, DIRECTORY_SYNC).holding
            await duty(a_duties, DIRECTORY_SYNC).close()
            assert a.nodes is not None
            await a.nodes.close()  # a stops: released now, not after the 30 s ttl
            async with asyncio.timeout(10):
                await duty(b_duties, DIRECTORY_SYNC).wait_held()
            assert b.nodes is not None
            states = {n.id: (n.state.value, n.leases) for n in await b.nodes.list()}
            assert states[a.node_id] == ("stopped", ())
            assert states[b.node_id][0] == "alive"
            assert DIRECTORY_SYNC in states[b.node_id][1]


# -- the directory sync left running by a dead process ------------------------------------------


@pytest.fixture
async def corp(services: Services) -> FakeDirectory:
    directory_id = await add_directory_row(services)
    source = FakeDirectories()
    services.directory_sync.readers = source
    reader = await source.reader(directory_id)
    reader.add("alice")
    return reader


async def _running_row(services: Services, age: float) -> int:
    """A real sync's row left ``running``, started ``age`` seconds ago."""
    async with services.db.write() as conn:
        inserted = await conn.execute(
            insert(directory_syncs_t)
            .values(
                directory_id=1,
                actor="directory:corp",
                dry_run=False,
                state="running",
                started_at=services.clock() - timedelta(seconds=age),
                report="{}",
            )
            .returning(directory_syncs_t.c.id)
        )
        return int(inserted.scalar_one())


async def test_a_sync_left_running_by_a_dead_process_is_failed_and_the_next_sync_runs(
    services: Services, corp: FakeDirectory
) -> None:
    orphan = await _running_row(services, age=5 * 60)  # its process died 5 minutes ago
    report = await services.directory_sync.run(Actor("directory:corp", "schedule"), "corp")
    assert (report.state, report.created) == ("done", 1)
    history = {r.id: r for r in await services.directory_sync.history("corp")}
    assert (history[orphan].state, history[orphan].message) == ("failed", ORPHANED)
    refused = await services.audit.query(action="directory.sync")
    assert any(ORPHANED in e.detail and e.result == "failed" for e in refused)
    # The run released its lease at the end.
    assert await Leases(services.db, services.clock, "x").holder(run_lease(1)) is None


async def test_a_sync_whose_holder_still_renews_blocks_and_the_schedule_fails_orphans(
    services: Services, corp: FakeDirectory, clock: FakeClock
) -> None:
    # Another node runs a sync of corp and renews its lease: a second run is refused.
    other = Leases(services.db, clock, "n_other")
    assert await other.claim(run_lease(1), 20)
    running = await _running_row(services, age=5 * 60)
    with pytest.raises(Conflict, match="already running"):
        await services.directory_sync.run(ADMIN, "corp")
    assert await services.directory_sync.fail_orphaned() == 0

    # That node dies: its lease runs out, and the schedule's holder cleans up.
    clock.advance(21)
    assert await services.directory_sync.fail_orphaned() == 1
    last = await services.directory_sync.last("corp")
    assert last is not None
    assert (last.id, last.state) == (running, "failed")
    report = await services.directory_sync.run(ADMIN, "corp")
    assert report.state == "done"


async def test_a_fresh_running_row_without_a_lease_still_blocks_for_one_ttl(
    services: Services, corp: FakeDirectory
) -> None:
    # Between another process's claim and its first renewal: younger than the ttl.
    await _running_row(services, age=1)
    with pytest.raises(Conflict):
        await services.directory_sync.run(ADMIN, "corp")


# -- node rows: pruned after a week; `openmfa nodes` ---------------------------------------------


async def _node_row(services: Services, node_id: str, seen_days: float, stopped: bool) -> None:
    seen = services.clock() - timedelta(days=seen_days)
    async with services.db.write() as conn:
        await conn.execute(
            insert(nodes_t).values(
                id=node_id,
                name=node_id,
                host="h",
                pid=1,
                version="0",
                started_at=seen - timedelta(hours=1),
                seen_at=seen,
                stopped_at=seen if stopped else None,
            )
        )


async def test_stopped_and_dead_node_rows_are_pruned_after_seven_days(
    services: Services, settings: Settings
) -> None:
    await _node_row(services, "n_old_stopped", 8, stopped=True)
    await _node_row(services, "n_old_dead", 7.5, stopped=False)
    await _node_row(services, "n_recent_stopped", 6, stopped=True)
    await _node_row(services, "n_alive", 0, stopped=False)
    pruner = Pruner.from_settings(services.db, services.audit, services.clock, settings)
    counts = await pruner.run(Actor("retention", "test"))
    assert counts["nodes"] == 2
    async with services.db.read() as conn:
        left = set((await conn.scalars(select(nodes_t.c.id))).all())
    assert left == {"n_recent_stopped", "n_alive"}


def test_openmfa_nodes_lists_nodes_with_state_and_duties(tmp_path: Path) -> None:
    env = {"OPENMFA_HOME": str(tmp_path)}
    assert run_in_process(["db", "upgrade"], env).returncode == 0
    empty = run_in_process(["nodes"], env)
    assert empty.returncode == 0, empty.stderr
    assert "no node has registered" in empty.stdout

    async def two_nodes() -> tuple[str, str]:
        settings = load_settings(home=tmp_path, node_name="mfa-1")
        alive = await Services.open(settings, push=False, notify=False, node=True)
        gone = await Services.open(settings, push=False, notify=False, node=True)
        assert alive.leases is not None
        assert gone.nodes is not None
        await alive.leases.claim(RETENTION, 60)
        await gone.nodes.close()
        await gone.close()
        # Left open: a node that is alive (its heartbeat task is not needed for "alive").
        await alive.db.dispose()
        return alive.node_id, gone.node_id

    alive_id, gone_id = asyncio.run(two_nodes())
    listed = run_in_process(["nodes", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    nodes = {n["id"]: n for n in json.loads(listed.stdout)["nodes"]}
    assert nodes[alive_id]["state"] == "alive"
    assert nodes[alive_id]["duties"] == [RETENTION]
    assert nodes[alive_id]["name"] == "mfa-1"
    assert nodes[gone_id]["state"] == "stopped"
    assert nodes[gone_id]["duties"] == []
    table = run_in_process(["nodes"], env)
    assert "LAST SEEN" in table.stdout
    assert alive_id in table.stdout
    assert "retention" in table.stdout
