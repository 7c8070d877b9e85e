"""The bridge's gateway-API client against fake backends (``httpx.MockTransport``).

What is checked here is the mapping the failmode depends on: which answers are a verdict on
the user (Refused / a rejected code) and which are an outage (Unavailable), and that no call
outlives its deadline whatever the backend does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import httpx
import pytest

from radius_bridge.backend_client import BackendClient, BackendError, CredentialRefused
from radius_bridge.model import (
    Audit,
    CancelAuthentication,
    Checked,
    Done,
    Outcome,
    Refused,
    StartAuthentication,
    Started,
    SubmitCode,
    Unavailable,
    VerifyCode,
    VerifyPassword,
    WaitOutcome,
)

pytestmark = pytest.mark.anyio

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]
PROBLEM = "https://openmfa.org/problems/"


def problem(status: int, kind: str, detail: str = "no") -> httpx.Response:
    return httpx.Response(
        status,
        json={"type": PROBLEM + kind, "title": kind, "status": status, "detail": detail},
        headers={"content-type": "application/problem+json"},
    )


def client(handler: Handler, **kwargs: float) -> BackendClient:
    return BackendClient(
        "http://backend.test",
        "omfa_test-token",
        transport=httpx.MockTransport(handler),
        **kwargs,  # type: ignore[arg-type]
    )


def deadline(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


START = StartAuthentication("alice", "push", "asa1/nas/00", "asa1", "10.0.0.1", "nas")


async def test_start_sends_the_contract_body_and_token() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            201, json={"id": "ch_1", "method": "push", "state": "pending", "number": 42}
        )

    backend = client(handler)
    result = await backend.perform(START, deadline(5))
    await backend.aclose()
    assert result == Started("ch_1", "push", "pending", 42)
    (request,) = seen
    assert request.url.path == "/gateway/v1/authentications"
    assert request.headers["authorization"] == "Bearer omfa_test-token"
    assert json.loads(request.content) == {
        "user": "alice",
        "method": "push",
        "idempotency_key": "asa1/nas/00",
        "context": {"client_name": "asa1", "client_ip": "10.0.0.1", "nas_identifier": "nas"},
        "number_matching": None,
        "can_show_number": True,
    }


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (403, "user-blocked"),
        (403, "user-disabled"),
        (404, "unknown-user"),
        (409, "user-not-enrolled"),
        (429, "otp-locked"),
        (429, "push-limited"),
        (409, "number-matching-unavailable"),
    ],
)
async def test_user_state_problems_are_refusals(status: int, kind: str) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return problem(status, kind, "nope")

    backend = client(handler)
    result = await backend.perform(START, deadline(5))
    await backend.aclose()
    assert result == Refused(kind, "nope")  # type: ignore[arg-type]


async def test_a_refusal_this_bridge_does_not_know_is_still_a_refusal() -> None:
    # A newer backend may refuse for a reason this bridge has never heard of: that must be a
    # reject (never the failmode, which could accept on the primary factor alone).
    async def handler(request: httpx.Request) -> httpx.Response:
        return problem(422, "some-new-reason", "nope")

    backend = client(handler)
    result = await backend.perform(START, deadline(5))
    await backend.aclose()
    assert result == Refused("refused", "some-new-reason: nope")


@pytest.mark.parametrize(
    "respond",
    [
        lambda: problem(503, "database-unavailable"),
        lambda: httpx.Response(502, text="bad gateway"),
        lambda: httpx.Response(200, text="<html>not json</html>"),
    ],
)
async def test_outages_are_unavailable(
    respond: Callable[[], httpx.Response],
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return respond()

    backend = client(handler)
    for effect in (START, VerifyCode("alice", "123456"), SubmitCode("ch_1", "123456")):
        assert isinstance(await backend.perform(effect, deadline(5)), Unavailable)
    await backend.aclose()


@pytest.mark.parametrize(
    "respond",
    [
        lambda: problem(401, "unauthorized"),  # a revoked bridge token
        lambda: httpx.Response(401, text="no"),  # whatever the body
        lambda: problem(403, "forbidden"),  # a token of scope gateway
    ],
)
async def test_a_refused_bridge_token_is_never_unavailable(
    respond: Callable[[], httpx.Response],
) -> None:
    """Issue 13 finding 15: a 401/403 was taken as "backend down", so failmode safe
    accepted everyone once the bridge's token was revoked."""
    refused: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        return respond()

    backend = BackendClient(
        "http://backend.test",
        "omfa_test-token",
        transport=httpx.MockTransport(handler),
        on_credential_refused=refused.append,
    )
    effects = (
        START,
        VerifyCode("alice", "123456"),
        SubmitCode("ch_1", "123456"),
        VerifyPassword("alice", "pw"),
        WaitOutcome("ch_1", 1.0),
        CancelAuthentication("ch_1"),
        Audit("radius.failsafe_accept", "alice", "d"),
    )
    for effect in effects:
        result = await backend.perform(effect, deadline(5))
        assert isinstance(result, Refused), (effect, result)
        assert result.kind == "bridge-unauthorized"
    assert len(refused) == len(effects)
    with pytest.raises(CredentialRefused, match="refused this bridge's token"):
        await backend.fetch_clients(None)
    with pytest.raises(CredentialRefused):
        await backend.fetch_clients("r1")
    await backend.aclose()


async def test_bad_input_from_the_user_is_a_rejected_code_never_an_outage() -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return problem(400, "invalid-request", "code: too long")

    backend = client(handler)
    # Too long for the API: refused without a call.
    assert await backend.perform(VerifyCode("alice", "1" * 17), deadline(5)) == Checked(
        False, "malformed-code"
    )
    assert calls == 0
    # The backend refusing the input is a wrong code, not Unavailable (failmode safe would
    # otherwise accept it).
    assert await backend.perform(VerifyCode("alice", "12a456"), deadline(5)) == Checked(
        False, "invalid-request"
    )
    assert await backend.perform(SubmitCode("ch_1", "12a456"), deadline(5)) == Checked(
        False, "invalid-request"
    )
    start = await backend.perform(START, deadline(5))
    assert isinstance(start, Refused)
    await backend.aclose()


async def test_code_and_password_results() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path == "/gateway/v1/otp/verify":
            ok = body["code"] == "123456"
            return httpx.Response(
                200,
                json={"result": "accept" if ok else "reject", "reason": "ok" if ok else "wrong"},
            )
        if request.url.path == "/gateway/v1/password/verify":
            ok = body["password"] == "pw"
            return httpx.Response(
                200,
                json={
                    "result": "accept" if ok else "reject",
                    "reason": "ok" if ok else "wrong-password",
                },
            )
        return problem(409, "challenge-closed")

    backend = client(handler)
    assert await backend.perform(VerifyCode("a", "123456"), deadline(5)) == Checked(True, "ok")
    assert await backend.perform(VerifyCode("a", "654321"), deadline(5)) == Checked(False, "wrong")
    assert await backend.perform(VerifyPassword("a", "pw"), deadline(5)) == Checked(True, "ok")
    assert await backend.perform(VerifyPassword("a", "x"), deadline(5)) == Checked(
        False, "wrong-password"
    )
    assert await backend.perform(SubmitCode("ch_1", "123456"), deadline(5)) == Refused(
        "challenge-closed", "no"
    )
    await backend.aclose()


async def test_a_backend_that_never_answers_cannot_hold_a_call_past_its_deadline() -> None:
    never = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        await never.wait()  # a hung backend (accepts, never answers)
        raise AssertionError("unreachable")

    backend = client(handler, http_timeout=30.0)
    loop = asyncio.get_running_loop()
    for effect in (
        START,
        VerifyCode("alice", "123456"),
        WaitOutcome("ch_1", 30.0),
        CancelAuthentication("ch_1"),
    ):
        began = loop.time()
        result = await backend.perform(effect, deadline(0.3))
        took = loop.time() - began
        assert isinstance(result, Unavailable), effect
        assert took < 1.0, (effect, took)
    await backend.aclose()


async def test_long_poll_runs_in_slices_and_returns_the_final_state() -> None:
    waits: list[float] = []
    polls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal polls
        polls += 1
        wait = float(request.url.params["wait"])
        waits.append(wait)
        if polls < 3:
            await asyncio.sleep(wait)  # the backend holds the poll for the whole wait
            return httpx.Response(200, json={"id": "ch_1", "state": "pending"})
        return httpx.Response(200, json={"id": "ch_1", "state": "approved"})

    backend = client(handler, long_poll_seconds=0.2)
    result = await backend.perform(WaitOutcome("ch_1", 30.0), deadline(30))
    await backend.aclose()
    assert result == Outcome("approved")
    assert waits == [0.2, 0.2, 0.2]  # never more than the slice


async def test_a_push_nobody_answers_is_pending_not_an_outage() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(float(request.url.params["wait"]))
        return httpx.Response(200, json={"id": "ch_1", "state": "pending"})

    backend = client(handler, long_poll_seconds=25.0)
    loop = asyncio.get_running_loop()
    began = loop.time()
    # The wait runs to its end: the result is "pending" (the flow rejects on timeout),
    # never Unavailable, which could turn into a fail-safe accept.
    result = await backend.perform(WaitOutcome("ch_1", 1.6), deadline(30))
    took = loop.time() - began
    await backend.aclose()
    assert result == Outcome("pending")
    assert 1.6 <= took < 2.0  # the whole wait, in one slice, and no more


async def test_a_long_poll_survives_a_backend_restart() -> None:
    down = 2

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal down
        if down:
            down -= 1
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json={"id": "ch_1", "state": "approved"})

    backend = client(handler)
    result = await backend.perform(WaitOutcome("ch_1", 10.0), deadline(10))
    await backend.aclose()
    assert result == Outcome("approved")
    assert down == 0


async def test_a_backend_that_answers_late_is_still_pending_not_an_outage() -> None:
    polls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal polls
        polls += 1
        if polls == 1:
            return httpx.Response(200, json={"id": "ch_1", "state": "pending"})
        await asyncio.Event().wait()  # the second poll never comes back
        raise AssertionError("unreachable")

    backend = client(handler, long_poll_seconds=0.2)
    result = await backend.perform(WaitOutcome("ch_1", 0.5), deadline(1.0))
    await backend.aclose()
    assert result == Outcome("pending")


async def test_a_backend_down_for_the_whole_wait_is_unavailable() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    backend = client(handler)
    assert isinstance(await backend.perform(WaitOutcome("ch_1", 0.5), deadline(0.5)), Unavailable)
    assert isinstance(await backend.perform(START, deadline(0.5)), Unavailable)
    await backend.aclose()


async def test_a_vanished_authentication_is_expired() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return problem(404, "not-found")

    backend = client(handler)
    assert await backend.perform(WaitOutcome("ch_x", 5.0), deadline(5)) == Outcome("expired")
    assert await backend.perform(CancelAuthentication("ch_x"), deadline(5)) == Done()
    await backend.aclose()


async def test_audit_posts_the_action() -> None:
    bodies: list[dict[str, str]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(204)

    backend = client(handler)
    effect = Audit("radius.exempt_user", "svc-backup", "client asa1")
    assert await backend.perform(effect, deadline(5)) == Done()
    await backend.aclose()
    assert bodies == [
        {"action": "radius.exempt_user", "user": "svc-backup", "detail": "client asa1"}
    ]


async def test_clients_document_uses_the_etag() -> None:
    seen: list[str | None] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("if-none-match"))
        if request.headers.get("if-none-match") == '"r1"':
            return httpx.Response(304, headers={"etag": '"r1"'})
        return httpx.Response(200, json={"revision": "r1", "clients": []}, headers={"etag": '"r1"'})

    backend = client(handler)
    document = await backend.fetch_clients(None)
    assert document is not None
    assert (document.revision, document.data["clients"]) == ("r1", [])
    assert await backend.fetch_clients("r1") is None
    assert seen == [None, '"r1"']
    await backend.aclose()


async def test_clients_document_errors_raise() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return problem(404, "not-found", "no such route")

    backend = client(handler)
    with pytest.raises(BackendError, match="404 not-found"):
        await backend.fetch_clients(None)
    await backend.aclose()


async def test_a_cut_long_poll_is_unavailable_after_the_grace_not_at_the_end_of_the_wait() -> None:
    """Issue 18: a backend killed under a held push is noticed at once, retried for the
    grace, then the failmode answers -- not when the push's own time runs out."""
    polls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal polls
        polls += 1
        if polls == 1:
            raise httpx.RemoteProtocolError("server disconnected without a response")
        raise httpx.ConnectError("connection refused")

    grace = 0.6
    backend = client(handler, cut_grace=grace)
    loop = asyncio.get_running_loop()
    began = loop.time()
    result = await backend.perform(WaitOutcome("ch_1", 30.0), deadline(30))
    took = loop.time() - began
    await backend.aclose()
    assert isinstance(result, Unavailable)
    assert grace <= took < grace + 0.5
    assert polls >= 4  # re-attached several times within the grace


async def test_a_proxy_answering_bad_gateway_is_a_cut_and_a_restart_within_the_grace_passes() -> (
    None
):
    answers = [problem(502, "bad-gateway"), problem(503, "unavailable")]

    async def handler(request: httpx.Request) -> httpx.Response:
        if answers:
            return answers.pop(0)
        return httpx.Response(200, json={"id": "ch_1", "state": "approved"})

    backend = client(handler, cut_grace=2.0)
    result = await backend.perform(WaitOutcome("ch_1", 30.0), deadline(30))
    await backend.aclose()
    assert result == Outcome("approved")


async def test_each_run_of_cuts_gets_a_fresh_grace() -> None:
    """Cut, back, cut again: the second outage is not charged the first one's time."""
    script = ["cut", "cut", "pending", "cut", "cut", "approved"]
    loop = asyncio.get_running_loop()

    async def handler(request: httpx.Request) -> httpx.Response:
        step = script.pop(0)
        if step == "cut":
            await asyncio.sleep(0.15)  # each failed attempt takes a while
            raise httpx.ReadError("connection reset by peer")
        if step == "pending":
            return httpx.Response(200, json={"id": "ch_1", "state": "pending"})
        return httpx.Response(200, json={"id": "ch_1", "state": "approved"})

    backend = client(handler, cut_grace=0.5, long_poll_seconds=0.1)
    began = loop.time()
    result = await backend.perform(WaitOutcome("ch_1", 30.0), deadline(30))
    await backend.aclose()
    assert result == Outcome("approved")
    assert script == []
    assert loop.time() - began > 0.5  # more than one grace in all, yet no give-up


# -- several backends (issue 18): which calls move on, and when -----------------------------------


def two_backends(handler: Handler) -> BackendClient:
    """Backends ``a.test`` (preferred) and ``b.test`` on one fake transport; ``handler``
    tells them apart by ``request.url.host``."""
    return BackendClient(
        ["http://a.test", "http://b.test"],
        "omfa_test-token",
        transport=httpx.MockTransport(handler),
    )


def fails_on_a(failure: Exception | httpx.Response, answer: httpx.Response) -> Handler:
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a.test":
            if isinstance(failure, Exception):
                raise failure
            return failure
        return answer

    return handler


STARTED = httpx.Response(201, json={"id": "ch_1", "method": "push", "state": "pending"})
ACCEPTED = httpx.Response(200, json={"result": "accept", "reason": "ok"})


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("no answer to SYN"),
        httpx.ReadError("reset after the request"),
        httpx.RemoteProtocolError("closed after the request"),
        problem(503, "database-unavailable"),
        httpx.Response(502, text="bad gateway"),
    ],
    ids=["refused", "connect-timeout", "reset", "closed", "503", "502"],
)
async def test_a_start_moves_on_to_the_next_backend_whatever_failed(
    failure: Exception | httpx.Response,
) -> None:
    """Start is idempotent by its key: even after the request was sent, B may be asked."""
    backend = two_backends(fails_on_a(failure, STARTED))
    assert await backend.perform(START, deadline(5)) == Started("ch_1", "push", "pending", None)
    a, b = backend.backends.backends
    if isinstance(failure, httpx.ReadError | httpx.RemoteProtocolError):
        # Failed after sending: maybe a keep-alive race, not a death; nothing is marked.
        assert (a.up, b.up) == (True, True)
    else:
        assert (a.up, b.up) == (False, True)
        assert backend.backends.ordered() == [b, a]  # A is now tried last
    await backend.aclose()


def recording(handler: Handler, seen: list[str]) -> Handler:
    """``handler``, noting in ``seen`` the host of every request it gets."""

    async def noting(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        return await handler(request)

    return noting


async def test_a_code_check_moves_on_only_when_nothing_was_sent() -> None:
    # Refused at connect: the code never reached A, so B checks it.
    backend = two_backends(fails_on_a(httpx.ConnectError("refused"), ACCEPTED))
    assert await backend.perform(VerifyCode("alice", "123456"), deadline(5)) == Checked(True, "ok")
    await backend.aclose()
    # A 503 (or a reset after sending, below): A may have spent the code; sending it to B
    # could turn an accept into "replayed". The failmode decides instead.
    effects = (VerifyCode("alice", "123456"), SubmitCode("ch_1", "123456"))
    for effect in effects:
        seen_reset: list[str] = []
        backend = two_backends(
            recording(fails_on_a(httpx.ReadError("reset"), ACCEPTED), seen_reset)
        )
        assert isinstance(await backend.perform(effect, deadline(5)), Unavailable)
        assert seen_reset == ["a.test"]
        await backend.aclose()
    for failure in (problem(503, "database-unavailable"),):
        for effect in effects:
            seen: list[str] = []
            backend = two_backends(recording(fails_on_a(failure, ACCEPTED), seen))
            assert isinstance(await backend.perform(effect, deadline(5)), Unavailable)
            assert seen == ["a.test"]
            # ... and A is marked down: the next call goes to B first.
            assert await backend.perform(effect, deadline(5)) == Checked(True, "ok")
            assert seen == ["a.test", "b.test"]
            await backend.aclose()


async def test_a_slow_backend_is_not_marked_down_by_a_timeout() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    backend = two_backends(handler)
    assert isinstance(await backend.perform(VerifyCode("alice", "1"), deadline(5)), Unavailable)
    assert all(b.up for b in backend.backends.backends)  # the health check decides
    await backend.aclose()


async def test_a_cut_long_poll_re_attaches_on_the_next_backend() -> None:
    polls: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        polls.append(request.url.host)
        if request.url.host == "a.test":
            if polls.count("a.test") == 1:
                raise httpx.RemoteProtocolError("A died under the poll")
            raise httpx.ConnectError("A is gone")
        return httpx.Response(200, json={"state": "approved"})

    backend = two_backends(handler)
    result = await backend.perform(WaitOutcome("ch_1", 30), deadline(40))
    assert result == Outcome("approved")
    assert polls == ["a.test", "a.test", "b.test"]  # cut, refused (marked down), B
    await backend.aclose()


async def test_every_backend_down_is_still_tried_then_unavailable() -> None:
    tried: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        tried.append(request.url.host)
        raise httpx.ConnectError("refused")

    backend = two_backends(handler)
    assert isinstance(await backend.perform(VerifyCode("alice", "1"), deadline(5)), Unavailable)
    assert isinstance(await backend.perform(VerifyCode("alice", "1"), deadline(5)), Unavailable)
    assert tried == ["a.test", "b.test", "a.test", "b.test"]  # down marks are hints only
    await backend.aclose()
