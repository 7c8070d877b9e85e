"""The directory sync against a real database (SQLite and PostgreSQL) and a fake directory.

Each test is an administrator's story: the directory changes (tests/fakes/directory.py),
the sync runs, and our users, the audit trail and the sync's report follow.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from backend.directory.entries import DirectoryEntry
from backend.domain.challenge import ChallengeState
from backend.domain.radius import ClientChanges
from backend.errors import Conflict, DirectoryUnavailable, SyncStopped
from backend.services import Services
from backend.services.context import Actor
from backend.services.directory_sync import SyncProgress, SyncSchedule
from backend.store.tables import audit_t, directory_syncs_t, users_t
from tests.fakes.directory import FakeDirectories, FakeDirectory
from tests.support.directories import add_directory_row
from tests.test_access import _signed_in_user

pytestmark = pytest.mark.anyio
ADMIN = Actor("cli:admin", "local")
SYNC = Actor("directory:corp")


@pytest.fixture
async def corp(services: Services) -> FakeDirectory:
    """Directory ``corp`` (threshold 10% and at least 5), read through a fake."""
    directory_id = await add_directory_row(services)
    source = FakeDirectories()
    services.directory_sync.readers = source
    return await source.reader(directory_id)


async def _user(services: Services, name: str) -> dict[str, object]:
    async with services.db.read() as conn:
        row = (
            await conn.execute(select(users_t).where(users_t.c.name_key == name.casefold()))
        ).one()
    return dict(row._mapping)


async def _count(services: Services, table: object) -> int:
    async with services.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())  # type: ignore[arg-type]


async def test_first_sync_creates_directory_users_and_a_second_changes_nothing(
    services: Services, corp: FakeDirectory
) -> None:
    corp.add("alice", email="alice@corp.example", display_name="Alice A", phone="+1 555 0100")
    corp.add("bob", admin=True)  # no admin group set: the flag is not the directory's to give
    corp.add("carol")
    corp.add("dan")
    progress: list[SyncProgress] = []
    report = await services.directory_sync.run(SYNC, "corp", progress=progress.append)
    assert (report.state, report.created, report.unchanged, report.errors) == ("done", 4, 0, 0)
    assert sorted(report.details["created"]) == ["alice", "bob", "carol", "dan"]
    assert [p.pages for p in progress] == [1, 2]  # page size 3, one line per page
    alice = await _user(services, "alice")
    assert alice["directory_id"] is not None
    assert alice["external_id"] == corp.by_name("alice").external_id
    assert alice["password_hash"] is None  # directory users have no local password
    assert (alice["email"], alice["display_name"], alice["phone"]) == (
        "alice@corp.example",
        "Alice A",
        "+1 555 0100",
    )
    assert (await _user(services, "bob"))["is_admin"] is False
    added = await services.audit.query(action="user.add")
    assert {(e.actor, e.user_name, e.detail) for e in added} >= {
        ("directory:corp", "alice", "directory corp")
    }
    again = await services.directory_sync.run(SYNC, "corp")
    assert (again.created, again.updated, again.renamed, again.disabled, again.enabled) == (
        0,
        0,
        0,
        0,
        0,
    )
    assert again.unchanged == 4
    history = await services.directory_sync.history("corp")
    assert [r.id for r in history] == [again.id, report.id]


async def test_admin_group_decides_the_administrator_flag(services: Services) -> None:
    directory_id = await add_directory_row(services, "hq", admin_group_dn="CN=Admins,DC=x")
    source = FakeDirectories()
    services.directory_sync.readers = source
    hq = await source.reader(directory_id)
    hq.add("root", admin=True)
    hq.add("user")
    await services.directory_sync.run(SYNC, "hq")
    assert (await _user(services, "root"))["is_admin"] is True
    hq.change("root", admin=False)
    report = await services.directory_sync.run(SYNC, "hq")
    assert report.details["updated"] == ["root: admin"]
    assert (await _user(services, "root"))["is_admin"] is False


async def test_changes_and_renames_follow_the_stable_id(
    services: Services, corp: FakeDirectory
) -> None:
    corp.add("alice", email="alice@corp.example")
    corp.add("bob")
    await services.directory_sync.run(ADMIN, "corp")
    bob_id = (await _user(services, "bob"))["id"]
    corp.change("alice", email="a.smith@corp.example", display_name="Alice Smith")
    corp.rename("bob", "robert")
    report = await services.directory_sync.run(ADMIN, "corp")
    assert (report.updated, report.renamed) == (2, 1)  # bob's DN moved with the rename
    assert report.details["renamed"] == ["bob -> robert"]
    robert = await _user(services, "robert")
    assert robert["id"] == bob_id
    assert (await _user(services, "alice"))["email"] == "a.smith@corp.example"
    renamed = await services.audit.query(user_name="robert", action="user.rename")
    assert [(e.actor, e.detail) for e in renamed] == [("cli:admin", "from bob (directory corp)")]


async def test_names_swapped_in_the_directory_are_swapped_here(
    services: Services, corp: FakeDirectory
) -> None:
    a = corp.add("anna")
    b = corp.add("berta")
    await services.directory_sync.run(SYNC, "corp")
    corp.rename("anna", "tmp")
    corp.rename("berta", "anna")
    corp.rename("tmp", "berta")
    report = await services.directory_sync.run(SYNC, "corp")
    assert (report.renamed, report.errors) == (2, 0)
    assert (await _user(services, "anna"))["external_id"] == b.external_id
    assert (await _user(services, "berta"))["external_id"] == a.external_id


async def test_disabled_expired_and_gone_users_are_disabled_with_the_reason(
    services: Services, corp: FakeDirectory
) -> None:
    for name in ("alice", "bob", "carol", "dan", "erin", "frank"):
        corp.add(name)
    await services.directory_sync.run(SYNC, "corp")
    corp.disable("alice")
    corp.expire("bob")
    carol = corp.remove("carol")
    report = await services.directory_sync.run(SYNC, "corp")
    assert report.disabled == 3
    assert sorted(report.details["disabled"]) == [
        "alice (disabled)",
        "bob (expired)",
        "carol (gone)",
    ]
    for name, reason in (("alice", "disabled"), ("bob", "expired"), ("carol", "gone")):
        user = await _user(services, name)
        assert (user["disabled"], user["disabled_by"], user["disabled_reason"]) == (
            True,
            "directory",
            reason,
        )
    audit = await services.audit.query(user_name="carol", action="user.disable")
    assert [e.detail for e in audit] == ["gone (directory corp)"]
    # Back in the group, enabled again: the sync undoes its own disable.
    corp.put(carol)
    corp.enable("alice")
    back = await services.directory_sync.run(SYNC, "corp")
    assert sorted(back.details["enabled"]) == ["alice", "carol"]
    carol_row = await _user(services, "carol")
    assert (carol_row["disabled"], carol_row["disabled_by"], carol_row["disabled_reason"]) == (
        False,
        "",
        "",
    )
    # Disabled in the directory after being gone: the reason follows, nothing else.
    corp.remove("bob")
    moved = await services.directory_sync.run(SYNC, "corp")
    assert moved.details["updated"] == ["bob: disabled_reason"]
    assert (await _user(services, "bob"))["disabled_reason"] == "gone"


async def test_a_user_an_administrator_disabled_is_never_enabled_by_a_sync(
    services: Services, corp: FakeDirectory
) -> None:
    corp.add("mallory")
    await services.directory_sync.run(SYNC, "corp")
    await services.access.disable(ADMIN, "mallory")
    report = await services.directory_sync.run(SYNC, "corp")
    assert (report.enabled, report.unchanged) == (0, 1)
    user = await _user(services, "mallory")
    assert (user["disabled"], user["disabled_by"]) == (True, "admin")
    # Nor after the directory disabled and enabled the account meanwhile.
    corp.disable("mallory")
    await services.directory_sync.run(SYNC, "corp")
    corp.enable("mallory")
    again = await services.directory_sync.run(SYNC, "corp")
    assert again.enabled == 0
    assert (await _user(services, "mallory"))["disabled_by"] == "admin"


async def test_local_users_are_untouched_and_clashes_reported(
    services: Services, corp: FakeDirectory
) -> None:
    await services.users.add(ADMIN, "Dave", email="dave@local.example")
    corp.add("dave", email="dave@corp.example")
    corp.add("erin")
    report = await services.directory_sync.run(SYNC, "corp")
    assert (report.created, report.errors) == (1, 1)
    assert report.details["clashes"] == ["dave: held by a local user"]
    dave = await _user(services, "dave")
    assert (dave["directory_id"], dave["email"], dave["disabled"]) == (
        None,
        "dave@local.example",
        False,
    )
    # Renaming a directory user onto a local user's name is refused the same way.
    corp.rename("erin", "Dave")
    renamed = await services.directory_sync.run(SYNC, "corp")
    assert renamed.renamed == 0
    assert "erin" in [r["name"] for r in [await _user(services, "erin")]]
    # The local user is not "gone" either: it never belonged to the directory.
    corp.entries.clear()
    await services.directory_sync.run(SYNC, "corp", force=True)
    assert (await _user(services, "dave"))["disabled"] is False


async def test_bad_entries_are_errors_and_do_not_disable_their_user(
    services: Services, corp: FakeDirectory
) -> None:
    alice = corp.add("alice")
    await services.directory_sync.run(SYNC, "corp")
    corp.change("alice", name="alice smith")  # a space: not a valid user name here
    corp.add("", external_id="no-name-guid")
    corp.add("bogus", email="not an address")
    report = await services.directory_sync.run(SYNC, "corp")
    assert report.errors == 2
    assert report.disabled == 0
    assert (await _user(services, "alice"))["external_id"] == alice.external_id
    assert report.details["dropped"] == ["bogus: the e-mail address 'not an address' is not valid"]
    assert (await _user(services, "bogus"))["email"] == ""


async def test_above_the_threshold_the_sync_stops_and_disables_nobody(
    services: Services, corp: FakeDirectory
) -> None:
    for number in range(20):
        corp.add(f"user{number:02}")
    await services.directory_sync.run(SYNC, "corp")
    for number in range(6):  # limit: max(5, 10% of 20) = 5
        corp.remove(f"user{number:02}")
    corp.add("newcomer")
    with pytest.raises(SyncStopped) as stopped:
        await services.directory_sync.run(SYNC, "corp")
    assert "would disable 6 of 20 users" in stopped.value.detail
    assert "--force" in stopped.value.detail
    last = await services.directory_sync.last("corp")
    assert last is not None
    assert (last.state, last.disabled, last.created) == ("stopped", 0, 1)
    assert last.details["would_disable"] == 6
    assert (await _user(services, "user00"))["disabled"] is False
    forced = await services.directory_sync.run(ADMIN, "corp", force=True)
    assert (forced.state, forced.disabled) == ("done", 6)
    assert forced.details["forced"] is True


async def test_a_directory_answering_empty_disables_nobody(
    services: Services, corp: FakeDirectory
) -> None:
    for number in range(8):
        corp.add(f"user{number}")
    await services.directory_sync.run(SYNC, "corp")
    corp.entries.clear()
    with pytest.raises(SyncStopped):
        await services.directory_sync.run(SYNC, "corp")
    async with services.db.read() as conn:
        disabled = (
            await conn.execute(select(func.count()).where(users_t.c.disabled.is_(True)))
        ).scalar_one()
    assert disabled == 0


async def test_a_dry_run_plans_the_same_and_writes_only_its_report(
    services: Services, corp: FakeDirectory
) -> None:
    corp.add("alice")
    corp.add("bob")
    await services.directory_sync.run(SYNC, "corp")
    corp.rename("alice", "alicia")
    corp.remove("bob")
    corp.add("carol")
    users, audit = await _count(services, users_t), await _count(services, audit_t)
    dry = await services.directory_sync.run(ADMIN, "corp", dry_run=True)
    assert (dry.dry_run, dry.state, dry.created, dry.renamed, dry.disabled) == (
        True,
        "done",
        1,
        1,
        1,
    )
    assert dry.message.startswith("dry run:")
    assert (await _count(services, users_t), await _count(services, audit_t)) == (users, audit)
    assert (await _user(services, "alice"))["disabled"] is False
    assert await services.directory_sync.last("corp", dry_run=True) == dry
    real = await services.directory_sync.run(ADMIN, "corp")
    assert (real.created, real.renamed, real.disabled) == (1, 1, 1)


async def test_disabling_cancels_pending_sign_ins_and_ends_web_sessions(
    services: Services, corp: FakeDirectory
) -> None:
    entry = corp.add("alice")
    await services.directory_sync.run(SYNC, "corp")
    # alice's directory user gets a device, a pending push and a portal session.
    async with services.db.write() as conn:
        await conn.execute(users_t.delete().where(users_t.c.name_key == "alice"))
    challenge_id, cookie = await _signed_in_user(services, "alice")
    directory_id = next(iter(services.directory_sync.readers.readers))  # type: ignore[attr-defined]
    async with services.db.write() as conn:
        await conn.execute(
            users_t.update()
            .where(users_t.c.name_key == "alice")
            .values(directory_id=directory_id, external_id=entry.external_id)
        )
    corp.disable("alice")
    report = await services.directory_sync.run(SYNC, "corp", force=True)
    assert report.disabled == 1
    assert (await services.challenges.get(challenge_id)).state is ChallengeState.CANCELLED
    assert await services.web_sessions.load("portal", cookie) is None
    ended = await services.audit.query(user_name="alice", action="web.sessions_end")
    assert [e.actor for e in ended] == ["directory:corp"]
    async with services.db.read() as conn:
        devices = (await conn.execute(select(func.count()).select_from(users_t))).scalar_one()
    assert devices == 1  # the user (and its device) are kept


class _GatedDirectory(FakeDirectory):
    """Holds its first page until released, so a test can start a second sync meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def user_pages(self) -> AsyncIterator[list[DirectoryEntry]]:
        self.reading.set()
        await self.release.wait()
        async for page in super().user_pages():
            yield page


async def test_a_second_sync_of_the_same_directory_is_refused_while_one_runs(
    services: Services,
) -> None:
    directory_id = await add_directory_row(services)
    source = FakeDirectories()
    gated = source.readers[directory_id] = _GatedDirectory()
    services.directory_sync.readers = source
    gated.add("alice")
    first = asyncio.create_task(services.directory_sync.run(SYNC, "corp"))
    await gated.reading.wait()
    with pytest.raises(Conflict, match="already running"):
        await services.directory_sync.run(ADMIN, "corp")
    gated.release.set()
    dry = await services.directory_sync.run(ADMIN, "corp", dry_run=True)  # dry runs may
    assert dry.state == "done"
    report = await first
    assert (report.state, report.created) == ("done", 1)
    refused = await services.audit.query(action="directory.sync", result="refused")
    assert [e.actor for e in refused] == ["cli:admin"]


async def test_an_unreachable_directory_fails_the_run_and_changes_nothing(
    services: Services, corp: FakeDirectory
) -> None:
    for number in range(7):
        corp.add(f"user{number}")
    await services.directory_sync.run(SYNC, "corp")
    corp.fail_after_pages = corp.pages_read + 1  # the DC goes away after one page
    with pytest.raises(DirectoryUnavailable):
        await services.directory_sync.run(SYNC, "corp")
    last = await services.directory_sync.last("corp")
    assert last is not None
    assert last.state == "failed"
    assert "no directory server answered" in last.message
    async with services.db.read() as conn:
        disabled = (
            await conn.execute(select(func.count()).where(users_t.c.disabled.is_(True)))
        ).scalar_one()
        running = (
            await conn.execute(select(func.count()).where(directory_syncs_t.c.state == "running"))
        ).scalar_one()
    assert (disabled, running) == (0, 0)


async def test_a_renamed_user_a_radius_client_exempts_by_name_is_not_renamed(
    services: Services, corp: FakeDirectory
) -> None:
    corp.add("svc-backup")
    await services.directory_sync.run(SYNC, "corp")
    changes = ClientChanges(
        addresses=["10.0.0.0/24"], secret="a-long-enough-secret", exempt_users=["svc-backup"]
    )
    await services.radius_clients.add(ADMIN, "vpn", changes)
    corp.rename("svc-backup", "svc-archive")
    report = await services.directory_sync.run(SYNC, "corp")
    assert report.renamed == 0
    assert "a RADIUS client exempts svc-backup" in report.details["errors"][0]
    moved = await services.audit.query(action="user.update")  # the DN moved all the same
    assert [(e.user_name, e.detail) for e in moved] == [("svc-backup", "dn (directory corp)")]


async def test_a_sync_failing_mid_read_releases_the_directory_read(
    services: Services, corp: FakeDirectory
) -> None:
    for number in range(7):
        corp.add(f"user{number}")

    def broken_progress(progress: SyncProgress) -> None:
        raise RuntimeError("the progress display broke")

    with pytest.raises(RuntimeError):
        await services.directory_sync.run(SYNC, "corp", progress=broken_progress)
    assert (corp.pages_read, corp.open_reads) == (1, 0)  # closed at once, not left open
    last = await services.directory_sync.last("corp")
    assert last is not None
    assert last.message == "failed: RuntimeError"


# -- the schedule inside `openmfa run` ---------------------------------------------------------


async def test_the_schedule_syncs_due_directories_and_survives_failures(
    services: Services,
) -> None:
    source = FakeDirectories()
    services.directory_sync.readers = source
    corp = await source.reader(await add_directory_row(services, "corp", sync_interval=600))
    broken = await source.reader(await add_directory_row(services, "broken", sync_interval=60))
    off = await source.reader(await add_directory_row(services, "off", sync_interval=0))
    for fake in (corp, broken, off):
        fake.add(f"user-of-{id(fake)}")
    broken.fail_after_pages = 0
    schedule = SyncSchedule(services.directory_sync, first_delay=5.0, poll=30.0)
    start = 1000.0
    assert await schedule.run_due(start, start) == 5.0  # nothing due yet: the first delay
    wait = await schedule.run_due(start + 5.0, start)  # both due; one fails, quietly
    assert 0 < wait <= 30.0
    corp_report = await services.directory_sync.last("corp")
    broken_report = await services.directory_sync.last("broken")
    assert corp_report is not None
    assert (corp_report.state, corp_report.created, corp_report.actor) == (
        "done",
        1,
        "directory:corp",
    )
    assert broken_report is not None
    assert broken_report.state == "failed"
    assert await services.directory_sync.last("off") is None
    # Not due again before its interval.
    await schedule.run_due(start + 10.0, start)
    assert len(await services.directory_sync.history("corp")) == 1


async def test_the_schedule_stops_cleanly_in_the_middle_of_a_sync(services: Services) -> None:
    directory_id = await add_directory_row(services)
    source = FakeDirectories()
    gated = source.readers[directory_id] = _GatedDirectory()
    services.directory_sync.readers = source
    gated.add("alice")
    schedule = SyncSchedule(services.directory_sync, first_delay=0.0)
    await schedule.start()
    await asyncio.wait_for(gated.reading.wait(), 30)
    await schedule.close()  # the server stops: the sync is interrupted, not left running
    last = await services.directory_sync.last("corp")
    assert last is not None
    assert (last.state, last.message) == ("failed", "failed: interrupted (the server stopped)")
