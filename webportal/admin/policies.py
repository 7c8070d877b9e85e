"""``/admin/policies``: every policy key, globally; the same form edits a user's overrides
on the user's page (``/admin/users/<name>/policies``, see :mod:`webportal.admin.users`).

An empty field means "not set here": globally the built-in default applies, for a user the
global value does. Every key is validated before anything is stored, and a wrong value is
shown beside its field; stored changes go through :class:`PolicyService` (audited
``policy.set`` / ``policy.unset`` with the acting administrator).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from backend.domain import policy as policy_rules
from backend.services.context import Actor
from backend.services.policies import PolicyLine, PolicyService
from webportal.auth import require_admin
from webportal.forms import field
from webportal.routing import page
from webportal.sessions import flash
from webportal.state import services_of
from webportal.templating import render

#: Keys whose value is one of a few words: shown as a list to choose from.
CHOICES: dict[str, tuple[str, ...]] = {
    "number_matching_fallback": policy_rules.NUMBER_MATCHING_FALLBACKS,
}
#: The order and grouping of the form (keys not named here follow under "Other").
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Approvals", ("require_pin", "number_matching", "number_matching_fallback")),
    ("PIN", ("pin_min_length", "pin_max_failures", "pin_lockout_seconds")),
    ("Codes and lockout", ("otp_max_failures", "otp_lockout_seconds")),
    (
        "Push-fatigue guard",
        ("push_limit", "push_limit_window_seconds", "push_max_unanswered", "deny_limit_per_device"),
    ),
    ("Fraud", ("fraud_blocks_user",)),
    ("Lifetimes", ("activation_code_ttl_seconds", "challenge_ttl_seconds")),
    ("Directories", ("directory_invite_new_users",)),
)


@dataclass(frozen=True, slots=True)
class PolicyField:
    """One key as the form shows it."""

    key: str
    label: str
    description: str
    kind: str  # "bool", "choice" or "int"
    choices: tuple[str, ...]
    value: str  # what the field holds: the value stored in this scope, or "" (not set here)
    inherited: str  # the value that applies when the field is empty
    inherited_from: str  # "default" or "global"
    effective: str
    error: str = ""


def _kind(key: str) -> tuple[str, tuple[str, ...]]:
    default = policy_rules.KEYS[key].default
    if isinstance(default, bool):
        return "bool", ("true", "false")
    if key in CHOICES:
        return "choice", CHOICES[key]
    return "int", ()


#: How the form names each key (the key itself is shown beside it, as the CLI knows it).
LABELS: dict[str, str] = {
    "require_pin": "Require the PIN to approve",
    "number_matching": "Number matching",
    "number_matching_fallback": "Where the gateway cannot show the number",
    "pin_min_length": "Shortest PIN",
    "pin_max_failures": "Wrong PINs before lockout",
    "pin_lockout_seconds": "PIN lockout (seconds)",
    "otp_max_failures": "Wrong codes or passwords before lockout",
    "otp_lockout_seconds": "Code lockout (seconds)",
    "push_limit": "Pushes per user per window",
    "push_limit_window_seconds": "Window (seconds)",
    "push_max_unanswered": "Denied or unanswered pushes per window",
    "deny_limit_per_device": "Denies per device per window",
    "fraud_blocks_user": "A fraud report blocks the user",
    "activation_code_ttl_seconds": "Activation code lifetime (seconds)",
    "challenge_ttl_seconds": "Push answer time (seconds)",
    "directory_invite_new_users": "Invite users a directory sync creates (by e-mail)",
}


def _label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " ").capitalize())


def ordered_keys() -> list[str]:
    """Every key: those of :data:`GROUPS` in order, then any others by name."""
    named = [key for _, keys in GROUPS for key in keys if key in policy_rules.KEYS]
    return named + sorted(set(policy_rules.KEYS) - set(named))


def _default(key: str) -> str:
    value = policy_rules.KEYS[key].default
    return str(value).lower() if isinstance(value, bool) else str(value)


def build_fields(
    lines: list[PolicyLine],
    scope: str,
    inherited: list[PolicyLine] | None = None,
    submitted: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
) -> list[tuple[str, list[PolicyField]]]:
    """The form's fields, grouped. ``lines``: the values of ``scope`` (``global`` or
    ``user``) merged with what it inherits; ``inherited``: for a user, the global lines."""
    current = {line.key: line for line in lines}
    below = {line.key: line for line in inherited or []}
    fields: dict[str, PolicyField] = {}
    for key in ordered_keys():
        line = current[key]
        kind, choices = _kind(key)
        stored = line.value if line.source == scope else ""
        base = below.get(key)
        fields[key] = PolicyField(
            key=key,
            label=_label(key),
            description=line.description,
            kind=kind,
            choices=choices,
            value=(submitted or {}).get(key, stored),
            inherited=base.value if base is not None else _default(key),
            inherited_from=base.source if base is not None else "default",
            effective=line.value,
            error=(errors or {}).get(key, ""),
        )
    grouped = [(title, [fields[k] for k in keys if k in fields]) for title, keys in GROUPS]
    others = [fields[k] for k in ordered_keys() if not any(k in keys for _, keys in GROUPS)]
    if others:
        grouped.append(("Other", others))
    return grouped


async def read_policy_form(request: Request) -> dict[str, str]:
    """The submitted value of every key (trimmed; "" = not set here)."""
    return {key: (await field(request, f"policy_{key}", 64)).strip() for key in ordered_keys()}


def validate(submitted: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(canonical values of the non-empty fields, errors by key)."""
    values: dict[str, str] = {}
    errors: dict[str, str] = {}
    for key, raw in submitted.items():
        if raw == "":
            continue
        try:
            parsed = policy_rules.KEYS[key].parse(raw)
        except ValueError as exc:
            errors[key] = f"Not a valid value: {exc}."
            continue
        values[key] = str(parsed).lower() if isinstance(parsed, bool) else str(parsed)
    return values, errors


async def apply_changes(
    policies: PolicyService,
    actor: Actor,
    lines: list[PolicyLine],
    scope: str,
    values: Mapping[str, str],
    user_name: str | None = None,
) -> list[str]:
    """Store what changed in ``scope``: set new values, unset emptied ones. The keys changed."""
    changed = []
    for line in lines:
        stored = line.value if line.source == scope else None
        wanted = values.get(line.key)
        if wanted == stored:
            continue
        if wanted is None:
            await policies.unset(actor, line.key, user_name)
        else:
            await policies.set(actor, line.key, wanted, user_name)
        changed.append(line.key)
    return changed


def changed_message(changed: list[str], whose: str) -> str:
    if not changed:
        return "Nothing changed."
    return f"{whose} changed: {', '.join(changed)}."


async def policies(request: Request) -> Response:
    """GET: the global policies; POST: store the changed ones (all validated first)."""
    me = await require_admin(request)
    service = services_of(request).policies
    lines = await service.show()
    if request.method == "GET":
        return await render(
            request, "admin/policies.html", {"groups": build_fields(lines, "global")}
        )
    submitted = await read_policy_form(request)
    values, errors = validate(submitted)
    if errors:
        groups = build_fields(lines, "global", submitted=submitted, errors=errors)
        return await render(
            request,
            "admin/policies.html",
            {"groups": groups, "error": "Some values are not valid; see the marked fields."},
            400,
        )
    changed = await apply_changes(service, me.actor, lines, "global", values)
    await flash(request, changed_message(changed, "Global policy"), "success")
    return RedirectResponse("/admin/policies", status_code=303)


routes = [page("/policies", policies, methods=["GET", "POST"], name="admin_policies")]
