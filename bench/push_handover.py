"""The push handover (backend/push/handover.py): what a pass costs while nothing is orphaned,
and how fast a dead node's unsent pushes are taken over and sent.

    .venv/bin/python bench/push_handover.py --database postgres --held 10000 --orphans 1000
    .venv/bin/python bench/push_handover.py --database sqlite

Phase (a): ``--held`` pending push challenges, all recorded sent (the steady state of a busy
site: every node delivering its own); one pass (the claim that finds nothing) is timed
``--passes`` times. Phase (b): ``--orphans`` of them are turned into a dead node's unsent
pushes (``push_sent_at`` NULL, ``push_node`` a node whose heartbeat is a minute old); a node
takes them over (passes of up to 500) and sends them through an in-process push service that
accepts at once; the time from the first claim until every push is sent and recorded.

PostgreSQL: a throw-away database on ``--pg`` (default the test suite's server), dropped
afterwards. SQLite: a throw-away home.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert, update

from backend.config import load_settings
from backend.push.base import PushMessage, PushOutcome, PushResult
from backend.push.dispatcher import PushDispatcher
from backend.push.handover import PushHandover
from backend.services import Services
from backend.services.context import Actor
from backend.store import migrations
from backend.store.tables import challenges_t, nodes_t, now
from bench._push import pending_challenges, populate

PUSH = Actor("system:push")


class InstantService:
    """A push service that accepts every message at once (counts them)."""

    name = "apns"

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, message: PushMessage) -> PushResult:
        self.sent += 1
        return PushResult(PushOutcome.DELIVERED, status=200)

    async def close(self) -> None:
        return None


async def run(database_url: str, home: Path, held: int, orphans: int, passes: int) -> None:
    settings = load_settings(config_file=None, home=home, database_url=database_url)
    prefix = "ho"
    began = time.monotonic()
    await populate(settings, "ios", [f"tok-{i}" for i in range(held)], prefix)
    ids = await pending_challenges(settings, prefix, ttl=600)
    services = await Services.open(settings, push=False, notify=False)
    try:
        at = now()
        async with services.db.write() as conn:
            await conn.execute(update(challenges_t).values(push_node="n_live", push_sent_at=at))
            seen = {"name": "x", "started_at": at, "seen_at": at, "pid": 0}
            await conn.execute(insert(nodes_t).values(id="n_live", **seen))
            await conn.execute(insert(nodes_t).values(id="n_dead", **seen))
        kind = "SQLite" if services.db.is_sqlite else "PostgreSQL"
        print(f"{held} pending push challenges in {time.monotonic() - began:.1f} s ({kind})")

        service = InstantService()
        dispatcher = PushDispatcher(
            services.db, services.audit, now, PUSH, {"apns": service}, settings.push_concurrency
        )
        me = "n_" + secrets.token_urlsafe(6)
        handover = PushHandover(
            services.db, dispatcher, services.audit, now, PUSH, me, settings.node_timeout_seconds
        )
        async with services.db.write() as conn:
            await conn.execute(insert(nodes_t).values(id=me, **seen))

        # (a) the pass that finds nothing, over `held` pending challenges
        timings = []
        for _ in range(passes):
            t0 = time.perf_counter()
            assert await handover.run_once() == []
            timings.append((time.perf_counter() - t0) * 1000)
        print(
            f"(a) idle pass over {held} pending: median {statistics.median(timings):.2f} ms, "
            f"max {max(timings):.2f} ms ({passes} passes)"
        )

        # (b) a dead node's unsent pushes
        orphaned = ids[:orphans]
        async with services.db.write() as conn:
            for start in range(0, len(orphaned), 500):
                await conn.execute(
                    update(challenges_t)
                    .where(challenges_t.c.id.in_(orphaned[start : start + 500]))
                    .values(push_node="n_dead", push_sent_at=None)
                )
            await conn.execute(
                update(nodes_t)
                .where(nodes_t.c.id == "n_dead")
                .values(seen_at=at - timedelta(minutes=1))
            )
        t0, cpu0 = time.perf_counter(), time.process_time()
        claims = []
        while True:
            c0 = time.perf_counter()
            got = await handover.run_once()
            claims.append(((time.perf_counter() - c0) * 1000, len(got)))
            if len(got) < 500:
                break
        claimed = sum(n for _, n in claims)
        await dispatcher.wait_idle()
        took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        print(
            f"(b) {claimed} taken over in {len(claims)} pass(es) "
            f"({', '.join(f'{n} in {ms:.1f} ms' for ms, n in claims)}); all sent and recorded "
            f"after {took * 1000:.0f} ms ({claimed / took:.0f}/s, "
            f"{cpu * 1000 / max(1, claimed):.2f} ms CPU each); "
            f"sent {service.sent}"
        )

        # (c) what recording push_sent_at adds to ordinary delivery: rounds of `orphans`
        # challenges dispatched as their own node does, with and without the mark, alternated
        rates: dict[bool, list[float]] = {True: [], False: []}
        rest = ids[orphans:]
        async with services.db.write() as conn:  # as they are while being delivered
            await conn.execute(
                update(challenges_t)
                .where(challenges_t.c.push_node == "n_live")
                .values(push_sent_at=None, push_node=me)
            )
        for round_ in range(4):
            marking = round_ % 2 == 0
            batch, rest = rest[:orphans], rest[orphans:]
            if len(batch) < orphans:
                break
            timed = PushDispatcher(
                services.db, services.audit, now, PUSH, {"apns": service}, settings.push_concurrency
            )
            if not marking:
                timed._mark_sent = lambda *args: None  # type: ignore[method-assign]
            t0 = time.perf_counter()
            for challenge_id in batch:
                timed.challenge_started(challenge_id)
            await timed.wait_idle()
            rates[marking].append(len(batch) / (time.perf_counter() - t0))
            await timed.close()
        print(
            "(c) ordinary delivery, pushes/s: with push_sent_at "
            + ", ".join(f"{r:.0f}" for r in rates[True])
            + "; without "
            + ", ".join(f"{r:.0f}" for r in rates[False])
        )
        await dispatcher.close()
    finally:
        await services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--pg", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--held", type=int, default=10000)
    parser.add_argument("--orphans", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=20)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="openmfa-bench-handover-"))
    try:
        if args.database == "sqlite":
            url = f"sqlite+aiosqlite:///{home / 'openmfa.db'}"
            migrations.upgrade(url)
            asyncio.run(run("", home, args.held, args.orphans, args.passes))
        else:
            asyncio.run(_on_postgres(args, home))
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def _on_postgres(args: argparse.Namespace, home: Path) -> None:
    import asyncpg

    admin_url = args.pg.replace("postgresql+asyncpg://", "postgresql://")
    name = f"openmfa_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = args.pg.rsplit("/", 1)[0] + f"/{name}"
    try:
        await asyncio.to_thread(migrations.upgrade, url)
        await run(url, home, args.held, args.orphans, args.passes)
    finally:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


if __name__ == "__main__":
    main()
