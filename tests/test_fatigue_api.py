"""The push-fatigue guard through the gateway API of the real app, on SQLite and PostgreSQL:
``push`` is refused with ``push-limited``, ``auto`` asks for a code instead, every stop is
audited, and ``openmfa user show`` tells an administrator why and until when."""

from __future__ import annotations

import re
import threading
from datetime import datetime

import httpx
import pytest
from sqlalchemy import update

from backend.config import Settings
from backend.domain import totp
from backend.domain.fatigue import Reason
from backend.services.audit import AuditEntry
from backend.store.tables import fraud_reports_t
from tests.support.api import ApiHarness, assert_problem
from tests.support.clock import FakeClock
from tests.support.process import Cli

START = "/gateway/v1/authentications"
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def limited(api: ApiHarness) -> list[AuditEntry]:
    """``push.limited`` rows, oldest first."""
    return list(reversed(api.run(api.services.audit.query(action="push.limited"))))


def until_in(detail: str) -> datetime:
    """The ISO time a ``push-limited`` detail names."""
    found = re.search(r"until (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)", detail)
    assert found, detail
    return datetime.fromisoformat(found.group(1).replace("Z", "+00:00"))


def refused_push(api: ApiHarness, user: str) -> dict[str, object]:
    problem = assert_problem(
        api.gateway.post(START, json={"user": user, "method": "push"}), 429, "push-limited"
    )
    return problem


def test_push_limit_refuses_push_asks_auto_for_a_code_and_lifts_after_the_window(
    api: ApiHarness, clock: FakeClock
) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    api.add_user("bob")
    api.device("bob")
    first = api.start("alice")
    phone.answer(first["id"], "approve")  # approved pushes count as well
    clock.advance(30)
    api.start("alice")
    api.start("alice")

    problem = refused_push(api, "alice")
    detail = str(problem["detail"])
    assert "3 pushes in 5 min (limit 3)" in detail
    assert "code" in detail
    # Pushes resume when the first push leaves the 5-minute window.
    resume = until_in(detail)
    assert resume.timestamp() == pytest.approx(
        datetime.fromisoformat(first["created_at"]).timestamp() + 300, abs=1
    )
    assert len(phone.pending()) == 2  # the refused start created nothing

    # auto: the same sign-in becomes a code challenge, which a code answers.
    auto = api.start("alice", "auto")
    assert (auto["method"], auto["number"]) == ("otp", None)
    assert phone.device is not None
    code = totp.current_code(phone.device.totp_secret, clock())
    accepted = api.gateway.post(f"{START}/{auto['id']}/code", json={"code": code})
    assert accepted.json()["result"] == "accept", accepted.text
    assert len(phone.pending()) == 2  # nothing new on the phone

    rows = limited(api)
    assert [(r.result, r.user_name) for r in rows] == [("refused", "alice"), ("otp", "alice")]
    assert all(r.detail.startswith(f"{Reason.PUSH_LIMIT.value} until ") for r in rows)
    assert auto["id"] in rows[1].detail
    assert api.refusals()[0].result == "push-limited"

    # Another user is not affected.
    assert api.start("bob")["method"] == "push"

    clock.advance(300 - 30 - 1)  # the first push is still in the window
    refused_push(api, "alice")
    clock.advance(1)
    assert api.start("alice")["method"] == "push"
    assert api.start("alice", "auto")["method"] == "otp"  # three in the window again


def test_a_burst_of_concurrent_starts_gets_exactly_the_limit(api: ApiHarness) -> None:
    """Starts racing each other (several gateways, several nodes) cannot slip past the limit:
    each reads the history only after the one before it has written."""
    api.add_user("alice")
    phone = api.device("alice")
    copies = 8
    barrier = threading.Barrier(copies)
    statuses: list[int] = []
    clients = [api.client(headers={"Authorization": f"Bearer {api.token}"}) for _ in range(copies)]

    def start(client: httpx.Client) -> None:
        barrier.wait(timeout=10)
        statuses.append(client.post(START, json={"user": "alice", "method": "push"}).status_code)

    threads = [threading.Thread(target=start, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)

    assert sorted(statuses) == [201] * 3 + [429] * (copies - 3)
    assert len(phone.pending()) == 3
    assert len(limited(api)) == copies - 3


def test_denied_and_unanswered_pushes_stop_pushes(api: ApiHarness, clock: FakeClock) -> None:
    api.add_user("alice", push_limit=20, deny_limit_per_device=0, challenge_ttl_seconds=10)
    phone = api.device("alice")
    denied = api.start("alice")
    assert phone.answer(denied["id"], "deny") == "denied"
    cancelled = api.start("alice")
    assert api.gateway.post(f"{START}/{cancelled['id']}/cancel").json()["state"] == "cancelled"
    approved = api.start("alice")
    assert phone.answer(approved["id"], "approve") == "approved"  # does not count
    api.start("alice")  # left unanswered: it counts once its time is up
    allowed = api.start("alice")  # two refused, one still pending: not yet
    assert phone.answer(allowed["id"], "approve") == "approved"
    clock.advance(10)

    problem = refused_push(api, "alice")
    assert "3 denied or unanswered pushes in 5 min (limit 3)" in str(problem["detail"])
    assert limited(api)[-1].detail.startswith(Reason.UNANSWERED_LIMIT.value)


def test_denies_from_one_device_stop_pushes_and_zero_turns_it_off(
    api: ApiHarness, clock: FakeClock
) -> None:
    api.add_user("alice", push_limit=0, push_max_unanswered=0, deny_limit_per_device=2)
    phone = api.device("alice")
    for _ in range(2):
        assert phone.answer(api.start("alice")["id"], "deny") == "denied"

    problem = refused_push(api, "alice")
    assert phone.device is not None
    assert f"2 denies from device {phone.device.device_id}" in str(problem["detail"])
    assert limited(api)[-1].detail.startswith(Reason.DEVICE_DENY_LIMIT.value)

    api.set_policy("deny_limit_per_device", 0, user="alice")
    for _ in range(5):  # every limit off: no guard at all
        assert phone.answer(api.start("alice")["id"], "deny") == "denied"


def test_an_open_fraud_report_mutes_pushes_even_when_it_does_not_block(
    api: ApiHarness,
) -> None:
    api.add_user("alice", fraud_blocks_user=False)
    phone = api.device("alice")
    reported = api.start("alice")
    assert phone.answer(reported["id"], "fraud") == "fraud"
    assert not api.run(api.services.users.get("alice")).blocked

    problem = refused_push(api, "alice")
    assert "until an administrator reviews the report" in str(problem["detail"])
    assert api.start("alice", "auto")["method"] == "otp"
    assert [r.detail.split(":")[0] for r in limited(api)] == [Reason.FRAUD_REPORT_OPEN.value] * 2

    async def review() -> None:
        async with api.services.db.write() as conn:
            await conn.execute(update(fraud_reports_t).values(state="reviewed"))

    api.run(review())
    assert api.start("alice")["method"] == "push"


def test_guard_state_for_administrators(api: ApiHarness, clock: FakeClock) -> None:
    api.add_user("alice", push_limit=2)
    phone = api.device("alice")
    quiet = api.run(api.services.challenges.guard_state("alice"))
    assert (quiet.allowed, quiet.pushes_in_window, quiet.refused_in_window) == (True, 0, 0)
    assert phone.answer(api.start("alice")["id"], "deny") == "denied"
    api.start("alice")

    state = api.run(api.services.challenges.guard_state("alice"))
    assert (state.allowed, state.reason) == (False, Reason.PUSH_LIMIT)
    assert (state.pushes_in_window, state.refused_in_window) == (2, 1)
    assert state.most_denies_by_one_device == 1
    clock.advance(300)
    assert api.run(api.services.challenges.guard_state("alice")).allowed


@sqlite_only
def test_user_show_prints_the_guard_state(api: ApiHarness, settings: Settings) -> None:
    api.add_user("alice", push_limit=2, fraud_blocks_user=False)
    api.add_user("bob")
    phone = api.device("alice")
    assert phone.answer(api.start("alice")["id"], "fraud") == "fraud"
    api.start("alice", "auto")
    cli = Cli(settings.home)

    shown = cli("user", "show", "alice").stdout
    assert re.search(
        r"^pushes:\s+1 in the last 5 min, 1 of them denied or unanswered, "
        r"one device denied 1$",
        shown,
        re.M,
    ), shown
    muted = re.findall(r"^pushes muted:\s+(.*)$", shown, re.M)
    assert muted == [
        "until reviewed (fraud-report-open: a fraud report is open; pushes stay muted until "
        "an administrator reviews it)"
    ]
    assert "sign-ins meanwhile need a code from the app" in shown

    other = cli("user", "show", "bob").stdout
    assert re.search(
        r"^pushes:\s+0 in the last 5 min, 0 of them denied or unanswered$", other, re.M
    )
    assert "pushes muted" not in other
