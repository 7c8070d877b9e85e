"""The directory password as the primary factor: the client rules (primary ldap needs a
directory, others refuse one), the client's directory by name in the store and the document,
and the password check of users from a directory against a fake reader that speaks the
:class:`~backend.directory.reader.DirectoryReader` interface (the real LDAP adapter is tested
over real RADIUS in tests/test_directory_primary_radius.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from backend.config import Settings
from backend.domain import radius
from backend.domain.radius import ClientChanges, merge, normalise
from backend.errors import BadRequest, HashingBusy, InvalidRadiusClient, OtpLocked
from backend.services import Services
from backend.services.context import Actor
from backend.store.tables import radius_clients_t, users_t
from radius_bridge.clients import parse_clients
from radius_vocabulary.settings import PRIMARIES
from tests.support.clock import FakeClock
from tests.support.directory_binds import (
    FakeDirectories,
    FakeReader,
    add_directory,
    add_directory_user,
)

ADMIN = Actor("test:admin")
SECRET = "Tr0ub4dor&3-shared-secret"
RIGHT = "Corp-Passw0rd!"
LOCAL_PASSWORD = "local password of alice"
BRIDGE = Actor("gateway:bridge1")


def changes(**values: Any) -> ClientChanges:
    values.setdefault("addresses", ["10.0.0.0/24"])
    values.setdefault("secret", SECRET)
    return ClientChanges(**values)


# -- the client rules (pure) ------------------------------------------------------------------


def test_primary_ldap_needs_a_directory_and_only_it_takes_one() -> None:
    client = normalise(merge(None, changes(primary="ldap", directory="corp")))
    assert (client.primary, client.directory) == ("ldap", "corp")
    with pytest.raises(InvalidRadiusClient, match=r"needs the directory .*--directory"):
        merge(None, changes(primary="ldap"))
    upstream = {"upstream_host": "nps", "upstream_secret": SECRET}
    for primary, extra in (("none", {}), ("local", {}), ("radius", upstream)):
        with pytest.raises(InvalidRadiusClient, match="only for primary ldap"):
            merge(None, changes(primary=primary, directory="corp", **extra))
    with pytest.raises(InvalidRadiusClient, match="directory 'c o r p'"):
        normalise(merge(None, changes(primary="ldap", directory="c o r p")))
    # Settings built by hand are checked as a whole too.
    with pytest.raises(InvalidRadiusClient, match="needed for, and only for, primary ldap"):
        normalise(radius.ClientSettings(addresses=("10.0.0.1",), secret=SECRET, primary="ldap"))
    with pytest.raises(InvalidRadiusClient, match="needed for, and only for, primary ldap"):
        normalise(radius.ClientSettings(addresses=("10.0.0.1",), secret=SECRET, directory="corp"))


def test_switching_away_from_ldap_drops_the_directory() -> None:
    current = normalise(merge(None, changes(primary="ldap", directory="corp")))
    assert merge(current, ClientChanges(mode="otp")).directory == "corp"
    assert merge(current, ClientChanges(directory="other")).directory == "other"
    local = normalise(merge(current, ClientChanges(primary="local")))
    assert (local.primary, local.directory) == ("local", None)
    assert radius.changed_settings(current, local) == ["primary", "directory"]
    assert "ldap" in PRIMARIES


# -- a fake directory --------------------------------------------------------------------------


@dataclass
class Corp:
    services: Services
    corp: FakeReader
    other: FakeReader
    corp_id: int
    other_id: int


@pytest.fixture
async def env(services: Services) -> Corp:
    corp_id = await add_directory(services, "corp")
    other_id = await add_directory(services, "other")
    corp = FakeReader(
        {
            "alice": (RIGHT, "ok"),
            "dave": (RIGHT, "disabled"),
            "erin": (RIGHT, "locked"),
            "frank": (RIGHT, "expired"),
            "grace": (RIGHT, "password-expired"),
            "heidi": (RIGHT, "must-change"),
        }
    )
    other = FakeReader({"oscar": (RIGHT, "ok")})
    for name in ("alice", "dave", "erin", "frank", "grace", "heidi", "ivan"):
        await add_directory_user(
            services, name, corp_id, local_password=LOCAL_PASSWORD if name == "alice" else None
        )
    await add_directory_user(services, "oscar", other_id)
    await services.users.add(ADMIN, "lena", password=LOCAL_PASSWORD)
    services.users.directories = FakeDirectories({corp_id: corp, other_id: other})
    return Corp(services, corp, other, corp_id, other_id)


async def audit_details(services: Services, user: str) -> list[tuple[str, str]]:
    rows = await services.audit.query(user_name=user, action="password.verify")
    return [(r.result, r.detail) for r in reversed(rows)]


async def otp_failures(services: Services, user: str) -> int:
    async with services.db.read() as conn:
        return int(
            (
                await conn.execute(select(users_t.c.otp_failures).where(users_t.c.name_key == user))
            ).scalar_one()
        )


# -- the service -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_directory_user_is_checked_by_the_directory_never_the_local_hash(env: Corp) -> None:
    users = env.services.users
    result = await users.verify_password(BRIDGE, "Alice", RIGHT)
    assert (result.accepted, result.reason, result.user_name) == (True, "ok", "alice")
    assert env.corp.calls == [("alice", RIGHT, "guid-alice")]
    # A local hash left on the user is not a way in.
    result = await users.verify_password(BRIDGE, "alice", LOCAL_PASSWORD)
    assert (result.accepted, result.reason) == (False, "wrong-password")
    assert env.corp.calls[-1] == ("alice", LOCAL_PASSWORD, "guid-alice")
    assert await audit_details(env.services, "alice") == [
        ("accept", "directory corp: ok"),
        ("reject", "directory corp: wrong-password (data 52e) failures=1"),
    ]
    # Local users are unchanged.
    assert (await users.verify_password(BRIDGE, "lena", LOCAL_PASSWORD)).accepted
    assert len(env.corp.calls) == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("user", "reason"),
    [
        ("dave", "disabled"),
        ("erin", "locked"),
        ("frank", "expired"),
        ("grace", "password-expired"),
        ("heidi", "must-change"),
        ("ivan", "no-such-user"),
    ],
)
async def test_directory_refusals_have_their_own_reasons(env: Corp, user: str, reason: str) -> None:
    result = await env.services.users.verify_password(BRIDGE, user, RIGHT)
    assert (result.accepted, result.reason) == (False, reason)
    assert await audit_details(env.services, user) == [
        ("reject", f"directory corp: {reason} failures=1")
    ]
    assert await otp_failures(env.services, user) == 1  # counted like a wrong password


@pytest.mark.anyio
async def test_empty_password_never_reaches_the_directory(env: Corp) -> None:
    result = await env.services.users.verify_password(BRIDGE, "alice", "")
    assert (result.accepted, result.reason) == (False, "wrong-password")
    assert env.corp.calls == []
    assert await audit_details(env.services, "alice") == [
        ("reject", "directory corp: empty-password")
    ]


@pytest.mark.anyio
async def test_directory_guesses_take_the_local_attempt_slots(env: Corp) -> None:
    """Five wrong passwords (otp_max_failures) lock the user here: the sixth guess, even the
    right password, never reaches the directory; RADIUS is no faster a way to guess AD
    passwords than the local ones."""
    services = env.services
    await services.policies.set(ADMIN, "otp_max_failures", "5")
    for n in range(4):
        result = await services.users.verify_password(BRIDGE, "alice", f"guess-{n}")
        assert result.reason == "wrong-password"
    result = await services.users.verify_password(BRIDGE, "alice", "guess-4")
    assert result.reason == "wrong-password"
    assert (await audit_details(services, "alice"))[-1][0] == "locked"
    with pytest.raises(OtpLocked):
        await services.users.verify_password(BRIDGE, "alice", RIGHT)
    assert len(env.corp.calls) == 5
    assert RIGHT not in [c[1] for c in env.corp.calls]


@pytest.mark.anyio
async def test_right_password_gives_its_slot_back(env: Corp) -> None:
    services = env.services
    await services.users.verify_password(BRIDGE, "alice", "guess")
    assert await otp_failures(services, "alice") == 1
    assert (await services.users.verify_password(BRIDGE, "alice", RIGHT)).accepted
    assert await otp_failures(services, "alice") == 1  # not reset: only a right code does


@pytest.mark.anyio
async def test_directory_unreachable_is_a_refusal_not_a_failure(env: Corp) -> None:
    env.corp.down = True
    services = env.services
    for _ in range(8):  # more than the limit: an outage locks nobody out
        result = await services.users.verify_password(BRIDGE, "alice", RIGHT)
        assert (result.accepted, result.reason) == (False, "directory-unavailable")
    assert await otp_failures(services, "alice") == 0
    assert (await audit_details(services, "alice"))[-1] == (
        "reject",
        "directory corp: unavailable (ldaps://fake: timed out)",
    )
    # No directory service at all: the same refusal.
    services.users.directories = None
    result = await services.users.verify_password(BRIDGE, "alice", RIGHT)
    assert result.reason == "directory-unavailable"


@pytest.mark.anyio
async def test_a_client_of_primary_ldap_checks_only_its_directory(env: Corp) -> None:
    services = env.services
    await services.radius_clients.add(
        ADMIN, "asa1", changes(primary="ldap", directory="CORP", mode="challenge")
    )
    await services.radius_clients.add(
        ADMIN, "rras", changes(addresses=["10.9.0.0/24"], primary="local")
    )
    users = services.users
    assert (await users.verify_password(BRIDGE, "alice", RIGHT, client="asa1")).accepted
    # A local user, even with the right local password; a user of another directory.
    for name, password in (("lena", LOCAL_PASSWORD), ("oscar", RIGHT)):
        result = await users.verify_password(BRIDGE, name, password, client="ASA1")
        assert (result.accepted, result.reason) == (False, "not-in-directory")
        assert (await audit_details(services, name))[-1] == (
            "reject",
            "not-in-directory client ASA1",
        )
    assert env.other.calls == []
    # Other clients: the user's own password source.
    assert (await users.verify_password(BRIDGE, "oscar", RIGHT, client="rras")).accepted
    assert (await users.verify_password(BRIDGE, "lena", LOCAL_PASSWORD, client="rras")).accepted
    assert (await users.verify_password(BRIDGE, "lena", LOCAL_PASSWORD, client="nope")).accepted


@pytest.mark.anyio
async def test_set_password_refuses_directory_users(env: Corp) -> None:
    with pytest.raises(BadRequest, match=r"comes from the directory 'corp'.*change it there"):
        await env.services.users.set_password(ADMIN, "alice", "a new local password")
    assert await audit_details(env.services, "alice") == []
    rows = await env.services.audit.query(user_name="alice", action="user.set_password")
    assert [(r.result, r.detail) for r in rows] == [("reject", "directory corp")]
    await env.services.users.set_password(ADMIN, "lena", "a new local password")


# -- the client's directory in the store and the document --------------------------------------


@pytest.mark.anyio
async def test_client_directory_by_name_in_store_and_document(env: Corp) -> None:
    clients = env.services.radius_clients
    with pytest.raises(InvalidRadiusClient, match="no directory named 'nope'"):
        await clients.add(ADMIN, "asa1", changes(primary="ldap", directory="nope"))
    record = await clients.add(ADMIN, "asa1", changes(primary="ldap", directory="Corp"))
    assert (record.primary, record.directory) == ("ldap", "corp")
    assert (await clients.get("asa1")).directory == "corp"
    document = await clients.document()
    entry = document.clients[0]
    assert (entry["primary"], entry["directory"]) == ("ldap", "corp")
    parsed = parse_clients({"revision": document.revision, "clients": document.clients})
    assert parsed.errors == ()
    assert parsed.clients[0].primary == "ldap"

    record, changed = await clients.update(ADMIN, "asa1", ClientChanges(directory="other"))
    assert (record.directory, list(changed)) == ("other", ["directory"])
    record, changed = await clients.update(ADMIN, "asa1", ClientChanges(primary="local"))
    assert (record.primary, record.directory, list(changed)) == (
        "local",
        None,
        ["primary", "directory"],
    )
    async with env.services.db.read() as conn:
        stored = (await conn.execute(select(radius_clients_t.c.directory_id))).scalar()
    assert stored is None
    rows = await env.services.audit.query(action="radius_client.*")
    assert "primary=ldap directory=corp" in rows[-1].detail


@pytest.mark.anyio
async def test_a_full_hashing_pool_does_not_hold_up_directory_users(
    settings: Settings, clock: FakeClock
) -> None:
    """A flood of local password checks fills the argon2 pool: local checks are refused
    `busy` at once, but a directory user's check needs no hashing and still runs."""
    full = settings.model_copy(update={"hash_workers": 1, "hash_queue_limit": 0})
    services = await Services.open(full, clock=clock)
    try:
        corp_id = await add_directory(services, "corp")
        await add_directory_user(services, "alice", corp_id)
        await services.users.add(ADMIN, "lena", password=LOCAL_PASSWORD)
        reader = FakeReader({"alice": (RIGHT, "ok")})
        services.users.directories = FakeDirectories({corp_id: reader})
        holding, release = asyncio.Event(), asyncio.Event()

        async def hold() -> None:  # one check in the pool (capacity 1), until released
            with services.hasher.admission():
                holding.set()
                await release.wait()

        holder = asyncio.create_task(hold())
        await holding.wait()
        with pytest.raises(HashingBusy):
            await services.users.verify_password(BRIDGE, "lena", LOCAL_PASSWORD)
        result = await services.users.verify_password(BRIDGE, "alice", RIGHT)
        assert (result.accepted, result.reason) == (True, "ok")
        assert await otp_failures(services, "lena") == 0  # the busy refusal spent nothing
        release.set()
        await holder
        assert (await services.users.verify_password(BRIDGE, "lena", LOCAL_PASSWORD)).accepted
    finally:
        await services.close()
