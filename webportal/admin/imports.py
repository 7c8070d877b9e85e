"""Admin console: import users or hardware tokens from a CSV file, with a preview first.

Upload (``POST /admin/import``, multipart, one file of at most
:data:`~backend.domain.imports.MAX_BYTES`) shows a preview: every row that would be created,
or every problem with its line. Nothing is written then. The preview's Confirm form carries
the uploaded bytes sealed with the server key, bound to this administrator's session
(:meth:`~backend.services.imports.ImportService.seal_upload`): the confirm re-parses exactly
what was previewed, the page never holds a token's secret in clear, and any node of a
cluster can take the confirm. Refusals (at preview or confirm) are audited.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from backend.domain.imports import MAX_BYTES
from backend.domain.stepup import ADMINISTRATOR
from backend.errors import BadRequest, ImportRefused
from backend.services.imports import KINDS, ImportPlan
from webportal.auth import SignedIn, require_admin
from webportal.csrf import read_form
from webportal.forms import field
from webportal.routing import page
from webportal.sessions import flash
from webportal.state import services_of
from webportal.templating import render

#: The upload form holds the file; the confirm form holds it sealed in base64 (4/3 larger).
UPLOAD_BYTES = MAX_BYTES + 64 * 1024
CONFIRM_BYTES = MAX_BYTES * 3 // 2 + 64 * 1024


async def _page(
    request: Request,
    kind: str = "users",
    skip_existing: bool = False,
    plan: ImportPlan | None = None,
    sealed: str = "",
    error: str = "",
    status: int = 200,
) -> Response:
    context: dict[str, Any] = {
        "kind": kind,
        "skip_existing": skip_existing,
        "plan": plan,
        "sealed": sealed,
        "error": error,
        "max_bytes": MAX_BYTES,
    }
    return await render(request, "admin/import.html", context, status=status)


async def _kind(request: Request) -> str:
    kind = await field(request, "kind", 16)
    if kind not in KINDS:
        raise BadRequest("choose users or tokens")
    return kind


async def import_page(request: Request) -> Response:
    """The upload form; a POST uploads a file and shows its preview (nothing written)."""
    me = await require_admin(request)
    if request.method == "GET":
        return await _page(request)
    kind = await _kind(request)
    skip_existing = await field(request, "skip_existing", 8) == "yes"
    upload = (await read_form(request)).get("file")
    if not isinstance(upload, UploadFile):
        return await _page(request, kind, skip_existing, error="Choose a CSV file.", status=400)
    data = await upload.read(MAX_BYTES + 1)
    await upload.close()
    if len(data) > MAX_BYTES:
        return await _page(
            request,
            kind,
            skip_existing,
            error=f"The file is larger than {MAX_BYTES} bytes: split it.",
            status=413,
        )
    imports = services_of(request).imports
    plan = (
        await imports.preview_users(data, skip_existing=skip_existing)
        if kind == "users"
        else await imports.preview_tokens(data)
    )
    if not plan.ok:
        await services_of(request).audit.record(
            me.actor,
            f"{kind[:-1]}.import",
            "refused",
            detail=f"preview: {len(plan.problems)} problem(s); first: {plan.problems[0]}"[:1024],
        )
        return await _page(request, kind, skip_existing, plan, status=400)
    sealed = imports.seal_upload(kind, data, _binding(me))
    return await _page(request, kind, skip_existing, plan, sealed)


async def confirm(request: Request) -> Response:
    """Write what the preview showed (the same bytes, re-checked in one transaction)."""
    me = await require_admin(request)
    kind = await _kind(request)
    skip_existing = await field(request, "skip_existing", 8) == "yes"
    imports = services_of(request).imports
    data = imports.open_upload(kind, await field(request, "upload", CONFIRM_BYTES), _binding(me))
    try:
        if kind == "users":
            plan = await imports.import_users(me.actor, data, skip_existing=skip_existing)
            done = f"{len(plan.users)} user(s) created, {len(plan.skipped)} skipped."
        else:
            plan = await imports.import_tokens(me.actor, ADMINISTRATOR, data)
            done = f"{len(plan.tokens)} hardware token(s) added."
    except ImportRefused:
        # Something changed since the preview (a name or serial taken meanwhile).
        plan = (
            await imports.preview_users(data, skip_existing=skip_existing)
            if kind == "users"
            else await imports.preview_tokens(data)
        )
        return await _page(
            request,
            kind,
            skip_existing,
            plan,
            error="Nothing was imported: the database changed since the preview.",
            status=409,
        )
    await flash(request, done, "success")
    return RedirectResponse("/admin/import", status_code=303)


def _binding(me: SignedIn) -> str:
    """What a sealed upload is bound to: this session of this administrator."""
    return f"{me.session.id_hash}:{me.user.id}"


routes = [
    page(
        "/import",
        import_page,
        methods=["GET", "POST"],
        name="admin_import",
        upload_bytes=UPLOAD_BYTES,
    ),
    page(
        "/import/confirm",
        confirm,
        methods=["POST"],
        name="admin_import_confirm",
        upload_bytes=CONFIRM_BYTES,
    ),
]
