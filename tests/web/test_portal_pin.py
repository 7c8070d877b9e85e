"""The approval PIN: the pure rule (backend.domain.policy.pin_problem) and the portal page
(set; change with the current PIN or the password; lockouts; CSRF)."""

from __future__ import annotations

import httpx
import pytest

from backend.domain import totp
from backend.domain.policy import pin_problem
from backend.domain.stepup import ADMINISTRATOR
from tests.support.api import ADMIN
from tests.support.web import PASSWORD, WebHarness, csrf_from, post_form, sign_in, step_up

# -- the rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pin",
    [
        "0000",
        "1111",
        "1234",
        "123456",
        "4321",
        "7890",
        "8901",
        "9012",
        "2109",
        "1212",
        "5656",
        "121212",
        "123123",
        "909090",
        "2580",
        "6969",
        "0123456789",
    ],
)
def test_trivial_pins_are_refused(pin: str) -> None:
    assert pin_problem(pin, 4) == "that PIN is too easy to guess"


@pytest.mark.parametrize("pin", ["4711", "8403", "13579", "97531", "735082", "4711" * 4, "1357"])
def test_good_pins_pass(pin: str) -> None:
    assert pin_problem(pin, 4) is None


def test_length_and_digits() -> None:
    assert pin_problem("471", 4) == "a PIN has at least 4 digits"
    assert pin_problem("47113", 6) == "a PIN has at least 6 digits"
    assert pin_problem("4711" * 4 + "3", 4) == "a PIN has at most 16 digits"
    assert pin_problem("47a1", 4) == "a PIN is made of digits only"
    assert pin_problem("٤٧١١", 4) == "a PIN is made of digits only"


# -- the page -----------------------------------------------------------------------------------


def signed_in(web: WebHarness, name: str = "alice", **policy: object) -> httpx.Client:
    web.add_user(name, **policy)
    web.allow_enrolment(name)  # no factor yet: an administrator lets them enrol one
    browser = web.browser()
    assert sign_in(browser, name).status_code == 303
    return browser


def set_pin(
    browser: httpx.Client, pin: str, confirm: str | None = None, **extra: str
) -> httpx.Response:
    data = {"pin": pin, "confirm": pin if confirm is None else confirm, **extra}
    return post_form(browser, "/portal/pin", data)


def pin_ok(web: WebHarness, pin: str) -> bool:
    """Whether ``pin`` is the user's PIN (checked by the same service the app's answers use)."""
    user = web.user("alice")
    ok, _ = web.run(web.services.hasher.verify(user.pin_hash or "", pin))
    return ok


def test_set_the_first_pin(web: WebHarness) -> None:
    browser = signed_in(web, require_pin="true", pin_min_length="6")
    page = browser.get("/portal/pin").text
    assert "Set your PIN" in page
    assert "6 to 16 digits" in page
    assert "Current PIN" not in page
    for pin, confirm, message in (
        ("1234", None, "A PIN has at least 6 digits."),
        ("123456", None, "That PIN is too easy to guess."),
        ("121212", None, "That PIN is too easy to guess."),
        ("735082", "735083", "The two PINs are not the same."),
        ("73508x", None, "A PIN is made of digits only."),
    ):
        refused = set_pin(browser, pin, confirm)
        assert refused.status_code == 400, pin
        assert message in refused.text, pin
    assert not web.user("alice").has_pin
    done = set_pin(browser, "735082")
    assert done.status_code == 303
    assert "Your PIN is set." in browser.get("/portal/pin").text
    assert pin_ok(web, "735082")
    assert web.audit("user.set_pin", "alice")[0].actor == "portal:alice"


def test_changing_needs_a_fresh_step_up_and_never_takes_the_password(web: WebHarness) -> None:
    browser = signed_in(web)
    assert set_pin(browser, "4711").status_code == 303  # no factor yet: inside the grant
    oath = web.run(web.services.activation.enrol_oath(ADMIN, ADMINISTRATOR, "alice"))
    # Now alice has a factor in use: the page sends her to the step-up, a POST is refused.
    page = browser.get("/portal/pin")
    assert page.status_code == 303
    assert page.headers["location"] == "/portal/step-up?next=%2Fportal%2Fpin"
    token = csrf_from(browser.get("/portal/").text)
    for extra in ({}, {"password": PASSWORD}, {"current_pin": "4711"}):
        refused = browser.post(
            "/portal/pin", data={"csrf_token": token, "pin": "8403", "confirm": "8403", **extra}
        )
        assert refused.status_code == 403
    assert pin_ok(web, "4711")
    assert [r.result for r in web.audit("factor.refuse", "alice")] == ["step-up-required"] * 3

    stepped = step_up(browser, totp.current_code(oath.seed, web.clock.now), "/portal/pin")
    assert stepped.status_code == 303
    assert stepped.headers["location"] == "/portal/pin"
    assert "Change your PIN" in browser.get("/portal/pin").text
    assert set_pin(browser, "8403").status_code == 303
    assert pin_ok(web, "8403")
    assert "Your PIN is changed." in browser.get("/portal/pin").text
    # The step-up lasts step_up_minutes (5), then it is needed again.
    web.clock.advance(5 * 60)
    late = browser.post("/portal/pin", data={"csrf_token": token, "pin": "2791", "confirm": "2791"})
    assert late.status_code == 403
    assert pin_ok(web, "8403")
    assert len(web.audit("user.set_pin", "alice")) == 2


def test_the_pin_form_needs_the_csrf_token(web: WebHarness) -> None:
    browser = signed_in(web)
    response = browser.post("/portal/pin", data={"pin": "4711", "confirm": "4711"})
    assert response.status_code == 403
    assert not web.user("alice").has_pin
    assert [r.result for r in web.refusals()] == ["csrf-failed"]
