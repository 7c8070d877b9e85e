"""``openmfa radius``: the bridge on its own host.

    openmfa radius --backend https://mfa1.example.com [--backend https://mfa2.example.com]
        --token-file bridge.token [--listen HOST:PORT ...] [--clients-file FILE]
        [--metrics-listen HOST:PORT]

Needs only its own settings; gets the RADIUS clients from the backend (or a file) and
imports nothing from the backend package. SIGTERM or Ctrl-C stop it cleanly (exit status 0).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from radius_bridge.config import BridgeConfigError, BridgeSettings, load_bridge_settings

PROG = "openmfa radius"
#: Installs the log handler given (level, format): the caller's one logging setup, since the
#: bridge imports nothing from the backend package.
LoggingSetup = Callable[[str, str], None]


def build_parser() -> argparse.ArgumentParser:
    """The ``openmfa radius`` arguments (also for ``--help``)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve RADIUS for gateways (VPN, RD Gateway via NPS, Wi-Fi) and relay each "
        "sign-in to the OpenMFA backend's gateway API. Every option can also be set as "
        "OPENMFA_BRIDGE_<OPTION> (e.g. OPENMFA_BRIDGE_BACKEND, OPENMFA_BRIDGE_TOKEN).",
    )
    parser.add_argument(
        "--backend",
        action="append",
        metavar="URL",
        help="an OpenMFA server node, https://...; repeat for several nodes (or list them "
        "comma-separated in OPENMFA_BRIDGE_BACKEND), the preferred one first: calls go to "
        "the first node that is up (GET /readyz every 2 s) and move to the next when it "
        "fails; a held push whose node dies is re-attached on another",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="file holding an API token of scope bridge (mode 0600); or set OPENMFA_BRIDGE_TOKEN",
    )
    parser.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="UDP address to serve RADIUS on; repeat for several (IPv6 as [::]:1812). "
        "Default: 0.0.0.0:1812 and [::]:1812",
    )
    parser.add_argument(
        "--clients-file",
        type=Path,
        metavar="FILE",
        help="read RADIUS clients from this JSON file instead of the backend "
        "(re-read when it changes)",
    )
    parser.add_argument(
        "--clients-cache",
        type=Path,
        metavar="FILE",
        help="keep the last client list from the backend in this file (encrypted), to serve "
        "from it when the bridge starts while the backend is down",
    )
    parser.add_argument(
        "--refresh-seconds",
        type=float,
        metavar="S",
        help="how often the client list is re-read (default 5)",
    )
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics",
    )
    parser.add_argument(
        "--http-timeout", type=float, metavar="S", help="longest backend call (default 10)"
    )
    parser.add_argument(
        "--cut-grace-seconds",
        type=float,
        metavar="S",
        help="when the backend connection of a held push is cut, re-attach for this long "
        "before the client's failmode answers (default 5)",
    )
    parser.add_argument(
        "--channel",
        choices=["auto", "off"],
        help="auto (default): held pushes and code checks over one WebSocket to the backend "
        "(the wait channel) while it is open, HTTP otherwise; off: always HTTP",
    )
    parser.add_argument(
        "--max-held",
        type=int,
        metavar="N",
        help="requests in progress at once, shared fairly between clients (one client "
        "flooding holds at most three quarters); more are dropped (default 20000)",
    )
    parser.add_argument(
        "--radsec-listen",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="TCP address to serve RadSec (RADIUS over TLS, RFC 6614) on, port 2083 by "
        "default; repeat for several. Off unless given",
    )
    parser.add_argument(
        "--radsec-cert-file", type=Path, metavar="FILE", help="the bridge's TLS certificate (PEM)"
    )
    parser.add_argument(
        "--radsec-key-file", type=Path, metavar="FILE", help="its private key (PEM, mode 0600)"
    )
    parser.add_argument(
        "--radsec-client-ca-file",
        type=Path,
        metavar="FILE",
        help="CA certificate(s) that sign the gateways' client certificates (PEM)",
    )
    parser.add_argument(
        "--radsec-idle-timeout",
        type=float,
        metavar="S",
        help="close a RadSec connection idle this long (default 120; Status-Server keeps it)",
    )
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["json", "text"])
    return parser


def settings_from(args: argparse.Namespace) -> BridgeSettings:
    """Settings from parsed arguments plus ``OPENMFA_BRIDGE_*``."""
    return load_bridge_settings(
        backend_url=args.backend,
        token_file=args.token_file,
        listen=args.listen,
        clients_file=args.clients_file,
        clients_cache=args.clients_cache,
        refresh_seconds=args.refresh_seconds,
        http_timeout=args.http_timeout,
        cut_grace_seconds=args.cut_grace_seconds,
        channel=args.channel,
        metrics_listen=args.metrics_listen,
        max_held=args.max_held,
        log_level=args.log_level,
        log_format=args.log_format,
        radsec_listen=args.radsec_listen,
        radsec_cert_file=args.radsec_cert_file,
        radsec_key_file=args.radsec_key_file,
        radsec_client_ca_file=args.radsec_client_ca_file,
        radsec_idle_timeout=args.radsec_idle_timeout,
    )


def main(argv: Sequence[str] | None, configure_logging: LoggingSetup) -> int:
    """Run the standalone bridge until SIGTERM / SIGINT; the exit status."""
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except BridgeConfigError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    configure_logging(settings.log_level, settings.log_format)
    from radius_bridge.server import StartupError, run

    try:
        run(settings)
    except StartupError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
