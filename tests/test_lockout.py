"""Attempt limits on the argon2id paths (PIN and local password), attacked with real concurrency.

Each attack test sends its guesses at once over real HTTP (asyncio.gather over an
``httpx.AsyncClient``), on SQLite and PostgreSQL, and counts the argon2id checks the server
really ran: at most the limit, whatever the concurrency. The pool's bound and the dummy check
for unknown users are tested on the services with a real :class:`PasswordHasher` subclass that
counts its work or holds it on an Event the test controls.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.authenticator.client import AppClient
from backend.config import Settings
from backend.domain import signing
from backend.domain.stepup import ADMINISTRATOR
from backend.errors import HashingBusy, OtpLocked, UnknownUser, UserBlocked, UserDisabled
from backend.passwords import PasswordHasher
from backend.services import Services
from backend.services.users import UserService
from tests.support.api import ADMIN, ApiHarness, assert_problem
from tests.support.clock import FakeClock

RIGHT_PIN = "4711"
PASSWORD = "correct horse battery staple"
GUESSES = 40
LIMIT = 5
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


# -- helpers -------------------------------------------------------------------------------------


def _answer(phone: AppClient, challenge_id: str, pin: str) -> tuple[str, bytes, dict[str, str]]:
    """A signed approval with ``pin``, as the reference app sends it: (path, body, headers)."""
    device = phone.device
    assert device is not None
    path = f"/app/v1/challenges/{challenge_id}/answer"
    body = json.dumps({"answer": "approve", "pin": pin}).encode()
    headers = signing.sign_request(
        device.key(), device.device_id, "POST", path, body, int(time.time())
    )
    return path, body, {**headers, "content-type": "application/json"}


async def _at_once(url: str, requests: list[tuple[str, bytes, dict[str, str]]]) -> list[Any]:
    """POST every request concurrently, each on a connection of its own."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as http:
        sent = [http.post(path, content=body, headers=headers) for path, body, headers in requests]
        return list(await asyncio.gather(*sent))


def _bridge_token(api: ApiHarness) -> str:
    return api.run(api.services.tokens.create(ADMIN, "bridge1", scope="bridge"))


def _password_check(token: str, user: str, password: str) -> tuple[str, bytes, dict[str, str]]:
    body = json.dumps({"user": user, "password": password}).encode()
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    return "/gateway/v1/password/verify", body, headers


# -- finding 2: PIN guesses raced ----------------------------------------------------------------


def test_concurrent_wrong_pins_check_at_most_the_limit_and_never_approve(api: ApiHarness) -> None:
    api.add_user("alice", require_pin=True, pin_max_failures=LIMIT, pin_lockout_seconds=300)
    phone = api.device("alice", pin=RIGHT_PIN)
    push = api.start("alice")["id"]
    hasher = api.server_services.hasher
    checked_before = hasher.counts["verify"]

    guesses = [_answer(phone, push, f"{1000 + n:04d}") for n in range(GUESSES)]
    answers = asyncio.run(_at_once(api.url, guesses))
    last = asyncio.run(_at_once(api.url, [_answer(phone, push, RIGHT_PIN)]))[0]

    kinds = sorted({(r.status_code, r.json()["type"].rsplit("/", 1)[-1]) for r in answers})
    assert set(kinds) <= {(403, "wrong-pin"), (429, "pin-locked"), (409, "challenge-closed")}
    assert hasher.counts["verify"] - checked_before == LIMIT  # argon2 checks actually run
    assert last.status_code in (409, 429), last.text  # the right PIN comes too late
    assert api.status(push)["state"] == "denied"  # a wrong PIN past the limit denies the push
    rows = api.run(api.services.audit.query(action="pin.verify", limit=1000))
    assert sum(1 for row in rows if row.detail.startswith("failures=")) <= LIMIT


def test_pin_lockout_denies_the_push_and_holds_for_its_time(
    api: ApiHarness, clock: FakeClock
) -> None:
    api.add_user("alice", require_pin=True, pin_max_failures=3, pin_lockout_seconds=60)
    phone = api.device("alice", pin=RIGHT_PIN)
    push = api.start("alice")["id"]
    for n in range(2):
        assert (
            asyncio.run(_at_once(api.url, [_answer(phone, push, f"000{n}")]))[0].status_code == 403
        )
    locking = asyncio.run(_at_once(api.url, [_answer(phone, push, "0009")]))[0]
    assert_problem(locking, 429, "pin-locked")
    assert api.status(push)["state"] == "denied"

    second = api.start("alice")["id"]
    refused = asyncio.run(_at_once(api.url, [_answer(phone, second, RIGHT_PIN)]))[0]
    assert_problem(refused, 429, "pin-locked")  # the right PIN too, while locked
    assert api.status(second)["state"] == "denied"

    clock.advance(61)
    third = api.start("alice")["id"]
    assert phone.answer(third, "approve", pin=RIGHT_PIN) == "approved"
    results = [row.result for row in api.run(api.services.audit.query(action="pin.verify"))]
    assert results == ["locked", "locked", "wrong", "wrong"]


# -- finding 3: password guesses raced -----------------------------------------------------------


def test_concurrent_wrong_passwords_check_at_most_the_limit(api: ApiHarness) -> None:
    api.run(api.services.users.add(ADMIN, "alice", password=PASSWORD))
    api.set_policy("otp_max_failures", LIMIT, user="alice")
    token = _bridge_token(api)
    hasher = api.server_services.hasher
    checked_before = hasher.counts["verify"]

    guesses = [_password_check(token, "alice", f"guess number {n}") for n in range(GUESSES)]
    answers = asyncio.run(_at_once(api.url, guesses))

    assert {r.status_code for r in answers} <= {200, 429}
    assert all(r.json()["result"] == "reject" for r in answers if r.status_code == 200)
    assert hasher.counts["verify"] - checked_before == LIMIT
    right = asyncio.run(_at_once(api.url, [_password_check(token, "alice", PASSWORD)]))[0]
    assert_problem(right, 429, "otp-locked")
    rows = api.run(api.services.audit.query(action="password.verify", limit=1000))
    assert sum(1 for row in rows if "wrong-password" in row.detail) <= LIMIT


# -- finding 9: unknown users cost what known ones do ---------------------------------------------


class CountingHasher(PasswordHasher):
    """Counts the argon2id verifications it really computes."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(
            settings.argon2_memory_kib,
            settings.argon2_time_cost,
            settings.argon2_parallelism,
            settings.hash_workers,
            **kwargs,
        )
        self.computed = 0

    def _verify(self, stored: str, secret: str) -> tuple[bool, str | None]:
        self.computed += 1
        return super()._verify(stored, secret)


@pytest.fixture
async def counted(
    services: Services, settings: Settings, clock: FakeClock
) -> AsyncIterator[tuple[UserService, CountingHasher]]:
    hasher = CountingHasher(settings)
    try:
        yield UserService(services.db, hasher, services.audit, clock, services.factors), hasher
    finally:
        hasher.close()


@pytest.mark.anyio
async def test_every_refused_password_check_costs_one_argon2_verification(
    services: Services, counted: tuple[UserService, CountingHasher]
) -> None:
    users, hasher = counted
    await services.users.add(ADMIN, "alice", password=PASSWORD)
    await services.users.add(ADMIN, "nopass")
    for name in ("dora", "bert"):
        await services.users.add(ADMIN, name, password=PASSWORD)
    await services.users.set_disabled(ADMIN, "dora", True)
    await services.users.set_blocked(ADMIN, "bert", True)

    async def cost(name: str, expected: type[Exception] | None = None) -> int:
        before = hasher.computed
        if expected is None:
            assert not (await users.verify_password(ADMIN, name, "a wrong password")).accepted
        else:
            with pytest.raises(expected):
                await users.verify_password(ADMIN, name, "a wrong password")
        return hasher.computed - before

    assert await cost("alice") == 1
    assert await cost("nobody", UnknownUser) == 1
    assert await cost("nopass") == 1
    assert await cost("dora", UserDisabled) == 1
    assert await cost("bert", UserBlocked) == 1


@pytest.mark.anyio
@sqlite_only
async def test_unknown_names_past_their_budget_spend_no_argon2(
    services: Services, settings: Settings, clock: FakeClock
) -> None:
    hasher = CountingHasher(settings, unknown_per_second=0.001)  # one, then none for 1000 s
    users = UserService(services.db, hasher, services.audit, clock, services.factors)
    try:
        for _ in range(3):
            with pytest.raises(UnknownUser):
                await users.verify_password(ADMIN, "nobody", "a guess")
    finally:
        hasher.close()
    assert hasher.computed == 1
    assert (hasher.counts["dummy"], hasher.counts["dummy-waited"]) == (1, 2)


# -- finding 18: bounded argon2 work -------------------------------------------------------------


class GatedHasher(CountingHasher):
    """Holds every verification until the test opens ``gate``."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def _verify(self, stored: str, secret: str) -> tuple[bool, str | None]:
        self.entered.set()
        if not self.gate.wait(30):
            raise TimeoutError("the test never opened the gate")
        return super()._verify(stored, secret)


@pytest.mark.anyio
@sqlite_only
async def test_a_full_pool_refuses_at_once_before_counting_an_attempt(
    services: Services, settings: Settings, clock: FakeClock
) -> None:
    one_worker = settings.model_copy(update={"hash_workers": 1})
    hasher = GatedHasher(one_worker, queue_limit=2)
    users = UserService(services.db, hasher, services.audit, clock, services.factors)
    await services.users.add(ADMIN, "alice", password=PASSWORD)
    try:
        held = [
            asyncio.create_task(users.verify_password(ADMIN, "alice", f"guess {n}"))
            for n in range(hasher.capacity)
        ]
        assert await asyncio.to_thread(hasher.entered.wait, 10)
        assert hasher.admitted == hasher.capacity == 3
        with pytest.raises(HashingBusy):
            await users.verify_password(ADMIN, "alice", PASSWORD)
        hasher.gate.set()
        results = await asyncio.gather(*held)
    finally:
        hasher.gate.set()
        hasher.close()
    assert [r.reason for r in results] == ["wrong-password"] * 3
    assert (await services.users.get("alice")).otp_failures == 3  # the refused one: not counted
    assert (hasher.computed, hasher.counts["refused"]) == (3, 1)
    assert hasher.admitted == 0


@sqlite_only
def test_a_full_pool_is_a_429_with_retry_after_over_http(
    settings: Settings, clock: FakeClock
) -> None:
    tiny = settings.model_copy(update={"hash_workers": 1, "hash_queue_limit": 0})
    with ApiHarness(tiny, clock) as api:
        api.run(api.services.users.add(ADMIN, "alice", password=PASSWORD))
        token = _bridge_token(api)
        pool = api.server_services.hasher
        with pool.admission():  # the one place there is: taken, as a running check would
            busy = asyncio.run(_at_once(api.url, [_password_check(token, "alice", PASSWORD)]))[0]
        problem = assert_problem(busy, 429, "busy")
        assert busy.headers["retry-after"] == "1"
        assert "try again" in problem["detail"]
        refused = api.refusals()
        assert refused[0].result == "busy"
        ok = asyncio.run(_at_once(api.url, [_password_check(token, "alice", PASSWORD)]))[0]
        assert ok.json() == {"result": "accept", "reason": "ok"}
        user = api.run(api.services.users.get("alice"))
        assert user.otp_failures == 0  # the refused check spent no attempt


@pytest.mark.anyio
@sqlite_only
async def test_a_lock_set_by_the_last_attempt_is_lifted_when_that_attempt_was_right(
    services: Services,
) -> None:
    await services.users.add(ADMIN, "alice", password=PASSWORD)
    await services.policies.set(ADMIN, "otp_max_failures", "3", "alice")
    for _ in range(2):
        assert not (await services.users.verify_password(ADMIN, "alice", "wrong one")).accepted
    # The third attempt takes the last slot (and locks while it is checked); it is right.
    assert (await services.users.verify_password(ADMIN, "alice", PASSWORD)).accepted
    user = await services.users.get("alice")
    assert (user.otp_failures, user.otp_locked_until) == (2, None)
    assert not (await services.users.verify_password(ADMIN, "alice", "wrong two")).accepted
    with pytest.raises(OtpLocked):
        await services.users.verify_password(ADMIN, "alice", PASSWORD)


def test_a_full_pool_is_an_access_reject_over_radius_never_the_failmode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyrad import packet as pyrad_packet

    from backend.domain.radius import ClientChanges
    from tests.support.bridge import RadiusLab

    monkeypatch.setenv("OPENMFA_HASH_WORKERS", "1")
    monkeypatch.setenv("OPENMFA_HASH_QUEUE_LIMIT", "0")
    with RadiusLab(tmp_path) as lab:
        # failmode safe, the most permissive setting: a busy pool still rejects, at once.
        lab.client("vpn", ["127.0.0.1"], "radius-secret-0", mode="push", primary="local")
        lab.api.run(
            lab.api.services.radius_clients.update(ADMIN, "vpn", ClientChanges(failmode="safe"))
        )
        lab.unenrolled_user("alice", PASSWORD)
        gateway = lab.pyrad("127.0.0.1", "radius-secret-0")
        request = gateway.CreateAuthPacket(code=pyrad_packet.AccessRequest, User_Name="alice")
        request["User-Password"] = request.PwCrypt(PASSWORD)
        with lab.api.server_services.hasher.admission():  # the one place: taken
            reply = gateway.SendPacket(request)
        lab.close_pyrad_clients()
    assert reply.code == pyrad_packet.AccessReject


# -- the same class: codes (cheap to compare, but the same read-then-count) ------------------


def test_concurrent_wrong_codes_compare_at_most_the_limit(api: ApiHarness) -> None:
    api.add_user("alice", otp_max_failures=LIMIT)
    api.run(api.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice"))
    token = api.token
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    guesses = [
        (
            "/gateway/v1/otp/verify",
            json.dumps({"user": "alice", "code": f"{n:06d}"}).encode(),
            headers,
        )
        for n in range(GUESSES)
    ]
    answers = asyncio.run(_at_once(api.url, guesses))
    assert {r.status_code for r in answers} <= {200, 429}
    rows = api.run(api.services.audit.query(action="otp.verify", limit=1000))
    compared = [row for row in rows if row.detail.startswith(("wrong-code", "locked"))]
    assert len(compared) <= LIMIT, [row.detail for row in rows]
