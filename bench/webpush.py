"""Web Push delivery against the local fake push service (tests/fakes/webpush_service.py).

The fake runs in a process of its own pinned to CPU 1 and does what a push service does per
message: it verifies the VAPID JWT (ES256) and decrypts the aes128gcm body (ECDH + AES-GCM).

(a) Latency with 1,000 challenges in flight: `openmfa run` (RADIUS off, pinned to CPU 0) with
    the fake on its Web Push allow-list. A load generator in this process (CPU 1) starts 1,000
    push authentications through the gateway API over keep-alive connections, one per user
    with a web device; none is answered, so all 1,000 are pending at the end. Per challenge:
    the time from the gateway API's start returning (the challenge exists) to the fake
    receiving its push request, p50 / p99 (CLOCK_MONOTONIC, shared by the processes).
(b) Sustained pushes per second: the dispatcher (backend.push.dispatcher) in this process,
    pinned to CPU 0, with the real Web Push transport (VAPID JWT cached per origin, a fresh
    ECDH key and AES-GCM per message, httpx connection pool). ``--pushes`` pending challenges
    are handed to it at once; the rate is pushes delivered and recorded (audit row written)
    per second of wall time.

    python bench/webpush.py [--challenges 1000] [--connections 50] [--pushes 5000]

Figures are printed, not asserted; docs/performance.md quotes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.config import Settings, load_settings
from backend.domain.webpush import DEFAULT_ALLOWED_ORIGINS
from backend.services import Services
from bench._process import free_port, start_server, stop
from bench._push import (
    FakeProcess,
    bench_main,
    dispatch_timed,
    gateway_token,
    pending_challenges,
    populate,
    print_latency,
    start_all,
    start_requests,
)

# -- the fake, in a process of its own ----------------------------------------------------------


def _serve_fake(directory: Path, subscriptions: int) -> None:
    """``--fake DIR N``: run the fake until a line arrives on stdin, then print what it
    received as one JSON line. The first line printed: its origin, CA file and N
    subscriptions."""
    from tests.fakes.webpush_service import FakePushService

    async def serve() -> None:
        fake = FakePushService(directory)
        await fake.start()
        hello = {
            "origin": fake.origin,
            "ca_file": str(fake.ca_file),
            "subscriptions": [fake.subscription() for _ in range(subscriptions)],
        }
        print(json.dumps(hello), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        received = [[r.payload.get("challenge_id"), r.received_at] for r in fake.requests]
        report = {"received": received, "violations": fake.violations[:20]}
        await fake.stop(check=False)
        print(json.dumps(report), flush=True)

    asyncio.run(serve())


class Fake(FakeProcess):
    """The parent's handle on the fake's process."""

    def __init__(self, directory: Path, subscriptions: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(__file__, [str(directory), str(subscriptions)], "Web Push")
        self.origin: str = self.hello["origin"]
        self.ca_file: str = self.hello["ca_file"]
        self.subscriptions: list[str] = self.hello["subscriptions"]

    def settings(self) -> dict[str, object]:
        return {
            "webpush_allowed_origins": (*DEFAULT_ALLOWED_ORIGINS, self.origin),
            "webpush_ca_file": self.ca_file,
            "webpush_subject": "mailto:bench@example.com",
        }

    def env(self) -> dict[str, str]:
        return {
            "OPENMFA_WEBPUSH_ALLOWED_ORIGINS": " ".join((*DEFAULT_ALLOWED_ORIGINS, self.origin)),
            "OPENMFA_WEBPUSH_CA_FILE": self.ca_file,
            "OPENMFA_WEBPUSH_SUBJECT": "mailto:bench@example.com",
        }


# -- (a) latency through the server -----------------------------------------------------------


def _delivered(home: Path) -> int:
    """Challenges whose push.send 'delivered' row is written (read-only, from this process)."""
    conn = sqlite3.connect(f"file:{home / 'openmfa.db'}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute(
            "SELECT count(DISTINCT substr(detail, 1, instr(detail, ' ') - 1)) FROM audit_events"
            " WHERE action = 'push.send' AND result = 'delivered'"
        ).fetchone()
        return int(row[0])
    finally:
        conn.close()


def _latency(home: Path, settings: Settings, challenges: int, connections: int) -> None:
    fake = Fake(home / "fake-a", challenges)
    try:
        asyncio.run(populate(settings, "web", fake.subscriptions, "lat"))
        token = asyncio.run(gateway_token(settings, unlimited_pushes=True))
        port = free_port()
        server = start_server(home, port, fake.env())
        try:
            os.sched_setaffinity(0, {1})
            requests = start_requests(port, token, "lat", challenges)
            began = time.monotonic()
            started = asyncio.run(start_all(port, requests, connections))
            took = time.monotonic() - began
            deadline = time.monotonic() + 60
            while _delivered(home) < len(started) and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            stop(server)
        arrivals, violations = fake.stop()
    finally:
        fake.kill()
    print_latency(
        started,
        arrivals,
        violations,
        took=took,
        connections=connections,
        what="push challenges for web devices",
        received_by="and decrypted by the fake, violations",
    )


# -- (b) sustained throughput, dispatcher in process -----------------------------------------


async def _throughput(
    settings: Settings, warm_up: list[str], ids: list[str]
) -> tuple[float, dict[str, int], int]:
    from backend.crypto import SecretBox, read_key
    from backend.push.dispatcher import close_transports
    from backend.push.factory import build_transports
    from backend.push.vapid import load_or_create_vapid_key

    services = await Services.open(settings, push=False)
    key = await load_or_create_vapid_key(
        services.db, SecretBox(read_key(settings.resolved_key_file))
    )
    transports = await build_transports(settings, key)
    try:
        # The warm-up opens the connections and signs the JWT, not measured.
        took, cpu, counts = await dispatch_timed(
            settings, services, {"webpush": transports["webpush"]}, warm_up, ids
        )
        signed = transports["webpush"].signer.signed  # type: ignore[attr-defined]
        counts["cpu_ms"] = round(cpu * 1000)
        return took, counts, signed
    finally:
        await close_transports(transports)
        await services.close()


def _sustained(home: Path, pushes: int) -> None:
    fake = Fake(home / "fake-b", pushes + 200)
    try:
        settings = load_settings(None, home=home, **fake.settings())
        asyncio.run(populate(settings, "web", fake.subscriptions, "thr"))
        ids = asyncio.run(pending_challenges(settings, "thr", ttl=600))
        os.sched_setaffinity(0, {0})
        took, counts, signed = asyncio.run(_throughput(settings, ids[:200], ids[200:]))
        _, violations = fake.stop()
    finally:
        fake.kill()
    delivered = counts.get("delivered", 0)
    cpu_ms = counts.pop("cpu_ms")
    print(
        f"(b) Web Push: {delivered} of {pushes} pushes encrypted, delivered and audited in "
        f"{took:.2f} s: {delivered / took:,.0f} pushes/s (concurrency "
        f"{settings.push_concurrency}); results {counts}; JWTs signed: {signed}; "
        f"violations: {len(violations)}"
    )
    print(
        f"    the dispatcher's process used {cpu_ms / 1000:.2f} s of CPU "
        f"({cpu_ms / max(delivered, 1):.2f} ms per push: encryption, HTTP/2, audit)"
    )


def main() -> None:
    assert __doc__ is not None
    bench_main(
        __doc__,
        "webpush",
        lambda args: _serve_fake(Path(args[0]), int(args[1])),
        _latency,
        _sustained,
    )


if __name__ == "__main__":
    main()
