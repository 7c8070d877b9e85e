"""Admin console, API tokens: create (shown once), list, revoke; CSRF, access, validation."""

from __future__ import annotations

import html
import re

from tests.support.web import (
    WebHarness,
    csrf_from,
    post_form,
    sign_in,
)

_TOKEN_FIELD = re.compile(r'id="api-token"[^>]*value="([^"]+)"')


def field_error(page: str, name: str) -> str:
    match = re.search(rf'id="f-{name}-error">([^<]*)<', page)
    assert match is not None, f"no error beside {name}"
    return html.unescape(match.group(1))


def test_empty_list_and_access(web: WebHarness) -> None:
    assert web.browser().get("/admin/tokens").status_code == 303
    web.add_user("bob")
    user = web.browser()
    sign_in(user, "bob")
    assert user.get("/admin/tokens").status_code == 303
    page = web.admin_browser().get("/admin/tokens")
    assert page.status_code == 200
    assert "No tokens yet" in page.text


def test_created_token_is_shown_once_and_works(web: WebHarness) -> None:
    admin = web.admin_browser()
    response = post_form(admin, "/admin/tokens", {"name": "radius-dmz", "scope": "bridge"})
    assert response.status_code == 200
    match = _TOKEN_FIELD.search(response.text)
    assert match is not None
    token = html.unescape(match.group(1))
    assert token.startswith("omfa_")
    assert "only time the token is shown" in response.text
    record = web.run(web.services.tokens.authenticate(token))
    assert (record.name, record.scope) == ("radius-dmz", "bridge")
    listing = admin.get("/admin/tokens").text
    assert token not in listing
    assert "radius-dmz" in listing
    assert ">bridge<" in listing
    [row] = web.audit("token.create")
    assert row.actor == "admin:root"
    assert row.detail == "radius-dmz scope=bridge"
    # The gateway API takes it.
    answer = web.client(headers={"Authorization": f"Bearer {token}"}).get(
        "/gateway/v1/radius/clients"
    )
    assert answer.status_code == 200


def test_validation_errors(web: WebHarness) -> None:
    admin = web.admin_browser()
    bad = post_form(admin, "/admin/tokens", {"name": "no spaces", "scope": "bridge"})
    assert bad.status_code == 400
    assert "token names are 1-64 characters" in field_error(bad.text, "name").lower()
    assert 'value="no spaces"' in bad.text
    scope = post_form(admin, "/admin/tokens", {"name": "x", "scope": "root"})
    assert scope.status_code == 400
    assert "scope is one of gateway, bridge" in scope.text
    assert post_form(admin, "/admin/tokens", {"name": "gw", "scope": "gateway"}).status_code == 200
    again = post_form(admin, "/admin/tokens", {"name": "gw", "scope": "gateway"})
    assert again.status_code == 400
    assert "exists" in field_error(again.text, "name")
    assert [t.name for t in web.run(web.services.tokens.list())] == ["gw"]
    assert [r.result for r in web.audit("token.create")].count("refused") == 3


def test_revoke_stops_the_token(web: WebHarness) -> None:
    admin = web.admin_browser()
    created = post_form(admin, "/admin/tokens", {"name": "gw", "scope": "gateway"})
    match = _TOKEN_FIELD.search(created.text)
    assert match is not None
    token = html.unescape(match.group(1))
    page = admin.get("/admin/tokens").text
    assert 'data-confirm="Revoke the token gw?' in page
    response = admin.post("/admin/tokens/gw/revoke", data={"csrf_token": csrf_from(page)})
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/tokens"
    listing = admin.get("/admin/tokens").text
    assert "Token gw revoked" in listing
    assert "Revoked" in listing
    assert web.audit("token.revoke")[0].detail == "gw"
    answer = web.client(headers={"Authorization": f"Bearer {token}"}).get(
        "/gateway/v1/radius/clients"
    )
    assert answer.status_code == 401
    again = admin.post("/admin/tokens/gw/revoke", data={"csrf_token": csrf_from(listing)})
    assert again.status_code == 303
    assert "There is no live token named gw." in admin.get("/admin/tokens").text


def test_forms_without_the_csrf_token_are_refused(web: WebHarness) -> None:
    admin = web.admin_browser()
    post_form(admin, "/admin/tokens", {"name": "gw", "scope": "gateway"})
    for path, data in (
        ("/admin/tokens", {"name": "other", "scope": "bridge"}),
        ("/admin/tokens/gw/revoke", {}),
    ):
        assert admin.post(path, data=data).status_code == 403
        assert admin.post(path, data={**data, "csrf_token": "nope"}).status_code == 403
    tokens = web.run(web.services.tokens.list())
    assert [(t.name, t.revoked_at) for t in tokens] == [("gw", None)]
