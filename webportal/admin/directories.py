"""Admin console: Directories (AD / LDAP). Each configured directory with its settings in
short, and per directory: Test (connect, bind, count the selection), Dry run (what a sync
would change, nothing written), Sync now, and the last sync's report (counts, duration,
state, message, names per kind of change).

Settings are changed with ``openmfa directory add|set|remove`` (the bind password comes from
standard input there, never through a web form). A sync started here runs in the request:
the page answers when it is done (a directory of 10,000 users syncs in well under a minute).
A sync the safety threshold stopped offers "Sync anyway", which forces it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from backend.directory.reader import TestReport
from backend.errors import (
    Conflict,
    DirectoryError,
    DirectoryUnavailable,
    NotFound,
    SyncStopped,
)
from backend.services.directory_sync import DirectorySyncService, SyncReport
from webportal.auth import require_admin
from webportal.forms import field
from webportal.routing import page
from webportal.sessions import flash
from webportal.state import services_of
from webportal.templating import render

#: The change kinds a report lists names for, in the order shown, with their labels.
CHANGE_KINDS = (
    ("created", "Created"),
    ("updated", "Updated"),
    ("renamed", "Renamed"),
    ("disabled", "Disabled"),
    ("enabled", "Enabled"),
    ("clashes", "Name clashes"),
    ("errors", "Errors"),
)


def _sync_service(request: Request) -> DirectorySyncService:
    return services_of(request).directory_sync


def report_names(report: SyncReport) -> list[tuple[str, list[str]]]:
    """(label, names) for each change kind the report lists names for."""
    out = []
    for key, label in CHANGE_KINDS:
        names = report.details.get(key)
        if isinstance(names, list) and names:
            out.append((label, [str(n) for n in names]))
    return out


async def _page(
    request: Request,
    tested: tuple[str, TestReport] | None = None,
    test_error: tuple[str, str] | None = None,
    status: int = 200,
) -> Response:
    services = services_of(request)
    sync = _sync_service(request)
    rows = []
    for view in await services.directories.list():
        last = await sync.last(view.name, dry_run=False)
        dry = await sync.last(view.name, dry_run=True)
        # The newer of the two is shown first; both when there are both.
        reports = [r for r in (last, dry) if r is not None]
        reports.sort(key=lambda r: r.started_at, reverse=True)
        rows.append(
            {
                "view": view,
                "reports": [(r, report_names(r)) for r in reports],
                "stopped": last is not None and last.state == "stopped",
            }
        )
    context: dict[str, Any] = {
        "rows": rows,
        "tested": tested,
        "test_error": test_error,
    }
    return await render(request, "admin/directories.html", context, status=status)


async def directories(request: Request) -> Response:
    """Every directory with its last sync's report."""
    await require_admin(request)
    return await _page(request)


async def test(request: Request) -> Response:
    """Connect, bind with the service account and count the selection (audited)."""
    me = await require_admin(request)
    name = request.path_params["name"]
    try:
        report = await services_of(request).directories.test(me.actor, name)
    except NotFound:
        await flash(request, f"There is no directory named {name}.", "error")
        return RedirectResponse("/admin/directories", status_code=303)
    except (DirectoryError, DirectoryUnavailable) as exc:  # refused bind, bad DN, down
        return await _page(request, test_error=(name, exc.detail), status=502)
    return await _page(request, tested=(name, report))


async def sync(request: Request) -> Response:
    """Dry run, sync now, or (after a stop at the threshold) sync anyway."""
    me = await require_admin(request)
    name = request.path_params["name"]
    mode = await field(request, "mode", 16)
    runner = _sync_service(request)
    if mode not in ("dry-run", "sync", "force"):
        await flash(request, "Choose a dry run or a sync.", "error")
        return RedirectResponse("/admin/directories", status_code=303)
    try:
        report = await runner.run(me.actor, name, dry_run=mode == "dry-run", force=mode == "force")
    except NotFound:
        await flash(request, f"There is no directory named {name}.", "error")
    except SyncStopped as exc:
        await flash(
            request,
            f"The sync of {name} stopped: {exc.detail} Nobody was disabled. Check the "
            "directory's filter and group; if the change is right, use Sync anyway.",
            "error",
        )
    except Conflict as exc:  # another sync of this directory is running
        await flash(request, f"{name}: {exc.detail}", "error")
    except (DirectoryError, DirectoryUnavailable) as exc:
        await flash(request, f"The sync of {name} failed: {exc.detail}", "error")
    else:
        what = "Dry run of" if mode == "dry-run" else "Sync of"
        await flash(
            request,
            f"{what} {name} {report.state}: {report.created} created, {report.updated} "
            f"updated, {report.renamed} renamed, {report.disabled} disabled, "
            f"{report.enabled} enabled, {report.unchanged} unchanged, {report.errors} errors"
            + (" (nothing written)." if mode == "dry-run" else "."),
            "success" if report.state == "done" else "error",
        )
    return RedirectResponse("/admin/directories", status_code=303)


routes = [
    page("/directories", directories, name="admin_directories"),
    page("/directories/{name}/test", test, methods=["POST"], name="admin_directory_test"),
    page("/directories/{name}/sync", sync, methods=["POST"], name="admin_directory_sync"),
]
