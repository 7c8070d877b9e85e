"""``openmfa``: run the server, administer it, and act as a reference authenticator.

Commands that touch the database open the same :class:`Services` the server uses, on the same
``OPENMFA_HOME``, so they work while the server runs and it sees their changes at once.
"""

from __future__ import annotations

import argparse
import difflib
import getpass
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from backend import __version__
from backend.cli import (
    admin,
    backup,
    clients,
    device,
    directory,
    directory_sync,
    doctor,
    fraud,
    imports,
    nodes,
    prune,
)
from backend.cli.output import clean
from backend.errors import OpenMFAError

# Start-up time: `openmfa --help` must not pay for pydantic, SQLAlchemy, httpx or the server.
# The modules above import only the standard library at load time; everything heavier is
# imported by the code that runs a command (tests/test_cli_startup.py keeps it so).
if TYPE_CHECKING:
    from backend.config import Settings
    from backend.services import Services
    from backend.services.context import Actor

AdminCommand = Callable[["Services", argparse.Namespace, "Actor"], Awaitable[int]]
JSON_HELP = "print JSON instead of a table"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose subcommands report their own unknown arguments.

    Plain argparse collects what a subcommand does not know and lets the top-level parser
    complain, with the top-level usage: ``openmfa user add carol --emial x`` then shows
    ``usage: openmfa [-h] ... COMMAND ...``. Here the subcommand that was given the argument
    answers, with its own usage and the nearest option it does know.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._suggestion(extras)}")
        # A subcommand's rule between options that argparse cannot express (set_defaults
        # usage_check=...): a usage error with that subcommand's usage, exit status 2.
        check = getattr(parsed, "usage_check", None)
        problem = check(parsed) if callable(check) else None
        if problem:
            self.error(problem)
        return parsed, extras

    def _suggestion(self, extras: Sequence[str]) -> str:
        known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        for extra in extras:
            if extra.startswith("--"):
                close = difflib.get_close_matches(extra.split("=", 1)[0], known, n=1, cutoff=0.75)
                if close:
                    return f" (did you mean {close[0]}?)"
        return ""


def _policy_keys() -> str:
    from backend.domain.policy import KEYS

    width = max(len(name) for name in KEYS)
    return "\n".join(
        f"  {key.name:<{width}}  {key.description} (default {_default_text(key.default)})"
        for key in KEYS.values()
    )


def _default_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="openmfa",
        description="OpenMFA: self-hosted multi-factor authentication "
        "(push, offline codes, RADIUS).",
    )
    parser.add_argument("--version", action="version", version=f"openmfa {__version__}")
    parser.add_argument(
        "--home",
        type=Path,
        help="data directory (default: $OPENMFA_HOME or ~/.local/share/openmfa)",
    )
    parser.add_argument("--config", type=Path, help="settings file (default: HOME/openmfa.toml)")
    groups = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = groups.add_parser(
        "run",
        help="serve the app and gateway APIs",
        description="Serve the app and gateway APIs until stopped (SIGTERM / Ctrl-C).",
    )
    run.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="TCP port (default 8080)")
    run.add_argument(
        "--radius-port",
        type=int,
        help="UDP port of the built-in RADIUS bridge (default 1812; 0: off)",
    )
    run.add_argument(
        "--tls-cert", type=Path, help="serve HTTPS with this PEM certificate (and chain)"
    )
    run.add_argument("--tls-key", type=Path, help="the certificate's PEM key (SIGHUP reloads both)")
    run.set_defaults(handler="run")

    # `openmfa radius ...` hands its arguments to the bridge's own parser (radius_bridge.cli),
    # which also answers --help: the bridge runs without anything from this package.
    # prefix_chars="\0" makes argparse treat every remaining argument as a plain value.
    radius = groups.add_parser(
        "radius",
        help="run the RADIUS bridge on its own (openmfa radius --help)",
        add_help=False,
        prefix_chars="\0",
    )
    radius.add_argument("args", nargs=argparse.REMAINDER)
    radius.set_defaults(handler="radius")

    db = groups.add_parser(
        "db", help="database schema", description="Create or upgrade the database schema."
    )
    db_cmds = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_cmds.add_parser("upgrade", help="create or upgrade the schema to this version").set_defaults(
        handler="db-upgrade"
    )
    db_cmds.add_parser("current", help="show the schema version").set_defaults(handler="db-current")

    user = groups.add_parser("user", help="manage users", description="Add, list and change users.")
    user_cmds = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = user_cmds.add_parser(
        "add", help="add a user", description="Add a user. Names compare case-insensitively."
    )
    add.add_argument("name")
    add.add_argument(
        "--email", help="the user's e-mail address (invitations, notices about their account)"
    )
    add.add_argument("--display-name", help="the name shown in the portal and the console")
    add.add_argument(
        "--password-stdin", action="store_true", help="read a local password from standard input"
    )
    add.add_argument("--admin", action="store_true", help="make the user an administrator")
    add.set_defaults(handler=admin.user_add)
    ls = user_cmds.add_parser("list", help="list users with state, devices and last sign-in")
    ls.add_argument("--json", action="store_true", help=JSON_HELP)
    ls.set_defaults(handler=admin.user_list)
    show = user_cmds.add_parser("show", help="one user with their devices")
    show.add_argument("name")
    show.set_defaults(handler=admin.user_show)
    for action, text in (
        ("disable", "refuse every sign-in"),
        ("enable", "allow sign-in again"),
        ("block", "send no more challenges (as after fraud)"),
        ("unblock", "lift a block; marks the user's open fraud reports reviewed"),
    ):
        cmd = user_cmds.add_parser(action, help=text)
        cmd.add_argument("name")
        if action == "block":
            cmd.add_argument("--reason", help="shown to administrators")
        cmd.set_defaults(handler=admin.user_state, reason=None)
    pw = user_cmds.add_parser("set-password", help="set the local password (from standard input)")
    pw.add_argument("name")
    pw.add_argument(
        "--password-stdin",
        action="store_true",
        required=True,
        help="read the password from standard input (never an argument: the process list "
        "shows arguments)",
    )
    pw.set_defaults(handler=admin.user_set_password)
    pin = user_cmds.add_parser("set-pin", help="set the approval PIN (from standard input)")
    pin.add_argument("name")
    pin.add_argument(
        "--pin-stdin", action="store_true", required=True, help="read the PIN from standard input"
    )
    pin.set_defaults(handler=admin.user_set_pin)
    invite = user_cmds.add_parser(
        "invite",
        help="a one-time link where the user sets a password (the portal)",
        description="Print a one-time link to the user portal where the user sets their "
        "password and is signed in. Earlier unused links of the user stop working.",
    )
    invite.add_argument("name")
    invite.add_argument(
        "--hours", type=int, default=72, help="how long the link works (default 72, at most 720)"
    )
    invite.set_defaults(handler=admin.user_invite)
    delete = user_cmds.add_parser(
        "delete",
        help="delete a user with their devices",
        description="Delete a user: their devices, pending sign-ins (cancelled), activation "
        "codes, invitations, web sessions, reviewed fraud reports and policy overrides go "
        "with them. The audit trail keeps every entry about them. Refused for the last "
        "administrator, a user with open fraud reports, and a user a RADIUS client exempts "
        "by name (a later user of that name would inherit the exemption).",
    )
    delete.add_argument("name")
    delete.add_argument(
        "--yes", action="store_true", help="do not ask (without it, type the name to confirm)"
    )
    delete.set_defaults(handler=admin.user_delete)
    rename = user_cmds.add_parser(
        "rename",
        help="give a user a new name",
        description="Rename a user; devices, password, PIN and policy overrides stay. The "
        "audit trail keeps the old name on earlier entries. Refused if the new name is taken "
        "(in any case) or a RADIUS client exempts the user by name. Renaming in the "
        "directory (LDAP) or on the gateways is up to you: sign-ins send the new name.",
    )
    rename.add_argument("name", help="the current name")
    rename.add_argument("new_name", help="the new name")
    rename.set_defaults(handler=admin.user_rename)
    allow = user_cmds.add_parser(
        "allow-enrolment",
        help="let a user with no authenticator in use enrol one in the portal for a while",
        description="Open a first-enrolment window: for HOURS, any portal session of the "
        "user (signed in with the password) may activate a first authenticator. Once the "
        "user has one in use, changes need a step-up with it instead. Audited.",
    )
    allow.add_argument("name")
    allow.add_argument(
        "--hours", type=float, default=24, help="how long the window stays open (default 24)"
    )
    allow.set_defaults(handler=admin.user_allow_enrolment)
    rm = user_cmds.add_parser("remove-device", help="remove one of the user's devices")
    rm.add_argument("name")
    rm.add_argument("device_id")
    rm.set_defaults(handler=admin.user_remove_device)

    act = groups.add_parser(
        "activation",
        help="activate authenticators",
        description="Create activation codes and QR codes.",
    )
    act_cmds = act.add_subparsers(dest="activation_command", required=True, metavar="ACTION")
    create = act_cmds.add_parser(
        "create",
        help="a one-time activation code and QR code",
        description="Create a one-time activation code for the OpenMFA app, "
        "with --oath a TOTP secret for any standard OATH app, or with --privacyidea-app "
        "a push token for the privacyIDEA Authenticator app.",
    )
    create.add_argument("name", help="user name")
    create.add_argument("--qr-png", type=Path, help="write the QR code as PNG")
    create.add_argument("--qr-svg", type=Path, help="write the QR code as SVG")
    kind = create.add_mutually_exclusive_group()
    kind.add_argument("--oath", action="store_true", help="enrol a standard OATH app (otpauth://)")
    kind.add_argument(
        "--privacyidea-app",
        action="store_true",
        help="enrol the privacyIDEA Authenticator app as a poll-only push token "
        "(otpauth://pipush/; needs an https:// public_url; see docs/apps.md)",
    )
    create.add_argument(
        "--ttl", type=admin.parse_duration, help="lifetime, e.g. 10m (default: policy)"
    )
    create.set_defaults(handler=admin.activation_create)

    policy = groups.add_parser(
        "policy",
        help="show and change policies",
        description="Global policies and per-user overrides.",
    )
    pol_cmds = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    pshow = pol_cmds.add_parser("show", help="every key with its value and source")
    pshow.add_argument("--user", help="with this user's overrides")
    pshow.add_argument("--json", action="store_true", help=JSON_HELP)
    pshow.set_defaults(handler=admin.policy_show)
    pset = pol_cmds.add_parser(
        "set",
        help="set KEY to VALUE",
        description="Set a policy, for everyone or (--user) for one user. Keys:\n"
        + _policy_keys()
        + "\nBooleans are true or false. `openmfa policy show` prints what is in effect.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pset.add_argument("key", help="one of the keys listed above")
    pset.add_argument("value", help="true or false, a number, or one of the choices named")
    pset.add_argument("--user", help="override for one user only")
    pset.set_defaults(handler=admin.policy_set)
    punset = pol_cmds.add_parser("unset", help="drop a stored value")
    punset.add_argument("key")
    punset.add_argument("--user", help="drop this user's override only")
    punset.set_defaults(handler=admin.policy_unset)

    token = groups.add_parser(
        "token",
        help="API tokens for gateways; hardware OATH tokens (import)",
        description="Bearer tokens for the gateway API (RADIUS bridges), and the import of "
        "hardware OATH tokens from a CSV file (token import).",
    )
    tok_cmds = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    tcreate = tok_cmds.add_parser("create", help="create a token; printed once")
    tcreate.add_argument("name")
    tcreate.add_argument(
        "--scope",
        choices=["gateway", "bridge"],
        default="gateway",
        help="gateway (default): the gateway API; bridge: also RADIUS client secrets, "
        "local passwords and bridge audit rows (for `openmfa radius`)",
    )
    tcreate.set_defaults(handler=admin.token_create)
    tok_cmds.add_parser("list", help="list tokens").set_defaults(handler=admin.token_list)
    trevoke = tok_cmds.add_parser("revoke", help="revoke a token at once")
    trevoke.add_argument("name")
    trevoke.set_defaults(handler=admin.token_revoke)

    imports.add_parsers(user_cmds, tok_cmds)  # user import, token import (CSV)
    clients.add_parser(groups)
    directory_sync.register(directory.add_parser(groups))  # `directory sync`, `syncs`
    fraud.add_parser(groups)
    doctor.add_parser(groups)
    backup.add_parser(groups)
    prune.add_parser(groups)
    nodes.add_parser(groups)

    aud = groups.add_parser(
        "audit",
        help="read the audit trail",
        description="Audit entries, oldest of the selection first.",
    )
    aud.add_argument("--user", help="only this user's entries")
    aud.add_argument("--since", type=admin.parse_since, help="ISO time or a duration back, e.g. 1h")
    aud.add_argument("--action", help="e.g. otp.verify, challenge.answer, request.refused")
    aud.add_argument(
        "--limit",
        type=int,
        default=100,
        help="how many of the newest entries that match (default 100), shown oldest first",
    )
    aud.add_argument("--json", action="store_true", help="print JSON (oldest first)")
    aud.set_defaults(handler=admin.audit)

    dev = groups.add_parser(
        "device",
        help="the reference authenticator (acts like a phone app)",
        description="A reference authenticator that speaks the app protocol, "
        "keeping its key in --store.",
    )
    dev_cmds = dev.add_subparsers(dest="device_command", required=True, metavar="ACTION")

    def store_arg(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument(
            "--store", type=Path, required=True, help="JSON file with the device key (mode 0600)"
        )

    dact = dev_cmds.add_parser("activate", help="activate with an openmfa://activate URI")
    dact.add_argument("uri")
    store_arg(dact)
    dact.add_argument("--name", help="device name shown to the user")
    dact.add_argument(
        "--platform",
        default="reference",
        choices=["reference", "ios", "android", "web"],
        help="what the server records the device as (default reference)",
    )
    dact.add_argument(
        "--key-type",
        default="ed25519",
        choices=["ed25519", "p256"],
        help="the device key: Ed25519 (default) or P-256 ECDSA, as the web app uses where "
        "the browser has no Ed25519",
    )
    dact.add_argument("--pin", help="set the approval PIN at activation")
    dact.add_argument("--push-token", help="an APNs or FCM token (default: none, it polls)")
    dact.add_argument("--force", action="store_true", help="replace an existing store")
    dact.set_defaults(device_handler=device.activate)
    dpend = dev_cmds.add_parser("pending", help="challenges waiting for this device")
    store_arg(dpend)
    dpend.add_argument("--json", action="store_true", help=JSON_HELP)
    dpend.set_defaults(device_handler=device.pending)
    dans = dev_cmds.add_parser("answer", help="approve, deny or report fraud")
    dans.add_argument("challenge_id")
    dans.add_argument("answer", choices=["approve", "deny", "fraud"])
    store_arg(dans)
    dans.add_argument("--pin", help="the user's approval PIN (when the policy requires one)")
    dans.add_argument("--number", type=int, help="the number shown at sign-in")
    dans.set_defaults(device_handler=device.answer)
    dcode = dev_cmds.add_parser("code", help="the offline code, as the app shows it")
    store_arg(dcode)
    dcode.set_defaults(device_handler=device.code)
    dwatch = dev_cmds.add_parser("watch", help="answer challenges as they arrive")
    store_arg(dwatch)
    dwatch.add_argument(
        "--auto",
        required=True,
        choices=["approve", "deny", "fraud"],
        help="the answer given to every challenge",
    )
    dwatch.add_argument("--count", type=int, help="stop after this many answers")
    dwatch.add_argument("--timeout", type=float, help="stop after this many seconds")
    dwatch.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    dwatch.add_argument("--pin", help="the user's approval PIN (when the policy requires one)")
    dwatch.add_argument("--number", type=int, help="the number to send with each approval")
    dwatch.set_defaults(device_handler=device.watch)
    ddeact = dev_cmds.add_parser("deactivate", help="remove this device on the server")
    store_arg(ddeact)
    ddeact.set_defaults(device_handler=device.deactivate)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    from backend.config import load_settings

    overrides = {"home": args.home}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None):
        overrides["port"] = args.port
    if getattr(args, "radius_port", None) is not None:
        overrides["radius_port"] = args.radius_port
    if getattr(args, "tls_cert", None):
        overrides["tls_cert_file"] = args.tls_cert
    if getattr(args, "tls_key", None):
        overrides["tls_key_file"] = args.tls_key
    return load_settings(args.config, **overrides)


async def _run_admin(settings: Settings, handler: AdminCommand, args: argparse.Namespace) -> int:
    from backend.services import Services
    from backend.services.context import Actor

    actor = Actor(f"cli:{getpass.getuser()}", "local")
    # No command here starts a push challenge: no push connections, no key files read.
    services = await Services.open(settings, push=False, notify=False)
    try:
        try:
            return await handler(services, args, actor)
        except OpenMFAError as exc:
            await services.audit.record(
                actor, "cli.refused", exc.type, detail=f"{args.command}: {exc.detail}"
            )
            raise
    finally:
        await services.close()


def _db_upgrade(settings: Settings) -> int:
    from backend.store import migrations
    from backend.store.urls import display_url

    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    url = settings.resolved_database_url
    migrations.upgrade(url)
    print(f"database at {migrations.head_revision()}: {display_url(url)}")
    return 0


async def _db_current(settings: Settings) -> int:
    from backend.services import open_database
    from backend.store import migrations

    db = await open_database(settings)
    try:
        async with db.read() as conn:
            print(await migrations.current_revision(conn))
    finally:
        await db.dispose()
    return 0


async def _admin_bootstrap(settings: Settings) -> str | None:
    """While no administrator exists: a new one-time link that creates the first one.

    Printed in the banner, never logged: logs travel to collectors that more people read,
    and whoever holds the link first becomes administrator. The log says where to look. It
    works once, only until an administrator exists, and the next start replaces it.
    """
    import logging

    from backend.logs import configure_logging
    from backend.services import Services
    from backend.services.context import Actor

    services = await Services.open(settings, push=False, notify=False)
    try:
        link = await services.invitations.bootstrap_link(Actor("system:run", "local"))
    finally:
        await services.close()
    if link is not None:
        configure_logging(settings.log_level, settings.log_format)
        logging.getLogger("openmfa.web").warning(
            "no administrator exists yet: the one-time link to create the first one is printed "
            "on standard output (or run `openmfa user add NAME --admin --password-stdin`)"
        )
    return link


def _banner(settings: Settings, bootstrap: str | None = None) -> None:
    radius_host = settings.resolved_radius_host
    radius = (
        f"RADIUS on udp {'[' + radius_host + ']' if ':' in radius_host else radius_host}"
        f":{settings.radius_port} (add gateways with `openmfa client add`)\n"
        if settings.radius_port
        else "RADIUS off (--radius-port 0)\n"
    )
    print(
        f"OpenMFA {__version__} on {'https' if settings.tls else 'http'}://"
        f"{settings.host}:{settings.port}\n"
        f"{radius}"
        f"Data directory: {settings.home}\n"
        "Next, in another terminal:\n"
        "  openmfa user add alice --email alice@example.com\n"
        "  openmfa activation create alice --qr-png alice.png\n"
        "  openmfa token create vpn-gateway      # API token for a gateway / RADIUS bridge\n"
        "Stop with Ctrl-C.",
        flush=True,
    )
    if bootstrap is not None:
        print(
            "\nNo administrator exists yet. Create the first one (this link works once; "
            f"the next start replaces it):\n  {bootstrap}",
            flush=True,
        )


def _device(args: argparse.Namespace) -> int:
    from backend.authenticator.client import AuthenticatorError

    try:
        return int(args.device_handler(args))
    except AuthenticatorError as exc:
        print(f"openmfa: error: {clean(exc)}", file=sys.stderr)
        return 1


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    try:
        if hasattr(args, "device_handler"):
            return _device(args)
        if hasattr(args, "doctor_handler"):  # loads the settings itself (a bad file is a finding)
            return int(args.doctor_handler(args))
        if args.handler == "radius":
            from backend.logs import configure_logging
            from radius_bridge.cli import main as radius_main

            return radius_main(args.args, configure_logging)
        import asyncio

        settings = _settings(args)
        if args.handler == "run":
            from backend.server import check_startup, claim_listeners, serve

            # The ports first: a second `openmfa run` on busy ports must stop before it
            # touches the database (a new bootstrap link would void the running server's).
            listeners = claim_listeners(settings)
            try:
                check_startup(settings)
                bootstrap = asyncio.run(_admin_bootstrap(settings))
                _banner(settings, bootstrap)
            except BaseException:
                listeners.close()
                raise
            serve(settings, listeners)
            return 0
        if hasattr(args, "settings_handler"):  # backup, restore: no services, any schema
            return int(args.settings_handler(settings, args))
        if args.handler == "db-upgrade":
            return _db_upgrade(settings)
        if args.handler == "db-current":
            return asyncio.run(_db_current(settings))
        return asyncio.run(_run_admin(settings, args.handler, args))
    except OpenMFAError as exc:
        print(f"openmfa: error: {clean(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise  # handled in main()
    except OSError as exc:  # a file the command was told to read or write
        print(f"openmfa: error: {clean(exc)}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``openmfa`` console script."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows up here, not as a warning at exit
    except BrokenPipeError:
        # The reader went away (``openmfa audit --json | head``): stop quietly, and keep the
        # interpreter from failing again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
