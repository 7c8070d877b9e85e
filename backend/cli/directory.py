"""``openmfa directory ...``: the AD / LDAP directories users come from.

The service account's password comes from standard input only (never the command line, where
the process list and the shell history would show it) and is never printed: ``show`` says only
that it is set. ``test`` connects, binds and counts the users the selection returns.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.cli.admin import read_secret
from backend.cli.output import as_json, clean, print_listing, when
from backend.directory.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DISABLE_MINIMUM,
    DEFAULT_DISABLE_PERCENT,
    DEFAULT_PAGE_SIZE,
    DEFAULT_SEARCH_TIMEOUT,
    DEFAULT_SYNC_INTERVAL,
    KINDS,
)

if TYPE_CHECKING:  # loaded when a command runs, not for ``--help``
    from backend.directory.reader import TestReport
    from backend.services import Services
    from backend.services.context import Actor
    from backend.services.directories import DirectoryView


def add_parser(groups: Any) -> Any:
    """Register ``openmfa directory`` on the top-level subcommands (``groups``); returns its
    subcommands, so that other modules (``directory sync``) can add theirs."""
    directory = groups.add_parser(
        "directory",
        help="AD / LDAP directories",
        description="Directories (Active Directory, OpenLDAP) that users come from, and whose "
        "passwords RADIUS clients and the portal can check. See docs/directory.md.",
    )
    cmds = directory.add_subparsers(dest="directory_command", required=True, metavar="ACTION")
    add = cmds.add_parser(
        "add",
        help="add a directory",
        description="Add a directory. The service account's password is read from standard "
        "input (--bind-password-stdin). Without --kind, the server is asked (connects).",
    )
    add.add_argument("name", help="1-64 letters, digits, . _ -; compared case-insensitively")
    _setting_options(add, new=True)
    add.set_defaults(handler=directory_add)

    change = cmds.add_parser(
        "set",
        help="change a directory",
        description="Change some settings; the others stay. A repeated --url replaces the "
        "whole list. An empty value (--filter '') removes a filter, group or attribute override.",
    )
    change.add_argument("name")
    _setting_options(change, new=False)
    change.set_defaults(handler=directory_set)

    ls = cmds.add_parser("list", help="list directories (no passwords)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(handler=directory_list)
    show = cmds.add_parser("show", help="every setting of one directory (no password)")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show.set_defaults(handler=directory_show)
    remove = cmds.add_parser(
        "remove", help="remove a directory (refused while users or RADIUS clients use it)"
    )
    remove.add_argument("name")
    remove.set_defaults(handler=directory_remove)
    test = cmds.add_parser(
        "test",
        help="connect, bind and count the users (exit status 1 on failure)",
        description="Connect to the first URL that answers, bind as the service account, "
        "read the root DSE and count the users and administrators the selection returns.",
    )
    test.add_argument("name")
    test.add_argument("--json", action="store_true", help="print JSON")
    test.set_defaults(handler=directory_test)
    return cmds


def _interval(text: str) -> int:
    from backend.directory.settings import parse_interval
    from backend.errors import InvalidDirectory

    try:
        return parse_interval(text)
    except InvalidDirectory as exc:
        raise argparse.ArgumentTypeError(exc.detail) from None


def _setting_options(cmd: argparse.ArgumentParser, new: bool) -> None:
    keep = "" if new else " (unchanged if not given)"
    cmd.add_argument(
        "--url",
        dest="urls",
        action="append",
        metavar="URL",
        required=new,
        help="ldaps://HOST[:PORT], or ldap://HOST[:PORT] (StartTLS, always); repeat for "
        "failover, tried in order",
    )
    cmd.add_argument(
        "--kind",
        choices=KINDS,
        help="ad (Active Directory, Samba AD) or ldap (OpenLDAP, 389-ds, ...)"
        + (" (default: ask the server)" if new else keep),
    )
    cas = cmd.add_mutually_exclusive_group()
    cas.add_argument(
        "--ca-file",
        type=Path,
        metavar="FILE",
        help="PEM file with the CA certificate(s) the servers' certificates chain to "
        "(default: the system's trust store); stored, so every node has it",
    )
    if not new:
        cas.add_argument(
            "--system-ca",
            action="store_true",
            help="forget the CA file: trust the system's store again",
        )
    cmd.add_argument("--bind-dn", metavar="DN", required=new, help="the service account's DN")
    cmd.add_argument(
        "--bind-password-stdin",
        action="store_true",
        required=new,
        help="read the service account's password from standard input"
        + ("" if new else " (changes it)"),
    )
    cmd.add_argument("--base-dn", metavar="DN", required=new, help="where users are searched")
    cmd.add_argument(
        "--filter",
        dest="user_filter",
        metavar="FILTER",
        help="extra LDAP filter users must match, in parentheses, e.g. '(department=Sales)'",
    )
    cmd.add_argument(
        "--group",
        dest="group_dn",
        metavar="DN",
        help="only (nested, in AD) members of this group are users",
    )
    cmd.add_argument(
        "--admin-group",
        dest="admin_group_dn",
        metavar="DN",
        help="(nested, in AD) members of this group become console administrators",
    )
    for field, what, ad, ldap in (
        ("name", "user name", "sAMAccountName", "uid"),
        ("email", "e-mail address", "mail", "mail"),
        ("display-name", "display name", "displayName", "displayName"),
        ("phone", "phone number", "telephoneNumber", "telephoneNumber"),
    ):
        cmd.add_argument(
            f"--{field}-attribute",
            metavar="ATTR",
            help=f"attribute holding the {what} (default {ad} in AD, {ldap} in LDAP)",
        )
    cmd.add_argument(
        "--connect-timeout",
        type=float,
        metavar="S",
        help=f"seconds to wait for a server to connect, 0.5-60 (default "
        f"{DEFAULT_CONNECT_TIMEOUT:g}); then the next URL is tried",
    )
    cmd.add_argument(
        "--search-timeout",
        type=float,
        metavar="S",
        help=f"seconds to wait for an answer, 1-600 (default {DEFAULT_SEARCH_TIMEOUT:g})",
    )
    cmd.add_argument(
        "--page-size",
        type=int,
        metavar="N",
        help=f"entries per page of a search, 1-1000 (default {DEFAULT_PAGE_SIZE})",
    )
    cmd.add_argument(
        "--interval",
        type=_interval,
        metavar="SECONDS|30m|1h",
        help=f"scheduled sync in `openmfa run`, 0 turns it off (default "
        f"{DEFAULT_SYNC_INTERVAL // 3600}h)",
    )
    cmd.add_argument(
        "--disable-threshold",
        type=int,
        metavar="PCT",
        help=f"a sync that would disable more than PCT%% of the directory's users stops and "
        f"asks for --force (default {DEFAULT_DISABLE_PERCENT})",
    )
    cmd.add_argument(
        "--disable-minimum",
        type=int,
        metavar="N",
        help=f"... if it would also disable at least N users (default {DEFAULT_DISABLE_MINIMUM})",
    )


def _ca_text(path: Path | None) -> str | None:
    if path is None:
        return None
    from backend.errors import InvalidDirectory

    try:
        return path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise InvalidDirectory(
            f"{path} is not a PEM file (give the CA certificate in PEM)"
        ) from None


async def directory_add(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    from backend.directory import settings as ds

    # Piped (``echo "$PW" | openmfa directory add ...``) like ``client add --secret-stdin``;
    # at a terminal asked for without echo rather than read from a line the screen shows.
    password = read_secret("bind password", ask_at_terminal=True)
    values: dict[str, Any] = {
        "name": args.name,
        "urls": tuple(args.urls),
        "bind_dn": args.bind_dn,
        "base_dn": args.base_dn,
        "kind": args.kind,
        "ca_pem": _ca_text(args.ca_file),
    }
    for key, value in _optional(args).items():
        values[key] = value
    view = await services.directories.add(actor, ds.DirectorySettings(**values), password)
    print(
        f"directory {view.name} added: {view.kind}, {len(view.urls)} URL"
        f"{'s' if len(view.urls) != 1 else ''}; check it with `openmfa directory test "
        f"{view.name}`"
    )
    return 0


def _optional(args: argparse.Namespace) -> dict[str, Any]:
    """The options both ``add`` and ``set`` take, those given only."""
    names = {
        "user_filter": "user_filter",
        "group_dn": "group_dn",
        "admin_group_dn": "admin_group_dn",
        "name_attribute": "name_attribute",
        "email_attribute": "email_attribute",
        "display_name_attribute": "display_name_attribute",
        "phone_attribute": "phone_attribute",
        "connect_timeout": "connect_timeout",
        "search_timeout": "search_timeout",
        "page_size": "page_size",
        "interval": "sync_interval",
        "disable_threshold": "disable_percent",
        "disable_minimum": "disable_minimum",
    }
    return {
        field: getattr(args, option)
        for option, field in names.items()
        if getattr(args, option) is not None
    }


async def directory_set(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    from backend.directory import settings as ds
    from backend.errors import BadRequest

    values = _optional(args)
    if args.urls is not None:
        values["urls"] = tuple(args.urls)
    for key in ("kind", "bind_dn", "base_dn"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.ca_file is not None:
        values["ca_pem"] = _ca_text(args.ca_file)
    elif args.system_ca:
        values["ca_pem"] = ""
    changes = ds.DirectoryChanges(**values)
    if changes.empty and not args.bind_password_stdin:
        raise BadRequest("nothing to change; give at least one option (see --help)")
    password = (
        read_secret("bind password", ask_at_terminal=True) if args.bind_password_stdin else None
    )
    before = await services.directories.get(args.name)
    view = await services.directories.update(actor, args.name, changes, password)
    if view.updated_at != before.updated_at:
        print(f"directory {view.name} changed")
    else:
        print(f"directory {view.name} unchanged")
    return 0


async def directory_remove(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    await services.directories.remove(actor, args.name)
    print(f"directory {args.name} removed")
    return 0


def describe(view: DirectoryView) -> dict[str, Any]:
    """Every setting as JSON; the bind password only as ``"set"``."""
    return {
        "name": view.name,
        "kind": view.kind,
        "urls": list(view.urls),
        "ca": [
            {"subject": c.subject, "not_after": c.not_after, "sha256": c.sha256} for c in view.ca
        ],
        "bind_dn": view.bind_dn,
        "bind_password": "set",
        "base_dn": view.base_dn,
        "filter": view.user_filter,
        "group": view.group_dn,
        "admin_group": view.admin_group_dn,
        "attributes": {
            "name": view.attributes.name,
            "email": view.attributes.email,
            "display_name": view.attributes.display_name,
            "phone": view.attributes.phone,
        },
        "connect_timeout": view.connect_timeout,
        "search_timeout": view.search_timeout,
        "page_size": view.page_size,
        "sync_interval": view.sync_interval,
        "disable_threshold": {"percent": view.disable_percent, "minimum": view.disable_minimum},
        "users": view.users,
        "radius_clients": view.radius_clients,
        "created_at": view.created_at,
        "updated_at": view.updated_at,
    }


def _interval_text(seconds: int) -> str:
    if seconds == 0:
        return "off"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def directory_list(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    views = await services.directories.list()
    return print_listing(
        args.json,
        views,
        describe,
        "no directories; add one with `openmfa directory add NAME --url ldaps://HOST "
        "--bind-dn DN --bind-password-stdin --base-dn DN`",
        ["NAME", "KIND", "URLS", "BASE DN", "GROUP", "USERS", "SYNC"],
        lambda v: [
            v.name,
            v.kind,
            ",".join(v.urls),
            v.base_dn,
            v.group_dn or "-",
            v.users,
            _interval_text(v.sync_interval),
        ],
    )


async def directory_show(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    v = await services.directories.get(args.name)
    if args.json:
        print(as_json(describe(v)))
        return 0
    ca = "the system's trust store"
    if v.ca:
        ca = "; ".join(f"{c.subject} (until {when(c.not_after)})" for c in v.ca)
    a = v.attributes
    rows = [
        ("name", v.name),
        ("kind", v.kind),
        ("urls", ", ".join(v.urls)),
        ("ca", ca),
        ("bind dn", v.bind_dn),
        ("bind password", "set"),
        ("base dn", v.base_dn),
        ("filter", v.user_filter or "-"),
        ("group", v.group_dn or "- (everyone under the base DN)"),
        ("admin group", v.admin_group_dn or "-"),
        (
            "attributes",
            f"name={a.name} email={a.email} display_name={a.display_name} phone={a.phone}",
        ),
        ("connect timeout", f"{v.connect_timeout:g} s"),
        ("search timeout", f"{v.search_timeout:g} s"),
        ("page size", str(v.page_size)),
        ("sync interval", _interval_text(v.sync_interval)),
        (
            "disable threshold",
            f"more than {v.disable_percent}% and at least {v.disable_minimum} users",
        ),
        ("users", str(v.users)),
        ("radius clients", str(v.radius_clients)),
        ("created", when(v.created_at)),
        ("changed", when(v.updated_at)),
    ]
    width = max(len(label) for label, _ in rows) + 2
    print("\n".join(f"{label + ':':<{width}}{clean(value)}" for label, value in rows))
    return 0


def _report(report: TestReport) -> dict[str, Any]:
    return {
        "url": report.url,
        "kind": report.kind,
        "vendor": report.vendor,
        "users": report.users,
        "admins": report.admins,
        "seconds": report.seconds,
    }


async def directory_test(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    view = await services.directories.get(args.name)
    report = await services.directories.test(actor, args.name)
    if args.json:
        print(as_json({"name": view.name, **_report(report)}))
    else:
        print(
            f"directory {view.name}: {report.url} answered ({report.vendor}); "
            f"{report.users} user{'s' if report.users != 1 else ''}, "
            f"{report.admins} admin{'s' if report.admins != 1 else ''}; {report.seconds:.2f} s"
        )
    if report.kind != view.kind:
        print(
            f"openmfa: warning: {view.name} is set up as kind {view.kind} but the server "
            f"looks like {report.kind}; fix it with `openmfa directory set {view.name} "
            f"--kind {report.kind}`",
            file=sys.stderr,
        )
    return 0
