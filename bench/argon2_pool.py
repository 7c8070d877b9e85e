"""The argon2id pool under a flood of password checks, over real HTTP.

Starts `openmfa run` as its own process pinned to one CPU (the load generator runs on the
other), with users that have local passwords, and floods ``POST /gateway/v1/password/verify``
(the RADIUS bridge's password check) from many connections at once for a fixed time. Reports
the checks answered per second (200: accept / reject), the refusals (429 ``busy``, answered
without hashing), and the latency of each. ``--queue`` sets ``hash_queue_limit``; a large
value shows what an unbounded queue does to the latency of every check.

``--unknown`` sends made-up user names instead: each costs a dummy argon2id check while the
per-process budget (``unknown_user_checks_per_second``) lasts, and a CPU-free wait after.

    python bench/argon2_pool.py [--connections 200] [--seconds 15] [--rate 0] [--queue 40]
                                [--unknown]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.config import load_settings
from backend.services import Services
from backend.services.context import Actor
from backend.store import migrations
from bench._http import build_post, percentile, read_response
from bench._process import free_port, serving

ADMIN = Actor("bench")
PASSWORD = "correct horse battery staple"  # noqa: S105 - a benchmark user's


async def _populate(home: Path, users: int) -> str:
    services = await Services.open(load_settings(home=home), push=False, notify=False)
    try:
        token = await services.tokens.create(ADMIN, "bench", scope="bridge")
        for i in range(users):
            await services.users.add(ADMIN, f"user{i:04d}", password=PASSWORD)
        # Right passwords never lock; the bench measures the pool, not the lockout.
        await services.policies.set(ADMIN, "otp_max_failures", "100")
    finally:
        await services.close()
    return token


async def _flood(
    port: int, requests: list[bytes], connections: int, seconds: float, rate: float
) -> tuple[Counter[int], dict[int, list[float]], float]:
    """Each connection sends until ``seconds`` have passed: back to back (``rate`` 0), or on
    a fixed schedule that offers ``rate`` requests a second in all (a late answer sends the
    next one at once)."""
    statuses: Counter[int] = Counter()
    latencies: dict[int, list[float]] = {}
    began = time.perf_counter()
    stop = began + seconds
    interval = connections / rate if rate > 0 else 0.0

    async def worker(offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            n = offset
            due = began + interval * offset / connections
            while time.perf_counter() < stop:
                if due > time.perf_counter():
                    await asyncio.sleep(due - time.perf_counter())
                started = time.perf_counter()
                writer.write(requests[n % len(requests)])
                status, _ = await read_response(reader)
                latencies.setdefault(status, []).append(time.perf_counter() - started)
                statuses[status] += 1
                n += connections
                due += interval
        finally:
            writer.close()

    await asyncio.gather(*(worker(i) for i in range(connections)))
    return statuses, latencies, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--queue", type=int, default=40, help="hash_queue_limit")
    parser.add_argument("--unknown", action="store_true", help="made-up user names")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="requests offered per second (0: back to back)"
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="openmfa-bench-"))
    migrations.upgrade(f"sqlite+aiosqlite:///{home / 'openmfa.db'}")
    token = asyncio.run(_populate(home, args.users))
    port = free_port()
    headers = {"Authorization": f"Bearer {token}"}
    names = [f"nobody{i:05d}" if args.unknown else f"user{i:04d}" for i in range(args.users)]
    requests = [
        build_post(
            f"127.0.0.1:{port}",
            "/gateway/v1/password/verify",
            json.dumps({"user": name, "password": PASSWORD}).encode(),
            headers,
        )
        for name in names
    ]
    try:
        with serving(home, port, {"OPENMFA_HASH_QUEUE_LIMIT": str(args.queue)}):
            os.sched_setaffinity(0, {1})
            statuses, latencies, took = asyncio.run(
                _flood(port, requests, args.connections, args.seconds, args.rate)
            )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    what = "unknown names" if args.unknown else "right passwords"
    offered = f"{args.rate:.0f}/s offered" if args.rate else "back to back"
    print(
        f"{what}, {args.connections} connections, {offered}, {took:.1f} s, hash_queue_limit "
        f"{args.queue}: statuses {dict(statuses)}"
    )
    for status, label in ((200, "checked"), (404, "unknown"), (429, "refused busy")):
        values = latencies.get(status, [])
        if values:
            print(
                f"  {status} {label}: {len(values) / took:,.1f}/s, latency p50 "
                f"{percentile(values, 0.5) * 1000:.1f} ms, p99 "
                f"{percentile(values, 0.99) * 1000:.1f} ms, max {max(values) * 1000:.0f} ms"
            )


if __name__ == "__main__":
    main()
