"""``openmfa directory sync NAME`` and ``openmfa directory syncs NAME``.

The sync itself is :class:`backend.services.directory_sync.DirectorySyncService`; this module
shows its progress (on standard error: a line per page on a terminal, else every
:data:`PROGRESS_EVERY` seconds) and its summary. Exit status: 0 when done, 3 when the
threshold stopped it (nobody disabled), 1 when it failed. See docs/directory-sync.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from backend.cli.output import as_json, clean, print_listing, when

if TYPE_CHECKING:  # loaded when a command runs, not for ``--help``
    from backend.services import Services
    from backend.services.context import Actor
    from backend.services.directory_sync import SyncProgress, SyncReport

#: Seconds between progress lines when standard error is not a terminal (a log, a pipe).
PROGRESS_EVERY = 10.0
#: The exit status of a sync the threshold stopped.
EXIT_STOPPED = 3
_KINDS = ("created", "updated", "renamed", "disabled", "enabled", "clashes", "errors")


def register(cmds: Any) -> None:
    """Add ``sync`` and ``syncs`` to the ``openmfa directory`` subcommands ``cmds``."""
    sync = cmds.add_parser(
        "sync",
        help="sync the directory's users now",
        description="Read the directory and bring its users here up to date: create joiners, "
        "update and rename changed users (tied by objectGUID / entryUUID), disable leavers "
        "and disabled or expired accounts, enable those back. Local users are never touched. "
        "A sync that would disable more than the directory's threshold stops unless --force. "
        "Exit status 3 when stopped, 1 when it failed.",
    )
    sync.add_argument("name", help="the directory")
    sync.add_argument(
        "--dry-run", action="store_true", help="show what would change; write nothing"
    )
    sync.add_argument(
        "--force",
        action="store_true",
        help="disable even more users than the threshold allows (check the directory first)",
    )
    sync.add_argument("--verbose", action="store_true", help="list the names of the users changed")
    sync.add_argument("--json", action="store_true", help="print the report as JSON")
    sync.set_defaults(handler=directory_sync)
    syncs = cmds.add_parser(
        "syncs",
        help="the directory's recent syncs",
        description="The latest syncs and dry runs of a directory, newest first.",
    )
    syncs.add_argument("name", help="the directory")
    syncs.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    syncs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    syncs.set_defaults(handler=directory_syncs)


class _Progress:
    """Progress lines on standard error: each page on a terminal, else every few seconds."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._last = time.monotonic()
        self._started = self._last

    def __call__(self, progress: SyncProgress) -> None:
        now = time.monotonic()
        if not self._tty and now - self._last < PROGRESS_EVERY:
            return
        self._last = now
        line = (
            f"{clean(progress.directory)}: {progress.pages} pages, {progress.entries} users read"
            f" ({progress.created} new, {progress.updated} updated, {progress.renamed} renamed, "
            f"{progress.enabled} enabled, {progress.pending_disables} to disable, "
            f"{progress.errors} errors) {now - self._started:.0f} s"
        )
        if self._tty:
            print(f"\r{line}\x1b[K", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self._tty:
            print(file=sys.stderr, flush=True)


async def directory_sync(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    """``openmfa directory sync NAME [--dry-run] [--force] [--json] [--verbose]``."""
    from backend.errors import OpenMFAError, SyncStopped

    progress = _Progress()
    sync = services.directory_sync
    try:
        report = await sync.run(
            actor, args.name, dry_run=args.dry_run, force=args.force, progress=progress
        )
    except SyncStopped as exc:
        progress.done()
        stopped: SyncReport | None = exc.extra.get("report")
        if stopped is not None:
            _print(stopped, args)
        print(f"openmfa: error: {clean(exc.detail)}", file=sys.stderr)
        await services.audit.record(
            actor, "cli.refused", exc.type, detail=f"directory sync: {exc.detail}"
        )
        return EXIT_STOPPED
    except OpenMFAError:
        progress.done()
        raise  # printed and exit status 1 by the CLI's one error handler
    progress.done()
    _print(report, args)
    if report.state == "stopped":  # a dry run above the threshold
        print(f"openmfa: {clean(report.message)}", file=sys.stderr)
        return EXIT_STOPPED
    return 0


def _print(report: SyncReport, args: argparse.Namespace) -> None:
    if args.json:
        print(as_json({**asdict(report), "duration": report.duration}))
        return
    print(_summary(report))
    if args.verbose or report.dry_run or report.state == "stopped":
        print(_names(report))


def _summary(report: SyncReport) -> str:
    title = "dry run of" if report.dry_run else "sync of"
    lines = [
        f"{title} {clean(report.directory)}: {report.state} in {report.duration or 0:.1f} s",
        f"  created    {report.created}",
        f"  updated    {report.updated}",
        f"  renamed    {report.renamed}",
        f"  disabled   {report.disabled}",
        f"  enabled    {report.enabled}",
        f"  unchanged  {report.unchanged}",
        f"  errors     {report.errors}",
    ]
    invited = report.details.get("invited", 0)
    if invited:
        lines.append(f"  invited    {invited}")
    if report.state == "stopped":
        lines.append(f"  would disable {report.details.get('would_disable', 0)}")
    return "\n".join(lines)


def _names(report: SyncReport) -> str:
    out: list[str] = []
    for kind in _KINDS:
        names = report.details.get(kind) or []
        if not names:
            continue
        heading = "would disable" if kind == "disabled" and report.state == "stopped" else kind
        out.append(f"{heading}:")
        out += [f"  {clean(name)}" for name in names]
        total = _total(report, kind)
        if total > len(names):
            out.append(f"  ... and {total - len(names)} more")
    for name in report.details.get("dropped") or []:
        out.append(f"note: {clean(name)}")
    return "\n".join(out) if out else "no changes"


def _total(report: SyncReport, kind: str) -> int:
    """How many changes of ``kind`` there were (the report lists at most 200 names)."""
    if kind == "disabled" and report.state == "stopped":
        return int(report.details.get("would_disable", 0))
    if kind in ("clashes", "errors"):
        return int(report.details.get(f"{kind.removesuffix('es').removesuffix('s')}_count", 0))
    return int(getattr(report, kind))


async def directory_syncs(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    """``openmfa directory syncs NAME``: the history."""
    reports = await services.directory_sync.history(args.name, args.limit)
    return print_listing(
        args.json,
        reports,
        lambda r: {**asdict(r), "duration": r.duration},
        f"{clean(args.name)} has not been synced yet",
        [
            "STARTED",
            "BY",
            "KIND",
            "STATE",
            "SECONDS",
            "NEW",
            "UPD",
            "REN",
            "DIS",
            "ENA",
            "SAME",
            "ERR",
        ],
        lambda r: [
            when(r.started_at),
            r.actor,
            "dry run" if r.dry_run else "sync",
            r.state,
            "-" if r.duration is None else f"{r.duration:.1f}",
            r.created,
            r.updated,
            r.renamed,
            r.disabled,
            r.enabled,
            r.unchanged,
            r.errors,
        ],
    )
