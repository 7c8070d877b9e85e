"""The code check on PostgreSQL: two round trips, and one accept for a code sent 40 times at once.

The concurrency test runs on both databases (SQLite's one writer serialises the checks; on
PostgreSQL the server does, through ``openmfa_otp_record``'s advisory lock and conditional
claim). The round-trip count is PostgreSQL's: asyncpg's query logger sees every statement a
pool connection sends, BEGIN and COMMIT included.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from backend.domain import totp
from backend.domain.stepup import ADMINISTRATOR
from backend.services import Services
from backend.services.context import Actor, SignInContext
from tests.support.api import ADMIN, ApiHarness, assert_problem
from tests.support.clock import FakeClock

VERIFY = "/gateway/v1/otp/verify"
COPIES = 40
postgres_only = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


def _oath_user(api: ApiHarness, name: str) -> str:
    api.add_user(name)
    return api.run(api.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, name)).seed


async def _at_once(url: str, token: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """POST every body concurrently, each on a connection of its own."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as http:
        sent = [http.post(VERIFY, content=json.dumps(b).encode(), headers=headers) for b in bodies]
        return list(await asyncio.gather(*sent))


def test_one_code_sent_40_times_at_once_is_accepted_once(api: ApiHarness, clock: FakeClock) -> None:
    seed = _oath_user(api, "olga")
    code = totp.current_code(seed, clock())
    answers = asyncio.run(_at_once(api.url, api.token, [{"user": "olga", "code": code}] * COPIES))
    assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
    reasons = sorted(r.json()["reason"] for r in answers)
    assert reasons == ["ok"] + ["replayed"] * (COPIES - 1)
    rows = api.run(api.services.audit.query(action="otp.verify", limit=1000))
    assert [row.result for row in rows].count("accept") == 1
    assert len([row for row in rows if row.detail.startswith("replayed")]) == COPIES - 1
    # A replay is no guess: none of them counted toward the lockout.
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    first = api.gateway.post(VERIFY, json={"user": "olga", "code": wrong})
    assert first.json()["reason"] == "wrong-code"


@postgres_only
def test_a_code_check_is_two_round_trips(api: ApiHarness, clock: FakeClock) -> None:
    seed = _oath_user(api, "olga")
    api.set_policy("otp_max_failures", 2, user="olga")
    token = api.token

    async def count() -> dict[str, int]:
        # A container of its own, so its pool opens with the query logger in place.
        services = await Services.open(api.settings, clock=clock, push=False)
        jobs = services.db.postgres_jobs
        assert jobs is not None
        log: list[str] = []
        jobs.query_log = log
        context = SignInContext("vpn", "192.0.2.9")
        actor = Actor("gateway", "192.0.2.9")
        trips: dict[str, int] = {}
        code = totp.current_code(seed, clock())
        wrong = [f"{(int(code) + n) % 1_000_000:06d}" for n in (1, 2)]
        try:
            for label, sent in (
                ("accept", code),
                ("replayed", code),
                ("wrong-code", wrong[0]),
                ("locked", wrong[1]),
            ):
                log.clear()
                result = await services.otp.verify(actor, "olga", sent, context, token)
                assert result.reason == ("ok" if label == "accept" else label)
                trips[label] = len(log)
        finally:
            await services.close()
        return trips

    assert api.run(count()) == {"accept": 2, "replayed": 2, "wrong-code": 2, "locked": 2}
    # The lockout the second wrong code set refuses the right code under the lock.
    clock.advance(30)
    locked = api.gateway.post(
        VERIFY, json={"user": "olga", "code": totp.current_code(seed, clock())}
    )
    assert_problem(locked, 429, "otp-locked")
    rows = api.run(api.services.audit.query(action="otp.verify", limit=100))
    rejected = sorted(row.detail.split(" ")[0] for row in rows if row.result == "reject")
    assert rejected == ["locked", "replayed", "wrong-code"]
    assert [row.result for row in rows].count("accept") == 1


@postgres_only
def test_the_record_decides_again_under_the_lock(api: ApiHarness, database_url: str) -> None:
    """What the unlocked read saw may be stale: a lockout or a block set since then refuses
    the code, claims no step and counts nothing."""
    import asyncpg

    _oath_user(api, "olga")

    async def record(conn: asyncpg.Connection, user_id: int, device_id: str) -> str:
        row = await conn.fetchrow(
            "SELECT outcome FROM openmfa_otp_record($1, $2, $3, $4, $5, now(), 'wrong-code',"
            " 5, 300, 'gateway:gateway', 'olga', '', '', '')",
            1,
            2,
            user_id,
            device_id,
            10**9,
        )
        assert row is not None
        return str(row[0])

    async def scenario() -> list[Any]:
        conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
        try:
            user_id, device_id = await conn.fetchrow(
                "SELECT u.id, d.id FROM users u JOIN devices d ON d.user_id = u.id"
            )
            await conn.execute(
                "UPDATE users SET otp_locked_until = now() + interval '1 minute' WHERE id = $1",
                user_id,
            )
            locked = await record(conn, user_id, device_id)
            await conn.execute(
                "UPDATE users SET otp_locked_until = NULL, blocked = true WHERE id = $1", user_id
            )
            blocked = await record(conn, user_id, device_id)
            await conn.execute("UPDATE users SET blocked = false WHERE id = $1", user_id)
            await conn.execute("UPDATE devices SET state = 'lost' WHERE id = $1", device_id)
            lost = await record(conn, user_id, device_id)
            state = await conn.fetchrow(
                "SELECT d.last_step, u.otp_failures FROM devices d JOIN users u"
                " ON u.id = d.user_id WHERE d.id = $1",
                device_id,
            )
            return [locked, blocked, lost, *state]
        finally:
            await conn.close()

    assert api.run(scenario()) == ["locked-out", "blocked", "replayed", None, 0]
