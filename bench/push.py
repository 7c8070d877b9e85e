"""Push delivery against the local APNs and FCM fakes (tests/fakes), with the real clients.

(a) Latency with 1,000 challenges in flight: `openmfa run` (RADIUS off, pinned to CPU 0)
    with APNs configured against the APNs fake (its own process, pinned to CPU 1). A load
    generator in this process (CPU 1) starts 1,000 push authentications through the gateway
    API over keep-alive connections; none is answered, so all 1,000 are pending at the end.
    Per challenge: the time from the gateway API's start returning (the challenge exists) to
    the APNs fake receiving its push request, p50 / p99 (clocks: CLOCK_MONOTONIC, shared by
    the processes). Also from the start request being sent.
(b) Sustained pushes per second: the dispatcher (backend.push.dispatcher) in this process,
    pinned to CPU 0, with the real APNs transport, and then the real FCM transport, against
    the fake (CPU 1). ``--pushes`` pending challenges are handed to it at once; the rate is
    pushes delivered and recorded (audit row written) per second of wall time.

    python bench/push.py [--challenges 1000] [--connections 50] [--pushes 5000]

Figures are printed, not asserted; docs/push.md and docs/performance.md quote them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.config import Settings, load_settings
from backend.services import Services
from backend.services.context import Actor
from backend.store import migrations
from backend.store.tables import challenges_t, devices_t, now, users_t
from bench._http import build_post, percentile, read_response
from bench._process import free_port, start_server, stop

ADMIN = Actor("bench")
TOPIC = "org.openmfa.bench"


# -- the fakes, each in a process of its own --------------------------------------------------


def _serve_fake(kind: str, directory: Path) -> None:
    """``--fake apns|fcm DIR``: run one fake until a line arrives on stdin, then print what it
    received as one JSON line. Its settings (URL, CA, key files) are the first JSON line."""
    from tests.fakes.apns import ApnsFake, make_apns_key
    from tests.fakes.fcm import FcmFake

    async def serve() -> None:
        if kind == "apns":
            key = make_apns_key(directory)
            apns = ApnsFake(directory, key=key, topic=TOPIC)
            await apns.start()
            hello = {
                "apns_url": apns.url,
                "apns_ca_file": str(apns.ca_file),
                "apns_key_file": str(key.p8_path),
                "apns_key_id": key.key_id,
                "apns_team_id": key.team_id,
                "apns_topic": TOPIC,
            }
        else:
            fcm = FcmFake(directory)
            await fcm.start()
            hello = {
                "fcm_url": fcm.url,
                "fcm_ca_file": str(fcm.ca_file),
                "fcm_service_account_file": str(fcm.service_account(directory)),
            }
        print(json.dumps(hello), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if kind == "apns":
            received = [[r.payload.get("challenge_id"), r.received_at] for r in apns.requests]
            violations = apns.violations
            await apns.stop(check=False)
        else:
            received = [
                [r.body.get("message", {}).get("data", {}).get("challenge_id"), 0.0]
                for r in fcm.requests
            ]
            violations = fcm.violations
            await fcm.stop(check=False)
        # Arrival times are CLOCK_MONOTONIC; the offset turns them into wall-clock time for a
        # comparison with the challenge rows' created_at.
        offset = time.time() - time.monotonic()
        report = {"received": received, "violations": violations, "offset": offset}
        print(json.dumps(report), flush=True)

    asyncio.run(serve())


class Fake:
    """The parent's handle on a fake process."""

    def __init__(self, kind: str, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["taskset", "-c", "1", sys.executable, __file__, "--fake", kind, str(directory)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the {kind} fake did not start")
        self.settings: dict[str, str] = json.loads(line)
        self.offset = 0.0

    def stop(self) -> tuple[dict[str, float], list[str]]:
        """Stop it; the monotonic arrival time of each challenge's first push, and any
        wire-format violations it saw. :attr:`offset` then turns those into epoch seconds."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write("stop\n")
        self.process.stdin.flush()
        report = json.loads(self.process.stdout.readline())
        self.process.wait(timeout=30)
        self.offset = float(report["offset"])
        first: dict[str, float] = {}
        for challenge_id, at in report["received"]:
            first.setdefault(challenge_id, at)
        return first, report["violations"]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


# -- set-up -----------------------------------------------------------------------------------


async def _populate(settings: Settings, users: int, platform: str, prefix: str) -> None:
    """``users`` users with one app device each (bulk Core inserts: the ORM path would take
    minutes), tokens in the platform's format."""
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
                    for i in range(users)
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
                        "push_token": secrets.token_hex(32)
                        if platform == "ios"
                        else "fcm-" + secrets.token_urlsafe(40),
                        "seed_enc": b"unused by push",
                        "state": "active",
                        "created_at": created,
                    }
                    for i in range(users)
                ],
            )
    finally:
        await services.close()


async def _pending_challenges(settings: Settings, prefix: str, ttl: int) -> list[str]:
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


async def _token(settings: Settings) -> str:
    services = await Services.open(settings, push=False)
    try:
        return await services.tokens.create(ADMIN, "bench")
    finally:
        await services.close()


# -- (a) latency through the server -----------------------------------------------------------


@dataclass
class Started:
    challenge_id: str
    sent_at: float
    returned_at: float


async def _start_all(port: int, requests: Sequence[bytes], connections: int) -> list[Started]:
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


def _latency(home: Path, settings: Settings, challenges: int, connections: int) -> None:
    asyncio.run(_populate(settings, challenges, "ios", "lat"))
    token = asyncio.run(_token(settings))
    fake = Fake("apns", home / "apns-a")
    port = free_port()
    server = start_server(home, port, {f"OPENMFA_{k.upper()}": v for k, v in fake.settings.items()})
    try:
        os.sched_setaffinity(0, {1})
        headers = {"Authorization": f"Bearer {token}"}
        requests = [
            build_post(
                f"127.0.0.1:{port}",
                "/gateway/v1/authentications",
                json.dumps(
                    {
                        "user": f"lat{i:06d}",
                        "method": "push",
                        "context": {"client_name": "VPN", "client_ip": "203.0.113.7"},
                    }
                ).encode(),
                headers,
            )
            for i in range(challenges)
        ]
        began = time.monotonic()
        started = asyncio.run(_start_all(port, requests, connections))
        took = time.monotonic() - began
        # Every push must arrive; wait for the last one (bounded), then read the fake's log.
        deadline = time.monotonic() + 60
        while True:
            pending = _count_pending(home)
            if pending == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        arrivals, violations = fake.stop()
    finally:
        stop(server)
        fake.kill()
    from_return = [
        arrivals[s.challenge_id] - s.returned_at for s in started if s.challenge_id in arrivals
    ]
    from_send = [
        arrivals[s.challenge_id] - s.sent_at for s in started if s.challenge_id in arrivals
    ]
    created, committed = _created_at(home)
    from_row = [arrivals[cid] + fake.offset - at for cid, at in created.items() if cid in arrivals]
    from_commit = [
        arrivals[cid] + fake.offset - at for cid, at in committed.items() if cid in arrivals
    ]
    start_latency = [s.returned_at - s.sent_at for s in started]
    for violation in violations[:3]:
        print(f"violation: {violation}")
    print(
        f"(a) {len(started)} push challenges started in {took:.2f} s over {connections} "
        f"connections ({len(started) / took:,.0f}/s; start p50 "
        f"{percentile(start_latency, 0.5) * 1000:.1f} ms, p99 "
        f"{percentile(start_latency, 0.99) * 1000:.1f} ms); {len(arrivals)} pushes received "
        f"by the APNs fake, wire-format violations: {len(violations)}"
    )
    if from_return:
        early = sum(1 for d in from_return if d < 0)

        def ms(values: list[float], q: float) -> str:
            return f"{percentile(values, q) * 1000:.1f} ms"

        print(
            f"    start returned -> push received: p50 {ms(from_return, 0.5)}, p99 "
            f"{ms(from_return, 0.99)}, max {max(from_return) * 1000:.1f} ms ({early} pushes "
            "arrived before the start's response did)"
        )
        print(
            f"    start sent -> push received:     p50 {ms(from_send, 0.5)}, p99 "
            f"{ms(from_send, 0.99)}"
        )
        print(
            f"    commit -> push received:         p50 {ms(from_commit, 0.5)}, p99 "
            f"{ms(from_commit, 0.99)} (the auth.start audit row, stamped just before COMMIT)"
        )
        print(
            f"    row created_at -> push received: p50 {ms(from_row, 0.5)}, p99 "
            f"{ms(from_row, 0.99)} (created_at is stamped before the start waits for the "
            "write lock)"
        )


def _created_at(home: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Each push challenge's created_at, and the time of its auth.start audit row (written
    last in the start's transaction), as epoch seconds."""
    import sqlite3

    def epoch(text: str) -> float:
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC).timestamp()

    conn = sqlite3.connect(f"file:{home / 'openmfa.db'}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT id, created_at FROM challenges WHERE method = 'push'")
        created = {cid: epoch(at) for cid, at in rows}
        rows = conn.execute("SELECT detail, at FROM audit_events WHERE action = 'auth.start'")
        committed = {detail.split()[0]: epoch(at) for detail, at in rows}
        return created, committed
    finally:
        conn.close()


def _count_pending(home: Path) -> int:
    """Audit rows still missing: challenges started minus push.send rows written (sqlite3,
    read-only, from this process; the server keeps writing meanwhile)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{home / 'openmfa.db'}?mode=ro", uri=True, timeout=5)
    try:
        started = conn.execute("SELECT count(*) FROM challenges WHERE method = 'push'").fetchone()
        sent = conn.execute(
            "SELECT count(DISTINCT substr(detail, 1, instr(detail, ' ') - 1)) FROM audit_events"
            " WHERE action = 'push.send' AND result = 'delivered'"
        ).fetchone()
        return int(started[0]) - int(sent[0])
    finally:
        conn.close()


# -- (b) sustained throughput, dispatcher in process -----------------------------------------


async def _throughput(
    settings: Settings, prefix: str, warm_up: list[str], ids: list[str]
) -> tuple[float, dict[str, int]]:
    from backend.push.dispatcher import PushDispatcher, close_transports
    from backend.push.factory import build_transports

    services = await Services.open(settings, push=False)
    transports = await build_transports(settings)
    dispatcher = PushDispatcher(
        services.db,
        services.audit,
        now,
        Actor("system:push"),
        transports,
        settings.push_concurrency,
    )
    try:
        for challenge_id in warm_up:  # connections and the OAuth token, not measured
            dispatcher.challenge_started(challenge_id)
        await dispatcher.wait_idle()
        dispatcher.counts.clear()
        began = time.monotonic()
        for challenge_id in ids:
            dispatcher.challenge_started(challenge_id)
        await dispatcher.wait_idle()
        took = time.monotonic() - began
        return took, dict(dispatcher.counts)
    finally:
        await dispatcher.close()
        await close_transports(transports)
        await services.close()


def _sustained(home: Path, kind: str, pushes: int) -> None:
    prefix = f"{kind}x"
    platform = "ios" if kind == "apns" else "android"
    fake = Fake(kind, home / f"{kind}-b")
    try:
        settings = load_settings(None, home=home, **fake.settings)
        asyncio.run(_populate(settings, pushes + 200, platform, prefix))
        ids = asyncio.run(_pending_challenges(settings, prefix, ttl=600))
        os.sched_setaffinity(0, {0})
        took, counts = asyncio.run(_throughput(settings, prefix, ids[:200], ids[200:]))
        _, violations = fake.stop()
    finally:
        fake.kill()
    delivered = counts.get("delivered", 0)
    workers = f", {settings.fcm_workers} worker threads" if kind == "fcm" else ""
    print(
        f"(b) {kind.upper()}: {delivered} of {pushes} pushes delivered and audited in {took:.2f} s:"
        f" {delivered / took:,.0f} pushes/s (concurrency {settings.push_concurrency}{workers});"
        f" results {counts}; wire-format violations: {len(violations)}"
    )


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--fake":
        _serve_fake(sys.argv[2], Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--challenges", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--pushes", type=int, default=5000)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-sustained", action="store_true")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="openmfa-bench-push-"))
    try:
        migrations.upgrade(f"sqlite+aiosqlite:///{home / 'openmfa.db'}")
        settings = load_settings(home=home)
        if not args.skip_latency:
            _latency(home, settings, args.challenges, args.connections)
        if not args.skip_sustained:
            _sustained(home, "apns", args.pushes)
            _sustained(home, "fcm", args.pushes)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
