"""A page view before sign-in writes nothing (issue 13, finding 21).

Every anonymous GET used to insert a ``web_sessions`` row (the form's CSRF secret lived
there), purged only at a sign-in: a loop of GETs was a loop of writes on the single SQLite
writer. Now the row is made at sign-in; the sign-in form's CSRF token is tied to a random
pre-session cookie instead, and is still required on every unsafe request.
"""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy import func, select

from backend.store.tables import web_sessions_t
from tests.support.web import PASSWORD, WebHarness, cookie, csrf_from, sign_in

ANONYMOUS_PAGES = (
    "/portal/sign-in",
    "/admin/sign-in",
    "/portal/sign-in?next=/portal/devices",
    "/portal/no-such-page",
    "/admin/no-such-page",
    "/portal/",
    "/admin/",
)


def session_rows(web: WebHarness) -> int:
    async def count() -> int:
        async with web.services.db.read() as conn:
            return int(
                (await conn.execute(select(func.count()).select_from(web_sessions_t))).scalar_one()
            )

    return web.run(count())


def test_300_anonymous_page_views_write_no_session_row(web: WebHarness) -> None:
    async def visit(http: httpx.AsyncClient, path: str) -> int:
        # Each request a new visitor (no cookie sent back), as a flood would be.
        request = http.build_request("GET", path)
        request.headers.pop("cookie", None)
        return (await http.send(request)).status_code

    async def visit_all() -> list[int]:
        async with httpx.AsyncClient(base_url=web.url, timeout=30) as http:
            paths = [ANONYMOUS_PAGES[i % len(ANONYMOUS_PAGES)] for i in range(300)]
            return list(await asyncio.gather(*(visit(http, p) for p in paths)))

    statuses = asyncio.run(visit_all())
    assert set(statuses) <= {200, 303, 404}
    assert statuses.count(200) >= 80
    assert session_rows(web) == 0
    # One browser coming back with its cookie: still nothing stored.
    browser = web.browser()
    for _ in range(20):
        assert browser.get("/portal/sign-in").status_code == 200
    assert session_rows(web) == 0


def test_the_sign_in_form_sets_a_pre_session_cookie_like_the_session_cookie(
    web: WebHarness,
) -> None:
    browser = web.browser()
    form = browser.get("/portal/sign-in")
    line = cookie(form, "omfa_portal")
    assert line is not None
    assert "Path=/portal" in line
    assert "HttpOnly" in line
    assert "SameSite=Lax" in line
    # The same cookie is kept on the next views (the token on an open form stays valid).
    again = browser.get("/portal/sign-in")
    assert cookie(again, "omfa_portal") is None
    assert csrf_from(again.text) == csrf_from(form.text)


def test_sign_in_still_works_and_makes_exactly_one_row(web: WebHarness) -> None:
    web.add_user("alice")
    web.add_user("root", admin=True)
    browser = web.browser()
    before = browser.get("/portal/sign-in")
    pre = browser.cookies.get("omfa_portal")
    response = sign_in(browser, "alice")
    assert response.status_code == 303
    assert browser.cookies.get("omfa_portal") != pre  # a new value at sign-in
    assert session_rows(web) == 1
    page = browser.get("/portal/")
    assert page.status_code == 200
    assert csrf_from(page.text) != csrf_from(before.text)
    admin = web.browser()
    assert sign_in(admin, "root", PASSWORD, area="admin").status_code == 303
    assert session_rows(web) == 2
    # A wrong password writes no session either.
    stranger = web.browser()
    assert sign_in(stranger, "alice", "wrong password").status_code == 401
    assert session_rows(web) == 2


def test_csrf_is_still_required_before_sign_in(web: WebHarness) -> None:
    web.add_user("alice")
    browser, other = web.browser(), web.browser()
    token = csrf_from(browser.get("/portal/sign-in").text)
    foreign = csrf_from(other.get("/portal/sign-in").text)
    admin_token = csrf_from(web.browser().get("/admin/sign-in").text)
    data = {"username": "alice", "password": PASSWORD}
    for bad in ({}, {"csrf_token": ""}, {"csrf_token": "x"}, {"csrf_token": foreign}):
        response = browser.post("/portal/sign-in", data={**data, **bad})
        assert response.status_code == 403, bad
    # The pre-session cookie's value is not a token, and a token without its cookie is none.
    cookie_value = browser.cookies.get("omfa_portal") or ""
    assert (
        browser.post("/portal/sign-in", data={**data, "csrf_token": cookie_value}).status_code
        == 403
    )
    bare = web.browser()
    assert bare.post("/portal/sign-in", data={**data, "csrf_token": token}).status_code == 403
    # A portal token does not pass in the admin console, nor the other way round.
    assert browser.post("/admin/sign-in", data={**data, "csrf_token": token}).status_code == 403
    assert (
        browser.post("/portal/sign-in", data={**data, "csrf_token": admin_token}).status_code == 403
    )
    assert len([r for r in web.refusals() if r.result == "csrf-failed"]) == 8
    assert web.audit("web.sign_in") == []
    assert session_rows(web) == 0
    assert browser.post("/portal/sign-in", data={**data, "csrf_token": token}).status_code == 303
