"""Retention pruning at volume, and what it costs the writes running beside it.

Fills a fresh database with old audit events and finished challenges, then prunes them with
the default batches while another task writes one small row at a time (a stand-in for the
sign-in paths, which write the same tables). Prints the pruning rate, the longest batch and
the side writes' latency with and without the pruning running. SQLite in a temporary
directory by default; ``--database-url postgresql+asyncpg://...`` for an empty PostgreSQL
database (it is migrated, filled and left with what remains).

    python bench/retention.py [--rows 200000] [--batch 1000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert

from backend.config import load_settings
from backend.services import Services
from backend.services.context import Actor
from backend.services.retention import Pruner, policy_from
from backend.store import migrations
from backend.store.tables import audit_t, challenges_t, users_t

ACTOR = Actor("bench:retention")


async def fill(services: Services, rows: int) -> None:
    old = services.clock() - timedelta(days=500)
    async with services.db.write() as conn:
        user_id = (
            await conn.execute(
                insert(users_t)
                .values(name_key="bench", name="bench", created_at=old)
                .returning(users_t.c.id)
            )
        ).scalar_one()
    for start in range(0, rows, 10000):
        n = min(10000, rows - start)
        async with services.db.write() as conn:
            await conn.execute(
                insert(audit_t),
                [{"at": old, "actor": "a", "action": "x", "result": "ok"} for _ in range(n)],
            )
            await conn.execute(
                insert(challenges_t),
                [
                    {
                        "id": f"c{start + i:09d}",
                        "user_id": user_id,
                        "method": "push",
                        "state": "approved",
                        "created_at": old,
                        "expires_at": old,
                    }
                    for i in range(n)
                ],
            )


async def side_writes(services: Services, stop: asyncio.Event) -> list[float]:
    """One small committed write after another, each timed, until ``stop``."""
    latencies: list[float] = []
    while not stop.is_set():
        start = time.perf_counter()
        await services.audit.record(ACTOR, "bench.write", "ok")
        latencies.append(time.perf_counter() - start)
        await asyncio.sleep(0.005)
    return latencies


def summary(label: str, latencies: list[float]) -> None:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[int(len(ms) * 0.99) - 1] if len(ms) >= 100 else ms[-1]
    print(
        f"{label:<28} n={len(ms):5d}  p50 {statistics.median(ms):6.2f} ms  "
        f"p99 {p99:6.2f} ms  max {ms[-1]:6.2f} ms"
    )


async def run(home: Path, url: str, rows: int, batch: int) -> None:
    settings = load_settings(home=home, database_url=url, retention_batch_size=batch)
    services = await Services.open(settings, push=False, notify=False)
    try:
        print(f"database: {'SQLite' if services.db.is_sqlite else 'PostgreSQL'}")
        start = time.perf_counter()
        await fill(services, rows)
        print(
            f"filled {rows} audit events + {rows} challenges in {time.perf_counter() - start:.1f} s"
        )

        stop = asyncio.Event()
        baseline = asyncio.create_task(side_writes(services, stop))
        await asyncio.sleep(2.0)
        stop.set()
        summary("side writes, idle", await baseline)

        batch_times: list[float] = []
        mark = time.perf_counter()

        async def sleep(seconds: float) -> None:
            # Called between batches: the time since the last call is one batch's work.
            nonlocal mark
            batch_times.append(time.perf_counter() - mark)
            await asyncio.sleep(seconds)
            mark = time.perf_counter()

        pruner = Pruner(
            services.db,
            services.audit,
            services.clock,
            policy_from(settings),
            settings.retention_batch_size,
            settings.retention_batch_pause_seconds,
            sleep=sleep,
        )
        stop = asyncio.Event()
        beside = asyncio.create_task(side_writes(services, stop))
        start = time.perf_counter()
        counts = await pruner.run(ACTOR)
        seconds = time.perf_counter() - start
        stop.set()
        summary("side writes, while pruning", await beside)
        removed = sum(counts.values())
        print(
            f"pruned {removed} rows in {seconds:.1f} s ({removed / seconds:.0f} rows/s, "
            f"batches of {batch}, pause {settings.retention_batch_pause_seconds} s)"
        )
        if batch_times:
            ms = sorted(t * 1000 for t in batch_times)
            print(f"one batch: median {statistics.median(ms):.1f} ms, longest {ms[-1]:.1f} ms")
    finally:
        await services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        url = load_settings(home=home, database_url=args.database_url).resolved_database_url
        migrations.upgrade(url)  # runs its own event loop: before ours
        asyncio.run(run(home, args.database_url, args.rows, args.batch))


if __name__ == "__main__":
    main()
