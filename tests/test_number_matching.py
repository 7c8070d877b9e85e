"""Number matching as a gateway asks for it: the start request's ``number_matching`` override
and ``can_show_number``, the ``number_matching_fallback`` policy both ways, wrong numbers
counting toward the push-fatigue guard, and the per-RADIUS-client setting (service, clients
document, CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.authenticator.client import AppClient, AuthenticatorError
from backend.domain.radius import ClientChanges
from backend.errors import InvalidRadiusClient
from tests.support.api import ADMIN, ApiHarness, assert_problem
from tests.support.process import Cli

START = "/gateway/v1/authentications"
CLIENTS = "/gateway/v1/radius/clients"
SECRET = "shared-secret-for-the-rdgw-0001"
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def start(api: ApiHarness, user: str, **body: Any) -> httpx.Response:
    return api.gateway.post(START, json={"user": user, "method": "push", **body})


def refused(call: Any, *args: Any, **kwargs: Any) -> AuthenticatorError:
    with pytest.raises(AuthenticatorError) as info:
        call(*args, **kwargs)
    return info.value


def wrong(number: int) -> int:
    return (number + 1) % 100


def phone_of(api: ApiHarness, user: str, **policy: object) -> AppClient:
    api.add_user(user, **policy)
    return api.device(user)


# -- fallback when the gateway cannot show the number ------------------------------------------


def test_refuse_fallback_is_the_default(api: ApiHarness) -> None:
    phone = phone_of(api, "alice", number_matching=True)

    problem = assert_problem(
        start(api, "alice", can_show_number=False), 409, "number-matching-unavailable"
    )
    assert "code" in problem["detail"]
    assert phone.pending() == []  # nothing was sent to the phone

    auto = start(api, "alice", method="auto", can_show_number=False)
    assert auto.status_code == 201, auto.text
    assert (auto.json()["method"], auto.json()["number"]) == ("otp", None)
    assert phone.pending() == []

    rows = list(reversed(api.run(api.services.audit.query(action="push.limited"))))
    assert [(r.result, r.detail.split(":")[0]) for r in rows] == [
        ("refused", "number-matching-unavailable"),
        ("otp", "number-matching-unavailable"),
    ]
    # A gateway that shows the number still gets a push with one.
    shown = start(api, "alice")
    assert shown.status_code == 201
    assert 10 <= shown.json()["number"] <= 99


def test_approve_fallback_sends_a_push_without_a_number(api: ApiHarness) -> None:
    phone = phone_of(api, "alice", number_matching=True, number_matching_fallback="approve")

    started = start(api, "alice", can_show_number=False)
    assert started.status_code == 201, started.text
    assert (started.json()["method"], started.json()["number"]) == ("push", None)
    challenge = phone.challenge(started.json()["id"])
    assert challenge["number_required"] is False
    assert phone.answer(started.json()["id"], "approve") == "approved"
    audit = api.run(api.services.audit.query(action="auth.start"))[0]
    assert "number-matching-skipped" in audit.detail
    # Without number matching, can_show_number changes nothing.
    api.set_policy("number_matching", False, user="alice")
    api.set_policy("number_matching_fallback", "refuse", user="alice")
    plain = start(api, "alice", can_show_number=False)
    assert (plain.status_code, plain.json()["number"]) == (201, None)
    assert "number-matching-skipped" not in api.run(api.services.audit.query())[0].detail


# -- the gateway's override -----------------------------------------------------------------


def test_the_gateway_turns_number_matching_on_for_a_user_without_it(api: ApiHarness) -> None:
    phone = phone_of(api, "alice")  # policy: off
    started = start(api, "alice", number_matching=True).json()
    assert 10 <= started["number"] <= 99
    assert phone.challenge(started["id"])["number_required"] is True
    error = refused(phone.answer, started["id"], "approve")
    assert (error.status, error.type) == (403, "wrong-number")
    # On by override, not shown by this gateway: the fallback applies as for the policy.
    assert_problem(
        start(api, "alice", number_matching=True, can_show_number=False),
        409,
        "number-matching-unavailable",
    )
    # null follows the policy (off).
    assert start(api, "alice", number_matching=None).json()["number"] is None


def test_the_gateway_turns_number_matching_off(api: ApiHarness) -> None:
    phone = phone_of(api, "alice", number_matching=True)
    started = start(api, "alice", number_matching=False, can_show_number=False).json()
    assert started["number"] is None
    assert phone.answer(started["id"], "approve") == "approved"
    assert api.run(api.services.audit.query(action="push.limited")) == []


@sqlite_only
def test_bad_start_fields_are_refused(api: ApiHarness) -> None:
    phone_of(api, "alice")
    for body in (
        {"number_matching": "yes"},
        {"number_matching": 1},
        {"can_show_number": None},
        {"can_show_number": "false"},
    ):
        assert_problem(start(api, "alice", **body), 400, "invalid-request")


# -- wrong numbers count toward the guard -------------------------------------------------------


def test_wrong_numbers_are_denies_from_that_device_for_the_guard(api: ApiHarness) -> None:
    phone = phone_of(
        api,
        "alice",
        number_matching=True,
        push_limit=0,
        push_max_unanswered=0,
        deny_limit_per_device=2,
    )
    for _ in range(2):
        started = start(api, "alice").json()
        error = refused(phone.answer, started["id"], "approve", number=wrong(started["number"]))
        assert (error.status, error.type) == (403, "wrong-number")
        assert api.status(started["id"])["state"] == "denied"

    problem = assert_problem(start(api, "alice"), 429, "push-limited")
    assert phone.device is not None
    assert f"2 denies from device {phone.device.device_id}" in problem["detail"]


def test_wrong_numbers_count_as_refused_pushes(api: ApiHarness) -> None:
    phone = phone_of(api, "alice", number_matching=True, push_limit=0, push_max_unanswered=1)
    started = start(api, "alice").json()
    refused(phone.answer, started["id"], "approve")  # no number at all: a deny as well
    assert start(api, "alice", method="auto").json()["method"] == "otp"


# -- the RADIUS client setting --------------------------------------------------------------


def test_radius_client_setting_reaches_the_clients_document(api: ApiHarness) -> None:
    clients = api.services.radius_clients
    added = api.run(
        clients.add(
            ADMIN,
            "rdgw",
            ClientChanges(addresses=["10.1.0.10"], secret=SECRET, number_matching="off"),
        )
    )
    assert added.number_matching == "off"
    default = api.run(
        clients.add(ADMIN, "asa1", ClientChanges(addresses=["10.0.0.0/24"], secret=SECRET))
    )
    assert default.number_matching == "policy"
    with pytest.raises(InvalidRadiusClient, match="number-matching must be one of policy, on"):
        api.run(clients.update(ADMIN, "asa1", ClientChanges(number_matching="sometimes")))
    record, changed = api.run(clients.update(ADMIN, "asa1", ClientChanges(number_matching="on")))
    assert (record.number_matching, list(changed)) == ("on", ["number_matching"])
    assert api.run(clients.get("ASA1")).number_matching == "on"
    assert [c.number_matching for c in api.run(clients.list())] == ["on", "off"]

    token = api.run(api.services.tokens.create(ADMIN, "bridge1", scope="bridge"))
    document = api.client(headers={"Authorization": f"Bearer {token}"}).get(CLIENTS)
    assert document.status_code == 200, document.text
    assert {c["name"]: c["number_matching"] for c in document.json()["clients"]} == {
        "asa1": "on",
        "rdgw": "off",
    }


def test_cli_number_matching_option(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home", OPENMFA_RADIUS_PORT="0")
    cli("db", "upgrade")
    added = cli(
        "client",
        "add",
        "rdgw",
        "--address",
        "10.1.0.10",
        "--secret-stdin",
        "--number-matching",
        "on",
        stdin=SECRET + "\n",
    )
    assert "rdgw is in push mode, where the gateway cannot show the number" in added.stderr
    shown = cli("client", "show", "rdgw").stdout
    assert "number matching:" in shown
    assert "on (push mode cannot show the number: number_matching_fallback applies)" in shown

    changed = cli("client", "set", "rdgw", "--number-matching", "off")
    assert changed.stdout.strip() == "RADIUS client rdgw changed: number_matching"
    assert changed.stderr == ""
    assert '"number_matching": "off"' in cli("client", "show", "rdgw", "--json").stdout

    bad = cli("client", "set", "rdgw", "--number-matching", "maybe", check=False)
    assert bad.returncode == 2
    assert "invalid choice: 'maybe'" in bad.stderr
