"""Admin console, Import: upload a CSV, see the preview (nothing written), confirm; a bad row
refuses the file with its line; the confirm takes only what this session previewed; the page
never shows a token's secret; administrators only, CSRF as every form."""

from __future__ import annotations

import html
import re

import httpx

from backend.domain.imports import MAX_BYTES
from tests.support.web import WebHarness, csrf_from, sign_in

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
TOKEN_HEAD = "upn,serial number,secret key,time interval,manufacturer,model\n"
_SEALED = re.compile(r'name="upload" value="([^"]+)"')


def upload(browser: httpx.Client, kind: str, content: bytes, skip: bool = False) -> httpx.Response:
    page = browser.get("/admin/import")
    assert page.status_code == 200, page.text
    data = {"csrf_token": csrf_from(page.text), "kind": kind}
    if skip:
        data["skip_existing"] = "yes"
    return browser.post(
        "/admin/import", data=data, files={"file": ("import.csv", content, "text/csv")}
    )


def confirm(browser: httpx.Client, preview: httpx.Response) -> httpx.Response:
    match = _SEALED.search(preview.text)
    assert match is not None, preview.text
    return browser.post(
        "/admin/import/confirm",
        data={
            "csrf_token": csrf_from(preview.text),
            "kind": re.search(r'name="kind" value="(\w+)">', preview.text).group(1),  # type: ignore[union-attr]
            "skip_existing": "no",
            "upload": match.group(1),
        },
    )


def test_users_preview_then_confirm(web: WebHarness) -> None:
    admin = web.admin_browser()
    content = b"name,email,display_name,phone,admin\nalice,alice@example.com,Alice,+1 555 0100,no\n"
    preview = upload(admin, "users", content)
    assert preview.status_code == 200, preview.text
    assert "1 user(s) will be created" in preview.text
    assert "alice@example.com" in preview.text
    names = [u.user.name for u in web.run(web.services.users.list())]
    assert "alice" not in names  # nothing written by the preview
    done = confirm(admin, preview)
    assert done.status_code == 303
    assert done.headers["location"] == "/admin/import"
    assert "1 user(s) created" in admin.get("/admin/import").text
    assert web.user("alice").email == "alice@example.com"
    assert web.audit("user.import")[0].result == "ok"
    # The same sealed upload again: alice exists now, nothing written, 409 with the line.
    again = confirm(admin, preview)
    assert again.status_code == 409
    assert "line" in again.text.lower() or "Line" in again.text


def test_a_bad_row_refuses_the_file_with_its_line(web: WebHarness) -> None:
    admin = web.admin_browser()
    content = b"name,email\nbob,bob@example.com\n=cmd,x@example.com\ncarol,carol@\n"
    preview = upload(admin, "users", content)
    assert preview.status_code == 400
    text = html.unescape(preview.text)
    assert "2 problem(s)" in text
    assert "user names are 1-128 characters" in text
    assert "the e-mail address is not valid" in text
    assert 'name="upload"' not in preview.text  # no confirm for a refused file
    assert web.audit("user.import")[0].result == "refused"


def test_tokens_preview_never_shows_the_secret_and_confirm_adds_them(web: WebHarness) -> None:
    admin = web.admin_browser()
    web.add_user("helga")
    content = f"{TOKEN_HEAD}helga@example.com,TK-1,{SECRET},60,Token2,C302\n".encode()
    preview = upload(admin, "tokens", content)
    assert preview.status_code == 200, preview.text
    assert "TK-1" in preview.text
    assert "60 s" in preview.text
    assert SECRET not in preview.text
    assert SECRET.lower() not in preview.text.lower()
    done = confirm(admin, preview)
    assert done.status_code == 303, done.text
    devices = web.run(web.services.devices.list_for_user("helga"))
    assert [(d.kind, d.state, d.name) for d in devices] == [
        ("oath", "active", "Token2 C302 (serial TK-1)")
    ]
    user_page = admin.get("/admin/users/helga")
    assert "serial TK-1" in user_page.text


def test_a_sealed_upload_is_bound_to_its_session_and_kind(web: WebHarness) -> None:
    admin = web.admin_browser()
    web.add_user("helga")
    content = f"{TOKEN_HEAD}helga,TK-9,{SECRET},30,,\n".encode()
    preview = upload(admin, "tokens", content)
    sealed = _SEALED.search(preview.text).group(1)  # type: ignore[union-attr]
    other = web.admin_browser("root2")
    page = other.get("/admin/import")
    stolen = other.post(
        "/admin/import/confirm",
        data={"csrf_token": csrf_from(page.text), "kind": "tokens", "upload": sealed},
    )
    assert stolen.status_code == 400, stolen.text
    wrong_kind = admin.post(
        "/admin/import/confirm",
        data={"csrf_token": csrf_from(preview.text), "kind": "users", "upload": sealed},
    )
    assert wrong_kind.status_code == 400
    tampered = admin.post(
        "/admin/import/confirm",
        data={
            "csrf_token": csrf_from(preview.text),
            "kind": "tokens",
            "upload": sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB"),
        },
    )
    assert tampered.status_code == 400
    assert web.run(web.services.devices.list_for_user("helga")) == []
    # Older than 30 minutes (the session itself kept alive meanwhile): upload it again.
    for _ in range(4):
        web.clock.advance(8 * 60)
        assert admin.get("/admin/import").status_code == 200
    late = confirm(admin, preview)
    assert late.status_code == 400, late.text
    assert "30 minutes" in late.text
    assert web.run(web.services.devices.list_for_user("helga")) == []


def test_only_administrators_and_with_csrf(web: WebHarness) -> None:
    assert web.browser().get("/admin/import").status_code == 303
    web.add_user("bob")
    user = web.browser()
    sign_in(user, "bob")
    assert user.get("/admin/import").status_code == 303
    admin = web.admin_browser()
    no_csrf = admin.post(
        "/admin/import",
        data={"kind": "users"},
        files={"file": ("u.csv", b"name\nmallory\n", "text/csv")},
    )
    assert no_csrf.status_code == 403
    assert "mallory" not in [u.user.name for u in web.run(web.services.users.list())]


def test_upload_size_limit(web: WebHarness) -> None:
    admin = web.admin_browser()
    too_big = upload(admin, "users", b"name\n" + b"a" * (MAX_BYTES + 70 * 1024))
    assert too_big.status_code == 413
    just_over = upload(admin, "users", b"name\n" + b"a" * MAX_BYTES)
    assert just_over.status_code == 413


def test_other_forms_still_take_no_files(web: WebHarness) -> None:
    admin = web.admin_browser()
    page = admin.get("/admin/tokens")
    response = admin.post(
        "/admin/tokens",
        data={"csrf_token": csrf_from(page.text), "name": "x", "scope": "bridge"},
        files={"file": ("u.csv", b"name\n", "text/csv")},
    )
    assert response.status_code == 400
