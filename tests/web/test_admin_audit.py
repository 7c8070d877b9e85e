"""Admin console, audit log: filters (user, action, prefix, result, time range), keyset
paging, CSV export (content, filter, CSV-injection safety), bad input, access control."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from html import unescape

import httpx

from tests.support.api import ADMIN
from tests.support.web import WebHarness, post_form, sign_in
from webportal.admin.audit import csv_cell


def actions(html: str) -> list[str]:
    return re.findall(r'<td data-label="Action">([^<]+)</td>', html)


def users(html: str) -> list[str]:
    return re.findall(r'<td data-label="User"><a href="[^"]+">([^<]+)</a>', html)


def export(browser: httpx.Client, **params: str) -> list[list[str]]:
    response = browser.get("/admin/audit.csv", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"].startswith(
        'attachment; filename="openmfa-audit-'
    )
    assert response.headers["cache-control"] == "no-store"
    return list(csv.reader(io.StringIO(response.text)))


def test_filter_by_user_action_prefix_result_and_time(web: WebHarness) -> None:
    start = web.clock.now
    web.add_user("alice")
    web.add_user("bob")
    web.clock.advance(3600)
    middle = web.clock.now
    web.run(web.services.users.set_blocked(ADMIN, "alice", True, "test"))
    web.run(web.services.users.set_disabled(ADMIN, "bob", True))
    web.clock.advance(3600)
    web.run(web.services.users.set_blocked(ADMIN, "alice", False))
    browser = web.admin_browser("root")  # now: a session started earlier would have timed out

    page = browser.get("/admin/audit", params={"user": "ALICE"})
    assert page.status_code == 200
    assert actions(page.text) == ["user.unblock", "user.block", "user.add"]
    assert set(users(page.text)) == {"alice"}
    assert actions(browser.get("/admin/audit", params={"action": "user.block"}).text) == [
        "user.block"
    ]
    prefix = browser.get("/admin/audit", params={"action": "user.*", "user": "bob"}).text
    assert actions(prefix) == ["user.disable", "user.add"]
    assert actions(browser.get("/admin/audit", params={"action": "user"}).text) == []
    # Time range: from (inclusive) .. until (exclusive), as typed by a datetime-local field.
    since = middle.strftime("%Y-%m-%dT%H:%M")
    until = (middle + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M")
    ranged = browser.get("/admin/audit", params={"since": since, "until": until, "user": ""})
    assert actions(ranged.text) == ["user.disable", "user.block"]
    # Result: the sign-in of the admin itself.
    signed = browser.get("/admin/audit", params={"result": "accept", "action": "web.sign_in"})
    assert actions(signed.text) == ["web.sign_in", "web.sign_in"]  # password, then code
    early = (start - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
    assert "No row matches this filter" in browser.get("/admin/audit", params={"until": early}).text


def test_bad_times_are_shown_beside_the_field(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    page = browser.get("/admin/audit", params={"since": "yesterday-ish"})
    assert page.status_code == 400
    assert re.search(r'id="f-since-error">Not a time', page.text)
    assert 'value="yesterday-ish"' in page.text
    backwards = browser.get(
        "/admin/audit", params={"since": "2026-01-02T00:00", "until": "2026-01-01T00:00"}
    )
    assert backwards.status_code == 400
    assert "must come after" in backwards.text
    assert browser.get("/admin/audit.csv", params={"since": "nope"}).status_code == 400


def test_page_through_with_keyset_paging(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    for i in range(60):
        web.run(web.services.audit.record(ADMIN, "test.row", "ok", "alice", f"row {i}"))
    first = browser.get("/admin/audit", params={"action": "test.row"})
    details = re.findall(r'class="ax-detail">row (\d+)<', first.text)
    assert details == [str(i) for i in range(59, 9, -1)]  # 50, newest first
    older = re.search(r'href="(/admin/audit\?[^"]+)" rel="next"', first.text)
    assert older is not None
    # New rows arriving meanwhile do not shift the next page (keyset, not OFFSET).
    web.run(web.services.audit.record(ADMIN, "test.row", "ok", "alice", "row new"))
    second = browser.get(unescape(older.group(1)))
    assert re.findall(r'class="ax-detail">row (\d+)<', second.text) == [
        str(i) for i in range(9, -1, -1)
    ]
    assert 'rel="next"' not in second.text
    assert "Newest" in second.text


def test_csv_export_of_the_filtered_rows(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    web.add_user("alice")
    web.add_user("bob")
    rows = export(browser, user="alice")
    assert rows[0] == [
        "id",
        "time",
        "actor",
        "user",
        "source",
        "action",
        "result",
        "detail",
        "request",
    ]
    assert [(r[3], r[5], r[6]) for r in rows[1:]] == [("alice", "user.add", "ok")]
    assert rows[1][1].endswith("Z")
    assert rows[1][2] == "test:admin"
    everything = export(browser)
    assert len(everything) > 3
    assert {r[5] for r in everything[1:]} >= {"user.add", "web.sign_in"}
    nothing = export(browser, action="no.such")
    assert nothing == [rows[0]]  # the header alone
    exports = web.audit("audit.export")
    assert exports[-1].actor == "admin:root"
    assert exports[-1].detail == "user=alice"


def test_csv_export_is_safe_from_formula_injection(web: WebHarness) -> None:
    browser = web.admin_browser("root")
    web.add_user("alice")
    evil = '=HYPERLINK("http://evil.example","click")'
    response = post_form(
        browser, "/admin/users/alice/block", {"reason": evil}, page="/admin/users/alice"
    )
    assert response.status_code == 303
    for start in ("+1+1", "-2+3", "@SUM(A1)", "\tcmd"):
        web.run(web.services.audit.record(ADMIN, "test.row", "ok", "alice", start))
    rows = export(browser, user="alice")
    details = [r[7] for r in rows[1:]]
    assert "'" + evil in details
    assert {"'+1+1", "'-2+3", "'@SUM(A1)", "'\tcmd"} <= set(details)
    assert not any(cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)
    # The page shows the same text escaped, never as markup.
    html = browser.get("/admin/audit", params={"user": "alice"}).text
    assert "=HYPERLINK(&#34;http://evil.example&#34;" in html
    assert csv_cell("plain") == "plain"
    assert csv_cell("") == ""


DANGEROUS_CELLS = [
    "=1+1",
    "+1",
    "-1",
    "@SUM(A1)",
    "\t=1+1",
    "\r=1+1",
    "\n=1+1",
    " =1+1",
    "a;=1+1",
    "a,+1",
    "a\t-1",
    "a; @SUM(A1)",
    "a|=1+1",
    "first line\n=cmd|' /C calc'!A0",
    "first line\r\n@SUM(A1)",
    "plain text\nsecond line",
    "\uff1d1+1",  # a full-width '=' some spreadsheets take for '='
]


def test_csv_cells_that_a_spreadsheet_could_split_or_run_get_a_quote() -> None:
    for value in DANGEROUS_CELLS:
        assert csv_cell(value) == "'" + value, repr(value)
    for value in ("plain", "", "alice", "ok", "user=alice", "a - b", "2026-12-06T10:00:00Z"):
        assert csv_cell(value) == value, repr(value)


def test_csv_export_quotes_every_field_and_defuses_formulas_after_separators(
    web: WebHarness,
) -> None:
    browser = web.admin_browser("root")
    for detail in DANGEROUS_CELLS:
        web.run(web.services.audit.record(ADMIN, "test.row", "ok", "", detail))
    # Anyone controls the user column: it is the name typed at a sign-in form.
    stranger = web.browser()
    sign_in(stranger, "x;=HYPERLINK(1)")
    response = browser.get("/admin/audit.csv", params={"action": "test.row"})
    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(response.text)))
    assert sorted(r[7] for r in rows[1:]) == sorted("'" + v for v in DANGEROUS_CELLS)
    # Every field quoted: a spreadsheet that splits on ; or , still sees one cell.
    first_line = response.text.splitlines()[0]
    assert first_line == ",".join(f'"{c}"' for c in rows[0])
    signins = export(browser, action="web.sign_in")
    assert "'x;=hyperlink(1)" in [r[3] for r in signins[1:]]  # names are kept lower-case


def test_audit_pages_need_an_admin(web: WebHarness) -> None:
    web.add_user("alice")
    portal = web.browser()
    assert sign_in(portal, "alice").status_code == 303
    forged = web.browser(cookies={"omfa_admin": portal.cookies.get("omfa_portal") or ""})
    for path in ("/admin/audit", "/admin/audit.csv"):
        response = forged.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/admin/sign-in")
    assert web.audit("audit.export") == []
