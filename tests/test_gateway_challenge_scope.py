"""Finding 14c of issue 13: a gateway token sees only the challenges it started.

Reading, waiting on, answering with a code and cancelling an authentication is for the token
that started it, and for tokens of scope ``bridge`` (a RADIUS bridge relays for every client
behind it). Any other token gets 404, as for an id that does not exist (a 403 would confirm
it does), and the refusal is audited. Challenges the web portal starts (its test push, the
admin console's sign-in) belong to no token at all.
"""

from __future__ import annotations

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
