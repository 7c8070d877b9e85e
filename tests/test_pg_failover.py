"""Database failover: a node on a primary and its streaming replica (libpq multi-host URL,
``target_session_attrs=read-write``); the primary stops (fast, immediate) or is killed -9, the
replica is promoted. Requests meanwhile fail cleanly (503 ``database-unavailable``, never a 500,
never a wrong accept), then succeed again on the promoted server without a restart of the node;
with a synchronous standby nothing the node acknowledged is lost.

Real parts only: two PostgreSQL servers from Debian's binaries (tests/support/pg_cluster.py),
the app under uvicorn, HTTP clients. The time from promotion to the first request served is
printed (run with ``-s``) and kept as a user property of the test.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.config import Settings, load_settings
from backend.domain import totp
from backend.domain.stepup import ADMINISTRATOR
from backend.store import migrations
from tests.support.api import ADMIN, PROBLEM_BASE, ApiHarness
from tests.support.clock import FakeClock
from tests.support.pg_cluster import PgCluster, PgServer, running_pg_cluster
from tests.support.process import wait_for

pytestmark = pytest.mark.postgres

START = "/gateway/v1/authentications"
VERIFY = "/gateway/v1/otp/verify"
UNAVAILABLE = PROBLEM_BASE + "database-unavailable"
RECOVERY_LIMIT = 30.0  # seconds from the promotion to requests served again


def node_settings(cluster: PgCluster, home: Path) -> Settings:
    """A node's settings on the cluster's multi-host URL, schema at head."""
    cluster.create_database("openmfa")
    settings = load_settings(
        config_file=None,
        home=home,
        database_url=cluster.multi_host_url("openmfa"),
        public_url="http://127.0.0.1:8080",
    )
    migrations.upgrade(settings.resolved_database_url)
    return settings


@dataclass
class Outcome:
    """One request of the load: when it ended, what it was, what came back."""

    at: float
    what: str
    status: int
    body: dict[str, Any]


@dataclass
class Load:
    """Requests sent one after another from a thread until stopped, alternately: a start
    (a write through SQLAlchemy; method "otp", as the push limit would refuse a stream of
    pushes) and a code check (the raw asyncpg path)."""

    api: ApiHarness
    code: str
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        http = httpx.Client(
            base_url=self.api.url,
            timeout=30.0,
            headers={"Authorization": f"Bearer {self.api.token}"},
        )
        with http:
            while not self.stop.is_set():
                for what, send in self.requests(http):
                    try:
                        response = send()
                    except httpx.HTTPError as exc:  # the node itself must never fail this way
                        self.outcomes.append(
                            Outcome(time.monotonic(), what, 0, {"error": str(exc)})
                        )
                        continue
                    self.outcomes.append(
                        Outcome(time.monotonic(), what, response.status_code, response.json())
                    )

    def requests(self, http: httpx.Client) -> list[tuple[str, Callable[[], httpx.Response]]]:
        return [
            ("start", lambda: http.post(START, json={"user": "alice", "method": "otp"})),
            ("verify", lambda: http.post(VERIFY, json={"user": "olga", "code": self.code})),
        ]

    def served_since(self, since: float) -> int:
        """Requests answered successfully after ``since``."""
        return sum(1 for o in self.outcomes if o.at > since and o.status in (200, 201))


@contextlib.contextmanager
def running_load(api: ApiHarness, code: str) -> Iterator[Load]:
    """The load on a thread of its own, already served (20 requests) when the block starts;
    stopped when it ends."""
    load = Load(api, code)
    worker = threading.Thread(target=load.run, daemon=True)
    worker.start()
    try:
        wait_for(lambda: load.served_since(0) >= 20, 30, "the load to run")
        yield load
    finally:
        load.stop.set()
        worker.join(timeout=30)


def promote_and_recover(replica: PgServer, load: Load) -> float:
    """Promote ``replica`` and wait until the load is served again (20 requests): the
    ``time.monotonic()`` of the promotion."""
    replica.promote()
    promoted = time.monotonic()
    wait_for(
        lambda: load.served_since(promoted) >= 20,
        RECOVERY_LIMIT,
        "requests to be served by the promoted replica",
        detail=lambda: str(load.outcomes[-3:]),
    )
    return promoted


@pytest.fixture
def failover_node(tmp_path: Path) -> Iterator[tuple[PgCluster, ApiHarness, str]]:
    """A synchronous primary + replica, a node on both, users alice (app) and olga (OATH,
    whose current code has been accepted once)."""
    with running_pg_cluster(synchronous="on") as cluster:
        clock = FakeClock()
        with ApiHarness(node_settings(cluster, tmp_path), clock) as api:
            api.add_user("alice")
            api.device("alice")
            api.add_user("olga")
            seed = api.run(api.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "olga")).seed
            code = totp.current_code(seed, clock())
            accepted = api.gateway.post(VERIFY, json={"user": "olga", "code": code})
            assert accepted.json()["reason"] == "ok", accepted.text
            yield cluster, api, code


def check_outcomes(load: Load) -> None:
    """Every answer is a success or a clean 503; the code accepted before is never again."""
    for outcome in load.outcomes:
        assert outcome.status in (200, 201, 503), outcome
        if outcome.status == 503:
            assert outcome.body["type"] == UNAVAILABLE, outcome
        if outcome.what == "verify" and outcome.status == 200:
            assert outcome.body["reason"] == "replayed", outcome  # never a second accept


@pytest.mark.parametrize("how", ["fast", "immediate", "kill"])
def test_requests_fail_cleanly_and_resume_after_promotion(
    failover_node: tuple[PgCluster, ApiHarness, str],
    how: str,
    record_property: Callable[[str, object], None],
) -> None:
    cluster, api, code = failover_node
    replica = cluster.replica
    assert replica is not None
    with running_load(api, code) as load:
        if how == "kill":
            cluster.primary.kill()
        else:
            cluster.primary.stop(how)  # type: ignore[arg-type]
        down = time.monotonic()
        # Promote only once the node has seen the outage: a promotion quicker than the next
        # request would leave nothing to fail over from, and the test would test nothing.
        wait_for(
            lambda: any(o.status == 503 for o in load.outcomes if o.at > down),
            10,
            "a request refused while no server takes writes",
        )
        promoted = promote_and_recover(replica, load)
    first = min(o.at for o in load.outcomes if o.at > promoted and o.status in (200, 201))
    failed = [o for o in load.outcomes if o.status == 503]
    sys.stderr.write(
        f"\nfailover ({how}): primary down -> promoted {promoted - down:.2f} s, "
        f"promoted -> first request served {first - promoted:.3f} s, "
        f"{len(failed)} requests answered 503 of {len(load.outcomes)}\n"
    )
    record_property("promotion_seconds", round(promoted - down, 3))
    record_property("recovery_seconds", round(first - promoted, 3))
    statuses: dict[tuple[str, int], int] = {}
    for o in load.outcomes:
        statuses[(o.what, o.status)] = statuses.get((o.what, o.status), 0) + 1
    sys.stderr.write(f"answers by kind: {statuses}\n")
    check_outcomes(load)
    assert failed, "no request saw the outage: the test did not test a failover"


def test_a_fenced_primarys_sessions_are_not_used_for_writes(
    failover_node: tuple[PgCluster, ApiHarness, str],
) -> None:
    """The old primary turned read-only while the node's pooled sessions sit on it: writes
    there fail cleanly, those sessions are dropped, new ones go to the promoted replica."""
    cluster, api, code = failover_node
    replica = cluster.replica
    assert replica is not None
    with running_load(api, code) as load:
        cluster.fence_primary()
        fenced = time.monotonic()
        wait_for(
            lambda: any(o.status == 503 for o in load.outcomes if o.at > fenced),
            10,
            "a write refused by the fenced primary",
        )
        promote_and_recover(replica, load)
    check_outcomes(load)
    # The fenced primary still runs and answers reads: every success after the promotion
    # wrote to the promoted replica.
    assert cluster.primary.running
    assert replica.sql("SELECT count(*) FROM challenges", "openmfa") != "0"


def state_after_failover(cluster: PgCluster, api: ApiHarness, auth_id: str) -> tuple[str, str]:
    """Kill the primary, promote the replica: the state the gateway's long-poll through the
    node then sees, and the state stored on the promoted server. They can differ: the node
    that took the answer remembers recent outcomes in its bus (backend/events.py), every
    other node reads the database."""
    replica = cluster.replica
    assert replica is not None
    cluster.primary.kill()
    replica.promote()
    seen: dict[str, Any] = {}

    def gateway_sees_it() -> bool:
        response = api.gateway.get(f"{START}/{auth_id}", params={"wait": "1"})
        if response.status_code == 503:
            return False
        assert response.status_code == 200, response.text
        seen.update(response.json())
        return True

    wait_for(gateway_sees_it, RECOVERY_LIMIT, "the gateway's long-poll on the promoted server")
    query = f"SELECT state FROM challenges WHERE id = '{auth_id}'"  # noqa: S608 - server's id
    stored = replica.sql(query, "openmfa")
    return str(seen["state"]), stored


def test_with_a_synchronous_standby_an_acknowledged_answer_survives_the_primary(
    failover_node: tuple[PgCluster, ApiHarness, str],
) -> None:
    cluster, api, _ = failover_node
    api.add_user("bob")
    phone = api.device("bob")
    auth_id = api.start("bob")["id"]
    assert phone.answer(auth_id, "approve") == "approved"  # 200 to the device
    assert state_after_failover(cluster, api, auth_id) == ("approved", "approved")


def test_with_asynchronous_replication_an_acknowledged_answer_can_be_lost(
    tmp_path: Path,
) -> None:
    """What docs/operations.md warns about: without a synchronous standby the primary
    acknowledges before the replica has the answer; a replica that lagged (here: cut off)
    and is promoted has never heard of it: the push is pending again in the database."""
    with (
        running_pg_cluster(synchronous=None) as cluster,
        ApiHarness(node_settings(cluster, tmp_path), FakeClock()) as api,
    ):
        api.add_user("bob")
        phone = api.device("bob")
        auth_id = api.start("bob")["id"]  # replicated before the link breaks
        cluster.detach_replica()
        assert phone.answer(auth_id, "approve") == "approved"  # 200 to the device
        gateway_sees, stored = state_after_failover(cluster, api, auth_id)
    assert stored == "pending"  # lost: any other node's gateway long-poll sees a pending push
    assert gateway_sees == "approved"  # only this node's memory of the outcome still knows


def test_a_long_poll_parked_across_the_failover_wakes_on_an_answer_through_another_node(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """Two nodes on the multi-host URL. A gateway long-poll parked on node A outlives the
    primary's death; the phone's answer arrives through node B on the promoted server; A's
    outcome bus (LISTEN) has reconnected to the promoted server too and wakes the long-poll."""
    with running_pg_cluster(synchronous="on") as cluster:
        replica = cluster.replica
        assert replica is not None
        settings = node_settings(cluster, tmp_path)
        clock = FakeClock()
        with ApiHarness(settings, clock) as a, ApiHarness(settings, clock) as b:
            a.add_user("alice")
            phone = a.device("alice")
            auth_id = a.start("alice")["id"]
            thread, result = a.long_poll_in_background(auth_id, wait="50")
            try:
                wait_for(lambda: a.server_services.bus.waiting == 1, 10, "the long-poll to park")
                cluster.primary.kill()
                replica.promote()
                promoted = time.monotonic()
                assert phone.device is not None
                phone.device.url = b.url  # the load balancer sends the phone to node B
                answered: list[float] = []

                def answer_through_b() -> bool:
                    try:
                        state = phone.answer(auth_id, "approve")
                    except Exception:  # 503 while node B reconnects: the app retries
                        return False
                    answered.append(time.monotonic())
                    return state == "approved"

                wait_for(answer_through_b, RECOVERY_LIMIT, "node B to take the answer", every=0.1)
            finally:
                thread.join(timeout=RECOVERY_LIMIT)
            assert not thread.is_alive(), "the long-poll on node A was never woken"
            assert result["response"].status_code == 200, result["response"].text
            assert result["response"].json()["state"] == "approved"
            woke = result["returned"] - answered[0]
            sys.stderr.write(
                f"\nlong-poll across failover: answer taken {answered[0] - promoted:.3f} s "
                f"after promotion, node A's long-poll woken {woke:.3f} s after the answer\n"
            )
            record_property("answer_after_promotion_seconds", round(answered[0] - promoted, 3))
            record_property("wake_after_answer_seconds", round(woke, 3))
            assert woke < 6, "not woken by the bus (reconnect backoff is at most 5 s)"
