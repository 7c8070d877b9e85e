"""Storage behaviour on SQLite and PostgreSQL: races, lockout, time zones, refusals to start."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest
from alembic import command
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select, text

from backend.config import Settings, load_settings
from backend.crypto import load_or_create_key
from backend.domain import totp
from backend.domain.challenge import Answer, Answered, ChallengeState
from backend.domain.stepup import ADMINISTRATOR
from backend.errors import (
    ChallengeClosed,
    DatabaseError,
    OtpLocked,
    PolicyError,
    ServerKeyError,
)
from backend.services import Services
from backend.services.context import Actor, SignInContext
from backend.services.devices import DeviceRecord
from backend.store import migrations
from backend.store.fastpath import SqliteCheckpointer, SqliteWriter
from backend.store.tables import audit_t, challenges_t, devices_t, users_t
from tests.support.clock import FakeClock
from tests.support.database import migrated_sqlite

pytestmark = pytest.mark.anyio
ADMIN = Actor("test:admin")
BOUND = 60.0  # an upper bound on any one concurrent round, never a synchronisation


# -- helpers ----------------------------------------------------------------------------------


async def app_device(services: Services, user: str) -> DeviceRecord:
    """Activate one reference-app device for ``user`` (as `openmfa device activate` does)."""
    offer = await services.activation.create_code(ADMIN, ADMINISTRATOR, user)
    public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    activated = await services.activation.activate(ADMIN, offer.code, public, "reference")
    return await services.devices.get(activated.device_id)


def wrong_code(seed: str, at: datetime) -> str:
    """A well-formed code that matches no step in the ±1 window."""
    window = {totp.code_at_step(seed, totp.time_step(at) + d) for d in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in window)


async def audit_count(services: Services, action: str, result: str | None = None) -> int:
    stmt = select(audit_t.c.id).where(audit_t.c.action == action)
    if result is not None:
        stmt = stmt.where(audit_t.c.result == result)
    async with services.db.read() as conn:
        return len((await conn.execute(stmt)).all())


def assert_utc(value: datetime | None, expected: datetime) -> None:
    assert value is not None
    assert value.tzinfo is not None, "naive timestamp read back"
    assert value.utcoffset() == timedelta(0), f"{value!r} is not in UTC"
    assert value == expected


# -- concurrent TOTP --------------------------------------------------------------------------


async def test_same_code_from_20_concurrent_requests_is_accepted_once(
    services: Services, settings: Settings, clock: FakeClock
) -> None:
    """Replay protection is a conditional UPDATE; two nodes on one database race here too."""
    await services.users.add(ADMIN, "alice")
    oath = await services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")
    # Isolate replay protection from the lockout that 19 replays would otherwise trigger.
    await services.policies.set(ADMIN, "otp_max_failures", "100")
    code = totp.current_code(oath.seed, clock())
    other_node = await Services.open(settings, clock=clock)
    try:
        nodes = [services, other_node]
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    nodes[i % 2].otp.verify(ADMIN, "alice", code, SignInContext(f"gw{i}"))
                    for i in range(20)
                )
            ),
            BOUND,
        )
    finally:
        await other_node.close()

    accepted = [r for r in results if r.accepted]
    assert len(accepted) == 1
    assert accepted[0].device_id == oath.device_id
    assert sorted({(r.accepted, r.reason) for r in results if not r.accepted}) == [
        (False, "replayed")
    ]
    async with services.db.read() as conn:
        last_step = (
            await conn.execute(
                select(devices_t.c.last_step).where(devices_t.c.id == oath.device_id)
            )
        ).scalar_one()
    assert last_step == totp.time_step(clock())
    assert await audit_count(services, "otp.verify", "accept") == 1
    assert await audit_count(services, "otp.verify", "reject") == 19


async def test_concurrent_replays_never_give_a_second_accept_even_with_lockout(
    services: Services, clock: FakeClock
) -> None:
    """With the default lockout the losers may be refused as replays or as locked; never twice."""
    await services.users.add(ADMIN, "alice")
    oath = await services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")
    code = totp.current_code(oath.seed, clock())

    results = await asyncio.wait_for(
        asyncio.gather(
            *(services.otp.verify(ADMIN, "alice", code, SignInContext()) for _ in range(12)),
            return_exceptions=True,
        ),
        BOUND,
    )

    for r in results:
        assert not isinstance(r, BaseException) or isinstance(r, OtpLocked), r
    accepted = [r for r in results if not isinstance(r, BaseException) and r.accepted]
    assert len(accepted) == 1


async def test_a_code_of_an_earlier_step_is_refused_after_a_later_one(
    services: Services, clock: FakeClock
) -> None:
    """A step once accepted is never accepted again, and neither is any step before it."""
    await services.users.add(ADMIN, "alice")
    oath = await services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")
    now_step = totp.time_step(clock())
    later = await services.otp.verify(
        ADMIN, "alice", totp.code_at_step(oath.seed, now_step), SignInContext()
    )
    earlier = await services.otp.verify(
        ADMIN, "alice", totp.code_at_step(oath.seed, now_step - 1), SignInContext()
    )
    assert (later.accepted, earlier.accepted, earlier.reason) == (True, False, "replayed")


# -- concurrent answers -----------------------------------------------------------------------


@pytest.mark.parametrize("rounds", [6])
async def test_racing_answers_make_exactly_one_transition(services: Services, rounds: int) -> None:
    """Two devices of one user answer the same push at once: approve against deny."""
    await services.users.add(ADMIN, "alice")
    # More pushes (and denies) in a row than the push-fatigue guard allows by default.
    for key in ("push_limit", "push_max_unanswered", "deny_limit_per_device"):
        await services.policies.set(ADMIN, key, "0", "alice")
    phone = await app_device(services, "alice")
    tablet = await app_device(services, "alice")

    for _ in range(rounds):
        view = await services.challenges.start(ADMIN, "alice", "push", SignInContext("vpn"))
        waiter = asyncio.create_task(services.challenges.wait(view.id, within=BOUND))
        contenders = [(phone, Answer.APPROVE), (tablet, Answer.DENY)] * 3

        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(
                    services.challenges.answer(ADMIN, device, view.id, answer)
                    for device, answer in contenders
                ),
                return_exceptions=True,
            ),
            BOUND,
        )

        final = await services.challenges.get(view.id)
        assert final.state in {ChallengeState.APPROVED, ChallengeState.DENIED}
        winner = phone if final.state is ChallengeState.APPROVED else tablet
        for (device, _), outcome in zip(contenders, outcomes, strict=True):
            if device is winner:  # the winner's repeats are idempotent
                assert not isinstance(outcome, BaseException), outcome
                assert outcome.state is final.state
            else:
                assert isinstance(outcome, ChallengeClosed), outcome
        async with services.db.read() as conn:
            answered_by = (
                await conn.execute(
                    select(challenges_t.c.answered_by).where(challenges_t.c.id == view.id)
                )
            ).scalar_one()
        assert answered_by == winner.id
        # The waiting gateway woke with the one outcome.
        woke = await asyncio.wait_for(waiter, BOUND)
        assert woke.state is final.state

    assert await audit_count(services, "challenge.answer") == rounds


async def test_approve_races_cancel(services: Services) -> None:
    await services.users.add(ADMIN, "alice")
    phone = await app_device(services, "alice")
    view = await services.challenges.start(ADMIN, "alice", "push", SignInContext())

    approve, cancel = await asyncio.wait_for(
        asyncio.gather(
            services.challenges.answer(ADMIN, phone, view.id, Answer.APPROVE),
            services.challenges.cancel(ADMIN, view.id),
            return_exceptions=True,
        ),
        BOUND,
    )

    final = await services.challenges.get(view.id)
    assert not isinstance(cancel, BaseException)  # cancelling never fails
    assert cancel.state is final.state
    if final.state is ChallengeState.APPROVED:
        assert not isinstance(approve, BaseException)
    else:
        assert final.state is ChallengeState.CANCELLED
        assert isinstance(approve, ChallengeClosed)


# -- lockout ----------------------------------------------------------------------------------


async def test_otp_lockout_after_max_failures_lifted_after_lockout_time(
    services: Services, clock: FakeClock
) -> None:
    await services.users.add(ADMIN, "alice")
    await services.users.add(ADMIN, "bob")
    oath = await services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")
    bob = await services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "bob")
    await services.policies.set(ADMIN, "otp_max_failures", "3", user_name="alice")
    await services.policies.set(ADMIN, "otp_lockout_seconds", "60")
    locked_at = clock()

    reasons = [
        (await services.otp.verify(ADMIN, "alice", wrong_code(oath.seed, clock()), SignInContext()))
        for _ in range(3)
    ]
    assert [(r.accepted, r.reason) for r in reasons] == [
        (False, "wrong-code"),
        (False, "wrong-code"),
        (False, "locked"),
    ]
    alice = await services.users.get("alice")
    assert_utc(alice.otp_locked_until, locked_at + timedelta(seconds=60))

    # Locked: even the right code is refused, and nothing is consumed by the refusal.
    with pytest.raises(OtpLocked):
        await services.otp.verify(
            ADMIN, "alice", totp.current_code(oath.seed, clock()), SignInContext()
        )
    # Another user is not affected.
    other = await services.otp.verify(
        ADMIN, "bob", totp.current_code(bob.seed, clock()), SignInContext()
    )
    assert other.accepted

    clock.advance(59)
    with pytest.raises(OtpLocked):
        await services.otp.verify(
            ADMIN, "alice", totp.current_code(oath.seed, clock()), SignInContext()
        )

    clock.advance(1)  # exactly otp_lockout_seconds later
    ok = await services.otp.verify(
        ADMIN, "alice", totp.current_code(oath.seed, clock()), SignInContext()
    )
    assert (ok.accepted, ok.reason) == (True, "ok")
    # The counter started again from zero: one wrong code is only a wrong code.
    again = await services.otp.verify(
        ADMIN, "alice", wrong_code(oath.seed, clock()), SignInContext()
    )
    assert again.reason == "wrong-code"


async def test_malformed_codes_count_toward_lockout(services: Services, clock: FakeClock) -> None:
    await services.users.add(ADMIN, "alice")
    await services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")
    await services.policies.set(ADMIN, "otp_max_failures", "2")
    first = await services.otp.verify(ADMIN, "alice", "12ab", SignInContext())
    second = await services.otp.verify(ADMIN, "alice", "", SignInContext())
    assert [first.reason, second.reason] == ["malformed-code", "locked"]


# -- timestamps -------------------------------------------------------------------------------


async def test_timestamps_read_back_are_aware_utc(settings: Settings) -> None:
    """Written from a clock in +05:30, read back as the same instants, in UTC."""
    india = timezone(timedelta(hours=5, minutes=30))
    clock = FakeClock(datetime.now(UTC).astimezone(india).replace(microsecond=123456))
    services = await Services.open(settings, clock=clock)
    try:
        t0 = clock()
        await services.users.add(ADMIN, "alice")
        oath = await services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")
        phone = await app_device(services, "alice")
        clock.advance(1)
        t1 = clock()
        assert (
            await services.otp.verify(
                ADMIN, "alice", totp.current_code(oath.seed, t1), SignInContext()
            )
        ).accepted
        view = await services.challenges.start(ADMIN, "alice", "push", SignInContext())
        clock.advance(1)
        t2 = clock()
        answered = await services.challenges.answer(ADMIN, phone, view.id, Answer.APPROVE)

        user = await services.users.get("alice")
        assert_utc(user.created_at, t0)
        assert_utc(user.last_sign_in_at, t2)
        devices = {d.id: d for d in await services.devices.list_for_user("alice")}
        assert_utc(devices[oath.device_id].created_at, t0)
        # An administrator's OATH token is active from its enrolment (no confirm step).
        assert_utc(devices[oath.device_id].activated_at, t0)
        assert_utc(devices[oath.device_id].last_used_at, t1)
        assert_utc(devices[phone.id].activated_at, t2)
        assert_utc(view.created_at, t1)
        assert_utc(view.expires_at, t1 + timedelta(seconds=60))
        assert_utc(answered.answered_at, t2)
        for entry in await services.audit.query(user_name="alice"):
            assert entry.at.utcoffset() == timedelta(0)
            assert entry.at in {t0, t1, t2}
        # Straight from the tables, too (Core, no service in between).
        async with services.db.read() as conn:
            row = (
                await conn.execute(
                    select(users_t.c.created_at, users_t.c.last_sign_in_at).where(
                        users_t.c.name_key == "alice"
                    )
                )
            ).one()
        assert_utc(row.created_at, t0)
        assert_utc(row.last_sign_in_at, t2)
    finally:
        await services.close()


async def test_expiry_compares_instants_in_the_database(settings: Settings) -> None:
    """``expires_at > now`` in SQL must hold across zones (stored text compares on SQLite)."""
    india = timezone(timedelta(hours=5, minutes=30))
    clock = FakeClock(datetime.now(UTC).astimezone(india))
    services = await Services.open(settings, clock=clock)
    try:
        await services.users.add(ADMIN, "alice")
        phone = await app_device(services, "alice")
        view = await services.challenges.start(ADMIN, "alice", "push", SignInContext())
        clock.advance(59)
        assert [c.id for c in await services.challenges.pending_for_device(phone)] == [view.id]
        clock.advance(1)
        assert await services.challenges.pending_for_device(phone) == []
        assert (await services.challenges.get(view.id)).state is ChallengeState.EXPIRED
    finally:
        await services.close()


# -- refusing to start ------------------------------------------------------------------------


def sqlite_settings(home: Path) -> Settings:
    return load_settings(config_file=None, home=home, database_url="")


async def test_open_refuses_a_missing_sqlite_file(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path / "fresh")
    with pytest.raises(DatabaseError) as caught:
        await Services.open(settings)
    message = str(caught.value)
    assert str(tmp_path / "fresh" / "openmfa.db") in message
    assert "does not exist" in message
    assert "openmfa db upgrade" in message
    assert not (tmp_path / "fresh" / "openmfa.db").exists()  # nothing created on the way


async def test_open_refuses_an_empty_sqlite_file(tmp_path: Path) -> None:
    (tmp_path / "openmfa.db").touch()
    with pytest.raises(DatabaseError, match=r"database is empty.*openmfa db upgrade"):
        await Services.open(sqlite_settings(tmp_path))


def test_the_schema_revision_the_code_needs_is_the_newest_migration() -> None:
    # Commands check the schema against this constant so that they need not import Alembic;
    # a new migration must move it too.
    assert migrations.head_revision() == migrations.SCHEMA_REVISION


async def test_open_refuses_a_schema_behind_head(settings: Settings, database_url: str) -> None:
    await anyio.to_thread.run_sync(
        lambda: command.downgrade(migrations.alembic_config(database_url), "base")
    )
    with pytest.raises(DatabaseError) as caught:
        await Services.open(settings)
    assert "the database is empty (no schema yet)" in str(caught.value)
    assert "openmfa db upgrade" in str(caught.value)


async def test_open_refuses_an_unknown_revision(settings: Settings) -> None:
    """A database migrated by a newer version of OpenMFA."""
    opened = await Services.open(settings)
    try:
        async with opened.db.write() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'fffffffffff'"))
    finally:
        await opened.close()
    with pytest.raises(DatabaseError, match="schema is at fffffffffff"):
        await Services.open(settings)


@contextlib.asynccontextmanager
async def opened(settings: Settings, clock: FakeClock) -> AsyncIterator[Services]:
    services = await Services.open(settings, clock=clock)
    try:
        yield services
    finally:
        await services.close()


async def test_server_key_deleted_after_first_use(settings: Settings, clock: FakeClock) -> None:
    async with opened(settings, clock) as services:
        await services.users.add(ADMIN, "alice")
        await services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")
    key_file = settings.resolved_key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key_file.unlink()

    with pytest.raises(ServerKeyError) as caught:
        await Services.open(settings, clock=clock)
    assert str(key_file) in str(caught.value)
    assert "missing" in str(caught.value)
    assert not key_file.exists()  # a fresh key would make every seed unreadable: never


async def test_server_key_replaced_by_another(settings: Settings, clock: FakeClock) -> None:
    async with opened(settings, clock) as services:
        await services.users.add(ADMIN, "alice")
        oath = await services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")
    key_file = settings.resolved_key_file
    original = key_file.read_bytes()
    key_file.unlink()
    load_or_create_key(key_file, create=True)  # someone "fixed" it with a new key

    with pytest.raises(ServerKeyError, match="not the key this database was encrypted with"):
        await Services.open(settings, clock=clock)

    # Restoring the backup brings everything back, seeds included.
    key_file.write_bytes(original)
    async with opened(settings, clock) as services:
        result = await services.otp.verify(
            ADMIN, "alice", totp.current_code(oath.seed, clock()), SignInContext()
        )
    assert result.accepted


# -- read-only SQLite -------------------------------------------------------------------------

NOBODY = 65534


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Make file modes count: as root, act as ``nobody`` for the block (restored after).

    Root ignores file modes, so ``chmod`` alone proves nothing there. Only the effective ids
    change; the saved id stays root, so the test process gets its rights back afterwards.
    """
    if os.geteuid() != 0:
        yield
        return
    try:
        os.setegid(NOBODY)
        os.seteuid(NOBODY)
    except PermissionError as exc:  # pragma: no cover - root without CAP_SETUID
        os.setegid(0)
        pytest.skip(f"cannot drop privileges to test file modes as root: {exc}")
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def shared_home() -> Iterator[Path]:
    """A data directory the unprivileged user can reach (pytest's tmp_path is 0700 root's)."""
    home = Path(tempfile.mkdtemp(prefix="openmfa-ro-"))
    home.chmod(0o755)
    try:
        yield home
    finally:
        with contextlib.suppress(OSError):
            home.chmod(0o755)
        shutil.rmtree(home, ignore_errors=True)


def make_read_only(home: Path, directory_too: bool) -> None:
    """chmod the database (and maybe its directory) read-only, owned by the test's user."""
    if os.geteuid() == 0:
        for path in (home, *home.iterdir()):
            os.chown(path, NOBODY, NOBODY)
    (home / "openmfa.db").chmod(0o444)
    if directory_too:
        home.chmod(0o555)


@pytest.mark.parametrize("what", ["file", "file-and-directory"])
async def test_read_only_sqlite_gives_database_error(shared_home: Path, what: str) -> None:
    settings = sqlite_settings(shared_home)
    await anyio.to_thread.run_sync(migrations.upgrade, settings.resolved_database_url)
    clock = FakeClock()
    async with opened(settings, clock) as services:
        await services.users.add(ADMIN, "alice")
        oath = await services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")
    make_read_only(shared_home, directory_too=what == "file-and-directory")

    problems: list[str] = []
    with unprivileged():
        refused: DatabaseError | None = None
        try:
            services = await Services.open(settings, clock=clock)
        except DatabaseError as exc:
            refused = exc
        if refused is not None:
            # Without write access to the directory SQLite cannot even start a WAL reader.
            assert what == "file-and-directory", refused
            problems.append(str(refused))
        else:
            try:
                assert [s.user.name for s in await services.users.list()] == ["alice"]
                with pytest.raises(DatabaseError) as on_write:
                    await services.users.add(ADMIN, "bob")
                problems.append(str(on_write.value))
                with pytest.raises(DatabaseError) as on_fast_path:
                    await services.otp.verify(
                        ADMIN, "alice", totp.current_code(oath.seed, clock()), SignInContext()
                    )
                problems.append(str(on_fast_path.value))
            finally:
                await services.close()

    assert problems
    for message in problems:
        assert "read-only" in message, message
        assert "owner and mode" in message, message


async def test_replayed_codes_do_not_count_toward_lockout(
    services: Services, clock: FakeClock
) -> None:
    await services.users.add(ADMIN, "alice")
    await services.policies.set(ADMIN, "otp_max_failures", "2")
    seed = (await services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")).seed
    code = totp.current_code(seed, clock())
    assert (await services.otp.verify(ADMIN, "alice", code, SignInContext())).accepted

    replays = [await services.otp.verify(ADMIN, "alice", code, SignInContext()) for _ in range(4)]

    assert {r.reason for r in replays} == {"replayed"}
    assert (await services.users.get("alice")).otp_locked_until is None
    clock.advance(totp.PERIOD)
    fresh = await services.otp.verify(
        ADMIN, "alice", totp.current_code(seed, clock()), SignInContext()
    )
    assert fresh.accepted
    assert await audit_count(services, "otp.verify", "reject") == 4


async def test_a_corrupted_stored_policy_value_is_named_in_the_error(
    services: Services, settings: Settings
) -> None:
    await services.users.add(ADMIN, "alice")
    seed = (await services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")).seed
    async with services.db.write() as conn:
        await conn.execute(
            text(
                "INSERT INTO policies (scope, key, value) "
                "VALUES ('global', 'otp_max_failures', 'x')"
            )
        )
    with pytest.raises(PolicyError, match="otp_max_failures"):
        await services.otp.verify(
            ADMIN, "alice", wrong_code(seed, services.clock()), SignInContext()
        )


@pytest.mark.parametrize(("level", "pragma"), [("normal", 1), ("full", 2)])
async def test_sqlite_synchronous_setting_reaches_every_connection(
    tmp_path: Path, level: str, pragma: int
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'openmfa.db'}"
    await anyio.to_thread.run_sync(migrations.upgrade, url)  # Alembic runs its own loop
    services = await Services.open(load_settings(home=tmp_path, sqlite_synchronous=level))
    try:
        async with services.db.read() as conn:
            pooled = (await conn.execute(text("PRAGMA synchronous"))).scalar_one()
        writer = await services.db.run_job(lambda tx: tx.one("PRAGMA synchronous"))
    finally:
        await services.close()
    assert (pooled, writer) == (pragma, (pragma,))


# -- raw-SQL read jobs ------------------------------------------------------------------------


async def test_a_read_job_sees_what_a_write_job_committed(services: Services) -> None:
    insert_probe = "INSERT INTO meta (key, value) VALUES (?, ?)"
    await services.db.run_job(lambda tx: tx.run(insert_probe, "probe", "1"))
    read = await services.db.run_read(
        lambda tx: tx.one("SELECT value FROM meta WHERE key = ?", "probe")
    )
    assert read == ("1",)


async def test_a_read_job_that_writes_fails_and_writes_nothing(services: Services) -> None:
    with pytest.raises(DatabaseError):
        await services.db.run_read(
            lambda tx: tx.run("INSERT INTO meta (key, value) VALUES (?, ?)", "probe", "1")
        )
    assert await services.db.get_meta("probe") is None


async def test_a_read_job_runs_while_a_write_transaction_is_open(services: Services) -> None:
    """Reads must not queue behind writes: the long-poll's reads beside the phone's answer."""
    async with services.db.write() as conn:
        await conn.execute(text("INSERT INTO meta (key, value) VALUES ('probe', 'uncommitted')"))
        seen = await asyncio.wait_for(
            services.db.run_read(lambda tx: tx.one("SELECT value FROM meta WHERE key = 'probe'")),
            BOUND,  # on SQLite a read on the writer's thread would wait for this block forever
        )
    assert seen is None  # a snapshot from before the open write
    assert await services.db.get_meta("probe") == "uncommitted"


@pytest.mark.parametrize("answer", [Answer.APPROVE, Answer.DENY])
async def test_the_quick_answer_writes_what_the_orm_path_writes(
    services: Services, clock: FakeClock, answer: Answer
) -> None:
    """``answer`` settles the common case in one raw-SQL job; ``_settle`` is the ORM path that
    handles every other case. Both must leave the same rows behind."""
    rows = {}
    for user, quick in (("alice", True), ("bob", False)):
        await services.users.add(ADMIN, user)
        device = await app_device(services, user)
        view = await services.challenges.start(ADMIN, user, "push", SignInContext("vpn"))
        if quick:
            settled = await services.challenges.answer(ADMIN, device, view.id, answer)
        else:
            settled = await services.challenges._settle(
                ADMIN, view.id, Answered(answer, device.id, clock()), device
            )
        async with services.db.read() as conn:
            challenge = (
                await conn.execute(
                    select(
                        challenges_t.c.state, challenges_t.c.answered_at, challenges_t.c.answered_by
                    ).where(challenges_t.c.id == view.id)
                )
            ).one()
            stored_device = (
                await conn.execute(
                    select(
                        devices_t.c.state, devices_t.c.last_used_at, devices_t.c.activated_at
                    ).where(devices_t.c.id == device.id)
                )
            ).one()
            signed_in = (
                await conn.execute(select(users_t.c.last_sign_in_at).where(users_t.c.name == user))
            ).scalar_one()
            audit = (
                await conn.execute(
                    select(
                        audit_t.c.actor, audit_t.c.result, audit_t.c.user_name, audit_t.c.detail
                    ).where(audit_t.c.action == "challenge.answer", audit_t.c.user_name == user)
                )
            ).one()
        assert challenge.answered_by == device.id
        assert audit.detail == f"{view.id} by {device.id}"
        rows[user] = (
            settled.state,
            settled.answered_at,
            challenge.state,
            challenge.answered_at,
            tuple(stored_device),
            signed_in,
            (audit.actor, audit.result, audit.user_name == user),
        )
    assert rows["alice"] == rows["bob"]
    expected = ChallengeState.APPROVED if answer is Answer.APPROVE else ChallengeState.DENIED
    assert rows["alice"][0] is expected
    assert rows["alice"][5] == (clock() if answer is Answer.APPROVE else None)


async def test_write_commits_leave_wal_checkpoints_to_their_own_thread(tmp_path: Path) -> None:
    """A checkpoint (copy the log, fsync the file) inside a commit stalled that write."""
    migrated_sqlite(tmp_path)
    path = tmp_path / "openmfa.db"
    checkpointer = SqliteCheckpointer(path, 5000, interval=3600)
    writer = SqliteWriter(path, 5000, asyncio.Lock(), "NORMAL", checkpointer)
    try:
        assert await writer.run(lambda tx: tx.one("PRAGMA wal_autocheckpoint")) == (0,)
        first = checkpointer.running
        assert first is not None  # asked for after the batch
        await first
        assert checkpointer.done == 1
        insert_probe = "INSERT INTO meta (key, value) VALUES (?, ?)"
        await writer.run(lambda tx: tx.run(insert_probe, "probe", "1"))
        assert checkpointer.running is first  # at most one per interval
        assert checkpointer.done == 1
    finally:
        writer.close()
        checkpointer.close()
