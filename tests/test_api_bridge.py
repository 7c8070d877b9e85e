"""The bridge's part of the gateway API over real HTTP, on SQLite and PostgreSQL: the clients
document with ETag / 304, scope enforcement, local password checks with the shared lockout,
the audit endpoint, and the in-memory token of ``openmfa run``."""

from __future__ import annotations

import logging
import threading
from dataclasses import astuple
from typing import Any

import httpx
import pytest

from backend.domain import totp
from backend.domain.radius import ClientChanges
from backend.domain.stepup import ADMINISTRATOR
from tests.support.api import ADMIN, ApiHarness, assert_problem
from tests.support.clock import FakeClock

CLIENTS = "/gateway/v1/radius/clients"
PASSWORD = "/gateway/v1/password/verify"
AUDIT = "/gateway/v1/audit"
SECRET = "shared-secret-for-the-asa-0001"
ALICE_PASSWORD = "correct horse battery staple"
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def bridge(api: ApiHarness, name: str = "bridge1") -> httpx.Client:
    """A client with a fresh token of scope bridge."""
    token = api.run(api.services.tokens.create(ADMIN, name, scope="bridge"))
    return api.client(headers={"Authorization": f"Bearer {token}"})


def add_client(api: ApiHarness, name: str = "asa1", **values: Any) -> None:
    values.setdefault("addresses", ["10.0.0.0/24"])
    values.setdefault("secret", SECRET)
    api.run(api.services.radius_clients.add(ADMIN, name, ClientChanges(**values)))


def password_user(api: ApiHarness, name: str = "alice", **policy: object) -> None:
    api.run(api.services.users.add(ADMIN, name, password=ALICE_PASSWORD))
    for key, value in policy.items():
        api.set_policy(key, value, user=name)


def check(http: httpx.Client, user: str, password: str, **extra: Any) -> httpx.Response:
    return http.post(PASSWORD, json={"user": user, "password": password, **extra})


def audit_rows(api: ApiHarness, action: str) -> list[Any]:
    return api.run(api.services.audit.query(action=action, limit=1000))


# -- the clients document -------------------------------------------------------------------------


def test_clients_document_with_etag_and_304(api: ApiHarness) -> None:
    http = bridge(api)
    add_client(api, "asa1", mode="challenge", reply_attributes=["Filter-Id=vpn"])

    first = http.get(CLIENTS)
    assert first.status_code == 200, first.text
    body = first.json()
    revision = body["revision"]
    assert first.headers["etag"] == f'"{revision}"'
    assert first.headers["cache-control"] == "no-store"
    assert revision == api.run(api.services.radius_clients.revision())
    assert [c["name"] for c in body["clients"]] == ["asa1"]
    asa = body["clients"][0]
    assert (asa["secret"], asa["mode"], asa["reply_attributes"]) == (
        SECRET,
        "challenge",
        [["Filter-Id", "vpn"]],
    )
    assert body == {
        "revision": revision,
        "clients": api.run(api.services.radius_clients.document()).clients,
    }

    for header in (f'"{revision}"', f'W/"{revision}"', f'"other", "{revision}"', "*"):
        unchanged = http.get(CLIENTS, headers={"If-None-Match": header})
        assert unchanged.status_code == 304, (header, unchanged.text)
        assert unchanged.content == b""
        assert unchanged.headers["etag"] == f'"{revision}"'
    for header in ('"0.stale"', revision, ""):  # unquoted is not an entity tag
        assert http.get(CLIENTS, headers={"If-None-Match": header}).status_code == 200

    # A change made elsewhere (the CLI, another node) shows at the next poll: no caching.
    api.run(api.services.radius_clients.update(ADMIN, "asa1", ClientChanges(mode="otp")))
    changed = http.get(CLIENTS, headers={"If-None-Match": f'"{revision}"'})
    assert changed.status_code == 200
    assert changed.json()["revision"] != revision
    assert changed.headers["etag"] == f'"{changed.json()["revision"]}"'
    assert changed.json()["clients"][0]["mode"] == "otp"
    api.run(api.services.radius_clients.remove(ADMIN, "asa1"))
    empty = http.get(CLIENTS, headers={"If-None-Match": changed.headers["etag"]})
    assert (empty.status_code, empty.json()["clients"]) == (200, [])

    # Full fetches are audited (the secrets left the database); polls answered 304 are not.
    fetches = audit_rows(api, "radius_clients.fetch")
    assert len(fetches) == 6  # first, the three that did not match, changed, empty
    assert {e.actor for e in fetches} == {"gateway:bridge1"}
    assert SECRET not in repr(fetches)


@sqlite_only
def test_an_empty_document_still_has_a_revision(api: ApiHarness) -> None:
    response = bridge(api).get(CLIENTS)
    assert response.status_code == 200
    assert response.json()["clients"] == []
    assert response.json()["revision"].startswith("0.")


# -- scopes ---------------------------------------------------------------------------------------


def test_gateway_tokens_are_forbidden_the_bridge_endpoints(api: ApiHarness) -> None:
    add_client(api)
    password_user(api)
    gateway = api.gateway  # scope gateway
    before = len(api.refusals())
    calls = [
        ("GET", CLIENTS, None),
        ("POST", PASSWORD, {"user": "alice", "password": ALICE_PASSWORD}),
        ("POST", AUDIT, {"action": "radius.exempt_user", "user": "alice"}),
        ("POST", PASSWORD, {"malformed": True}),  # scope is checked before the body
    ]
    for method, path, body in calls:
        response = gateway.request(method, path, json=body)
        problem = assert_problem(response, 403, "forbidden")
        assert "scope bridge" in problem["detail"]
        assert SECRET not in response.text
    refusals = api.refusals()[: len(calls)]
    assert len(api.refusals()) - before == len(calls)
    assert {(e.actor, e.result) for e in refusals} == {("gateway:gateway", "forbidden")}
    assert audit_rows(api, "password.verify") == []
    assert audit_rows(api, "radius.exempt_user") == []
    assert audit_rows(api, "radius_clients.fetch") == []

    plain = api.client()
    for method, path, body in calls:
        assert_problem(plain.request(method, path, json=body), 401, "unauthorized")
    # A bridge token can do everything a gateway token can.
    api.add_user("bob")
    api.device("bob")
    started = bridge(api).post("/gateway/v1/authentications", json={"user": "bob"})
    assert started.status_code == 201, started.text


# -- local passwords ------------------------------------------------------------------------------


def test_password_verify_answers(api: ApiHarness) -> None:
    http = bridge(api)
    password_user(api, "alice")
    api.add_user("nopass")
    password_user(api, "dora")
    api.run(api.services.users.set_disabled(ADMIN, "dora", True))
    password_user(api, "bert")
    api.run(api.services.users.set_blocked(ADMIN, "bert", True, "lost phone"))

    ok = check(http, "ALICE", ALICE_PASSWORD, context={"client_name": "asa1"})
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"result": "accept", "reason": "ok"}
    assert check(http, "alice", ALICE_PASSWORD + " ").json() == {
        "result": "reject",
        "reason": "wrong-password",
    }
    assert check(http, "alice", "").json()["reason"] == "wrong-password"
    assert check(http, "nopass", "anything at all").json() == {
        "result": "reject",
        "reason": "no-password",
    }
    assert_problem(check(http, "nobody", "x"), 404, "unknown-user")
    assert_problem(check(http, "bad name!", "x"), 400, "invalid-name")
    assert_problem(check(http, "dora", ALICE_PASSWORD), 403, "user-disabled")
    blocked = assert_problem(check(http, "bert", ALICE_PASSWORD), 403, "user-blocked")
    assert blocked["detail"] == "lost phone"
    assert_problem(http.post(PASSWORD, json={"user": "alice"}), 400, "invalid-request")
    assert_problem(check(http, "alice", "x" * 1025), 400, "invalid-request")
    assert_problem(check(http, "alice", "x", extra=1), 400, "invalid-request")

    rows = audit_rows(api, "password.verify")
    assert [(e.user_name, e.result, e.detail) for e in reversed(rows)] == [
        ("alice", "accept", "ok asa1"),
        ("alice", "reject", "wrong-password failures=1"),
        ("alice", "reject", "wrong-password failures=2"),
        ("nopass", "reject", "no-password"),
    ]
    assert {e.actor for e in rows} == {"gateway:bridge1"}


def test_password_failures_share_the_code_lockout(api: ApiHarness, clock: FakeClock) -> None:
    http = bridge(api)
    password_user(api, "alice", otp_max_failures=3, otp_lockout_seconds=60)
    seed = api.run(api.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice")).seed
    code = totp.current_code(seed, clock())
    wrong_code = f"{(int(code) + 1) % 1_000_000:06d}"

    # A right password does not reset the count: only a right second factor does.
    assert check(http, "alice", "wrong").json()["reason"] == "wrong-password"
    assert check(http, "alice", ALICE_PASSWORD).json()["result"] == "accept"
    verified = http.post("/gateway/v1/otp/verify", json={"user": "alice", "code": wrong_code})
    assert verified.json()["reason"] == "wrong-code"
    third = check(http, "alice", "wrong again")
    assert third.json() == {"result": "reject", "reason": "wrong-password"}  # locks from now

    locked = assert_problem(check(http, "alice", ALICE_PASSWORD), 429, "otp-locked")
    assert "locked until" in locked["detail"]
    code_locked = http.post("/gateway/v1/otp/verify", json={"user": "alice", "code": code})
    assert_problem(code_locked, 429, "otp-locked")
    results = [e.result for e in audit_rows(api, "password.verify")]
    assert results[0] == "locked"

    clock.advance(60)
    assert check(http, "alice", ALICE_PASSWORD).json()["result"] == "accept"
    assert check(http, "alice", "wrong").json()["reason"] == "wrong-password"
    # A right code resets the count.
    fresh = totp.current_code(seed, clock())
    assert (
        http.post("/gateway/v1/otp/verify", json={"user": "alice", "code": fresh}).json()["result"]
        == "accept"
    )
    for _ in range(2):
        assert check(http, "alice", "wrong").json()["reason"] == "wrong-password"
    assert check(http, "alice", ALICE_PASSWORD).json()["result"] == "accept"


@sqlite_only
def test_passwords_never_reach_the_audit_trail_or_the_log(
    api: ApiHarness, caplog: pytest.LogCaptureFixture
) -> None:
    http = bridge(api)
    password_user(api)
    caplog.set_level(logging.DEBUG)
    typed = ["guess-Number-1", ALICE_PASSWORD, "x" * 1025]
    for password in typed:
        check(http, "alice", password)
    check(http, "nobody", "guess-Number-2")
    everything = repr([astuple(e) for e in api.run(api.services.audit.query())])
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    for password in [*typed, "guess-Number-2"]:
        assert password not in everything
        assert password not in logged
    assert "POST /gateway/v1/password/verify" in logged  # the log was captured at all


# -- the bridge's audit rows ----------------------------------------------------------------------


def test_bridge_audit_endpoint(api: ApiHarness) -> None:
    http = bridge(api, "bridge7")
    for action, user, detail in (
        ("radius.exempt_user", "SVC-Backup", "client=asa1"),
        ("radius.exempt_network", "alice", "client=asa1 calling-station=192.0.2.9"),
        ("radius.unenrolled_allowed", "newbie", ""),
        ("radius.failsafe_accept", "bob", "backend unreachable"),
    ):
        response = http.post(AUDIT, json={"action": action, "user": user, "detail": detail})
        assert response.status_code == 204, response.text
        assert response.content == b""
        rows = audit_rows(api, action)
        assert [(e.actor, e.user_name, e.result, e.detail) for e in rows] == [
            ("gateway:bridge7", user.casefold(), "accept", detail)
        ]
    assert http.post(AUDIT, json={"action": "radius.exempt_user"}).status_code == 204
    for bad in (
        {"action": "user.add", "user": "x"},
        {"action": "radius.exempt_user", "detail": "d" * 1025},
        {"action": "radius.exempt_user", "user": "u" * 129},
        {"action": "radius.exempt_user", "result": "ok"},
        {},
    ):
        assert_problem(http.post(AUDIT, json=bad), 400, "invalid-request")
    assert audit_rows(api, "user.add") == []


# -- the in-memory token of `openmfa run` ---------------------------------------------------------


def test_ephemeral_bridge_token_over_http(api: ApiHarness, clock: FakeClock) -> None:
    tokens = api.server_services.tokens  # the server's own container, as `openmfa run` does
    token = tokens.register_ephemeral("in-process", "bridge")
    http = api.client(headers={"Authorization": f"Bearer {token}"})
    add_client(api)
    assert http.get(CLIENTS).status_code == 200
    assert http.post(AUDIT, json={"action": "radius.failsafe_accept"}).status_code == 204
    assert audit_rows(api, "radius.failsafe_accept")[0].actor == "gateway:in-process"

    # The one-call code check finds the token in memory, not in the database.
    seed = api.run(
        api.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, api.add_user("olga"))
    ).seed
    code = totp.current_code(seed, clock())
    verified = http.post("/gateway/v1/otp/verify", json={"user": "olga", "code": code})
    assert verified.json()["result"] == "accept", verified.text
    assert audit_rows(api, "otp.verify")[0].actor == "gateway:in-process"

    # Retransmissions of one sign-in still start one authentication.
    api.add_user("alice")
    api.device("alice")
    body = {"user": "alice", "method": "push", "idempotency_key": "asa1/nas/0123abcd"}
    first = http.post("/gateway/v1/authentications", json=body)
    again = http.post("/gateway/v1/authentications", json=body)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]

    other = tokens.register_ephemeral("in-process-gw", "gateway")
    gw = api.client(headers={"Authorization": f"Bearer {other}"})
    assert_problem(gw.get(CLIENTS), 403, "forbidden")
    tokens.drop_ephemeral("in-process")
    assert_problem(http.get(CLIENTS), 401, "unauthorized")
    assert_problem(
        http.post("/gateway/v1/otp/verify", json={"user": "olga", "code": code}),
        401,
        "unauthorized",
    )


def test_concurrent_starts_of_the_in_process_bridge_make_one_challenge(api: ApiHarness) -> None:
    """Its token has no row, so the database cannot key retransmissions to it: the server
    must still start one authentication for copies that arrive together."""
    api.add_user("alice")
    phone = api.device("alice")
    token = api.server_services.tokens.register_ephemeral("in-process", "bridge")
    copies = 6
    barrier = threading.Barrier(copies)
    clients = [api.client(headers={"Authorization": f"Bearer {token}"}) for _ in range(copies)]
    results: list[tuple[int, str]] = []

    def start(client: httpx.Client) -> None:
        barrier.wait(timeout=10)
        response = client.post(
            "/gateway/v1/authentications", json={"user": "alice", "idempotency_key": "asa1/k1"}
        )
        results.append((response.status_code, response.json().get("id", response.text)))

    threads = [threading.Thread(target=start, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads)
    assert [status for status, _ in results] == [201] * copies
    assert len({auth_id for _, auth_id in results}) == 1
    assert [c["id"] for c in phone.pending()] == [results[0][1]]
    assert len(audit_rows(api, "auth.start")) == 1


def test_the_bridges_unchanged_client_polls_stay_out_of_the_info_log(api: ApiHarness) -> None:
    """A bridge asks every 5 s whether its client list changed; each 304 wrote an access-log
    line at info, 17,280 a day per bridge. They are debug lines now; a changed list (200) and
    every other request stay at info."""
    http = bridge(api, "quiet-bridge")
    records: list[logging.LogRecord] = []
    three = threading.Event()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if CLIENTS in record.getMessage():
                records.append(record)
                if len(records) == 3:
                    three.set()

    access = logging.getLogger("openmfa.access")
    handler, level = Collect(logging.DEBUG), access.level
    access.addHandler(handler)
    access.setLevel(logging.DEBUG)
    try:
        etag = http.get(CLIENTS).headers["etag"]
        assert http.get(CLIENTS, headers={"If-None-Match": etag}).status_code == 304
        assert http.get(CLIENTS, headers={"Authorization": "Bearer omfa_nope"}).status_code == 401
        assert three.wait(10), [r.getMessage() for r in records]
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    levels = {record.getMessage(): record.levelno for record in records}
    assert levels == {
        f"GET {CLIENTS} 200": logging.INFO,
        f"GET {CLIENTS} 304": logging.DEBUG,
        f"GET {CLIENTS} 401": logging.INFO,
    }
