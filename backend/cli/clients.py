"""``openmfa client ...``: the RADIUS clients (gateways) the bridge answers.

Shared secrets come from standard input or a file, never from the command line (where the
process list and the shell history would show them), and are never printed: ``show`` says
only how long they are. Changes reach running bridges within one poll of the clients document.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backend.cli.admin import read_secret
from backend.cli.output import as_json, clean, print_listing, when
from backend.domain import radius
from backend.errors import BadRequest
from radius_vocabulary.settings import (
    DEFAULT_PUSH_TIMEOUT,
    FAILMODES,
    MODES,
    NAME_FORMATS,
    NUMBER_MATCHING,
    PRIMARIES,
    PUSH_TIMEOUT,
    UNENROLLED,
)

if TYPE_CHECKING:  # loaded when a command runs, not for ``--help``
    from backend.services import Services
    from backend.services.context import Actor
    from backend.services.radius_clients import RadiusClientRecord

# (option dest, what it clears) for ``client set --clear-...``
_CLEARABLE = (
    ("exempt_users", "exempt users"),
    ("exempt_networks", "exempt networks"),
    ("reply_attributes", "reply attributes"),
)


def add_parser(groups: Any) -> None:
    """Register ``openmfa client`` on the top-level subcommands (``groups``)."""
    client = groups.add_parser(
        "client",
        help="RADIUS clients (gateways)",
        description="The gateways (RADIUS clients) the bridge answers: address, shared secret, "
        "mode and primary authentication. See docs/radius-clients.md.",
    )
    cmds = client.add_subparsers(dest="client_command", required=True, metavar="ACTION")
    add = cmds.add_parser(
        "add",
        help="add a RADIUS client",
        description="Add a RADIUS client. The shared secret is read from standard input.",
    )
    add.add_argument("name", help="1-64 letters, digits, . _ -; compared case-insensitively")
    _setting_options(add, new=True)
    add.set_defaults(handler=client_add, usage_check=_add_usage)

    change = cmds.add_parser(
        "set",
        help="change a RADIUS client",
        description="Change some settings of a RADIUS client; the others stay. A repeated "
        "option (--address, --exempt-user, ...) replaces that whole list. --secret-stdin "
        "rotates the shared secret.",
    )
    change.add_argument("name")
    _setting_options(change, new=False)
    change.set_defaults(handler=client_set)

    ls = cmds.add_parser("list", help="list RADIUS clients (no secrets)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(handler=client_list)
    show = cmds.add_parser("show", help="every setting of one client (no secrets)")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show.set_defaults(handler=client_show)
    remove = cmds.add_parser("remove", help="remove a RADIUS client")
    remove.add_argument("name")
    remove.set_defaults(handler=client_remove)


def _add_usage(args: argparse.Namespace) -> str | None:
    """What ``client add`` needs besides its name: a RadSec client (identified by its
    certificate, secret fixed by RFC 6614) needs neither an address nor a secret."""
    if args.radsec or args.cert_fingerprints:
        return None
    missing = [
        option
        for option, given in (("--address", args.addresses), ("--secret-stdin", args.secret_stdin))
        if not given
    ]
    if missing:
        return f"the following arguments are required: {', '.join(missing)}"
    return None


def _setting_options(cmd: argparse.ArgumentParser, new: bool) -> None:
    keep = "" if new else " (unchanged if not given)"
    cmd.add_argument(
        "--address",
        dest="addresses",
        action="append",
        metavar="CIDR",
        help="address or network the client sends from, e.g. 10.0.0.0/24 (repeatable; "
        "required, except for a RadSec client, which may then connect from anywhere)",
    )
    cmd.add_argument(
        "--secret-stdin",
        action="store_true",
        help="read the shared secret from standard input"
        + ("" if new else " (rotates it)")
        + " (required, except for a RadSec client: RadSec uses the fixed secret 'radsec')",
    )
    radsec = cmd.add_mutually_exclusive_group()
    radsec.add_argument(
        "--radsec",
        action="store_true",
        help="the client also (or only) connects over RadSec (RADIUS over TLS, TCP 2083); "
        "give its certificate with --cert-fingerprint",
    )
    if not new:
        radsec.add_argument(
            "--no-radsec",
            action="store_true",
            help="unbind every certificate: UDP only (needs a shared secret)",
        )
    cmd.add_argument(
        "--cert-fingerprint",
        dest="cert_fingerprints",
        action="append",
        metavar="SHA256:AB:CD:...",
        help="SHA-256 fingerprint of the client certificate bound to this client "
        "(openssl x509 -noout -fingerprint -sha256 -in gateway.pem); repeatable, "
        "replaces the list",
    )
    cmd.add_argument(
        "--mode",
        choices=MODES,
        help="push: hold the request until the phone answers; challenge: ask "
        "'approve or type the code'; otp: always ask for the code"
        + (" (default push)" if new else keep),
    )
    cmd.add_argument(
        "--primary",
        choices=PRIMARIES,
        help="who checks the password: none (the gateway did), local (OpenMFA), radius "
        "(an upstream server), ldap (a bind to --directory)" + (" (default none)" if new else keep),
    )
    cmd.add_argument(
        "--directory",
        metavar="NAME",
        help="primary ldap: the directory (openmfa directory list) whose passwords it checks",
    )
    cmd.add_argument(
        "--upstream", metavar="HOST[:PORT]", help="upstream RADIUS server for primary radius"
    )
    cmd.add_argument(
        "--upstream-secret-file",
        type=Path,
        metavar="FILE",
        help="file whose first line is the upstream server's secret",
    )
    cmd.add_argument(
        "--upstream-timeout",
        type=float,
        metavar="S",
        help="seconds to wait for the upstream server, 1-60 "
        f"(default {radius.DEFAULT_UPSTREAM_TIMEOUT:g})",
    )
    cmd.add_argument(
        "--require-message-authenticator",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="drop requests without a valid Message-Authenticator (default: required; "
        "turning it off exposes the client to BlastRADIUS, and lets anyone who spoofs an "
        "address of the client make the bridge send a push and reflect about 4.6-5.3 times "
        "the bytes, up to 13.5 with a 253-byte prompt, to that address)",
    )
    cmd.add_argument(
        "--failmode",
        choices=FAILMODES,
        help="backend unreachable: secure rejects, safe accepts on the primary "
        "authentication alone" + (" (default secure)" if new else keep),
    )
    cmd.add_argument(
        "--unenrolled",
        choices=UNENROLLED,
        help="users with no device or token: reject, or allow in on the primary "
        "authentication" + (" (default reject)" if new else keep),
    )
    cmd.add_argument(
        "--push-timeout",
        type=float,
        metavar="S",
        help=f"seconds to wait for the phone, {PUSH_TIMEOUT[0]:g}-"
        f"{PUSH_TIMEOUT[1]:g} (default {DEFAULT_PUSH_TIMEOUT:g}); keep it "
        "below the gateway's own RADIUS timeout",
    )
    cmd.add_argument("--prompt", metavar="TEXT", help="Reply-Message of a challenge (<= 253 bytes)")
    cmd.add_argument(
        "--user-names",
        dest="name_format",
        choices=NAME_FORMATS,
        help="CONTOSO\\alice and alice@contoso.com: strip the domain, keep the name as sent, "
        "or map realms with --realm-map" + (" (default strip)" if new else keep),
    )
    cmd.add_argument(
        "--realm-map",
        action="append",
        metavar="REALM=TEMPLATE",
        help="with --user-names map: e.g. partner.example={user}.partner (repeatable)",
    )
    users = cmd.add_mutually_exclusive_group()
    users.add_argument(
        "--exempt-user",
        dest="exempt_users",
        action="append",
        metavar="NAME",
        help="user who skips the second factor, e.g. a service account (repeatable; audited)",
    )
    networks = cmd.add_mutually_exclusive_group()
    networks.add_argument(
        "--exempt-network",
        dest="exempt_networks",
        action="append",
        metavar="CIDR",
        help="Calling-Station-Id network that skips the second factor (repeatable; audited)",
    )
    cmd.add_argument(
        "--separator",
        metavar="C",
        help=f"character between password and code in one field (default "
        f"{radius.DEFAULT_SEPARATOR!r})",
    )
    cmd.add_argument(
        "--number-matching",
        choices=NUMBER_MATCHING,
        help="number matching for this gateway: policy (the user's policy decides), on, or off "
        "(e.g. RD Gateway in push mode, which cannot show the number)"
        + (" (default policy)" if new else keep),
    )
    replies = cmd.add_mutually_exclusive_group()
    replies.add_argument(
        "--reply-attribute",
        dest="reply_attributes",
        action="append",
        metavar="NAME=VALUE",
        help="attribute added to every Access-Accept, e.g. Filter-Id=vpn-users (repeatable)",
    )
    if not new:
        for (dest, what), group in zip(_CLEARABLE, (users, networks, replies), strict=True):
            group.add_argument(
                f"--clear-{dest.replace('_', '-')}",
                dest=f"clear_{dest}",
                action="store_true",
                help=f"remove all {what}",
            )


def _read_file_secret(path: Path) -> str:
    with path.open(encoding="utf-8") as handle:
        secret = handle.readline().rstrip("\r\n")
    if not secret:
        raise BadRequest(f"no upstream secret on the first line of {path}")
    return secret


def _changes(args: argparse.Namespace) -> radius.ClientChanges:
    upstream_host: str | None = None
    upstream_port: int | None = None
    if args.upstream is not None:
        upstream_host, upstream_port = radius.parse_host_port(args.upstream)

    def listed(dest: str) -> list[str] | None:
        if getattr(args, f"clear_{dest}", False):
            return []
        value: list[str] | None = getattr(args, dest)
        return value

    return radius.ClientChanges(
        addresses=args.addresses,
        secret=read_secret("shared secret") if args.secret_stdin else None,
        mode=args.mode,
        primary=args.primary,
        upstream_host=upstream_host,
        upstream_port=upstream_port,
        upstream_timeout=args.upstream_timeout,
        upstream_secret=None
        if args.upstream_secret_file is None
        else _read_file_secret(args.upstream_secret_file),
        require_message_authenticator=args.require_message_authenticator,
        failmode=args.failmode,
        unenrolled=args.unenrolled,
        push_timeout=args.push_timeout,
        prompt=args.prompt,
        name_format=args.name_format,
        realm_map=args.realm_map,
        exempt_users=listed("exempt_users"),
        exempt_networks=listed("exempt_networks"),
        password_separator=args.separator,
        reply_attributes=listed("reply_attributes"),
        number_matching=args.number_matching,
        directory=args.directory,
        radsec_fingerprints=_radsec(args),
    )


def _radsec(args: argparse.Namespace) -> list[str] | None:
    if getattr(args, "no_radsec", False):
        if args.cert_fingerprints:
            raise BadRequest("--no-radsec unbinds the certificates; leave out --cert-fingerprint")
        return []
    if args.radsec and not args.cert_fingerprints:
        raise BadRequest(
            "--radsec needs the client's certificate: --cert-fingerprint SHA256:AB:CD:..."
        )
    fingerprints: list[str] | None = args.cert_fingerprints
    return fingerprints


def _warn(message: str) -> None:
    print(f"openmfa: warning: {clean(message)}", file=sys.stderr)


def _warnings(
    record: RadiusClientRecord, changes: radius.ClientChanges, changed: set[str] | None
) -> None:
    """What an operator should know about what was just stored (on stderr)."""
    for text in [*(changes.addresses or ()), *(changes.exempt_networks or ())]:
        if radius.host_bits_ignored(text):
            print(
                f"openmfa: note: {text} has host bits set; it is taken as "
                f"{radius.format_network(radius.parse_network(text))}",
                file=sys.stderr,
            )
    if changes.secret is not None and record.secret_short:
        _warn(
            f"the shared secret of {record.name} is short ({record.secret_bytes} bytes); "
            f"use at least {radius.SHORT_SECRET_CHARS} random characters, better 32"
        )
    if changes.upstream_secret is not None and record.upstream and record.upstream.secret_short:
        size = record.upstream.secret_bytes
        _warn(f"the upstream secret of {record.name} is short ({size} bytes)")
    touched = changed is None or bool({"number_matching", "mode"} & changed)
    if touched and record.number_matching == "on" and record.mode == "push":
        _warn(
            f"{record.name} is in push mode, where the gateway cannot show the number: the "
            "policy number_matching_fallback decides (refuse, the default, refuses its push "
            "sign-ins; approve lets them through without a number). See docs/security.md."
        )
    turned_off = changed is None or "require_message_authenticator" in changed
    if turned_off and not record.require_message_authenticator:
        _warn(
            f"{record.name} accepts requests without Message-Authenticator: a man in the "
            "middle can forge its answers (BlastRADIUS, CVE-2024-3596), and a spoofed "
            "source in its addresses can start pushes and have the bridge reflect ~5 times "
            "the bytes at it. Turn it back on (--require-message-authenticator) as soon as "
            "the gateway sends it."
        )


async def client_add(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    changes = _changes(args)
    record = await services.radius_clients.add(actor, args.name, changes)
    count = len(record.addresses)
    print(
        f"RADIUS client {record.name} added: mode {record.mode}, primary {record.primary}"
        + (f" (directory {record.directory})" if record.directory else "")
        + f", {count} address{'es' if count != 1 else ''}"
    )
    if record.mode != "otp":
        print(
            f"Set the gateway's RADIUS timeout above the push timeout "
            f"({record.push_timeout:g} s), e.g. to {int(record.push_timeout) + 5} s or more."
        )
    _warnings(record, changes, None)
    return 0


async def client_set(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    changes = _changes(args)
    if changes.empty:
        raise BadRequest("nothing to change; give at least one option (see --help)")
    record, changed = await services.radius_clients.update(actor, args.name, changes)
    if changed:
        print(f"RADIUS client {record.name} changed: {', '.join(changed)}")
    else:
        print(f"RADIUS client {record.name} unchanged")
    _warnings(record, changes, set(changed))
    return 0


async def client_remove(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    await services.radius_clients.remove(actor, args.name)
    print(f"RADIUS client {args.name} removed")
    return 0


def _secret(size: int, short: bool) -> dict[str, Any]:
    return {"set": size > 0, "bytes": size, "short": short}


def describe(record: RadiusClientRecord) -> dict[str, Any]:
    """Every setting as JSON, secrets only as ``{"set", "bytes", "short"}``."""
    up = record.upstream
    return {
        "name": record.name,
        "addresses": list(record.addresses),
        "secret": _secret(record.secret_bytes, record.secret_short),
        "mode": record.mode,
        "primary": record.primary,
        "upstream": None
        if up is None
        else {
            "host": up.host,
            "port": up.port,
            "timeout": up.timeout,
            "secret": _secret(up.secret_bytes, up.secret_short),
        },
        "require_message_authenticator": record.require_message_authenticator,
        "failmode": record.failmode,
        "unenrolled": record.unenrolled,
        "push_timeout": record.push_timeout,
        "prompt": record.prompt,
        "user_names": {"format": record.name_format, "realm_map": dict(record.realm_map)},
        "exempt_users": list(record.exempt_users),
        "exempt_networks": list(record.exempt_networks),
        "password_separator": record.password_separator,
        "reply_attributes": [list(pair) for pair in record.reply_attributes],
        "number_matching": record.number_matching,
        "directory": record.directory,
        "radsec": {"fingerprints": list(record.radsec_fingerprints)}
        if record.radsec_fingerprints
        else None,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


async def client_list(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    records = await services.radius_clients.list()
    return print_listing(
        args.json,
        records,
        describe,
        "no RADIUS clients; add one with `openmfa client add NAME --address CIDR --secret-stdin`",
        ["NAME", "ADDRESSES", "MODE", "PRIMARY", "FAILMODE", "UNENROLLED", "MSG-AUTH"],
        lambda r: [
            r.name,
            ",".join(r.addresses),
            r.mode,
            f"{r.primary} ({r.directory})" if r.directory else r.primary,
            r.failmode,
            r.unenrolled,
            "required" if r.require_message_authenticator else "OFF",
        ],
    )


def _number_matching_text(record: RadiusClientRecord) -> str:
    if record.number_matching == "policy":
        return "policy (the user's policy decides)"
    if record.number_matching == "on" and record.mode == "push":
        return "on (push mode cannot show the number: number_matching_fallback applies)"
    return record.number_matching


def _secret_text(size: int, short: bool) -> str:
    return f"set ({size} bytes{', short' if short else ''})"


async def client_show(services: Services, args: argparse.Namespace, actor: Actor) -> int:
    r = await services.radius_clients.get(args.name)
    if args.json:
        print(as_json(describe(r)))
        return 0
    upstream = "-"
    if r.upstream is not None:
        host = f"[{r.upstream.host}]" if ":" in r.upstream.host else r.upstream.host
        upstream = (
            f"{host}:{r.upstream.port}, timeout {r.upstream.timeout:g} s, secret "
            + _secret_text(r.upstream.secret_bytes, r.upstream.secret_short)
        )
    names = r.name_format
    if r.realm_map:
        names += " (" + ", ".join(f"{realm} -> {t}" for realm, t in r.realm_map) + ")"
    rows = [
        ("name", r.name),
        ("addresses", ", ".join(r.addresses)),
        (
            "secret",
            _secret_text(r.secret_bytes, r.secret_short)
            if r.secret_bytes
            else "none (RadSec only: the fixed secret 'radsec')",
        ),
        ("mode", r.mode),
        ("primary", r.primary),
        ("upstream", upstream),
        ("directory", r.directory or "-"),
        (
            "message-authenticator",
            "required" if r.require_message_authenticator else "NOT required (BlastRADIUS risk)",
        ),
        ("failmode", r.failmode),
        ("unenrolled", r.unenrolled),
        ("push timeout", f"{r.push_timeout:g} s"),
        ("prompt", r.prompt),
        ("user names", names),
        ("exempt users", ", ".join(r.exempt_users) or "-"),
        ("exempt networks", ", ".join(r.exempt_networks) or "-"),
        ("password separator", r.password_separator),
        ("reply attributes", "; ".join(f"{n}={v}" for n, v in r.reply_attributes) or "-"),
        ("number matching", _number_matching_text(r)),
        (
            "radsec",
            "\n  ".join(["on, certificates:", *r.radsec_fingerprints])
            if r.radsec_fingerprints
            else "off",
        ),
        ("created", when(r.created_at)),
        ("changed", when(r.updated_at)),
    ]
    width = max(len(label) for label, _ in rows) + 2
    print("\n".join(f"{label + ':':<{width}}{clean(value)}" for label, value in rows))
    return 0
