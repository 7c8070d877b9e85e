"""``openmfa prune [--dry-run]``: one retention pass now, with the rows removed per table.

The same pass ``openmfa run`` makes every ``retention_interval_minutes`` (docs/operations.md,
"Retention"); ``--dry-run`` counts what would go and deletes nothing.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from backend.cli.output import as_json, table

if TYPE_CHECKING:  # loaded when a command runs, not for ``--help``
    from backend.services import Services
    from backend.services.context import Actor


def add_parser(groups: Any) -> None:
    """Register ``openmfa prune`` on the top-level subcommands (``groups``)."""
    prune = groups.add_parser(
        "prune",
        help="remove rows past their retention now",
        description="Delete finished sign-ins, audit events, expired codes, nonces, sessions "
        "and invitations, old account notices and directory sync reports past the retention "
        "settings, in small batches; print how many rows per table.",
    )
    prune.add_argument("--dry-run", action="store_true", help="only count what would be removed")
    prune.add_argument("--json", action="store_true", help="print JSON instead of a table")
    prune.set_defaults(handler=prune_now)


async def prune_now(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    """Run the pass and print the counts."""
    from backend.services.retention import Pruner

    pruner = Pruner.from_settings(services.db, services.audit, services.clock, services.settings)
    cutoffs = {c.table: c for c in pruner.plan()}
    counts = await pruner.run(actor, dry_run=args.dry_run)
    if args.json:
        print(as_json({"dry_run": args.dry_run, "rows": counts}))
        return 0

    def rule(name: str) -> str:
        cutoff = cutoffs[name]
        if cutoff.keep_last:
            return f"newest {cutoff.keep_last} per directory"
        return f"before {cutoff.before:%Y-%m-%d %H:%M} UTC" if cutoff.before else "kept for ever"

    verb = "would remove" if args.dry_run else "removed"
    print(table(["TABLE", "RULE", verb.upper()], [[n, rule(n), c] for n, c in counts.items()]))
    return 0
