"""Admin console: API tokens for gateways and RADIUS bridges (create, list, revoke).

A token is shown once, in the answer to the form that created it; only its digest is stored
(:class:`~backend.services.tokens.ApiTokenService`), so it cannot be shown again.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from backend.domain.names import object_name
from backend.errors import BadRequest, Conflict, InvalidName, NotFound
from backend.services.tokens import SCOPES, check_scope
from webportal.auth import require_admin
from webportal.forms import field
from webportal.routing import page
from webportal.sessions import flash
from webportal.state import services_of
from webportal.templating import render


async def _page(
    request: Request, values: dict[str, str], errors: dict[str, str], status: int = 200
) -> Response:
    tokens = await services_of(request).tokens.list()
    context: dict[str, Any] = {
        "live": [t for t in tokens if t.revoked_at is None],
        "revoked": [t for t in tokens if t.revoked_at is not None],
        "values": values,
        "errors": errors,
        "scopes": SCOPES,
    }
    return await render(request, "admin/tokens.html", context, status=status)


async def tokens(request: Request) -> Response:
    """The list and the create form; creating shows the token once."""
    me = await require_admin(request)
    if request.method == "GET":
        return await _page(request, {"name": "", "scope": "bridge"}, {})
    values = {
        "name": (await field(request, "name", 64)).strip(),
        "scope": await field(request, "scope", 16),
    }
    errors: dict[str, str] = {}
    try:
        object_name(values["name"], "token")
    except InvalidName as exc:
        errors["name"] = exc.detail[:1].upper() + exc.detail[1:] + "."
    try:
        check_scope(values["scope"])
    except BadRequest as exc:
        errors["scope"] = str(exc)
    if not errors:
        try:
            token = await services_of(request).tokens.create(
                me.actor, values["name"], values["scope"]
            )
        except Conflict as exc:
            errors["name"] = exc.detail[:1].upper() + exc.detail[1:] + "."
        else:
            return await render(
                request,
                "admin/token_created.html",
                {"name": values["name"], "scope": values["scope"], "token": token},
            )
    await services_of(request).audit.record(
        me.actor,
        "token.create",
        "refused",
        detail=f"{values['name']}: {', '.join(sorted(errors))}"[:500],
    )
    return await _page(request, values, errors, status=400)


async def revoke(request: Request) -> Response:
    """Revoke a live token at once (the form asks for confirmation first)."""
    me = await require_admin(request)
    name = request.path_params["name"]
    try:
        await services_of(request).tokens.revoke(me.actor, name)
    except NotFound:
        await flash(request, f"There is no live token named {name}.", "error")
    else:
        await flash(request, f"Token {name} revoked: it stopped working.", "success")
    return RedirectResponse("/admin/tokens", status_code=303)


routes = [
    page("/tokens", tokens, methods=["GET", "POST"], name="admin_tokens"),
    page("/tokens/{name}/revoke", revoke, methods=["POST"], name="admin_token_revoke"),
]
