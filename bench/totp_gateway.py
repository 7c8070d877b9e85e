"""Successful TOTP verifications per second through the gateway API, over real HTTP.

Sets up a fresh data directory with many users (each with an OATH token), starts
`openmfa run` as its own process pinned to one CPU, and sends /gateway/v1/otp/verify
requests from a load generator pinned to the other. Every request carries a code that is
valid and never used before (a user can be accepted at most once per time step, so users x
steps gives the supply of fresh codes): replay protection is exercised honestly, and every
accept is a durable write with its audit row.

    python bench/totp_gateway.py [--users 5000] [--connections 32] [--postgres ADMIN_URL]
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
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.domain import totp
from backend.store import migrations
from bench._http import build_post, percentile, run_load
from bench._process import free_port, serving
from bench._setup import fresh_postgres, populate_oath


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--postgres",
        metavar="ADMIN_URL",
        help="benchmark PostgreSQL: a database named openmfa_bench is created next to this "
        "URL's (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test) and replaced each run",
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="openmfa-bench-"))
    database_url = fresh_postgres(args.postgres, "openmfa_bench") if args.postgres else ""
    migrations.upgrade(database_url or f"sqlite+aiosqlite:///{home / 'openmfa.db'}")
    started = time.perf_counter()
    token, seeds = asyncio.run(populate_oath(home, database_url, args.users))
    print(f"set up {args.users} users with OATH tokens in {time.perf_counter() - started:.1f} s")

    port = free_port()
    try:
        with serving(home, port, {"OPENMFA_DATABASE_URL": database_url}):
            os.sched_setaffinity(0, {1})

            # Steps s-1, s, s+1 are all inside the +-1 window while the clock stays in step s;
            # send them in increasing order per user. Wait for a fresh step so the run fits in it.
            if time.time() % totp.PERIOD > 5:
                time.sleep(totp.PERIOD - time.time() % totp.PERIOD + 0.2)
            step = totp.time_step(datetime.now(UTC))
            headers = {"Authorization": f"Bearer {token}"}
            requests = [
                build_post(
                    f"127.0.0.1:{port}",
                    "/gateway/v1/otp/verify",
                    json.dumps({"user": name, "code": totp.code_at_step(seed, s)}).encode(),
                    headers,
                )
                for s in (step - 1, step, step + 1)
                for name, seed in seeds.items()
            ]
            result = asyncio.run(run_load("127.0.0.1", port, requests, args.connections, True))
            if totp.time_step(datetime.now(UTC)) != step:
                print("warning: the time step changed during the run; some codes fell outside")
            accepted = sum(b'"accept"' in body for body in result.bodies)
            rate = accepted / result.seconds
            kind = "PostgreSQL" if database_url.startswith("postgresql") else "SQLite"
            print(
                f"{kind}: {result.sent} requests in {result.seconds:.2f} s over "
                f"{args.connections} connections; statuses {result.statuses}"
            )
            print(
                f"{kind}: {accepted} successful verifications, {rate:,.0f}/s; latency p50 "
                f"{percentile(result.latencies, 0.5) * 1000:.1f} ms, p99 "
                f"{percentile(result.latencies, 0.99) * 1000:.1f} ms"
            )
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
