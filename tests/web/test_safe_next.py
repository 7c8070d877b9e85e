"""``safe_next``: where a sign-in may send the browser afterwards (issue 13, finding 14b).

The browser resolves dot segments (also percent-encoded ones) before it asks for the page, so
``/portal/../admin/`` lands in the admin console although it starts with ``/portal/``.
"""

from __future__ import annotations

import pytest

from tests.support.web import WebHarness, sign_in
from webportal.auth import safe_next

ESCAPES_THE_AREA = [
    "/portal/../admin/",
    "/portal/../admin/users",
    "/portal/./../admin/",
    "/portal/devices/../../admin/",
    "/portal/..",
    "/portal/.",
    "/portal/%2e%2e/admin/",
    "/portal/%2E%2E/admin/",
    "/portal/.%2e/admin/",
    "/portal/%2e./admin/",
    "/portal/..%2fadmin/",
    "/portal/..%2Fadmin%2F",
    "/portal/%2e%2e%2fadmin%2f",
    "/portal/%2e%2e%5cadmin",
    "/portal/%252e%252e/admin/",  # decoded twice by some proxy in between
    "/portal/%2f%2fevil.example",
    "/portal/%5c%5cevil.example",
    "/portal/%0d%0aSet-Cookie:x=1",
    "/portal/%00",
    "/portal/devices/%2e%2e/%2e%2e/admin/",
    "/portal/..;/admin/",
    "/portal/devices?x=1#/../../admin/",
]

STAYS = [
    ("/portal/", "/portal/"),
    ("/portal/devices", "/portal/devices"),
    ("/portal/devices/", "/portal/devices/"),
    ("/portal/sign-ins?page=2", "/portal/sign-ins?page=2"),
    ("/portal/devices?next=/portal/../admin/", "/portal/devices?next=/portal/../admin/"),
    ("/portal/a.b/c..d", "/portal/a.b/c..d"),
]


@pytest.mark.parametrize("value", ESCAPES_THE_AREA)
def test_a_next_that_leaves_the_area_goes_home(value: str) -> None:
    assert safe_next(value, "portal") == "/portal/"


@pytest.mark.parametrize("value", [v.replace("/portal/", "/admin/", 1) for v in ESCAPES_THE_AREA])
def test_the_same_in_the_admin_console(value: str) -> None:
    assert safe_next(value, "admin") == "/admin/"


@pytest.mark.parametrize(("value", "expected"), STAYS)
def test_a_next_inside_the_area_is_kept(value: str, expected: str) -> None:
    assert safe_next(value, "portal") == expected


def test_a_sign_in_with_a_dotted_next_lands_in_the_portal(web: WebHarness) -> None:
    web.add_user("alice")
    browser = web.browser()
    response = sign_in(browser, "alice", next_path="/portal/%2e%2e/admin/")
    assert response.status_code == 303
    assert response.headers["location"] == "/portal/"
