"""Finding 14c of issue 13: a gateway token sees only the challenges it started.

Reading, waiting on, answering with a code and cancelling an authentication is for the token
that started it, and for tokens of scope ``bridge`` (a RADIUS bridge relays for every client
behind it). Any other token gets 404, as for an id that does not exist (a 403 would confirm
it does), and the refusal is audited. Challenges the web portal starts (its test push, the
admin console's sign-in) belong to no token at all.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest

from backend.domain import totp
from backend.domain.stepup import ADMINISTRATOR
from backend.services.context import SignInContext
from tests.support.api import ADMIN, ApiHarness, assert_problem

START = "/gateway/v1/authentications"


def token_client(api: ApiHarness, name: str, scope: str = "gateway") -> httpx.Client:
    token = api.run(api.services.tokens.create(ADMIN, name, scope))
    return api.client(headers={"Authorization": f"Bearer {token}"})


def every_call(http: httpx.Client, auth_id: str) -> dict[str, httpx.Response]:
    """Each per-challenge gateway route once (the cancel last: it ends the challenge)."""
    return {
        "get": http.get(f"{START}/{auth_id}"),
        "wait": http.get(f"{START}/{auth_id}", params={"wait": "1"}),
        "code": http.post(f"{START}/{auth_id}/code", json={"code": "000000"}),
        "cancel": http.post(f"{START}/{auth_id}/cancel"),
    }


def started(http: httpx.Client, user: str, method: str = "push", **extra: Any) -> dict[str, Any]:
    response = http.post(START, json={"user": user, "method": method, **extra})
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def test_another_gateways_token_gets_404_and_is_audited(api: ApiHarness) -> None:
    api.add_user("alice", number_matching=True)
    api.device("alice")
    vpn, wiki = token_client(api, "vpn"), token_client(api, "wiki")
    auth = started(vpn, "alice")
    assert auth["number"] is not None

    for name, response in every_call(wiki, auth["id"]).items():
        problem = assert_problem(response, 404, "not-found")
        # The problem document names nothing of the challenge (a request id is random hex,
        # so the number is looked for among the values, not in the raw text).
        assert "number" not in problem, name
        assert auth["number"] not in problem.values(), name
        assert str(auth["number"]) not in problem["detail"], name
        rows = [row for row in api.refusals() if row.request_id == problem["request_id"]]
        assert [(row.result, row.actor) for row in rows] == [("not-found", "gateway:wiki")], name
        assert auth["id"] in rows[0].detail

    # Nothing the other token did touched it; the token that started it still sees it all.
    mine = vpn.get(f"{START}/{auth['id']}")
    assert (mine.status_code, mine.json()["state"], mine.json()["number"]) == (
        200,
        "pending",
        auth["number"],
    )
    assert vpn.post(f"{START}/{auth['id']}/cancel").json()["state"] == "cancelled"


def test_an_unknown_id_and_a_foreign_one_are_refused_alike(api: ApiHarness) -> None:
    api.add_user("alice")
    api.device("alice")
    vpn, wiki = token_client(api, "vpn"), token_client(api, "wiki")
    auth = started(vpn, "alice")

    foreign = wiki.get(f"{START}/{auth['id']}").json()
    unknown = wiki.get(f"{START}/ch_doesnotexist").json()

    assert (foreign["status"], foreign["type"], foreign["detail"]) == (
        unknown["status"],
        unknown["type"],
        unknown["detail"],
    )


def test_a_code_sent_by_another_gateway_is_not_checked(api: ApiHarness) -> None:
    api.add_user("alice")
    seed = api.run(api.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")).seed
    vpn, wiki = token_client(api, "vpn"), token_client(api, "wiki")
    auth = started(vpn, "alice", "otp")
    code = totp.current_code(seed, api.clock())

    refused = wiki.post(f"{START}/{auth['id']}/code", json={"code": code})

    assert_problem(refused, 404, "not-found")
    accepted = vpn.post(f"{START}/{auth['id']}/code", json={"code": code})
    assert accepted.json()["result"] == "accept", accepted.text


def test_a_bridge_token_relays_for_every_gateway(api: ApiHarness) -> None:
    api.add_user("alice")
    api.device("alice")
    vpn, bridge = token_client(api, "vpn"), token_client(api, "radius", "bridge")
    auth = started(vpn, "alice")

    calls = every_call(bridge, auth["id"])

    assert [calls[name].status_code for name in ("get", "wait", "code", "cancel")] == [200] * 4
    assert calls["cancel"].json()["state"] == "cancelled"


def test_challenges_started_by_the_web_belong_to_no_token(api: ApiHarness) -> None:
    api.add_user("alice")
    api.device("alice")
    bridge = token_client(api, "radius", "bridge")
    view = api.run(
        api.services.challenges.start(ADMIN, "alice", "push", SignInContext("portal test"))
    )

    for response in every_call(bridge, view.id).values():
        assert_problem(response, 404, "not-found")
    assert api.run(api.services.challenges.get(view.id)).state.value == "pending"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_idempotency_key_of_another_token_starts_a_new_challenge(api: ApiHarness) -> None:
    api.add_user("alice")
    api.device("alice")
    vpn, wiki = token_client(api, "vpn"), token_client(api, "wiki")
    first = started(vpn, "alice", idempotency_key="k-1")

    second = started(wiki, "alice", idempotency_key="k-1")

    assert second["id"] != first["id"]
    assert wiki.get(f"{START}/{second['id']}").status_code == 200


# -- one idempotency scope for every bridge (issue 18) ---------------------------------------------


def test_every_bridge_token_shares_one_idempotency_scope(api: ApiHarness) -> None:
    """A gateway fails over to a second bridge with the same packet: that bridge's token is
    another row, yet its start must join the first bridge's authentication (one push)."""
    api.add_user("alice")
    phone = api.device("alice")
    api.add_user("bob")
    api.device("bob")
    one, two = token_client(api, "bridge-1", "bridge"), token_client(api, "bridge-2", "bridge")
    in_process = api.server_services.tokens.register_ephemeral("in-process", "bridge")
    built_in = api.client(headers={"Authorization": f"Bearer {in_process}"})
    first = started(one, "alice", idempotency_key="k-9")

    assert started(two, "alice", idempotency_key="k-9")["id"] == first["id"]
    assert started(built_in, "alice", idempotency_key="k-9")["id"] == first["id"]
    assert [c["id"] for c in phone.pending()] == [first["id"]]
    # The key still names one user's sign-in.
    assert_problem(two.post(START, json={"user": "bob", "idempotency_key": "k-9"}), 409, "conflict")
    # A gateway token's keys stay its own: the same text starts its own authentication.
    assert started(token_client(api, "vpn"), "alice", idempotency_key="k-9")["id"] != first["id"]


def test_copies_through_two_bridges_at_once_make_one_push_even_at_the_push_limit(
    api: ApiHarness,
) -> None:
    """Copies racing each other must not both run the fatigue guard: with a limit of one
    push, the loser would otherwise count the winner's push and answer "push limited"."""
    api.add_user("alice", push_limit=1, push_limit_window_seconds=600)
    phone = api.device("alice")
    copies = 6
    clients = [token_client(api, f"bridge-{n}", "bridge") for n in range(copies)]
    barrier = threading.Barrier(copies)
    results: list[tuple[int, str]] = []

    def start(client: httpx.Client) -> None:
        barrier.wait(timeout=10)
        response = client.post(
            START, json={"user": "alice", "method": "push", "idempotency_key": "race-1"}
        )
        results.append((response.status_code, response.json().get("id", response.text)))

    threads = [threading.Thread(target=start, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert [status for status, _ in results] == [201] * copies, results
    assert len({auth_id for _, auth_id in results}) == 1
    assert [c["id"] for c in phone.pending()] == [results[0][1]]
    assert len(api.run(api.services.audit.query(action="push.limited"))) == 0


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_copies_held_behind_the_users_row_lock_join_the_first_instead_of_being_limited(
    api: ApiHarness, database_url: str
) -> None:
    """The race made certain: the user's row is locked from outside while copies of one
    start (one per bridge) arrive, so every copy has looked for the key, found nothing, and
    waits for the lock. Released, the first inserts; each next one must find it under the
    lock and join it -- not run the fatigue guard, count the first push and refuse."""
    import asyncpg

    api.add_user("alice", push_limit=1, push_limit_window_seconds=600)
    phone = api.device("alice")
    copies = 3
    clients = [token_client(api, f"bridge-{n}", "bridge") for n in range(copies)]
    plain = database_url.replace("postgresql+asyncpg://", "postgresql://")
    results: list[tuple[int, str]] = []

    async def waiting_for_locks(conn: asyncpg.Connection) -> int:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
        )

    async def scenario() -> None:
        holder = await asyncpg.connect(plain)
        watcher = await asyncpg.connect(plain)
        try:
            transaction = holder.transaction()
            await transaction.start()
            await holder.execute("SELECT id FROM users WHERE name_key = 'alice' FOR UPDATE")

            def start(client: httpx.Client) -> None:
                response = client.post(
                    START, json={"user": "alice", "method": "push", "idempotency_key": "held"}
                )
                results.append((response.status_code, response.json().get("id", response.text)))

            threads = [threading.Thread(target=start, args=(c,)) for c in clients]
            for thread in threads:
                thread.start()
            deadline = asyncio.get_running_loop().time() + 20
            while await waiting_for_locks(watcher) < copies:
                assert asyncio.get_running_loop().time() < deadline, "copies never queued"
                await asyncio.sleep(0.02)
            await transaction.rollback()
            await asyncio.to_thread(lambda: [t.join(timeout=30) for t in threads])
        finally:
            await holder.close()
            await watcher.close()

    asyncio.run(scenario())
    assert [status for status, _ in results] == [201] * copies, results
    assert len({auth_id for _, auth_id in results}) == 1
    assert [c["id"] for c in phone.pending()] == [results[0][1]]
    assert len(api.run(api.services.audit.query(action="push.limited"))) == 0
