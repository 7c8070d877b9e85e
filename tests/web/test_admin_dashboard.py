"""The admin dashboard: figures computed from known sign-ins, the chart, access control."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import update

from backend.domain.challenge import Answer
from backend.services.context import SignInContext
from backend.services.reports import HOURS, hour_floor
from backend.store.tables import devices_t
from tests.support.api import ADMIN
from tests.support.process import wait_for
from tests.support.web import WebHarness, sign_in


def figure(html: str, name: str) -> int:
    match = re.search(rf'id="fig-{name}">(\d+)<', html)
    assert match is not None, f"no figure {name}"
    return int(match.group(1))


def hour_rows(html: str) -> dict[str, int]:
    """The chart's table: hour label -> count."""
    pairs = re.findall(
        r'<td data-label="Hour">(\d\d:00)</td><td data-label="Sign-ins">(\d+)</td>', html
    )
    return {hour: int(count) for hour, count in pairs}


def start(web: WebHarness, user: str) -> str:
    view = web.run(
        web.services.challenges.start(ADMIN, user, "push", SignInContext("vpn", "192.0.2.7"))
    )
    return view.id


def answer(web: WebHarness, user: str, challenge_id: str, how: Answer) -> None:
    device = web.run(web.services.devices.list_for_user(user))[0]
    web.run(web.services.challenges.answer(ADMIN, device, challenge_id, how))


def test_the_dashboard_counts_known_sign_ins(web: WebHarness) -> None:
    web.add_user("alice")
    web.add_user("bob")
    web.device("alice")  # activated over HTTP while the clock is still the real time
    web.device("bob")
    answer(web, "alice", start(web, "alice"), Answer.APPROVE)  # 29 h before "now": left out
    web.clock.advance(26 * 3600)
    first = web.clock.now
    answer(web, "alice", start(web, "alice"), Answer.APPROVE)
    answer(web, "alice", start(web, "alice"), Answer.DENY)
    web.clock.advance(2 * 3600)
    second = web.clock.now
    answer(web, "alice", start(web, "alice"), Answer.FRAUD)  # reports, blocks alice
    web.clock.advance(3600)
    start(web, "bob")  # left pending: a held request

    async def dead_token() -> None:
        async with web.services.db.write() as conn:
            await conn.execute(update(devices_t).values(push_status="invalid"))

    web.run(dead_token())  # both phones' tokens called dead by the push service

    html = web.admin_browser("root").get("/admin/").text
    assert figure(html, "started") == 4
    assert figure(html, "approved") == 1
    assert figure(html, "denied") == 1
    assert figure(html, "fraud") == 1
    assert figure(html, "held") == 1
    assert figure(html, "open-fraud") == 1
    assert figure(html, "invalid-tokens") == 2
    hours = hour_rows(html)
    assert len(hours) == HOURS
    now = web.clock.now
    assert hours[hour_floor(first).strftime("%H:00")] == 2
    assert hours[hour_floor(second).strftime("%H:00")] == 1
    assert hours[hour_floor(now).strftime("%H:00")] == 1
    assert sum(hours.values()) == 4
    # The chart: one bar per hour, the busiest one full height.
    assert html.count('class="ax-chart-bar"') == HOURS
    assert "the busiest hour had 2" in html

    # The same figures from the service, and after the window moves on they drop out.
    web.clock.advance(24 * 3600)
    later = web.run(web.services.reports.dashboard())
    assert (later.started, later.approved, later.denied, later.fraud) == (0, 0, 0, 0)
    assert later.held == 0  # bob's push expired meanwhile
    assert later.open_fraud_reports == 1  # until an administrator reviews it
    assert later.since == hour_floor(web.clock.now) - timedelta(hours=HOURS - 1)


def test_an_empty_dashboard_says_so(web: WebHarness) -> None:
    html = web.admin_browser("root").get("/admin/").text
    assert figure(html, "started") == 0
    assert figure(html, "open-fraud") == 0
    assert "No sign-ins in the last 24 hours" in html
    assert "<svg" not in html
    assert "style=" not in html
    assert "<script>" not in html


def test_the_dashboard_needs_an_admin_session(web: WebHarness) -> None:
    assert web.browser().get("/admin/").headers["location"] == "/admin/sign-in"
    web.add_user("alice")
    portal = web.browser()
    assert sign_in(portal, "alice").status_code == 303
    value = portal.cookies.get("omfa_portal") or ""
    forged = web.browser(cookies={"omfa_admin": value})
    response = forged.get("/admin/")
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/sign-in"


def test_the_dashboard_lists_the_nodes_and_their_duties(web: WebHarness) -> None:
    from backend.store.tables import nodes_t

    async def a_dead_node() -> None:
        async with web.services.db.write() as conn:
            seen = web.clock.now - timedelta(minutes=5)
            await conn.execute(
                nodes_t.insert().values(
                    id="n_dead",
                    name="mfa-<2>",
                    host="h2",
                    pid=7,
                    version="0.1.0",
                    started_at=seen,
                    seen_at=seen,
                )
            )

    web.run(a_dead_node())
    server = web.server_services  # the node the HTTP app registered
    me = server.node_id
    assert server.leases is not None
    held = server.leases.held
    wait_for(lambda: "retention" in held, 10, "the node to take the retention duty")
    html = web.admin_browser("root").get("/admin/").text
    assert re.search(rf'data-node="{me}" data-state="alive"', html)
    assert "this node" in html
    row = html.split(f'data-node="{me}"', 1)[1].split("</tr>", 1)[0]
    assert "retention" in row
    assert 'data-node="n_dead" data-state="dead"' in html
    assert "mfa-&lt;2&gt;" in html  # names are escaped
