"""Commands that work on the database: users, activation, policies, tokens, audit."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from backend.cli.output import as_json, clean, table, when
from backend.domain.stepup import ADMINISTRATOR
from backend.errors import BadRequest

if TYPE_CHECKING:  # the services (SQLAlchemy, Alembic, ...) load only when a command runs,
    # so that ``--help`` and usage errors answer at once
    from backend.services import Services
    from backend.services.context import Actor

_DURATION = re.compile(r"([0-9]+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``90``, ``90s``, ``10m``, ``2h``, ``7d`` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 600, 10m, 2h or 7d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_since(text: str) -> datetime:
    """An ISO 8601 time (UTC if no zone) or a duration back from now (``1h``, ``7d``)."""
    if _DURATION.fullmatch(text.strip()):
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a time nor a duration") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def read_secret(what: str) -> str:
    """One line from standard input (never echoed, never an argument in the process list)."""
    line = sys.stdin.readline()
    secret = line.rstrip("\r\n")
    if not secret:
        raise BadRequest(f"no {what} on standard input")
    return secret


async def user_add(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    password = read_secret("password") if args.password_stdin else None
    user = await services.users.add(
        actor, args.name, args.email or "", args.display_name or "", password, args.admin
    )
    print(f"user {user.name} added" + (" (administrator)" if user.is_admin else ""))
    return 0


async def user_list(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    summaries = await services.users.list()
    if args.json:
        print(
            as_json(
                [
                    {
                        "name": s.user.name,
                        "display_name": s.user.display_name,
                        "email": s.user.email,
                        "state": s.user.state,
                        "admin": s.user.is_admin,
                        "active_devices": s.active_devices,
                        "pending_devices": s.pending_devices,
                        "last_sign_in": s.user.last_sign_in_at,
                    }
                    for s in summaries
                ]
            )
        )
        return 0
    if not summaries:
        print("no users yet; add one with `openmfa user add NAME`")
        return 0
    print(
        table(
            ["NAME", "STATE", "DEVICES", "LAST SIGN-IN", "E-MAIL", "DISPLAY NAME"],
            [
                [
                    s.user.name + (" (admin)" if s.user.is_admin else ""),
                    s.user.state,
                    f"{s.active_devices} active, {s.pending_devices} pending",
                    when(s.user.last_sign_in_at),
                    s.user.email or "-",
                    s.user.display_name or "-",
                ]
                for s in summaries
            ],
        )
    )
    return 0


async def user_show(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    user = await services.users.get(args.name)
    devices = await services.devices.list_for_user(args.name)
    print(
        f"name:          {clean(user.name)}\nstate:         {user.state}"
        + (f" ({clean(user.blocked_reason)})" if user.blocked else "")
        + f"\ndisplay name:  {clean(user.display_name or '-')}"
        f"\ne-mail:        {clean(user.email or '-')}"
        f"\nadministrator: {'yes' if user.is_admin else 'no'}"
        f"\npassword:      {'set' if user.has_password else 'not set'}"
        f"\nPIN:           {'set' if user.has_pin else 'not set'}"
        f"\nlast sign-in:  {when(user.last_sign_in_at)}\ncreated:       {when(user.created_at)}"
    )
    if user.otp_locked_until and user.otp_locked_until > services.clock():
        print(f"codes locked:  until {when(user.otp_locked_until)}")
    from backend.cli.guard import guard_lines

    print("\n".join(guard_lines(await services.challenges.guard_state(user.name))))
    print()
    if devices:
        print(
            table(
                ["DEVICE", "KIND", "NAME", "STATE", "ACTIVATED", "LAST USED", "DELIVERY"],
                [
                    [
                        d.id,
                        d.kind,
                        d.name,
                        d.state,
                        when(d.activated_at),
                        when(d.last_used_at),
                        d.push_summary,
                    ]
                    for d in devices
                ],
            )
        )
    else:
        print("no devices; create an activation with `openmfa activation create " + user.name + "`")
    return 0


async def user_state(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    access, name = services.access, args.name
    match args.user_command:
        case "disable":
            change = await access.disable(actor, name)
        case "enable":
            change = await access.enable(actor, name)
        case "block":
            change = await access.block(actor, name, args.reason or "")
        case _:
            change = await access.unblock(actor, name)
    user = change.user
    if change.cancelled:
        print(f"{change.cancelled} pending sign-in(s) of {user.name} cancelled")
    if change.sessions_ended:
        print(f"{change.sessions_ended} web session(s) of {user.name} ended")
    if change.reviewed:
        numbers = ", ".join(str(i) for i in change.reviewed)
        print(f"open fraud report(s) {numbers} of {user.name} marked reviewed")
    print(f"user {user.name} is now {user.state}")
    return 0


async def user_set_password(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    await services.users.refuse_directory_user(actor, args.name)  # before it is typed
    await services.users.set_password(actor, args.name, read_secret("password"))
    print(f"password of {args.name} changed")
    return 0


async def user_set_pin(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    await services.users.set_pin(actor, ADMINISTRATOR, args.name, read_secret("PIN"))
    print(f"PIN of {args.name} set")
    return 0


async def user_invite(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    offer = await services.invitations.create(actor, args.name, args.hours)
    print(offer.url)
    print(
        f"One-time link for {offer.user_name} to set a password in the portal; "
        f"it expires {when(offer.expires_at)}. Send it to them privately.",
        file=sys.stderr,
    )
    return 0


async def user_delete(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise BadRequest(f"deleting {args.name} needs --yes (or type the name on a terminal)")
        prompt = f"Delete {args.name} with their devices? Type the name to confirm: "
        import asyncio  # loaded already: every admin command runs under asyncio.run

        typed = await asyncio.to_thread(input, prompt)
        if typed.strip() != args.name:
            raise BadRequest(f"{args.name} not deleted: the name typed did not match")
    gone = await services.accounts.delete(actor, args.name)
    if gone.cancelled:
        print(f"{gone.cancelled} pending sign-in(s) of {gone.name} cancelled")
    print(
        f"user {gone.name} deleted with {gone.devices} device(s); "
        "the audit trail keeps their entries"
    )
    return 0


async def user_allow_enrolment(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    until = await services.factors.allow_enrolment(actor, args.name, args.hours)
    print(
        f"{args.name} may enrol a first authenticator in the portal until {when(until)} "
        "(while they have none in use)"
    )
    return 0


async def user_rename(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    user = await services.accounts.rename(actor, args.name, args.new_name)
    print(f"user {args.name} renamed to {user.name}")
    return 0


async def user_remove_device(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    await services.devices.remove(actor, ADMINISTRATOR, args.device_id, user_name=args.name)
    print(f"device {args.device_id} removed")
    return 0


def _write_qr(data: str, png: Path | None, svg: Path | None) -> None:
    from backend import qr

    if png is not None:
        qr.write_png(data, png)
        print(f"QR code written to {png}")
    if svg is not None:
        qr.write_svg(data, svg)
        print(f"QR code written to {svg}")
    if png is None and svg is None and sys.stdout.isatty():
        print(qr.terminal_text(data))


async def activation_create(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    from backend import qr

    for target in (args.qr_png, args.qr_svg):
        # Refuse before anything is created: an OATH secret is shown only once.
        if target is not None:
            qr.check_target(target)
    if args.oath:
        oath = await services.activation.enrol_oath(actor, ADMINISTRATOR, args.name)
        print(f"OATH token {oath.device_id} for {oath.user_name} (active now)")
        print(f"secret: {oath.seed}")
        print(f"uri:    {oath.uri}")
        print(
            "Scan it with Google Authenticator, Aegis, FreeOTP or any TOTP app. "
            "It is shown only now."
        )
        _write_qr(oath.uri, args.qr_png, args.qr_svg)
        return 0
    if args.privacyidea_app:
        pi = await services.pipush.create_enrollment(
            actor, ADMINISTRATOR, args.name, ttl_seconds=args.ttl
        )
        print(f"privacyIDEA Authenticator token {pi.device_id} for {pi.user_name}")
        print(f"serial:  {pi.serial}")
        print(f"uri:     {pi.uri}")
        print(f"expires: {when(pi.expires_at)} (single use; pending until the app rolls out)")
        print(
            "Scan it with the privacyIDEA Authenticator app. It polls only: open the app "
            "to see and answer a sign-in. For offline codes in the same app, also scan "
            f"`openmfa activation create {pi.user_name} --oath`."
        )
        _write_qr(pi.uri, args.qr_png, args.qr_svg)
        return 0
    offer = await services.activation.create_code(actor, ADMINISTRATOR, args.name, args.ttl)
    print(f"activation code for {offer.user_name}: {offer.code}")
    print(f"uri:     {offer.uri}")
    print(f"expires: {when(offer.expires_at)} (single use)")
    _write_qr(offer.uri, args.qr_png, args.qr_svg)
    return 0


async def policy_show(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    lines = await services.policies.show(args.user)
    if args.json:
        print(as_json([asdict(line) for line in lines]))
        return 0
    print(
        table(
            ["KEY", "VALUE", "FROM", "MEANING"],
            [[p.key, p.value, p.source, p.description] for p in lines],
        )
    )
    return 0


async def policy_set(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    value = await services.policies.set(actor, args.key, args.value, args.user)
    print(f"{args.key} = {value}" + (f" for {args.user}" if args.user else " (global)"))
    return 0


async def policy_unset(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    await services.policies.unset(actor, args.key, args.user)
    print(f"{args.key} reset" + (f" for {args.user}" if args.user else " to its default"))
    return 0


async def token_create(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    token = await services.tokens.create(actor, args.name, args.scope)
    print(token)
    print(
        f"API token {args.name} (scope {args.scope}) created; it is shown only now.",
        file=sys.stderr,
    )
    return 0


async def token_list(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    tokens = await services.tokens.list()
    print(
        table(
            ["NAME", "CREATED", "REVOKED", "SCOPE"],
            [[t.name, when(t.created_at), when(t.revoked_at), t.scope] for t in tokens],
        )
        if tokens
        else "no API tokens; create one with `openmfa token create NAME`"
    )
    return 0


async def token_revoke(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    await services.tokens.revoke(actor, args.name)
    print(f"API token {args.name} revoked")
    return 0


async def audit(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    entries = await services.audit.query(args.user, args.since, args.action, args.limit)
    if args.json:  # oldest first, like the table (and as ``--help`` says)
        print(as_json([asdict(e) for e in reversed(entries)]))
        return 0
    print(
        table(
            ["TIME", "ACTOR", "USER", "SOURCE", "ACTION", "RESULT", "DETAIL"],
            [
                [
                    when(e.at),
                    e.actor,
                    e.user_name or "-",
                    e.source or "-",
                    e.action,
                    e.result,
                    e.detail,
                ]
                for e in reversed(entries)
            ],
        )
    )
    return 0
