"""What the push benchmarks share (bench/push.py, bench/webpush.py): the fake's process
handle, users and devices in bulk, pending challenges, a gateway token, the 1,000 push starts
over keep-alive connections, and the latency figures they print.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from backend.config import Settings, load_settings
from backend.push.base import PushTransport
from backend.services import Services
from backend.services.context import Actor
from backend.store import migrations
from backend.store.tables import challenges_t, devices_t, now, users_t
from bench._http import build_post, percentile, read_response

ADMIN = Actor("bench")


# -- the fake, in a process of its own ------------------------------------------------------


class FakeProcess:
    """The parent's handle on a fake running as ``script --fake ARGS...`` pinned to CPU 1.

    The child prints one JSON line when it is ready (kept as :attr:`hello`), runs until a line
    arrives on its stdin, then prints what it received as one JSON line with ``received``
    (``[challenge_id, monotonic arrival]`` pairs) and ``violations``.
    """

    def __init__(self, script: str, args: Sequence[str], what: str) -> None:
        self.process = subprocess.Popen(
            ["taskset", "-c", "1", sys.executable, script, "--fake", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the {what} fake did not start")
        self.hello: dict[str, Any] = json.loads(line)

    def stop_report(self) -> dict[str, Any]:
        """Stop it and return its report (the whole JSON object)."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("stop\n")
        self.process.stdin.flush()
        report: dict[str, Any] = json.loads(self.process.stdout.readline())
        self.process.wait(timeout=30)
        return report

    def stop(self) -> tuple[dict[str, float], list[str]]:
        """Stop it; the monotonic arrival time of each challenge's first push, and any
        violations it saw."""
        report = self.stop_report()
        return first_arrivals(report), report["violations"]

    def kill(self) -> None:
        """Kill it if it still runs (the clean-up path after a failure)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def first_arrivals(report: dict[str, Any]) -> dict[str, float]:
    """Each challenge's first push arrival from a fake's report."""
    first: dict[str, float] = {}
    for challenge_id, at in report["received"]:
        first.setdefault(challenge_id, at)
    return first


# -- set-up ---------------------------------------------------------------------------------


async def populate(
    settings: Settings, platform: str, push_tokens: Sequence[str], prefix: str
) -> None:
    """One user with one app device per push token (bulk Core inserts: the ORM path would take
    minutes)."""
    services = await Services.open(settings, push=False)
    try:
        created = now()
        async with services.db.write() as conn:
            await conn.execute(
                users_t.insert(),
                [
                    {
                        "name_key": f"{prefix}{i:06d}",
                        "name": f"{prefix}{i:06d}",
                        "created_at": created,
                    }
                    for i in range(len(push_tokens))
                ],
            )
            ids = dict(
                (
                    await conn.execute(
                        users_t.select()
                        .with_only_columns(users_t.c.name_key, users_t.c.id)
                        .where(users_t.c.name_key.like(f"{prefix}%"))
                    )
                ).all()
            )
            await conn.execute(
                devices_t.insert(),
                [
                    {
                        "id": f"dev_{prefix}{i:06d}",
                        "user_id": ids[f"{prefix}{i:06d}"],
                        "kind": "app",
                        "platform": platform,
                        "public_key": secrets.token_bytes(32),
                        "push_token": token,
                        "seed_enc": b"unused by push",
                        "state": "active",
                        "created_at": created,
                    }
                    for i, token in enumerate(push_tokens)
                ],
            )
    finally:
        await services.close()


async def pending_challenges(settings: Settings, prefix: str, ttl: int) -> list[str]:
    """One pending push challenge per ``prefix`` user, inserted directly (phase b)."""
    services = await Services.open(settings, push=False)
    try:
        created = now()
        async with services.db.write() as conn:
            rows = (
                await conn.execute(
                    users_t.select()
                    .with_only_columns(users_t.c.id)
                    .where(users_t.c.name_key.like(f"{prefix}%"))
                )
            ).all()
            ids = ["ch_" + secrets.token_urlsafe(16) for _ in rows]
            await conn.execute(
                challenges_t.insert(),
                [
                    {
                        "id": cid,
                        "user_id": row.id,
                        "method": "push",
                        "state": "pending",
                        "created_at": created,
                        "expires_at": created + timedelta(seconds=ttl),
                        "display": "Sign-in to VPN from 203.0.113.7",
                    }
                    for cid, row in zip(ids, rows, strict=True)
                ],
            )
        return ids
    finally:
        await services.close()


async def gateway_token(settings: Settings, *, unlimited_pushes: bool = False) -> str:
    """A gateway API token; with ``unlimited_pushes`` the push_limit policy is switched off
    first."""
    services = await Services.open(settings, push=False)
    try:
        if unlimited_pushes:
            await services.policies.set(ADMIN, "push_limit", "0")
        return await services.tokens.create(ADMIN, "bench")
    finally:
        await services.close()


# -- (a) latency through the server ---------------------------------------------------------


@dataclass
class Started:
    challenge_id: str
    sent_at: float
    returned_at: float


def start_requests(port: int, token: str, prefix: str, count: int) -> list[bytes]:
    """One raw gateway push start per ``prefix`` user."""
    headers = {"Authorization": f"Bearer {token}"}
    return [
        build_post(
            f"127.0.0.1:{port}",
            "/gateway/v1/authentications",
            json.dumps(
                {
                    "user": f"{prefix}{i:06d}",
                    "method": "push",
                    "context": {"client_name": "VPN", "client_ip": "203.0.113.7"},
                }
            ).encode(),
            headers,
        )
        for i in range(count)
    ]


async def start_all(port: int, requests: Sequence[bytes], connections: int) -> list[Started]:
    """Send every start request once over ``connections`` keep-alive connections."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    started: list[Started] = []
    statuses: dict[int, int] = {}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                request = queue.get_nowait()
                sent = time.monotonic()
                writer.write(request)
                status, body = await read_response(reader)
                returned = time.monotonic()
                statuses[status] = statuses.get(status, 0) + 1
                if status == 201:
                    started.append(Started(json.loads(body)["id"], sent, returned))
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    if set(statuses) != {201}:
        print(f"warning: start statuses {statuses}")
    return started


def ms(values: list[float], q: float) -> str:
    """The ``q`` percentile of ``values`` (seconds) in milliseconds."""
    return f"{percentile(values, q) * 1000:.1f} ms"


def print_latency(
    started: list[Started],
    arrivals: dict[str, float],
    violations: list[str],
    *,
    took: float,
    connections: int,
    what: str,
    received_by: str,
    note_early: bool = False,
) -> None:
    """Print phase (a): the starts, then start returned / sent -> push received.

    ``what`` names the challenges ("push challenges ..."), ``received_by`` ends the summary
    ("by the APNs fake, wire-format violations"); with ``note_early`` the pushes that arrived
    before their start's response are counted.
    """
    from_return = [
        arrivals[s.challenge_id] - s.returned_at for s in started if s.challenge_id in arrivals
    ]
    from_send = [
        arrivals[s.challenge_id] - s.sent_at for s in started if s.challenge_id in arrivals
    ]
    start_latency = [s.returned_at - s.sent_at for s in started]
    for violation in violations[:3]:
        print(f"violation: {violation}")
    print(
        f"(a) {len(started)} {what} started in {took:.2f} s over "
        f"{connections} connections ({len(started) / took:,.0f}/s; start p50 "
        f"{ms(start_latency, 0.5)}, p99 {ms(start_latency, 0.99)}); {len(arrivals)} pushes "
        f"received {received_by}: {len(violations)}"
    )
    if not from_return:
        return
    early = ""
    if note_early:
        count = sum(1 for d in from_return if d < 0)
        early = f" ({count} pushes arrived before the start's response did)"
    print(
        f"    start returned -> push received: p50 {ms(from_return, 0.5)}, p99 "
        f"{ms(from_return, 0.99)}, max {max(from_return) * 1000:.1f} ms{early}"
    )
    print(
        f"    start sent -> push received:     p50 {ms(from_send, 0.5)}, p99 {ms(from_send, 0.99)}"
    )


# -- (b) sustained throughput, dispatcher in process -----------------------------------------


async def dispatch_timed(
    settings: Settings,
    services: Services,
    transports: Mapping[str, PushTransport],
    warm_up: Sequence[str],
    ids: Sequence[str],
) -> tuple[float, float, dict[str, int]]:
    """Hand ``warm_up`` to a push dispatcher (connections, tokens: not measured), then
    ``ids`` at once; the wall and CPU seconds until all are delivered and audited, and the
    dispatcher's result counts for ``ids``."""
    from backend.push.dispatcher import PushDispatcher

    dispatcher = PushDispatcher(
        services.db,
        services.audit,
        now,
        Actor("system:push"),
        transports,
        settings.push_concurrency,
    )
    try:
        for challenge_id in warm_up:
            dispatcher.challenge_started(challenge_id)
        await dispatcher.wait_idle()
        dispatcher.counts.clear()
        began, cpu = time.monotonic(), time.process_time()
        for challenge_id in ids:
            dispatcher.challenge_started(challenge_id)
        await dispatcher.wait_idle()
        took, cpu = time.monotonic() - began, time.process_time() - cpu
        return took, cpu, dict(dispatcher.counts)
    finally:
        await dispatcher.close()


# -- the command line -------------------------------------------------------------------------


def bench_main(
    doc: str,
    name: str,
    serve_fake: Callable[[Sequence[str]], None],
    latency: Callable[[Path, Settings, int, int], None],
    sustained: Callable[[Path, int], None],
) -> None:
    """A push benchmark's ``main``: ``--fake A B`` runs the fake (the child process), else
    phase (a) ``latency`` and (b) ``sustained`` against one throw-away SQLite home."""
    if len(sys.argv) == 4 and sys.argv[1] == "--fake":
        serve_fake(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--challenges", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--pushes", type=int, default=5000)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-sustained", action="store_true")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix=f"openmfa-bench-{name}-"))
    try:
        migrations.upgrade(f"sqlite+aiosqlite:///{home / 'openmfa.db'}")
        settings = load_settings(home=home)
        if not args.skip_latency:
            latency(home, settings, args.challenges, args.connections)
        if not args.skip_sustained:
            sustained(home, args.pushes)
    finally:
        shutil.rmtree(home, ignore_errors=True)
