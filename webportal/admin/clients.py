"""Admin console: RADIUS clients (list, add, edit, remove, test).

Every setting of ``openmfa client add/set`` is here, checked by the same domain rules
(:mod:`backend.domain.radius`) and stored by the same service
(:class:`~backend.services.radius_clients.RadiusClientService`). The form layer only splits the
text people type into the values those rules take, and runs the per-setting checks one field
at a time so that an error can be shown beside the field it is about; whatever only the whole
set can decide (``normalise``, a taken address) comes back from the service.

The shared secret is shown once, in the answer to the form that set it (added, or rotated),
and never again: edit pages have an empty "new secret" field, lists show its length only.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from backend.domain import radius
from backend.domain.names import object_name
from backend.errors import Conflict, InvalidName, InvalidRadiusClient
from backend.services.radius_clients import RadiusClientRecord
from backend.services.radius_status import probe_client
from radius_vocabulary.settings import (
    DEFAULT_PROMPT,
    DEFAULT_PUSH_TIMEOUT,
    FAILMODES,
    MAX_PROMPT_BYTES,
    MODES,
    NAME_FORMATS,
    NUMBER_MATCHING,
    PRIMARIES,
    PUSH_TIMEOUT,
    UNENROLLED,
)
from webportal.auth import SignedIn, require_admin
from webportal.csrf import read_form
from webportal.forms import field as form_field
from webportal.routing import page
from webportal.sessions import flash
from webportal.state import services_of
from webportal.templating import render

#: Bytes of randomness in a generated secret: 24 -> 32 URL-safe characters, printable ASCII
#: that every gateway accepts (docs/radius-clients.md recommends 32 characters or more).
GENERATED_SECRET_BYTES = 24
NO_SECRET = "Type the shared secret, or choose to have one generated."  # noqa: S105 - a message
NO_UPSTREAM_SECRET = "Primary radius needs the upstream server's secret."  # noqa: S105 - same
_CLI_FLAG = re.compile(r" \(--[a-z-]+\)")
_LIST_SPLIT = re.compile(r"[\s,]+")

#: Which form field a message of the domain rules is about (first match wins).
_FIELD_HINTS: tuple[tuple[str, str], ...] = (
    ("upstream server's secret", "upstream_secret"),
    ("upstream secret", "upstream_secret"),
    ("upstream timeout", "upstream_timeout"),
    ("upstream", "upstream"),
    ("exempt network", "exempt_networks"),
    ("exempt user", "exempt_users"),
    ("realm", "realm_map"),
    ("reply attribute", "reply_attributes"),
    ("push timeout", "push_timeout"),
    ("prompt", "prompt"),
    ("separator", "password_separator"),
    ("shared secret", "secret"),
    ("address", "addresses"),
    ("client named", "name"),
    ("directory", "directory"),
)


@dataclass
class ClientForm:
    """What the form holds, as typed (for re-display), and the errors per field."""

    values: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)
    generated_secret: str | None = None

    @property
    def error_summary(self) -> str:
        count = len(self.errors)
        return (
            ""
            if not count
            else f"Please correct the {count} field{'s' if count > 1 else ''} marked below."
        )


def _text(value: str) -> str:
    """Browsers send CRLF from a textarea; the rules (and the bridge) want LF."""
    return value.replace("\r\n", "\n").replace("\r", "\n")


def _lines(value: str) -> list[str]:
    return [line.strip() for line in _text(value).split("\n") if line.strip()]


def _items(value: str) -> list[str]:
    """A list typed one per line, or separated by commas or spaces (addresses, names)."""
    return [item for item in _LIST_SPLIT.split(value.strip()) if item]


def _message(exc: Exception) -> str:
    detail = getattr(exc, "detail", str(exc))
    text = _CLI_FLAG.sub("", str(detail))
    return text[:1].upper() + text[1:]


def field_of(message: str) -> str | None:
    """The form field a rule's message names, if any."""
    low = message.lower()
    for needle, name in _FIELD_HINTS:
        if needle in low:
            return name
    return None


def values_of(record: RadiusClientRecord) -> dict[str, str]:
    """The edit form's initial values (never a secret)."""
    up = record.upstream
    host = ""
    if up is not None:
        host = f"[{up.host}]:{up.port}" if ":" in up.host else f"{up.host}:{up.port}"
    return {
        "name": record.name,
        "addresses": "\n".join(record.addresses),
        "secret_choice": "keep",
        "mode": record.mode,
        "primary": record.primary,
        "upstream": host,
        "upstream_timeout": f"{up.timeout:g}" if up else "",
        "require_message_authenticator": "on" if record.require_message_authenticator else "",
        "failmode": record.failmode,
        "unenrolled": record.unenrolled,
        "push_timeout": f"{record.push_timeout:g}",
        "prompt": record.prompt,
        "name_format": record.name_format,
        "realm_map": "\n".join(f"{realm}={t}" for realm, t in record.realm_map),
        "exempt_users": "\n".join(record.exempt_users),
        "exempt_networks": "\n".join(record.exempt_networks),
        "password_separator": record.password_separator,
        "reply_attributes": "\n".join(f"{n}={v}" for n, v in record.reply_attributes),
        "number_matching": record.number_matching,
        "directory": record.directory or "",
    }


def default_values() -> dict[str, str]:
    """A new client's form: the CLI's defaults."""
    return {
        "name": "",
        "addresses": "",
        "secret_choice": "generate",
        "mode": "push",
        "primary": "none",
        "upstream": "",
        "upstream_timeout": f"{radius.DEFAULT_UPSTREAM_TIMEOUT:g}",
        "require_message_authenticator": "on",
        "failmode": "secure",
        "unenrolled": "reject",
        "push_timeout": f"{DEFAULT_PUSH_TIMEOUT:g}",
        "prompt": DEFAULT_PROMPT,
        "name_format": "strip",
        "realm_map": "",
        "exempt_users": "",
        "exempt_networks": "",
        "password_separator": radius.DEFAULT_SEPARATOR,
        "reply_attributes": "",
        "number_matching": "policy",
        "directory": "",
    }


_TEXT_FIELDS = (
    ("name", 64),
    ("addresses", 8192),
    ("secret_choice", 16),
    ("mode", 32),
    ("primary", 32),
    ("upstream", 300),
    ("upstream_timeout", 32),
    ("failmode", 32),
    ("unenrolled", 32),
    ("push_timeout", 32),
    ("prompt", 1024),
    ("name_format", 32),
    ("realm_map", 16384),
    ("exempt_users", 32768),
    ("exempt_networks", 8192),
    ("password_separator", 8),
    ("reply_attributes", 16384),
    ("number_matching", 32),
    ("directory", 64),
)


async def read_client_form(request: Request) -> tuple[dict[str, str], str, str]:
    """The posted values (secrets apart: they are never re-displayed)."""
    values = {name: await form_field(request, name, limit) for name, limit in _TEXT_FIELDS}
    form = await read_form(request)
    values["require_message_authenticator"] = (
        "on" if form.get("require_message_authenticator") else ""
    )
    secret = await form_field(request, "secret", 1024)
    upstream_secret = await form_field(request, "upstream_secret", 1024)
    return values, secret, upstream_secret


def _check(form: ClientForm, name: str, check: Callable[[], Any]) -> Any:
    """Run one rule for one field; record its message beside the field."""
    try:
        return check()
    except (InvalidRadiusClient, InvalidName) as exc:
        form.errors.setdefault(name, _message(exc))
        return None


def _seconds(text: str, limits: tuple[float, float], what: str) -> float | None:
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidRadiusClient(f"{what} is a number of seconds, not {text!r}") from None
    return radius.check_seconds(value, limits, what)


def build_changes(
    values: Mapping[str, str],
    secret: str,
    upstream_secret: str,
    current: RadiusClientRecord | None,
) -> tuple[radius.ClientChanges, ClientForm]:
    """The :class:`~backend.domain.radius.ClientChanges` of a submitted form (``current``:
    the client being edited, ``None`` for a new one), with per-field errors."""
    form = ClientForm(dict(values))
    new = current is None
    if new:
        _check(form, "name", lambda: object_name(values["name"], "client"))
    for key, choices in (
        ("mode", MODES),
        ("primary", PRIMARIES),
        ("failmode", FAILMODES),
        ("unenrolled", UNENROLLED),
        ("name_format", NAME_FORMATS),
        ("number_matching", NUMBER_MATCHING),
    ):
        _check(form, key, partial(radius.check_choice, values[key], choices, key))

    addresses = _items(values["addresses"])
    if not addresses:
        form.errors["addresses"] = "Give at least one address or network the client sends from."
    for text in addresses:
        _check(form, "addresses", partial(radius.parse_network, text))

    # New clients: generate (default) or enter. Existing ones: keep (default), enter or
    # generate a new one (rotation). A typed secret counts as "enter" whatever was chosen.
    choice = values.get("secret_choice") or ("generate" if new else "keep")
    new_secret: str | None = None
    if choice == "generate" and not secret:
        new_secret = form.generated_secret = secrets.token_urlsafe(GENERATED_SECRET_BYTES)
    elif secret or choice == "enter":
        if secret:
            new_secret = _check(form, "secret", lambda: radius.check_secret(secret))
        else:
            form.errors["secret"] = NO_SECRET
    elif new:
        form.errors["secret"] = NO_SECRET

    push_timeout = _check(
        form,
        "push_timeout",
        lambda: _seconds(values["push_timeout"], PUSH_TIMEOUT, "the push timeout"),
    )
    prompt = _text(values["prompt"])
    _check(form, "prompt", lambda: radius.check_prompt(prompt))
    _check(form, "password_separator", lambda: radius.check_separator(values["password_separator"]))

    upstream_host: str | None = None
    upstream_port: int | None = None
    upstream_timeout: float | None = None
    upstream_secret_value: str | None = None
    if values["primary"] == "radius":
        if values["upstream"].strip():
            parsed = _check(form, "upstream", lambda: radius.parse_host_port(values["upstream"]))
            if parsed is not None:
                upstream_host, upstream_port = parsed
        else:
            form.errors["upstream"] = "Primary radius needs the upstream server (HOST[:PORT])."
        upstream_timeout = _check(
            form,
            "upstream_timeout",
            lambda: _seconds(
                values["upstream_timeout"], radius.UPSTREAM_TIMEOUT, "the upstream timeout"
            ),
        )
        if upstream_secret:
            upstream_secret_value = _check(
                form,
                "upstream_secret",
                lambda: radius.check_secret(upstream_secret, "upstream secret"),
            )
        elif current is None or current.upstream is None:
            form.errors["upstream_secret"] = NO_UPSTREAM_SECRET

    directory: str | None = None
    if values["primary"] == "ldap":
        if values["directory"].strip():
            directory = _check(
                form, "directory", lambda: radius.check_directory(values["directory"].strip())
            )
        else:
            form.errors["directory"] = "Primary ldap needs the directory whose passwords it checks."

    realm_map: list[str] | None = None
    if values["name_format"] == "map":
        realm_map = _lines(values["realm_map"])
        if not realm_map:
            form.errors["realm_map"] = "User names map needs at least one REALM={user}... line."
        for line in realm_map:
            _check(form, "realm_map", partial(radius.parse_realm_map_entry, line))
    exempt_users = _items(values["exempt_users"])
    for name in exempt_users:
        _check(form, "exempt_users", partial(radius.check_exempt_user, name))
    exempt_networks = _items(values["exempt_networks"])
    for text in exempt_networks:
        _check(form, "exempt_networks", partial(radius.parse_network, text, "exempt network"))
    replies = _lines(values["reply_attributes"])
    for line in replies:
        _check(form, "reply_attributes", partial(radius.parse_reply_attribute, line))

    changes = radius.ClientChanges(
        addresses=addresses,
        secret=new_secret,
        mode=values["mode"],
        primary=values["primary"],
        upstream_host=upstream_host,
        upstream_port=upstream_port,
        upstream_timeout=upstream_timeout,
        upstream_secret=upstream_secret_value,
        require_message_authenticator=values["require_message_authenticator"] == "on",
        failmode=values["failmode"],
        unenrolled=values["unenrolled"],
        push_timeout=push_timeout,
        prompt=prompt,
        name_format=values["name_format"],
        realm_map=realm_map,
        exempt_users=exempt_users,
        exempt_networks=exempt_networks,
        password_separator=values["password_separator"],
        reply_attributes=replies,
        number_matching=values["number_matching"],
        directory=directory,
    )
    return changes, form


def warnings_for(record: RadiusClientRecord, changes: radius.ClientChanges) -> list[str]:
    """What an administrator should know about what was just stored (as the CLI warns)."""
    notes: list[str] = []
    for text in [*(changes.addresses or ()), *(changes.exempt_networks or ())]:
        if radius.host_bits_ignored(text):
            stored = radius.format_network(radius.parse_network(text))
            notes.append(f"{text} has host bits set; it is stored as {stored}.")
    if changes.secret is not None and record.secret_short:
        notes.append(
            f"The shared secret is short ({record.secret_bytes} bytes): use at least "
            f"{radius.SHORT_SECRET_CHARS} random characters, better 32."
        )
    if changes.upstream_secret is not None and record.upstream and record.upstream.secret_short:
        notes.append(f"The upstream secret is short ({record.upstream.secret_bytes} bytes).")
    if record.number_matching == "on" and record.mode == "push":
        notes.append(
            "Number matching is on in push mode, where the gateway cannot show the number: the "
            "policy number_matching_fallback decides what happens."
        )
    if not record.require_message_authenticator:
        notes.append(
            "Message-Authenticator is not required: a man in the middle can forge this "
            "client's answers (BlastRADIUS, CVE-2024-3596). Turn it back on as soon as the "
            "gateway sends it."
        )
    return notes


def _refusal(form: ClientForm, exc: InvalidRadiusClient | InvalidName | Conflict) -> None:
    message = _message(exc)
    where = field_of(message)
    if where is not None and (where in form.values or where in ("secret", "upstream_secret")):
        form.errors.setdefault(where, message)
    else:
        form.errors.setdefault("form", message)


def _context(form: ClientForm, record: RadiusClientRecord | None, **extra: Any) -> dict[str, Any]:
    return {
        "client": record,
        "values": form.values,
        "errors": form.errors,
        "error": form.error_summary,
        "choices": {
            "mode": MODES,
            "primary": PRIMARIES,
            "failmode": FAILMODES,
            "unenrolled": UNENROLLED,
            "name_format": NAME_FORMATS,
            "number_matching": NUMBER_MATCHING,
        },
        "limits": {
            "push": PUSH_TIMEOUT,
            "upstream": radius.UPSTREAM_TIMEOUT,
            "prompt": MAX_PROMPT_BYTES,
        },
        "test": None,
        **extra,
    }


async def _audit_refusal(request: Request, me: SignedIn, action: str, form: ClientForm) -> None:
    fields = ", ".join(sorted(k for k in form.errors if k != "form"))
    detail = f"{form.values.get('name', '')}: invalid {fields}" if fields else form.errors["form"]
    await services_of(request).audit.record(me.actor, action, "refused", detail=detail[:500])


# -- pages --------------------------------------------------------------------------------------


async def client_list(request: Request) -> Response:
    """Every client with its main settings (secrets by their length only)."""
    await require_admin(request)
    records = await services_of(request).radius_clients.list()
    return await render(request, "admin/clients.html", {"clients": records})


async def client_add(request: Request) -> Response:
    """The add form; on success the secret, once."""
    me = await require_admin(request)
    if request.method == "GET":
        return await render(
            request, "admin/client_form.html", _context(ClientForm(default_values()), None)
        )
    values, secret, upstream_secret = await read_client_form(request)
    changes, form = build_changes(values, secret, upstream_secret, None)
    if not form.errors:
        try:
            record = await services_of(request).radius_clients.add(
                me.actor, values["name"], changes
            )
        except (InvalidRadiusClient, InvalidName, Conflict) as exc:
            _refusal(form, exc)
        else:
            return await render(
                request,
                "admin/client_secret.html",
                {
                    "client": record,
                    "secret": changes.secret,
                    "generated": form.generated_secret is not None,
                    "added": True,
                    "warnings": warnings_for(record, changes),
                },
            )
    await _audit_refusal(request, me, "radius_client.add", form)
    return await render(request, "admin/client_form.html", _context(form, None), status=400)


async def client_edit(request: Request) -> Response:
    """The edit form (every setting but the secrets, which can only be replaced)."""
    me = await require_admin(request)
    services = services_of(request)
    record = await services.radius_clients.get(request.path_params["name"])
    if request.method == "GET":
        return await render(
            request, "admin/client_form.html", _context(ClientForm(values_of(record)), record)
        )
    values, secret, upstream_secret = await read_client_form(request)
    values["name"] = record.name
    changes, form = build_changes(values, secret, upstream_secret, record)
    if not form.errors:
        try:
            updated, changed = await services.radius_clients.update(me.actor, record.name, changes)
        except (InvalidRadiusClient, InvalidName, Conflict) as exc:
            _refusal(form, exc)
        else:
            notes = warnings_for(updated, changes)
            if form.generated_secret is not None:
                return await render(
                    request,
                    "admin/client_secret.html",
                    {
                        "client": updated,
                        "secret": form.generated_secret,
                        "generated": True,
                        "added": False,
                        "warnings": notes,
                    },
                )
            if changed:
                await flash(request, f"{updated.name} changed: {', '.join(changed)}.", "success")
            else:
                await flash(request, f"{updated.name} unchanged.", "info")
            for note in notes:
                await flash(request, note, "warning")
            return RedirectResponse(f"/admin/clients/{updated.name}/edit", status_code=303)
    await _audit_refusal(request, me, "radius_client.update", form)
    return await render(request, "admin/client_form.html", _context(form, record), status=400)


async def client_remove(request: Request) -> Response:
    """Remove a client (the form asks for confirmation first)."""
    me = await require_admin(request)
    services = services_of(request)
    record = await services.radius_clients.get(request.path_params["name"])
    await services.radius_clients.remove(me.actor, record.name)
    await flash(request, f"RADIUS client {record.name} removed.", "success")
    return RedirectResponse("/admin/clients", status_code=303)


async def client_test(request: Request) -> Response:
    """Status-Server to this server's bridge with the client's secret; the edit page with
    the answer (bounded by :data:`backend.services.radius_status.TIMEOUT_SECONDS`)."""
    me = await require_admin(request)
    services = services_of(request)
    record = await services.radius_clients.get(request.path_params["name"])
    result = await probe_client(services.settings, services.radius_clients, record.name)
    rtt = "" if result.round_trip_ms is None else f" rtt={result.round_trip_ms:.1f}ms"
    await services.audit.record(
        me.actor, "radius_client.test", result.outcome, detail=f"{record.name}{rtt}"
    )
    context = _context(ClientForm(values_of(record)), record, test=result)
    return await render(request, "admin/client_form.html", context)


routes = [
    page("/clients", client_list, name="admin_clients"),
    page("/clients/new", client_add, methods=["GET", "POST"], name="admin_client_add"),
    page("/clients/{name}/edit", client_edit, methods=["GET", "POST"], name="admin_client_edit"),
    page("/clients/{name}/remove", client_remove, methods=["POST"], name="admin_client_remove"),
    page("/clients/{name}/test", client_test, methods=["POST"], name="admin_client_test"),
]
