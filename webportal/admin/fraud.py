"""``/admin/fraud``: fraud reports (open / reviewed) with their context, and the one-click
"unblock and mark reviewed" (the same steps as ``openmfa user unblock``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from backend.errors import BadRequest, NotFound
from backend.services.fraud import STATE_FILTERS, FraudReportView
from webportal.auth import require_admin
from webportal.routing import page
from webportal.sessions import flash
from webportal.state import services_of
from webportal.templating import render

LIMIT = 200  # newest reports shown; older ones stay in the audit trail and the CLI


def _report_id(request: Request) -> int:
    text = request.path_params["report_id"]
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise NotFound("no such fraud report")
    return int(text)


def _back(request: Request) -> str:
    state = request.query_params.get("state", "open")
    return "/admin/fraud" + ("" if state == "open" else f"?state={state}")


async def fraud(request: Request) -> Response:
    """The list, filtered by state (``open`` by default)."""
    await require_admin(request)
    services = services_of(request)
    state = request.query_params.get("state", "open")
    if state not in STATE_FILTERS:
        raise BadRequest(f"state must be one of {', '.join(STATE_FILTERS)}")
    reports = await services.fraud.list(state, limit=LIMIT)
    locations: dict[int, str] = {}
    if services.geoip is not None:
        for report in reports:
            found = services.geoip.locate(report.client_ip) if report.client_ip else None
            if found is not None:
                locations[report.id] = ", ".join(p for p in (found.city, found.country) if p)
    return await render(
        request,
        "admin/fraud.html",
        {
            "reports": reports,
            "state": state,
            "states": STATE_FILTERS,
            "locations": locations,
            "limited": len(reports) == LIMIT,
        },
    )


async def _open_report(request: Request) -> FraudReportView | None:
    """The report named by the URL, or ``None`` (after a flash) when it is no longer open."""
    report = await services_of(request).fraud.get(_report_id(request))
    if report.state != "open":
        by = f" by {report.reviewed_by}" if report.reviewed_by else ""
        await flash(request, f"Report {report.id} was already reviewed{by}.", "warning")
        return None
    return report


async def resolve(request: Request) -> Response:
    """POST: unblock the user and mark their open reports reviewed (a user the report did not
    block: mark this report reviewed)."""
    me = await require_admin(request)
    services = services_of(request)
    report = await _open_report(request)
    if report is not None and not report.user_blocked:  # nothing to unblock (policy)
        await services.fraud.review(me.actor, report.id)
        await flash(request, f"Report {report.id} marked reviewed.", "success")
    elif report is not None:
        change = await services.access.unblock(
            me.actor, report.user_name, f"on unblock (report {report.id})"
        )
        numbers = ", ".join(map(str, change.reviewed))
        await flash(
            request,
            f"{report.user_name} unblocked; open report(s) {numbers} marked reviewed.",
            "success",
        )
    return RedirectResponse(_back(request), status_code=303)


async def review(request: Request) -> Response:
    """POST: mark one report reviewed and leave the user as they are (still blocked)."""
    me = await require_admin(request)
    report = await _open_report(request)
    if report is not None:
        await services_of(request).fraud.review(me.actor, report.id)
        still = " The user stays blocked." if report.user_blocked else ""
        await flash(request, f"Report {report.id} marked reviewed.{still}", "success")
    return RedirectResponse(_back(request), status_code=303)


routes = [
    page("/fraud", fraud, name="admin_fraud"),
    page("/fraud/{report_id}/resolve", resolve, methods=["POST"], name="admin_fraud_resolve"),
    page("/fraud/{report_id}/review", review, methods=["POST"], name="admin_fraud_review"),
]
