"""``openmfa doctor`` and ``openmfa config show``: check the set-up, show the settings.

Both load the settings themselves (not through the shared ``_settings`` of main.py), so that
settings that do not load are a finding of the doctor rather than the end of the command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.cli.output import as_json, clean

if TYPE_CHECKING:
    from backend.doctor.checks import Finding


def add_parser(groups: Any) -> None:
    """Register ``openmfa doctor`` and ``openmfa config`` on the top-level subcommands."""
    doctor = groups.add_parser(
        "doctor",
        help="check the set-up: settings, database, key, ports, push, mail, clock",
        description="Check the whole set-up, one line per check: ok, warning or error with "
        "what to do. Changes nothing. Exit status 1 when any check is an error. Run it as "
        "the user the server runs as. See docs/operations.md, 'Checking the set-up'.",
    )
    doctor.add_argument("--json", action="store_true", help="print JSON instead of lines")
    doctor.set_defaults(doctor_handler=doctor_command)

    config = groups.add_parser(
        "config", help="the effective settings", description="The effective settings."
    )
    cmds = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = cmds.add_parser(
        "show",
        help="every setting with its value and source; secrets masked",
        description="Every setting with its effective value and where it came from "
        "(default, file PATH, environment VAR, option). Secrets are masked.",
    )
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show.set_defaults(doctor_handler=config_show)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"home": args.home}


def _source(args: argparse.Namespace, home: Path) -> str:
    from backend.doctor.settings_view import settings_file

    path, _ = settings_file(args.config, home)
    return f"file {path}" if path.is_file() else "defaults and environment; no settings file"


def doctor_command(args: argparse.Namespace) -> int:
    """Run every check and print the findings; 1 when any is an error."""
    from backend.config import load_settings
    from backend.doctor import checks
    from backend.doctor.gather import run_checks
    from backend.errors import ConfigurationError

    try:
        settings = load_settings(args.config, **_overrides(args))
    except ConfigurationError as exc:
        findings = [checks.check_settings("", str(exc))]
    else:
        import asyncio

        findings = asyncio.run(run_checks(settings, _source(args, settings.home)))
    _print(findings, args.json)
    return checks.exit_status(findings)


def _print(findings: list[Finding], json: bool) -> None:
    if json:
        print(
            as_json(
                [
                    {"check": f.check, "level": f.level, "message": f.message, "fix": f.fix}
                    for f in findings
                ]
            )
        )
        return
    width = max(len(f.check) for f in findings)
    for f in findings:
        print(f"{f.level:<7}  {f.check:<{width}}  {clean(f.message)}")
        if f.fix:
            print(f"{'':<7}  {'':<{width}}  fix: {clean(f.fix)}")
    errors = sum(f.level == "error" for f in findings)
    warnings = sum(f.level == "warning" for f in findings)
    print(f"{errors} error(s), {warnings} warning(s)", file=sys.stderr)


def config_show(args: argparse.Namespace) -> int:
    """Print the effective settings with their sources."""
    from backend.config import load_settings
    from backend.doctor.settings_view import describe

    settings = load_settings(args.config, **_overrides(args))
    options = {"home": "--home"} if args.home is not None else {}
    views = describe(settings, args.config, options)
    if args.json:
        print(
            as_json(
                [
                    {"name": v.name, "value": v.value, "source": v.source, "secret": v.secret}
                    for v in views
                ]
            )
        )
        return 0
    name_w = max(len(v.name) for v in views)
    value_w = min(48, max(len(v.value) for v in views))
    for v in views:
        print(f"{v.name:<{name_w}}  {clean(v.value):<{value_w}}  {v.source}")
    return 0
