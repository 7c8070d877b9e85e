"""The web foundation: routes, security headers, HTML errors, CSRF, escaping."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount

from backend.config import Settings
from tests.support.api import assert_problem
from tests.support.clock import FakeClock
from tests.support.web import (
    PASSWORD,
    WebHarness,
    csrf_from,
    sign_in,
    sqlite_database,
    web_harness,
)
from webportal import admin, portal
from webportal.app import routes as web_routes
from webportal.routing import is_page, page


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: nothing here depends on the database kind."""
    return sqlite_database(tmp_path)


async def _explode(request: Request) -> Response:
    raise RuntimeError("a bug in a page, with a secret-looking detail")


@pytest.fixture
def web(
    settings: Settings, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WebHarness]:
    # A page module appends its routes to the area's list, as phase-2 pages do.
    monkeypatch.setattr(portal, "routes", [*portal.routes, page("/test/explode", _explode)])
    yield from web_harness(settings, clock)


def test_every_page_route_checks_csrf() -> None:
    mounts = [r for r in web_routes() if isinstance(r, Mount) and r.path in ("/portal", "/admin")]
    assert len(mounts) == 2
    for area_routes in (portal.routes, admin.routes):
        unguarded = [getattr(r, "path", r) for r in area_routes if not is_page(r)]
        assert unguarded == [], "declare pages with webportal.routing.page()"


# What each directive may allow, judged on the header as sent (not on the constant it is built
# from, which a weakening would change too): a source list, or the sources it must equal.
CSP_RULES: dict[str, set[frozenset[str]]] = {
    "default-src": {frozenset({"'none'"}), frozenset({"'self'"})},
    "script-src": {frozenset({"'self'"})},
    "style-src": {frozenset({"'self'"})},
    "img-src": {frozenset({"'self'"}), frozenset({"'self'", "data:"})},
    "object-src": {frozenset({"'none'"})},
    "base-uri": {frozenset({"'none'"}), frozenset({"'self'"})},
    "frame-ancestors": {frozenset({"'none'"})},
    "form-action": {frozenset({"'self'"})},
}
NEVER_IN_CSP = ("'unsafe-inline'", "'unsafe-eval'", "'unsafe-hashes'", "*", "http:", "https:")


def csp_problems(header: str) -> list[str]:
    """What is wrong with a Content-Security-Policy header, directive by directive."""
    directives: dict[str, list[str]] = {}
    problems = []
    for part in header.split(";"):
        words = part.split()
        if not words:
            continue
        name = words[0].lower()
        if name in directives:
            problems.append(f"{name} given twice (browsers use the first)")
            continue
        directives[name] = words[1:]
    for name, allowed in CSP_RULES.items():
        if name not in directives:
            problems.append(f"{name} missing")
        elif frozenset(directives[name]) not in allowed:
            problems.append(f"{name} is {' '.join(directives[name])!r}")
    for name, sources in directives.items():
        bad = [s for s in sources if s.lower() in NEVER_IN_CSP or "*" in s]
        if bad:
            problems.append(f"{name} allows {' '.join(bad)}")
    return problems


def test_the_csp_check_catches_a_weakened_policy() -> None:
    good = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
    )
    assert csp_problems(good) == []
    weakened = [
        good.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'"),
        good.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'"),
        good.replace("script-src 'self'", "script-src 'self' https://cdn.example"),
        good.replace("script-src 'self'; ", ""),
        good.replace("frame-ancestors 'none'", "frame-ancestors *"),
        good.replace("form-action 'self'", "form-action 'self' https:"),
        good.replace("default-src 'self'", "default-src *"),
        good.replace("object-src 'none'", "object-src 'self'"),
        good.replace("base-uri 'none'", "base-uri https://evil.example"),
        good.replace("img-src 'self' data:", "img-src 'self' data: 'unsafe-eval'"),
        "script-src 'self' 'unsafe-eval'; " + good,
        good + "; script-src *",
    ]
    for header in weakened:
        assert csp_problems(header), header


def test_security_headers_on_pages(web: WebHarness) -> None:
    response = web.browser().get("/portal/sign-in")
    assert response.status_code == 200
    headers = response.headers
    assert csp_problems(headers["content-security-policy"]) == []
    for path in ("/admin/sign-in", "/portal/no-such-page", "/portal/test/explode", "/static/x"):
        other = web.browser().get(path).headers["content-security-policy"]
        assert csp_problems(other) == [], path
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert "camera=()" in headers["permissions-policy"]
    assert headers["cache-control"] == "no-store"
    assert "strict-transport-security" not in headers  # plain http
    assert headers["content-type"].startswith("text/html")


def test_pages_have_no_inline_script_or_style(web: WebHarness) -> None:
    html = web.browser().get("/portal/sign-in").text
    assert "<script>" not in html
    assert "<style" not in html
    assert "style=" not in html
    assert '<script src="/static/js/site.js" defer></script>' in html


def test_static_files_are_served_with_headers(web: WebHarness) -> None:
    css = web.browser().get("/static/style.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert css.headers["x-content-type-options"] == "nosniff"
    assert css.headers["cache-control"] == "no-cache"
    js = web.browser().get("/static/js/site.js")
    assert js.status_code == 200
    assert "javascript" in js.headers["content-type"]


def test_hsts_when_the_public_url_is_https(
    tmp_path_factory: pytest.TempPathFactory, settings: Settings, clock: FakeClock
) -> None:
    https = settings.model_copy(update={"public_url": "https://mfa.example.com"})
    with WebHarness(https, clock) as web:
        response = web.browser().get("/portal/sign-in")
        assert response.headers["strict-transport-security"] == "max-age=31536000"
        assert "; Secure" in response.headers["set-cookie"]


def test_unknown_page_is_an_html_404(web: WebHarness) -> None:
    response = web.browser().get("/portal/no-such-page")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert "Page not found" in response.text
    assert csp_problems(response.headers["content-security-policy"]) == []
    assert response.headers["x-request-id"] in response.text


def test_the_api_still_answers_problem_json(web: WebHarness) -> None:
    assert_problem(web.http.get("/gateway/v1/nothing"), 404, "not-found")


def test_a_bug_in_a_page_is_an_html_500_without_details(web: WebHarness) -> None:
    response = web.browser().get("/portal/test/explode")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/html")
    assert "Something went wrong" in response.text
    assert "secret-looking" not in response.text
    assert "Traceback" not in response.text


def test_post_without_csrf_token_is_403_and_audited(web: WebHarness) -> None:
    browser = web.browser()
    browser.get("/portal/sign-in")  # a session exists, the token is simply missing
    response = browser.post("/portal/sign-in", data={"username": "alice", "password": "x"})
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("text/html")
    assert "reload the page" in response.text
    rows = [r for r in web.refusals() if r.request_id == response.headers["x-request-id"]]
    assert [r.result for r in rows] == ["csrf-failed"]
    assert web.audit("web.sign_in") == []  # the sign-in itself never ran


def test_wrong_or_foreign_csrf_token_is_403(web: WebHarness) -> None:
    web.add_user("alice")
    browser, other = web.browser(), web.browser()
    browser.get("/portal/sign-in")
    foreign = csrf_from(other.get("/portal/sign-in").text)
    for token in ("wrong", foreign, ""):
        response = browser.post(
            "/portal/sign-in",
            data={"csrf_token": token, "username": "alice", "password": PASSWORD},
        )
        assert response.status_code == 403, token
    assert len([r for r in web.refusals() if r.result == "csrf-failed"]) == 3


def test_post_without_any_session_is_403(web: WebHarness) -> None:
    response = web.browser().post("/portal/sign-in", data={"csrf_token": "x"})
    assert response.status_code == 403
    assert "no session" in response.text


def test_csrf_header_is_accepted_for_fetch(web: WebHarness) -> None:
    web.add_user("alice")
    browser = web.browser()
    assert sign_in(browser, "alice").status_code == 303
    token = csrf_from(browser.get("/portal/").text)
    response = browser.post("/portal/sign-out", headers={"X-CSRF-Token": token})
    assert response.status_code == 303
    assert browser.get("/portal/").status_code == 303  # signed out


def test_cross_site_origin_is_refused(web: WebHarness) -> None:
    browser = web.browser()
    token = csrf_from(browser.get("/portal/sign-in").text)
    response = browser.post(
        "/portal/sign-in",
        data={"csrf_token": token, "username": "a", "password": "b"},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    # Our own origin, and "null" (what browsers send from pages with Referrer-Policy:
    # no-referrer, as ours are): the token decides.
    for origin in (web.url, "null"):
        same_site = browser.post(
            "/portal/sign-in",
            data={"csrf_token": token, "username": "a", "password": "b"},
            headers={"Origin": origin},
        )
        assert same_site.status_code == 401, origin


def test_display_name_is_escaped(web: WebHarness) -> None:
    web.add_user("mallory", display_name='<script>alert("x")</script>')
    browser = web.browser()
    assert sign_in(browser, "mallory").status_code == 303
    html = browser.get("/portal/").text
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
