"""Finding 10 of issue 13: what the phone signed decides its answer, never an unsigned field.

The app signs ``nonce|serial[|decline[|reason]][|presence_answer]``; the form fields only
say how to rebuild that string. Re-sent with other fields that rebuild the same string, a
signed decline read as an approval (``presence_answer=decline`` and no ``decline``). A
``presence_answer`` is therefore taken only when the challenge offered options and it is one
of them; anything else is refused, audited, and decides nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend.config import Settings
from backend.domain import pipush
from backend.domain.challenge import Answer
from backend.errors import BadRequest
from tests.support.clock import FakeClock
from tests.support.piapp import PiApp, PiLab

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
OK = {"result": {"status": True, "value": True}}
REFUSED_ANSWER = {"status": True, "value": False}


@pytest.fixture
def lab(settings: Settings, clock: FakeClock, tmp_path: Path) -> Iterator[PiLab]:
    with PiLab(settings, clock, tmp_path) as running:
        yield running


def one_request(app: PiApp) -> Any:
    requests = app.poll()
    assert len(requests) == 1, (requests, app.last_error)
    return requests[0]


def refusals(lab: PiLab, user: str) -> list[Any]:
    return [row for row in lab.api.refusals() if row.user_name == user]


@pytest.mark.parametrize(
    ("signed", "reason", "meant"),
    [
        ("decline", None, "fraud"),  # a plain decline ("not me") read as an approval
        ("decline|cancelled", "cancelled", "denied"),  # "cancelled" read as an approval
    ],
)
def test_a_signed_decline_resent_as_a_presence_answer_is_not_an_approval(
    lab: PiLab, signed: str, reason: str | None, meant: str
) -> None:
    app = lab.enrol("nia")
    started = lab.api.start("nia", "push")
    request = one_request(app)
    signature = app.sign(f"{request.nonce}|{request.serial}|{signed}")

    forged = app.answer(request, decline=False, reason=None, presence=signed, signature=signature)

    assert forged.json()["result"] == REFUSED_ANSWER
    assert lab.api.status(started["id"])["state"] == "pending"
    rows = refusals(lab, "nia")
    assert [row.result for row in rows] == ["invalid-request"]
    assert "presence_answer" in rows[0].detail
    # The nonce was not spent: the decline the phone really sent still counts.
    genuine = app.answer(request, decline=True, reason=reason, signature=signature)
    assert genuine.json() == OK
    assert lab.api.status(started["id"])["state"] == meant


@sqlite_only
def test_a_cancel_resent_as_a_plain_decline_with_a_presence_answer_is_refused(
    lab: PiLab,
) -> None:
    """``nonce|serial|decline|cancelled`` (deny) re-sent as a plain decline (fraud, which
    blocks the user) with ``presence_answer=cancelled``."""
    app = lab.enrol("oli")
    started = lab.api.start("oli", "push")
    request = one_request(app)
    signature = app.sign(f"{request.nonce}|{request.serial}|decline|cancelled")

    forged = app.answer(
        request, decline=True, reason=None, presence="cancelled", signature=signature
    )

    assert forged.json()["result"] == REFUSED_ANSWER
    assert lab.api.status(started["id"])["state"] == "pending"
    assert lab.api.fraud_reports() == []
    assert [row.result for row in refusals(lab, "oli")] == ["invalid-request"]


@sqlite_only
def test_a_presence_answer_without_number_matching_is_refused(lab: PiLab) -> None:
    app = lab.enrol("pia")
    started = lab.api.start("pia", "push")
    request = one_request(app)

    response = app.accept(request, "42")

    assert response.json()["result"] == REFUSED_ANSWER
    assert lab.api.status(started["id"])["state"] == "pending"
    assert app.accept(request).json() == OK
    assert lab.api.status(started["id"])["state"] == "approved"


@sqlite_only
def test_a_presence_answer_that_was_not_offered_is_refused(lab: PiLab) -> None:
    app = lab.enrol("quinn")
    lab.api.set_policy("number_matching", True, user="quinn")
    started = lab.api.start("quinn", "push")
    request = one_request(app)
    assert request.options is not None
    never_offered = next(str(n) for n in range(10, 100) if str(n) not in request.options)

    response = app.accept(request, never_offered)

    assert response.json()["result"] == REFUSED_ANSWER
    assert lab.api.status(started["id"])["state"] == "pending"
    assert app.accept(request, str(started["number"])).json() == OK
    assert lab.api.status(started["id"])["state"] == "approved"


@sqlite_only
def test_a_decline_with_an_offered_choice_still_declines(lab: PiLab) -> None:
    """The app's own vector ``N|S|decline|cancelled|A``: the choice does not turn it round."""
    app = lab.enrol("rex")
    lab.api.set_policy("number_matching", True, user="rex")
    started = lab.api.start("rex", "push")
    request = one_request(app)
    assert request.options is not None

    response = app.answer(request, decline=True, reason="cancelled", presence=request.options[0])

    assert response.json() == OK
    assert lab.api.status(started["id"])["state"] == "denied"


# -- the reading itself (pure) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decline", "reason", "presence", "options", "meaning"),
    [
        (False, None, None, [], (Answer.APPROVE, None)),
        (False, None, "42", ["17", "42", "93"], (Answer.APPROVE, "42")),
        (True, None, None, [], (Answer.FRAUD, None)),
        (True, "cancelled", None, [], (Answer.DENY, None)),
        (True, "unknown_trigger", None, [], (Answer.FRAUD, None)),
        (True, "cancelled", "17", ["17", "42", "93"], (Answer.DENY, "17")),
    ],
)
def test_read_answer_takes_what_the_app_sends(
    decline: bool,
    reason: str | None,
    presence: str | None,
    options: list[str],
    meaning: tuple[Answer, str | None],
) -> None:
    assert pipush.read_answer("N", "S", decline, reason, presence, options) == meaning


@pytest.mark.parametrize(
    ("decline", "reason", "presence", "options"),
    [
        (False, None, "decline", []),
        (False, None, "decline", ["17", "42", "93"]),
        (True, None, "cancelled", []),
        (False, None, "42", []),
        (False, None, "11", ["17", "42", "93"]),
        (False, None, "", ["17", "42", "93"]),
        (False, None, "17|42", ["17", "42", "93"]),
    ],
)
def test_read_answer_refuses_a_presence_answer_that_was_not_offered(
    decline: bool, reason: str | None, presence: str, options: list[str]
) -> None:
    with pytest.raises(BadRequest, match="presence_answer"):
        pipush.read_answer("N", "S", decline, reason, presence, options)
