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

import asyncio
import json
import os
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.config import Settings, load_settings
from backend.services import Services
from bench._process import free_port, start_server, stop
from bench._push import (
    FakeProcess,
    bench_main,
    dispatch_timed,
    first_arrivals,
    gateway_token,
    ms,
    pending_challenges,
    populate,
    print_latency,
    start_all,
    start_requests,
)

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


class Fake(FakeProcess):
    """The parent's handle on a fake process."""

    def __init__(self, kind: str, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(__file__, [kind, str(directory)], kind)
        self.settings: dict[str, str] = self.hello
        self.offset = 0.0

    def stop(self) -> tuple[dict[str, float], list[str]]:
        """Stop it; the monotonic arrival time of each challenge's first push, and any
        wire-format violations it saw. :attr:`offset` then turns those into epoch seconds."""
        report = self.stop_report()
        self.offset = float(report["offset"])
        return first_arrivals(report), report["violations"]


# -- (a) latency through the server -----------------------------------------------------------


def _push_tokens(platform: str, count: int) -> list[str]:
    """Device tokens in the platform's format."""
    if platform == "ios":
        return [secrets.token_hex(32) for _ in range(count)]
    return ["fcm-" + secrets.token_urlsafe(40) for _ in range(count)]


def _latency(home: Path, settings: Settings, challenges: int, connections: int) -> None:
    asyncio.run(populate(settings, "ios", _push_tokens("ios", challenges), "lat"))
    token = asyncio.run(gateway_token(settings))
    fake = Fake("apns", home / "apns-a")
    port = free_port()
    server = start_server(home, port, {f"OPENMFA_{k.upper()}": v for k, v in fake.settings.items()})
    try:
        os.sched_setaffinity(0, {1})
        requests = start_requests(port, token, "lat", challenges)
        began = time.monotonic()
        started = asyncio.run(start_all(port, requests, connections))
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
    created, committed = _created_at(home)
    from_row = [arrivals[cid] + fake.offset - at for cid, at in created.items() if cid in arrivals]
    from_commit = [
        arrivals[cid] + fake.offset - at for cid, at in committed.items() if cid in arrivals
    ]
    print_latency(
        started,
        arrivals,
        violations,
        took=took,
        connections=connections,
        what="push challenges",
        received_by="by the APNs fake, wire-format violations",
        note_early=True,
    )
    if any(s.challenge_id in arrivals for s in started):
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
    settings: Settings, warm_up: list[str], ids: list[str]
) -> tuple[float, dict[str, int]]:
    from backend.push.dispatcher import close_transports
    from backend.push.factory import build_transports

    services = await Services.open(settings, push=False)
    transports = await build_transports(settings)
    try:
        # The warm-up opens the connections and fetches the OAuth token, not measured.
        took, _, counts = await dispatch_timed(settings, services, transports, warm_up, ids)
        return took, counts
    finally:
        await close_transports(transports)
        await services.close()


def _sustained(home: Path, kind: str, pushes: int) -> None:
    prefix = f"{kind}x"
    platform = "ios" if kind == "apns" else "android"
    fake = Fake(kind, home / f"{kind}-b")
    try:
        settings = load_settings(None, home=home, **fake.settings)
        tokens = _push_tokens(platform, pushes + 200)
        asyncio.run(populate(settings, platform, tokens, prefix))
        ids = asyncio.run(pending_challenges(settings, prefix, ttl=600))
        os.sched_setaffinity(0, {0})
        took, counts = asyncio.run(_throughput(settings, ids[:200], ids[200:]))
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


def _sustained_both(home: Path, pushes: int) -> None:
    _sustained(home, "apns", pushes)
    _sustained(home, "fcm", pushes)


def main() -> None:
    assert __doc__ is not None
    bench_main(
        __doc__,
        "push",
        lambda args: _serve_fake(args[0], Path(args[1])),
        _latency,
        _sustained_both,
    )


if __name__ == "__main__":
    main()
