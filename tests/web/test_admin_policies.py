"""Admin console, global policies: every key shown, changes stored and audited, validation
errors beside the field with nothing stored, reset to the default, CSRF and access control."""

from __future__ import annotations

import re

import httpx

from backend.domain import policy as policy_rules
from tests.support.web import WebHarness, post_form, sign_in


def stored(web: WebHarness) -> dict[str, tuple[str, str]]:
    return {p.key: (p.value, p.source) for p in web.run(web.services.policies.show())}


def save(browser: httpx.Client, **values: str) -> httpx.Response:
    return post_form(browser, "/admin/policies", {f"policy_{k}": v for k, v in values.items()})


def test_every_policy_key_is_on_the_page(web: WebHarness) -> None:
    page = web.admin_browser("root").get("/admin/policies")
    assert page.status_code == 200
    names = set(re.findall(r'name="policy_([a-z_]+)"', page.text))
    assert names == set(policy_rules.KEYS)
    # Booleans and choices are lists; the default is named in the empty choice.
    assert '<option value="" selected>Default (false)</option>' in page.text
    assert '<option value="approve">approve</option>' in page.text
    assert 'placeholder="default (300)"' in page.text
    assert "Push-fatigue guard" in page.text
    assert "style=" not in page.text


def test_change_policies_and_reset_one_to_its_default(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    response = save(
        browser,
        number_matching="true",
        otp_max_failures="7",
        number_matching_fallback="approve",
        push_limit=" 0 ",
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/policies"
    values = stored(web)
    assert values["number_matching"] == ("true", "global")
    assert values["otp_max_failures"] == ("7", "global")
    assert values["number_matching_fallback"] == ("approve", "global")
    assert values["push_limit"] == ("0", "global")
    assert values["require_pin"] == ("false", "default")  # left empty: not stored
    rows = web.audit("policy.set")
    assert len(rows) == 4
    assert {r.actor for r in rows} == {"admin:root"}
    page = browser.get("/admin/policies").text
    assert "Global policy changed:" in page
    assert 'name="policy_otp_max_failures" type="text" inputmode="numeric" value="7"' in page

    # Saving the same again changes nothing; emptying a field returns it to the default.
    again = save(
        browser,
        number_matching="true",
        otp_max_failures="7",
        number_matching_fallback="approve",
        push_limit="0",
    )
    assert again.status_code == 303
    assert "Nothing changed." in browser.get("/admin/policies").text
    assert len(web.audit("policy.set")) == 4
    save(browser, number_matching="true", number_matching_fallback="approve", push_limit="0")
    assert stored(web)["otp_max_failures"] == ("5", "default")
    assert web.audit("policy.unset")[0].detail == "global otp_max_failures"


def test_invalid_values_are_shown_beside_their_fields_and_nothing_is_stored(
    web: WebHarness,
) -> None:
    browser = web.admin_browser("root")
    response = save(
        browser,
        require_pin="maybe",
        otp_lockout_seconds="5",
        pin_min_length="6",
        number_matching_fallback="sometimes",
    )
    assert response.status_code == 400
    html = response.text
    assert "Some values are not valid" in html
    for key, message in (
        ("require_pin", "expected true or false"),
        ("otp_lockout_seconds", "expected a whole number from 10 to 86400"),
        ("number_matching_fallback", "expected one of refuse, approve"),
    ):
        error = re.search(rf'id="p-global-{key}-error">([^<]+)<', html)
        assert error is not None, key
        assert message in error.group(1), key
        assert re.search(rf'id="p-global-{key}"[^>]*aria-invalid="true"', html), key
    assert 'id="p-global-pin_min_length-error"' not in html
    assert 'value="6"' in html
    assert 'value="5"' in html
    assert stored(web)["pin_min_length"] == ("4", "default")  # all or nothing
    assert web.audit("policy.set") == []


def test_policy_form_needs_csrf_and_an_admin(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    assert browser.post("/admin/policies", data={"policy_require_pin": "true"}).status_code == 403
    assert stored(web)["require_pin"] == ("false", "default")
    web.add_user("alice")
    portal = web.browser()
    assert sign_in(portal, "alice").status_code == 303
    forged = web.browser(cookies={"omfa_admin": portal.cookies.get("omfa_portal") or ""})
    assert forged.get("/admin/policies").status_code == 303
    assert web.browser().get("/admin/policies").headers["location"] == (
        "/admin/sign-in?next=%2Fadmin%2Fpolicies"
    )
