"""``/admin/audit``: the audit trail, filtered by user, action, result and time, newest
first in pages (keyset paging on the row id), and ``/admin/audit.csv``: the same rows as CSV,
streamed in batches (no size limit, no long transaction)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from backend.services.audit import AuditEntry
from webportal.auth import require_admin
from webportal.routing import page
from webportal.state import services_of
from webportal.templating import render

PAGE_SIZE = 50
#: Actions offered as suggestions in the filter (any action, or a prefix ending in *, works).
KNOWN_ACTIONS = (
    "auth.start",
    "challenge.answer",
    "challenge.cancel",
    "challenge.expire",
    "otp.verify",
    "password.verify",
    "pin.verify",
    "push.limited",
    "fraud.report",
    "fraud.review",
    "fraud.notify",
    "user.*",
    "device.*",
    "policy.*",
    "invitation.*",
    "web.sign_in",
    "request.refused",
    "audit.export",
)
CSV_COLUMNS = ("id", "time", "actor", "user", "source", "action", "result", "detail", "request")
# CSV injection (OWASP): a spreadsheet runs a cell starting with = + - @ (or their full-width
# forms) as a formula, also after leading blanks, and one that splits a cell on ; , | or a tab
# or line break (import settings differ) sees a new cell wherever those come first. A cell
# with a line break, or with a formula character after such a separator, is made text whole.
_FORMULA_CHARS = "=+-@\uff1d\uff0b\uff0d\uff20"
_DANGEROUS = re.compile(rf"^\t|(?:^|[;,|\t\r\n])[ \t\r\n]*[{re.escape(_FORMULA_CHARS)}]|[\r\n]")


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """The filter of the page and the export, as typed (``errors`` by field)."""

    user: str
    action: str
    result: str
    since_text: str
    until_text: str
    since: datetime | None
    until: datetime | None
    errors: dict[str, str]

    def query(self) -> dict[str, str]:
        """The filter as URL parameters (empty ones left out)."""
        values = {
            "user": self.user,
            "action": self.action,
            "result": self.result,
            "since": self.since_text,
            "until": self.until_text,
        }
        return {k: v for k, v in values.items() if v}


def parse_time(text: str) -> datetime:
    """``2026-11-23``, ``2026-11-23T14:05`` (a datetime-local field) or full ISO 8601; no
    zone means UTC. :class:`ValueError` otherwise."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def read_filter(request: Request) -> AuditFilter:
    """The filter from the query string (bounded; bad times reported, not raised)."""
    params = request.query_params
    errors: dict[str, str] = {}
    times: dict[str, datetime | None] = {}
    texts: dict[str, str] = {}
    for name in ("since", "until"):
        text = params.get(name, "").strip()[:40]
        texts[name] = text
        times[name] = None
        if text:
            try:
                times[name] = parse_time(text)
            except ValueError:
                errors[name] = "Not a time: use the picker, or type 2026-11-23 14:05 (UTC)."
    if times["since"] and times["until"] and times["since"] >= times["until"]:
        errors["until"] = "“Until” must come after “from”."
    return AuditFilter(
        user=params.get("user", "").strip()[:128],
        action=params.get("action", "").strip()[:64],
        result=params.get("result", "").strip()[:32],
        since_text=texts["since"],
        until_text=texts["until"],
        since=times["since"],
        until=times["until"],
        errors=errors,
    )


async def audit(request: Request) -> Response:
    """The filtered trail, :data:`PAGE_SIZE` rows a page; ``before`` continues a page."""
    await require_admin(request)
    flt = read_filter(request)
    before_text = request.query_params.get("before", "")
    before = (
        int(before_text)
        if before_text.isascii() and before_text.isdigit() and len(before_text) < 19
        else None
    )
    rows: list[AuditEntry] = []
    if not flt.errors:
        rows = await services_of(request).audit.query(
            flt.user or None,
            flt.since,
            flt.action or None,
            PAGE_SIZE + 1,
            result=flt.result or None,
            until=flt.until,
            before_id=before,
        )
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    query = flt.query()
    return await render(
        request,
        "admin/audit.html",
        {
            "rows": rows,
            "f": flt,
            "known_actions": KNOWN_ACTIONS,
            "paged": before is not None,
            "first_url": "/admin/audit" + (f"?{urlencode(query)}" if query else ""),
            "next_url": (
                "/admin/audit?" + urlencode({**query, "before": str(rows[-1].id)}) if more else ""
            ),
            "csv_url": "/admin/audit.csv" + (f"?{urlencode(query)}" if query else ""),
            "filtered": bool(query),
        },
        400 if flt.errors else 200,
    )


def csv_cell(value: str) -> str:
    """A cell a spreadsheet shows as text: one that could start a formula, at its start or
    after a separator a spreadsheet may split on, or that holds a line break, gets a
    leading '."""
    return "'" + value if _DANGEROUS.search(value) else value


def csv_row(entry: AuditEntry) -> list[str]:
    return [
        str(entry.id),
        entry.at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        *(
            csv_cell(v)
            for v in (
                entry.actor,
                entry.user_name,
                entry.source,
                entry.action,
                entry.result,
                entry.detail,
                entry.request_id,
            )
        ),
    ]


async def export(request: Request) -> Response:
    """The filtered rows as CSV (newest first), streamed; the export itself is audited."""
    me = await require_admin(request)
    services = services_of(request)
    flt = read_filter(request)
    if flt.errors:
        return await audit(request)  # the page says what is wrong with the filter
    await services.audit.record(me.actor, "audit.export", "ok", "", urlencode(flt.query())[:1000])
    batches = services.audit.export(
        flt.user or None,
        flt.since,
        flt.action or None,
        result=flt.result or None,
        until=flt.until,
    )

    async def lines() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, quoting=csv.QUOTE_ALL)  # one cell, whatever it holds
        writer.writerow(CSV_COLUMNS)
        async for batch in batches:
            writer.writerows(csv_row(entry) for entry in batch)
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
        yield buffer.getvalue()  # the header alone, when nothing matched

    stamp = services.clock().strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="openmfa-audit-{stamp}.csv"'},
    )


routes = [
    page("/audit", audit, name="admin_audit"),
    page("/audit.csv", export, name="admin_audit_csv"),
]
