"""A backend killed under held pushes: how soon does a standalone bridge answer them?

One backend (``openmfa run``, SQLite) and one standalone bridge (``openmfa radius``) as
processes of their own; ``--held`` users (default 20) each get a push through a client with
failmode ``secure`` and the push timeout left at its default (55 s). Once the bridge holds
every request, the backend gets SIGKILL and the clock runs until each Access-Reject is back
at its gateway (pyrad, one thread per request). Printed: the first and the last answer after
the kill, and the bridge's cut grace.

    python bench/bridge_cut.py [--held 20] [--cut-grace-seconds 5]

To measure a bridge from before issue 18's cut detection, run it with ``PYTHONPATH`` pointing
at an older ``radius_bridge`` package and without ``--cut-grace-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

# This file's own directory comes first on sys.path when it runs as a script; the repo root
# is what the imports below need.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench._process import EXE, free_port, start_server, wait_until  # noqa: E402

SECRET = "bench-cut-secret-0"  # noqa: S105 - a throw-away RADIUS secret


async def _populate(home: Path, users: int) -> str:
    """``users`` users with an activated app each, one push client; the bridge token."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from backend.config import load_settings
    from backend.domain.radius import ClientChanges
    from backend.domain.stepup import ADMINISTRATOR
    from backend.services import Services
    from backend.services.context import Actor

    admin = Actor("bench")
    services = await Services.open(load_settings(home=home))
    try:
        token = await services.tokens.create(admin, "bench-bridge", scope="bridge")
        await services.radius_clients.add(
            admin,
            "cut-gw",
            ClientChanges(addresses=["127.0.0.1"], secret=SECRET, mode="push", primary="none"),
        )
        for i in range(users):
            name = f"u{i:03d}"
            await services.users.add(admin, name)
            offer = await services.activation.create_code(admin, ADMINISTRATOR, name)
            public = Ed25519PrivateKey.generate().public_key()
            raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
            await services.activation.activate(admin, offer.code, raw, "reference")
    finally:
        await services.close()
    return str(token)


def _send(port: int, user: str) -> tuple[int, float]:
    """One Access-Request (no password: primary none); its reply code and arrival time."""
    from pyrad import packet
    from pyrad.client import Client
    from pyrad.dictionary import Dictionary

    from radius_vocabulary.dictionary import DICTIONARY_FILE

    client = Client(
        server="127.0.0.1",
        authport=port,
        secret=SECRET.encode(),
        dict=Dictionary(str(DICTIONARY_FILE)),
        retries=1,
        timeout=120,
        enforce_ma=True,
    )
    request = client.CreateAuthPacket(code=packet.AccessRequest, User_Name=user)
    try:
        reply: Any = client.SendPacket(request)
    finally:
        client._CloseSocket()
    return int(reply.code), time.monotonic()


def _gauge(metrics_port: int, name: str) -> float:
    """The gauge ``name`` on the ``/metrics`` served at ``metrics_port`` (0 when absent)."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--held", type=int, default=20)
    parser.add_argument("--cut-grace-seconds", type=float, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="openmfa-bench-cut-") as tmp:
        home = Path(tmp)
        from backend.store import migrations

        migrations.upgrade(f"sqlite+aiosqlite:///{home / 'openmfa.db'}")
        token = asyncio.run(_populate(home, args.held))
        port, backend_metrics = free_port(), free_port()
        server = start_server(
            home,
            port,
            {"OPENMFA_METRICS_LISTEN": f"127.0.0.1:{backend_metrics}"},
            log=home / "backend.log",
        )
        token_file = home / "bridge.token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        udp, metrics = free_port(2), free_port()  # 2: SOCK_DGRAM
        grace = [] if args.cut_grace_seconds is None else ["--cut-grace-seconds"]
        grace += [] if args.cut_grace_seconds is None else [str(args.cut_grace_seconds)]
        with (home / "bridge.log").open("wb") as log:
            bridge = subprocess.Popen(
                [
                    str(EXE),
                    "radius",
                    "--backend",
                    f"http://127.0.0.1:{port}",
                    "--token-file",
                    str(token_file),
                    "--listen",
                    f"127.0.0.1:{udp}",
                    "--metrics-listen",
                    f"127.0.0.1:{metrics}",
                    *grace,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ),
            )
        try:
            wait_until(
                lambda: "RADIUS client list loaded: 1" in (home / "bridge.log").read_text(),
                30,
                "the bridge to load its clients",
            )
            with ThreadPoolExecutor(max_workers=args.held) as pool:
                futures = [pool.submit(_send, udp, f"u{i:03d}") for i in range(args.held)]
                wait_until(
                    lambda: _gauge(metrics, "openmfa_radius_held_requests") >= args.held,
                    60,
                    "every request held",
                )
                wait_until(
                    lambda: _gauge(backend_metrics, "openmfa_long_polls_held") >= args.held,
                    60,
                    "every held request's long-poll to reach the backend",
                )
                server.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                server.wait()
                answers = [future.result(180) for future in futures]
            codes = {code for code, _ in answers}
            first = min(at for _, at in answers) - killed
            last = max(at for _, at in answers) - killed
            shown = "default" if args.cut_grace_seconds is None else f"{args.cut_grace_seconds:g} s"
            print(
                f"kill -9 of the backend with {args.held} pushes held (cut grace {shown}): "
                f"answers after {first:.2f} s (first) .. {last:.2f} s (last); "
                f"codes {sorted(codes)} (3 = Access-Reject)"
            )
        finally:
            bridge.send_signal(signal.SIGTERM)
            bridge.wait(30)
            if server.poll() is None:
                server.kill()
                server.wait()


if __name__ == "__main__":
    main()
