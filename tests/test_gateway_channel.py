"""The bridges' wait channel (``/gateway/v1/channel``) over a real uvicorn server, spoken
with the ``websockets`` client: refusals, watching, expiry, limits and batched calls."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from backend.api import channel_v1
from backend.domain import totp
from backend.domain.stepup import ADMINISTRATOR
from tests.support.api import ADMIN, ApiHarness

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def bridge_token(api: ApiHarness, name: str = "bridge") -> str:
    return api.run(api.services.tokens.create(ADMIN, name, scope="bridge"))


@contextmanager
def channel(api: ApiHarness, token: str) -> Iterator[ClientConnection]:
    url = api.url.replace("http://", "ws://") + channel_v1.PATH
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        yield ws


def receive(ws: ClientConnection, member: str, count: int = 1, timeout: float = 10) -> list[Any]:
    """The next ``count`` items of frames' ``member`` (``outcomes`` or ``results``)."""
    items: list[Any] = []
    end = time.monotonic() + timeout
    while len(items) < count:
        frame = json.loads(ws.recv(timeout=max(0.01, end - time.monotonic())))
        items.extend(frame.get(member, []))
    return items


def send(ws: ClientConnection, **frame: Any) -> None:
    ws.send(json.dumps(frame))


def test_refused_without_a_bridge_token_and_audited(api: ApiHarness) -> None:
    url = api.url.replace("http://", "ws://") + channel_v1.PATH
    before = len(api.refusals())
    for headers, status in [
        ({}, 401),
        ({"Authorization": "Bearer omfa_" + "x" * 40}, 401),
        ({"Authorization": f"Bearer {api.token}"}, 403),  # gateway scope
    ]:
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers=headers).close()
        response = refused.value.response
        assert response.status_code == status
        problem = json.loads(response.body or b"{}")
        assert problem["status"] == status
        assert problem["type"].endswith("unauthorized" if status == 401 else "forbidden")
    refusals = api.refusals()
    assert len(refusals) - before == 3
    assert all(channel_v1.PATH in entry.detail for entry in refusals[:3])


def test_watch_wakes_when_the_device_answers(api: ApiHarness) -> None:
    api.add_user("alice")
    phone = api.device("alice")
    auth_id = api.start("alice")["id"]
    with channel(api, bridge_token(api)) as ws:
        send(ws, watch=[auth_id])
        # Watching is registered once the server read the state: wait on the bus, not a sleep.
        from tests.support.process import wait_for

        wait_for(lambda: auth_id in api.server_services.bus.held(), 10, "the watch")  # type: ignore[attr-defined]
        phone.answer(auth_id, "approve")
        [outcome] = receive(ws, "outcomes")
    assert outcome["id"] == auth_id
    assert outcome["state"] == "approved"
    assert outcome["answered_at"].endswith("Z")


def test_final_and_unknown_ids_answer_at_once(api: ApiHarness) -> None:
    api.add_user("bob")
    api.device("bob")
    done = api.start("bob")["id"]
    assert api.gateway.post(f"/gateway/v1/authentications/{done}/cancel").status_code == 200
    with channel(api, bridge_token(api)) as ws:
        send(ws, watch=[done, "ch_nosuchchallenge"])
        outcomes = {item["id"]: item for item in receive(ws, "outcomes", 2)}
    assert outcomes[done]["state"] == "cancelled"
    assert outcomes["ch_nosuchchallenge"]["problem"]["status"] == 404
    assert api.server_services.bus.held() == set()  # type: ignore[attr-defined]


def test_expiry_is_settled_by_the_channel_timer(api: ApiHarness) -> None:
    api.add_user("carol")
    api.device("carol")
    auth_id = api.start("carol")["id"]
    with channel(api, bridge_token(api)) as ws:
        send(ws, watch=[auth_id])
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)  # pending: nothing yet
        api.clock.advance(3600)
        [outcome] = receive(ws, "outcomes", timeout=channel_v1.EXPIRY_RECHECK + 5)
    assert outcome == {"id": auth_id, "state": "expired", "answered_at": None}
    assert api.status(auth_id)["state"] == "expired"


@sqlite_only
def test_limits(api: ApiHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channel_v1, "MAX_WATCHED", 2)
    api.add_user("dave")
    api.device("dave")
    ids = [api.start("dave", idempotency_key=f"k{i}")["id"] for i in range(3)]
    token = bridge_token(api)
    with channel(api, token) as ws:
        send(ws, watch=ids)
        [over] = receive(ws, "outcomes")
        assert over["id"] == ids[2]
        assert over["problem"]["status"] == 429
        assert over["problem"]["type"].endswith("too-many-watched")
    with channel(api, token) as ws:
        ws.send(json.dumps({"watch": ["x" * channel_v1.MAX_FRAME]}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == channel_v1.CLOSE_TOO_BIG
    with channel(api, token) as ws:
        ws.send("not json")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == channel_v1.CLOSE_INVALID


def test_batched_calls_answer_like_http(api: ApiHarness) -> None:
    api.add_user("erin")
    seed = api.run(api.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "erin")).seed
    code = totp.current_code(seed, api.clock())
    with channel(api, bridge_token(api)) as ws:
        send(
            ws,
            calls=[
                {"n": 1, "op": "verify_code", "body": {"user": "erin", "code": code}},
                {"n": 2, "op": "verify_code", "body": {"user": "erin", "code": "000000x"}},
                {"n": 3, "op": "nonsense", "body": {}},
                {"n": 4, "op": "verify_password", "body": {"user": "erin", "password": "p"}},
                {"n": 5, "op": "start", "body": {"user": "nobody-here"}},
            ],
        )
        results = {item["n"]: item for item in receive(ws, "results", 5)}
    assert results[1]["status"] == 200
    assert results[1]["body"] == {"result": "accept", "reason": "ok", "user": "erin"}
    assert results[2]["status"] in (200, 400)
    assert results[3]["status"] == 400
    assert results[3]["body"]["type"].endswith("invalid-request")
    assert results[4]["status"] == 200
    assert results[4]["body"]["result"] == "reject"
    http = api.gateway.post("/gateway/v1/authentications", json={"user": "nobody-here"})
    assert results[5]["status"] == http.status_code
    assert results[5]["body"]["type"] == http.json()["type"]


@sqlite_only
@pytest.mark.parametrize("then", ["calls", "watch"])
def test_a_token_revoked_while_the_channel_is_open_ends_it(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    # The upgrade was authenticated once; a stolen bridge token that is revoked must stop
    # working on a channel already open, not only on new connections.
    monkeypatch.setattr(channel_v1, "RECHECK_TOKEN_SECONDS", 0.0)
    api.add_user("frank")
    token = bridge_token(api, "bridge-to-revoke")
    call = {"n": 1, "op": "verify_password", "body": {"user": "frank", "password": "p"}}
    with channel(api, token) as ws:
        send(ws, calls=[call])
        assert receive(ws, "results")[0]["status"] == 200
        api.run(api.services.tokens.revoke(ADMIN, "bridge-to-revoke"))
        before = len(api.refusals())
        if then == "calls":
            send(ws, calls=[{**call, "n": 2}])
        else:
            send(ws, watch=["ch_anyoneelses"])  # watching needs a valid token too
        with pytest.raises(ConnectionClosed) as closed:
            receive(ws, "results" if then == "calls" else "outcomes")
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == channel_v1.CLOSE_UNAUTHORIZED
    assert len(api.refusals()) == before + 1
