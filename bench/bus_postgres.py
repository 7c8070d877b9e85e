"""The outcome bus across nodes (PostgreSQL LISTEN/NOTIFY): wake-up latency and throughput.

Two :class:`PostgresOutcomeBus` instances on one fresh database are two nodes (in one process
and one event loop here, so the figures include both sides' CPU on one core):

* latency: a waiter parks on node A, node B publishes its outcome; the time from B's
  ``publish`` call to A's waiter returning, one challenge at a time, ``--count`` times;
* burst: B publishes ``--burst`` outcomes back to back (a directory sync cancelling many
  users' challenges) while A holds a waiter on each; the time until the last one woke;
* stream: the same number published one per event-loop turn (answers arriving at a busy
  node): how far the sender's coalescing into few NOTIFY payloads goes.

    python bench/bus_postgres.py [--count 1000] [--burst 20000]
      [--admin-url postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.events import Outcome
from backend.events_postgres import PostgresOutcomeBus
from bench._http import percentile

ADMIN_URL = os.environ.get("OPENMFA_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def latency(
    a: PostgresOutcomeBus, b: PostgresOutcomeBus, count: int, tag: str
) -> list[float]:
    """Seconds from B's publish to A's waiter returning, one challenge at a time."""
    samples: list[float] = []
    for i in range(count):
        challenge_id = f"ch_{tag}{i:019d}"
        waiter = asyncio.create_task(a.wait(challenge_id, within=30))
        for _ in range(100):  # parked after a loop turn or two
            if a.waiting:
                break
            await asyncio.sleep(0)
        else:
            raise RuntimeError("the waiter did not park")
        started = time.perf_counter()
        await b.publish(Outcome(challenge_id, "approved"))
        outcome = await waiter
        samples.append(time.perf_counter() - started)
        assert outcome is not None, "a waiter timed out"
    return samples


async def burst(
    a: PostgresOutcomeBus, b: PostgresOutcomeBus, count: int, tag: str, spread: bool
) -> tuple[float, float, int]:
    """(seconds, CPU seconds of this process, notifications) for ``count`` outcomes from B
    to waiters on A; ``spread``: one publish per loop turn instead of back to back."""
    ids = [f"ch_{tag}{i:018d}" for i in range(count)]
    woken = 0
    done = asyncio.get_running_loop().create_future()

    def on_outcome(_outcome: Outcome) -> None:
        nonlocal woken
        woken += 1
        if woken == count and not done.done():
            done.set_result(None)

    for challenge_id in ids:
        a.watch(challenge_id, on_outcome)
    sent_before = b.counts["notifications-sent"]
    cpu, started = time.process_time(), time.perf_counter()
    for challenge_id in ids:
        await b.publish(Outcome(challenge_id, "cancelled"))
        if spread:
            await asyncio.sleep(0)
    await asyncio.wait_for(done, 120)
    return (
        time.perf_counter() - started,
        time.process_time() - cpu,
        b.counts["notifications-sent"] - sent_before,
    )


async def run(count: int, burst_size: int) -> None:
    name = f"openmfa_bench_bus_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    try:
        a = await PostgresOutcomeBus.open(dsn, "n_bench_a")
        b = await PostgresOutcomeBus.open(dsn, "n_bench_b")
        try:
            await latency(a, b, 50, "wu")  # warm-up: prepared statements, first payloads
            samples = sorted(await latency(a, b, count, "la"))
            ms = [s * 1000 for s in samples]
            print(f"B publish -> A waiter returns, {count} one at a time:")
            print(
                f"  p50 {percentile(ms, 0.50):.2f} ms   p99 {percentile(ms, 0.99):.2f} ms"
                f"   max {ms[-1]:.2f} ms"
            )
            for spread in (False, True):
                tag = "spread" if spread else "burst"
                seconds, cpu, notes = await burst(a, b, burst_size, tag[:2], spread)
                how = "one per loop turn" if spread else "back to back"
                print(f"{burst_size} outcomes published on B {how}, all woken on A:")
                print(
                    f"  {seconds * 1000:.0f} ms, {burst_size / seconds:,.0f} outcomes/s,"
                    f" {notes} notifications ({burst_size / max(notes, 1):.0f} outcomes each),"
                    f" {cpu / burst_size * 1e6:.1f} us CPU per outcome (both nodes)"
                )
        finally:
            await a.close()
            await b.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--burst", type=int, default=20_000)
    parser.add_argument("--admin-url", default=None, help="a PostgreSQL URL to create a DB from")
    args = parser.parse_args()
    if args.admin_url:
        global ADMIN_URL
        ADMIN_URL = args.admin_url
    asyncio.run(run(args.count, args.burst))


if __name__ == "__main__":
    main()
