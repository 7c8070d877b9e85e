"""``openmfa user import FILE`` and ``openmfa token import FILE``: CSV imports.

A file with any bad row is refused whole; the problems go to standard error, one line each
(never a secret key). ``--dry-run`` says what would be created and writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.cli.output import as_json, clean, table
from backend.domain.imports import MAX_BYTES
from backend.domain.stepup import ADMINISTRATOR
from backend.errors import ImportRefused, PayloadTooLarge

if TYPE_CHECKING:
    from backend.services import Services
    from backend.services.context import Actor
    from backend.services.imports import ImportPlan

JSON_HELP = "print JSON instead of a table"


def add_parsers(user_cmds: Any, token_cmds: Any) -> None:
    """Register ``user import`` and ``token import``."""
    users = user_cmds.add_parser(
        "import",
        help="add users from a CSV file (name,email,display_name,phone,admin)",
        description="Add users from a CSV file with the header name,email,display_name,"
        "phone,admin (name required, the others optional). Every row is checked first; a "
        "file with any bad row is refused whole and nothing is written.",
    )
    users.add_argument("file", type=Path, help="the CSV file (UTF-8, '-' for standard input)")
    users.add_argument("--dry-run", action="store_true", help="check and show; write nothing")
    users.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip rows whose user exists (default: such rows refuse the file)",
    )
    users.add_argument(
        "--invite",
        action="store_true",
        help="print a one-time portal invitation link for each user created",
    )
    users.add_argument("--json", action="store_true", help=JSON_HELP)
    users.set_defaults(handler=user_import)
    tokens = token_cmds.add_parser(
        "import",
        help="add hardware OATH tokens from a CSV file in Entra ID's layout",
        description="Add hardware TOTP tokens (SHA-1, 6 digits, 30 or 60 s) from a CSV file "
        "with the header upn,serial number,secret key,time interval,manufacturer,model. "
        "Each becomes an active device of kind oath of the user the upn names (user name, "
        "else e-mail address). A file with any bad row is refused whole.",
    )
    tokens.add_argument("file", type=Path, help="the CSV file (UTF-8, '-' for standard input)")
    tokens.add_argument("--dry-run", action="store_true", help="check and show; write nothing")
    tokens.add_argument("--json", action="store_true", help=JSON_HELP)
    tokens.set_defaults(handler=token_import)


def _read(path: Path) -> bytes:
    """The file's bytes, refusing more than the parsers take without reading it all."""
    if str(path) == "-":
        data = sys.stdin.buffer.read(MAX_BYTES + 1)
    else:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise PayloadTooLarge(f"the file is larger than {MAX_BYTES} bytes")
    return data


def _refused(exc: ImportRefused) -> None:
    for problem in exc.problems:
        print(f"openmfa: {clean(problem)}", file=sys.stderr)


async def user_import(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    """``openmfa user import FILE``."""
    data = _read(args.file)
    try:
        plan = await services.imports.import_users(
            actor, data, dry_run=args.dry_run, skip_existing=args.skip_existing
        )
    except ImportRefused as exc:
        _refused(exc)
        raise
    links: list[tuple[str, str]] = []
    if args.invite and not args.dry_run:
        for row in plan.users:
            offer = await services.invitations.create(actor, row.name)
            links.append((offer.user_name, offer.url))
    if args.json:
        print(as_json(_users_json(plan, links)))
        return 0
    _print_warnings(plan)
    if plan.users:
        print(
            table(
                ["LINE", "NAME", "E-MAIL", "DISPLAY NAME", "PHONE", "ADMIN"],
                [
                    [
                        r.line,
                        r.name,
                        r.email or "-",
                        r.display_name or "-",
                        r.phone or "-",
                        "yes" if r.admin else "no",
                    ]
                    for r in plan.users
                ],
            )
        )
    for row in plan.skipped:
        print(f"line {row.line}: {clean(row.name)} exists, skipped")
    verb = "would be created (dry run: nothing written)" if args.dry_run else "created"
    print(f"{len(plan.users)} user(s) {verb}, {len(plan.skipped)} skipped")
    if links:
        print(table(["USER", "INVITATION LINK (one-time; send privately)"], links))
    return 0


async def token_import(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    """``openmfa token import FILE``."""
    data = _read(args.file)
    try:
        plan = await services.imports.import_tokens(
            actor, ADMINISTRATOR, data, dry_run=args.dry_run
        )
    except ImportRefused as exc:
        _refused(exc)
        raise
    if args.json:
        print(
            as_json(
                {
                    "written": plan.written,
                    "tokens": [
                        {
                            "line": row.line,
                            "user": user,
                            "serial": row.serial,
                            "period": row.period,
                            "name": row.device_name,
                        }
                        for row, user in plan.tokens
                    ],
                    "warnings": [str(w) for w in plan.warnings],
                }
            )
        )
        return 0
    _print_warnings(plan)
    if plan.tokens:
        print(
            table(
                ["LINE", "USER", "SERIAL", "PERIOD", "NAME"],
                [
                    [row.line, user, row.serial, f"{row.period}s", row.device_name]
                    for row, user in plan.tokens
                ],
            )
        )
    verb = "would be created (dry run: nothing written)" if args.dry_run else "created"
    print(f"{len(plan.tokens)} token(s) {verb}")
    return 0


def _print_warnings(plan: ImportPlan) -> None:
    for warning in plan.warnings:
        print(f"warning: {clean(warning)}", file=sys.stderr)


def _users_json(plan: ImportPlan, links: list[tuple[str, str]]) -> object:
    invites = dict(links)
    return {
        "written": plan.written,
        "users": [
            {
                "line": r.line,
                "name": r.name,
                "email": r.email,
                "display_name": r.display_name,
                "phone": r.phone,
                "admin": r.admin,
                **({"invitation": invites[r.name]} if r.name in invites else {}),
            }
            for r in plan.users
        ],
        "skipped": [r.name for r in plan.skipped],
    }
