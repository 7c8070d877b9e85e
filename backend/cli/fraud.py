"""``openmfa fraud ...``: the fraud reports users filed, and marking them reviewed.

A report is filed when a user answers ``fraud`` in the app (or says "this wasn't me" in the
portal). By default it blocks the user; ``openmfa user unblock NAME`` lifts the block and marks
that user's open reports reviewed. See docs/operations.md, "Fraud reports".
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from backend.cli.output import as_json, table, when

if TYPE_CHECKING:  # loaded when a command runs, not for ``--help``
    from backend.services import Services
    from backend.services.context import Actor
    from backend.services.fraud import FraudReportView


def add_parser(groups: Any) -> None:
    """Register ``openmfa fraud`` on the top-level subcommands (``groups``)."""
    fraud = groups.add_parser(
        "fraud",
        help="fraud reports",
        description="Sign-ins users reported as not theirs, newest first.",
    )
    cmds = fraud.add_subparsers(dest="fraud_command", required=True, metavar="ACTION")
    ls = cmds.add_parser(
        "list",
        help="list fraud reports (open ones by default)",
        description="Fraud reports, newest first: who, when, from which gateway and address, "
        "with which device, and whether the e-mail to fraud_notify_to went out.",
    )
    ls.add_argument(
        "--state",
        choices=["open", "reviewed", "all"],
        default="open",
        help="which reports (default: open)",
    )
    ls.add_argument("--user", help="only this user's reports")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(handler=fraud_list)
    review = cmds.add_parser(
        "review",
        help="mark a report reviewed",
        description="Mark an open fraud report reviewed. The user stays blocked: "
        "`openmfa user unblock NAME` once the account is safe.",
    )
    review.add_argument("id", type=int, help="the report's number (from `openmfa fraud list`)")
    review.set_defaults(handler=fraud_review)


def _email(report: FraudReportView) -> str:
    if report.notify_state == "none":
        return "not set up"
    if report.notify_state == "sent":
        return f"sent {when(report.notified_at)}"
    tries = f" ({report.notify_attempts} attempt{'s' if report.notify_attempts != 1 else ''})"
    return report.notify_state + (tries if report.notify_attempts else "")


def _device(report: FraudReportView) -> str:
    if report.device_id is None:
        return "portal"
    return f"{report.device_name} ({report.device_id})" if report.device_name else report.device_id


async def fraud_list(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    reports = await services.fraud.list(args.state, args.user)
    if args.json:
        print(as_json([asdict(r) for r in reports]))
        return 0
    if not reports:
        what = "" if args.state == "all" else f"{args.state} "
        print(f"no {what}fraud reports" + (f" of {args.user}" if args.user else ""))
        return 0
    print(
        table(
            [
                "ID",
                "FILED",
                "USER",
                "STATE",
                "SIGN-IN",
                "GATEWAY",
                "CLIENT IP",
                "REPORTED WITH",
                "E-MAIL",
                "REVIEWED",
            ],
            [
                [
                    r.id,
                    when(r.created_at),
                    r.user_name + (" (blocked)" if r.user_blocked else ""),
                    r.state,
                    f"{r.challenge_id} ({r.challenge_state})"
                    if r.challenge_state
                    else r.challenge_id,
                    r.client_name or "-",
                    r.client_ip or "-",
                    _device(r),
                    _email(r),
                    f"{when(r.reviewed_at)} by {r.reviewed_by}" if r.reviewed_at else "-",
                ]
                for r in reports
            ],
        )
    )
    return 0


async def fraud_review(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    report = await services.fraud.review(actor, args.id)
    print(f"fraud report {report.id} of {report.user_name} marked reviewed")
    if report.user_blocked:
        print(
            f"{report.user_name} is still blocked; "
            f"`openmfa user unblock {report.user_name}` once the account is safe"
        )
    return 0
